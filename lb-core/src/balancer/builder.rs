//! Configuring a balancer: its policy, its endpoints or resolver, and every knob.

use std::{sync::Arc, sync::atomic::AtomicU64, time::Duration};

use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tokio::sync::watch;

use super::Balancer;
use crate::call::budget::{RetryBudget, RetryPolicy};
use crate::call::router::Router;
use crate::policy::{BuildPicker, Picker, Policy};
use crate::resolver::Resolution;
use crate::service_config::MAX_CONNECTIONS_PER_ENDPOINT;
use crate::service_config::ServiceConfig;
use crate::subchannels::outlier::OutlierDetection;
use crate::subchannels::pool::Pool;
use crate::subchannels::{ejection, subchannel::Settings};
use crate::transport::liveness::Liveness;
use crate::{Backoff, Endpoint, Error};

/// Configures and builds a [`Balancer`]. Start with [`Balancer::builder`].
pub struct BalancerBuilder {
    endpoints: Vec<Endpoint>,
    following: Option<Resolution>,
    policy: Arc<dyn BuildPicker>,
    explain: u64,
    seed: Option<u64>,
    queue_timeout: Duration,
    retry: RetryPolicy,
    service_config: ServiceConfig,
    settings: Settings,
}

impl BalancerBuilder {
    /// Uses one of the built-in policies (default `round_robin`).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.settings.latency_decay = policy.latency_decay();
        self.policy = Arc::new(policy);
        self
    }

    /// Uses your own stateless picker, for a policy this crate does not ship.
    pub fn picker(mut self, picker: impl Picker) -> Self {
        let picker: Arc<dyn Picker> = Arc::new(picker);
        self.policy = Arc::new(picker);
        self
    }

    /// Uses your own policy that builds a picker per endpoint set (tables, rings).
    pub fn build_picker(mut self, policy: Arc<dyn BuildPicker>) -> Self {
        self.policy = policy;
        self
    }

    /// Logs why each of the first `picks` picks was made, at INFO level under the
    /// target `lb_core::explain` (e.g. `least_request sampled {b: 3 in flight, c: 1
    /// in flight} -> c`).
    pub fn explain(mut self, picks: u64) -> Self {
        self.explain = picks;
        self
    }

    /// Seeds every random choice (picks, round robin's start, backoff jitter), so a run
    /// can be repeated. Without a seed, one is drawn from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    #[cfg(feature = "tls")]
    /// Connects to every endpoint over TLS (default: plaintext HTTP/2), verifying each
    /// server's certificate and, for mutual TLS, showing the client's own. See
    /// [`crate::tls`].
    pub fn tls(mut self, tls: crate::transport::tls::ClientTls) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// How long one connection attempt may take (default 20 s, gRPC's minimum).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a usable endpoint while some endpoint is still
    /// connecting (default 10 s; a shorter call deadline wins).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The reconnect backoff (default: gRPC's 1 s, ×1.6, ±20 %, at most 120 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Health-checks every endpoint with `grpc.health.v1.Health/Watch` for `service`
    /// (`""`, the default, asks about the whole server); `None` turns it off.
    pub fn health_check(mut self, service: Option<&str>) -> Self {
        self.settings.health_service = service.map(String::from);
        self
    }

    /// Pings an endpoint's connection when its calls get no answer, and takes the
    /// endpoint out of the rotation if the ping is not answered either (default: ping
    /// after 500 ms of silence, dead after 1 s more; `None` turns it off). See
    /// [`liveness`](crate::transport::liveness).
    pub fn liveness(mut self, liveness: Option<Liveness>) -> Self {
        self.settings.liveness = liveness;
        self
    }

    /// Ejects endpoints whose calls keep failing (default: off).
    pub fn outlier_detection(mut self, config: Option<OutlierDetection>) -> Self {
        self.settings.outlier = config;
        self
    }

    /// Retries calls that failed before reaching a server (default: 3 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How many connections for calls each endpoint may have at most (default 1; at
    /// most [`MAX_CONNECTIONS_PER_ENDPOINT`](MAX_CONNECTIONS_PER_ENDPOINT)).
    /// Above 1, an endpoint whose every connection has as many calls open as its server's
    /// `MAX_CONCURRENT_STREAMS` allows opens another (gRFC A105; see
    /// `subchannels/scaling.rs`), instead of keeping calls waiting. The service
    /// config's `connectionScaling.maxConnectionsPerSubchannel` sets the same.
    pub fn max_connections_per_endpoint(mut self, max: u32) -> Self {
        self.settings.max_connections = max.clamp(1, MAX_CONNECTIONS_PER_ENDPOINT);
        self
    }

    /// Applies a gRPC service config ([`crate::service_config`]): its policy, if it has
    /// one (replacing [`policy`](Self::policy)'s), its health-check service, its
    /// per-method timeouts, retries and hedging, and its `retryThrottling` in place of
    /// the [`RetryPolicy`]'s budget. Methods without an entry keep the [`RetryPolicy`].
    /// Health checks turned off with [`health_check(None)`](Self::health_check) stay off,
    /// before or after this call.
    pub fn service_config(mut self, config: ServiceConfig) -> Self {
        if let Some(policy) = config.policy().cloned() {
            self = self.policy(policy);
        }
        if let (Some(service), Some(current)) = (
            config.health_check_service(),
            self.settings.health_service.as_mut(),
        ) {
            service.clone_into(current);
        }
        if let Some(max) = config.max_connections_per_subchannel() {
            self = self.max_connections_per_endpoint(max);
        }
        self.service_config = config;
        self
    }

    /// Builds the balancer and starts connecting to every endpoint.
    ///
    /// Must be called inside a Tokio runtime: each endpoint's connection task is spawned
    /// on it.
    pub fn build(mut self) -> Result<Balancer, Error> {
        let handshake_limit = self.settings.connect_timeout;
        self.settings.tls = self
            .settings
            .tls
            .map(|tls| tls.with_timeout(handshake_limit));
        if self.endpoints.is_empty() && self.following.is_none() {
            return Err(Error::NoEndpoints);
        }
        let seed = self
            .seed
            .unwrap_or_else(|| SmallRng::from_os_rng().next_u64());
        self.settings.seed = seed;
        let (stop, stopped) = watch::channel(());
        let pool = Pool::new(
            self.policy,
            self.settings.clone(),
            stopped.clone(),
            SmallRng::seed_from_u64(seed),
        );
        for endpoint in self.endpoints {
            pool.add(endpoint)?;
        }
        if let Some(mut config) = self.settings.outlier.clone() {
            // A zero interval would make `tokio::time::interval` panic.
            config.interval = config.interval.max(Duration::from_millis(1));
            tokio::spawn(ejection::run(pool.clone(), config, stopped));
        }
        let router = Arc::new(Router {
            pool,
            explain: AtomicU64::new(self.explain),
            queue_timeout: self.queue_timeout,
            budget: Arc::new(match self.service_config.retry_throttling() {
                Some(throttling) => RetryBudget::throttling(throttling),
                None => RetryBudget::new(&self.retry),
            }),
            service_config: self.service_config,
            retry: self.retry,
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            pick_counters: Default::default(),
            seed,
            clones: AtomicU64::new(0),
            _stop: stop,
        });
        let balancer = Balancer::from_router(router);
        if let Some(resolution) = self.following {
            balancer.follow(resolution);
        }
        Ok(balancer)
    }
}

