//! `greeter-client playground`, end to end: real greeter-server processes, the page's
//! HTTP API, and the page itself in a real headless Chromium (through chromedriver).
//!
//! The greeter-server binary is the one cargo built beside greeter-client
//! (`cargo test --workspace` builds it). The browser test needs Debian's `chromium`
//! and `chromium-driver`: without them it is skipped, unless `LB_REQUIRE_BROWSER` is
//! set (as `.ci/run` does, after installing them), when it fails.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A running playground and what it printed.
struct Playground {
    child: Child,
    port: u16,
    output: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn server_binary() -> PathBuf {
    let client = PathBuf::from(env!("CARGO_BIN_EXE_greeter-client"));
    let server = client.with_file_name(format!("greeter-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.is_file(),
        "{} is missing: build it first (cargo build -p greeter-server; \
         cargo test --workspace does)",
        server.display()
    );
    server
}

impl Playground {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
            .args(["playground", "--listen", "127.0.0.1:0", "--server-bin"])
            .arg(server_binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("greeter-client starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let output = Arc::new(Mutex::new(Vec::new()));
        let port = loop {
            let line = lines
                .next()
                .expect("the playground says where it listens")
                .expect("utf-8");
            output.lock().expect("output").push(line.clone());
            if let Some(rest) = line.strip_prefix("playground: open http://127.0.0.1:") {
                let port = rest.split('/').next().expect("a port");
                break port.parse().expect("a port number");
            }
        };
        // Keep reading, so that the playground never blocks on a full pipe.
        let kept = output.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().expect("output").push(line);
            }
        });
        Self {
            child,
            port,
            output,
            reader: Some(reader),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> Value {
        let (status, body) = http(self.port, "GET", "/api/state", &[], "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON state")
    }

    /// POSTs `body` as the page would.
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let origin = self.origin();
        let (status, text) = http(
            self.port,
            "POST",
            path,
            &[("Origin", &origin), ("Content-Type", "application/json")],
            body,
        );
        (status, serde_json::from_str(&text).expect("a JSON answer"))
    }

    /// Waits (at most 20 s) until the state satisfies `ready`.
    fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.state();
            if ready(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "not {what} within 20 s: {state}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn server_pids(&self) -> Vec<u64> {
        self.state()["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .filter_map(|s| s["pid"].as_u64())
            .collect()
    }

    /// Ctrl-C, as a terminal sends it; returns the exit code.
    fn interrupt(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let code = self.child.wait().expect("exits").code();
        // Its output ends with it: every line it printed has been read then.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        code
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request, `Connection: close`; the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("sends");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer, not {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn all_ready_and_serving(state: &Value, n: usize) -> bool {
    let servers = state["servers"].as_array().expect("servers");
    servers.len() == n
        && servers
            .iter()
            .all(|s| s["state"] == "READY" && s["calls_per_sec"].as_u64() > Some(0))
}

fn server(state: &Value, id: u64) -> &Value {
    state["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("server {id} in {state}"))
}

fn error_of(answer: &Value) -> &str {
    answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {answer}"))
}

#[cfg(unix)]
#[test]
fn the_api_refuses_bad_input_and_strangers_and_ctrl_c_stops_every_server() {
    let playground = Playground::start(&["--fleet", "3", "--rate", "100"]);
    let before = playground.wait_for("3 servers READY with calls", |s| {
        all_ready_and_serving(s, 3)
    });
    let pids = playground.server_pids();
    assert_eq!(pids.len(), 3, "{before}");

    // Bad input: a clear error, and nothing changes.
    let (status, answer) = playground.post("/api/policy", r#"{"policy": "fastest"}"#);
    assert_eq!(status, 400);
    assert!(error_of(&answer).contains("unknown policy `fastest`; valid policies: pick_first"));
    let (status, answer) = playground.post("/api/servers/9/kill", "{}");
    assert_eq!(status, 404);
    assert_eq!(
        error_of(&answer),
        "there is no server 9 (servers are 1 to 3)"
    );
    let (status, answer) = playground.post("/api/servers/two/kill", "{}");
    assert_eq!(status, 404);
    assert!(error_of(&answer).contains("`two` is not a server number"));
    let (status, answer) = playground.post("/api/servers/1/latency", r#"{"latency": "1h"}"#);
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&answer),
        "latency 1h is more than the playground allows (10s): choose less"
    );
    let (status, answer) = playground.post("/api/servers/1/latency", r#"{"latency": "soon"}"#);
    assert_eq!(status, 400);
    assert!(error_of(&answer).starts_with("latency `soon`: "));
    let (status, answer) = playground.post("/api/load", r#"{"rate": 0}"#);
    assert_eq!(status, 400);
    assert!(error_of(&answer).contains("rate 0 calls/s is outside 1 to 20000"));
    let (status, answer) = playground.post("/api/load", r#"{"speed": 5}"#);
    assert_eq!(status, 400);
    assert!(error_of(&answer).contains(r#"{"rate": CALLS_PER_SEC} or {"concurrency": CALLERS}"#));
    let (status, answer) = playground.post("/api/servers/1/explode", "{}");
    assert_eq!(status, 404);
    assert!(error_of(&answer).contains("kill, restart, drain, undrain or latency"));
    let (status, answer) = playground.post("/api/policy", "{not json");
    assert_eq!(status, 400);
    assert!(error_of(&answer).starts_with("the body is not JSON"));
    let big = format!(r#"{{"policy": "{}"}}"#, "x".repeat(70 * 1024));
    let (status, answer) = playground.post("/api/policy", &big);
    assert_eq!(status, 413);
    assert_eq!(error_of(&answer), "the request is larger than 64 KiB");
    let after = playground.state();
    assert_eq!(after["policy"]["name"], "round_robin");
    assert_eq!(after["load"], serde_json::json!({"rate": 100}));
    assert_eq!(server(&after, 1)["added_latency_ms"], 0.0);
    assert_eq!(playground.server_pids(), pids, "no server was touched");

    // Only its own page, on loopback, may change anything.
    let port = playground.port;
    let json = ("Content-Type", "application/json");
    let body = r#"{"policy": "random"}"#;
    for (headers, expected) in [
        (vec![json], "Origin (none)"),
        (
            vec![json, ("Origin", "http://evil.example")],
            "Origin http://evil.example",
        ),
        (
            vec![
                json,
                ("Origin", "http://evil.example"),
                ("Host", "evil.example"),
            ],
            "Host `evil.example` is not this playground",
        ),
    ] {
        let (status, text) = http(port, "POST", "/api/policy", &headers, body);
        assert_eq!(status, 403, "{headers:?}: {text}");
        assert!(text.contains(expected), "{text}");
    }
    let (status, text) = http(
        port,
        "GET",
        "/api/state",
        &[("Host", "rebound.example:80")],
        "",
    );
    assert_eq!(
        status, 403,
        "DNS rebinding: a foreign Host gets nothing: {text}"
    );
    let origin = playground.origin();
    let (status, text) = http(
        port,
        "POST",
        "/api/policy",
        &[("Origin", &origin), ("Content-Type", "text/plain")],
        body,
    );
    assert_eq!(status, 415, "a cross-site form's content type: {text}");
    assert_eq!(playground.state()["policy"]["name"], "round_robin");

    // The page's simulator prints what the CLI prints for the same scenario and seed.
    let scenario = r#"{"backends": ["2ms", "2ms", "20ms"], "utilisation": 0.6, "duration": "5s", "events": ["2s slow 1 20ms"], "seed": 7}"#;
    let file =
        std::env::temp_dir().join(format!("playground-scenario-{}.json", std::process::id()));
    std::fs::write(&file, scenario).expect("write the scenario");
    let cli = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args([
            "simulate",
            "--policies",
            "round_robin,least_request,peak_ewma",
            "--scenario",
        ])
        .arg(&file)
        .output()
        .expect("simulate runs");
    let _ = std::fs::remove_file(&file);
    assert!(cli.status.success());
    let with_policies = scenario.replacen(
        '{',
        r#"{"policies": ["round_robin", "least_request", "peak_ewma"], "#,
        1,
    );
    let (status, answer) = playground.post("/api/simulate", &with_policies);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["printout"].as_str().expect("printout"),
        String::from_utf8_lossy(&cli.stdout)
    );
    assert_eq!(answer["reports"].as_array().map(Vec::len), Some(3));
    let (status, answer) = playground.post(
        "/api/simulate",
        r#"{"backends": ["1ms"], "rate": 200000, "duration": "60s"}"#,
    );
    assert_eq!(status, 400);
    assert!(
        error_of(&answer).contains("the page simulates at most"),
        "{answer}"
    );

    assert_eq!(playground.state()["failed"], 0);
    // Ctrl-C: the playground stops, and so does every server it started.
    let output = playground.output.clone();
    assert_eq!(playground.interrupt(), Some(0));
    let printed = output.lock().expect("output").join("\n");
    assert!(
        printed.contains("SIGINT: stopping the servers"),
        "{printed}"
    );
    #[cfg(target_os = "linux")]
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "server pid {pid} outlived the playground"
        );
    }
}

#[test]
fn listen_must_be_loopback_and_a_missing_server_binary_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(["playground", "--listen", "0.0.0.0:8080"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serves only loopback"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(["playground", "--server-bin", "/nonexistent/greeter-server"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--server-bin /nonexistent/greeter-server: no such file"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(["playground", "--timeout", "0s"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--timeout 0s: every call would fail at once"),
        "{stderr}"
    );
}

/// Debian's Chromium, which chromedriver drives.
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a port it chose; stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Option<Self> {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .filter(|_| std::path::Path::new(CHROMIUM).is_file());
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("LB_REQUIRE_BROWSER").is_none(),
                "LB_REQUIRE_BROWSER is set but chromedriver or {CHROMIUM} is not \
                 installed (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "skipped: no chromedriver or {CHROMIUM} (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let mut child = Command::new(binary)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        for line in lines.map_while(Result::ok) {
            // "ChromeDriver was started successfully on port 33923."
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                let port = rest.trim_end_matches('.').parse().expect("a port");
                return Some(Self { child, port });
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromedriver did not say its port");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod browser {
    use super::*;
    use fantoccini::{Client, ClientBuilder, Locator};

    async fn text(client: &Client, css: &str) -> String {
        match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits (at most 20 s) until `ready` holds of the page.
    async fn wait_for<F, Fut>(client: &Client, what: &str, ready: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready().await {
            if Instant::now() > deadline {
                let html = client.source().await.unwrap_or_default();
                panic!("the page did not show {what} within 20 s:\n{html}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn row(client: &Client, id: u64, cell: &str) -> String {
        text(client, &format!("#servers tr[data-id=\"{id}\"] .{cell}")).await
    }

    async fn click(client: &Client, css: &str) {
        client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} on the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_learner_kills_restarts_and_switches_policy_in_a_real_browser() {
        let Some(driver) = Driver::start() else {
            return;
        };
        let playground = Playground::start(&["--fleet", "3", "--rate", "200"]);
        let profile =
            std::env::temp_dir().join(format!("playground-chromium-{}", std::process::id()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1360,1500",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a chromium session");
        client
            .goto(&playground.url())
            .await
            .expect("the page loads");

        // Three servers, READY, with calls flowing.
        wait_for(&client, "3 servers READY with calls", || async {
            let mut ok = true;
            for id in 1..=3 {
                ok &= row(&client, id, "state").await == "READY"
                    && row(&client, id, "rate").await.parse::<u64>().unwrap_or(0) > 0;
            }
            ok
        })
        .await;

        // Kill server 2: it leaves (state shown, 0 calls/s), and no call fails.
        click(&client, "#servers tr[data-id=\"2\"] .kill").await;
        wait_for(&client, "server 2 killed, at 0 calls/s", || async {
            row(&client, 2, "process").await.starts_with("killed")
                && row(&client, 2, "state").await != "READY"
                && row(&client, 2, "rate").await == "0"
        })
        .await;
        wait_for(&client, "the others taking its calls", || async {
            row(&client, 1, "rate").await.parse::<u64>().unwrap_or(0) > 80
                && row(&client, 3, "rate").await.parse::<u64>().unwrap_or(0) > 80
        })
        .await;
        assert_eq!(text(&client, "#failed").await, "0", "no call failed");

        // Restart it: it takes calls again.
        click(&client, "#servers tr[data-id=\"2\"] .restart").await;
        wait_for(&client, "server 2 back, taking calls", || async {
            row(&client, 2, "process").await.starts_with("running")
                && row(&client, 2, "state").await == "READY"
                && row(&client, 2, "rate").await.parse::<u64>().unwrap_or(0) > 0
        })
        .await;

        // Switch the policy: the name changes, with its explanation and link.
        client
            .find(Locator::Id("policy-select"))
            .await
            .expect("the policy choice")
            .select_by_value("least_request")
            .await
            .expect("least_request is offered");
        click(&client, "#apply-policy").await;
        wait_for(&client, "least_request active", || async {
            text(&client, "#policy-name").await == "least_request"
        })
        .await;
        let link = client
            .find(Locator::Id("policy-doc"))
            .await
            .expect("the link")
            .attr("href")
            .await
            .expect("href");
        assert_eq!(link.as_deref(), Some("/docs/POLICIES.md#least_request"));

        // Bad input from the page: a clear error on the page, and nothing changes.
        let latency = client
            .find(Locator::Css("#servers tr[data-id=\"1\"] .latency"))
            .await
            .expect("the latency field");
        latency.clear().await.expect("clear");
        latency.send_keys("1h").await.expect("type");
        click(&client, "#servers tr[data-id=\"1\"] .slow").await;
        wait_for(&client, "the error", || async {
            text(&client, "#error")
                .await
                .contains("latency 1h is more than the playground allows")
        })
        .await;
        assert_eq!(server(&playground.state(), 1)["added_latency_ms"], 0.0);

        // Let the charts fill a little, then keep a picture of the page.
        wait_for(&client, "a few seconds of history", || async {
            playground.state()["t"].as_f64().unwrap_or(0.0) > 8.0
        })
        .await;
        assert_eq!(text(&client, "#failed").await, "0", "no call failed");
        let png = client.screenshot().await.expect("a screenshot");
        let path = std::env::var_os("LB_SCREENSHOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("playground.png"));
        std::fs::write(&path, png).expect("save the screenshot");
        eprintln!("screenshot: {}", path.display());
        client.close().await.expect("close the session");
        let _ = std::fs::remove_dir_all(&profile);
        assert_eq!(playground.state()["failed"], 0);
        assert_eq!(playground.interrupt(), Some(0));
        drop(driver);
    }
}

#[cfg(unix)]
#[test]
fn drain_slow_add_and_load_show_within_seconds_and_sigkill_leaves_no_server() {
    let playground = Playground::start(&["--fleet", "3", "--rate", "150"]);
    playground.wait_for("3 servers READY with calls", |s| {
        all_ready_and_serving(s, 3)
    });

    // Drain: NOT_SERVING on its health, no calls; and back.
    let (status, answer) = playground.post("/api/servers/3/drain", "{}");
    assert_eq!(status, 200, "{answer}");
    playground.wait_for("server 3 drained, without calls", |s| {
        let s3 = server(s, 3);
        s3["health"] == "NOT_SERVING" && s3["draining"] == true && s3["calls_per_sec"] == 0
    });
    playground.post("/api/servers/3/undrain", "{}");
    playground.wait_for("server 3 serving again", |s| {
        let s3 = server(s, 3);
        s3["health"] == "SERVING" && s3["calls_per_sec"].as_u64() > Some(0)
    });

    // Slow down: its calls take at least the added latency.
    let (status, answer) = playground.post("/api/servers/2/latency", r#"{"latency": "50ms"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["message"], "server 2 now adds 50ms to every call");
    playground.wait_for("server 2 at 50 ms or more", |s| {
        server(s, 2)["mean_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 50.0)
    });
    playground.post("/api/servers/2/latency", r#"{"latency": "0ms"}"#);
    playground.wait_for("server 2 at full speed", |s| {
        server(s, 2)["added_latency_ms"] == 0.0
    });

    // One more server: it takes calls.
    let (status, answer) = playground.post("/api/servers", "{}");
    assert_eq!(status, 200, "{answer}");
    playground.wait_for("4 servers READY with calls", |s| {
        all_ready_and_serving(s, 4)
    });

    // Closed loop instead of a rate.
    let (status, answer) = playground.post("/api/load", r#"{"concurrency": 4}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["message"],
        "load: 150 calls/s → 4 callers in closed loop"
    );
    playground.wait_for("closed-loop calls", |s| {
        s["load"] == serde_json::json!({"concurrency": 4}) && s["second"]["ok"].as_u64() > Some(0)
    });
    let state = playground.state();
    assert_eq!(state["failed"], 0, "{state}");

    // A playground killed outright still leaves no server behind: each one exits when
    // its standard input (the playground's end of the pipe) closes.
    let pids = playground.server_pids();
    assert_eq!(pids.len(), 4);
    let status = Command::new("kill")
        .args(["-KILL", &playground.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    #[cfg(target_os = "linux")]
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        let alive = |pid: &u64| {
            // A zombie (state Z) has exited; only its parent's reaping is left.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
        };
        while pids.iter().any(alive) {
            assert!(
                Instant::now() < deadline,
                "servers outlived a SIGKILLed playground: {:?}",
                pids.iter().filter(|p| alive(p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
