//! The policy registry: every policy a program knows, by name.
//!
//! A policy is a settings type that implements [`PolicyConfig`]: its name, a line on
//! what it does, its settings as gRPC service-config JSON spells them (parsed with
//! serde; with `#[serde(deny_unknown_fields, default)]`, as every built-in has, missing
//! fields take their defaults and unknown ones are refused), a check of those
//! settings, and how it builds a [`Picker`]. The built-in policies are listed once, in
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
    any::{Any, TypeId},
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use rand::RngCore;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{BuildPicker, Picker};
use crate::{EndpointState, Error};

/// Everything about one policy: implemented by its settings type, in its own file.
///
/// The type is what gRPC service-config JSON holds under the policy's name
/// (`{"least_request": {"choiceCount": 3}}` is a `LeastRequestConfig` with
/// `choice_count: 3`). Derive `Deserialize` with `#[serde(deny_unknown_fields)]` (and
/// `rename_all = "camelCase", default` for settings with defaults); a policy without
/// settings is an empty struct, `struct PickFirstConfig {}`, which reads `{}`.
pub trait PolicyConfig:
    DeserializeOwned + Default + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The name users type, in gRPC's snake_case spelling (`round_robin`).
    const NAME: &'static str;

    /// One line on what the policy picks, for help texts and tables.
    const SUMMARY: &'static str;

    /// Checks settings read from JSON, and may normalise them (gRPC clamps some
    /// values). The error says which field is wrong and why; the policy's name is
    /// added in front.
    fn validate(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// A picker for `endpoints` (the usable ones), built again whenever they change.
    /// `rng` seeds anything random in the picker itself, such as a starting point.
    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker>;

    /// The request header whose value the policy hashes, if it hashes one (the load
    /// generator then sends keys in it).
    fn hash_header(&self) -> Option<&str> {
        None
    }

    /// The decay time of the endpoints' latency estimate (see [`crate::latency`]), for
    /// a policy that reads it.
    fn latency_decay(&self) -> Duration {
        crate::latency::DEFAULT_DECAY
    }

    /// The slow-start settings, for a policy that ramps up new endpoints (see
    /// [`slow_start`](super::slow_start)); tables label the policy with them.
    fn slow_start(&self) -> Option<&super::SlowStartConfig> {
        None
    }

    /// How often to ask for out-of-band load reports, for a policy that reads them
    /// (see [`BuildPicker::oob_load_reports`]).
    fn oob_load_reports(&self) -> Option<Duration> {
        None
    }
}

/// A policy with its settings: what [`BalancerBuilder::policy`](crate::BalancerBuilder::policy)
/// takes, and what `--policy` and service-config JSON are parsed into.
///
/// ```
/// use lb_core::policy::{Policy, least_request::LeastRequestConfig};
///
/// let three = Policy::new(LeastRequestConfig { choice_count: 3, ..Default::default() });
/// assert_eq!(three.name(), "least_request");
/// assert_eq!(three.settings::<LeastRequestConfig>().unwrap().choice_count, 3);
/// assert_eq!("least_request".parse::<Policy>().unwrap(), Policy::new(LeastRequestConfig::default()));
/// ```
#[derive(Clone)]
pub struct Policy(Arc<dyn AnyPolicy>);

impl Policy {
    /// The policy these settings configure, as they are: [`PolicyConfig::validate`]
    /// runs on settings read from JSON, not here (see [`Policy::checked`]).
    pub fn new<P: PolicyConfig>(settings: P) -> Self {
        Self(Arc::new(settings))
    }

