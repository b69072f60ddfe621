//! The failures production sees most, with real processes: every server down and one
//! coming back, a server that hangs (`SIGSTOP`) under load, and a server that resumes
//! after a stall with a backlog of cancelled calls.
//!
//! The servers are processes of their own (this test binary run again as a server, see
//! [`server_process`]), so that they can be stopped and continued; the client is the
//! real `greeter-client` binary, and what it shows with `--live` (one line a second)
//! and `--json` is what is checked. Each step of a scenario waits for the client's
//! own live line (t=3s, ...), not for a timer.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use e2e_tests::process::{ServerProcess as Server, free_port};

/// Not a test of its own: the body of the server processes the tests below start
/// (see `e2e_tests::process`).
#[test]
fn server_process() {
    e2e_tests::process::serve_if_asked();
}

/// One `--live` line: `t=5s ok=13550 failed=0 retries=0 | 127.0.0.1:1 2/s READY | ...`.
#[derive(Debug)]
struct Live {
    t: u64,
    ok: u64,
    failed: u64,
    arrived: Instant,
    /// Per server: address, calls sent in the last second, state.
    servers: Vec<(String, u64, String)>,
}

impl Live {
    fn parse(line: &str, arrived: Instant) -> Option<Self> {
        let mut parts = line.split(" | ");
        let head = parts.next()?;
        let field = |name: &str| {
            head.split(' ')
                .find_map(|word| word.strip_prefix(name))
                .map(|v| v.trim_end_matches('s').parse::<u64>().ok())
        };
        let servers = parts
            .map(|part| {
                let words: Vec<&str> = part.split(' ').collect();
                let rate = words.get(1)?.trim_end_matches("/s").parse().ok()?;
                Some((words.first()?.to_string(), rate, words[2..].join(" ")))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            t: field("t=")??,
            ok: field("ok=")??,
            failed: field("failed=")??,
            arrived,
            servers,
        })
    }

    fn server(&self, addr: SocketAddr) -> (u64, &str) {
        let addr = addr.to_string();
        self.servers
            .iter()
            .find(|(a, _, _)| *a == addr)
            .map(|(_, rate, state)| (*rate, state.as_str()))
            .unwrap_or_else(|| panic!("{addr} in {self:?}"))
    }
}

/// A running greeter-client, its live lines as they come.
struct Client {
    child: Child,
    lines: mpsc::Receiver<Live>,
    seen: Vec<Live>,
    stdout: std::sync::Arc<Mutex<String>>,
}

impl Client {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
            .args(args)
            .args(["--live", "--json"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("greeter-client starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        let rest = std::sync::Arc::new(Mutex::new(String::new()));
        let keep = rest.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                match Live::parse(line.trim_end(), Instant::now()) {
                    Some(live) => {
                        let _ = tx.send(live);
                    }
                    None => keep.lock().expect("not poisoned").push_str(&line),
                }
                line.clear();
            }
            let mut tail = String::new();
            let _ = reader.read_to_string(&mut tail);
            keep.lock().expect("not poisoned").push_str(&tail);
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stdout: rest,
        }
    }

    /// Waits for the live line `t=<t>s`.
    fn wait_for(&mut self, t: u64) {
        while self.seen.last().is_none_or(|live| live.t < t) {
            let live = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no live line t={t}s; saw {:?}", self.seen));
            self.seen.push(live);
        }
    }

