//! The `greeter-client` binary: exit codes, messages, table and JSON output.

use std::process::{Command, Output};

use greeter_server::Config;

fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

/// Runs the client off the async runtime, which keeps serving the in-process servers.
async fn client_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client(&args)
    })
    .await
    .expect("the client task runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_registered_policy_with_its_summary() {
    let long = text(&client(&["--help"]).stdout);
    let short = text(&client(&["compare", "-h"]).stdout);
    for policy in lb_core::Policy::all() {
        assert!(
            long.contains(&format!("{:<21} {}", policy.name(), policy.summary())),
            "{policy} missing from --help:\n{long}"
        );
        assert!(
            short.contains(policy.name()),
            "{policy} missing from compare -h:\n{short}"
        );
    }
}

#[test]
fn an_unknown_policy_exits_2_and_lists_the_valid_ones() {
    let out = client(&["--servers", "127.0.0.1:50051", "--policy", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown policy `nope`"), "{stderr}");
    assert!(
        stderr.contains("pick_first, round_robin, random, least_connections"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_server_exits_2_and_names_it() {
    for (bad, why) in [
        ("localhost", "missing port"),
        ("127.0.0.1:99999", "out of range"),
        ("127.0.0.1:x", "not a number"),
    ] {
        let list = format!("127.0.0.1:50051,{bad}");
        let out = client(&["--servers", &list]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("invalid endpoint `{bad}`")),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[test]
fn targets_are_checked_and_an_unreachable_etcd_is_a_runtime_failure() {
    let out = client(&["--servers", "etcd://127.0.0.1:2379"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("etcd://host:port/prefix"));
    let out = client(&["--servers", "127.0.0.1:1", "--dns-server", "127.0.0.1:53"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("only to a dns:/// target"));

    // Nothing listens on a port just freed: etcd is out of reach.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("etcd://127.0.0.1:{port}/greeter");
    let out = client(&["--servers", &target]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&target) && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

#[test]
fn missing_servers_is_a_usage_error() {
    let out = client(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--servers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_prints_the_table_and_json_and_exits_0() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0, 0]))
        .await
        .expect("servers start");
    let list = servers.endpoints_list();
    let args = [
        "--servers",
        &list,
        "--requests",
        "30",
        "--concurrency",
        "3",
        "--seed",
        "1",
    ];

    let out = client_async(&args).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("round_robin: 30 calls, concurrency 3"),
        "{stdout}"
    );
    for addr in servers.addrs() {
        assert!(
            stdout.contains(&format!("{addr}      10   33.3%")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("latency   p50"), "{stdout}");
    assert!(stdout.contains("errors    none"), "{stdout}");

    let out = client_async(&[
        "--servers",
        &list,
        "--requests",
        "30",
        "--policy",
        "pick_first",
        "--json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["policy"], "pick_first");
    assert_eq!(json["succeeded"], 30);
    let backends = json["backends"].as_array().expect("a list");
    assert_eq!(backends.len(), 3);
    assert_eq!(backends[0]["calls"], 30);
    assert_eq!(backends[1]["calls"], 0);

    let out = client_async(&["health", "--servers", &list, "--wait", "5s"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).matches("SERVING").count(), 3);
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_exit_1_and_name_the_endpoint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("addr").to_string();
    drop(listener);

    let out = client_async(&["--servers", &dead, "--requests", "2", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("endpoint {dead}")), "{stdout}");
    assert!(stdout.contains("TRANSIENT_FAILURE"), "{stdout}");

    let out = client_async(&["health", "--servers", &dead]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("not SERVING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_every_policy_and_a_fixed_key_sticks_to_one_backend() {
    let fast = greeter_server::spawn(Config::on_ports(&[0, 0]))
        .await
        .expect("servers start");
    let slow = greeter_server::spawn(
        Config::on_ports(&[0]).with_latency(std::time::Duration::from_millis(20)),
    )
    .await
    .expect("slow server starts");
    let list = format!("{},{}", fast.endpoints_list(), slow.endpoints_list());
    let args = [
        "compare",
        "--servers",
        &list,
        "--requests",
        "60",
        "--concurrency",
        "4",
        "--keys",
        "1",
        "--seed",
        "3",
        "--json",
    ];
    let out = client_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let reports = reports.as_array().expect("one report per policy");
    assert_eq!(reports.len(), lb_core::Policy::names().len());
    for report in reports {
        assert_eq!(report["succeeded"], 60, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        let busy: Vec<u64> = report["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| b["calls"].as_u64().expect("a count"))
            .filter(|&calls| calls > 0)
            .collect();
        if report["policy"] == "ring_hash" || report["policy"] == "maglev" {
            assert_eq!(busy, vec![60], "one key, one backend: {report}");
        }
    }

    // The table, as people see it.
    let mut table_args = args.to_vec();
    table_args.pop();
    let out = client_async(&table_args).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Jain"), "{stdout}");
    for policy in lb_core::Policy::names() {
        assert!(
            stdout.contains(&format!("  {policy} ")),
            "{policy}:\n{stdout}"
        );
    }
    fast.shutdown().await.expect("clean shutdown");
    slow.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_take_service_config_json_and_weights() {
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0]))
        .await
        .expect("servers start");
    let addrs = servers.addrs();
    let weighted = format!("{}=3,{}=1", addrs[0], addrs[1]);
    let out = client_async(&[
        "--servers",
        &weighted,
        "--policy",
        "weighted_round_robin",
        "--requests",
        "40",
        "--json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["backends"][0]["calls"], 30);
    assert_eq!(json["backends"][1]["calls"], 10);

    let list = servers.endpoints_list();
    let config = r#"{"loadBalancingConfig":[{"least_request":{"choiceCount":2}}]}"#;
    let out = client_async(&["--servers", &list, "--policy", config, "--explain", "2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("least_request: 100 calls"));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("least_request sampled {").count(),
        2,
        "{stderr}"
    );

    let out = client_async(&[
        "--servers",
        &list,
        "--policy",
        r#"{"least_request":{"k":2}}"#,
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown field `k`"));
    let bad_weight = format!("{}=0", addrs[0]);
    let out = client_async(&["--servers", &bad_weight]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("weight `0`"));
    servers.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("greeter-client-tls-{}", std::process::id()));
    let pki = greeter_server::certs::DemoPki::generate().expect("certificates");
    pki.write_to(&dir).expect("written");
    let file = |name: &str| dir.join(name).display().to_string();
    let tls = lb_core::tls::server_config(
        &dir.join("server.pem"),
        &dir.join("server.key"),
        Some(&dir.join("ca.pem")),
    )
    .expect("server TLS");
    let servers = greeter_server::spawn(Config::on_ports(&[0, 0]).with_tls(tls))
        .await
        .expect("servers start");
    let list = servers.endpoints_list();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));

    // With the client certificate: every call answered, split evenly.
    let base = [
        "--servers",
        &list,
        "--requests",
        "20",
        "--seed",
        "1",
        "--json",
    ];
    let identity = ["--ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let out = client_async(&[&base[..], &identity[..]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["succeeded"], 20, "{report}");
    let health = ["health", "--servers", &list];
    let out = client_async(&[&health[..], &identity[..]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // Trusting the CA but showing no certificate: refused, exit 1, the endpoint named.
    let out = client_async(&[&base[..], &["--ca", &ca, "--timeout", "2s"][..]].concat()).await;
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["succeeded"], 0, "{report}");
    assert!(
        report.to_string().contains("endpoint 127.0.0.1:"),
        "{report}"
    );

    // Unusable TLS flags are usage errors, naming the file.
    let out = client(&["--servers", &list, "--ca", &file("nothing.pem")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nothing.pem: cannot read it"),
        "{}",
        text(&out.stderr)
    );
    let out = client(&["--servers", &list, "--ca", &key]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("client.key: a CA certificate"),
        "{}",
        text(&out.stderr)
    );
    let out = client(&["--servers", &list, "--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a client certificate needs --ca"
    );

    servers.shutdown().await.expect("clean shutdown");
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}

#[test]
fn an_endpoints_file_that_never_ends_is_refused_at_its_size_limit() {
    // /dev/zero used to be read until memory ran out (about 1 GB/s).
    let out = client(&["--servers", "file:///dev/zero"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/dev/zero") && stderr.contains("larger than the limit of 1048576 bytes"),
        "{stderr}"
    );
}
