//! Policy settings, and gRPC service-config JSON.
//!
//! gRPC clients take their policy from a *service config*: JSON whose
//! `loadBalancingConfig` is a list of `{policy_name: {settings}}`, the first one the
//! client supports winning. This module reads the same shape, or a single
//! `{policy_name: {settings}}` object:
//!
//! ```json
//! {"loadBalancingConfig": [{"round_robin": {}}]}
//! {"least_request": {"choiceCount": 3}}
//! {"ring_hash": {"minRingSize": 1024, "requestHashHeader": "x-lb-key"}}
//! {"maglev": {"tableSize": 65537}}
//! {"peak_ewma": {"decay": "10s", "defaultLatency": "30ms"}}
//! ```
//!
//! Field names are gRPC's where gRPC has the policy (gRFC A48 for `least_request`,
//! A42/A76 for `ring_hash`). An unknown field, or a list in which no policy is known, is
//! an error that says which.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Policy, least_request};
use crate::Error;

/// Settings of `least_request`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LeastRequestConfig {
    /// How many random endpoints to compare, 2 to 10 (gRPC clamps larger values to 10).
    pub choice_count: usize,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        Self { choice_count: 2 }
    }
}

/// Settings of `peak_ewma`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PeakEwmaConfig {
    /// The latency estimate's decay time τ (see [`crate::latency`]).
    #[serde(with = "duration_text")]
    pub decay: Duration,
    /// The latency assumed for an endpoint before its first call finishes.
    #[serde(with = "duration_text")]
    pub default_latency: Duration,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        Self {
            decay: crate::latency::DEFAULT_DECAY,
            default_latency: Duration::from_millis(30),
        }
    }
}

/// The header the hashing policies key on unless told otherwise.
pub const DEFAULT_HASH_HEADER: &str = "x-lb-key";

/// Settings of `ring_hash`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RingHashConfig {
    /// The ring has at least this many points.
    pub min_ring_size: usize,
    /// And at most this many (gRPC's limit is 8,388,608).
    pub max_ring_size: usize,
    /// The request header (gRPC metadata key, lower case) whose value is hashed.
    pub request_hash_header: String,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        Self {
            min_ring_size: 1024,
            max_ring_size: 8_388_608,
            request_hash_header: DEFAULT_HASH_HEADER.into(),
        }
    }
}

/// Settings of `maglev`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MaglevConfig {
    /// The lookup table's size; must be a prime (default 65,537).
    pub table_size: usize,
    /// The request header (gRPC metadata key, lower case) whose value is hashed.
    pub request_hash_header: String,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            table_size: 65_537,
            request_hash_header: DEFAULT_HASH_HEADER.into(),
        }
    }
}

/// Settings of a policy that has none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

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

    let mut seen = Vec::new();
    for entry in candidates {
        let mut fields = entry.into_iter();
        let (Some((name, settings)), None) = (fields.next(), fields.next()) else {
            return Err(invalid(
                "each loadBalancingConfig entry has exactly one policy name, \
                 e.g. {\"round_robin\": {}}"
                    .into(),
            ));
        };
        match policy_from(&name, settings)? {
            Some(policy) => return Ok(policy),
            None => seen.push(name), // Not ours: gRPC moves on to the next entry.
        }
    }
    Err(invalid(format!(
        "no supported policy in [{}]; supported: {}",
        seen.join(", "),
        Policy::names().join(", ")
    )))
}