impl Balancer {
    /// Starts configuring a balancer over `endpoints`.
    pub fn builder(endpoints: impl IntoIterator<Item = Endpoint>) -> BalancerBuilder {
        BalancerBuilder {
            endpoints: endpoints.into_iter().collect(),
            following: None,
            policy: Arc::new(Policy::default()),
            explain: 0,
            seed: None,
            queue_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            service_config: ServiceConfig::default(),
            settings: Settings {
                connect_timeout: Duration::from_secs(20),
                backoff: Backoff::default(),
                health_service: Some(String::new()),
                outlier: None,
                latency_decay: crate::latency::DEFAULT_DECAY,
                seed: 0,
                tls: None,
                liveness: Some(Liveness::default()),
                max_connections: 1,
            },
        }
    }

    /// Starts configuring a balancer that follows a resolver: over the endpoints it
    /// has now (possibly none yet, as when servers have still to register) and every
    /// later change. See [`Balancer::follow`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lb_core::Error> {
    /// use lb_core::{Balancer, resolver::Target};
    ///
    /// let target: Target = "dns:///greeter.default.svc.cluster.local:50051".parse()?;
    /// let balancer = Balancer::following(target.resolve().await?).build()?;
    /// # Ok(()) }
    /// ```
    pub fn following(resolution: impl Into<Resolution>) -> BalancerBuilder {
        let resolution = resolution.into();
        let mut builder = Self::builder(resolution.endpoints());
        builder.following = Some(resolution);
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ServiceConfig {
        json.parse().expect("a valid service config")
    }

    #[test]
    fn a_service_config_names_the_health_service_but_never_turns_checks_back_on() {
        let endpoints = || ["127.0.0.1:1".parse::<Endpoint>().expect("an endpoint")];
        let named = r#"{"healthCheckConfig": {"serviceName": "example.MyService"}}"#;
        let builder = Balancer::builder(endpoints()).service_config(config(named));
        assert_eq!(
            builder.settings.health_service.as_deref(),
            Some("example.MyService")
        );
        let off_before = Balancer::builder(endpoints())
            .health_check(None)
            .service_config(config(named));
        assert_eq!(off_before.settings.health_service, None);
        let off_after = Balancer::builder(endpoints())
            .service_config(config(named))
            .health_check(None);
        assert_eq!(off_after.settings.health_service, None);
    }
}
