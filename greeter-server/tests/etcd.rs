//! Discovery through a real etcd: greeter-server processes register themselves, a
//! balancer watching etcd finds them, and loses them when they stop or are killed.
//!
//! Needs the `etcd` binary (Debian's `etcd-server`; `.ci/run` installs it). Without it
//! the test says so and passes, unless `LB_REQUIRE_ETCD=1` (set by `.ci/run`) makes a
//! missing etcd a failure.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient};
use lb_core::{Balancer, Connectivity, EndpointStatus, resolver::Target};

/// A single-member etcd cluster on loopback, in a temporary directory, stopped (and
/// the directory removed) on drop.
struct Etcd {
    child: Child,
    client_addr: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    fn start() -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("LB_REQUIRE_ETCD").is_none(),
                "etcd is not installed (apt-get install etcd-server) and LB_REQUIRE_ETCD is set"
            );
            eprintln!("SKIPPED: no `etcd` on PATH (apt-get install etcd-server to run this test)");
            return None;
        }
        let (client, peer) = (free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("lb-etcd-test-{}-{client}", std::process::id()));
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("etcd starts");
        let lines = follow_lines(child.stderr.take().expect("piped"));
        let ready = wait_for_line(&lines, Duration::from_secs(30), |line| {
            line.contains("ready to serve client requests")
        });
        let etcd = Self {
            child,
            client_addr: format!("127.0.0.1:{client}"),
            dir,
        };
        assert!(ready.is_some(), "etcd did not become ready within 30 s");
        Some(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every line a child writes, as it writes them, from a thread that keeps reading (a
/// child whose pipe fills up would stall).
fn follow_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining the pipe.
                continue;
            }
        }
    });
    rx
}

fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// A greeter-server process registered in etcd.
struct Server {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(target: &str, ttl: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
            .args(["--port", "0", "--register", target, "--register-ttl", ttl])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("greeter-server starts");
        let lines = follow_lines(child.stderr.take().expect("piped"));
        let registered = wait_for_line(&lines, Duration::from_secs(15), |line| {
            line.contains("registered in etcd")
        })
        .expect("registered within 15 s");
        // "... keys=greeter/127.0.0.1:41234 lease=..."
        let addr = registered
            .split("keys=greeter/")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the key in the log")
            .to_string();
        Self { child, addr, lines }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds for the balancer's endpoints, or fails after `within`.
async fn wait_until(
    balancer: &Balancer,
    within: Duration,
    what: &str,
    check: impl Fn(&[EndpointStatus]) -> bool,
) {
    let mut changes = balancer.changes();
    let waited = tokio::time::timeout(within, async {
        while !check(&balancer.endpoints()) {
            changes.changed().await.expect("balancer alive");
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "not {what} within {within:?}: {:?}",
        balancer.endpoints()
    );
}

fn listed(endpoints: &[EndpointStatus]) -> Vec<String> {
    endpoints.iter().map(|s| s.endpoint.to_string()).collect()
}

fn all_ready(endpoints: &[EndpointStatus], count: usize) -> bool {
    endpoints.len() == count
        && endpoints
            .iter()
            .all(|s| s.connectivity == Connectivity::Ready)
}

async fn served_by(client: &mut MyServiceClient<Balancer>) -> String {
    let response = client
        .say_hello(HelloRequest { name: "e".into() })
        .await
        .expect("a call succeeds");
    let value = response.metadata().get("x-served-by").cloned();
    value
        .and_then(|v| v.to_str().ok().map(String::from))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_registered_in_etcd_are_found_and_lost_as_they_come_and_go() {
    let Some(etcd) = Etcd::start() else { return };
    let target = format!("etcd://{}/greeter", etcd.client_addr);
    // The one to be killed lives 2 s past its last renewal; the others a minute, so
    // that their removal on a graceful shutdown can only be the deregistration.
    let mut servers = vec![
        Server::start(&target, "2s"),
        Server::start(&target, "60s"),
        Server::start(&target, "60s"),
    ];

    let resolution = target
        .parse::<Target>()
        .expect("valid")
        .resolve()
        .await
        .expect("etcd answers");
    let balancer = Balancer::following(resolution)
        .seed(31)
        .build()
        .expect("builds");
    wait_until(&balancer, Duration::from_secs(10), "3 READY", |s| {
        all_ready(s, 3)
    })
    .await;

    // Round robin over the three: 300 calls, 100 each.
    let mut client = MyServiceClient::new(balancer.clone());
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        *counts.entry(served_by(&mut client).await).or_default() += 1;
    }
    // Exactly 100 each, unless the run was disturbed: a call retried elsewhere takes
    // an extra turn, and a connection that dropped and came back changes the READY set
    // (a new picker, starting at a new turn). Then the split may be off by a little,
    // and the statuses say why.
    let statuses = balancer.endpoints();
    let disturbed = balancer.retries() > 0
        || statuses
            .iter()
            .any(|s| s.connects != 1 || s.disconnections != 0 || s.connect_failures != 0);
    let slack = if disturbed { 3 } else { 0 };
    for server in &servers {
        let got = counts.get(&server.addr).copied().unwrap_or(0);
        assert!(
            got.abs_diff(100) <= slack,
            "{counts:?}, retries {}, {statuses:?}",
            balancer.retries()
        );
    }

    // A fourth registers and gets calls.
    servers.push(Server::start(&target, "60s"));
    let fourth = servers[3].addr.clone();
    wait_until(&balancer, Duration::from_secs(10), "4 READY", |s| {
        all_ready(s, 4)
    })
    .await;
    let mut reached = false;
    for _ in 0..8 {
        reached |= served_by(&mut client).await == fourth;
    }
    assert!(reached, "the fourth server got calls");

    // SIGKILL: no deregistration. Its key goes when the lease expires (2 s).
    let killed = servers[0].addr.clone();
    servers[0].signal("-KILL");
    wait_until(
        &balancer,
        Duration::from_secs(15),
        "the killed one gone",
        |s| !listed(s).contains(&killed),
    )
    .await;
    for _ in 0..30 {
        assert_ne!(served_by(&mut client).await, killed);
    }

    // SIGTERM: deregistered at once, long before its 60 s lease would expire (the
    // wait below gives up after 10 s).
    let stopped = servers[1].addr.clone();
    servers[1].signal("-TERM");
    wait_until(
        &balancer,
        Duration::from_secs(10),
        "the stopped one gone",
        |s| !listed(s).contains(&stopped),
    )
    .await;
    assert!(
        wait_for_line(&servers[1].lines, Duration::from_secs(10), |line| line
            .contains("deregistered from etcd"))
        .is_some(),
        "the server says it deregistered"
    );
    assert_eq!(
        servers[1].child.wait().expect("exits").code(),
        Some(0),
        "a graceful shutdown exits 0"
    );
    let left = listed(&balancer.endpoints());
    assert_eq!(left.len(), 2, "{left:?}");
    for _ in 0..30 {
        let by = served_by(&mut client).await;
        assert!(left.contains(&by), "{by} is registered");
    }
}
