//! The tail, with gRPC's service config: hedging against slow calls, retries with
//! backoff and server pushback, and per-method settings (gRFC A6, A2). Real servers on
//! 127.0.0.1:0, real gRPC through the balancer.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use e2e_tests::fleet;
use greeter_proto::{HelloRequest, HelloResponse, MyService, MyServiceClient, MyServiceServer};
use greeter_server::Config;
use lb_core::{
    Balancer, Endpoint,
    metrics::{Registry, ServerMetrics},
    service_config::ServiceConfig,
};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

/// Hedging after 10 ms, up to 3 attempts, for `example.MyService/SayHello`.
const HEDGING: &str = r#"{"methodConfig": [{
    "name": [{"service": "example.MyService", "method": "SayHello"}],
    "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.010s"}
}]}"#;

/// `calls` calls one after the other; their latencies, sorted, and how many attempts
/// reached the servers.
async fn latencies(balancer: &Balancer, calls: usize) -> Vec<Duration> {
    let mut client = MyServiceClient::new(balancer.clone());
    let mut taken = Vec::with_capacity(calls);
    for _ in 0..calls {
        let mut request = Request::new(HelloRequest { name: "t".into() });
        request.set_timeout(Duration::from_secs(5));
        let start = Instant::now();
        let reply = client.say_hello(request).await.expect("answered");
        assert_eq!(reply.into_inner().message, "Hello, t!");
        taken.push(start.elapsed());
    }
    taken.sort();
    taken
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

fn attempts(balancer: &Balancer) -> u64 {
    balancer.endpoints().iter().map(|s| s.calls).sum()
}

/// Three servers whose calls take 100 ms more one time in ten: hedging after 10 ms cuts
/// the p99 by 5 times or more, for less than 25 % more calls, and the servers see the
/// losing attempts CANCELLED.
///
/// On tokio's paused clock, with the servers in this process: a fast call takes no
/// time, a slow one exactly 100 ms, and hedges go out at exactly 10 and 20 ms, so no
/// hiccup of a busy machine can send a hedge that a fast answer would have made
/// needless, and every run is the same. (On the real clock, each such hedge takes a
/// draw from a server's seeded RNG and reshuffles which calls are slow.) By arithmetic
/// the hedged p99 is 10 ms while fewer than 1 % of the calls draw two slow attempts in
/// a row, and 20 ms (still 5 times less) while fewer than 1 % draw three.
#[tokio::test(start_paused = true)]
async fn hedging_after_10_ms_cuts_the_p99_of_a_tail_of_slow_calls() {
    let mut registry = Registry::default();
    let metrics = ServerMetrics::register(&mut registry);
    let config = Config::on_ports(&[])
        .with_latency_tail("10%:100ms".parse().expect("a tail"))
        .with_metrics(metrics);
    let (servers, endpoints) = fleet(3, Config { seed: 4, ..config }).await;
    let calls = 1000;

    let plain = Balancer::builder(endpoints.clone())
        .seed(1)
        .build()
        .expect("builds");
    plain.wait_settled(Duration::from_secs(5)).await;
    let without = latencies(&plain, calls).await;
    assert_eq!(
        attempts(&plain),
        calls as u64,
        "no hedging: one attempt a call"
    );

    let hedging: ServiceConfig = HEDGING.parse().expect("valid");
    let hedged = Balancer::builder(endpoints)
        .service_config(hedging)
        .seed(1)
        .build()
        .expect("builds");
    hedged.wait_settled(Duration::from_secs(5)).await;
    let with = latencies(&hedged, calls).await;

    let (p99_without, p99_with) = (p99(&without), p99(&with));
    eprintln!(
        "p99 {p99_without:?} without hedging, {p99_with:?} with; {} hedges; {} calls over 20 ms",
        hedged.hedges(),
        with.iter()
            .filter(|d| **d > Duration::from_millis(20))
            .count()
    );
    assert!(
        p99_without >= Duration::from_millis(100),
        "the tail is there without hedging: {p99_without:?}"
    );
    assert!(
        p99_without >= p99_with * 5,
        "p99 {p99_without:?} without hedging, {p99_with:?} with"
    );
    let sent = attempts(&hedged);
    assert!(
        sent < calls as u64 * 125 / 100,
        "{sent} attempts for {calls} calls: 25 % more or over"
    );
    assert_eq!(
        sent - calls as u64,
        hedged.hedges(),
        "every extra attempt was a hedge"
    );

    // The attempts that lost were cancelled: the servers recorded them so.
    let text = lb_core::metrics::encode(&registry);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let cancelled: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "grpc_server_call_duration_seconds_count"
                && s.labels.get("grpc_status") == Some("CANCELLED")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(
        cancelled >= hedged.hedges() as f64 * 0.9,
        "{cancelled} calls CANCELLED on the servers for {} hedges",
        hedged.hedges()
    );
    servers.shutdown().await.expect("clean shutdown");
}

/// When an attempt arrived, and its `grpc-previous-rpc-attempts`.
type Arrival = (Instant, Option<String>);

/// A server of our own, for exact answers: UNAVAILABLE to the first `failures` calls
/// (with `grpc-retry-pushback-ms` if `pushback` is set), then OK; it records when each
/// attempt arrived and its `grpc-previous-rpc-attempts`.
/// With a `delay`, every answer waits that long first; `finished` counts the calls
/// that were answered (not cancelled while waiting).
#[derive(Clone, Default)]
struct Flaky {
    failures: usize,
    pushback: Option<&'static str>,
    delay: Duration,
    seen: Arc<Mutex<Vec<Arrival>>>,
    finished: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl MyService for Flaky {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let previous = request
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let n = {
            let mut seen = self.seen.lock().expect("not poisoned");
            seen.push((Instant::now(), previous));
            seen.len()
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
        if n <= self.failures {
            let mut status = Status::unavailable("busy");
            if let Some(ms) = self.pushback {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", ms.parse().expect("ascii"));
            }
            return Err(status);
        }
        Ok(Response::new(HelloResponse {
            message: "Hello, again!".into(),
        }))
    }
}

async fn serve(service: Flaky) -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MyServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr.to_string().parse().expect("valid")
}

fn retrying(max_attempts: u32) -> ServiceConfig {
    format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "example.MyService"}}],
            "retryPolicy": {{"maxAttempts": {max_attempts}, "initialBackoff": "0.1s",
              "maxBackoff": "0.3s", "backoffMultiplier": 2,
              "retryableStatusCodes": ["UNAVAILABLE"]}}}}]}}"#
    )
    .parse()
    .expect("valid")
}