    /// Waits for the client to finish; its live lines and its JSON report.
    fn finish(mut self) -> (Vec<Live>, serde_json::Value) {
        let status = self.child.wait().expect("the client runs");
        // 1 is "some calls failed", which the report then says; anything else is not.
        assert!(
            matches!(status.code(), Some(0 | 1)),
            "greeter-client exited with {status}"
        );
        self.seen.extend(self.lines.try_iter());
        // The reader thread has seen the end of stdout once the channel closes.
        while let Ok(live) = self.lines.recv() {
            self.seen.push(live);
        }
        let json = self.stdout.lock().expect("not poisoned").clone();
        let report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        (std::mem::take(&mut self.seen), report)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The failed calls in a report, by code.
fn errors(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["code"].as_str().expect("code").to_string(),
                e["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// The scenarios share two cores: one at a time, so that none of them measures the
/// others' load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn every_server_down_then_one_back_calls_succeed_again_and_the_live_view_keeps_going() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let mut client = Client::start(&[
        "--servers",
        &target,
        "--duration",
        "14s",
        "--concurrency",
        "4",
        "--timeout",
        "1s",
        "--seed",
        "3",
    ]);
    // Nothing listens: every call fails. 4 s in, the server starts.
    client.wait_for(4);
    let server = Server::start(port);
    // The last second the client had reported when the server listened.
    client.seen.extend(client.lines.try_iter());
    let listening_t = client.seen.last().map_or(4, |l| l.t);
    let (lines, report) = client.finish();
    drop(server);

    // A line every second, all along: the failing calls did not starve the runtime
    // (before the fix, no line came until the end, and then none at all).
    let ts: Vec<u64> = lines.iter().map(|l| l.t).collect();
    assert_eq!(ts, (1..=14).collect::<Vec<_>>(), "{lines:?}");
    let spread = lines[13].arrived.duration_since(lines[3].arrived);
    assert!(
        spread >= Duration::from_secs(8),
        "lines 4 to 14 came as the run went, not at its end: {spread:?}"
    );
    let before = &lines[3];
    assert_eq!(before.ok, 0, "no server, no answer: {before:?}");
    assert!(before.failed > 0, "{before:?}");
    // Failing calls are paced, not spun: a few per worker per 100 ms.
    assert!(
        before.failed < 4 * 4 * 20,
        "4 workers in 4 s: {}",
        before.failed
    );

    // The client's next reconnect attempt after the server listens comes at most one
    // backoff period later: the attempts are 1 s, 1.6 s, 2.56 s, 4.1 s ... apart (±20 %),
    // so within 4.9 s of t≈4-5 s (and a second more for the line that shows it).
    let first = lines
        .iter()
        .position(|l| l.ok > 0)
        .expect("calls succeed again");
    assert!(
        lines[first].t <= listening_t + 6,
        "listening from t={listening_t}s, answered from t={}s: {lines:?}",
        lines[first].t
    );
    // From then on, at least 99 % of calls succeed.
    let (from, to) = (&lines[first], &lines[13]);
    let ok = to.ok - from.ok;
    let failed = to.failed - from.failed;
    assert!(ok > 0, "{lines:?}");
    assert!(
        failed * 100 <= ok + failed,
        "after recovery {failed} failed of {}",
        ok + failed
    );
    let total_ok = report["backends"][0]["calls"].as_u64().expect("calls");
    assert!(
        total_ok >= to.ok,
        "the report counts what the live view did, and the calls after its last line"
    );
}

/// One SIGSTOP scenario: 3 servers, 16 callers, 2 s deadlines; server 1 stopped 3 s
/// into the run for 10 s.
fn hung_server(policy_args: &[&str]) {
    let servers: Vec<Server> = (0..3).map(|_| Server::start(0)).collect();
    let list = servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "--servers",
        &list,
        "--concurrency",
        "16",
        "--timeout",
        "2s",
        "--duration",
        "20s",
        "--seed",
        "7",
    ];
    args.extend_from_slice(policy_args);
    let mut client = Client::start(&args);
    let hung = servers[1].addr;
    client.wait_for(3);
    servers[1].signal("STOP");
    client.wait_for(13);
    servers[1].signal("CONT");
    let (lines, report) = client.finish();
    let what = format!("{policy_args:?}");

    // Out of the rotation within 2 s of the stop (t≈3 s): from the second (5 s, 6 s]
    // on, it gets no call and is not READY, until it continues at t≈13 s.
    for line in lines.iter().filter(|l| (6..=13).contains(&l.t)) {
        let (rate, state) = line.server(hung);
        assert_eq!(
            rate, 0,
            "{what}: calls sent to the stopped server: {line:?}"
        );
        assert_ne!(state, "READY", "{what}: {line:?}");
    }
    // At most one call per caller fails (the goal, and what is seen, is none: the
    // calls stuck on the dead connection are retried on the others).
    let failed: u64 = errors(&report).iter().map(|(_, n)| n).sum();
    assert!(failed <= 16, "{what}: {failed} calls failed: {report}");
    // Serving again within 5 s of SIGCONT (t≈13 s).
    let back = lines
        .iter()
        .find(|l| l.t > 13 && l.server(hung).0 > 0)
        .unwrap_or_else(|| panic!("{what}: never served again: {lines:?}"));
    assert!(back.t <= 13 + 5, "{what}: served again from t={}s", back.t);
    assert_eq!(lines.last().expect("lines").server(hung).1, "READY");
}

#[test]
fn a_hung_server_leaves_the_rotation_within_2s_and_comes_back_under_every_policy() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    hung_server(&["--policy", "round_robin", "--outlier-detection"]);
    hung_server(&["--policy", "round_robin"]);
    hung_server(&["--policy", "peak_ewma"]);
    hung_server(&["--policy", "least_request", "--outlier-detection"]);
}

/// One server, 16 callers with 200 ms deadlines; stopped 2 s in for 3 s.
fn stall(extra: &[&str]) {
    let server = Server::start(0);
    let addr = server.addr.to_string();
    let mut args = vec![
        "--servers",
        &addr,
        "--concurrency",
        "16",
        "--timeout",
        "200ms",
        "--duration",
        "8s",
    ];
    args.extend_from_slice(extra);
    let mut client = Client::start(&args);
    client.wait_for(2);
    server.signal("STOP");
    client.wait_for(5);
    server.signal("CONT");
    let (lines, report) = client.finish();
    // Calls fail only by running out of time while the server was stopped: none is
    // lost to the cancellations that piled up meanwhile (hyper's limit of 20 such
    // resets made the server end the connection with GOAWAY ENHANCE_YOUR_CALM, and
    // every call on it failed with UNAVAILABLE).
    for (code, count) in errors(&report) {
        assert_eq!(code, "DeadlineExceeded", "{count} calls: {report}");
    }
    let last = lines.last().expect("lines");
    let after = lines.iter().find(|l| l.t == 7).expect("t=7s");
    assert!(last.ok > after.ok, "calls go on after the stall: {lines:?}");
    assert_eq!(last.failed, after.failed, "and none fails: {lines:?}");
}

#[test]
fn a_server_resuming_after_a_stall_loses_no_call_to_the_backlog_of_cancellations() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    stall(&[]);
    // Without liveness pings the client keeps the connection through the stall, and
    // the server sees the whole backlog of resets when it resumes.
    stall(&["--no-liveness"]);
}
