//! gRPC's whole service config: the policy, and per method its deadline, its retries or
//! its hedging, and the retry throttle (gRFC A2, A6).
//!
//! A gRPC client takes one JSON document per target, as grpc-go reads it:
//!
//! ```json
//! {
//!   "loadBalancingConfig": [{"round_robin": {}}],
//!   "methodConfig": [{
//!     "name": [{"service": "example.MyService", "method": "SayHello"}],
//!     "timeout": "1s",
//!     "retryPolicy": {
//!       "maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
//!       "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
//!     }
//!   }],
//!   "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
//! }
//! ```
//!
//! # Which entry a call gets
//! A call to `/example.MyService/SayHello` takes the entry naming that service and
//! method; failing that, the entry naming the service alone (`{"service":
//! "example.MyService"}`); failing that, the default entry (`{}`, or `{"service": ""}`);
//! failing that, none: the balancer's own [`RetryPolicy`](crate::RetryPolicy) applies.
//! A name may appear in one entry only.
//!
//! # What an entry does
//! - `timeout`: the call's deadline when the caller set none, or the caller's if
//!   sooner. All attempts of the call fit in it.
//! - `waitForReady`: `true` makes a call wait (until its deadline, or the balancer's
//!   queue timeout) even when every endpoint has failed, instead of failing at once.
//! - `retryPolicy`: up to `maxAttempts` (at most 5) attempts, each on an endpoint not
//!   tried yet where one is ready, for answers whose status is in
//!   `retryableStatusCodes`. Between attempts a random wait of up to `initialBackoff ×
//!   backoffMultiplier^(n-1)`, capped at `maxBackoff`, unless the server said how long
//!   with `grpc-retry-pushback-ms` (a negative or unreadable value: no retry). A call
//!   cut off by a broken connection counts as `UNAVAILABLE`. Every retry carries
//!   `grpc-previous-rpc-attempts`.
//! - `hedgingPolicy`: the call is sent again, to another endpoint, each time
//!   `hedgingDelay` passes without an answer, up to `maxAttempts` in all; the first
//!   answer wins and the others are cancelled. An answer whose status is in
//!   `nonFatalStatusCodes` does not win: the next attempt goes out at once.
//!
//! `connectionScaling.maxConnectionsPerSubchannel` (gRFC A105) lets an endpoint open
//! more connections when one has as many calls open as its server allows (see
//! [`crate::subchannels`]'s `scaling.rs`).
//!
//! `retryThrottling` replaces the balancer's retry budget: a bucket of `maxTokens`,
//! one taken per failed attempt, `tokenRatio` given back per success; retries and
//! hedges go out only while more than half are left.
//!
//! Unknown fields and invalid values are errors that name them:
//!
//! ```
//! use lb_core::service_config::ServiceConfig;
//!
//! let config: ServiceConfig = r#"{"methodConfig": [{"name": [{"service": "example.MyService"}],
//!     "timeout": "0.5s"}]}"#.parse().unwrap();
//! let entry = config.method("/example.MyService/SayHello").unwrap();
//! assert_eq!(entry.timeout, Some(std::time::Duration::from_millis(500)));
//! assert!(config.method("/other.Service/Call").is_none());
//!
//! let err = r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempt": 3}}]}"#
//!     .parse::<ServiceConfig>()
//!     .unwrap_err();
//! assert!(err.to_string().contains("methodConfig[0].retryPolicy: unknown field `maxAttempt`"));
//! ```
//!
//! Layer 2, the config: gRPC's service-config JSON parsed into plain types; it never
//! imports the layers that use them. May import: `policy`, `json`, `error`.

use std::{collections::HashMap, io::Read, path::Path, str::FromStr, sync::Arc, time::Duration};

use serde::{Deserialize, Deserializer, de};
use serde_json::{Map, Value};
use tonic::Code;

use crate::{Error, Policy, json::duration_text};

/// The most attempts a retry or hedging policy may ask for (gRFC A6: more are read as
/// 5).
pub const MAX_ATTEMPTS: u32 = 5;

/// The most connections one endpoint may have (gRFC A105's
/// `maxConnectionsPerSubchannel`; a service config may not ask for more).
pub const MAX_CONNECTIONS_PER_ENDPOINT: u32 = 100;

