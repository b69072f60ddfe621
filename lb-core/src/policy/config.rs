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

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Policy, registry};
use crate::Error;

/// The header the hashing policies key on unless told otherwise.
pub const DEFAULT_HASH_HEADER: &str = "x-lb-key";

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
        match registry::find(&name) {
            Some(policy) => {
                return policy
                    .from_json(settings)
                    .map_err(|reason| invalid(format!("{name}: {reason}")));
            }
            None => seen.push(name), // Not one we know: gRPC moves on to the next entry.
        }
    }
    Err(invalid(format!(
        "no supported policy in [{}]; supported: {}",
        seen.join(", "),
        Policy::names().join(", ")
    )))
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

/// Durations in JSON as text: `"10s"`, `"30ms"`, `"1.5s"`; for settings fields,
/// `#[serde(with = "lb_core::policy::config::duration_text")]`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    /// The longest duration a config may hold: 365 days. Longer ones are refused, as a
    /// deadline or a timer that far away (`now + 1e19s`) cannot be made at all.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// Reads `"0.030s"` (gRPC's JSON form) or `"30ms"` (humantime's), at most [`MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        // gRPC's JSON durations are seconds with a fraction ("0.030s"); humantime
        // reads those only without the fraction, so handle that form first.
        let duration = match text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()) {
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map_err(|e| D::Error::custom(format!("`{text}` is not a duration: {e}")))?,
            None => humantime::parse_duration(&text)
                .map_err(|e| D::Error::custom(format!("`{text}` is not a duration: {e}")))?,
        };
        if duration > MAX {
            return Err(D::Error::custom(format!(
                "`{text}` is too long a duration: at most 365 days"
            )));
        }
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
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
