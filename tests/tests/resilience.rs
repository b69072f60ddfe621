//! Resilience, end to end: servers die, restart, drain, sicken and recycle their
//! connections under load, and the balancer keeps every call alive.
//!
//! "Killing" a server here drops the Tokio runtime it runs on: its listener and every
//! connection close at once, without a goodbye, as when a process is SIGKILLed.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use e2e_tests::{calls_to, endpoints_of, wait_until};
use greeter_proto::{HelloRequest, MyServiceClient};
use greeter_server::{Config, Servers};
use lb_core::policy::RoundRobinConfig;
use lb_core::{Balancer, Connectivity, Endpoint, OutlierDetection, Policy, RetryPolicy};
use tokio::{runtime::Runtime, time::Instant};
use tonic::Status;

/// A server on its own runtime, so that it can be killed abruptly.
struct Killable {
    runtime: Option<Runtime>,
    servers: Option<Servers>,
    addr: SocketAddr,
}

impl Killable {
    async fn start(config: Config) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let servers = runtime
            .spawn(greeter_server::spawn(config))
            .await
            .expect("spawned")
            .expect("the server starts");
        Self {
            addr: servers.addrs()[0],
            runtime: Some(runtime),
            servers: Some(servers),
        }
    }

    fn endpoint(&self) -> Endpoint {
        self.addr.to_string().parse().expect("valid")
    }

    /// Like SIGKILL: everything closes now.
    fn kill(&mut self) {
        self.servers.take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a closed-loop load saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failures: std::sync::Mutex<Vec<Status>>,
}

/// `concurrency` callers, each calling again as soon as its call returns, until
/// `stop` is set or `until` passes.
fn load(
    balancer: &Balancer,
    concurrency: usize,
    until: Instant,
    stop: Arc<AtomicBool>,
) -> (Arc<Seen>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Seen::default());
    let tasks = (0..concurrency)
        .map(|_| {
            let mut client = MyServiceClient::new(balancer.clone());
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let mut request = tonic::Request::new(HelloRequest { name: "x".into() });
                    request.set_timeout(Duration::from_secs(5));
                    match client.say_hello(request).await {
                        Ok(_) => {
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => seen.failures.lock().expect("not poisoned").push(status),
                    }
                }
            })
        })
        .collect();
    (seen, tasks)
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.await.expect("no panic");
    }
}

fn fast_reconnects(builder: lb_core::BalancerBuilder) -> lb_core::BalancerBuilder {
    builder.backoff(lb_core::Backoff {
        initial: Duration::from_millis(100),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_millis(500),
    })
}

