//! The two small traits every policy is made of, and what a pick may use.
//!
//! A policy works in two steps, as in gRPC:
//!
//! 1. When the set of usable endpoints changes, the balancer asks the policy
//!    ([`BuildPicker::build`]) for a new [`Picker`] for that set. This is where the
//!    expensive work goes: a hash ring, a Maglev table, an alias table.
//! 2. For every call, the balancer asks the current picker ([`Picker::pick`]) for the
//!    index of one endpoint: a pure, synchronous function of the endpoints' live state,
//!    the call's headers ([`PickContext`]) and a seeded RNG.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use rand::{Rng, RngCore};

use crate::{EndpointState, clock};

/// Chooses an endpoint for each call.
///
/// Implementations must be cheap (they run on every call), must return the index of an
/// endpoint that [`is_ready`](EndpointState::is_ready) at the time of the pick, and must
/// return [`PickError`] rather than panic when there is none. Interior state, such as
/// round robin's counter, uses atomics, because one picker serves every clone of a
/// balancer at once.
pub trait Picker: Send + Sync + 'static {
    /// The policy's name, as users type it (`round_robin`).
    fn name(&self) -> &'static str;

    /// Picks one of `endpoints` and returns its index.
    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError>;

    /// The weight each endpoint of the set this picker was built for is picked by now,
    /// in the set's order, for metrics and status pages (`weighted_round_robin`: the
    /// reported or static weight, after slow start). `None`, the default, for policies
    /// that pick by no weight.
    fn weights(&self) -> Option<Vec<f64>> {
        None
    }

    /// The next time after `now` (clock nanoseconds) at which this picker's choices
    /// change by themselves, with no endpoint changing: `priority_experimental` holds
    /// calls for a priority still connecting for the first time, until its failover
    /// timeout. A call waiting for an endpoint looks again then. `None`, the default:
    /// only when something changes.
    fn next_change(&self, now: u64) -> Option<u64> {
        let _ = now;
        None
    }
}

/// What a policy builds a picker for: the endpoints calls may go to now, and every
/// endpoint the balancer has.
///
/// A leaf policy needs the first alone ([`BuildPicker::build`] is handed just those). A
/// parent policy needs the second too: to tell a child whose endpoints are still
/// connecting for the first time from one whose endpoints failed, it has to see the
/// endpoints that are not usable.
#[derive(Clone, Copy, Debug)]
pub struct EndpointSet<'a> {
    /// READY and not ejected: what [`Picker::pick`] is handed, and indexes.
    pub usable: &'a [EndpointState],
    /// Every endpoint the balancer has, usable or not, in the order they were added.
    pub all: &'a [EndpointState],
}

impl<'a> EndpointSet<'a> {
    /// A set in which every endpoint is usable (a unit test, a picker built by hand).
    pub fn usable(endpoints: &'a [EndpointState]) -> Self {
        Self {
            usable: endpoints,
            all: endpoints,
        }
    }
}

/// Builds a [`Picker`] for a set of endpoints; called again whenever the set changes.
pub trait BuildPicker: Send + Sync + 'static {
    /// The policy's name, as users type it.
    fn name(&self) -> &'static str;

    /// A picker for `endpoints` (the READY ones, in the balancer). `rng` seeds anything
    /// random in the picker itself, such as round robin's starting point.
    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker>;

    /// How often the balancer should ask each endpoint's server for out-of-band load
    /// reports (ORCA's `OpenRcaService`), if the policy reads them
    /// (`weighted_round_robin` with `enableOobLoadReport`). `None`, the default: the
    /// per-call reports in the trailers are read instead.
    fn oob_load_reports(&self) -> Option<std::time::Duration> {
        None
    }

    /// A picker for `set.usable`, seeing `set.all` too: what the balancer calls. The
    /// default builds from the usable endpoints alone, as a leaf policy does; a parent
    /// policy overrides it (and [`watches_membership`](Self::watches_membership)).
    fn build_set(&self, set: EndpointSet<'_>, rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.build(set.usable, rng)
    }

    /// Whether a new picker is needed when the endpoints change, not only the usable
    /// ones (an endpoint added that is still connecting): `true` for the parent
    /// policies. `false`, the default.
    fn watches_membership(&self) -> bool {
        false
    }
}

/// A stateless picker serves every endpoint set as it is.
impl BuildPicker for Arc<dyn Picker> {
    fn name(&self) -> &'static str {
        Picker::name(self.as_ref())
    }

    fn build(&self, _: &[EndpointState], _: &mut dyn RngCore) -> Arc<dyn Picker> {
        self.clone()
    }
}

