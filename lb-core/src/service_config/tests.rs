//! The service config's tests: what is read, and every mistake named.

use std::time::Duration;

use tonic::Code;

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
