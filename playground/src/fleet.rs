//! The playground's servers: real `greeter-server` processes on 127.0.0.1, each driven
//! through its standard input (`--control-stdin`).
//!
//! A server keeps its id and its port for the whole session: "kill" sends SIGKILL to
//! its process, "restart" starts a new process on the same port, so the balancer,
//! which knows the server by its address, sees it go and come back. Slowing down and
//! draining are commands on the running process (`latency 200ms`, `health
//! not-serving`), so its connections stay open while it changes. Each process exits
//! when its standard input closes: even a playground killed with SIGKILL leaves no
//! server behind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use lb_core::Endpoint;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};

/// The most servers one playground runs.
pub const MAX_SERVERS: usize = 12;

/// The largest delay "slow down" may add: beyond it every call would miss its
/// deadline, which the page's deadline control shows better.
pub const MAX_LATENCY: Duration = Duration::from_secs(10);

/// How long a new process may take to say `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a process may take to stop after its standard input closed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet has [`MAX_SERVERS`] already.
#[derive(Debug, thiserror::Error)]
#[error("the playground runs at most {MAX_SERVERS} servers")]
pub struct FleetFull;

/// What the page shows of one server's process.
#[derive(Clone, Debug, Serialize)]
pub struct ServerView {
    /// 1, 2, 3, ...: the number on the page and in the API's paths.
    pub id: usize,
    /// `127.0.0.1:PORT`, as the balancer knows it.
    pub address: String,
    /// The process id while it runs.
    pub pid: Option<u32>,
    /// `running`, `killed` (by the playground), or `exited (...)` (by itself).
    pub process: String,
    /// The delay it adds to every call, in milliseconds.
    pub added_latency_ms: f64,
    /// Whether it was told to report NOT_SERVING.
    pub draining: bool,
    /// Its weight, for the weighted policies.
    pub weight: u32,
}

/// The servers, by id (index + 1).
pub struct Fleet {
    binary: PathBuf,
    servers: Vec<Server>,
}

struct Server {
    id: usize,
    addr: SocketAddr,
    weight: u32,
    latency: Duration,
    draining: bool,
    process: Process,
}

enum Process {
    Running(Box<Running>),
    Killed,
    Exited(String),
}

/// A live process and its pipes.
struct Running {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Fleet {
    /// No servers yet; they will run `binary` (a greeter-server).
    pub fn new(binary: PathBuf) -> Self {
        Self {
            binary,
            servers: Vec::new(),
        }
    }

    /// Starts a new server on a port the OS chooses and returns its endpoint.
    pub async fn add(&mut self, weight: u32) -> anyhow::Result<Endpoint> {
        if self.servers.len() >= MAX_SERVERS {
            bail!(FleetFull);
        }
        let (running, addr) = start(&self.binary, 0, Duration::ZERO).await?;
        let id = self.servers.len() + 1;
        self.servers.push(Server {
            id,
            addr,
            weight,
            latency: Duration::ZERO,
            draining: false,
            process: Process::Running(Box::new(running)),
        });
        Ok(endpoint(addr, weight))
    }

    /// Every server's endpoint, in id order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.servers
            .iter()
            .map(|s| endpoint(s.addr, s.weight))
            .collect()
    }

    /// What the page shows of each server; notices processes that exited by themselves.
    pub fn views(&mut self) -> Vec<ServerView> {
        for server in &mut self.servers {
            if let Process::Running(running) = &mut server.process
                && let Ok(Some(status)) = running.child.try_wait()
            {
                server.process = Process::Exited(status.to_string());
            }
        }
        self.servers
            .iter()
            .map(|s| ServerView {
                id: s.id,
                address: s.addr.to_string(),
                pid: match &s.process {
                    Process::Running(running) => Some(running.pid),
                    _ => None,
                },
                process: match &s.process {
                    Process::Running(_) => "running".into(),
                    Process::Killed => "killed".into(),
                    Process::Exited(how) => format!("exited ({how})"),
                },
                added_latency_ms: s.latency.as_secs_f64() * 1000.0,
                draining: s.draining,
                weight: s.weight,
            })
            .collect()
    }

    /// SIGKILL: the process ends at once, its connections reset by the kernel.
    pub async fn kill(&mut self, id: usize) -> anyhow::Result<String> {
        let server = self.server(id)?;
        let Process::Running(running) = &mut server.process else {
            bail!("server {id} is not running: restart it first");
        };
        let pid = running.pid;
        running
            .child
            .kill()
            .await
            .with_context(|| format!("cannot kill server {id} (pid {pid})"))?;
        server.process = Process::Killed;
        Ok(format!(
            "killed server {id} ({}, pid {pid}) with SIGKILL",
            server.addr
        ))
    }

    /// Starts a stopped server again, on its old port, with its added latency; it
    /// reports SERVING again.
    pub async fn restart(&mut self, id: usize) -> anyhow::Result<String> {
        let binary = self.binary.clone();
        let server = self.server(id)?;
        if matches!(server.process, Process::Running(_)) {
            bail!("server {id} is running: kill it first");
        }
        let (running, _) = start(&binary, server.addr.port(), server.latency)
            .await
            .with_context(|| format!("cannot restart server {id} on {}", server.addr))?;
        let pid = running.pid;
        server.process = Process::Running(Box::new(running));
        server.draining = false;
        Ok(format!(
            "restarted server {id} ({}, pid {pid})",
            server.addr
        ))
    }

