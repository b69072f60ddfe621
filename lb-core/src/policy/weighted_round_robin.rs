//! `weighted_round_robin`: endpoints in turn, each as often as its weight says, spread
//! out rather than in bursts: nginx's *smooth weighted round robin*.
//!
//! Every endpoint keeps a running score. At each step, every score grows by its
//! endpoint's weight; the highest score wins the turn (the first, on a tie) and gives
//! back the total weight. With weights `a = 5, b = 1, c = 1` (total 7):
//!
//! | step | scores before | pick | after |
//! |---|---|---|---|
//! | 1 | 5, 1, 1 | a | -2, 1, 1 |
//! | 2 | 3, 2, 2 | a | -4, 2, 2 |
//! | 3 | 1, 3, 3 | b | 1, -4, 3 |
//! | 4 | 6, -3, 4 | a | -1, -3, 4 |
//! | 5 | 4, -2, 5 | c | 4, -2, -2 |
//! | 6 | 9, -1, -1 | a | 2, -1, -1 |
//! | 7 | 7, 0, 0 | a | 0, 0, 0 |
//!
//! `a a b a c a a`, and the scores are back at zero: the cycle repeats. A plain weighted
//! round robin would send `a a a a a b c`, five calls in a row to `a`.
//!
//! Why this and not Envoy's EDF scheduler: both spread turns smoothly, but this cycle
//! can be computed once per endpoint set, after which a pick is one atomic increment
//! and an array read: O(1), lock-free, and exact. (Computing it live needs a lock, or,
//! for EDF, a heap, on every call.) Cycles longer than 65,536 turns are scaled down in
//! proportion, keeping every weight at least 1.
//!
//! The cycle starts at a random turn, as `round_robin` does.
//!
//! # Weights that follow load (gRFC A58)
//!
//! Weights typed by hand (`host:port=W`) say what a machine *should* take. Servers that
//! report their load with ORCA ([`crate::orca`]: greeter-server `--orca`) say what it
//! *does* take: every answer's trailer carries the server's calls per second (`qps`),
//! errors per second (`eps`) and utilisation, and this policy turns them into weights
//! as gRPC's `weighted_round_robin` does:
//!
//! ```text
//! weight = qps / (utilization + eps / qps × errorUtilizationPenalty)
//! ```
//!
//! A server that serves 400 calls a second fully busy weighs 400; one that serves 100
//! fully busy weighs 100, whatever the hand-typed weights said; one that answers half
//! its calls with errors weighs less, by the penalty. Every `weightUpdatePeriod` (1 s)
//! the weights are read again:
//!
//! - an endpoint's reports count only after a `blackoutPeriod` (10 s) of them, from its
//!   first report or its (re)connection, so that one lucky report does not flood it;
//! - reports older than `weightExpirationPeriod` (3 min) are forgotten;
//! - endpoints without a usable weight get the mean of the others';
//! - with fewer than two usable weights, the static weights (the endpoint list's, 1 by
//!   default) apply, as before: with no server reporting, nothing changes.
//!
//! Reported weights are picked with a *stride scheduler*: each weight is scaled so that
//! the largest is 65,535 (and none below a tenth of it), and an endpoint takes its
//! turn in `weight / 65,535` of its rounds, spread out; a pick is an atomic increment
//! and a few arithmetic steps, O(1) on average (at most 10 rounds, for weights 10:1),
//! without a lock. Rebuilding it is O(n), done by whichever pick finds it due.
//!
//! With `slowStartConfig` ([`super::slow_start`]), each weight, reported or static, is
//! multiplied by its endpoint's slow-start factor at every update.
//!
//! Settings, with gRPC's service-config names: `{"weighted_round_robin":
//! {"blackoutPeriod": "10s", "weightExpirationPeriod": "180s", "weightUpdatePeriod":
//! "1s", "errorUtilizationPenalty": 1.0}}`. With `"enableOobLoadReport": true` the
//! balancer opens an `OpenRcaService/StreamCoreMetrics` stream on every endpoint's
//! connection, asking for a report every `oobReportingPeriod` (10 s), and the trailers
//! are not read (as in gRPC); a server that does not serve the stream is read from its
//! trailers after all.
//!
//! Reference: nginx `ngx_http_upstream_round_robin.c` (smooth weighted round robin,
//! 2012); gRFC A58 (weighted round robin with ORCA); grpc's static stride scheduler.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::{Rng, RngCore};

use std::sync::Arc;
use serde::Deserialize;

use super::slow_start::{self, SlowStart, SlowStartConfig};
use super::{PickContext, PickCounters, PickError, Picker, PolicyConfig, config, label};
use crate::EndpointState;

/// The name users type.
pub const NAME: &str = "weighted_round_robin";

