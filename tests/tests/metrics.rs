//! `/metrics`: scraped over real HTTP, parsed with a Prometheus text parser
//! (prometheus-parse), and watched change as calls flow, per endpoint.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use e2e_tests::{say_hello, wait_until};
use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::Config;
use lb_core::policy::RoundRobinConfig;
use lb_core::{
    Balancer, Endpoint, Policy,
    metrics::{BalancerMetrics, Registry, ServerMetrics},
};
use prometheus_parse::{Sample, Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET /metrics, as Prometheus would; the body parsed.
async fn scrape(addr: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read to the end");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("headers, then a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = Scrape::parse(lines).expect("parses");
    // Every sample line became a sample: nothing was skipped as unreadable.
    let sample_lines = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter(|l| !l.contains("_bucket{"))
        .count();
    let histograms = scrape
        .samples
        .iter()
        .filter(|s| matches!(s.value, Value::Histogram(_)))
        .count();
    assert_eq!(scrape.samples.len() - histograms, sample_lines, "{body}");
    scrape
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {name} {labels:?} in {:#?}",
        scrape.samples
    );
    match &matching[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name}: not a number: {other:?}"),
    }
}

/// Serves `registry` at `/metrics` on a free loopback port.
async fn serve_metrics(registry: Registry) -> lb_core::metrics::MetricsServer {
    lb_core::metrics::serve("127.0.0.1:0".parse().expect("addr"), Arc::new(registry))
        .await
        .expect("metrics listen")
}

