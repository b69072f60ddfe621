//! The `greeter-server` binary: a busy port is named, SIGTERM is a clean exit.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_greeter-server"));
    command.env("RUST_LOG", "info");
    command
}

#[test]
fn a_busy_port_exits_non_zero_and_names_the_port() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let out = server().args(["--port", &port]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        ["--error-rate", "1.5"],
        ["--port", "50053-50051"],
        ["--latency", "fast"],
        ["--host", "nowhere"],
        ["--max-concurrent-streams", "0"],
        ["--max-concurrent-streams", "1025"],
    ] {
        let out = server().args(args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[cfg(unix)]
#[test]
fn sigterm_stops_every_instance_and_exits_0() {
    let mut child = server()
        .args(["--port", "0", "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    // Wait for both instances to announce themselves: then the signal handler is set.
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut serving = 0;
    for line in lines.by_ref() {
        let line = line.expect("utf-8 log");
        assert!(
            !line.contains("\u{1b}["),
            "no colours when not a terminal: {line}"
        );
        if line.contains("serving example.MyService") {
            serving += 1;
            if serving == 2 {
                break;
            }
        }
    }
    assert_eq!(serving, 2);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().expect("exits").code(), Some(0));
    assert!(
        rest.iter()
            .any(|l| l.contains("SIGTERM: shutting down gracefully")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[test]
fn greeter_certs_writes_what_tls_flags_take_and_bad_files_are_named() {
    let dir = std::env::temp_dir().join(format!("greeter-certs-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-certs"))
        .args(["--out", &dir.display().to_string()])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    for name in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(dir.join(name).is_file(), "{name}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("server.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private to their owner");
    }
    let file = |name: &str| dir.join(name).display().to_string();

    // A missing key, a certificate given as the key, a CA file that is no certificate:
    // exit 2, naming the file and what is wrong with it, before binding anything.
    for (args, expected) in [
        (
            vec![
                "--tls-cert",
                &file("server.pem") as &str,
                "--tls-key",
                &file("nope.key"),
            ],
            "nope.key: cannot read it".to_string(),
        ),
        (
            vec![
                "--tls-cert",
                &file("server.pem"),
                "--tls-key",
                &file("server.pem"),
            ],
            format!("{}: a private key", file("server.pem")),
        ),
        (
            vec![
                "--tls-cert",
                &file("server.pem"),
                "--tls-key",
                &file("server.key"),
                "--ca",
                &file("server.key"),
            ],
            format!("{}: a CA certificate", file("server.key")),
        ),
    ] {
        let out = server()
            .args(["--port", "0"])
            .args(&args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&expected), "{stderr}");
    }
    // A certificate without its key (or the reverse) is refused by the parser.
    let out = server()
        .args(["--tls-cert", &file("server.pem")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}

#[cfg(unix)]
#[test]
fn metrics_flag_serves_prometheus_text_and_a_busy_port_is_named() {
    use std::io::{Read, Write};
    /// Kills the server if the test fails half-way, so that it cannot outlive it.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        server()
            .args(["--port", "0", "--metrics", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts"),
    );
    let mut lines = BufReader::new(child.0.stderr.take().expect("piped")).lines();
    let mut metrics_at = None;
    for line in lines.by_ref() {
        let line = line.expect("utf-8 log");
        if let Some(rest) = line.split("metrics at http://").nth(1) {
            metrics_at = rest.split('/').next().map(str::to_string);
        }
        if line.contains("serving example.MyService") {
            break;
        }
    }
    let addr = metrics_at.expect("the log says where the metrics are");
    let mut stream = std::net::TcpStream::connect(&addr).expect("connects");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // (No series before the first call: families appear with their first sample.)
    assert!(
        response.contains("application/openmetrics-text"),
        "{response}"
    );
    assert!(response.trim_end().ends_with("# EOF"), "{response}");

    // Another server asking for the same metrics port: exit 1, the port named.
    let port = addr.rsplit(':').next().expect("a port");
    let out = server()
        .args(["--port", "0", "--metrics", &addr])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} is already in use")),
        "{stderr}"
    );

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    let _rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.0.wait().expect("exits").code(), Some(0));
}

/// A `--control-stdin` server on a port the OS chose, once it has said `serving ADDR`
/// (on loopback, a real port) and `ready`: the process, its stdin, and its stdout's lines.
fn controlled_server() -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = server()
        .args(["--port", "0", "--control-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdin = child.stdin.take().expect("piped");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next = || lines.next().expect("a line").expect("utf-8");
    let serving = next();
    let addr: std::net::SocketAddr = serving
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("`serving ADDR` first, not {serving}"))
        .parse()
        .expect("an address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(next(), "ready");
    (child, stdin, lines)
}

/// `--control-stdin`: the parent's commands are answered in order, a bad one with an
/// error that changes nothing, and closing the pipe stops the server cleanly.
#[test]
fn control_stdin_answers_commands_and_end_of_input_stops_the_server() {
    use std::io::Write;
    let (mut child, mut stdin, mut lines) = controlled_server();
    let mut next = || lines.next().expect("a line").expect("utf-8");
    for (command, answer) in [
        ("latency 50ms", "ok latency 50ms"),
        (
            "latency 3h",
            "error: latency 3h is more than the most allowed, 1h",
        ),
        (
            "slow down",
            "error: unknown command `slow down` (commands: latency DURATION, health serving|not-serving, stop)",
        ),
        ("health not-serving", "ok health not-serving"),
        ("health serving", "ok health serving"),
    ] {
        writeln!(stdin, "{command}").expect("write");
        assert_eq!(next(), answer, "after `{command}`");
    }
    drop(stdin);
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(0), "end of input is a clean stop");
}

/// SIGTERM stops a `--control-stdin` server even while its standard input stays open
/// (a read of stdin cannot be cancelled; it must not hold the exit).
#[cfg(unix)]
#[test]
fn sigterm_stops_a_control_stdin_server_whose_input_is_still_open() {
    let (mut child, stdin, _lines) = controlled_server(); // stdin kept open to the end
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 20 s after SIGTERM, its stdin open");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    drop(stdin);
}