async fn balancer_on(endpoints: Vec<Endpoint>, config: ServiceConfig) -> Balancer {
    let balancer = Balancer::builder(endpoints)
        .service_config(config)
        .health_check(None)
        .liveness(None)
        .seed(4)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    balancer
}

/// On tokio's paused clock: a server answering UNAVAILABLE with
/// `grpc-retry-pushback-ms: 200` gets the retry 200 ms later, no sooner, whatever the
/// backoff says (at most 100 ms here); each retry says how many attempts came before.
#[tokio::test(start_paused = true)]
async fn the_servers_pushback_sets_when_the_retry_comes() {
    let flaky = Flaky {
        failures: 2,
        pushback: Some("200"),
        ..Flaky::default()
    };
    let endpoint = serve(flaky.clone()).await;
    let balancer = balancer_on(vec![endpoint], retrying(3)).await;
    let reply = MyServiceClient::new(balancer)
        .say_hello(HelloRequest { name: "p".into() })
        .await
        .expect("the third attempt succeeds");
    assert_eq!(reply.into_inner().message, "Hello, again!");
    let seen = flaky.seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 3);
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(200) && gap < Duration::from_millis(250),
            "a retry {gap:?} after the pushback of 200 ms"
        );
    }
    let previous: Vec<Option<&str>> = seen.iter().map(|(_, p)| p.as_deref()).collect();
    assert_eq!(previous, [None, Some("1"), Some("2")]);
}

