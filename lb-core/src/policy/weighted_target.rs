//! `weighted_target_experimental` (gRFC A28): calls shared among targets by weight,
//! each target a policy of its own over its endpoints.
//!
//! Each target is named after a locality (`zone-a`, `us-east/zone-a`: see
//! [`crate::locality`]) and takes the endpoints there (`@zone-a` after the address, or
//! the resolver's). For each call, a target is drawn at random in proportion to its
//! weight, among the targets that have a usable endpoint; then the target's own policy
//! picks the endpoint. A target with nothing usable gets nothing, and its share goes to
//! the others in proportion to theirs; a target of weight 0 only ever takes calls when
//! no other can (which makes it a spare, as in gRPC, where weights are never 0).
//!
//! Worked example: `zone-a` weight 3, `zone-b` weight 1: of 4,000 calls about 3,000 go
//! to `zone-a` and 1,000 to `zone-b` (a binomial draw: within ±3 points nearly always).
//! With `zone-a`'s servers down, all 4,000 go to `zone-b`.
//!
//! ```json
//! {"weighted_target_experimental": {"targets": {
//!   "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
//!   "zone-b": {"weight": 1, "childPolicy": [{"least_request": {}}]}}}}
//! ```
//!
//! With no targets at all (`--policy weighted_target_experimental`), this crate makes
//! one per locality found among the endpoints, weight 1 each, `round_robin`.
//!
//! Reference: gRFC A28 "xDS Traffic Splitting and Routing" (the weighted_target
//! policy); grpc-go `xds/internal/balancer/weightedtarget`.

use std::sync::Arc;

use rand::{Rng, RngCore};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::children::Children;
use super::config::{Policy, PolicyConfig};
use super::picker::{EndpointSet, PickContext, PickError, Picker};
use super::registry::policy_from_json;
use super::round_robin::RoundRobinConfig;
use crate::{Endpoint, EndpointState};

/// The name users type.
pub const NAME: &str = "weighted_target_experimental";

/// The most targets a weighted target may have.
pub const MAX_TARGETS: usize = 1000;

/// One target: a locality's name, its weight, and the policy over its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The locality it takes the endpoints of (`zone-a`; `""` for endpoints without
    /// one).
    pub name: String,
    /// Its share of the calls, against the other targets' weights.
    pub weight: u32,
    /// The policy that picks among its endpoints.
    pub policy: Policy,
}

/// Settings of `weighted_target_experimental`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightedTargetConfig {
    /// The targets, by name. Empty: one per locality among the endpoints, weight 1,
    /// `round_robin`.
    pub targets: Vec<Target>,
}

impl<'de> Deserialize<'de> for WeightedTargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Map::<String, Value>::deserialize(d)?;
        read(value).map_err(serde::de::Error::custom)
    }
}

/// Reads gRPC's JSON, each mistake named by its field.
fn read(mut object: Map<String, Value>) -> Result<WeightedTargetConfig, String> {
    let targets = object.remove("targets");
    if let Some(field) = object.keys().next() {
        return Err(format!("unknown field `{field}` (known: targets)"));
    }
    let targets = match targets {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(targets)) => targets,
        Some(other) => return Err(format!("targets: expected an object of targets, not {other}")),
    };
    if targets.len() > MAX_TARGETS {
        return Err(format!("targets: more than {MAX_TARGETS}"));
    }
    let mut out = Vec::with_capacity(targets.len());
    for (name, target) in targets {
        let at = format!("targets.{name}");
        let Value::Object(mut target) = target else {
            return Err(format!("{at}: expected {{\"weight\": W, \"childPolicy\": [...]}}"));
        };
        let weight = match target.remove("weight") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .ok_or_else(|| format!("{at}.weight: {n} is not a whole number from 0 to {}", u32::MAX))?,
            Some(other) => return Err(format!("{at}.weight: expected a number, not {other}")),
            None => return Err(format!("{at}.weight: missing")),
        };
        let child = target
            .remove("childPolicy")
            .ok_or_else(|| format!("{at}.childPolicy: missing (e.g. [{{\"round_robin\": {{}}}}])"))?;
        if let Some(field) = target.keys().next() {
            return Err(format!("{at}: unknown field `{field}` (known: weight, childPolicy)"));
        }
        let policy = policy_from_json(&child).map_err(|e| format!("{at}.childPolicy: {e}"))?;
        out.push(Target {
            name,
            weight,
            policy,
        });
    }
    let config = WeightedTargetConfig { targets: out };
    config.check()?;
    Ok(config)
}