/// The largest service config read from a file.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A parsed service config. Build one with [`str::parse`] or [`ServiceConfig::load`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceConfig {
    policy: Option<Policy>,
    methods: Vec<Arc<MethodConfig>>,
    retry_throttling: Option<RetryThrottling>,
    health_check_service: Option<String>,
    max_connections_per_subchannel: Option<u32>,
    /// The entries by service, then method: looked up by `&str`, with no allocation.
    services: HashMap<String, ServiceEntries>,
    default: Option<usize>,
}

/// The entries naming one service.
#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceEntries {
    /// The one naming the service alone.
    all: Option<usize>,
    by_method: HashMap<String, usize>,
}

/// One `methodConfig` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodConfig {
    /// The methods it applies to.
    pub names: Vec<MethodName>,
    /// The deadline of a call that sets none (a sooner one of the caller's wins).
    pub timeout: Option<Duration>,
    /// Whether calls wait for an endpoint even while all have failed.
    pub wait_for_ready: Option<bool>,
    /// How failed calls are retried.
    pub retry_policy: Option<RetryConfig>,
    /// How slow calls are hedged (never together with `retry_policy`).
    pub hedging_policy: Option<HedgingPolicy>,
}

/// A `name` of a `methodConfig` entry: a service and, optionally, one of its methods.
/// Both empty: the default entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodName {
    /// The fully qualified service, `example.MyService`.
    #[serde(default)]
    pub service: String,
    /// The method, `SayHello`; empty or absent: every method of the service.
    #[serde(default)]
    pub method: String,
}

/// `retryPolicy` (gRFC A6).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConfig {
    /// Attempts in all, the first included: 2 to 5 (more are read as 5).
    pub max_attempts: u32,
    /// The longest wait before the first retry.
    #[serde(with = "duration_text")]
    pub initial_backoff: Duration,
    /// The longest wait before any retry.
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
    /// How much the longest wait grows per retry.
    pub backoff_multiplier: f64,
    /// The statuses that are retried.
    #[serde(deserialize_with = "status_codes")]
    pub retryable_status_codes: Vec<Code>,
}

/// `hedgingPolicy` (gRFC A6).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HedgingPolicy {
    /// Attempts in all, the first included: 2 to 5 (more are read as 5).
    pub max_attempts: u32,
    /// How long to wait for an answer before sending the next attempt (0: all at
    /// once).
    #[serde(default, with = "duration_text")]
    pub hedging_delay: Duration,
    /// Answers that do not end the call: the next attempt goes out at once instead.
    #[serde(default, deserialize_with = "status_codes")]
    pub non_fatal_status_codes: Vec<Code>,
}

/// `retryThrottling` (gRFC A6): the token bucket that stops retries and hedges when
/// most calls fail.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryThrottling {
    /// The bucket's size: 1 to 1000.
    pub max_tokens: u32,
    /// Tokens given back per successful call: 0.001 to 1 (read to three decimal
    /// places).
    pub token_ratio: f64,
}

/// The raw `methodConfig` entry, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMethod {
    #[serde(default)]
    name: Vec<MethodName>,
    #[serde(default, with = "optional_duration")]
    timeout: Option<Duration>,
    wait_for_ready: Option<bool>,
    retry_policy: Option<Value>,
    hedging_policy: Option<Value>,
    max_request_message_bytes: Option<Value>,
    max_response_message_bytes: Option<Value>,
}

mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::duration_text")] Duration);
        Ok(Option::<Wrapped>::deserialize(d)
            .map_err(|e| D::Error::custom(format!("timeout: {e}")))?
            .map(|w| w.0))
    }
}

/// Status codes by gRPC's names (`"UNAVAILABLE"`) or numbers (`14`), as grpc-go reads
/// them.
fn status_codes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Code>, D::Error> {
    let values = Vec::<Value>::deserialize(d)?;
    values
        .iter()
        .map(|value| parse_code(value).map_err(de::Error::custom))
        .collect()
}

