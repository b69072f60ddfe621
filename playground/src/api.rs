//! The playground's web server: the page, its live data, and the API its buttons call.
//!
//! | Request                              | Answer                                      |
//! |--------------------------------------|---------------------------------------------|
//! | `GET /`, `/app.js`, `/style.css`     | the page, built into the binary             |
//! | `GET /events`                        | server-sent events: a [`Snapshot`](super::Snapshot) a second |
//! | `GET /api/state`                     | the latest snapshot                         |
//! | `GET /api/history`                   | the last minute of snapshots, oldest first  |
//! | `GET /api/policies`                  | every registered policy, with its summary   |
//! | `GET /docs/POLICIES.md`              | docs/POLICIES.md as HTML, for the links     |
//! | `POST /api/policy`                   | `{"policy": "least_request"}` (or service-config JSON) |
//! | `POST /api/load`                     | `{"rate": 300}` or `{"concurrency": 16}`    |
//! | `POST /api/servers`                  | `{}` or `{"weight": 3}`: one more server    |
//! | `POST /api/servers/N/kill`           | SIGKILL; also `restart`, `drain`, `undrain` |
//! | `POST /api/servers/N/latency`        | `{"latency": "200ms"}`                      |
//! | `POST /api/simulate`                 | a scenario file's JSON, plus `"policies"`   |
//!
//! Every answer to a POST is JSON: `{"message": ...}`, or `{"error": ...}` with a 4xx
//! status that says what to do; input is checked before anything is done, so a
//! refused request has changed nothing.
//!
//! Only the page may change things, not other web sites open in the same browser: a
//! request must come from loopback, name this server in its `Host` (so a web site
//! cannot reach it by pointing its own DNS name at 127.0.0.1), and a POST must carry
//! the page's own `Origin` and a JSON body (which a cross-site form cannot send). A
//! program on this machine can forge those headers, as it could kill the servers
//! itself.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::debug;

use crate::docs::policies_html;
use crate::fleet::MAX_LATENCY;
use crate::state::{Playground, PolicyView};
use crate::traffic::Load;
use lb_core::Policy;
use lb_sim::{Scenario, printout, simulate};

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Connections open at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// Pages following the live events at once.
const MAX_EVENT_STREAMS: usize = 16;

/// The largest request body (a scenario is the largest thing sent).
const MAX_BODY: usize = 64 * 1024;

/// The most backends a scenario run from the page may have.
const MAX_SIM_BACKENDS: usize = 100;

/// The most simulated time a scenario run from the page may have.
const MAX_SIM_DURATION: Duration = Duration::from_secs(120);

/// The most calls, in all policies, a simulation run from the page may send.
const MAX_SIM_CALLS: f64 = 5_000_000.0;

type Body = BoxBody<Bytes, Infallible>;

/// Says what to do when the page's address cannot be had.
pub fn bind_error(addr: SocketAddr, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot serve the page on {addr}: the port is in use (another playground?); \
             choose another with --listen, e.g. --listen 127.0.0.1:{}",
            addr.port().wrapping_add(1)
        )
    } else {
        anyhow::anyhow!("cannot serve the page on {addr}: {err}")
    }
}

