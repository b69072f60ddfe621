//! The policy registry: every policy a program knows, by name.
//!
//! A policy is a settings type that implements [`PolicyConfig`]: its name, a line on
//! what it does, its settings as gRPC service-config JSON spells them (parsed with
//! serde; with `#[serde(deny_unknown_fields, default)]`, as every built-in has, missing
//! fields take their defaults and unknown ones are refused), a check of those
//! settings, and how it builds a [`Picker`](super::Picker). The built-in policies are listed once, in
//! [`super`]; code outside this crate adds its own with [`register`], as grpc-go's
//! `balancer.Register` does. From then on the name works everywhere a built-in's does:
//! `"least_loaded".parse::<Policy>()`, service-config JSON, [`Policy::all`] (and so
//! the list of valid names in errors and help, `compare` and `simulate`).
//!
//! ```
//! use std::sync::Arc;
//! use lb_core::policy::{PickContext, PickError, Picker, Policy, PolicyConfig, register};
//! use lb_core::EndpointState;
//!
//! /// `first_listed`: always the first ready endpoint of the list (a toy).
//! #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct FirstListed {}
//!
//! struct FirstListedPicker;
//!
//! impl Picker for FirstListedPicker {
//!     fn name(&self) -> &'static str { "first_listed" }
//!     fn pick(&self, endpoints: &[EndpointState], _: &mut PickContext<'_>) -> Result<usize, PickError> {
//!         endpoints.iter().position(EndpointState::is_ready).ok_or_else(|| PickError::none_ready(endpoints))
//!     }
//! }
//!
//! impl PolicyConfig for FirstListed {
//!     const NAME: &'static str = "first_listed";
//!     const SUMMARY: &'static str = "the first ready endpoint of the list";
//!     fn build(&self, _: &[EndpointState], _: &mut dyn rand::RngCore) -> Arc<dyn Picker> {
//!         Arc::new(FirstListedPicker)
//!     }
//! }
//!
//! register::<FirstListed>().unwrap();
//! let policy: Policy = "first_listed".parse().unwrap();
//! assert_eq!(policy, Policy::new(FirstListed {}));
//! let policy: Policy = r#"{"loadBalancingConfig":[{"first_listed":{}}]}"#.parse().unwrap();
//! assert_eq!(policy.name(), "first_listed");
//! assert!(Policy::names().contains(&"first_listed"));
//! ```

use std::{
    any::TypeId,
    sync::{PoisonError, RwLock},
};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::{Policy, PolicyConfig, Registration};
use crate::Error;

impl Policy {
    /// The policy called `name`, with its default settings.
    pub fn named(name: &str) -> Result<Self, Error> {
        find(name)
            .map(|registration| registration.default_policy())
            .ok_or_else(|| Error::UnknownPolicy {
                name: name.to_string(),
                valid: Self::names().join(", "),
            })
    }

    /// Every registered policy with default settings: the built-ins in the order
    /// help texts list them, then those registered with [`register`].
    pub fn all() -> Vec<Policy> {
        registrations()
            .iter()
            .map(Registration::default_policy)
            .collect()
    }