/// Settings of `weighted_round_robin`, with gRPC's names (gRFC A58); `{}` takes the
/// defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WeightedRoundRobinConfig {
    /// Read load reports from the out-of-band stream (`OpenRcaService`, one per
    /// connection) instead of the trailers.
    pub enable_oob_load_report: bool,
    /// How often out-of-band reports are asked for (servers may send them less often:
    /// greeter-server's minimum is 1 s).
    #[serde(with = "config::duration_text")]
    pub oob_reporting_period: Duration,
    /// How long an endpoint must report before its weight counts.
    #[serde(with = "config::duration_text")]
    pub blackout_period: Duration,
    /// How old a report may be before it is forgotten.
    #[serde(with = "config::duration_text")]
    pub weight_expiration_period: Duration,
    /// How often the weights are read again (at least 100 ms).
    #[serde(with = "config::duration_text")]
    pub weight_update_period: Duration,
    /// How much a server's errors weigh against it: `eps / qps × this` is added to its
    /// utilisation.
    pub error_utilization_penalty: f64,
    /// Ramp up endpoints that have just become READY (off by default; not a gRPC
    /// setting, Envoy's `slow_start_config`).
    pub slow_start_config: Option<SlowStartConfig>,
}

impl Default for WeightedRoundRobinConfig {
    fn default() -> Self {
        Self {
            enable_oob_load_report: false,
            oob_reporting_period: Duration::from_secs(10),
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
            slow_start_config: None,
        }
    }
}

/// The shortest `weightUpdatePeriod` (gRFC A58: shorter ones are raised to this).
pub const MIN_UPDATE_PERIOD: Duration = Duration::from_millis(100);

impl PolicyConfig for WeightedRoundRobinConfig {
    const NAME: &'static str = NAME;
    const SUMMARY: &'static str =
        "in turn, in proportion to the weights (smooth), or to servers' load reports";

    fn validate(&mut self) -> Result<(), String> {
        if self.enable_oob_load_report && self.oob_reporting_period.is_zero() {
            return Err("oobReportingPeriod must be above 0".into());
        }
        if !(self.error_utilization_penalty >= 0.0 && self.error_utilization_penalty.is_finite()) {
            return Err(format!(
                "errorUtilizationPenalty must be 0 or more, not {}",
                self.error_utilization_penalty
            ));
        }
        if self.weight_expiration_period.is_zero() {
            return Err("weightExpirationPeriod must be above 0".into());
        }
        self.weight_update_period = self.weight_update_period.max(MIN_UPDATE_PERIOD);
        slow_start::validate(self.slow_start_config.as_ref())
    }

    fn slow_start(&self) -> Option<&SlowStartConfig> {
        self.slow_start_config.as_ref()
    }

    fn oob_load_reports(&self) -> Option<Duration> {
        self.enable_oob_load_report
            .then_some(self.oob_reporting_period)
    }

    fn build(&self, endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Arc<dyn Picker> {
        Arc::new(WeightedRoundRobin::with_config(endpoints, rng, self))
    }
}

/// The longest cycle computed in full.
pub const MAX_CYCLE: u64 = 1 << 16;

/// The largest scaled weight of the stride scheduler.
const MAX_STRIDE_WEIGHT: u64 = u16::MAX as u64;

/// Endpoints in turn, in proportion to their weights.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// From the static weights, computed once.
    fixed: Arc<Schedule>,
    schedule: ArcSwap<Schedule>,
    next: AtomicUsize,
    settings: WeightedRoundRobinConfig,
    /// When the weights were last read (clock nanoseconds; 0: never).
    updated_at: AtomicU64,
    updating: AtomicBool,
    slow_start: Option<SlowStart>,
    /// The static weights (0 for endpoints not ready when it was built).
    static_weights: Vec<f64>,
}

/// How turns are given out.
#[derive(Debug)]
enum Schedule {
    /// The smooth cycle of the static weights.
    Smooth(Vec<usize>),
    /// Weights from reports or slow start, scaled to at most 65,535 for the stride
    /// scheduler, and as they were before scaling.
    Stride(Vec<u64>, Vec<f64>),
}

impl WeightedRoundRobin {
    /// The cycle for `endpoints`' weights (endpoints not ready now are left out),
    /// starting at a random turn drawn from `rng`.
    pub fn new(endpoints: &[EndpointState], rng: &mut dyn RngCore) -> Self {
        Self::with_config(endpoints, rng, &WeightedRoundRobinConfig::default())
    }

    /// The same, with `settings` for weights from load reports.
    pub fn with_config(
        endpoints: &[EndpointState],
        rng: &mut dyn RngCore,
        settings: &WeightedRoundRobinConfig,
    ) -> Self {
        let mut picker = Self::starting_at(endpoints, 0);
        picker.settings = settings.clone();
        picker.slow_start = SlowStart::new(settings.slow_start_config.as_ref(), endpoints);
        if let Schedule::Smooth(cycle) = &*picker.fixed
            && !cycle.is_empty()
        {
            picker.next = AtomicUsize::new(rng.random_range(0..cycle.len()));
        }
        picker
    }

