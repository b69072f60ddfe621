//! What a `methodConfig` entry holds, as plain types: the methods it names, their
//! deadline, retry policy, hedging policy; and the retry throttle.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};
use serde_json::Value;
use tonic::Code;

use crate::json::duration_text;

/// The most attempts a retry or hedging policy may ask for (gRFC A6: more are read as
/// 5).
pub const MAX_ATTEMPTS: u32 = 5;

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
