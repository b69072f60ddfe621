//! What to serve, and how: the server's [`Config`], its knobs' values, and why a
//! start can fail ([`ServerError`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use crate::limits::{MAX_CONCURRENT_STREAMS, REQUEST_TIMEOUT};

/// What to serve, and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address to bind (default 127.0.0.1: reachable from this machine only).
    pub host: IpAddr,
    /// One instance per port. Port 0 asks the OS for a free port.
    pub ports: Vec<u16>,
    /// Added to every call before it is answered (while it holds its share of the
    /// capacity, if one is set).
    pub latency: Duration,
    /// The fraction of calls, from 0 to 1, answered with `UNAVAILABLE`.
    pub error_rate: f64,
    /// A tail: a fraction of the calls, chosen by the seeded RNG, take this much longer
    /// (`--latency-tail 5%:50ms`), as a server's slow calls (a GC pause, a cold cache)
    /// do. What hedging is for.
    pub latency_tail: Option<LatencyTail>,
    /// Seeds the choice of which calls fail (each instance adds its index).
    pub seed: u64,
    /// Calls each instance works on at once; the rest wait (`None`: no limit).
    pub capacity: Option<usize>,
    /// The HTTP/2 streams (calls) a client may have open at once on one connection,
    /// sent in the server's SETTINGS (default [`MAX_CONCURRENT_STREAMS`]): a call beyond
    /// it waits in its client's connection. A low one shows gRFC A105's connection
    /// scaling at work.
    pub max_concurrent_streams: u32,
    /// Report load with ORCA (gRFC A51): a report in every answer's trailer and the
    /// out-of-band `OpenRcaService`.
    pub orca: bool,
    /// Close each connection after this long (GOAWAY, then the calls in flight finish),
    /// so that clients reconnect: how servers spread load after a fleet grows.
    pub max_connection_age: Option<Duration>,
    /// How long a call may take to be answered (DEADLINE_EXCEEDED beyond it).
    pub request_timeout: Duration,
    /// If set, `SayHello` answers only calls carrying `authorization: Bearer <token>`
    /// (UNAUTHENTICATED otherwise). Health and reflection stay open, for probes.
    pub token: Option<String>,
    /// Serve TLS (and, if it names a client CA, require client certificates: mutual
    /// TLS) instead of plaintext HTTP/2. See [`lb_core::tls::server_config`].
    pub tls: Option<lb_core::tls::ServerTls>,
    /// Limits on the connections each instance accepts (how many, how long before
    /// the HTTP/2 preface, how long idle). See [`lb_core::server`].
    pub connections: lb_core::server::ConnectionLimits,
    /// Record every call in these metrics (see [`lb_core::metrics`]).
    pub metrics: Option<lb_core::metrics::ServerMetrics>,
}

impl Config {
    /// Instances on 127.0.0.1 at `ports`, with no added latency and no errors.
    pub fn on_ports(ports: &[u16]) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: ports.to_vec(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            latency_tail: None,
            seed: 0,
            capacity: None,
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            orca: false,
            max_connection_age: None,
            request_timeout: REQUEST_TIMEOUT,
            token: None,
            tls: None,
            connections: lb_core::server::ConnectionLimits::default(),
            metrics: None,
        }
    }

    /// The same, recording calls in `metrics`.
    pub fn with_metrics(mut self, metrics: lb_core::metrics::ServerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The same, serving TLS (mutual TLS if `tls` names a client CA).
    pub fn with_tls(mut self, tls: lb_core::tls::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same, requiring `authorization: Bearer <token>` on every `SayHello`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// The same, recycling connections after `age`.
    pub fn with_max_connection_age(mut self, age: Duration) -> Self {
        self.max_connection_age = Some(age);
        self
    }

    /// The same, with `latency` added to every call.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The same, with a latency tail (see [`LatencyTail`]).
    pub fn with_latency_tail(mut self, tail: LatencyTail) -> Self {
        self.latency_tail = Some(tail);
        self
    }

    /// The same, failing `rate` of the calls.
    pub fn with_error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }
}

/// `--latency-tail 5%:50ms`: 5 % of the calls take 50 ms more.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyTail {
    /// The fraction of calls, from 0 to 1.
    pub fraction: f64,
    /// How much longer they take.
    pub extra: Duration,
}

impl std::str::FromStr for LatencyTail {
    type Err = String;

    /// Reads `PERCENT%:DURATION`, e.g. `5%:50ms` or `0.5%:1s`.
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("`{text}` is not PERCENT%:DURATION, e.g. 5%:50ms");
        let (percent, extra) = text.split_once(':').ok_or_else(usage)?;
        let percent: f64 = percent
            .strip_suffix('%')
            .ok_or_else(usage)?
            .parse()
            .map_err(|_| usage())?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("`{text}`: the percentage must be from 0 to 100"));
        }
        let extra = humantime::parse_duration(extra)
            .map_err(|e| format!("`{text}`: `{extra}` is not a duration: {e}"))?;
        if extra > Duration::from_secs(3600) {
            return Err(format!("`{text}`: at most 1h more per call"));
        }
        Ok(Self {
            fraction: percent / 100.0,
            extra,
        })
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process already listens on the port.
    #[error(
        "port {port} on {host} is already in use (is another server running? choose another --port)"
    )]
    PortInUse {
        /// The host that was asked for.
        host: IpAddr,
        /// The busy port.
        port: u16,
    },
    /// Any other failure to listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server on `addr` failed while serving.
    #[error("server on {addr} failed: {source}")]
    Serve {
        /// The instance's address.
        addr: SocketAddr,
        /// What tonic said.
        source: tonic::transport::Error,
    },
    /// Reflection could not be set up from the embedded descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// `--error-rate` outside 0..=1.
    #[error("error rate {0} is outside 0..=1")]
    ErrorRate(f64),
    /// Registration in etcd failed.
    #[error("cannot register in etcd: {0}")]
    Register(#[source] lb_core::Error),
    /// The bound host is a wildcard (0.0.0.0, ::), which no client can dial.
    #[error(
        "listening on {host}, which clients cannot dial: say which address to register (--advertise)"
    )]
    Advertise {
        /// The wildcard host.
        host: IpAddr,
    },
    /// A server task panicked (a bug).
    #[error("server task on {addr} panicked")]
    Panicked {
        /// The instance's address.
        addr: SocketAddr,
    },
}

/// Parses `--port` values: `50051`, or an inclusive range `50051-50053`.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{s}` is not a port number (0-65535)"))
    };
    match text.split_once('-') {
        None => Ok(vec![port(text)?]),
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if first == 0 || first > last {
                return Err(format!(
                    "`{text}` is not a range of ports (expected e.g. 50051-50053)"
                ));
            }
            Ok((first..=last).collect())
        }
    }
}
