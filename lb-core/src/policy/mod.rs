//! Picking policies: which endpoint gets the next call.
//!
//! A policy works in two steps, as in gRPC:
//!
//! 1. When the set of READY endpoints changes, the balancer asks the policy
//!    ([`BuildPicker::build`]) for a new [`Picker`] for that set. This is where the
//!    expensive work goes: a hash ring, a Maglev table, an alias table.
//! 2. For every call, the balancer asks the current picker ([`Picker::pick`]) for the
//!    index of one endpoint. A pick is a pure, synchronous function of the endpoints'
//!    live state (connectivity, calls in flight, latency), the call's headers and a
//!    seeded RNG: no I/O, no lock, no waiting.
//!
//! Because picking is pure, the same code runs in the [`Balancer`](crate::Balancer), in
//! unit tests with hand-made endpoint states, and in the simulator with virtual time.
//!
//! | name | picks | article | file |
//! |---|---|---|---|
//! | `pick_first` | the first ready endpoint (no balancing) | | [`pick_first`] |
//! | `round_robin` | the next endpoint in turn | 轮询 | [`round_robin`] |
//! | `random` | a uniformly random endpoint | 随机 | [`random`] |
//! | `least_connections` | the fewest calls in flight, of all | 最少连接 | [`least_connections`] |
//! | `least_request` | the fewest calls in flight, of k random ones | | [`least_request`] |
//! | `peak_ewma` | the lower latency × load, of 2 random ones | | [`peak_ewma`] |
//! | `weighted_random` | random in proportion to the weights | | [`weighted_random`] |
//! | `weighted_round_robin` | in turn, in proportion to the weights | | [`weighted_round_robin`] |
//! | `ring_hash` | by a hash of a request header, on a ring | | [`ring_hash`] |
//! | `maglev` | by a hash of a request header, in a table | | [`maglev`] |
//!
//! # Choosing a policy
//! By name (`"least_request".parse::<Policy>()`) with default settings, or by gRPC
//! service-config JSON, as grpc-go and grpc-java accept it:
//!
//! ```
//! use lb_core::Policy;
//!
//! let policy: Policy = r#"{"loadBalancingConfig":[{"least_request":{"choiceCount":3}}]}"#
//!     .parse()
//!     .unwrap();
//! assert_eq!(policy.to_string(), "least_request");
//! let err = r#"{"least_request":{"choices":3}}"#.parse::<Policy>().unwrap_err();
//! assert!(err.to_string().contains("unknown field `choices`"));
//! ```
//!
//! # Adding a policy
//! Copy one of the files (say `random.rs`), implement [`Picker::pick`], then add a
//! variant to [`Policy`] and an arm to its `match`es. A policy with per-set tables
//! implements [`BuildPicker`] as well; a stateless one can be handed to the balancer
//! directly with [`BalancerBuilder::picker`](crate::BalancerBuilder::picker).

pub mod config;
pub mod least_connections;
pub mod least_request;
pub mod maglev;
pub mod peak_ewma;
pub mod pick_first;
pub mod random;
pub mod ring_hash;
pub mod round_robin;
pub mod weighted_random;
pub mod weighted_round_robin;

use std::{fmt, str::FromStr, sync::Arc};

use rand::{Rng, RngCore};

use crate::{EndpointState, Error, clock};

pub use config::{LeastRequestConfig, MaglevConfig, PeakEwmaConfig, RingHashConfig};
pub use least_connections::LeastConnections;
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::PeakEwma;
pub use pick_first::PickFirst;
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use weighted_random::WeightedRandom;
pub use weighted_round_robin::WeightedRoundRobin;

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
}

/// Builds a [`Picker`] for a set of endpoints; called again whenever the set changes.
pub trait BuildPicker: Send + Sync + 'static {
    /// The policy's name, as users type it.
    fn name(&self) -> &'static str;

    /// A picker for `endpoints` (the READY ones, in the balancer). `rng` seeds anything
    /// random in the picker itself, such as round robin's starting point.
    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker>;
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
        }
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

    /// A uniform index below `n` (which must not be 0).
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
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

/// The policies this crate ships, with their settings.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Policy {
    /// [`PickFirst`]: every call to the first ready endpoint.
    PickFirst,
    /// [`RoundRobin`]: endpoints in turn.
    RoundRobin,
    /// [`Random`]: uniformly at random.
    Random,
    /// [`LeastConnections`]: fewest calls in flight, scanning all.
    LeastConnections,
    /// [`LeastRequest`]: fewest calls in flight of `choice_count` random ones.
    LeastRequest(LeastRequestConfig),
    /// [`PeakEwma`]: lower latency × (in flight + 1) of two random ones.
    PeakEwma(PeakEwmaConfig),
    /// [`WeightedRandom`]: random in proportion to weights.
    WeightedRandom,
    /// [`WeightedRoundRobin`]: smooth weighted round robin.
    WeightedRoundRobin,
    /// [`RingHash`]: consistent hashing on a ring.
    RingHash(RingHashConfig),
    /// [`Maglev`]: consistent hashing with a Maglev table.
    Maglev(MaglevConfig),
}

