//! Picking an endpoint for an attempt: from the current snapshot, without a lock, or,
//! when none is usable, by waiting while some endpoint is still connecting.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use rand::rngs::SmallRng;
use tonic::Status;
use tracing::info;

use super::attempt::Route;
use super::headers::deadline_after;
use super::router::Router;
use crate::policy::{PickContext, PickError};
use crate::subchannels::pool::Snapshot;
use crate::subchannels::subchannel::Subchannel;

impl Router {
    /// Picks a route, avoiding endpoints in `tried` (another endpoint for a retry) as
    /// long as some other is usable.
    pub(crate) fn try_pick(
        &self,
        rng: &mut SmallRng,
        headers: &http::HeaderMap,
        tried: &[Arc<Subchannel>],
    ) -> Result<Route, PickError> {
        let snapshot = self.pool.snapshot.load();
        let was_tried = |i: usize| {
            snapshot
                .routes
                .get(i)
                .is_some_and(|r| tried.iter().any(|t| Arc::ptr_eq(t, &r.sub)))
        };
        // One reading of the clock per call: the pick's time (for the policies that
        // tell time) and the call's start.
        let now = crate::clock::now_nanos();
        let mut index = self.pick_index(&snapshot, rng, headers, now)?;
        if was_tried(index) {
            // Ask the policy again a few times, then take any untried usable endpoint.
            index = (0..3)
                .filter_map(|_| self.pick_index(&snapshot, rng, headers, now).ok())
                .find(|&i| !was_tried(i))
                .or_else(|| (0..snapshot.routes.len()).find(|&i| !was_tried(i)))
                .unwrap_or(index);
        }
        // A picker's index is checked, not trusted: a bug in a learner's policy should
        // fail the call, not panic the client.
        let (state, route) = snapshot
            .ready
            .get(index)
            .zip(snapshot.routes.get(index))
            .ok_or(PickError::NoneReady {
                total: snapshot.ready.len(),
            })?;
        Ok(Route {
            guard: state.start_call_at(now),
            state: state.clone(),
            wire: route.wire.clone(),
            sub: route.sub.clone(),
            generation: route.generation,
            pool: self.pool.clone(),
        })
    }

    fn pick_index(
        &self,
        snapshot: &Snapshot,
        rng: &mut SmallRng,
        headers: &http::HeaderMap,
        now: u64,
    ) -> Result<usize, PickError> {
        let ctx = PickContext::new(rng)
            .with_headers(headers)
            .at(now)
            .with_counters(&self.pick_counters);
        if self.should_explain() {
            let mut why = String::new();
            let result = snapshot
                .picker
                .pick(&snapshot.ready, &mut ctx.explain_into(&mut why));
            match &result {
                Ok(_) => info!(target: "lb_core::explain", "{why}"),
                Err(err) => info!(target: "lb_core::explain", "{}: {err}", self.pool.policy_name()),
            }
            result
        } else {
            snapshot.picker.pick(&snapshot.ready, &mut { ctx })
        }
    }

    /// Whether this pick is one of the first few to explain. One relaxed load when
    /// explaining is off.
    fn should_explain(&self) -> bool {
        self.explain.load(Ordering::Relaxed) > 0
            && self
                .explain
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    /// The slow path: no endpoint is usable. Waits while any is still connecting, for
    /// at most the queue timeout, or what is left of the call's deadline if sooner. With
    /// `wait_for_ready` (a method's `waitForReady`), it waits even when every endpoint
    /// has failed: for the rest of the call's deadline, or the queue timeout.
    pub(crate) async fn pick_when_ready(
        &self,
        rng: &mut SmallRng,
        headers: &http::HeaderMap,
        tried: &[Arc<Subchannel>],
        call_left: Option<Duration>,
        wait_for_ready: bool,
    ) -> Result<Route, Status> {
        let wait = match call_left {
            Some(left) if wait_for_ready => left,
            Some(left) => left.min(self.queue_timeout),
            None => self.queue_timeout,
        };
        let deadline = deadline_after(wait);
        let mut changes = self.pool.changes.subscribe();
        loop {
            if let Ok(route) = self.try_pick(rng, headers, tried) {
                return Ok(route);
            }
            // Settled: nothing is connecting, and every READY endpoint is in the
            // snapshot. (One that has just reconnected is READY a moment before its
            // snapshot is stored: the pick waits for that, and does not fail an endpoint
            // that is READY, as a fleet recycling its connections at once would see.)
            if self.pool.settled() && !wait_for_ready {
                // Failing fast must not mean failing without ever yielding: a caller
                // that retries in a loop would then hold its worker thread, and the
                // timers that reconnect the endpoints would never run. This yields
                // once the task has used up its scheduling budget.
                tokio::task::coop::consume_budget().await;
                return Err(self.no_ready_endpoint("all endpoints failed"));
            }
            // A policy whose choice changes with time (a priority that stops waiting
            // for a child still starting, at its failover timeout) wakes the call then.
            let now = crate::clock::now_nanos();
            let wake = self
                .pool
                .snapshot
                .load()
                .picker
                .next_change(now)
                .map(|at| crate::clock::instant_at(at).min(deadline));
            let woke = tokio::time::timeout_at(wake.unwrap_or(deadline), changes.changed()).await;
            if woke.is_err() && wake.is_some_and(|at| at < deadline) {
                continue; // The picker's time: look again.
            }
            if woke.is_err() {
                // Out of time: one last look (a change that came with the deadline).
                if let Ok(route) = self.try_pick(rng, headers, tried) {
                    return Ok(route);
                }
                let why = format!("none became ready within {wait:?}");
                return Err(match call_left {
                    Some(t) if t <= wait => {
                        let waiting = self.no_ready_endpoint(&why);
                        Status::deadline_exceeded(waiting.message())
                    }
                    _ => self.no_ready_endpoint(&why),
                });
            }
        }
    }

    fn no_ready_endpoint(&self, why: &str) -> Status {
        let states: Vec<String> = self
            .pool
            .statuses()
            .into_iter()
            .map(|s| {
                let state = if s.ejected {
                    format!("{} (ejected)", s.connectivity)
                } else {
                    s.connectivity.to_string()
                };
                match s.last_error {
                    Some(err) => format!("endpoint {}: {state} ({err})", s.endpoint),
                    None => format!("endpoint {}: {state}", s.endpoint),
                }
            })
            .collect();
        Status::unavailable(format!(
            "{}: no ready endpoint, {why}: {}",
            self.pool.policy_name(),
            states.join("; ")
        ))
    }
}