    /// Every registered name, in the same order.
    pub fn names() -> Vec<&'static str> {
        registrations().iter().map(|r| r.name).collect()
    }

    /// A line per registered policy, its name and its summary, for help texts:
    /// `  round_robin           endpoints in turn (the article's 轮询)`.
    pub fn table() -> String {
        registrations()
            .iter()
            .map(|r| format!("  {:<21} {}", r.name, r.summary))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `round_robin`, gRPC's usual choice beside pick_first, and this crate's default.
impl Default for Policy {
    fn default() -> Self {
        Self::new(super::round_robin::RoundRobinConfig::default())
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;

    /// A policy name with default settings, or gRPC service-config JSON.
    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.starts_with('{') {
            return parse_service_config(text);
        }
        Self::named(text)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceConfig {
    load_balancing_config: Vec<Map<String, Value>>,
}

/// Reads service-config JSON (see the module docs).
pub fn parse_service_config(text: &str) -> Result<Policy, Error> {
    let invalid = |reason: String| Error::InvalidServiceConfig { reason };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(invalid("expected a JSON object".into()));
    };
    let candidates = if object.contains_key("loadBalancingConfig") {
        serde_json::from_value::<ServiceConfig>(Value::Object(object))
            .map_err(|e| invalid(e.to_string()))?
            .load_balancing_config
    } else {
        vec![object]
    };

    choose(candidates).map_err(invalid)
}

/// The policy a child's config names, for a parent policy's settings: a
/// `loadBalancingConfig`-style list (`[{"round_robin": {}}]`, the first supported
/// entry winning) or a single `{"round_robin": {}}`. The error says what is wrong, for
/// the caller to prefix with where it is (`children.p0.config: ...`).
pub fn policy_from_json(value: &Value) -> Result<Policy, String> {
    let entry = |value: &Value| match value {
        Value::Object(object) => Ok(object.clone()),
        other => Err(format!(
            "expected {{\"policy_name\": {{settings}}}}, not {other}"
        )),
    };
    let candidates = match value {
        Value::Array(list) => list.iter().map(entry).collect::<Result<Vec<_>, _>>()?,
        other => vec![entry(other)?],
    };
    choose(candidates)
}

/// The first entry of a `loadBalancingConfig` list whose policy is registered, with
/// its settings read and checked (gRPC skips the names it does not know).
fn choose(candidates: Vec<Map<String, Value>>) -> Result<Policy, String> {
    let mut seen = Vec::new();
    for entry in candidates {
        let mut fields = entry.into_iter();
        let (Some((name, settings)), None) = (fields.next(), fields.next()) else {
            return Err(
                "each loadBalancingConfig entry has exactly one policy name, \
                 e.g. {\"round_robin\": {}}"
                    .into(),
            );
        };
        match find(&name) {
            Some(policy) => {
                return policy
                    .from_json(settings)
                    .map_err(|reason| format!("{name}: {reason}"));
            }
            None => seen.push(name), // Not one we know: gRPC moves on to the next entry.
        }
    }
    Err(format!(
        "no supported policy in [{}]; supported: {}",
        seen.join(", "),
        Policy::names().join(", ")
    ))
}

/// The policies registered by code outside this crate, after the built-ins.
static REGISTERED: RwLock<Vec<Registration>> = RwLock::new(Vec::new());

/// Makes policy `P` known by its name, everywhere a built-in policy is.
///
/// Registering the same type again does nothing; another type under a name already
/// taken (a built-in's, say) is an error, rather than a silent replacement.
pub fn register<P: PolicyConfig>() -> Result<(), Error> {
    let registration = Registration::of::<P>();
    let mut registered = REGISTERED.write().unwrap_or_else(PoisonError::into_inner);
    let taken = super::BUILT_IN
        .iter()
        .chain(registered.iter())
        .find(|r| r.name == P::NAME);
    match taken {
        Some(existing) if (existing.type_id)() == TypeId::of::<P>() => Ok(()),
        Some(_) => Err(Error::InvalidPolicyName {
            name: P::NAME,
            reason: "already registered by another type; choose another name".into(),
        }),
        None if !is_policy_name(P::NAME) => Err(Error::InvalidPolicyName {
            name: P::NAME,
            reason: "not snake_case (lower-case letters, digits and `_`)".into(),
        }),
        None => {
            registered.push(registration);
            Ok(())
        }
    }
}

/// Every registration: the built-ins, then the rest in the order registered.
pub fn registrations() -> Vec<Registration> {
    let registered = REGISTERED.read().unwrap_or_else(PoisonError::into_inner);
    super::BUILT_IN
        .iter()
        .chain(registered.iter())
        .copied()
        .collect()
}

/// The registration called `name`.
pub fn find(name: &str) -> Option<Registration> {
    registrations().into_iter().find(|r| r.name == name)
}

fn is_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::RngCore;

    use super::*;
    use crate::EndpointState;
    use crate::policy::Picker;
    use crate::policy::round_robin::RoundRobinConfig;

    /// A second type that claims a built-in's name.
    #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
    struct Impostor {}

    impl PolicyConfig for Impostor {
        const NAME: &'static str = "round_robin";
        const SUMMARY: &'static str = "not round robin at all";
        fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
            Arc::new(super::super::pick_first::PickFirst)
        }
    }

    #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
    struct BadName {}

    impl PolicyConfig for BadName {
        const NAME: &'static str = "Bad Name";
        const SUMMARY: &'static str = "a name no one could type";
        fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
            Arc::new(super::super::pick_first::PickFirst)
        }
    }

    #[test]
    fn a_taken_name_is_refused_and_the_same_type_is_welcome_again() {
        let err = register::<Impostor>().unwrap_err().to_string();
        assert!(err.contains("`round_robin`: already registered"), "{err}");
        register::<RoundRobinConfig>().unwrap();
        assert_eq!(
            Policy::names()
                .iter()
                .filter(|&&n| n == "round_robin")
                .count(),
            1
        );
        let err = register::<BadName>().unwrap_err().to_string();
        assert!(err.contains("not snake_case"), "{err}");
    }

    #[test]
    fn policies_compare_by_type_and_settings() {
        use crate::policy::least_request::LeastRequestConfig;
        let two = Policy::new(LeastRequestConfig {
            choice_count: 2,
            ..Default::default()
        });
        let three = Policy::new(LeastRequestConfig {
            choice_count: 3,
            ..Default::default()
        });
        assert_eq!(two, Policy::new(LeastRequestConfig::default()));
        assert_ne!(two, three);
        assert_ne!(two, Policy::default());
        assert_eq!(
            format!("{three:?}"),
            "LeastRequestConfig { choice_count: 3, slow_start_config: None }"
        );
        let clamped = Policy::checked(LeastRequestConfig {
            choice_count: 50,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            clamped,
            Policy::new(LeastRequestConfig {
                choice_count: 10,
                ..Default::default()
            })
        );
        let err = Policy::checked(LeastRequestConfig {
            choice_count: 1,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("least_request: choiceCount 1"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;
    use crate::policy::{
        least_request::LeastRequestConfig, maglev::MaglevConfig, peak_ewma::PeakEwmaConfig,
        ring_hash::RingHashConfig, round_robin::RoundRobinConfig,
    };
    use std::time::Duration;

    fn parse(text: &str) -> Result<Policy, String> {
        text.parse::<Policy>().map_err(|e| e.to_string())
    }

    #[test]
    fn reads_grpc_service_configs() {
        assert_eq!(
            parse(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#),
            Ok(Policy::new(RoundRobinConfig::default()))
        );
        assert_eq!(
            parse(r#"{"least_request":{"choiceCount":3}}"#),
            Ok(Policy::new(LeastRequestConfig {
                choice_count: 3,
                ..Default::default()
            }))
        );
        assert_eq!(
            parse(r#"{"least_request":{"choiceCount":50}}"#),
            Ok(Policy::new(LeastRequestConfig {
                choice_count: 10,
                ..Default::default()
            })),
            "clamped as gRFC A48 says"
        );
        let ring = parse(r#"{"ring_hash":{"minRingSize":2048,"requestHashHeader":"user"}}"#);
        let ring = ring.unwrap();
        let ring = ring.settings::<RingHashConfig>().unwrap();
        assert_eq!(ring.min_ring_size, 2048);
        assert_eq!(ring.request_hash_header, "user");
        let ewma = parse(r#"{"peak_ewma":{"decay":"5s","defaultLatency":"0.020s"}}"#);
        assert_eq!(
            ewma,
            Ok(Policy::new(PeakEwmaConfig {
                decay: Duration::from_secs(5),
                default_latency: Duration::from_millis(20),
                ..Default::default()
            }))
        );
    }

    #[test]
    fn the_first_known_policy_wins() {
        let text =
            r#"{"loadBalancingConfig":[{"xds_cluster_manager":{}},{"maglev":{}},{"random":{}}]}"#;
        assert_eq!(parse(text), Ok(Policy::new(MaglevConfig::default())));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                r#"{"least_request":{"choices":3}}"#,
                "unknown field `choices`",
            ),
            (r#"{"least_request":{"choiceCount":1}}"#, "below 2"),
            (
                r#"{"round_robin":{"x":1}}"#,
                "round_robin: unknown field `x`",
            ),
            (r#"{"maglev":{"tableSize":65536}}"#, "not a prime"),
            (
                r#"{"ring_hash":{"minRingSize":10,"maxRingSize":5}}"#,
                "minRingSize",
            ),
            (
                r#"{"ring_hash":{"requestHashHeader":"User Id"}}"#,
                "not a lower-case header",
            ),
            (
                r#"{"peak_ewma":{"decay":"soon"}}"#,
                "`soon` is not a duration",
            ),
            (
                r#"{"loadBalancingConfig":[{"grpclb":{}}]}"#,
                "no supported policy in [grpclb]",
            ),
            (
                r#"{"loadBalancingConfig":[{"a":{},"b":{}}]}"#,
                "exactly one policy name",
            ),
            (r#"{"loadBalancingConfig":[]}"#, "no supported policy"),
            (
                r#"{"loadBalancingConfig":[{"random":{}}],"x":1}"#,
                "unknown field `x`",
            ),
            ("{oops", "not valid JSON"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