impl Policy {
    /// Every policy with default settings, in the order help texts list them.
    pub fn all() -> Vec<Policy> {
        vec![
            Policy::PickFirst,
            Policy::RoundRobin,
            Policy::Random,
            Policy::LeastConnections,
            Policy::LeastRequest(LeastRequestConfig::default()),
            Policy::PeakEwma(PeakEwmaConfig::default()),
            Policy::WeightedRandom,
            Policy::WeightedRoundRobin,
            Policy::RingHash(RingHashConfig::default()),
            Policy::Maglev(MaglevConfig::default()),
        ]
    }

    /// The name users type, in gRPC's snake_case spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::PickFirst => pick_first::NAME,
            Policy::RoundRobin => round_robin::NAME,
            Policy::Random => random::NAME,
            Policy::LeastConnections => least_connections::NAME,
            Policy::LeastRequest(_) => least_request::NAME,
            Policy::PeakEwma(_) => peak_ewma::NAME,
            Policy::WeightedRandom => weighted_random::NAME,
            Policy::WeightedRoundRobin => weighted_round_robin::NAME,
            Policy::RingHash(_) => ring_hash::NAME,
            Policy::Maglev(_) => maglev::NAME,
        }
    }

    /// One line on what the policy does.
    pub fn summary(&self) -> &'static str {
        match self {
            Policy::PickFirst => "every call to the first reachable endpoint (no balancing)",
            Policy::RoundRobin => "endpoints in turn (the article's 轮询)",
            Policy::Random => "a uniformly random endpoint (随机)",
            Policy::LeastConnections => "the fewest calls in flight, of all endpoints (最少连接)",
            Policy::LeastRequest(_) => "the fewest calls in flight, of k random endpoints",
            Policy::PeakEwma(_) => "lower peak-EWMA latency × (in flight + 1), of two random",
            Policy::WeightedRandom => "random, in proportion to the endpoints' weights",
            Policy::WeightedRoundRobin => "in turn, in proportion to the weights (smooth)",
            Policy::RingHash(_) => "consistent hashing of a request header on a ring",
            Policy::Maglev(_) => "consistent hashing of a request header, Maglev table",
        }
    }

    /// The request header the hashing policies key on, if this is one of them.
    pub fn hash_header(&self) -> Option<&str> {
        match self {
            Policy::RingHash(c) => Some(&c.request_hash_header),
            Policy::Maglev(c) => Some(&c.request_hash_header),
            _ => None,
        }
    }

    /// The latency decay time the endpoints should use (see [`crate::latency`]).
    pub fn latency_decay(&self) -> std::time::Duration {
        match self {
            Policy::PeakEwma(c) => c.decay,
            _ => crate::latency::DEFAULT_DECAY,
        }
    }

    /// All names, for help texts and error messages.
    pub fn names() -> Vec<&'static str> {
        Self::all().iter().map(Policy::name).collect()
    }
}

impl BuildPicker for Policy {
    fn name(&self) -> &'static str {
        Policy::name(self)
    }

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        match self {
            Policy::PickFirst => Arc::new(PickFirst),
            Policy::RoundRobin => Arc::new(RoundRobin::new(rng)),
            Policy::Random => Arc::new(Random),
            Policy::LeastConnections => Arc::new(LeastConnections),
            Policy::LeastRequest(c) => Arc::new(LeastRequest::new(c.choice_count)),
            Policy::PeakEwma(c) => Arc::new(PeakEwma::new(c.default_latency)),
            Policy::WeightedRandom => Arc::new(WeightedRandom::new(endpoints)),
            Policy::WeightedRoundRobin => Arc::new(WeightedRoundRobin::new(endpoints, rng)),
            Policy::RingHash(c) => Arc::new(RingHash::new(endpoints, c)),
            Policy::Maglev(c) => Arc::new(Maglev::new(endpoints, c)),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = Error;

    /// A policy name with default settings, or gRPC service-config JSON.
    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.starts_with('{') {
            return config::parse_service_config(text);
        }
        Self::all()
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| Error::UnknownPolicy {
                name: text.to_string(),
            })
    }
}

