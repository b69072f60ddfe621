//! `priority_experimental` (gRFC A56): the highest priority that works serves every
//! call; the next takes over when it fails, and hands back when it works again.
//!
//! Its children are listed in priority order, each with a policy of its own; each
//! endpoint belongs to the child at its priority (`#1` after the address, or the
//! resolver's: priority 0 to the first child, 1 to the second, ...). For each call:
//!
//! 1. The first child with a usable endpoint picks it, by its own policy.
//! 2. A child with none usable is passed over if it *failed*: its endpoints went to
//!    TRANSIENT_FAILURE, or were READY and lost their connections (gRPC fails over on
//!    READY → CONNECTING too).
//! 3. A child still *starting* (its endpoints connecting for the first time) holds the
//!    call, for at most the failover timeout (10 s, gRPC's) after it started: the
//!    call waits for it, as gRPC does, rather than going to a lower priority that
//!    happened to connect a moment sooner. Past the timeout it is passed over.
//!
//! When a higher child is usable again, the next call goes back to it.
//!
//! Worked example: children `p0` (endpoints `a`, `b`) and `p1` (`c`), all READY: every
//! call goes to `p0`'s round robin, `a b a b ...`. `a` and `b` are killed: their
//! connections drop, `p0` has nothing usable and failed, so calls go to `c`. `a`
//! restarts and is READY: calls go back to `p0`, now `a a a ...`.
//!
//! ```json
//! {"priority_experimental": {
//!   "children": {
//!     "p0": {"config": [{"weighted_target_experimental": {"targets": {
//!       "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
//!       "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]},
//!     "p1": {"config": [{"round_robin": {}}]}},
//!   "priorities": ["p0", "p1"]}}
//! ```
//!
//! Every name in `priorities` must be a child, and every child in `priorities`, as
//! grpc-go checks. This crate adds two things: `failoverTimeout` (gRPC's is a fixed
//! 10 s), and with no children at all, one child per priority level found among the
//! endpoints, each `round_robin` (`--policy priority_experimental` with
//! `--servers a:1,b:1#1`). Unlike gRPC, which connects to a lower priority only once
//! it needs it, the balancer keeps every endpoint connected: failing over costs no
//! connection time. `ignoreReresolutionRequests` is accepted and changes nothing here.
//!
//! Reference: gRFC A56 "Priority LB Policy"; grpc-go
//! `xds/internal/balancer/priority`.

use std::{sync::Arc, time::Duration};

use rand::RngCore;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::children::Children;
use super::config::{Policy, PolicyConfig};
use super::picker::{EndpointSet, PickContext, PickError, Picker};
use super::registry::policy_from_json;
use super::round_robin::RoundRobinConfig;
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "priority_experimental";

/// How long a child still starting holds calls before the next priority takes them
/// (gRFC A56's failover timer).
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most children a priority policy may have.
pub const MAX_CHILDREN: usize = 100;

/// Settings of `priority_experimental`: its children, highest priority first.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorityConfig {
    /// The children, highest priority first: a name and a policy each. Empty: one
    /// `round_robin` child per priority level among the endpoints.
    pub children: Vec<(String, Policy)>,
    /// How long a starting child holds calls before the next priority takes them.
    pub failover_timeout: Duration,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        Self {
            children: Vec::new(),
            failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
        }
    }
}

impl PriorityConfig {
    /// Children in priority order (the failover timeout the default).
    pub fn new(children: Vec<(String, Policy)>) -> Self {
        Self {
            children,
            ..Self::default()
        }
    }
}

impl<'de> Deserialize<'de> for PriorityConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Map::<String, Value>::deserialize(d)?;
        read(value).map_err(serde::de::Error::custom)
    }
}

