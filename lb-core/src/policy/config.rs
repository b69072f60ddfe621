//! A policy's settings: the [`PolicyConfig`] trait every policy implements, and
//! [`Policy`], any policy's settings behind one type.
//!
//! A policy is a settings type (what gRPC service-config JSON holds under the policy's
//! name) that knows its name, checks itself and builds a [`Picker`]. [`Policy`] holds
//! any of them, so that `--policy`, service-config JSON and
//! [`BalancerBuilder::policy`](crate::BalancerBuilder::policy) take one type; a [`Registration`] is how the
//! [registry](super::registry) makes one from a name or from JSON.

use std::{
    any::{Any, TypeId},
    fmt,
    sync::Arc,
    time::Duration,
};

use rand::RngCore;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::picker::{BuildPicker, EndpointSet, Picker};
use crate::{EndpointState, Error};

pub use crate::json::duration_text;

/// The header the hashing policies key on unless told otherwise.
pub const DEFAULT_HASH_HEADER: &str = "x-lb-key";

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
    fn slow_start(&self) -> Option<&super::slow_start::SlowStartConfig> {
        None
    }

    /// How often to ask for out-of-band load reports, for a policy that reads them
    /// (see [`BuildPicker::oob_load_reports`]).
    fn oob_load_reports(&self) -> Option<Duration> {
        None
    }

    /// A picker for `set.usable`, seeing every endpoint (`set.all`): what the balancer
    /// calls. The default is [`build`](Self::build) over the usable ones; a parent
    /// policy overrides it to see its children's endpoints that are not usable (see
    /// [`EndpointSet`]), and returns `true` from
    /// [`watches_membership`](Self::watches_membership).
    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.build(set.usable, rng)
    }

    /// Whether pickers must be rebuilt when an endpoint joins or leaves, usable or not
    /// (see [`BuildPicker::watches_membership`]).
    fn watches_membership(&self) -> bool {
        false
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
    pub fn slow_start(&self) -> Option<&super::slow_start::SlowStartConfig> {
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

    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.0.build_set(set, rng)
    }

    fn watches_membership(&self) -> bool {
        self.0.watches_membership()
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

/// [`PolicyConfig`] without its generic parts, so that any policy fits in a `Policy`.
trait AnyPolicy: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker>;
    fn hash_header(&self) -> Option<&str>;
    fn latency_decay(&self) -> Duration;
    fn slow_start(&self) -> Option<&super::slow_start::SlowStartConfig>;
    fn oob_load_reports(&self) -> Option<Duration>;
    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker>;
    fn watches_membership(&self) -> bool;
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
    fn slow_start(&self) -> Option<&super::slow_start::SlowStartConfig> {
        PolicyConfig::slow_start(self)
    }
    fn oob_load_reports(&self) -> Option<Duration> {
        PolicyConfig::oob_load_reports(self)
    }
    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        PolicyConfig::build_set(self, set, rng)
    }
    fn watches_membership(&self) -> bool {
        PolicyConfig::watches_membership(self)
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
    pub(super) name: &'static str,
    pub(super) summary: &'static str,
    pub(super) type_id: fn() -> TypeId,
    pub(super) from_json: fn(Value) -> Result<Policy, String>,
    pub(super) default_policy: fn() -> Policy,
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

/// Checks a `requestHashHeader` setting: a header name, in lower case as gRPC
/// metadata keys are.
pub fn check_header(header: &str) -> Result<(), String> {
    match http::HeaderName::from_bytes(header.as_bytes()) {
        Ok(name) if name.as_str() == header => Ok(()),
        _ => Err(format!(
            "requestHashHeader `{header}` is not a lower-case header name"
        )),
    }
}
