//! The time pickers and latency estimates see: nanoseconds since the first reading.
//!
//! It reads `tokio::time::Instant`, so tests that pause Tokio's clock control it too.
//! The simulator does not use it at all: it hands its virtual time to
//! [`PickContext::at`](crate::PickContext::at) and
//! [`InFlightGuard::finish_at`](crate::InFlightGuard::finish_at).
//!
//! The ground floor. May import: nothing of this crate.

use std::sync::OnceLock;

use tokio::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process first asked; never 0 (0 means "never" elsewhere).
pub fn now_nanos() -> u64 {
    let start = *start();
    u64::try_from(start.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The instant that is `nanos` on this clock (for a timer set to a clock time).
pub fn instant_at(nanos: u64) -> Instant {
    *start() + std::time::Duration::from_nanos(nanos)
}

fn start() -> &'static Instant {
    START.get_or_init(Instant::now)
}