const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn parse_code(value: &Value) -> Result<Code, String> {
    let number = match value {
        Value::String(name) => CODE_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "`{name}` is not a status code; codes: {}",
                    CODE_NAMES.join(", ")
                )
            })?,
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n < CODE_NAMES.len())
            .ok_or_else(|| format!("{n} is not a status code (0 to 16)"))?,
        other => return Err(format!("{other} is not a status code")),
    };
    Ok(Code::from_i32(number as i32))
}

impl ServiceConfig {
    /// Reads `--service-config`'s argument: JSON if it starts with `{`, else the path of
    /// a file holding it (at most [`MAX_FILE_BYTES`]).
    pub fn load(arg: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidServiceConfig { reason };
        if arg.trim_start().starts_with('{') {
            return arg.parse();
        }
        let path = Path::new(arg);
        let size = std::fs::metadata(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(invalid(format!(
                "{} is {size} bytes; a service config may be at most {MAX_FILE_BYTES}",
                path.display()
            )));
        }
        // The size said by the file system is not always the size read (a pipe, a
        // file in /proc): the read is limited too.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(invalid(format!(
                "{} holds more than {MAX_FILE_BYTES} bytes; a service config may be at most that",
                path.display()
            )));
        }
        text.parse().map_err(|err| match err {
            Error::InvalidServiceConfig { reason } => {
                invalid(format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// The policy from `loadBalancingConfig`, if it has one.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// The same config without its policy (for a caller that picks the policy itself).
    pub fn without_policy(mut self) -> Self {
        self.policy = None;
        self
    }

    /// The `methodConfig` entries, in order.
    pub fn methods(&self) -> &[Arc<MethodConfig>] {
        &self.methods
    }

    /// `retryThrottling`, if set.
    pub fn retry_throttling(&self) -> Option<RetryThrottling> {
        self.retry_throttling
    }

    /// `healthCheckConfig.serviceName`, if set (gRFC A17): the service the health
    /// checks ask about.
    pub fn health_check_service(&self) -> Option<&str> {
        self.health_check_service.as_deref()
    }

    /// `connectionScaling.maxConnectionsPerSubchannel`, if set (gRFC A105): how many
    /// connections for calls an endpoint may open when one is full.
    pub fn max_connections_per_subchannel(&self) -> Option<u32> {
        self.max_connections_per_subchannel
    }

    /// The entry for a call to `path` (`/example.MyService/SayHello`), if any applies.
    pub fn method(&self, path: &str) -> Option<&Arc<MethodConfig>> {
        if self.methods.is_empty() {
            return None;
        }
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let entries = self.services.get(service);
        let index = entries
            .and_then(|e| e.by_method.get(method).copied().or(e.all))
            .or(self.default)?;
        self.methods.get(index)
    }

    /// Whether any entry sets a retry or hedging policy (then request bodies are kept
    /// for replay).
    pub fn replays(&self) -> bool {
        self.methods
            .iter()
            .any(|m| m.retry_policy.is_some() || m.hedging_policy.is_some())
    }
}

impl FromStr for ServiceConfig {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidServiceConfig { reason };
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(invalid("expected a JSON object".into()));
        };
        let mut config = Self::default();
        if let Some(lb) = object.remove("loadBalancingConfig") {
            let mut only = Map::new();
            only.insert("loadBalancingConfig".into(), lb);
            config.policy = Some(Value::Object(only).to_string().parse()?);
        }
        if let Some(throttling) = object.remove("retryThrottling") {
            let t: RetryThrottling = serde_json::from_value(throttling)
                .map_err(|e| invalid(format!("retryThrottling: {e}")))?;
            if !(1..=1000).contains(&t.max_tokens) {
                return Err(invalid(format!(
                    "retryThrottling.maxTokens must be 1 to 1000, not {}",
                    t.max_tokens
                )));
            }
            // Read to three decimal places (gRFC A6): 0.0004 would give nothing back.
            if !(t.token_ratio >= 0.001 && t.token_ratio <= 1.0) {
                return Err(invalid(format!(
                    "retryThrottling.tokenRatio must be at least 0.001 and at most 1, not {}",
                    t.token_ratio
                )));
            }
            config.retry_throttling = Some(t);
        }
        if let Some(health) = object.remove("healthCheckConfig") {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields, rename_all = "camelCase")]
            struct Health {
                service_name: String,
            }
            let health: Health = serde_json::from_value(health)
                .map_err(|e| invalid(format!("healthCheckConfig: {e}")))?;
            config.health_check_service = Some(health.service_name);
        }
        if let Some(scaling) = object.remove("connectionScaling") {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields, rename_all = "camelCase")]
            struct Scaling {
                max_connections_per_subchannel: u32,
            }
            let scaling: Scaling = serde_json::from_value(scaling)
                .map_err(|e| invalid(format!("connectionScaling: {e}")))?;
            let max = scaling.max_connections_per_subchannel;
            if !(1..=MAX_CONNECTIONS_PER_ENDPOINT).contains(&max) {
                return Err(invalid(format!(
                    "connectionScaling.maxConnectionsPerSubchannel must be 1 to {}, not {max}",
                    MAX_CONNECTIONS_PER_ENDPOINT
                )));
            }
            config.max_connections_per_subchannel = Some(max);
        }
        if let Some(methods) = object.remove("methodConfig") {
            let Value::Array(methods) = methods else {
                return Err(invalid("methodConfig must be a list of entries".into()));
            };
            for (i, entry) in methods.into_iter().enumerate() {
                let at = format!("methodConfig[{i}]");
                let method = read_method(entry, &at).map_err(invalid)?;
                config.add(method, &at).map_err(invalid)?;
            }
        }
        if let Some((field, _)) = object.into_iter().next() {
            return Err(invalid(format!(
                "unknown field `{field}`; expected loadBalancingConfig, methodConfig, \
                 retryThrottling, healthCheckConfig or connectionScaling"
            )));
        }
        Ok(config)
    }
}

