//! Asks servers whether they are up, with `grpc.health.v1.Health/Check`.
//!
//! The scripts run `greeter-client health --servers ... --wait 10s` after starting
//! servers in the background, so the demo never sends calls to a server that is still
//! starting.

use std::time::Duration;

use lb_core::{Endpoint, tls::ClientTls};
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Checks `endpoint` once (over TLS with `tls`): `Ok(status)` if it answered, `Err(reason)` if not.
pub async fn check(
    endpoint: &Endpoint,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<ServingStatus, String> {
    // Bounded as a whole: connect and handshakes.
    let channel = lb_core::balancer::connect(endpoint, tls, timeout)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(response.into_inner().status())
}

/// Checks `endpoint` every 100 ms until it is SERVING or `wait` has passed.
pub async fn wait_serving(
    endpoint: &Endpoint,
    tls: Option<&ClientTls>,
    wait: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let last = match check(endpoint, tls, Duration::from_secs(1)).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(other) => format!("status {}", other.as_str_name()),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "endpoint {endpoint}: not SERVING after {wait:?}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