/// A negative pushback means: do not retry.
#[tokio::test(start_paused = true)]
async fn a_negative_pushback_stops_the_retries() {
    let flaky = Flaky {
        failures: 5,
        pushback: Some("-1"),
        ..Flaky::default()
    };
    let endpoint = serve(flaky.clone()).await;
    let balancer = balancer_on(vec![endpoint], retrying(5)).await;
    let status = MyServiceClient::new(balancer)
        .say_hello(HelloRequest { name: "p".into() })
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(flaky.seen.lock().expect("not poisoned").len(), 1);
}

/// Without pushback, retries wait a random part of the backoff: at most 100 ms before
/// the first, 200 ms before the second, then at most 300 ms (maxBackoff); the same
/// waits every run with the same seed.
#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_schedule() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let flaky = Flaky {
            failures: 4,
            ..Flaky::default()
        };
        let endpoint = serve(flaky.clone()).await;
        let balancer = balancer_on(vec![endpoint], retrying(5)).await;
        MyServiceClient::new(balancer)
            .say_hello(HelloRequest { name: "b".into() })
            .await
            .expect("the fifth attempt succeeds");
        let seen = flaky.seen.lock().expect("not poisoned").clone();
        let gaps: Vec<Duration> = seen.windows(2).map(|p| p[1].0 - p[0].0).collect();
        assert_eq!(gaps.len(), 4);
        for (gap, ceiling) in gaps.iter().zip([100, 200, 300, 300]) {
            assert!(
                *gap <= Duration::from_millis(ceiling + 5),
                "{gaps:?}: above the ceiling of {ceiling} ms"
            );
        }
        runs.push(gaps);
    }
    assert_eq!(runs[0], runs[1], "seeded: the same waits");
}

