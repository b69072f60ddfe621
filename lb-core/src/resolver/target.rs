//! Target URIs: what `--servers` and `--target` take, and how each is resolved.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};

use super::dns;
use super::etcd::EtcdTarget;
use super::file::{read_endpoints_file, watch_file};
use super::resolution::Resolution;
use super::{DNS_MIN_REFRESH, DNS_REFRESH};
use crate::{Endpoint, Error, endpoint::parse_endpoint_list};

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
        Ok(Resolution::new(endpoints, resolve_now))
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
}
