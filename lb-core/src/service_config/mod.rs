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

mod method;
mod read;
#[cfg(test)]
mod tests;

pub use method::{
    HedgingPolicy, MAX_ATTEMPTS, MethodConfig, MethodName, RetryConfig, RetryThrottling,
};
use read::{describe, read_method};

use std::{collections::HashMap, io::Read, path::Path, str::FromStr, sync::Arc};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Error, Policy};

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
