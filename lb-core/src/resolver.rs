//! Resolvers: where the endpoint list comes from, and how it changes.
//!
//! gRPC names what to connect to with a *target URI*; its scheme picks the resolver,
//! which produces the endpoint list and, in the background, every change to it. The
//! balancer follows those changes ([`Balancer::follow`](crate::Balancer::follow))
//! without any call having to notice.
//!
//! | target | resolver |
//! |---|---|
//! | `127.0.0.1:50051,127.0.0.1:50052` or `static:127.0.0.1:50051,...` | a fixed list |
//! | `file:///etc/greeter/endpoints.json` | a JSON file, watched: edits apply within a second |
//! | `dns:///greeter.default.svc:50051` | the name's A/AAAA records, re-resolved every 30 s |
//! | `dns://127.0.0.1:5353/greeter.test:50051` | the same, asking that DNS server |
//! | `etcd://127.0.0.1:2379/greeter` | the servers registered under `greeter/` in etcd, watched |
//!
//! DNS is how a Kubernetes *headless* Service is balanced: its name resolves to every
//! ready pod's address, and re-resolving picks up pods as they come and go. Add
//! `?refresh=5s` to re-resolve more often (at most every 100 ms). A DNS answer can be
//! stale, so the resolver also looks again *at once* when the balancer sees an
//! endpoint fail ([`Resolution::resolve_now`], at most once a second): a pod replaced
//! after a crash is found without waiting for the next refresh.
//!
//! etcd pushes instead of being polled: see [`etcd`] for registration with leases and
//! the watch that follows it.
//!
//! The file holds `{"endpoints": ["127.0.0.1:50051", "127.0.0.1:50052=3"]}` (or just the
//! list). A malformed edit is logged with the file's name and the line of the mistake,
//! and the last good list stays in force, so a typo cannot empty the fleet.
//!
//! ```
//! use lb_core::resolver::Target;
//!
//! let target: Target = "127.0.0.1:50051,127.0.0.1:50052".parse().unwrap();
//! assert!(matches!(target, Target::Static(ref list) if list.len() == 2));
//! let target: Target = "file:///etc/greeter/endpoints.json".parse().unwrap();
//! assert!(matches!(target, Target::File(_)));
//! let target: Target = "dns:///greeter.local:50051".parse().unwrap();
//! assert!(matches!(target, Target::Dns { port: 50051, .. }));
//! let target: Target = "etcd://127.0.0.1:2379/greeter".parse().unwrap();
//! assert!(matches!(target, Target::Etcd(ref etcd) if etcd.prefix == "greeter"));
//! ```

#[cfg_attr(not(feature = "dns"), path = "resolver/no_dns.rs")]
mod dns;
pub mod etcd;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::{Endpoint, Error, endpoint::parse_endpoint_list};
pub use etcd::EtcdTarget;

/// How often a watched file is checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where endpoints come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A fixed list.
    Static(Vec<Endpoint>),
    /// A JSON file, re-read whenever it changes.
    File(PathBuf),
    /// A DNS name's addresses, with one port, re-resolved every `refresh`.
    Dns {
        /// The name to resolve.
        host: String,
        /// The port every address serves on.
        port: u16,
        /// The DNS server to ask (`None`: the system's).
        server: Option<SocketAddr>,
        /// How often to resolve again.
        refresh: Duration,
    },
    /// The servers registered under a prefix in etcd, watched.
    Etcd(EtcdTarget),
}

/// What a resolver produces: the endpoints, kept up to date in the background, and a
/// way to ask it to look again now.
#[derive(Clone, Debug)]
pub struct Resolution {
    endpoints: watch::Receiver<Vec<Endpoint>>,
    resolve_now: Arc<Notify>,
}

impl Resolution {
    /// The endpoints now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.borrow().clone()
    }

    /// Every change to the endpoints, as a watch channel.
    pub fn updates(&self) -> watch::Receiver<Vec<Endpoint>> {
        self.endpoints.clone()
    }

    /// Asks the resolver to look again now rather than at its next refresh (gRPC's
    /// `ResolveNow`). The balancer calls it when an endpoint fails. Resolvers that are
    /// told of changes (a file, etcd) or have none (a static list) ignore it; DNS
    /// resolves again, at most once a second however often it is asked.
    pub fn resolve_now(&self) {
        self.resolve_now.notify_one();
    }
}

impl From<watch::Receiver<Vec<Endpoint>>> for Resolution {
    /// A channel of endpoint lists from elsewhere (your own resolver), with nothing to
    /// ask again.
    fn from(endpoints: watch::Receiver<Vec<Endpoint>>) -> Self {
        Self {
            endpoints,
            resolve_now: Arc::new(Notify::new()),
        }
    }
}

/// DNS resolves again on request at most this often. (grpc-go waits at least 30 s
/// between resolutions; one second finds a replaced pod sooner, and reconnect backoff
/// already spaces out the failures that ask.)
pub const DNS_RESOLVE_NOW_MIN: Duration = Duration::from_secs(1);