impl ServiceConfig {
    /// Adds an entry and indexes its names, refusing a name seen before.
    fn add(&mut self, method: MethodConfig, at: &str) -> Result<(), String> {
        let index = self.methods.len();
        for name in &method.names {
            let fresh = match (name.service.is_empty(), name.method.is_empty()) {
                (true, true) => self.default.replace(index).is_none(),
                (true, false) => {
                    return Err(format!(
                        "{at}.name: method `{}` without a service; name the service too",
                        name.method
                    ));
                }
                (false, true) => self
                    .services
                    .entry(name.service.clone())
                    .or_default()
                    .all
                    .replace(index)
                    .is_none(),
                (false, false) => self
                    .services
                    .entry(name.service.clone())
                    .or_default()
                    .by_method
                    .insert(name.method.clone(), index)
                    .is_none(),
            };
            if !fresh {
                return Err(format!(
                    "{at}.name: {} is named by an earlier entry too",
                    describe(name)
                ));
            }
        }
        self.methods.push(Arc::new(method));
        Ok(())
    }
}

fn describe(name: &MethodName) -> String {
    match (name.service.as_str(), name.method.as_str()) {
        ("", _) => "the default entry ({})".into(),
        (service, "") => format!("service `{service}`"),
        (service, method) => format!("`{service}/{method}`"),
    }
}

