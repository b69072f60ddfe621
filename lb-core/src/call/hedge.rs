//! Hedging: the same call to more than one endpoint, the first answer winning (gRFC A6).
//!
//! A call whose method has a `hedgingPolicy` goes to one endpoint; each time
//! `hedgingDelay` passes without an answer, another attempt goes to an endpoint that
//! has none of this call's attempts running, up to `maxAttempts` in all:
//!
//! ```text
//! t=0      attempt 1 -> a              (a's server is slow this time)
//! t=10ms   attempt 2 -> b
//! t=12ms   b answers: the call has its answer; attempt 1 is reset (a sees CANCELLED)
//! ```
//!
//! An answer whose status is in `nonFatalStatusCodes` does not win: the next attempt
//! goes out at once (or after the server's `grpc-retry-pushback-ms`; a negative one
//! stops hedging). Any other answer, an error or not, ends the call and cancels the
//! rest. Hedges come out of the same token bucket as retries: while most calls fail,
//! only first attempts go out. Attempts at once each send their own copy of the
//! request, so a hedge needs the whole of it: a body still arriving (a proxy's caller
//! may send it after the headers) is recorded as the first attempt sends it, and a hedge
//! due before it has ended goes out when it ends; a body too big to keep is sent once,
//! unhedged. (The recording advances as the first attempt sends it: a body bigger than
//! that server's HTTP/2 window, to a server that has stopped reading, is not hedged.)

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use rand::rngs::SmallRng;
use tokio::{sync::Notify, time::Instant};
use tonic::{Code, Status};

use super::attempt::{Failure, FailureKind, Route};
use super::headers::{deadline_after, header_status, stamp_attempt};
use super::replay::RequestBody;
use super::response::ResponseBody;
use super::retry::{MAX_TRANSPARENT_RETRIES, attempt_request, pushback};
use super::router::Router;
use crate::service_config::HedgingPolicy;
use crate::subchannels::subchannel::Subchannel;

type Attempt = BoxFuture<
    'static,
    (
        Arc<Subchannel>,
        Result<http::Response<ResponseBody>, Failure>,
    ),
>;

impl Router {
    /// One call, hedged as `policy` says. `body` is whole, or recorded as it streams.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn hedge(
        &self,
        mut parts: http::request::Parts,
        mut body: RequestBody,
        first: Option<Route>,
        mut rng: SmallRng,
        policy: &HedgingPolicy,
        timeout: Option<Duration>,
        wait_for_ready: bool,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let extensions = std::mem::take(&mut parts.extensions);
        let deadline = timeout.map(deadline_after);
        let mut running: FuturesUnordered<Attempt> = FuturesUnordered::new();
        // Endpoints with an attempt of this call running now.
        let mut busy: Vec<Arc<Subchannel>> = Vec::new();
        let mut sent = 0;
        let mut transparent = 0;
        // No more attempts: the server said so, or the throttle.
        let mut stopped = false;
        // The next attempt sends again one that no server saw (a transparent retry).
        let mut resend = false;
        // Told when a request still arriving has ended (or grown too big to keep).
        let mut awaiting_body: Option<Arc<Notify>> = None;
        // When the next attempt goes out (`None`: when one of the running ones ends).
        let mut next_at: Option<Instant>;
        // The last answer that did not win, returned if none does.
        let mut last: Option<Result<http::Response<ResponseBody>, Status>> = None;

        let route = match first {
            Some(route) => route,
            None => {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                self.pick_when_ready(&mut rng, &parts.headers, &[], left, wait_for_ready)
                    .await?
            }
        };
        self.launch(
            &mut parts, &mut body, route, &mut sent, deadline, timeout, &mut busy, &running,
        )?;
        next_at = Some(Instant::now() + policy.hedging_delay);

