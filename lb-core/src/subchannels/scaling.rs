//! More than one connection to an endpoint when one is full (gRFC A105).
//!
//! An HTTP/2 server says how many streams (calls) one connection may have open at once,
//! in its `SETTINGS_MAX_CONCURRENT_STREAMS` (tonic and grpc-go: unlimited unless set;
//! servers and proxies often set 100). A call beyond it waits inside the connection
//! until another ends: with 100 long-running streams open, the 101st waits silently
//! however idle the server is (grpc-java #8252, grpc #21386).
//!
//! So each connection counts its open streams, and reads the server's limit from the
//! server's own SETTINGS frames as they pass (hyper does not tell
//! it). A call takes a stream on the endpoint's first connection with one free, in the
//! order the connections were made; when every connection is full and there are fewer
//! than `maxConnectionsPerSubchannel` (the service config's `connectionScaling`, or
//! [`BalancerBuilder::max_connections_per_endpoint`](crate::BalancerBuilder::max_connections_per_endpoint)),
//! the endpoint opens one more, one attempt at a time. At the maximum, the call waits
//! in a connection for a stream to end, as before: the server's limit is never
//! exceeded. Policies still see one endpoint, with all its calls in flight.
//!
//! ```text
//! limit 10, at most 3 connections:
//!   calls 1-10   -> connection 1 (10 of 10)
//!   call 11      -> connection 1 full: connection 2 opens; calls 11-20 go there
//!   call 21      -> connection 3 opens; calls 21-30
//!   call 31      -> all full, at the maximum: waits on the connection with the fewest
//! ```
//!
//! The extra connections belong to the endpoint's current connection: they close with
//! it, and when the server closes them. Like gRPC, the balancer never closes one for
//! being idle: a server that wants unused connections gone says so with its
//! `MAX_CONNECTION_IDLE` (gRFC A9). With one connection per endpoint (the default),
//! nothing here runs: no stream is counted and no frame read, so a call costs what it
//! did before, as A105 asks.

use std::sync::Arc;

use tracing::{debug, info};

use super::subchannel::{Settings, Subchannel};
use crate::sync::lock;
use crate::transport::errors::describe;
use crate::transport::streams::StreamSlot;
use crate::transport::wire::{End, Wire};

impl Subchannel {
    /// A connection with a free stream for a call whose connection (`first`, the
    /// endpoint's connection `generation`) is full: an extra one with a free stream, in
    /// the order they were made; else one more connection if fewer than the maximum are
    /// open (one attempt at a time; not again for the backoff's first step after one
    /// failed); else the least busy one, where the call waits for a stream.
    pub(crate) async fn stream_elsewhere(
        self: &Arc<Self>,
        first: &Wire,
        generation: u64,
        settings: &Settings,
    ) -> (Wire, StreamSlot) {
        if let Some(found) = self.extra_with_room(generation) {
            return found;
        }
        if self.connections(generation) < settings.max_connections as usize {
            // One connection attempt at a time: the others wait here, and most find a
            // stream on the new connection once it is made.
            let mut last_failure = self.scaling.clone().lock_owned().await;
            if let Some(found) = self.extra_with_room(generation) {
                return found;
            }
            let backing_off =
                last_failure.is_some_and(|at| at.elapsed() < settings.backoff.initial);
            if !backing_off && self.connections(generation) < settings.max_connections as usize {
                // The attempt is the endpoint's, not this call's: it runs to its end
                // (within the connect timeout), holding the lock, even if this call's
                // deadline ends its wait here; else short deadlines would start and
                // drop attempt after attempt, and the endpoint would never scale.
                let sub = Arc::clone(self);
                let settings = settings.clone();
                let attempt = tokio::spawn(async move {
                    let opened = sub.open_extra(generation, &settings).await;
                    *last_failure = match &opened {
                        Ok(_) => None,
                        Err(reason) => {
                            info!(endpoint = %sub.state.endpoint(), %reason, "no extra connection");
                            Some(tokio::time::Instant::now())
                        }
                    };
                    opened.ok()
                });
                if let Ok(Some(wire)) = attempt.await
                    && let Some(slot) = wire.streams.try_take()
                {
                    return (wire, slot);
                }
            }
        }
        // At the maximum: the least busy connection, where the call waits for a stream
        // (the server's limit holds: h2 does not open a stream beyond it).
        let mut best = first.clone();
        for (wire, g) in lock(&self.extra).iter() {
            if *g == generation && wire.streams.open() < best.streams.open() {
                best = wire.clone();
            }
        }
        let slot = best.streams.take();
        (best, slot)
    }

    /// Connections open for calls now: the first and the extra ones.
    pub(crate) fn connections(&self, generation: u64) -> usize {
        1 + lock(&self.extra)
            .iter()
            .filter(|(_, g)| *g == generation)
            .count()
    }

    fn extra_with_room(&self, generation: u64) -> Option<(Wire, StreamSlot)> {
        lock(&self.extra).iter().find_map(|(wire, g)| {
            let slot = (*g == generation).then(|| wire.streams.try_take())??;
            Some((wire.clone(), slot))
        })
    }

    /// Opens one more connection, waits for the server's SETTINGS (its limit), and adds
    /// it to the extra ones until it closes.
    async fn open_extra(&self, generation: u64, settings: &Settings) -> Result<Wire, String> {
        let attempt = async {
            let (wire, closed) = self
                .target
                .connect(self.call_keep_alive(settings.liveness), true)
                .await
                .map_err(|e| describe(&*e))?;
            wire.streams.settled().await;
            Ok::<_, String>((wire, closed))
        };
        let (wire, mut closed) = tokio::time::timeout(settings.connect_timeout, attempt)
            .await
            .map_err(|_| format!("not connected within {:?}", settings.connect_timeout))??;
        // Only for the connection it was opened beside: if that one ended meanwhile,
        // this one is dropped (and closes) instead of lingering unused.
        let current = lock(&self.connection).as_ref().map(|(_, g)| *g);
        if current != Some(generation) {
            return Err("the endpoint's connection ended meanwhile".into());
        }
        lock(&self.extra).push((wire.clone(), generation));
        let n = self.connections(generation);
        info!(
            endpoint = %self.state.endpoint(),
            limit = wire.streams.limit(),
            "every connection full: connection {n} opened"
        );
        // Out of the set when it closes (the server closed it, or it broke).
        let streams = Arc::downgrade(&wire.streams);
        let extra = Arc::downgrade(&self.extra);
        tokio::spawn(async move {
            let end = closed.wait().await;
            if let Some(extra) = extra.upgrade() {
                lock(&extra)
                    .retain(|(w, _)| !std::ptr::eq(Arc::as_ptr(&w.streams), streams.as_ptr()));
            }
            let reason = match end {
                End::Closed(r) | End::Broken(r) => r,
            };
            debug!(%reason, "extra connection ended");
        });
        Ok(wire)
    }
}
