//! The balancer itself: the handle every caller holds (cheap to clone), its
//! `tower::Service`, and what its clones share.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tokio::sync::watch;
use tonic::{Status, body::Body};
use tower::Service;

use crate::call::headers::{deadline_after, grpc_timeout};
use crate::call::response::ResponseBody;
use crate::call::router::Router;
use crate::resolver::Resolution;
use crate::subchannels::subchannel::EndpointStatus;
use crate::transport::wire::AttemptBody;
use crate::{Endpoint, Error, Policy};

/// A client-side load balancer for gRPC, usable under any tonic-generated client.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lb_core::{Balancer, Policy, parse_endpoint_list};
///
/// let endpoints = parse_endpoint_list("127.0.0.1:50051,127.0.0.1:50052")?;
/// let balancer = Balancer::builder(endpoints).policy(Policy::default()).build()?;
/// // let mut client = MyServiceClient::new(balancer);
/// # Ok(()) }
/// ```
///
/// Cloning is cheap and every clone shares endpoints, connections and counters; each
/// clone draws its random numbers from its own generator, seeded from the builder's
/// seed, so no lock is shared between clones on the call path.
pub struct Balancer {
    pub(crate) router: Arc<Router>,
    rng: SmallRng,
}

impl Balancer {
    /// The name of the policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.router.pool.policy_name()
    }

    /// Switches the policy while calls go on: every pick from now on is `policy`'s, over
    /// the same endpoints and connections; calls already under way finish where they
    /// are, and none waits or fails for the switch. (The endpoints' latency estimates
    /// keep the decay time the balancer was built with, and a policy that reads
    /// out-of-band load reports gets them on connections made from then on.)
    pub fn set_policy(&self, policy: Policy) {
        self.router.pool.set_policy(Arc::new(policy));
    }

    /// The state of every endpoint, in the order they were added.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.router.pool.statuses()
    }

    /// How many endpoints calls can be sent to now (READY and not ejected). Reads the
    /// current snapshot: no lock.
    pub fn usable_endpoints(&self) -> usize {
        self.router.pool.snapshot.load().ready.len()
    }

    /// Calls retried on another endpoint so far.
    pub fn retries(&self) -> u64 {
        self.router.retries.load(Ordering::Relaxed)
    }

    /// Hedged attempts sent so far: the extra calls that hedging cost (a method's
    /// `hedgingPolicy`, [`crate::service_config`]).
    pub fn hedges(&self) -> u64 {
        self.router.hedges.load(Ordering::Relaxed)
    }

    /// What the policy's pickers counted so far (gRFC A78's `weighted_round_robin`
    /// counters; zero for the other policies), also in the metrics.
    pub fn pick_counters(&self) -> &crate::PickCounters {
        &self.router.pick_counters
    }

    /// Adds an endpoint and starts connecting to it; `Ok(false)` if it is already here.
    /// It takes calls as soon as it is READY, with no call needed to find it.
    pub fn add_endpoint(&self, endpoint: Endpoint) -> Result<bool, Error> {
        self.router.pool.add(endpoint)
    }

    /// Removes an endpoint: new calls never pick it; calls in flight to it finish.
    /// `false` if it was not here.
    pub fn remove_endpoint(&self, endpoint: &Endpoint) -> bool {
        self.router.pool.remove(endpoint)
    }

    /// Makes the endpoint set exactly `endpoints`: adds the new, removes the missing,
    /// in one step (calls see the old set or the new, never one half-way).
    pub fn set_endpoints(&self, endpoints: &[Endpoint]) -> Result<(), Error> {
        self.router.pool.apply(endpoints)
    }

    /// Follows a resolver: applies every endpoint set it publishes, in the background,
    /// until the resolver or the balancer goes away; and when an endpoint fails, asks
    /// the resolver to look again ([`Resolution::resolve_now`]). Takes a
    /// [`Resolution`] from [`Target::resolve`](crate::resolver::Target::resolve), or
    /// any `watch::Receiver<Vec<Endpoint>>` of your own.
    pub fn follow(&self, resolution: impl Into<Resolution>) {
        let resolution = resolution.into();
        let mut updates = resolution.updates();
        let mut failures = self.router.pool.failures.subscribe();
        let router = Arc::downgrade(&self.router);
        tokio::spawn(async move {
            loop {
                let endpoints = updates.borrow_and_update().clone();
                let Some(router) = router.upgrade() else {
                    return;
                };
                if let Err(err) = router.pool.apply(&endpoints) {
                    tracing::warn!("resolver update not applied: {err}");
                }
                drop(router); // Held only while applying: the balancer may go away.
                loop {
                    tokio::select! {
                        changed = updates.changed() => match changed {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        failed = failures.changed() => match failed {
                            // An endpoint failed: the list may be stale.
                            Ok(()) => resolution.resolve_now(),
                            Err(_) => return,
                        },
                    }
                }
            }
        });
    }

    /// Resolves whenever endpoint states change (for watching, and tests).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.router.pool.changes.subscribe()
    }

    /// Waits until every endpoint has finished its first connection attempt (READY or
    /// TRANSIENT_FAILURE), or `timeout` passes, and returns their states.
    ///
    /// Useful before measuring: calls sent while some endpoints are still connecting
    /// go to the ones already READY, which skews the first shares.
    pub async fn wait_settled(&self, timeout: Duration) -> Vec<EndpointStatus> {
        let deadline = deadline_after(timeout);
        let mut changes = self.changes();
        loop {
            if self.router.pool.settled()
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                return self.endpoints();
            }
        }
    }
}

