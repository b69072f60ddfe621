//! The `lb-proxy` binary as a user runs it: on one thread (its default) and on one per
//! core, calls go through and SIGTERM stops it cleanly; a bad `--threads` is a usage
//! error.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use greeter_proto::{HelloRequest, MyServiceClient};

/// lb-proxy on port 0 over `backend`, and the address it printed.
fn start(backend: SocketAddr, threads: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backends",
            &backend.to_string(),
            "--threads",
            threads,
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("lb-proxy starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("lb-proxy listening")
                && let Some(addr) = line.split("addr=").nth(1)
            {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("lb-proxy says where it listens");
    (child, addr.parse().expect("an address"))
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("exits");
    assert_eq!(exit.code(), Some(0), "SIGTERM is a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_through_on_one_thread_and_on_many() {
    let servers = greeter_server::spawn(greeter_server::Config::on_ports(&[0]))
        .await
        .expect("server starts");
    let backend = servers.addrs()[0];
    for threads in ["1", "0", "2"] {
        let (child, addr) = tokio::task::spawn_blocking(move || start(backend, threads))
            .await
            .expect("no panic");
        let mut client = MyServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connects to the proxy");
        for _ in 0..20 {
            let reply = client
                .say_hello(HelloRequest {
                    name: format!("threads {threads}"),
                })
                .await
                .expect("answered through the proxy");
            assert_eq!(
                reply.into_inner().message,
                format!("Hello, threads {threads}!")
            );
        }
        drop(client);
        tokio::task::spawn_blocking(move || terminate(child))
            .await
            .expect("no panic");
    }
    servers.shutdown().await.expect("clean shutdown");
}

#[test]
fn too_many_threads_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
        .args(["--backends", "127.0.0.1:1", "--threads", "5000"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
}

/// `--service-config`: a misspelt field is a usage error naming it, and a config whose
/// `loadBalancingConfig` names a policy next to `--policy` is one too (keep one).
#[test]
fn bad_service_configs_are_usage_errors() {
    for (args, expected) in [
        (
            vec![
                "--service-config",
                r#"{"methodConfig": [{"name": [{}], "timout": "1s"}]}"#,
            ],
            "unknown field `timout`",
        ),
        (
            vec![
                "--policy",
                "round_robin",
                "--service-config",
                r#"{"loadBalancingConfig": [{"pick_first": {}}]}"#,
            ],
            "keep one",
        ),
        (
            vec!["--service-config", "/nonexistent/service-config.json"],
            "/nonexistent/service-config.json",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
            .args(["--backends", "127.0.0.1:1"])
            .args(&args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