/// A methodConfig for `example.MyService/SayHello` applies to that method, not to
/// others: its `timeout` is the deadline of a call that sets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_config_applies_to_its_method_only() {
    let (servers, endpoints) = fleet(
        1,
        Config::on_ports(&[]).with_latency(Duration::from_millis(300)),
    )
    .await;
    let config = |name: &str| -> ServiceConfig {
        format!(r#"{{"methodConfig": [{{"name": [{name}], "timeout": "0.05s"}}]}}"#)
            .parse()
            .expect("valid")
    };
    for (name, applies) in [
        (
            r#"{"service": "example.MyService", "method": "SayHello"}"#,
            true,
        ),
        (r#"{"service": "example.MyService"}"#, true),
        (r#"{}"#, true),
        (
            r#"{"service": "example.MyService", "method": "SayGoodbye"}"#,
            false,
        ),
        (r#"{"service": "other.Service"}"#, false),
    ] {
        let balancer = Balancer::builder(endpoints.clone())
            .service_config(config(name))
            .seed(2)
            .build()
            .expect("builds");
        balancer.wait_settled(Duration::from_secs(5)).await;
        let start = Instant::now();
        // No deadline set by the caller.
        let result = MyServiceClient::new(balancer)
            .say_hello(HelloRequest { name: "m".into() })
            .await;
        let took = start.elapsed();
        if applies {
            let status = result.expect_err("the config's 50 ms deadline");
            // The balancer's deadline, or the server's own reading of the same
            // `grpc-timeout` (tonic answers CANCELLED "Timeout expired"), whichever is
            // first.
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{name}: {status:?}"
            );
            assert!(took < Duration::from_millis(300), "{name}: {took:?}");
        } else {
            result.unwrap_or_else(|s| panic!("{name} does not name SayHello: {s:?}"));
        }
    }
    servers.shutdown().await.expect("clean shutdown");
}

/// `waitForReady`: with the method's endpoint down, a call without it fails at once
/// (UNAVAILABLE), and a call with it waits, within its deadline, for the endpoint to come
/// back, and is answered then; with retries and with hedging alike. On tokio's paused
/// clock: the waiting call has waited three seconds when the server starts.
#[tokio::test(start_paused = true)]
async fn wait_for_ready_waits_for_an_endpoint_that_comes_back() {
    let config = |wait: bool, hedging: bool| -> ServiceConfig {
        let policy = if hedging {
            r#", "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.01s"}"#
        } else {
            ""
        };
        format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "example.MyService"}}],
                "timeout": "100s", "waitForReady": {wait}{policy}}}]}}"#
        )
        .parse()
        .expect("valid")
    };
    for hedging in [false, true] {
        // A port with nothing listening on it (yet).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        drop(listener);
        let endpoint: Endpoint = addr.to_string().parse().expect("valid");

        let fail_fast = balancer_on(vec![endpoint.clone()], config(false, hedging)).await;
        let status = MyServiceClient::new(fail_fast)
            .say_hello(HelloRequest { name: "w".into() })
            .await
            .expect_err("no endpoint is up");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");

        let waits = balancer_on(vec![endpoint], config(true, hedging)).await;
        let call = tokio::spawn(async move {
            MyServiceClient::new(waits)
                .say_hello(HelloRequest { name: "w".into() })
                .await
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!call.is_finished(), "hedging {hedging}: still waiting");

        let flaky = Flaky::default();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("the same port, free again");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MyServiceServer::new(flaky.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let reply = call
            .await
            .expect("the call's task")
            .expect("answered once the endpoint is back");
        assert_eq!(reply.into_inner().message, "Hello, again!");
        assert_eq!(
            flaky.seen.lock().expect("not poisoned").len(),
            1,
            "one attempt"
        );
    }
}

/// Each retry goes to an endpoint not tried yet: with one server that always fails and
/// one that never does, and two attempts a call, every call succeeds, whichever server
/// its first attempt reached.
#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_endpoint() {
    let failing = Flaky {
        failures: usize::MAX,
        ..Flaky::default()
    };
    let good = Flaky::default();
    let endpoints = vec![serve(failing.clone()).await, serve(good.clone()).await];
    let balancer = balancer_on(endpoints, retrying(2)).await;
    let mut client = MyServiceClient::new(balancer);
    let calls = 10;
    for _ in 0..calls {
        client
            .say_hello(HelloRequest { name: "r".into() })
            .await
            .expect("the retry reaches the good server");
    }
    let failed = failing.seen.lock().expect("not poisoned").len();
    assert_eq!(good.seen.lock().expect("not poisoned").len(), calls);
    assert!(
        failed >= calls / 2,
        "round robin sent {failed} first attempts to the failing server"
    );
}

/// A fatal answer ends every hedge: the call gets it at once, the slow attempt still
/// running is cancelled (its server never finishes it), and no more attempts go out.
/// With the same status non-fatal, the call goes on and the slow server's answer wins.
/// On tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_fatal_status_ends_every_hedge() {
    for fatal in [true, false] {
        let slow = Flaky {
            delay: Duration::from_secs(1),
            ..Flaky::default()
        };
        let failing = Flaky {
            failures: usize::MAX,
            ..Flaky::default()
        };
        let non_fatal = if fatal {
            ""
        } else {
            r#", "nonFatalStatusCodes": ["UNAVAILABLE"]"#
        };
        let config: ServiceConfig = format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "example.MyService"}}],
                "hedgingPolicy": {{"maxAttempts": 3, "hedgingDelay": "0.01s"{non_fatal}}}}}]}}"#
        )
        .parse()
        .expect("valid");
        let endpoints = vec![serve(slow.clone()).await, serve(failing.clone()).await];
        let balancer = balancer_on(endpoints, config).await;
        let mut client = MyServiceClient::new(balancer.clone());
        let calls = 4;
        for _ in 0..calls {
            let start = Instant::now();
            let result = client.say_hello(HelloRequest { name: "f".into() }).await;
            let took = start.elapsed();
            if fatal {
                let status = result.expect_err("the failing server's answer is fatal");
                assert_eq!(status.code(), Code::Unavailable);
                assert!(took < Duration::from_millis(100), "answered in {took:?}");
            } else {
                result.expect("the slow server's answer wins");
                assert!(took >= Duration::from_secs(1), "answered in {took:?}");
            }
        }
        // Long enough for any slow attempt still alive to finish.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let slow_seen = slow.seen.lock().expect("not poisoned").len();
        let failing_seen = failing.seen.lock().expect("not poisoned").len();
        if fatal {
            assert!(
                slow_seen >= calls / 2,
                "{slow_seen} calls started on the slow server"
            );
            assert_eq!(
                slow.finished.load(Ordering::Relaxed),
                0,
                "every slow attempt was cancelled"
            );
            assert_eq!(
                failing_seen, calls,
                "one attempt a call on the failing server"
            );
        } else {
            assert_eq!(slow.finished.load(Ordering::Relaxed), slow_seen);
            assert!(
                failing_seen > calls,
                "non-fatal answers send the next attempt: {failing_seen}"
            );
        }
        assert!(
            slow_seen + failing_seen <= 3 * calls,
            "at most maxAttempts a call"
        );
    }
}