/// Up to `k` distinct indices below `n`, drawn uniformly; all of `0..n` when `k >= n`.
///
/// Used by the power-of-k-choices policies. Rejection sampling: with `k` at most 10 and
/// `k < n`, a repeat is rare and cheap to redraw.
pub(crate) fn sample_distinct<'s>(
    n: usize,
    k: usize,
    ctx: &mut PickContext<'_>,
    out: &'s mut [usize; least_request::MAX_CHOICES],
) -> &'s [usize] {
    let k = k.min(out.len());
    if k >= n {
        for (i, slot) in out.iter_mut().enumerate().take(n) {
            *slot = i;
        }
        return &out[..n];
    }
    let mut len = 0;
    while len < k {
        let candidate = ctx.index(n);
        if !out[..len].contains(&candidate) {
            out[len] = candidate;
            len += 1;
        }
    }
    &out[..len]
}

/// The power-of-k-choices step shared by `least_request` and `peak_ewma`: draws `k`
/// distinct endpoints, keeps the ready one with the lowest `cost`, and explains the
/// sample with `describe` (`"b: 3 in flight"`). If every sampled endpoint went down
/// since the snapshot, any ready one is taken instead.
pub(crate) fn best_of_sample(
    name: &str,
    endpoints: &[EndpointState],
    ctx: &mut PickContext<'_>,
    k: usize,
    cost: impl Fn(&EndpointState) -> f64,
    describe: impl Fn(&EndpointState) -> String,
) -> Result<usize, PickError> {
    if endpoints.is_empty() {
        return Err(PickError::NoEndpoints);
    }
    let mut buffer = [0; least_request::MAX_CHOICES];
    let sample = sample_distinct(endpoints.len(), k, ctx, &mut buffer);
    let best = sample
        .iter()
        .copied()
        .filter(|&i| endpoints[i].is_ready())
        .min_by(|&a, &b| cost(&endpoints[a]).total_cmp(&cost(&endpoints[b])));
    let i = match best {
        Some(i) => i,
        None => random::random_ready(endpoints, ctx)?,
    };
    if ctx.explaining() {
        let sampled: Vec<String> = sample.iter().map(|&s| describe(&endpoints[s])).collect();
        ctx.explain(|| {
            format!(
                "{name} sampled {{{}}} -> {}",
                sampled.join(", "),
                label(&endpoints[i])
            )
        });
    }
    Ok(i)
}

/// The step shared by the hashing policies: the call's key, or, for a call without
/// one, a random ready endpoint (explained as such).
pub(crate) enum Keyed<'a> {
    /// The value of the key header.
    Key(&'a [u8]),
    /// No key: this endpoint was drawn at random.
    Random(usize),
}

pub(crate) fn key_or_random<'a>(
    name: &str,
    header: &str,
    endpoints: &[EndpointState],
    ctx: &mut PickContext<'a>,
) -> Result<Keyed<'a>, PickError> {
    if let Some(key) = ctx.header(header) {
        return Ok(Keyed::Key(key));
    }
    let i = random::random_ready(endpoints, ctx)?;
    ctx.explain(|| {
        format!(
            "{name}: no `{header}` header, random -> {}",
            label(&endpoints[i])
        )
    });
    Ok(Keyed::Random(i))
}

/// The first of `candidates` (owners in ring or table order) that is a ready endpoint:
/// while an owner is down, its keys go to the next one along.
pub(crate) fn first_ready(
    candidates: impl Iterator<Item = usize>,
    endpoints: &[EndpointState],
) -> Result<usize, PickError> {
    candidates
        .into_iter()
        .find(|&i| i < endpoints.len() && endpoints[i].is_ready())
        .ok_or_else(|| PickError::none_ready(endpoints))
}

/// A short name for an endpoint in explanations: its address.
pub(crate) fn label(endpoint: &EndpointState) -> String {
    endpoint.endpoint().to_string()
}