    /// Adds `latency` to each of the server's calls from now on.
    pub async fn set_latency(&mut self, id: usize, latency: Duration) -> anyhow::Result<String> {
        if latency > MAX_LATENCY {
            bail!(
                "latency {} is more than the playground allows ({}): choose less",
                humantime::format_duration(latency),
                humantime::format_duration(MAX_LATENCY)
            );
        }
        let server = self.server(id)?;
        let command = format!("latency {}", humantime::format_duration(latency));
        tell(server, &command).await?;
        server.latency = latency;
        Ok(format!(
            "server {id} now adds {} to every call",
            humantime::format_duration(latency)
        ))
    }

    /// Reports NOT_SERVING (`drain`) or SERVING on the server's health service.
    pub async fn set_draining(&mut self, id: usize, draining: bool) -> anyhow::Result<String> {
        let server = self.server(id)?;
        let command = if draining {
            "health not-serving"
        } else {
            "health serving"
        };
        tell(server, command).await?;
        server.draining = draining;
        Ok(if draining {
            format!("server {id} reports NOT_SERVING: balancers stop sending it calls")
        } else {
            format!("server {id} reports SERVING again")
        })
    }

    /// Stops every process: closes its standard input (a graceful stop), and kills
    /// those that have not stopped a moment later.
    pub async fn stop_all(&mut self) {
        let mut stopping = Vec::new();
        for server in &mut self.servers {
            if let Process::Running(running) =
                std::mem::replace(&mut server.process, Process::Killed)
            {
                let Running { child, stdin, .. } = *running;
                drop(stdin);
                stopping.push(child);
            }
        }
        for mut child in stopping {
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    fn server(&mut self, id: usize) -> anyhow::Result<&mut Server> {
        let count = self.servers.len();
        id.checked_sub(1)
            .and_then(|index| self.servers.get_mut(index))
            .ok_or_else(|| anyhow!("there is no server {id} (servers are 1 to {count})"))
    }
}

fn endpoint(addr: SocketAddr, weight: u32) -> Endpoint {
    // An address with a port always parses; the weight was checked when given.
    addr.to_string()
        .parse::<Endpoint>()
        .map(|e| e.with_weight(weight))
        .unwrap_or_else(|_| unreachable!("{addr} is an endpoint"))
}

/// Sends one command and waits for its answer: `ok ...` or `error: ...`.
async fn tell(server: &mut Server, command: &str) -> anyhow::Result<()> {
    let id = server.id;
    let Process::Running(running) = &mut server.process else {
        bail!("server {id} is not running: restart it first");
    };
    // An answer that came after its command had timed out is not this one's.
    while running.answers.try_recv().is_ok() {}
    running
        .stdin
        .write_all(format!("{command}\n").as_bytes())
        .await
        .with_context(|| format!("server {id} did not take the command `{command}`"))?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, running.answers.recv())
        .await
        .map_err(|_| anyhow!("server {id} did not answer `{command}` within 5 s"))?
        .ok_or_else(|| anyhow!("server {id} exited before answering `{command}`"))?;
    match answer.strip_prefix("error: ") {
        Some(err) => bail!("server {id} refused `{command}`: {err}"),
        None => Ok(()),
    }
}

/// Starts `binary --port PORT --control-stdin` and waits until it is ready.
async fn start(
    binary: &Path,
    port: u16,
    latency: Duration,
) -> anyhow::Result<(Running, SocketAddr)> {
    let mut child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--latency",
            &humantime::format_duration(latency).to_string(),
        ])
        .arg("--control-stdin")
        // Only warnings: three servers' info logs would bury the playground's own.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("{}: no pipes to the new process", binary.display());
    };
    let (tx, mut answers) = mpsc::channel(16);
    tokio::spawn(async move {
        // The server's lines are short (one answer per command); a longer one is read
        // in pieces of at most 4 KiB, never buffered whole.
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match (&mut reader).take(4096).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let ready = async {
        let mut addr = None;
        while let Some(line) = answers.recv().await {
            if let Some(served) = line.strip_prefix("serving ") {
                addr = served.parse::<SocketAddr>().ok();
            } else if line == "ready" {
                return addr.ok_or_else(|| anyhow!("it said ready before its address"));
            }
        }
        Err(anyhow!(
            "it exited before it was ready (is port {port} in use? its log is above)"
        ))
    };
    let addr = match tokio::time::timeout(START_TIMEOUT, ready).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(err)) => {
            let _ = child.kill().await;
            return Err(err.context(format!("{} did not start", binary.display())));
        }
        Err(_) => {
            let _ = child.kill().await;
            bail!("{} was not ready within 10 s", binary.display());
        }
    };
    Ok((
        Running {
            child,
            pid,
            stdin,
            answers,
        },
        addr,
    ))
}