/// Hedging through lb-proxy, for calls whose request is whole when the headers come
/// (as a unary tonic client sends it) and for calls whose message comes 15 ms after the
/// headers (sent as a client stream of one message, the same on the wire): their body
/// is still arriving when the first attempt goes out and when the hedge is due, at
/// 10 ms; the hedge goes out when the body has ended, at 15 ms. Every call that went to the slow server first is hedged and
/// answered by the quick one. On tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn hedging_works_behind_the_proxy() {
    let slow = Flaky {
        delay: Duration::from_secs(1),
        ..Flaky::default()
    };
    let quick = Flaky::default();
    let endpoints = vec![serve(slow.clone()).await, serve(quick.clone()).await];
    let balancer = balancer_on(endpoints, HEDGING.parse().expect("valid")).await;
    let proxy = lb_proxy::spawn("127.0.0.1:0".parse().expect("addr"), balancer.clone())
        .await
        .expect("the proxy starts");
    let channel = e2e_tests::channel_to(proxy.addr()).await;
    let calls = 6;
    for late in [false, true] {
        let (hedges_before, slow_before) = (
            balancer.hedges(),
            slow.seen.lock().expect("not poisoned").len(),
        );
        for _ in 0..calls {
            let start = Instant::now();
            let reply = if late {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.expect("ready");
                let message = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    HelloRequest { name: "h".into() }
                });
                grpc.client_streaming(
                    Request::new(message),
                    tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/example.MyService/SayHello",
                    ),
                    tonic_prost::ProstCodec::<HelloRequest, HelloResponse>::default(),
                )
                .await
            } else {
                MyServiceClient::new(channel.clone())
                    .say_hello(HelloRequest { name: "h".into() })
                    .await
            };
            let reply = reply.expect("answered");
            assert_eq!(reply.into_inner().message, "Hello, again!");
            let took = start.elapsed();
            assert!(
                took < Duration::from_millis(100),
                "late {late}: answered in {took:?}"
            );
            if late {
                assert!(
                    took >= Duration::from_millis(15),
                    "answered in {took:?}: the message comes at 15 ms"
                );
            }
        }
        let first_on_slow = slow.seen.lock().expect("not poisoned").len() - slow_before;
        assert!(
            first_on_slow >= calls - 1,
            "late {late}: round robin sent {first_on_slow} first attempts to the slow server"
        );
        assert_eq!(
            balancer.hedges() - hedges_before,
            first_on_slow as u64,
            "late {late}: a hedge for every call that went to the slow server first"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        slow.finished.load(Ordering::Relaxed),
        0,
        "the slow attempts were cancelled"
    );
    proxy.shutdown().await.expect("clean shutdown");
}

/// The examples in `examples/service-config/` parse and name SayHello.
#[test]
fn the_example_service_configs_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/service-config");
    for file in ["hedging.json", "retries.json"] {
        let config = ServiceConfig::load(&format!("{dir}/{file}")).expect("parses");
        assert!(
            config.method("/example.MyService/SayHello").is_some(),
            "{file}"
        );
    }
}