/// Helpers shared by the policies' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::Connectivity;
    use rand::{SeedableRng, rngs::SmallRng};

    /// `n` endpoints `10.0.0.i:80`, all READY.
    pub fn ready(n: usize) -> Vec<EndpointState> {
        weighted(&vec![1; n])
    }

    /// Endpoints `10.0.0.i:80` with these weights, all READY.
    pub fn weighted(weights: &[u32]) -> Vec<EndpointState> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let endpoint: crate::Endpoint = format!("10.0.0.{i}:80").parse().unwrap();
                let state = EndpointState::new(endpoint.with_weight(w));
                state.set_connectivity(Connectivity::Ready);
                state
            })
            .collect()
    }

    /// How often each endpoint is picked in `picks` picks.
    pub fn histogram(picker: &dyn Picker, endpoints: &[EndpointState], picks: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(42);
        let mut ctx = PickContext::new(&mut rng);
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            counts[picker.pick(endpoints, &mut ctx).unwrap()] += 1;
        }
        counts
    }

    /// Pearson's chi-square statistic of `counts` against a uniform distribution.
    pub fn chi_square_uniform(counts: &[usize]) -> f64 {
        let total: usize = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// Asserts that each share of `counts` is within `points` percentage points of the
    /// weights' share.
    pub fn assert_shares_match_weights(counts: &[usize], weights: &[u32], points: f64) {
        let total: usize = counts.iter().sum();
        let weight_total: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let share = 100.0 * c as f64 / total as f64;
            let expected = 100.0 * f64::from(w) / f64::from(weight_total);
            assert!(
                (share - expected).abs() <= points,
                "endpoint {i}: {share:.2}% of picks, weight says {expected:.2}% ({counts:?})"
            );
        }
    }

    /// The request headers of a call keyed `key` under `x-lb-key`.
    pub fn keyed(key: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-lb-key", key.parse().unwrap());
        headers
    }

    /// The endpoint a call keyed `key` goes to.
    pub fn owner(picker: &dyn Picker, endpoints: &[EndpointState], key: &str) -> usize {
        let headers = keyed(key);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
        picker.pick(endpoints, &mut ctx).unwrap()
    }

    /// Asserts that 200 keys each reach the same endpoint every time.
    pub fn assert_keys_stick(picker: &dyn Picker, endpoints: &[EndpointState]) {
        for key in 0..200 {
            let key = format!("user-{key}");
            let first = owner(picker, endpoints, &key);
            assert!(
                (0..5).all(|_| owner(picker, endpoints, &key) == first),
                "{key}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::Connectivity;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn names_round_trip_and_unknown_lists_the_valid_ones() {
        for policy in Policy::all() {
            assert_eq!(policy.name().parse::<Policy>().unwrap(), policy);
        }
        let err = "nope".parse::<Policy>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown policy `nope`; valid policies: pick_first, round_robin, random, \
             least_connections, least_request, peak_ewma, weighted_random, \
             weighted_round_robin, ring_hash, maglev"
        );
    }

    #[test]
    fn sampling_is_distinct() {
        let mut rng = SmallRng::seed_from_u64(8);
        let mut ctx = PickContext::new(&mut rng);
        let mut out = [0; least_request::MAX_CHOICES];
        for n in 1..30 {
            for k in 1..=10 {
                let sample = sample_distinct(n, k, &mut ctx, &mut out).to_vec();
                assert_eq!(sample.len(), k.min(n));
                let mut sorted = sample.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), sample.len(), "{sample:?}");
                assert!(sample.iter().all(|&i| i < n));
            }
        }
    }

    #[test]
    fn an_empty_set_is_an_error_not_a_panic() {
        let mut rng = SmallRng::seed_from_u64(1);
        for policy in Policy::all() {
            let picker = policy.build(&[], &mut rng);
            let mut ctx = PickContext::new(&mut rng);
            assert_eq!(
                picker.pick(&[], &mut ctx),
                Err(PickError::NoEndpoints),
                "{policy}"
            );
            let headers = keyed("k");
            let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
            assert_eq!(
                picker.pick(&[], &mut ctx),
                Err(PickError::NoEndpoints),
                "{policy}"
            );
        }
    }

    #[test]
    fn a_set_with_nothing_ready_is_an_error() {
        let mut rng = SmallRng::seed_from_u64(1);
        let endpoints = ready(4);
        for policy in Policy::all() {
            let picker = policy.build(&endpoints, &mut rng);
            for e in &endpoints {
                e.set_connectivity(Connectivity::TransientFailure);
            }
            let headers = keyed("k");
            let mut ctx = PickContext::new(&mut rng).with_headers(&headers);
            assert_eq!(
                picker.pick(&endpoints, &mut ctx),
                Err(PickError::NoneReady { total: 4 }),
                "{policy}"
            );
            for e in &endpoints {
                e.set_connectivity(Connectivity::Ready);
            }
        }
    }

    #[test]
    fn explanations_name_the_pick() {
        let mut rng = SmallRng::seed_from_u64(3);
        let endpoints = ready(3);
        for policy in Policy::all() {
            let picker = policy.build(&endpoints, &mut rng);
            let headers = keyed("user-1");
            let mut why = String::new();
            let mut ctx = PickContext::new(&mut rng)
                .with_headers(&headers)
                .explain_into(&mut why);
            let i = picker.pick(&endpoints, &mut ctx).unwrap();
            assert!(why.starts_with(policy.name()), "{policy}: {why}");
            assert!(
                why.ends_with(&format!("-> {}", label(&endpoints[i]))),
                "{policy}: {why}"
            );
        }
    }
}