impl Balancer {
    /// For metrics: a handle that does not keep the balancer alive.
    #[cfg(feature = "metrics")]
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Router> {
        Arc::downgrade(&self.router)
    }

    /// A balancer over `router`, with the next clone's generator.
    pub(crate) fn from_router(router: Arc<Router>) -> Self {
        Self {
            rng: router.next_rng(),
            router,
        }
    }
}

impl Clone for Balancer {
    fn clone(&self) -> Self {
        Self::from_router(self.router.clone())
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy_name())
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl Service<http::Request<Body>> for Balancer {
    type Response = http::Response<ResponseBody>;
    // Calls fail with a gRPC status, not an opaque error: tonic hands a `Status` found
    // in the error to the caller as it is, so the caller sees UNAVAILABLE and a message
    // naming the endpoint instead of UNKNOWN.
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    /// Always ready: readiness belongs to the endpoint picked for each call, which is
    /// not known until the call arrives.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // A request without a path is not a gRPC call: it is refused here, naming what
        // is wrong, before any endpoint is picked for it. A proxy can be handed one; a
        // generated client never makes one.
        if !request.uri().path().starts_with('/') {
            let status = tonic::Status::unimplemented(format!(
                "malformed method path `{}`: a gRPC path is /package.Service/Method",
                request.uri().path()
            ));
            return Box::pin(std::future::ready(Err(status)));
        }
        // The common case picks right here, synchronously, with this clone's RNG.
        let first = self
            .router
            .try_pick(&mut self.rng, request.headers(), &[])
            .ok();
        let router = self.router.clone();
        if router.retry.max_attempts <= 1
            && router.service_config.methods().is_empty()
            && let Some(route) = first
        {
            let deadline = grpc_timeout(request.headers()).map(deadline_after);
            return Box::pin(async move {
                let (mut parts, body) = request.into_parts();
                let mut extensions = std::mem::take(&mut parts.extensions);
                let request = http::Request::from_parts(parts, AttemptBody::Body(body));
                let mut response = route
                    .send(request, &mut extensions, deadline, true)
                    .await
                    .map_err(|f| f.status)?;
                response.body_mut().set_deadline(deadline);
                Ok(response)
            });
        }
        let rng = SmallRng::seed_from_u64(self.rng.next_u64());
        Box::pin(async move { router.call(request, first, rng).await })
    }
}