fn read_method(entry: Value, at: &str) -> Result<MethodConfig, String> {
    let raw: RawMethod = serde_json::from_value(entry).map_err(|e| format!("{at}: {e}"))?;
    if raw.max_request_message_bytes.is_some() || raw.max_response_message_bytes.is_some() {
        return Err(format!(
            "{at}: maxRequestMessageBytes and maxResponseMessageBytes are not applied by the \
             balancer; set them on the tonic client (max_encoding_message_size, \
             max_decoding_message_size) and leave them out here"
        ));
    }
    if raw.name.is_empty() {
        return Err(format!(
            "{at}.name: an entry needs at least one name, e.g. \
             [{{\"service\": \"example.MyService\"}}], or [{{}}] for every method"
        ));
    }
    let retry_policy = match raw.retry_policy {
        None => None,
        Some(value) => {
            let mut retry: RetryConfig =
                serde_json::from_value(value).map_err(|e| format!("{at}.retryPolicy: {e}"))?;
            let field = |name: &str, why: String| format!("{at}.retryPolicy.{name}: {why}");
            if retry.max_attempts < 2 {
                return Err(field(
                    "maxAttempts",
                    format!("must be 2 or more, not {}", retry.max_attempts),
                ));
            }
            retry.max_attempts = retry.max_attempts.min(MAX_ATTEMPTS);
            if retry.initial_backoff.is_zero() {
                return Err(field("initialBackoff", "must be above 0".into()));
            }
            if retry.max_backoff.is_zero() {
                return Err(field("maxBackoff", "must be above 0".into()));
            }
            if !(retry.backoff_multiplier > 0.0 && retry.backoff_multiplier.is_finite()) {
                return Err(field(
                    "backoffMultiplier",
                    format!("must be above 0, not {}", retry.backoff_multiplier),
                ));
            }
            if retry.retryable_status_codes.is_empty() {
                return Err(field(
                    "retryableStatusCodes",
                    "must name at least one status, e.g. [\"UNAVAILABLE\"]".into(),
                ));
            }
            Some(retry)
        }
    };
    let hedging_policy = match raw.hedging_policy {
        None => None,
        Some(value) => {
            let mut hedging: HedgingPolicy =
                serde_json::from_value(value).map_err(|e| format!("{at}.hedgingPolicy: {e}"))?;
            if hedging.max_attempts < 2 {
                return Err(format!(
                    "{at}.hedgingPolicy.maxAttempts: must be 2 or more, not {}",
                    hedging.max_attempts
                ));
            }
            hedging.max_attempts = hedging.max_attempts.min(MAX_ATTEMPTS);
            Some(hedging)
        }
    };
    if retry_policy.is_some() && hedging_policy.is_some() {
        return Err(format!(
            "{at}: retryPolicy and hedgingPolicy exclude each other; keep one"
        ));
    }
    Ok(MethodConfig {
        names: raw.name,
        timeout: raw.timeout.filter(|t| !t.is_zero()),
        wait_for_ready: raw.wait_for_ready,
        retry_policy,
        hedging_policy,
    })
}

impl RetryConfig {
    /// The longest wait before retry number `n` (1 for the first retry):
    /// `initialBackoff × backoffMultiplier^(n-1)`, at most `maxBackoff`. The wait itself
    /// is drawn uniformly between 0 and this.
    pub fn backoff_ceiling(&self, n: u32) -> Duration {
        let exponent = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exponent);
        let max = self.max_backoff.as_secs_f64();
        Duration::try_from_secs_f64(secs.min(max)).unwrap_or(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        text.parse::<ServiceConfig>().unwrap_err().to_string()
    }