    /// The cycle, starting at turn `start`.
    pub fn starting_at(endpoints: &[EndpointState], start: usize) -> Self {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| {
                if e.is_ready() {
                    u64::from(e.weight())
                } else {
                    0
                }
            })
            .collect();
        let static_weights = weights.iter().map(|&w| w as f64).collect();
        let fixed = Arc::new(Schedule::Smooth(smooth_cycle(&weights)));
        Self {
            schedule: ArcSwap::new(fixed.clone()),
            fixed,
            next: AtomicUsize::new(start),
            settings: WeightedRoundRobinConfig::default(),
            updated_at: AtomicU64::new(0),
            updating: AtomicBool::new(false),
            slow_start: None,
            static_weights,
        }
    }

    /// Reads the weights again if `weightUpdatePeriod` has passed at `now`: reported
    /// ones where usable, the mean of those for the others, or the static weights if
    /// fewer than two are usable; each times its slow-start factor.
    fn update(&self, endpoints: &[EndpointState], now: u64, counters: Option<&PickCounters>) {
        let period = nanos(self.settings.weight_update_period);
        let last = self.updated_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < period {
            return;
        }
        if self.updating.swap(true, Ordering::Acquire) {
            return; // Another pick is at it.
        }
        let (mut not_yet_usable, mut stale) = (0, 0);
        let weights: Vec<f64> = endpoints
            .iter()
            .map(|e| match reported_weight(e, now, &self.settings) {
                Ok(weight) => weight,
                Err(Unusable::NotYet) => {
                    not_yet_usable += 1;
                    0.0
                }
                Err(Unusable::Stale) => {
                    stale += 1;
                    0.0
                }
            })
            .collect();
        let usable: Vec<f64> = weights.iter().copied().filter(|&w| w > 0.0).collect();
        if let Some(counters) = counters {
            PickCounters::add(&counters.endpoint_weight_not_yet_usable, not_yet_usable);
            PickCounters::add(&counters.endpoint_weight_stale, stale);
            PickCounters::add(&counters.rr_fallback, u64::from(usable.len() < 2));
        }
        let mut weights = (usable.len() >= 2).then(|| {
            let mean = usable.iter().sum::<f64>() / usable.len() as f64;
            weights
                .iter()
                .map(|&w| if w > 0.0 { w } else { mean })
                .collect::<Vec<f64>>()
        });
        if let Some(slow_start) = &self.slow_start {
            let factors: Vec<f64> = endpoints
                .iter()
                .map(|e| slow_start.factor(e, now))
                .collect();
            if factors.iter().any(|&f| f < 1.0) {
                let base = weights.unwrap_or_else(|| {
                    endpoints
                        .iter()
                        .map(|e| if e.is_ready() { f64::from(e.weight()) } else { 0.0 })
                        .collect()
                });
                weights = Some(base.iter().zip(&factors).map(|(w, f)| w * f).collect());
            }
        }
        let schedule = match weights {
            Some(weights) => Arc::new(Schedule::Stride(stride_weights(&weights), weights)),
            None => self.fixed.clone(),
        };
        self.schedule.store(schedule);
        self.updated_at.store(now.max(1), Ordering::Relaxed);
        self.updating.store(false, Ordering::Release);
    }

    /// The weights in use now: the reported ones (scaled to at most 65,535), or `None`
    /// while the static weights apply. For metrics and tests.
    pub fn reported_weights(&self) -> Option<Vec<u64>> {
        match &**self.schedule.load() {
            Schedule::Stride(weights, _) => Some(weights.clone()),
            Schedule::Smooth(_) => None,
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Why an endpoint has no reported weight now (gRFC A78 counts both).
enum Unusable {
    /// No report yet, or still in its blackout period.
    NotYet,
    /// Its last report is older than the expiration period.
    Stale,
}

/// One endpoint's weight from its load reports at `now` (gRFC A58), or why it has none
/// that counts. A weight of 0 (a report of no calls, or of infinite load) is usable
/// and counts as no weight.
fn reported_weight(
    endpoint: &EndpointState,
    now: u64,
    settings: &WeightedRoundRobinConfig,
) -> Result<f64, Unusable> {
    let load = endpoint.reported_load();
    if load.updated_at == 0 {
        return Err(Unusable::NotYet);
    }
    if now.saturating_sub(load.updated_at) >= nanos(settings.weight_expiration_period) {
        endpoint.expire_load();
        return Err(Unusable::Stale);
    }
    let blackout = nanos(settings.blackout_period);
    if blackout > 0
        && (load.non_empty_since == 0 || now.saturating_sub(load.non_empty_since) < blackout)
    {
        return Err(Unusable::NotYet);
    }
    let error_rate = if load.qps > 0.0 { load.eps / load.qps } else { 0.0 };
    let weight = load.qps / (load.utilization + error_rate * settings.error_utilization_penalty);
    Ok(if weight.is_finite() { weight } else { 0.0 })
}

/// Weights scaled for the stride scheduler: the largest to 65,535, none below a tenth
/// of it (so that a pick needs at most about 10 rounds).
fn stride_weights(weights: &[f64]) -> Vec<u64> {
    let max = weights.iter().copied().fold(0.0, f64::max);
    if max <= 0.0 {
        return vec![MAX_STRIDE_WEIGHT; weights.len()];
    }
    weights
        .iter()
        .map(|&w| {
            let scaled = (w / max * MAX_STRIDE_WEIGHT as f64).round() as u64;
            scaled.clamp(MAX_STRIDE_WEIGHT / 10, MAX_STRIDE_WEIGHT)
        })
        .collect()
}

/// The stride scheduler's turn for sequence number `seq`: endpoint `seq % n`, in
/// round `seq / n`, takes it if its share of rounds says so; `None` to skip.
fn stride_turn(weights: &[u64], seq: usize) -> Option<usize> {
    let n = weights.len();
    let index = seq % n;
    let round = (seq / n) as u64;
    let weight = weights[index];
    // An accumulator that grows by `weight` each round, modulo the maximum, crosses
    // the top in exactly `weight / max` of the rounds, evenly spread; the offset keeps
    // every endpoint from taking its first turn in round 0.
    let position = (weight.wrapping_mul(round).wrapping_add(MAX_STRIDE_WEIGHT / 2)) % MAX_STRIDE_WEIGHT;
    (position + weight >= MAX_STRIDE_WEIGHT).then_some(index)
}

/// One full cycle of smooth weighted round robin over `weights` (0 = left out).
fn smooth_cycle(weights: &[u64]) -> Vec<usize> {
    let gcd = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let mut weights: Vec<u64> = weights.iter().map(|w| w / gcd).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut scores = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            scores[i] += w as i64;
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        cycle.push(best);
    }
    cycle
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Picker for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn weights(&self) -> Option<Vec<f64>> {
        Some(match &**self.schedule.load() {
            Schedule::Stride(_, weights) => weights.clone(),
            Schedule::Smooth(_) => self.static_weights.clone(),
        })
    }

    fn pick(
        &self,
        endpoints: &[EndpointState],
        ctx: &mut PickContext<'_>,
    ) -> Result<usize, PickError> {
        if endpoints.is_empty() {
            return Err(PickError::none_ready(endpoints));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // Every `weightUpdatePeriod` (and at a new picker's first pick: an endpoint that
        // has just become READY may be in slow start), the weights are read again. The
        // balancer hands the pick its time, read once per call anyway.
        self.update(endpoints, ctx.now(), ctx.counters());
        let schedule = self.schedule.load();
        match &**schedule {
            Schedule::Smooth(cycle) => {
                let len = cycle.len();
                if len == 0 {
                    return Err(PickError::none_ready(endpoints));
                }
                // Skip turns of endpoints that went down since the cycle was computed.
                let i = (0..len)
                    .map(|offset| cycle[(turn + offset) % len])
                    .find(|&i| i < endpoints.len() && endpoints[i].is_ready())
                    .ok_or_else(|| PickError::none_ready(endpoints))?;
                ctx.explain(|| {
                    format!(
                        "{NAME}: turn {} of a {len}-turn cycle -> {}",
                        turn % len,
                        label(&endpoints[i])
                    )
                });
                Ok(i)
            }
            Schedule::Stride(weights, _) => {
                let n = weights.len().min(endpoints.len());
                if n == 0 {
                    return Err(PickError::none_ready(endpoints));
                }
                let weights = &weights[..n];
                // Every weight is at least a tenth of the largest: a turn comes within
                // about 10 rounds; the bound only guards against endpoints all down.
                let mut seq = turn;
                for _ in 0..(20 * n + 20) {
                    if let Some(i) = stride_turn(weights, seq)
                        && endpoints[i].is_ready()
                    {
                        ctx.explain(|| {
                            format!(
                                "{NAME}: reported weights {weights:?}, turn {seq} -> {}",
                                label(&endpoints[i])
                            )
                        });
                        return Ok(i);
                    }
                    seq = self.next.fetch_add(1, Ordering::Relaxed);
                }
                Err(PickError::none_ready(endpoints))
            }
        }
    }
}

#[cfg(test)]
mod tests;