/// A plain channel to one server.
async fn connect(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_metrics_are_per_endpoint_and_follow_the_calls() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0, 0]))
        .await
        .expect("servers start");
    let list = servers.endpoints_list();
    let endpoints: Vec<Endpoint> = lb_core::parse_endpoint_list(&list).expect("valid");
    let mut registry = Registry::default();
    // (prometheus-parse cuts label values at commas, so this test's target has none;
    // scripts/interop.sh checks a real `--servers a,b,c` target with a strict parser.)
    let target = "greeters";
    let metrics = BalancerMetrics::register(&mut registry, target);
    let balancer = Balancer::builder(endpoints.clone())
        .policy(Policy::new(RoundRobinConfig::default()))
        .seed(3)
        .build()
        .expect("builds");
    metrics.watch(&balancer);
    balancer.wait_settled(Duration::from_secs(5)).await;
    let endpoint = serve_metrics(registry).await;

    let at = |e: &Endpoint| e.to_string();
    let before = scrape(endpoint.addr()).await;
    for e in &endpoints {
        let labels = [("grpc_target", target), ("grpc_lb_endpoint", &at(e))];
        assert_eq!(
            value(&before, "grpc_client_attempt_started_total", &labels),
            0.0
        );
        assert_eq!(value(&before, "grpc_lb_endpoint_in_flight", &labels), 0.0);
        assert_eq!(
            value(&before, "grpc_lb_endpoint_health_serving", &labels),
            1.0
        );
        assert_eq!(
            value(&before, "grpc_subchannel_open_connections", &labels),
            1.0
        );
        let ready = [labels[0], labels[1], ("state", "READY")];
        assert_eq!(value(&before, "grpc_lb_endpoint_state", &ready), 1.0);
        let connecting = [labels[0], labels[1], ("state", "CONNECTING")];
        assert_eq!(value(&before, "grpc_lb_endpoint_state", &connecting), 0.0);
    }

    for _ in 0..30 {
        say_hello(&balancer, "m").await.expect("answered");
    }
    let after = scrape(endpoint.addr()).await;
    for e in &endpoints {
        let labels = [
            ("grpc_lb_endpoint", at(e)),
            ("grpc_lb_policy", "round_robin".into()),
        ];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            value(&after, "grpc_client_attempt_started_total", &labels),
            10.0
        );
        let ok = [labels[0], ("outcome", "ok")];
        assert_eq!(value(&after, "grpc_lb_endpoint_calls_total", &ok), 10.0);
        assert_eq!(
            value(
                &after,
                "grpc_client_attempt_duration_seconds_count",
                &labels
            ),
            10.0
        );
        // The histogram: 10 calls, all in the +Inf bucket, fewer or as many below.
        let histogram = after
            .samples
            .iter()
            .find(|s| {
                s.metric == "grpc_client_attempt_duration_seconds"
                    && s.labels.get("grpc_lb_endpoint") == Some(labels[0].1)
            })
            .expect("a histogram per endpoint");
        let Value::Histogram(buckets) = &histogram.value else {
            panic!("{histogram:?}");
        };
        assert_eq!(buckets.len(), lb_core::metrics::DURATION_BUCKETS.len() + 1);
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "{buckets:?}"
        );
        assert_eq!(buckets.last().map(|b| b.count), Some(10.0));
    }

    // One server reports NOT_SERVING (its connection stays open): its state and its
    // health say so, and the others are still READY with their counts unchanged.
    let (gone, rest) = (endpoints[0].clone(), servers);
    rest.set_instance_serving(0, false).await;
    wait_until(
        &balancer,
        Duration::from_secs(10),
        "as the test wants",
        |statuses| {
            statuses.iter().any(|s| {
                s.endpoint == gone && s.connectivity == lb_core::Connectivity::TransientFailure
            })
        },
    )
    .await;
    let later = scrape(endpoint.addr()).await;
    let gone_at = at(&gone);
    let failure = [
        ("grpc_lb_endpoint", gone_at.as_str()),
        ("state", "TRANSIENT_FAILURE"),
    ];
    assert_eq!(value(&later, "grpc_lb_endpoint_state", &failure), 1.0);
    let labels = [("grpc_lb_endpoint", gone_at.as_str())];
    assert_eq!(
        value(&later, "grpc_lb_endpoint_health_serving", &labels),
        0.0
    );
    assert_eq!(
        value(&later, "grpc_subchannel_open_connections", &labels),
        1.0
    );
    for e in &endpoints[1..] {
        let address = at(e);
        let ready = [("grpc_lb_endpoint", address.as_str()), ("state", "READY")];
        assert_eq!(value(&later, "grpc_lb_endpoint_state", &ready), 1.0);
        let labels = [("grpc_lb_endpoint", address.as_str())];
        assert_eq!(
            value(&later, "grpc_client_attempt_started_total", &labels),
            10.0
        );
    }

    endpoint.shutdown().await;
    rest.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metrics_count_calls_by_method_status_and_instance() {
    let mut registry = Registry::default();
    let metrics = ServerMetrics::register(&mut registry);
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0]).with_metrics(metrics.clone()))
        .await
        .expect("servers start");
    let failing = greeter_server::spawn(
        Config::on_ports(&[0])
            .with_error_rate(1.0)
            .with_metrics(metrics),
    )
    .await
    .expect("a failing server starts");
    let endpoint = serve_metrics(registry).await;

    let list = servers.endpoints_list();
    let balancer = Balancer::builder(lb_core::parse_endpoint_list(&list).expect("valid"))
        .health_check(None)
        .seed(4)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    for _ in 0..8 {
        say_hello(&balancer, "m").await.expect("answered");
    }
    let bad =
        Balancer::builder(lb_core::parse_endpoint_list(&failing.endpoints_list()).expect("valid"))
            .health_check(None)
            .seed(5)
            .build()
            .expect("builds");
    bad.wait_settled(Duration::from_secs(5)).await;
    for _ in 0..3 {
        assert!(say_hello(&bad, "m").await.is_err());
    }

    let scraped = scrape(endpoint.addr()).await;
    let method = ("grpc_method", "example.MyService/SayHello");
    for addr in servers.addrs() {
        let instance = addr.to_string();
        let labels = [method, ("server_address", instance.as_str())];
        assert_eq!(
            value(&scraped, "grpc_server_call_started_total", &labels),
            4.0
        );
        let ok = [labels[0], labels[1], ("grpc_status", "OK")];
        assert_eq!(
            value(&scraped, "grpc_server_call_duration_seconds_count", &ok),
            4.0
        );
        assert_eq!(
            value(&scraped, "grpc_server_call_in_flight", &[labels[1]]),
            0.0
        );
    }
    let failing_at = failing.addrs()[0].to_string();
    let unavailable = [
        method,
        ("server_address", failing_at.as_str()),
        ("grpc_status", "UNAVAILABLE"),
    ];
    assert_eq!(
        value(
            &scraped,
            "grpc_server_call_duration_seconds_count",
            &unavailable
        ),
        3.0
    );

    endpoint.shutdown().await;
    servers.shutdown().await.expect("clean shutdown");
    failing.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_names_from_the_network_cannot_grow_the_series_without_bound() {
    let mut registry = Registry::default();
    let metrics = ServerMetrics::register(&mut registry);
    let servers = greeter_server::spawn(Config::on_ports(&[0]).with_metrics(metrics))
        .await
        .expect("server starts");
    let endpoint = serve_metrics(registry).await;
    let channel = connect(servers.addrs()[0]).await;
    // 200 made-up methods (UNIMPLEMENTED, each one): they never get series of their own.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    for i in 0..200 {
        grpc.ready().await.expect("ready");
        let path = format!("/made.Up/Method{i}").parse().expect("path");
        let status = grpc
            .unary::<_, (), _>(tonic::Request::new(()), path, tonic_prost_free::EmptyCodec)
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    let scraped = scrape(endpoint.addr()).await;
    let methods: std::collections::HashSet<&str> = scraped
        .samples
        .iter()
        .filter(|s| s.metric == "grpc_server_call_started_total")
        .filter_map(|s| s.labels.get("grpc_method"))
        .collect();
    // None of them was ever answered by anything but UNIMPLEMENTED: all are `other`.
    assert_eq!(methods, ["other"].into(), "{methods:?}");

    // The server's own methods keep their names (greeter-server names them).
    MyServiceClient::new(channel)
        .say_hello(HelloRequest { name: "m".into() })
        .await
        .expect("answered");
    let scraped = scrape(endpoint.addr()).await;
    let say_hello = [("grpc_method", "example.MyService/SayHello")];
    assert_eq!(
        value(&scraped, "grpc_server_call_started_total", &say_hello),
        1.0
    );
    endpoint.shutdown().await;
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_proxy_reports_its_backends_and_its_callers() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0]))
        .await
        .expect("servers start");
    let list = servers.endpoints_list();
    let mut registry = Registry::default();
    let behind = Balancer::builder(lb_core::parse_endpoint_list(&list).expect("valid"))
        .seed(6)
        .build()
        .expect("builds");
    BalancerMetrics::register(&mut registry, "backends").watch(&behind);
    let options = lb_proxy::Options {
        metrics: Some(ServerMetrics::register(&mut registry)),
        ..Default::default()
    };
    behind.wait_settled(Duration::from_secs(5)).await;
    let proxy = lb_proxy::spawn_with("127.0.0.1:0".parse().expect("addr"), behind, options)
        .await
        .expect("proxy starts");
    let endpoint = serve_metrics(registry).await;

    let front: Endpoint = proxy.addr().to_string().parse().expect("valid");
    let caller = Balancer::builder([front])
        .health_check(None)
        .seed(7)
        .build()
        .expect("builds");
    caller.wait_settled(Duration::from_secs(5)).await;
    for _ in 0..6 {
        say_hello(&caller, "m")
            .await
            .expect("answered through the proxy");
    }
    let scraped = scrape(endpoint.addr()).await;
    for addr in servers.addrs() {
        let backend = addr.to_string();
        let labels = [("grpc_lb_endpoint", backend.as_str())];
        assert_eq!(
            value(&scraped, "grpc_client_attempt_started_total", &labels),
            3.0
        );
    }
    let proxy_at = proxy.addr().to_string();
    // The proxy does not know its backends' methods in advance: the first call of a
    // method counts as `other`, and once answered, the method has its own series.
    let received = [
        ("grpc_method", "example.MyService/SayHello"),
        ("server_address", proxy_at.as_str()),
    ];
    assert_eq!(
        value(&scraped, "grpc_server_call_started_total", &received),
        5.0
    );
    let first = [
        ("grpc_method", "other"),
        ("server_address", proxy_at.as_str()),
    ];
    assert_eq!(
        value(&scraped, "grpc_server_call_started_total", &first),
        1.0
    );

    drop(caller);
    endpoint.shutdown().await;
    proxy.shutdown().await.expect("proxy stops");
    servers.shutdown().await.expect("clean shutdown");
}