/// Answers connections on `listener` (bound to `listen`) until the task is aborted.
pub async fn serve(listener: TcpListener, listen: SocketAddr, playground: Arc<Playground>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let streams = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: wait a little rather than spin.
                debug!(%err, "playground: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let playground = playground.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let playground = playground.clone();
                let streams = streams.clone();
                async move {
                    Ok::<_, Infallible>(answer(request, peer, listen, &playground, &streams).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A 4xx (or 5xx) answer: the status and what to do.
struct Refusal(StatusCode, String);

impl Refusal {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    listen: SocketAddr,
    playground: &Playground,
    streams: &Arc<AtomicUsize>,
) -> Response<Body> {
    let result = match admit(&request, peer, listen) {
        Ok(()) => route(request, playground, streams).await,
        Err(refusal) => Err(refusal),
    };
    result.unwrap_or_else(|Refusal(status, message)| {
        json_response(status, &json!({ "error": message }))
    })
}

/// Whether the request comes from the playground's own page; see the module's docs.
fn admit(request: &Request<Incoming>, peer: SocketAddr, listen: SocketAddr) -> Result<(), Refusal> {
    let forbidden = |message: String| Refusal(StatusCode::FORBIDDEN, message);
    if !peer.ip().is_loopback() {
        return Err(forbidden(format!(
            "the playground answers only this machine, not {}",
            peer.ip()
        )));
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let port = listen.port();
    let ours = [
        listen.to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    if !ours.iter().any(|o| o.eq_ignore_ascii_case(host)) {
        return Err(forbidden(format!(
            "Host `{host}` is not this playground: open http://{listen}/"
        )));
    }
    if request.method() != Method::GET {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("(none)");
        if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
            return Err(forbidden(format!(
                "only the playground's own page may change things (Origin {origin}, \
                 not http://{host})"
            )));
        }
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        if !json {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send JSON, with Content-Type: application/json".into(),
            ));
        }
    }
    Ok(())
}

async fn route(
    request: Request<Incoming>,
    playground: &Playground,
    streams: &Arc<AtomicUsize>,
) -> Result<Response<Body>, Refusal> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => Ok(text(PAGE, "text/html; charset=utf-8")),
        (&Method::GET, ["app.js"]) => Ok(text(SCRIPT, "text/javascript; charset=utf-8")),
        (&Method::GET, ["style.css"]) => Ok(text(STYLE, "text/css; charset=utf-8")),
        (&Method::GET, ["docs", "POLICIES.md"]) => {
            Ok(text(policies_html(), "text/html; charset=utf-8"))
        }
        (&Method::GET, ["events"]) => events(playground, streams),
        (&Method::GET, ["api", "state"]) => Ok(json_text(playground.snapshot().as_str())),
        (&Method::GET, ["api", "history"]) => Ok(json_text(&playground.history())),
        (&Method::GET, ["api", "policies"]) => Ok(json_response(StatusCode::OK, &policies())),
        (&Method::POST, ["api", ..]) => {
            let body = read_body(request).await?;
            let message = act(playground, &segments[1..], body).await?;
            Ok(json_response(StatusCode::OK, &message))
        }
        (_, ["api", ..]) => Err(Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path}: the API takes GET for state and POST for actions"),
        )),
        _ => Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("nothing at {path}: the playground is at /"),
        )),
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes, within 10 s.
async fn read_body(request: Request<Incoming>) -> Result<Value, Refusal> {
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    let bytes = match tokio::time::timeout(Duration::from_secs(10), collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request is larger than {} KiB", MAX_BODY / 1024),
            ));
        }
        Ok(Err(err)) => return Err(Refusal::bad(format!("cannot read the request: {err}"))),
        Err(_) => return Err(Refusal::bad("the request body did not arrive within 10 s")),
    };
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| Refusal::bad(format!("the body is not JSON: {e}")))
}

/// Does what a POST to `/api/<path>` asks; says what was done.
async fn act(playground: &Playground, path: &[&str], body: Value) -> Result<Value, Refusal> {
    let message = match path {
        ["policy"] => set_policy(playground, &body)?,
        ["load"] => set_load(playground, body)?,
        ["simulate"] => return run_simulation(playground, body).await,
        ["servers"] => add_server(playground, &body).await?,
        ["servers", id, action] => {
            let id: usize = id.parse().map_err(|_| {
                Refusal(
                    StatusCode::NOT_FOUND,
                    format!("`{id}` is not a server number (servers are 1, 2, 3, ...)"),
                )
            })?;
            server_action(playground, id, action, &body).await?
        }
        _ => {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "no action /api/{}: see the list in the playground's docs",
                    path.join("/")
                ),
            ));
        }
    };
    playground.event("action", message.clone());
    Ok(json!({ "message": message }))
}

fn field<'a>(body: &'a Value, name: &str, example: &str) -> Result<&'a str, Refusal> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::bad(format!("give `{name}` as a string, e.g. {example}")))
}

