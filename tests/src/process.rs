//! Greeter-servers in processes of their own, for the failures that are a process's:
//! SIGKILL, SIGSTOP and SIGCONT.
//!
//! A test binary that uses this has a test named `server_process` whose body is
//! [`serve_if_asked`]. [`ServerProcess::start`] runs the test binary again with only
//! that test selected and [`SERVE_PORT`] set: that run is the server. Without the
//! variable (every ordinary run of the tests), `server_process` returns at once.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread,
};

use greeter_server::Config;

/// Set in the environment of a server process: the port to serve on.
pub const SERVE_PORT: &str = "E2E_SERVE_PORT";

/// The body of a test binary's `server_process` test: serves on `$SERVE_PORT` until
/// killed, and says where it listens on stdout; returns at once if the variable is not
/// set.
pub fn serve_if_asked() {
    let Ok(port) = std::env::var(SERVE_PORT) else {
        return;
    };
    let port: u16 = port.parse().expect("a port number");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let servers = greeter_server::spawn(Config::on_ports(&[port]))
            .await
            .expect("the server starts");
        println!("LISTENING {}", servers.addrs()[0]);
        std::future::pending::<()>().await;
    });
}

/// A greeter-server in a process of its own, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts one on `port` (0: the OS picks) and waits until it listens.
    pub fn start(port: u16) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "server_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SERVE_PORT, port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server process starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server says where it listens")
                .expect("readable");
            // libtest may have written "test server_process ... " on the same line.
            if let Some((_, addr)) = line.split_once("LISTENING ") {
                break addr.parse().expect("an address");
            }
        };
        // Keep reading, so that the process never blocks on a full pipe.
        thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the process ends");
    }

    /// Sends `signal` (STOP, CONT, KILL) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1, for a server that is to start later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