async fn three_killable() -> Vec<Killable> {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Killable::start(Config::on_ports(&[0])).await);
    }
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_no_call_and_a_restarted_one_gets_calls_again() {
    let mut servers = three_killable().await;
    let endpoints: Vec<Endpoint> = servers.iter().map(Killable::endpoint).collect();
    let victim = endpoints[1].clone();
    let balancer = fast_reconnects(Balancer::builder(endpoints.clone()))
        .seed(11)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(&balancer, 16, start + Duration::from_secs(6), stop);

    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    servers[1].kill();
    wait_until(&balancer, Duration::from_secs(1), "noticed dead", |s| {
        s[1].connectivity != Connectivity::Ready
    })
    .await;
    let calls_at_death = calls_to(&balancer, &victim);

    // A caller that picked the victim just before its death was noticed may still
    // send that one attempt (it then fails over): at most one per caller. After that,
    // for a whole second, no attempt at all goes to the dead server.
    tokio::time::sleep_until(start + Duration::from_secs(3)).await;
    let calls_after_death = calls_to(&balancer, &victim);
    assert!(
        calls_after_death - calls_at_death <= 16,
        "only picks made before the death was noticed: {calls_at_death} -> {calls_after_death}"
    );
    tokio::time::sleep_until(start + Duration::from_secs(4)).await;
    assert_eq!(
        calls_to(&balancer, &victim),
        calls_after_death,
        "no call went to the dead server after its death was noticed"
    );
    let port = victim.port();
    servers[1] = Killable::start(Config::on_ports(&[port])).await;
    wait_until(&balancer, Duration::from_secs(2), "READY again", |s| {
        s[1].connectivity == Connectivity::Ready
    })
    .await;
    finish(tasks).await;

    let failures = seen.failures.lock().expect("not poisoned");
    assert!(
        failures.is_empty(),
        "{} calls failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        calls_to(&balancer, &victim) > calls_after_death,
        "the restarted server got calls again"
    );
    println!(
        "{} calls ok, {} retried, {:?}",
        seen.ok.load(Ordering::Relaxed),
        balancer.retries(),
        balancer.endpoints()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_failures_are_reported_and_name_the_server() {
    let mut servers = three_killable().await;
    let endpoints: Vec<Endpoint> = servers.iter().map(Killable::endpoint).collect();
    let balancer = fast_reconnects(Balancer::builder(endpoints.clone()))
        .retry(RetryPolicy::disabled())
        .seed(12)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(&balancer, 16, start + Duration::from_secs(2), stop);
    tokio::time::sleep_until(start + Duration::from_secs(1)).await;
    servers[1].kill();
    finish(tasks).await;

    let failures = seen.failures.lock().expect("not poisoned");
    println!("{} failures, first {:?}", failures.len(), failures.first());
    assert!(
        !failures.is_empty(),
        "calls in flight to the killed server failed"
    );
    let named = format!("endpoint {}", endpoints[1]);
    for status in failures.iter() {
        assert!(status.message().contains(&named), "{status:?}");
    }
    assert_eq!(balancer.retries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_says_not_serving_gets_no_calls_until_it_is_serving_again() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0, 0]))
        .await
        .expect("start");
    let endpoints: Vec<Endpoint> = endpoints_of(&servers);
    let balancer = Balancer::builder(endpoints.clone())
        .seed(13)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(
        &balancer,
        8,
        Instant::now() + Duration::from_secs(20),
        stop.clone(),
    );

    servers.set_instance_serving(0, false).await;
    wait_until(&balancer, Duration::from_secs(1), "out within 1 s", |s| {
        s[0].connectivity == Connectivity::TransientFailure
    })
    .await;
    let calls = calls_to(&balancer, &endpoints[0]);
    let others = calls_to(&balancer, &endpoints[1]);
    // Half a second of load goes elsewhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls_to(&balancer, &endpoints[0]),
        calls,
        "NOT_SERVING got calls"
    );
    assert!(
        calls_to(&balancer, &endpoints[1]) > others,
        "the load went on"
    );

    servers.set_instance_serving(0, true).await;
    wait_until(&balancer, Duration::from_secs(1), "back within 1 s", |s| {
        s[0].connectivity == Connectivity::Ready
    })
    .await;
    let mut changes = balancer.changes();
    while calls_to(&balancer, &endpoints[0]) == calls {
        // Calls land on it again within a few picks; any state change or a short
        // while is a chance to look again.
        let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
    }
    stop.store(true, Ordering::Relaxed);
    finish(tasks).await;
    assert!(seen.failures.lock().expect("not poisoned").is_empty());
    servers.shutdown().await.expect("clean shutdown");
}

