//! Reading one `methodConfig` entry: unknown fields refused, values checked, errors
//! naming the field (`methodConfig[0].retryPolicy.maxAttempts`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::json::duration_text;

use super::method::{HedgingPolicy, MAX_ATTEMPTS, MethodConfig, MethodName, RetryConfig};

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

pub(super) fn describe(name: &MethodName) -> String {
    match (name.service.as_str(), name.method.as_str()) {
        ("", _) => "the default entry ({})".into(),
        (service, "") => format!("service `{service}`"),
        (service, method) => format!("`{service}/{method}`"),
    }
}

pub(super) fn read_method(entry: Value, at: &str) -> Result<MethodConfig, String> {
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