    /// The same, after the policy's own check (which may also normalise them, as
    /// `least_request` clamps `choiceCount` to 10).
    pub fn checked<P: PolicyConfig>(mut settings: P) -> Result<Self, Error> {
        settings
            .validate()
            .map_err(|reason| Error::InvalidServiceConfig {
                reason: format!("{}: {reason}", P::NAME),
            })?;
        Ok(Self::new(settings))
    }

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
            .map(|r| format!("  {:<22}{}", r.name, r.summary))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The name users type.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// One line on what the policy does.
    pub fn summary(&self) -> &'static str {
        self.0.summary()
    }

    /// The settings, if they are a `P` (`None` for another policy).
    pub fn settings<P: PolicyConfig>(&self) -> Option<&P> {
        self.0.as_any().downcast_ref()
    }

    /// The request header a hashing policy keys on, `None` for the others.
    pub fn hash_header(&self) -> Option<&str> {
        self.0.hash_header()
    }

    /// The latency decay time the endpoints should use (see [`crate::latency`]).
    pub fn latency_decay(&self) -> Duration {
        self.0.latency_decay()
    }

    /// The policy's slow-start settings, if it has them on.
    pub fn slow_start(&self) -> Option<&super::SlowStartConfig> {
        self.0.slow_start()
    }

    /// The name, and what sets it apart from the same policy's defaults where a table
    /// needs it: `round_robin+slow_start(10s)`.
    pub fn label(&self) -> String {
        match self.slow_start() {
            Some(config) => format!(
                "{}+slow_start({})",
                self.name(),
                humantime::format_duration(config.slow_start_window)
            ),
            None => self.name().to_string(),
        }
    }
}

/// `round_robin`, gRPC's usual choice beside pick_first, and this crate's default.
impl Default for Policy {
    fn default() -> Self {
        Self::new(super::round_robin::RoundRobinConfig::default())
    }
}

impl BuildPicker for Policy {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.0.build(endpoints, rng)
    }

    fn oob_load_reports(&self) -> Option<Duration> {
        self.0.oob_load_reports()
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.0.equals(other.0.as_any())
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.debug(f)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;

    /// A policy name with default settings, or gRPC service-config JSON.
    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.starts_with('{') {
            return super::config::parse_service_config(text);
        }
        Self::named(text)
    }
}

/// [`PolicyConfig`] without its generic parts, so that any policy fits in a `Policy`.
trait AnyPolicy: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker>;
    fn hash_header(&self) -> Option<&str>;
    fn latency_decay(&self) -> Duration;
    fn slow_start(&self) -> Option<&super::SlowStartConfig>;
    fn oob_load_reports(&self) -> Option<Duration>;
    fn as_any(&self) -> &dyn Any;
    fn equals(&self, other: &dyn Any) -> bool;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<P: PolicyConfig> AnyPolicy for P {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn summary(&self) -> &'static str {
        P::SUMMARY
    }
    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        PolicyConfig::build(self, endpoints, rng)
    }
    fn hash_header(&self) -> Option<&str> {
        PolicyConfig::hash_header(self)
    }
    fn latency_decay(&self) -> Duration {
        PolicyConfig::latency_decay(self)
    }
    fn slow_start(&self) -> Option<&super::SlowStartConfig> {
        PolicyConfig::slow_start(self)
    }
    fn oob_load_reports(&self) -> Option<Duration> {
        PolicyConfig::oob_load_reports(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn equals(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<P>() == Some(self)
    }
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One entry of the registry: a policy's name and how to make it.
#[derive(Clone, Copy)]
pub struct Registration {
    name: &'static str,
    summary: &'static str,
    type_id: fn() -> TypeId,
    from_json: fn(Value) -> Result<Policy, String>,
    default_policy: fn() -> Policy,
}

impl Registration {
    /// The entry for policy `P`.
    pub const fn of<P: PolicyConfig>() -> Self {
        Self {
            name: P::NAME,
            summary: P::SUMMARY,
            type_id: TypeId::of::<P>,
            from_json: from_json::<P>,
            default_policy: || Policy::new(P::default()),
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One line on what it does.
    pub fn summary(&self) -> &'static str {
        self.summary
    }

    /// The policy with its default settings.
    pub fn default_policy(&self) -> Policy {
        (self.default_policy)()
    }

    /// The policy with `settings` (the JSON object under its name), checked.
    pub fn from_json(&self, settings: Value) -> Result<Policy, String> {
        (self.from_json)(settings)
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn from_json<P: PolicyConfig>(settings: Value) -> Result<Policy, String> {
    let mut settings: P = serde_json::from_value(settings).map_err(|e| e.to_string())?;
    settings.validate()?;
    Ok(Policy::new(settings))
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
    use super::*;
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