fn quick_outlier_detection() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_millis(200),
        base_ejection_time: Duration::from_secs(3),
        max_ejection_time: Duration::from_secs(10),
        max_ejection_percent: 50,
        consecutive_failures: Some(5),
        success_rate: None,
        failure_percentage: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_is_ejected_but_never_more_than_half_the_fleet() {
    let good = greeter_server::spawn(Config::on_ports(&[0, 0]))
        .await
        .expect("start");
    let bad = greeter_server::spawn(Config::on_ports(&[0]).with_error_rate(0.5))
        .await
        .expect("start");
    let mut endpoints: Vec<Endpoint> = endpoints_of(&good);
    endpoints.push(bad.addrs()[0].to_string().parse().expect("valid"));
    let balancer = Balancer::builder(endpoints.clone())
        .outlier_detection(Some(quick_outlier_detection()))
        .seed(14)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(
        &balancer,
        8,
        Instant::now() + Duration::from_secs(20),
        stop.clone(),
    );
    wait_until(&balancer, Duration::from_secs(5), "ejected", |s| {
        s[2].ejected
    })
    .await;
    let bad_at_ejection = calls_to(&balancer, &endpoints[2]);
    let good_at_ejection = calls_to(&balancer, &endpoints[0]);
    // One second of load while it is out (the base ejection time is 3 s). The states
    // are read before the callers finish, so that a slow finish cannot outlast it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = balancer.endpoints();
    stop.store(true, Ordering::Relaxed);
    finish(tasks).await;
    println!(
        "{} ok, {} failed; {status:?}",
        seen.ok.load(Ordering::Relaxed),
        seen.failures.lock().expect("not poisoned").len()
    );
    assert!(status[2].ejected, "still out, within its ejection time");
    assert_eq!(status[2].ejections, 1);
    assert!(
        status[..2].iter().all(|s| s.ejections == 0),
        "the good ones were not ejected"
    );
    // A caller that picked it just before the ejection still sends that call: at most
    // one per caller. Nothing after that.
    assert!(
        status[2].calls - bad_at_ejection <= 8,
        "while ejected it got no calls: {bad_at_ejection} -> {}",
        status[2].calls
    );
    assert!(
        status[0].calls > good_at_ejection,
        "the load went on to the others"
    );
    good.shutdown().await.expect("clean shutdown");
    bad.shutdown().await.expect("clean shutdown");

    // All three failing: at most half (rounded down: 1 of 3) is ever ejected.
    let all_bad = greeter_server::spawn(Config::on_ports(&[0, 0, 0]).with_error_rate(1.0))
        .await
        .expect("start");
    let endpoints: Vec<Endpoint> = endpoints_of(&all_bad);
    let balancer = Balancer::builder(endpoints)
        .outlier_detection(Some(quick_outlier_detection()))
        .seed(15)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let most_ejected = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (balancer, most) = (balancer.clone(), most_ejected.clone());
        tokio::spawn(async move {
            let mut changes = balancer.changes();
            while changes.changed().await.is_ok() {
                let ejected = balancer.endpoints().iter().filter(|s| s.ejected).count();
                most.fetch_max(ejected as u64, Ordering::Relaxed);
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (_, tasks) = load(&balancer, 8, Instant::now() + Duration::from_secs(1), stop);
    finish(tasks).await;
    watcher.abort();
    let ejections: u64 = balancer.endpoints().iter().map(|s| s.ejections).sum();
    assert!(ejections >= 1, "failing servers were ejected");
    let ejected_now = balancer.endpoints().iter().filter(|s| s.ejected).count() as u64;
    assert!(
        most_ejected.load(Ordering::Relaxed).max(ejected_now) <= 1,
        "never more than 1 of 3 at once"
    );
    all_bad.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_server_lets_its_calls_finish_and_an_added_one_gets_calls_at_once() {
    let slow =
        greeter_server::spawn(Config::on_ports(&[0]).with_latency(Duration::from_millis(500)))
            .await
            .expect("start");
    let endpoint: Endpoint = slow.addrs()[0].to_string().parse().expect("valid");
    let balancer = Balancer::builder([endpoint.clone()])
        .seed(16)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;

    let calls: Vec<_> = (0..100)
        .map(|i| {
            let mut client = MyServiceClient::new(balancer.clone());
            tokio::spawn(async move {
                client
                    .say_hello(HelloRequest {
                        name: format!("{i}"),
                    })
                    .await
            })
        })
        .collect();
    slow.calls()
        .wait_for(|&n| n >= 100)
        .await
        .expect("the server is up");
    assert!(balancer.remove_endpoint(&endpoint));
    for call in calls {
        call.await
            .expect("no panic")
            .expect("a call in flight finishes after removal");
    }
    assert!(balancer.endpoints().is_empty());

    // Add a server while nothing is being sent: the next call reaches it.
    let fresh = greeter_server::spawn(Config::on_ports(&[0]))
        .await
        .expect("start");
    let fresh_endpoint: Endpoint = fresh.addrs()[0].to_string().parse().expect("valid");
    assert!(
        balancer
            .add_endpoint(fresh_endpoint.clone())
            .expect("valid")
    );
    wait_until(&balancer, Duration::from_secs(5), "READY", |s| {
        s.first()
            .is_some_and(|s| s.connectivity == Connectivity::Ready)
    })
    .await;
    let mut client = MyServiceClient::new(balancer.clone());
    let response = client
        .say_hello(HelloRequest { name: "new".into() })
        .await
        .expect("the added server answers");
    let served_by = response.metadata().get("x-served-by").cloned();
    assert_eq!(
        served_by.and_then(|v| v.to_str().ok().map(String::from)),
        Some(fresh_endpoint.to_string())
    );
    slow.shutdown().await.expect("clean shutdown");
    fresh.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_recycling_connections_every_500_ms_cost_no_call() {
    let servers = greeter_server::spawn(
        Config::on_ports(&[0, 0, 0]).with_max_connection_age(Duration::from_millis(500)),
    )
    .await
    .expect("start");
    let endpoints: Vec<Endpoint> = endpoints_of(&servers);
    let balancer = fast_reconnects(Balancer::builder(endpoints))
        .policy(Policy::new(RoundRobinConfig::default()))
        .seed(17)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(&balancer, 16, Instant::now() + Duration::from_secs(3), stop);
    finish(tasks).await;
    let failures = seen.failures.lock().expect("not poisoned");
    println!(
        "{} ok, {} retried, {} failed",
        seen.ok.load(Ordering::Relaxed),
        balancer.retries(),
        failures.len()
    );
    assert!(failures.is_empty(), "{:?}", failures.first());
    assert!(seen.ok.load(Ordering::Relaxed) > 0);
}

/// Reconnects follow gRPC's backoff exactly, in virtual time: with jitter 0, attempts
/// at 0 s, then 1, 2, 4, 4 s apart (initial 1 s, ×2, at most 4 s).
#[tokio::test(start_paused = true)]
async fn reconnect_attempts_follow_the_backoff_in_paused_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead: Endpoint = listener
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("valid");
    drop(listener);
    let balancer = Balancer::builder([dead])
        .backoff(lb_core::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_secs(4),
        })
        .health_check(None)
        .seed(18)
        .build()
        .expect("builds");
    let start = Instant::now();
    let mut changes = balancer.changes();
    let mut attempts = Vec::new();
    let mut last = None;
    while attempts.len() < 5 {
        let state = balancer.endpoints()[0].connectivity;
        if state == Connectivity::Connecting && last != Some(Connectivity::Connecting) {
            attempts.push(start.elapsed().as_millis());
        }
        last = Some(state);
        changes.changed().await.expect("balancer alive");
    }
    // Milliseconds, rounded: the refused connects themselves take no virtual time.
    let seconds: Vec<u128> = attempts.iter().map(|ms| (ms + 50) / 1000).collect();
    assert_eq!(seconds, [0, 1, 3, 7, 11], "attempt times {attempts:?} ms");
}

/// The same through lb-proxy: a client with one plain channel to the proxy loses no
/// call when a backend behind it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_behind_the_proxy_costs_no_call() {
    let mut servers = three_killable().await;
    let endpoints: Vec<Endpoint> = servers.iter().map(Killable::endpoint).collect();
    let balancer = fast_reconnects(Balancer::builder(endpoints))
        .seed(19)
        .build()
        .expect("builds");
    balancer.wait_settled(Duration::from_secs(5)).await;
    let proxy = lb_proxy::spawn("127.0.0.1:0".parse().expect("addr"), balancer.clone())
        .await
        .expect("the proxy starts");
    let channel = e2e_tests::channel_to(proxy.addr()).await;

    let start = Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut client = MyServiceClient::new(channel.clone());
            let (failures, ok) = (failures.clone(), ok.clone());
            tokio::spawn(async move {
                while start.elapsed() < Duration::from_secs(3) {
                    match client.say_hello(HelloRequest { name: "p".into() }).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            println!("failed: {status:?}");
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep_until(start + Duration::from_secs(1)).await;
    servers[2].kill();
    finish(tasks).await;
    println!(
        "{} ok through the proxy, {} retried",
        ok.load(Ordering::Relaxed),
        balancer.retries()
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 0);
    proxy.shutdown().await.expect("clean shutdown");
}