/// How often a DNS target is re-resolved unless told otherwise (as gRPC does).
pub const DNS_REFRESH: Duration = Duration::from_secs(30);
/// The shortest re-resolution interval allowed, so that a fleet of clients cannot
/// flood its DNS server. (Tests use their own resolver settings, not this.)
pub const DNS_MIN_REFRESH: Duration = Duration::from_millis(100);

impl FromStr for Target {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let invalid = |reason: String| Error::InvalidTarget {
            target: text.to_string(),
            reason,
        };
        if let Some(list) = text.strip_prefix("static:") {
            return Ok(Self::Static(parse_endpoint_list(list)?));
        }
        if let Some(rest) = text.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file target needs an absolute path: file:///path/to/endpoints.json".into(),
                ));
            }
            return Ok(Self::File(PathBuf::from(rest)));
        }
        if let Some(rest) = text.strip_prefix("dns://") {
            return parse_dns(rest).map_err(invalid);
        }
        if let Some(rest) = text.strip_prefix("etcd://") {
            return EtcdTarget::parse(rest).map(Self::Etcd).map_err(invalid);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(invalid(format!(
                "no resolver for `{scheme}:` (supported: a host:port list, static:, file://, dns://, etcd://)"
            )));
        }
        Ok(Self::Static(parse_endpoint_list(text)?))
    }
}

/// `[server]/host:port[?refresh=DURATION]`, after `dns://`.
fn parse_dns(rest: &str) -> Result<Target, String> {
    let usage = "expected dns:///host:port or dns://dns-server:port/host:port";
    let (authority, name) = rest.split_once('/').ok_or(usage)?;
    let (name, query) = name.split_once('?').unwrap_or((name, ""));
    let server = if authority.is_empty() {
        None
    } else {
        Some(
            authority
                .parse::<SocketAddr>()
                .map_err(|_| format!("DNS server `{authority}` is not ip:port"))?,
        )
    };
    let endpoint: Endpoint = name.parse().map_err(|e: Error| e.to_string())?;
    let mut refresh = DNS_REFRESH;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("refresh", value)) => {
                refresh = humantime::parse_duration(value)
                    .map_err(|e| format!("refresh `{value}`: {e}"))?
                    .max(DNS_MIN_REFRESH);
            }
            _ => return Err(format!("unknown option `{pair}` (known: refresh=DURATION)")),
        }
    }
    Ok(Target::Dns {
        host: endpoint.host().to_string(),
        port: endpoint.port(),
        server,
        refresh,
    })
}

impl Target {
    /// Points a DNS target at another DNS server (`--dns-server`); an error for other
    /// targets, which ask no DNS server.
    pub fn with_dns_server(self, dns_server: SocketAddr) -> Result<Self, Error> {
        match self {
            Self::Dns {
                host,
                port,
                refresh,
                ..
            } => Ok(Self::Dns {
                host,
                port,
                server: Some(dns_server),
                refresh,
            }),
            other => Err(Error::InvalidTarget {
                target: other.to_string(),
                reason: "a DNS server applies only to a dns:/// target".into(),
            }),
        }
    }