/// What a pick may use besides endpoint state.
pub struct PickContext<'a> {
    /// The source of randomness. Seed it to make picks reproducible.
    pub rng: &'a mut dyn RngCore,
    /// The call's request headers (gRPC metadata), for the hashing policies.
    pub headers: Option<&'a http::HeaderMap>,
    now: Option<u64>,
    explain: Option<&'a mut String>,
    counters: Option<&'a PickCounters>,
}

/// What pickers count, per balancer, for its metrics: gRFC A78's counters of
/// `weighted_round_robin`, counted at each of its weight updates. The balancer hands
/// its own to every pick ([`PickContext::with_counters`]); a picker used without one
/// (a unit test, the simulator) counts nothing.
#[derive(Debug, Default)]
pub struct PickCounters {
    /// Weight updates that found fewer than two usable weights and fell back to the
    /// static ones (A78 `grpc.lb.wrr.rr_fallback`).
    pub rr_fallback: AtomicU64,
    /// Endpoints, counted once per weight update, whose weight was not usable yet: no
    /// report so far, or still in the blackout period
    /// (`grpc.lb.wrr.endpoint_weight_not_yet_usable`).
    pub endpoint_weight_not_yet_usable: AtomicU64,
    /// Endpoints, counted once per weight update, whose last report is older than
    /// `weightExpirationPeriod` (`grpc.lb.wrr.endpoint_weight_stale`). A new report
    /// then starts a new blackout.
    pub endpoint_weight_stale: AtomicU64,
}

impl PickCounters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl<'a> PickContext<'a> {
    /// A context drawing randomness from `rng`, with no headers, telling the time by
    /// the [`clock`].
    pub fn new(rng: &'a mut dyn RngCore) -> Self {
        Self {
            rng,
            headers: None,
            now: None,
            explain: None,
            counters: None,
        }
    }

    /// The same, counting what the picker reports into `counters` (the balancer's).
    pub fn with_counters(mut self, counters: &'a PickCounters) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Where this pick's picker counts its events, if anyone listens.
    pub fn counters(&self) -> Option<&'a PickCounters> {
        self.counters
    }

    /// The same, for a call with these headers.
    pub fn with_headers(mut self, headers: &'a http::HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }

    /// The same, at a fixed time (clock nanoseconds): the simulator's virtual time.
    pub fn at(mut self, now: u64) -> Self {
        self.now = Some(now);
        self
    }

    /// The same, writing why the pick was made into `out`.
    pub fn explain_into(mut self, out: &'a mut String) -> Self {
        self.explain = Some(out);
        self
    }

    /// The time of this pick in clock nanoseconds (read once, then remembered).
    pub fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(clock::now_nanos)
    }

    /// The time of this pick, read from the clock only if and when `get` is called
    /// (for closures that cannot borrow the context).
    pub(crate) fn lazy_now(&self) -> LazyNow {
        let at = std::cell::OnceCell::new();
        if let Some(now) = self.now {
            let _ = at.set(now);
        }
        LazyNow { at }
    }

    /// The value of request header `name`, if the call has it.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let headers: &'a http::HeaderMap = self.headers?;
        headers.get(name).map(http::HeaderValue::as_bytes)
    }

    /// Whether someone asked why: pickers skip formatting otherwise.
    pub fn explaining(&self) -> bool {
        self.explain.is_some()
    }

    /// Records why the pick was made, when someone asked.
    pub fn explain(&mut self, why: impl FnOnce() -> String) {
        if let Some(out) = self.explain.as_deref_mut() {
            out.push_str(&why());
        }
    }

    /// A uniform index below `n` (which must not be 0), from the context's RNG.
    pub fn index(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }
}

/// See [`PickContext::lazy_now`].
pub(crate) struct LazyNow {
    at: std::cell::OnceCell<u64>,
}

impl LazyNow {
    /// The time of the pick (clock nanoseconds).
    pub(crate) fn get(&self) -> u64 {
        *self.at.get_or_init(clock::now_nanos)
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The endpoint list is empty.
    #[error("no endpoints to pick from")]
    NoEndpoints,
    /// There are endpoints, but none is ready.
    #[error("none of the {total} endpoints is ready")]
    NoneReady {
        /// How many endpoints there are.
        total: usize,
    },
}

impl PickError {
    /// The error for a non-empty list in which nothing is ready, or an empty one.
    pub fn none_ready(endpoints: &[EndpointState]) -> Self {
        if endpoints.is_empty() {
            Self::NoEndpoints
        } else {
            Self::NoneReady {
                total: endpoints.len(),
            }
        }
    }
}