    const FULL: &str = r#"{
        "loadBalancingConfig": [{"least_request": {"choiceCount": 3}}],
        "methodConfig": [
          {"name": [{"service": "example.MyService", "method": "SayHello"}],
           "timeout": "1.5s", "waitForReady": true,
           "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                           "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 8]}},
          {"name": [{"service": "example.MyService"}],
           "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.01s",
                             "nonFatalStatusCodes": ["unavailable"]}},
          {"name": [{}], "timeout": "10s"}
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        "healthCheckConfig": {"serviceName": "example.MyService"},
        "connectionScaling": {"maxConnectionsPerSubchannel": 10}
    }"#;

    #[test]
    fn reads_every_field_and_matches_methods_most_specific_first() {
        let config: ServiceConfig = FULL.parse().unwrap();
        assert_eq!(
            config.policy.as_ref().map(ToString::to_string).as_deref(),
            Some("least_request")
        );
        assert_eq!(
            config.retry_throttling,
            Some(RetryThrottling {
                max_tokens: 10,
                token_ratio: 0.1
            })
        );
        assert_eq!(
            config.health_check_service.as_deref(),
            Some("example.MyService")
        );
        assert_eq!(config.max_connections_per_subchannel(), Some(10));
        let hello = config.method("/example.MyService/SayHello").unwrap();
        assert_eq!(hello.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(hello.wait_for_ready, Some(true));
        let retry = hello.retry_policy.as_ref().unwrap();
        assert_eq!(retry.max_attempts, 5, "9 is read as 5");
        assert_eq!(
            retry.retryable_status_codes,
            [Code::Unavailable, Code::ResourceExhausted]
        );
        let other = config.method("/example.MyService/SayGoodbye").unwrap();
        let hedging = other.hedging_policy.as_ref().unwrap();
        assert_eq!(hedging.hedging_delay, Duration::from_millis(10));
        assert_eq!(hedging.non_fatal_status_codes, [Code::Unavailable]);
        let default = config.method("/grpc.health.v1.Health/Check").unwrap();
        assert_eq!(default.timeout, Some(Duration::from_secs(10)));
        assert!(config.method("no-slash").is_none());
        assert!(config.replays());
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap() {
        let config: ServiceConfig = FULL.parse().unwrap();
        let hello = config.method("/example.MyService/SayHello").unwrap();
        let retry = hello.retry_policy.as_ref().unwrap();
        let ceilings: Vec<u128> = (1..=6)
            .map(|n| retry.backoff_ceiling(n).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn bad_configs_are_errors_that_name_the_field() {
        let cases = [
            (r#"{"methodConfigs": []}"#, "unknown field `methodConfigs`"),
            (
                r#"{"methodConfig": [{"name": [{}], "timout": "1s"}]}"#,
                "methodConfig[0]: unknown field `timout`",
            ),
            (
                r#"{"methodConfig": [{"timeout": "1s"}]}"#,
                "methodConfig[0].name",
            ),
            (
                r#"{"methodConfig": [{"name": [{"method": "SayHello"}]}]}"#,
                "without a service",
            ),
            (
                r#"{"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}"#,
                "methodConfig[1].name: the default entry",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "timeout": "soon"}]}"#,
                "timeout: `soon` is not a duration",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "timeout": "-1s"}]}"#,
                "timeout: `-1s` is not a duration",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "1e19s"}}]}"#,
                "hedgingPolicy: `1e19s` is too long a duration: at most 365 days",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "400days", "backoffMultiplier": 1, "retryableStatusCodes": [14]}}]}"#,
                "retryPolicy: `400days` is too long a duration",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.0004}}"#,
                "at least 0.001",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#,
                "methodConfig[0].retryPolicy.maxAttempts: must be 2 or more",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#,
                "retryPolicy.initialBackoff: must be above 0",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": []}}]}"#,
                "retryPolicy.retryableStatusCodes: must name at least one",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["BUSY"]}}]}"#,
                "`BUSY` is not a status code",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": [14]}, "hedgingPolicy": {"maxAttempts": 2}}]}"#,
                "exclude each other",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 2, "delay": "1s"}}]}"#,
                "hedgingPolicy: unknown field `delay`",
            ),
            (
                r#"{"methodConfig": [{"name": [{}], "maxRequestMessageBytes": 1024}]}"#,
                "max_decoding_message_size",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}"#,
                "retryThrottling.maxTokens must be 1 to 1000",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0}}"#,
                "retryThrottling.tokenRatio",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10}}"#,
                "retryThrottling: missing field `tokenRatio`",
            ),
            (
                r#"{"loadBalancingConfig": [{"round_robbin": {}}]}"#,
                "no supported policy",
            ),
            ("[]", "expected a JSON object"),
            (
                r#"{"connectionScaling": {"maxConnectionsPerSubchannel": 0}}"#,
                "must be 1 to 100",
            ),
            (
                r#"{"connectionScaling": {"maxConnections": 2}}"#,
                "connectionScaling: unknown field `maxConnections`",
            ),
        ];
        for (text, expected) in cases {
            let message = err(text);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn files_are_read_with_a_limit_and_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("lb-core-sc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"methodConfig": [{"name": [{}], "timeout": "2s"}]}"#,
        )
        .unwrap();
        let config = ServiceConfig::load(good.to_str().unwrap()).unwrap();
        assert!(config.method("/a.B/C").is_some());
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"methodConfig": 3}"#).unwrap();
        let message = ServiceConfig::load(bad.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("bad.json: methodConfig must be a list"),
            "{message}"
        );
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        let message = ServiceConfig::load(big.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(message.contains("at most"), "{message}");
        let message = ServiceConfig::load("/no/such/file.json")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("cannot read /no/such/file.json"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