    /// Resolves the target: the endpoints now, and in the background every later
    /// change (a file is watched, DNS re-resolved, etcd watched). Fails if the first
    /// answer cannot be had.
    ///
    /// Must be called inside a Tokio runtime.
    pub async fn resolve(&self) -> Result<Resolution, Error> {
        let resolve_now = Arc::new(Notify::new());
        let endpoints = match self {
            Self::Static(list) => watch::channel(list.clone()).1,
            Self::File(path) => {
                let endpoints = read_endpoints_file(path)?;
                let (tx, rx) = watch::channel(endpoints);
                tokio::spawn(watch_file(path.clone(), tx));
                rx
            }
            Self::Dns {
                host,
                port,
                server,
                refresh,
            } => dns::resolve(host, *port, *server, *refresh, resolve_now.clone())
                .await
                .map_err(|reason| Error::InvalidTarget {
                    target: self.to_string(),
                    reason,
                })?,
            Self::Etcd(etcd) => etcd.resolve().await?,
        };
        Ok(Resolution {
            endpoints,
            resolve_now,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(list) => {
                let list: Vec<String> = list.iter().map(ToString::to_string).collect();
                write!(f, "static:{}", list.join(","))
            }
            Self::File(path) => write!(f, "file://{}", path.display()),
            Self::Dns {
                host, port, server, ..
            } => match server {
                Some(server) => write!(f, "dns://{server}/{host}:{port}"),
                None => write!(f, "dns:///{host}:{port}"),
            },
            Self::Etcd(etcd) => etcd.fmt(f),
        }
    }
}

/// The largest endpoints file read, in bytes: 1 MiB holds some 40,000 endpoints. A
/// larger file (or `/dev/zero`, or a pipe that keeps writing) is refused after reading
/// this much, not read into memory until it runs out. (A pipe that sends nothing is
/// waited for: point `file://` at regular files.)
pub const MAX_ENDPOINTS_FILE_BYTES: u64 = 1024 * 1024;

/// Reads an endpoints file: `{"endpoints": [...]}` or a bare JSON list of `host:port`
/// (optionally `=weight`) strings. Errors name the file and the line; a file larger
/// than [`MAX_ENDPOINTS_FILE_BYTES`] is an error naming the limit.
pub fn read_endpoints_file(path: &Path) -> Result<Vec<Endpoint>, Error> {
    use std::io::Read;
    let failed = |reason: String| Error::EndpointsFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENDPOINTS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_ENDPOINTS_FILE_BYTES {
        return Err(failed(format!(
            "larger than the limit of {MAX_ENDPOINTS_FILE_BYTES} bytes (1 MiB) for an endpoints file"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| failed(format!("not UTF-8 text: {e}")))?;
    parse_endpoints_json(&text).map_err(|reason| Error::EndpointsFile {
        path: path.to_path_buf(),
        reason,
    })
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum File {
    Object { endpoints: Vec<String> },
    List(Vec<String>),
}

/// The endpoints in the text of an endpoints file (`{"endpoints": ["host:port", ...]}`
/// or a bare list), or why not, with the line (what [`read_endpoints_file`] reads).
pub fn parse_endpoints_json(text: &str) -> Result<Vec<Endpoint>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| {
        format!(
            "line {}, column {}: {e} (expected {{\"endpoints\": [\"host:port\", ...]}})",
            e.line(),
            e.column()
        )
    })?;
    let (File::Object { endpoints } | File::List(endpoints)) = file;
    endpoints
        .iter()
        .map(|entry| {
            entry.parse::<Endpoint>().map_err(|e| {
                let line = text
                    .find(&format!("\"{entry}\""))
                    .map_or(0, |at| text[..at].lines().count().max(1));
                format!("line {line}: {e}")
            })
        })
        .collect()
}

/// Re-reads `path` whenever its size or modification time changes, until nobody
/// listens any more.
async fn watch_file(path: PathBuf, tx: watch::Sender<Vec<Endpoint>>) {
    let stamp = |path: &Path| -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    let mut last = stamp(&path);
    let mut ticks = tokio::time::interval(FILE_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tx.closed() => return,
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match read_endpoints_file(&path) {
            Ok(endpoints) => {
                if tx.send_if_modified(|current| {
                    let changed = *current != endpoints;
                    *current = endpoints.clone();
                    changed
                }) {
                    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                    info!(file = %path.display(), endpoints = %list.join(","), "endpoints changed");
                }
            }
            Err(err) => warn!("{err}; keeping the last good endpoints"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_unknown_schemes_are_named() {
        assert_eq!(
            "static:127.0.0.1:1".parse::<Target>().unwrap(),
            Target::Static(vec!["127.0.0.1:1".parse().unwrap()])
        );
        assert_eq!(
            "dns://127.0.0.1:5353/greeter.test:50051?refresh=200ms"
                .parse::<Target>()
                .unwrap(),
            Target::Dns {
                host: "greeter.test".into(),
                port: 50051,
                server: Some("127.0.0.1:5353".parse().unwrap()),
                refresh: Duration::from_millis(200),
            }
        );
        let err = "dns:///greeter".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("missing port"), "{err}");
        let err = "dns://nope/greeter:1".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("DNS server `nope`"), "{err}");
        let err = "consul://127.0.0.1:8500/greeter"
            .parse::<Target>()
            .unwrap_err();
        assert!(
            err.to_string().contains("no resolver for `consul:`"),
            "{err}"
        );
        let err = "etcd://127.0.0.1:2379".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("etcd://host:port/prefix"), "{err}");
        let err = "file://relative.json".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
        let err = "127.0.0.1:1,oops".parse::<Target>().unwrap_err();
        assert!(err.to_string().contains("invalid endpoint `oops`"), "{err}");
    }

    #[test]
    fn files_hold_an_object_or_a_list() {
        let both = [
            r#"{"endpoints": ["127.0.0.1:1", "127.0.0.1:2=3"]}"#,
            r#"["127.0.0.1:1", "127.0.0.1:2=3"]"#,
        ];
        for text in both {
            let endpoints = parse_endpoints_json(text).unwrap();
            assert_eq!(endpoints.len(), 2);
            assert_eq!(endpoints[1].weight(), 3);
        }
    }

    #[test]
    fn mistakes_name_the_line() {
        let text = "{\n  \"endpoints\": [\n    \"127.0.0.1:1\",\n  ]\n}";
        let err = parse_endpoints_json(text).unwrap_err();
        assert!(err.starts_with("line 4,"), "{err}");
        let text = "{\n  \"endpoints\": [\n    \"127.0.0.1:1\",\n    \"nope\"\n  ]\n}";
        let err = parse_endpoints_json(text).unwrap_err();
        assert!(err.starts_with("line 4: invalid endpoint `nope`"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("lb-resolver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpoints.json");
        std::fs::write(&path, "{oops").unwrap();
        let err = read_endpoints_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("endpoints.json") && err.contains("line 1"),
            "{err}"
        );
        let err = read_endpoints_file(&dir.join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