/// Reads gRPC's JSON, each mistake named by its field.
fn read(mut object: Map<String, Value>) -> Result<PriorityConfig, String> {
    let children = object.remove("children");
    let priorities = object.remove("priorities");
    let timeout = object.remove("failoverTimeout");
    if let Some(field) = object.keys().next() {
        return Err(format!(
            "unknown field `{field}` (known: children, priorities, failoverTimeout)"
        ));
    }
    let failover_timeout = match timeout {
        None => DEFAULT_FAILOVER_TIMEOUT,
        Some(value) => crate::json::duration_text::deserialize(value)
            .map_err(|e| format!("failoverTimeout: {e}"))?,
    };
    let mut children = match children {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(children)) => children,
        Some(other) => return Err(format!("children: expected an object of children, not {other}")),
    };
    let priorities: Vec<String> = match priorities {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value)
            .map_err(|e| format!("priorities: expected a list of child names ({e})"))?,
    };
    if priorities.len() > MAX_CHILDREN {
        return Err(format!("priorities: more than {MAX_CHILDREN} children"));
    }
    let mut ordered = Vec::with_capacity(priorities.len());
    for (i, name) in priorities.iter().enumerate() {
        if priorities[..i].contains(name) {
            return Err(format!("priorities[{i}]: `{name}` is listed twice"));
        }
        let Some(child) = children.remove(name) else {
            return Err(format!(
                "priorities[{i}]: `{name}` is not in children (children: {})",
                children.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        let at = format!("children.{name}");
        let Value::Object(mut child) = child else {
            return Err(format!("{at}: expected {{\"config\": [...]}}"));
        };
        let config = child
            .remove("config")
            .ok_or_else(|| format!("{at}.config: missing (the child's policy, e.g. [{{\"round_robin\": {{}}}}])"))?;
        match child.remove("ignoreReresolutionRequests") {
            None | Some(Value::Bool(_)) => {}
            Some(other) => {
                return Err(format!("{at}.ignoreReresolutionRequests: expected true or false, not {other}"));
            }
        }
        if let Some(field) = child.keys().next() {
            return Err(format!(
                "{at}: unknown field `{field}` (known: config, ignoreReresolutionRequests)"
            ));
        }
        let policy = policy_from_json(&config).map_err(|e| format!("{at}.config: {e}"))?;
        ordered.push((name.clone(), policy));
    }
    if let Some(name) = children.keys().next() {
        return Err(format!(
            "children.{name}: not in priorities ({}); every child needs a place in them",
            priorities.join(", ")
        ));
    }
    Ok(PriorityConfig {
        children: ordered,
        failover_timeout,
    })
}

impl PolicyConfig for PriorityConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str =
        "the highest priority that works; the next when it fails (gRFC A56)";

    fn validate(&mut self) -> Result<(), String> {
        if self.failover_timeout.is_zero() {
            return Err("failoverTimeout must be above 0".into());
        }
        Ok(())
    }

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.build_set(EndpointSet::usable(endpoints), rng)
    }

    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        let failover = nanos(self.failover_timeout);
        if !self.children.is_empty() {
            let children = Children::build(&self.children, set, rng, |e| {
                usize::try_from(e.priority()).ok()
            });
            return Arc::new(PriorityPicker { children, failover });
        }
        // No children given: one round robin per priority level found, in order.
        let mut levels: Vec<u32> = set.all.iter().map(|e| e.endpoint().priority()).collect();
        levels.sort_unstable();
        levels.dedup();
        let specs: Vec<(String, Policy)> = levels
            .iter()
            .map(|p| (format!("p{p}"), Policy::new(RoundRobinConfig::default())))
            .collect();
        let children = Children::build(&specs, set, rng, |e| {
            levels.iter().position(|&p| p == e.priority())
        });
        Arc::new(PriorityPicker { children, failover })
    }

    fn watches_membership(&self) -> bool {
        true
    }
}

/// Picks through the highest child that works (see the module docs).
pub struct PriorityPicker {
    children: Children,
    failover: u64,
}

impl Picker for PriorityPicker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        if endpoints.is_empty() && self.children.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        ctx.explain(|| format!("{NAME}: "));
        for i in 0..self.children.len() {
            if !self.children.usable(i).is_empty() {
                let name = self.children.name(i);
                ctx.explain(|| format!("{name}; "));
                if let Ok(picked) = self.children.pick(i, ctx) {
                    return Ok(picked);
                }
            }
            // Nothing usable: wait for a child still starting, else pass it over.
            if let Some(since) = self.children.starting_since(i) {
                let until = since.saturating_add(self.failover);
                if ctx.now() < until {
                    let name = self.children.name(i);
                    ctx.explain(|| format!("{name} still starting: the call waits for it"));
                    return Err(PickError::none_ready(endpoints));
                }
            }
            let name = self.children.name(i);
            ctx.explain(|| format!("{name} failed, "));
        }
        Err(PickError::none_ready(endpoints))
    }

    fn next_change(&self, now: u64) -> Option<u64> {
        let own = (0..self.children.len())
            .filter_map(|i| self.children.starting_since(i))
            .map(|since| since.saturating_add(self.failover))
            .filter(|&until| until > now)
            .min();
        own.into_iter().chain(self.children.next_change(now)).min()
    }
}

impl std::fmt::Debug for PriorityPicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let specs: Vec<String> = (0..self.children.len())
            .map(|i| self.children.name(i).to_string())
            .collect();
        f.debug_struct("PriorityPicker")
            .field("children", &specs)
            .finish()
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
