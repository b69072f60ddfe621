//! The article's greeter: `MyService.SayHello` answers `Hello, {name}!`.
//!
//! One process can serve on many ports; each port is an independent *instance* with
//! its own address, health status and demo knobs, exactly as if it were a separate
//! server. Every instance:
//!
//! - answers `SayHello` with `Hello, {name}!`, and stamps the response metadata
//!   `x-served-by: host:port`, so a client can see which server answered without any
//!   change to the proto;
//! - serves `grpc.health.v1.Health` (SERVING for `""` and `example.MyService`) and
//!   server reflection, so `grpcurl` can list and call it;
//! - can add latency to every call and fail a seeded fraction of calls with
//!   `UNAVAILABLE`, to make the policies' differences visible;
//! - shuts down gracefully: stops accepting, lets calls in flight finish, then returns;
//! - can register itself in etcd ([`Servers::register`]) under a lease that it keeps
//!   alive, so that clients watching etcd find it, and lose it when it stops or dies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two instances on ports the OS chooses, on 127.0.0.1.
//! let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0, 0])).await?;
//! assert_eq!(servers.addrs().len(), 2);
//! servers.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

// The server in three rooms: what to serve (`config.rs`), the service one instance
// runs (`greeter.rs`), and the instances themselves (`servers.rs`).
mod config;
mod greeter;
mod servers;

pub use config::{Config, LatencyTail, ServerError, parse_ports};
pub use greeter::{Capacity, Greeter};
pub use servers::{METHODS, Servers, TokenCheck, spawn};

pub use lb_core::resolver::EtcdTarget;

/// The response metadata key that names the instance that answered.
pub use greeter_proto::SERVED_BY;

pub mod certs;
pub mod control;
pub mod limits;

pub use limits::{
    MAX_CONCURRENT_CALLS_PER_CONNECTION, MAX_CONCURRENT_STREAMS, MAX_MESSAGE_SIZE, REQUEST_TIMEOUT,
};

#[cfg(test)]
mod tests {
    use super::*;
    use greeter_proto::{HelloRequest, MyServiceClient};
    use std::time::Duration;

    #[test]
    fn ports_and_ranges() {
        assert_eq!(parse_ports("50051"), Ok(vec![50051]));
        assert_eq!(parse_ports("50051-50053"), Ok(vec![50051, 50052, 50053]));
        assert!(parse_ports("5005x").unwrap_err().contains("`5005x`"));
        assert!(parse_ports("70000").is_err());
        assert!(parse_ports("50053-50051").unwrap_err().contains("range"));
    }

    #[tokio::test]
    async fn a_busy_port_is_named() {
        let first = spawn(Config::on_ports(&[0])).await.unwrap();
        let port = first.addrs()[0].port();
        let err = spawn(Config::on_ports(&[0, port])).await.unwrap_err();
        assert!(matches!(err, ServerError::PortInUse { port: p, .. } if p == port));
        assert!(err.to_string().contains(&format!("port {port} ")), "{err}");
        first.shutdown().await.unwrap();
    }

    #[test]
    fn latency_tails_are_read_and_checked() {
        let tail: LatencyTail = "5%:50ms".parse().unwrap();
        assert_eq!(
            tail,
            LatencyTail {
                fraction: 0.05,
                extra: Duration::from_millis(50)
            }
        );
        let tail: LatencyTail = "0.5%:1s".parse().unwrap();
        assert_eq!(tail.extra, Duration::from_secs(1));
        for (bad, says) in [
            ("5:50ms", "PERCENT%:DURATION"),
            ("5%", "PERCENT%:DURATION"),
            ("150%:1ms", "from 0 to 100"),
            ("5%:soon", "`soon` is not a duration"),
            ("5%:2h", "at most 1h"),
        ] {
            let err = bad.parse::<LatencyTail>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    /// The tail is drawn from the seeded RNG: about its fraction of calls, the same
    /// ones on every run with the same seed.
    #[tokio::test(start_paused = true)]
    async fn a_tenth_of_the_calls_take_longer() {
        let config = Config::on_ports(&[0]).with_latency_tail("10%:100ms".parse().unwrap());
        let servers = spawn(config).await.unwrap();
        let mut client = MyServiceClient::connect(format!("http://{}", servers.addrs()[0]))
            .await
            .unwrap();
        let mut slow = Vec::new();
        for i in 0..200 {
            let start = tokio::time::Instant::now();
            client
                .say_hello(HelloRequest { name: "t".into() })
                .await
                .unwrap();
            if start.elapsed() >= Duration::from_millis(100) {
                slow.push(i);
            }
        }
        assert!(
            (10..=30).contains(&slow.len()),
            "{} slow of 200",
            slow.len()
        );
        servers.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn error_rate_is_checked() {
        let err = spawn(Config::on_ports(&[0]).with_error_rate(1.5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1.5"));
    }
}