/// A codec for calls whose messages do not matter (only the status is looked at).
mod tonic_prost_free {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Debug, Clone, Copy, Default)]
    pub struct EmptyCodec;

    impl Codec for EmptyCodec {
        type Encode = ();
        type Decode = ();
        type Encoder = Self;
        type Decoder = Self;

        fn encoder(&mut self) -> Self::Encoder {
            *self
        }

        fn decoder(&mut self) -> Self::Decoder {
            *self
        }
    }

    impl Encoder for EmptyCodec {
        type Item = ();
        type Error = tonic::Status;

        fn encode(&mut self, _: (), _: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            Ok(())
        }
    }

    impl Decoder for EmptyCodec {
        type Item = ();
        type Error = tonic::Status;

        fn decode(&mut self, _: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
            Ok(Some(()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_only_for_metrics_and_labels_that_exist() {
    // Everything a process can export: a balancer and a server, after one call.
    let mut registry = Registry::default();
    let server_metrics = ServerMetrics::register(&mut registry);
    let servers = greeter_server::spawn(Config::on_ports(&[0]).with_metrics(server_metrics))
        .await
        .expect("server starts");
    let balancer =
        Balancer::builder(lb_core::parse_endpoint_list(&servers.endpoints_list()).expect("valid"))
            .seed(8)
            .build()
            .expect("builds");
    BalancerMetrics::register(&mut registry, "greeters").watch(&balancer);
    balancer.wait_settled(Duration::from_secs(5)).await;
    say_hello(&balancer, "m").await.expect("answered");
    let text = lb_core::metrics::encode(&registry);
    let scraped = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
    for sample in &scraped.samples {
        names.insert(sample.metric.clone());
        names.extend(sample.labels.keys().cloned());
        if matches!(sample.value, Value::Histogram(_)) {
            names.insert(format!("{}_bucket", sample.metric));
        }
    }

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/grpc-lb-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard is there"))
            .expect("valid JSON");
    let mut queries: Vec<String> = Vec::new();
    let mut legends: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("an expr").to_string());
            legends.push(target["legendFormat"].as_str().unwrap_or("").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        queries.push(
            variable["definition"]
                .as_str()
                .expect("a query")
                .to_string(),
        );
    }
    assert!(queries.len() >= 10, "{queries:?}");
    names.insert("le".into()); // Every histogram's buckets carry it.
    const PROMQL: [&str; 6] = [
        "sum",
        "by",
        "rate",
        "increase",
        "histogram_quantile",
        "label_values",
    ];
    for query in &queries {
        // Every word left once strings ("..."), ranges ([...]), variables ($x) and
        // numbers are taken out is a metric or a label we export, or PromQL.
        let mut bare = String::new();
        let (mut quoted, mut ranged) = (false, false);
        for c in query.chars() {
            match c {
                '"' => quoted = !quoted,
                '[' if !quoted => ranged = true,
                ']' if !quoted => ranged = false,
                _ if quoted || ranged => {}
                _ => bare.push(c),
            }
        }
        let words: Vec<&str> = bare
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .filter(|w| !w.is_empty() && !w.starts_with('$'))
            .filter(|w| !w.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(words.iter().any(|w| w.starts_with("grpc_")), "{query}");
        for word in words {
            assert!(
                names.contains(word) || PROMQL.contains(&word),
                "`{word}` in `{query}` is neither exported nor PromQL"
            );
        }
    }
    for legend in &legends {
        for label in legend.split("{{").skip(1) {
            let label = label.split("}}").next().unwrap_or_default();
            assert!(
                names.contains(label),
                "legend `{legend}`: no label `{label}`"
            );
        }
    }
    servers.shutdown().await.expect("clean shutdown");
}

/// Polls the metrics until `done` says yes (10 s at most).
async fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(addr).await;
        if done(&scraped) {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?}",
            scraped.samples
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_gives_up_on_is_recorded_cancelled_and_leaves_no_call_in_flight() {
    let mut registry = Registry::default();
    let metrics = ServerMetrics::register(&mut registry);
    let servers = greeter_server::spawn(
        Config::on_ports(&[0])
            .with_latency(Duration::from_secs(5))
            .with_metrics(metrics),
    )
    .await
    .expect("a slow server starts");
    let endpoint = serve_metrics(registry).await;
    let channel = connect(servers.addrs()[0]).await;
    let mut request = tonic::Request::new(HelloRequest {
        name: "gone".into(),
    });
    request.set_timeout(Duration::from_millis(200));
    let status = MyServiceClient::new(channel)
        .say_hello(request)
        .await
        .expect_err("the client gives up first");
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    let cancelled = [
        ("grpc_method", "example.MyService/SayHello"),
        ("grpc_status", "CANCELLED"),
    ];
    let scraped = scrape_until(endpoint.addr(), |s| {
        s.samples.iter().any(|x| {
            x.metric == "grpc_server_call_duration_seconds_count"
                && cancelled.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
    })
    .await;
    assert_eq!(
        value(
            &scraped,
            "grpc_server_call_duration_seconds_count",
            &cancelled
        ),
        1.0
    );
    assert_eq!(value(&scraped, "grpc_server_call_in_flight", &[]), 0.0);
    endpoint.shutdown().await;
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_twice_gets_two_label_sets_and_odd_targets_are_escaped() {
    let servers = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("server starts");
    let address = servers.addrs()[0].to_string();
    let mut registry = Registry::default();
    // The same address with two weights: two subchannels in one balancer.
    let balancer = Balancer::builder(
        lb_core::parse_endpoint_list(&format!("{address},{address}=2")).expect("valid"),
    )
    .seed(9)
    .build()
    .expect("builds");
    BalancerMetrics::register(&mut registry, "file:///tmp/a\"b.json").watch(&balancer);
    balancer.wait_settled(Duration::from_secs(5)).await;
    let text = lb_core::metrics::encode(&registry);
    assert!(
        text.contains(r#"grpc_target="file:///tmp/a\"b.json""#),
        "{text}"
    );
    let labels: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("grpc_lb_endpoint_in_flight{"))
        .collect();
    assert_eq!(labels.len(), 2, "{text}");
    assert!(
        labels[0].contains(&format!("grpc_lb_endpoint=\"{address}\"")),
        "{labels:?}"
    );
    assert!(
        labels[1].contains(&format!("grpc_lb_endpoint=\"{address}#2\"")),
        "{labels:?}"
    );
    servers.shutdown().await.expect("clean shutdown");
}

/// A `weighted_round_robin` balancer exports each endpoint's weight and gRFC A78's
/// counters: the servers report no load (no `--orca`), so every weight update finds
/// both endpoints not yet usable and falls back to the typed weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_exports_weights_and_the_a78_counters() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0]))
        .await
        .expect("servers start");
    let addrs = servers.addrs();
    let list = format!("{}=3,{}=1", addrs[0], addrs[1]);
    let endpoints = lb_core::parse_endpoint_list(&list).expect("valid");
    let mut registry = Registry::default();
    let metrics = BalancerMetrics::register(&mut registry, "wrr");
    let policy: Policy = r#"{"weighted_round_robin":{"weightUpdatePeriod":"100ms"}}"#
        .parse()
        .expect("a policy");
    let balancer = Balancer::builder(endpoints)
        .policy(policy)
        .seed(5)
        .build()
        .expect("builds");
    metrics.watch(&balancer);
    balancer.wait_settled(Duration::from_secs(5)).await;
    let server = serve_metrics(registry).await;
    for _ in 0..8 {
        say_hello(&balancer, "w").await.expect("answered");
    }
    let scrape = scrape(server.addr()).await;
    let labels = [
        ("grpc_target", "wrr"),
        ("grpc_lb_policy", "weighted_round_robin"),
    ];
    let fallbacks = value(&scrape, "grpc_lb_wrr_rr_fallback_total", &labels);
    let not_yet = value(
        &scrape,
        "grpc_lb_wrr_endpoint_weight_not_yet_usable_total",
        &labels,
    );
    assert!(
        fallbacks >= 1.0,
        "the first pick's update fell back: {fallbacks}"
    );
    assert_eq!(not_yet, 2.0 * fallbacks, "both endpoints, at every update");
    assert_eq!(
        value(&scrape, "grpc_lb_wrr_endpoint_weight_stale_total", &labels),
        0.0
    );
    let counters = balancer.pick_counters();
    assert_eq!(
        counters
            .rr_fallback
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
        fallbacks
    );
    for (addr, weight) in [(addrs[0], 3.0), (addrs[1], 1.0)] {
        let endpoint = addr.to_string();
        let labels = [
            ("grpc_target", "wrr"),
            ("grpc_lb_endpoint", endpoint.as_str()),
        ];
        assert_eq!(value(&scrape, "grpc_lb_endpoint_weight", &labels), weight);
    }
}