fn set_policy(playground: &Playground, body: &Value) -> Result<String, Refusal> {
    let text = field(body, "policy", r#"{"policy": "least_request"}"#)?;
    let policy: Policy = text
        .parse()
        .map_err(|e: lb_core::Error| Refusal::bad(e.to_string()))?;
    let before = playground.balancer.policy_name();
    playground.balancer.set_policy(policy.clone());
    Ok(format!(
        "policy: {before} → {} ({})",
        policy.name(),
        policy.summary()
    ))
}

fn set_load(playground: &Playground, body: Value) -> Result<String, Refusal> {
    let load: Load = serde_json::from_value(body).map_err(|e| {
        Refusal::bad(format!(
            "the load is {{\"rate\": CALLS_PER_SEC}} or {{\"concurrency\": CALLERS}} ({e})"
        ))
    })?;
    let load = load.check().map_err(Refusal::bad)?;
    let before = playground.traffic.load();
    playground.traffic.set_load(load);
    Ok(format!("load: {before} → {load}"))
}

async fn add_server(playground: &Playground, body: &Value) -> Result<String, Refusal> {
    let weight = match body.get("weight") {
        None => 1,
        Some(w) => w
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .filter(|w| (1..=lb_core::endpoint::MAX_WEIGHT).contains(w))
            .ok_or_else(|| {
                Refusal::bad(format!(
                    "weight {w} is not a whole number from 1 to {}",
                    lb_core::endpoint::MAX_WEIGHT
                ))
            })?,
    };
    let endpoint = {
        let mut fleet = playground.fleet.lock().await;
        fleet.add(weight).await.map_err(|e| {
            let status = if e.is::<crate::fleet::FleetFull>() {
                StatusCode::CONFLICT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            Refusal(status, format!("{e:#}"))
        })?
    };
    playground
        .balancer
        .add_endpoint(endpoint.clone())
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    playground.refresh_views().await;
    Ok(format!("added a server on {endpoint}"))
}

async fn server_action(
    playground: &Playground,
    id: usize,
    action: &str,
    body: &Value,
) -> Result<String, Refusal> {
    // Checked before the fleet is locked, so that a bad request never waits.
    let latency = match action {
        "latency" => {
            let text = field(body, "latency", r#"{"latency": "200ms"}"#)?;
            let latency = humantime::parse_duration(text)
                .map_err(|e| Refusal::bad(format!("latency `{text}`: {e} (e.g. 200ms)")))?;
            if latency > MAX_LATENCY {
                return Err(Refusal::bad(format!(
                    "latency {text} is more than the playground allows ({}): choose less",
                    humantime::format_duration(MAX_LATENCY)
                )));
            }
            Some(latency)
        }
        "kill" | "restart" | "drain" | "undrain" => None,
        _ => {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "no action `{action}` for a server: kill, restart, drain, undrain or latency"
                ),
            ));
        }
    };
    let result = {
        let mut fleet = playground.fleet.lock().await;
        match (action, latency) {
            ("kill", _) => fleet.kill(id).await,
            ("restart", _) => fleet.restart(id).await,
            ("drain", _) => fleet.set_draining(id, true).await,
            ("undrain", _) => fleet.set_draining(id, false).await,
            (_, Some(latency)) => fleet.set_latency(id, latency).await,
            _ => unreachable!("checked above"),
        }
    };
    playground.refresh_views().await;
    result.map_err(|e| {
        let message = format!("{e:#}");
        if message.starts_with("there is no server") {
            Refusal(StatusCode::NOT_FOUND, message)
        } else {
            Refusal(StatusCode::CONFLICT, message)
        }
    })
}

/// Runs a scenario with every policy asked for (default: all), as `greeter-client
/// simulate` does, and answers with the same printout and the reports.
async fn run_simulation(playground: &Playground, mut body: Value) -> Result<Value, Refusal> {
    let policies = match body.as_object_mut().and_then(|o| o.remove("policies")) {
        None => Policy::all(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str()
                    .ok_or_else(|| Refusal::bad("`policies` is a list of names"))?
                    .parse::<Policy>()
                    .map_err(|e| Refusal::bad(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(Refusal::bad("`policies` is a list of names")),
    };
    if policies.is_empty() {
        return Err(Refusal::bad("choose at least one policy"));
    }
    let scenario = Scenario::from_json(&body.to_string())
        .map_err(|e| Refusal::bad(format!("scenario: {e}")))?;
    check_size(&scenario, policies.len())?;
    // The permit goes with the work: a page that leaves before the answer does not
    // free the place while its simulation still runs.
    let Ok(permit) = playground.simulating.clone().try_acquire_owned() else {
        return Err(Refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "a simulation is already running: wait for its results".into(),
        ));
    };
    let reports = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let reports: Vec<_> = policies
            .iter()
            .map(|policy| simulate(&scenario, policy).report)
            .collect();
        (printout(&scenario, &reports), reports)
    })
    .await
    .map_err(|e| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the simulation failed: {e}"),
        )
    })?;
    let (printout, reports) = reports;
    Ok(json!({ "printout": printout, "reports": reports }))
}