/// The policy `name` with `settings`, `None` if the name is unknown.
fn policy_from(name: &str, settings: Value) -> Result<Option<Policy>, Error> {
    let bad = |e: serde_json::Error| Error::InvalidServiceConfig {
        reason: format!("{name}: {e}"),
    };
    let fail = |reason: String| Error::InvalidServiceConfig {
        reason: format!("{name}: {reason}"),
    };
    let none = |settings: Value| serde_json::from_value::<NoSettings>(settings).map_err(bad);
    let policy = match name {
        "pick_first" => {
            none(settings)?;
            Policy::PickFirst
        }
        "round_robin" => {
            none(settings)?;
            Policy::RoundRobin
        }
        "random" => {
            none(settings)?;
            Policy::Random
        }
        "least_connections" => {
            none(settings)?;
            Policy::LeastConnections
        }
        "weighted_random" => {
            none(settings)?;
            Policy::WeightedRandom
        }
        "weighted_round_robin" => {
            none(settings)?;
            Policy::WeightedRoundRobin
        }
        "least_request" => {
            let mut config: LeastRequestConfig = serde_json::from_value(settings).map_err(bad)?;
            if config.choice_count < 2 {
                return Err(fail(format!(
                    "choiceCount {} is below 2: one random choice is just `random`",
                    config.choice_count
                )));
            }
            // gRFC A48: values above the maximum are clamped, not rejected.
            config.choice_count = config.choice_count.min(least_request::MAX_CHOICES);
            Policy::LeastRequest(config)
        }
        "peak_ewma" => {
            let config: PeakEwmaConfig = serde_json::from_value(settings).map_err(bad)?;
            if config.decay.is_zero() {
                return Err(fail("decay must be above 0".into()));
            }
            Policy::PeakEwma(config)
        }
        "ring_hash" => {
            let config: RingHashConfig = serde_json::from_value(settings).map_err(bad)?;
            if config.min_ring_size == 0 || config.min_ring_size > config.max_ring_size {
                return Err(fail(format!(
                    "need 1 <= minRingSize <= maxRingSize, got {} and {}",
                    config.min_ring_size, config.max_ring_size
                )));
            }
            if config.max_ring_size > 8_388_608 {
                return Err(fail("maxRingSize is at most 8388608".into()));
            }
            check_header(&config.request_hash_header).map_err(fail)?;
            Policy::RingHash(config)
        }
        "maglev" => {
            let config: MaglevConfig = serde_json::from_value(settings).map_err(bad)?;
            if !is_prime(config.table_size) {
                return Err(fail(format!(
                    "tableSize {} is not a prime (try 65537 or 5003)",
                    config.table_size
                )));
            }
            check_header(&config.request_hash_header).map_err(fail)?;
            Policy::Maglev(config)
        }
        _ => return Ok(None),
    };
    Ok(Some(policy))
}

fn check_header(header: &str) -> Result<(), String> {
    match http::HeaderName::from_bytes(header.as_bytes()) {
        Ok(name) if name.as_str() == header => Ok(()),
        _ => Err(format!(
            "requestHashHeader `{header}` is not a lower-case header name"
        )),
    }
}

/// Whether `n` is prime (trial division: table sizes are small).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Durations in JSON as text: `"10s"`, `"30ms"`, `"1.5s"`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        // gRPC's JSON durations are seconds with a fraction ("0.030s"); humantime
        // reads those only without the fraction, so handle that form first.
        if let Some(secs) = text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()) {
            return Duration::try_from_secs_f64(secs).map_err(D::Error::custom);
        }
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("`{text}` is not a duration: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        text.parse::<Policy>().map_err(|e| e.to_string())
    }

    #[test]
    fn reads_grpc_service_configs() {
        assert_eq!(
            parse(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#),
            Ok(Policy::RoundRobin)
        );
        assert_eq!(
            parse(r#"{"least_request":{"choiceCount":3}}"#),
            Ok(Policy::LeastRequest(LeastRequestConfig { choice_count: 3 }))
        );
        assert_eq!(
            parse(r#"{"least_request":{"choiceCount":50}}"#),
            Ok(Policy::LeastRequest(LeastRequestConfig {
                choice_count: 10
            })),
            "clamped as gRFC A48 says"
        );
        let ring = parse(r#"{"ring_hash":{"minRingSize":2048,"requestHashHeader":"user"}}"#);
        let Ok(Policy::RingHash(ring)) = ring else {
            panic!("{ring:?}")
        };
        assert_eq!(ring.min_ring_size, 2048);
        assert_eq!(ring.request_hash_header, "user");
        let ewma = parse(r#"{"peak_ewma":{"decay":"5s","defaultLatency":"0.020s"}}"#);
        assert_eq!(
            ewma,
            Ok(Policy::PeakEwma(PeakEwmaConfig {
                decay: Duration::from_secs(5),
                default_latency: Duration::from_millis(20),
            }))
        );
    }

    #[test]
    fn the_first_known_policy_wins() {
        let text =
            r#"{"loadBalancingConfig":[{"xds_cluster_manager":{}},{"maglev":{}},{"random":{}}]}"#;
        assert_eq!(parse(text), Ok(Policy::Maglev(MaglevConfig::default())));
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

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(5_003) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0));
    }
}
