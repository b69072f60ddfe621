//! The article's service, as one instance serves it: `SayHello` with the demo's knobs
//! (latency, errors, capacity) and the count of calls answered.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use greeter_proto::{HelloRequest, HelloResponse, MyService};
use rand::{Rng, rngs::StdRng};
use tokio::sync::watch;
use tonic::{Request, Response, Status, metadata::AsciiMetadataValue};

use greeter_proto::SERVED_BY;

use crate::config::LatencyTail;

/// The `MyService` implementation of one instance.
#[derive(Debug)]
pub struct Greeter {
    pub(crate) served_by: AsciiMetadataValue,
    pub(crate) latency: Arc<Latency>,
    pub(crate) error_rate: f64,
    pub(crate) latency_tail: Option<LatencyTail>,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) calls: Arc<CallCount>,
    pub(crate) capacity: Option<Arc<Capacity>>,
}

/// At most `size` calls worked on at once; the rest wait. How busy it was is the
/// instance's utilisation: the time calls held a slot, over the slots' time.
#[derive(Debug)]
pub struct Capacity {
    slots: tokio::sync::Semaphore,
    pub(crate) size: usize,
    /// Microseconds calls have held a slot, in all.
    busy: AtomicU64,
    /// When utilisation was last read, and `busy` then.
    last: Mutex<(std::time::Instant, u64)>,
}

/// A capacity slot held by a call. Its time counts as busy when it is given back,
/// whether the call finished, timed out or was cancelled by its client.
struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    since: std::time::Instant,
    capacity: &'a Capacity,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.capacity.busy.fetch_add(held, Ordering::Relaxed);
    }
}

impl Capacity {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            slots: tokio::sync::Semaphore::new(size),
            size,
            busy: AtomicU64::new(0),
            last: Mutex::new((std::time::Instant::now(), 0)),
        }
    }

    /// The share of the slots' time in use since the last reading (0 to 1).
    pub fn utilization(&self) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let busy = self.busy.load(Ordering::Relaxed);
        let elapsed = now.duration_since(last.0).as_micros() as f64;
        let used = busy.saturating_sub(last.1) as f64;
        *last = (now, busy);
        if elapsed <= 0.0 {
            return 0.0;
        }
        (used / (elapsed * self.size as f64)).min(1.0)
    }
}

/// The delay added to every call, which [`Servers::set_latency`] can change while the
/// instances serve (the playground's "slow down"). Kept in whole microseconds.
#[derive(Debug, Default)]
pub(crate) struct Latency(AtomicU64);

impl Latency {
    pub(crate) fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.store(micros, Ordering::Relaxed);
    }
}

/// Calls received by all instances: an atomic counter on the hot path, published on
/// a watch channel only once someone watches (tests do), since a watch channel's
/// update takes a lock that every server thread would contend for on every call.
#[derive(Debug)]
pub(crate) struct CallCount {
    pub(crate) count: AtomicU64,
    pub(crate) watched: AtomicBool,
    pub(crate) tx: watch::Sender<u64>,
}

impl CallCount {
    // SeqCst, not Relaxed: `add_one` stores the count then loads `watched`, `watch`
    // stores `watched` then loads the count; with weaker orderings both loads may see
    // the old value, and a call would be counted but never published.
    fn add_one(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if self.watched.load(Ordering::SeqCst) {
            self.publish(n);
        }
    }

    /// Stores `n` unless a larger count is already there (calls race to publish).
    fn publish(&self, n: u64) {
        self.tx.send_if_modified(|current| {
            let newer = n > *current;
            if newer {
                *current = n;
            }
            newer
        });
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.watched.store(true, Ordering::SeqCst);
        self.publish(self.count.load(Ordering::SeqCst));
        self.tx.subscribe()
    }
}

impl Greeter {
    /// Should this call fail? Decided by the seeded RNG, so a seeded run repeats.
    fn inject_failure(&self) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_bool(self.error_rate.min(1.0))
    }

    /// How much longer this call takes, if it is in the tail: drawn from the seeded
    /// RNG as well.
    fn tail(&self) -> Option<Duration> {
        let tail = self.latency_tail.filter(|t| t.fraction > 0.0)?;
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_bool(tail.fraction.min(1.0))
            .then_some(tail.extra)
    }
}

#[tonic::async_trait]
impl MyService for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        self.calls.add_one();
        // Wait for a slot, if the capacity is limited; the call's work (its latency)
        // is done holding it.
        let slot = match &self.capacity {
            Some(capacity) => Some(Slot {
                _permit: capacity
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| Status::unavailable("shutting down"))?,
                since: std::time::Instant::now(),
                capacity,
            }),
            None => None,
        };
        let latency = self.latency.get() + self.tail().unwrap_or_default();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        drop(slot);
        if self.inject_failure() {
            let mut status = Status::unavailable(format!(
                "injected failure (--error-rate {})",
                self.error_rate
            ));
            status
                .metadata_mut()
                .insert(SERVED_BY, self.served_by.clone());
            return Err(status);
        }
        let name = request.into_inner().name;
        let mut response = Response::new(HelloResponse {
            message: format!("Hello, {name}!"),
        });
        response
            .metadata_mut()
            .insert(SERVED_BY, self.served_by.clone());
        Ok(response)
    }
}
