//! DNS resolution of `dns:///name:port` targets, with hickory (the `dns` feature):
//! every address of the name is an endpoint, and the name is resolved again every
//! `refresh` and when the balancer asks (an endpoint failed).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::DNS_RESOLVE_NOW_MIN;
use crate::Endpoint;

/// Resolves `host` now, and keeps resolving it in the background.
pub(super) async fn resolve(
    host: &str,
    port: u16,
    server: Option<SocketAddr>,
    refresh: Duration,
    resolve_now: Arc<Notify>,
) -> Result<watch::Receiver<Vec<Endpoint>>, String> {
    let resolver = dns_resolver(server)?;
    let endpoints = lookup(&resolver, host, port).await?;
    let (tx, rx) = watch::channel(endpoints);
    let dns = Dns {
        resolver,
        host: host.to_string(),
        port,
        refresh,
    };
    tokio::spawn(dns.watch(tx, resolve_now));
    Ok(rx)
}

type DnsResolver = hickory_resolver::Resolver<hickory_resolver::net::runtime::TokioRuntimeProvider>;

/// A resolver asking `server` (or the system's servers), without a cache: every
/// re-resolution must see the records as they are now.
fn dns_resolver(server: Option<SocketAddr>) -> Result<DnsResolver, String> {
    use hickory_resolver::{
        Resolver,
        config::{NameServerConfig, ResolverConfig},
        net::runtime::TokioRuntimeProvider,
    };
    let mut builder = match server {
        Some(server) => {
            let mut name_server = NameServerConfig::udp(server.ip());
            for connection in &mut name_server.connections {
                connection.port = server.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![name_server]),
                TokioRuntimeProvider::new(),
            )
        }
        None => Resolver::builder_tokio().map_err(|e| e.to_string())?,
    };
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.build().map_err(|e| e.to_string())
}

/// The addresses of `host`, as endpoints on `port`, sorted so that the order does not
/// depend on the DNS server's.
async fn lookup(resolver: &DnsResolver, host: &str, port: u16) -> Result<Vec<Endpoint>, String> {
    let ips = resolver.lookup_ip(host).await.map_err(|e| {
        if e.is_no_records_found() {
            format!("`{host}` has no A or AAAA records")
        } else {
            format!("cannot resolve: {e}")
        }
    })?;
    let mut endpoints: Vec<Endpoint> = ips
        .iter()
        .filter_map(|ip| SocketAddr::new(ip, port).to_string().parse().ok())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    Ok(endpoints)
}

/// A DNS name to keep resolving.
struct Dns {
    resolver: DnsResolver,
    host: String,
    port: u16,
    refresh: Duration,
}

impl Dns {
    /// Resolves again every `refresh`, and when asked (at most once a second), until
    /// nobody listens any more. A failed lookup keeps the last answer (a DNS hiccup must
    /// not empty the fleet).
    async fn watch(self, tx: watch::Sender<Vec<Endpoint>>, resolve_now: Arc<Notify>) {
        let mut ticks = tokio::time::interval(self.refresh);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = resolve_now.notified() => {
                    // Asked: look again now, or as soon as the minimum interval allows.
                    tokio::time::sleep_until(last + DNS_RESOLVE_NOW_MIN).await;
                    info!(host = %self.host, "resolving again now: an endpoint failed");
                    ticks.reset();
                }
                _ = tx.closed() => return,
            }
            last = tokio::time::Instant::now();
            match lookup(&self.resolver, &self.host, self.port).await {
                Ok(endpoints) => {
                    if tx.send_if_modified(|current| {
                        let changed = *current != endpoints;
                        *current = endpoints.clone();
                        changed
                    }) {
                        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                        info!(host = %self.host, endpoints = %list.join(","), "DNS answer changed");
                    }
                }
                Err(err) => {
                    warn!(target = %format!("dns:///{}:{}", self.host, self.port),
                        "{err}; keeping the last answer");
                }
            }
        }
    }
}