        loop {
            let more = sent < policy.max_attempts && !stopped;
            let wake = next_at.filter(|_| more);
            tokio::select! {
                biased;
                Some((sub, result)) = running.next() => {
                    busy.retain(|b| !Arc::ptr_eq(b, &sub));
                    match result {
                        Ok(mut response) => {
                            let code = header_status(response.headers());
                            if !code.is_some_and(|c| policy.non_fatal_status_codes.contains(&c)) {
                                // The answer. Dropping the others resets their streams:
                                // their servers see CANCELLED.
                                drop(running);
                                body.commit();
                                let mut call = extensions;
                                call.extend(std::mem::take(response.extensions_mut()));
                                *response.extensions_mut() = call;
                                return Ok(self.answer(response, deadline));
                            }
                            self.budget.on_failure();
                            if running.is_empty() {
                                // Its request stops reading the caller's body: the next
                                // attempt reads on from the recording.
                                body.abandon_attempt();
                            }
                            next_at = match pushback(response.headers()) {
                                Some(Err(())) => {
                                    stopped = true;
                                    None
                                }
                                Some(Ok(wait))
                                    if deadline.is_some_and(|d| Instant::now() + wait >= d) =>
                                {
                                    // The server's wait outlasts the call: no more hedges.
                                    stopped = true;
                                    None
                                }
                                Some(Ok(wait)) => Some(Instant::now() + wait),
                                None => Some(Instant::now()),
                            };
                            last = Some(Ok(response));
                        }
                        Err(Failure { status, kind: FailureKind::Unsent })
                            if transparent < MAX_TRANSPARENT_RETRIES =>
                        {
                            // No server saw it: sent again at once, neither counted
                            // nor throttled.
                            transparent += 1;
                            sent -= 1;
                            resend = true;
                            next_at = Some(Instant::now());
                            if last.is_none() {
                                last = Some(Err(status));
                            }
                        }
                        Err(Failure { status, kind: FailureKind::Deadline }) => {
                            // The call's deadline: every attempt shares it.
                            return Err(status);
                        }
                        Err(Failure { status, .. }) => {
                            // A broken connection ends an attempt UNAVAILABLE: fatal
                            // unless the policy says otherwise, and only then a
                            // failure to the throttle.
                            if !policy.non_fatal_status_codes.contains(&Code::Unavailable) {
                                return Err(status);
                            }
                            self.budget.on_failure();
                            if running.is_empty() {
                                body.abandon_attempt();
                            }
                            next_at = Some(Instant::now());
                            last = Some(Err(status));
                        }
                    }
                    let more = sent < policy.max_attempts && !stopped;
                    if running.is_empty() && !(more && (resend || self.budget.allows_retry())) {
                        body.commit();
                        return given_up(last, &extensions, deadline, "every hedged attempt failed");
                    }
                }
                () = notified(awaiting_body.clone()) => {
                    // The request has ended (or outgrown what is kept): the attempt
                    // that waited for it is looked at again now.
                    awaiting_body = None;
                    next_at = Some(Instant::now());
                }
                () = sleep_until(wake) => {
                    if !body.is_replayable() {
                        // Too big to keep: no other attempt can send it.
                        stopped = true;
                    } else if !running.is_empty() && !body.settle() {
                        // The request is still arriving: an attempt beside the running
                        // one would need the rest of it too. It goes once the request
                        // has ended.
                        awaiting_body = body.on_settled();
                        next_at = None;
                        continue;
                    }
                    if stopped || (!resend && !self.budget.allows_retry()) {
                        // Throttled: no more hedges; the running attempts decide.
                        stopped = true;
                        if running.is_empty() {
                            body.commit();
                            return given_up(last, &extensions, deadline, "hedging throttled");
                        }
                        continue;
                    }
                    let route = match self.try_pick(&mut rng, &parts.headers, &busy) {
                        Ok(route) if !busy.iter().any(|b| Arc::ptr_eq(b, &route.sub)) => route,
                        // Every usable endpoint has an attempt running: the next goes
                        // out when one of them ends.
                        Ok(_) | Err(_) if !running.is_empty() => {
                            next_at = None;
                            continue;
                        }
                        _ => {
                            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                            self.pick_when_ready(&mut rng, &parts.headers, &[], left, wait_for_ready)
                                .await?
                        }
                    };
                    if sent > 0 {
                        self.hedges.fetch_add(1, Ordering::Relaxed);
                    }
                    self.launch(&mut parts, &mut body, route, &mut sent, deadline, timeout, &mut busy, &running)?;
                    resend = false;
                    awaiting_body = None;
                    next_at = Some(Instant::now() + policy.hedging_delay);
                }
            }
        }
    }

    /// Sends attempt number `sent + 1` on `route`, into `running`.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        parts: &mut http::request::Parts,
        body: &mut RequestBody,
        route: Route,
        sent: &mut u32,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
        busy: &mut Vec<Arc<Subchannel>>,
        running: &FuturesUnordered<Attempt>,
    ) -> Result<(), Status> {
        let fair_share =
            stamp_attempt(&mut parts.headers, deadline, timeout, *sent).ok_or_else(|| {
                Status::deadline_exceeded(format!("deadline passed after {sent} hedged attempt(s)"))
            })?;
        *sent += 1;
        let attempt_body = body
            .attempt()
            .ok_or_else(|| Status::internal("hedged request body already sent"))?;
        let request = attempt_request(parts, attempt_body);
        let sub = route.sub.clone();
        busy.push(sub.clone());
        running.push(
            async move {
                let mut extensions = http::Extensions::new();
                let result = route
                    .send(request, &mut extensions, deadline, fair_share)
                    .await;
                (sub, result)
            }
            .boxed(),
        );
        Ok(())
    }
}

/// No attempt won and no more go out: the last answer, returned all the same (with the
/// call's extensions, as the winner's would have been), or the last failure.
fn given_up(
    last: Option<Result<http::Response<ResponseBody>, Status>>,
    extensions: &http::Extensions,
    deadline: Option<Instant>,
    none: &str,
) -> Result<http::Response<ResponseBody>, Status> {
    match last {
        Some(Ok(mut response)) => {
            let mut call = extensions.clone();
            call.extend(std::mem::take(response.extensions_mut()));
            *response.extensions_mut() = call;
            response.body_mut().set_deadline(deadline);
            Ok(response)
        }
        Some(Err(status)) => Err(status),
        None => Err(Status::unavailable(none.to_owned())),
    }
}

/// Resolves when `settled` is told, or never without one.
async fn notified(settled: Option<Arc<Notify>>) {
    match settled {
        Some(settled) => settled.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
