//! `zone_affinity`: a *parent* policy written outside lb-core, in one file.
//!
//! It keeps calls in the client's own zone, and spills them to the other zones only
//! when its own cannot take them: when fewer than `minLocal` of its endpoints are
//! usable. Both halves are children, each a policy of its own (`round_robin` unless
//! told otherwise), so that the local zone can be balanced one way and the spill
//! another. It is what Envoy calls zone-aware routing, in its simplest form, and how a
//! learner writes a parent: a settings type, a picker that chooses a child per call,
//! and lb-core's [`Children`] to split the endpoints and build the children.
//!
//! Worked example: the client runs in `zone-a`, `minLocal` 1, endpoints `a1@zone-a`,
//! `a2@zone-a`, `b1@zone-b`. Calls go `a1 a2 a1 a2 ...`; with both `a`s down they go
//! to `b1`; with one `a` back, to it again.
//!
//! ```
//! use lb_core::Policy;
//!
//! zone_affinity::register().unwrap();
//! let policy: Policy = r#"{"zone_affinity": {"zone": "zone-a", "minLocal": 2,
//!     "localPolicy": [{"least_request": {}}]}}"#.parse().unwrap();
//! assert_eq!(policy.name(), "zone_affinity");
//! let err = r#"{"zone_affinity": {"minLocal": 1}}"#.parse::<Policy>().unwrap_err();
//! assert!(err.to_string().contains("zone_affinity: zone: missing"), "{err}");
//! ```

use std::sync::Arc;

use lb_core::{
    EndpointState, PickContext, PickError, Picker, Policy,
    policy::{
        EndpointSet, PolicyConfig, children::Children, register as register_policy,
        registry::policy_from_json, round_robin::RoundRobinConfig,
    },
};
use rand::RngCore;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// The name users type.
pub const NAME: &str = "zone_affinity";

/// Settings of `zone_affinity`: `{"zone_affinity": {"zone": "zone-a", "minLocal": 1,
/// "localPolicy": [...], "spillPolicy": [...]}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneAffinityConfig {
    /// The client's own zone (a locality's name, as written after `@`).
    pub zone: String,
    /// The fewest usable endpoints in the zone for calls to stay there (default 1).
    pub min_local: usize,
    /// How the zone's endpoints are picked (default `round_robin`).
    pub local_policy: Policy,
    /// How the other zones' endpoints are picked when calls spill (default
    /// `round_robin`).
    pub spill_policy: Policy,
}

impl Default for ZoneAffinityConfig {
    /// No zone: every call spills, to `round_robin` over every endpoint.
    fn default() -> Self {
        Self {
            zone: String::new(),
            min_local: 1,
            local_policy: Policy::new(RoundRobinConfig::default()),
            spill_policy: Policy::new(RoundRobinConfig::default()),
        }
    }
}

impl<'de> Deserialize<'de> for ZoneAffinityConfig {
    /// Reads the JSON by hand, to name the field of every mistake.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fields = Map::<String, Value>::deserialize(d)?;
        read(&fields).map_err(serde::de::Error::custom)
    }
}

fn read(fields: &Map<String, Value>) -> Result<ZoneAffinityConfig, String> {
    let known = ["zone", "minLocal", "localPolicy", "spillPolicy"];
    if let Some(field) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{field}` (known: {})",
            known.join(", ")
        ));
    }
    let mut config = ZoneAffinityConfig {
        zone: fields
            .get("zone")
            .and_then(Value::as_str)
            .ok_or("zone: missing (the client's zone, e.g. \"zone-a\")")?
            .to_string(),
        ..ZoneAffinityConfig::default()
    };
    if let Some(min) = fields.get("minLocal") {
        config.min_local = min
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("minLocal: {min} is not a whole number from 1"))?;
    }
    for (field, policy) in [
        ("localPolicy", &mut config.local_policy),
        ("spillPolicy", &mut config.spill_policy),
    ] {
        if let Some(value) = fields.get(field) {
            *policy = policy_from_json(value).map_err(|e| format!("{field}: {e}"))?;
        }
    }
    Ok(config)
}

impl PolicyConfig for ZoneAffinityConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str =
        "the client's own zone while it can take the calls, else the others";

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.build_set(EndpointSet::usable(endpoints), rng)
    }

    /// Two children: the zone's endpoints, and everyone else's.
    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        let specs = vec![
            ("local".to_string(), self.local_policy.clone()),
            ("spill".to_string(), self.spill_policy.clone()),
        ];
        let zone = self.zone.clone();
        let children = Children::build(&specs, set, rng, move |endpoint| {
            let here = endpoint.locality().is_some_and(|l| l.name() == zone);
            Some(if here { 0 } else { 1 })
        });
        Arc::new(ZoneAffinity {
            children,
            min_local: self.min_local,
        })
    }

    fn watches_membership(&self) -> bool {
        true
    }
}

/// The picker: the local child while it has enough usable endpoints, else the spill.
pub struct ZoneAffinity {
    children: Children,
    min_local: usize,
}

impl Picker for ZoneAffinity {
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
        let local = self
            .children
            .usable(0)
            .iter()
            .filter(|e| e.is_ready())
            .count();
        if local >= self.min_local {
            ctx.explain(|| format!("{NAME}: {local} usable in the zone; "));
            if let Ok(picked) = self.children.pick(0, ctx) {
                return Ok(picked);
            }
        }
        ctx.explain(|| format!("{NAME}: {local} usable in the zone, spilling; "));
        self.children.pick(1, ctx)
    }
}

/// Makes `zone_affinity` known to lb-core, by name and in service-config JSON.
pub fn register() -> Result<(), lb_core::Error> {
    register_policy::<ZoneAffinityConfig>()
}