/// Keeps a simulation from the page to a few seconds of work.
fn check_size(scenario: &Scenario, policies: usize) -> Result<(), Refusal> {
    if scenario.backends.len() > MAX_SIM_BACKENDS {
        return Err(Refusal::bad(format!(
            "{} backends: the page simulates at most {MAX_SIM_BACKENDS} (the CLI has no such limit)",
            scenario.backends.len()
        )));
    }
    if scenario.duration > MAX_SIM_DURATION {
        return Err(Refusal::bad(format!(
            "duration {}: the page simulates at most {} (the CLI has no such limit)",
            humantime::format_duration(scenario.duration),
            humantime::format_duration(MAX_SIM_DURATION)
        )));
    }
    // A closed loop sends about its callers' worth of calls per mean service time of
    // the fastest backend, events' backends included (`slow 1 1us` makes one fast).
    let rate = match scenario.concurrency {
        None => scenario.arrival_rate(),
        Some(callers) => {
            let latencies = scenario.backends.iter().map(|b| b.latency);
            let changed = scenario.events.iter().filter_map(|e| match &e.change {
                lb_sim::Change::Slow(_, latency) => Some(*latency),
                lb_sim::Change::Add(spec) => Some(spec.latency),
                _ => None,
            });
            let fastest = latencies
                .chain(changed)
                .map(|l| l.as_secs_f64())
                .fold(f64::INFINITY, f64::min)
                .max(1e-6);
            callers as f64 / fastest
        }
    };
    let calls = rate * scenario.duration.as_secs_f64() * policies as f64;
    if calls > MAX_SIM_CALLS {
        return Err(Refusal::bad(format!(
            "about {calls:.0} calls in all: the page simulates at most {MAX_SIM_CALLS:.0}; \
             shorten the duration, lower the rate or choose fewer policies"
        )));
    }
    Ok(())
}

/// The live snapshots, as server-sent events: the latest at once, then each new one.
fn events(playground: &Playground, streams: &Arc<AtomicUsize>) -> Result<Response<Body>, Refusal> {
    if streams.fetch_add(1, Ordering::SeqCst) >= MAX_EVENT_STREAMS {
        streams.fetch_sub(1, Ordering::SeqCst);
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} pages are following already: close one"),
        ));
    }
    struct Following(Arc<AtomicUsize>);
    impl Drop for Following {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let mut snapshots = playground.snapshot.subscribe();
    snapshots.mark_changed();
    let following = Following(streams.clone());
    let stream = futures::stream::unfold(
        (snapshots, following),
        |(mut snapshots, following)| async move {
            snapshots.changed().await.ok()?;
            let json = snapshots.borrow_and_update().clone();
            let frame = Frame::data(Bytes::from(format!("data: {json}\n\n")));
            Some((Ok::<_, Infallible>(frame), (snapshots, following)))
        },
    );
    let mut response = Response::new(BoxBody::new(StreamBody::new(stream)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Every registered policy, for the page's choice.
fn policies() -> Value {
    let list: Vec<PolicyView> = lb_core::policy::registry::registrations()
        .iter()
        .map(|r| PolicyView::of(r.name()))
        .collect();
    json!(list)
}

fn text(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(BoxBody::new(Full::new(Bytes::from_static(body.as_bytes()))));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Nothing from anywhere else: no CDN, no inline script.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn json_text(body: &str) -> Response<Body> {
    let mut response = Response::new(BoxBody::new(Full::new(Bytes::from(body.to_string()))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = json_text(&value.to_string());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_scenario_is_kept_small() {
        let mut scenario = Scenario::with_backends(&["1ms"]).unwrap();
        scenario.rate = Some(1_000_000.0);
        let Err(Refusal(status, message)) = check_size(&scenario, 1) else {
            panic!("10 million calls are refused");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("shorten the duration"), "{message}");
        scenario.rate = Some(1000.0);
        assert!(check_size(&scenario, 11).is_ok());
        // A closed loop made fast by an event counts as fast.
        let slow_then_fast = Scenario::from_json(
            r#"{"backends": ["1s,capacity=1000"], "concurrency": 1000, "duration": "120s",
                "events": ["0s slow 1 1us"]}"#,
        )
        .unwrap();
        assert!(check_size(&slow_then_fast, 1).is_err());
    }
}