impl WeightedTargetConfig {
    fn check(&self) -> Result<(), String> {
        if !self.targets.is_empty() && self.targets.iter().all(|t| t.weight == 0) {
            return Err("targets: every weight is 0; give at least one a weight above 0".into());
        }
        Ok(())
    }
}

impl PolicyConfig for WeightedTargetConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str = "targets (localities) by weight, each with its own policy (gRFC A28)";

    fn validate(&mut self) -> Result<(), String> {
        self.check()
    }

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.build_set(EndpointSet::usable(endpoints), rng)
    }

    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        let targets: Vec<Target> = if self.targets.is_empty() {
            // One target per locality found, in the order they first appear.
            let mut names: Vec<String> = Vec::new();
            for state in set.all {
                let name = locality_name(state.endpoint()).to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            names
                .into_iter()
                .map(|name| Target {
                    name,
                    weight: 1,
                    policy: Policy::new(RoundRobinConfig::default()),
                })
                .collect()
        } else {
            self.targets.clone()
        };
        let specs: Vec<(String, Policy)> = targets
            .iter()
            .map(|t| (t.name.clone(), t.policy.clone()))
            .collect();
        let children = Children::build(&specs, set, rng, |endpoint| {
            let name = locality_name(endpoint);
            targets.iter().position(|t| t.name == name)
        });
        let weights = targets.iter().map(|t| t.weight).collect();
        Arc::new(WeightedTargetPicker { children, weights })
    }

    fn watches_membership(&self) -> bool {
        true
    }
}

/// The name of an endpoint's locality, `""` without one.
fn locality_name(endpoint: &Endpoint) -> &str {
    endpoint.locality().map_or("", |l| l.name())
}

/// Draws a target by weight among those with a usable endpoint.
pub struct WeightedTargetPicker {
    children: Children,
    weights: Vec<u32>,
}

impl Picker for WeightedTargetPicker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        if endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        // The targets that can take the call; one whose endpoints all went down since
        // the snapshot is dropped from the draw and another drawn.
        let mut open: Vec<usize> = (0..self.children.len())
            .filter(|&i| !self.children.usable(i).is_empty())
            .collect();
        while !open.is_empty() {
            let total: u64 = open.iter().map(|&i| u64::from(self.weights[i])).sum();
            let at = if total == 0 {
                0 // Only targets of weight 0 are left: the first takes it.
            } else {
                let mut draw = ctx.rng.random_range(0..total);
                open.iter()
                    .position(|&i| {
                        let weight = u64::from(self.weights[i]);
                        if draw < weight {
                            true
                        } else {
                            draw -= weight;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            let target = open[at];
            let name = self.children.name(target);
            let weight = self.weights[target];
            ctx.explain(|| format!("{NAME}: {name} (weight {weight} of {total}); "));
            match self.children.pick(target, ctx) {
                Ok(picked) => return Ok(picked),
                Err(_) => {
                    open.remove(at);
                }
            }
        }
        Err(PickError::none_ready(endpoints))
    }

    fn next_change(&self, now: u64) -> Option<u64> {
        self.children.next_change(now)
    }
}

impl std::fmt::Debug for WeightedTargetPicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<String> = (0..self.children.len())
            .map(|i| format!("{}={}", self.children.name(i), self.weights[i]))
            .collect();
        f.debug_struct("WeightedTargetPicker")
            .field("targets", &targets)
            .finish()
    }
}

#[cfg(test)]
mod tests;
