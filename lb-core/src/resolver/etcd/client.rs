//! The part of etcd discovery that talks to etcd (with `etcd-client`, whose build
//! needs `protoc`): watching a prefix, and registering under a lease. Behind the
//! `etcd` feature.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use rand::{SeedableRng, rngs::SmallRng};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{EtcdTarget, endpoints_of, parse_registration};
use crate::{Backoff, Endpoint, Error, error::describe};

/// How long connecting to etcd, or one request to it, may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnects to etcd: from 250 ms up to 10 s apart.
pub(super) const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(250),
    multiplier: 1.6,
    jitter: 0.2,
    max: Duration::from_secs(10),
};

impl EtcdTarget {
    pub(super) async fn connect(&self) -> Result<Client, Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        Client::connect(&self.cluster, Some(options))
            .await
            .map_err(|e| self.error("cannot connect", &e))
    }

    pub(super) fn error(&self, what: &str, err: &etcd_client::Error) -> Error {
        Error::Discovery {
            target: self.to_string(),
            reason: format!("{what}: {}", reason(err)),
        }
    }

    /// Lists the registered endpoints now, and keeps `tx` up to date in the
    /// background until nobody listens. Fails if etcd cannot be reached at first.
    pub(crate) async fn resolve(&self) -> Result<watch::Receiver<Vec<Endpoint>>, Error> {
        let mut client = self.connect().await?;
        let (registered, revision) = self.list(&mut client).await?;
        let (tx, rx) = watch::channel(endpoints_of(&registered));
        tokio::spawn(self.clone().watch(client, registered, revision, tx));
        Ok(rx)
    }

    /// Every registration under the prefix (key → endpoint), and the revision read.
    async fn list(&self, client: &mut Client) -> Result<(BTreeMap<String, Endpoint>, i64), Error> {
        let response = client
            .get(self.watched(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.error("cannot list the prefix", &e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut registered = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match parse_registration(&key, kv.value()) {
                Ok(endpoint) => {
                    registered.insert(key, endpoint);
                }
                Err(reason) => warn!(%key, %reason, "ignoring an etcd registration"),
            }
        }
        Ok((registered, revision))
    }

    /// Applies watch events to `registered` from `revision` on; on any trouble,
    /// reconnects, lists again and watches on.
    async fn watch(
        self,
        mut client: Client,
        mut registered: BTreeMap<String, Endpoint>,
        mut revision: i64,
        tx: watch::Sender<Vec<Endpoint>>,
    ) {
        let mut failures = 0;
        let mut rng = SmallRng::seed_from_u64(revision.unsigned_abs());
        loop {
            let trouble = tokio::select! {
                trouble = self.follow(&mut client, &mut registered, &mut revision, &tx, &mut failures) => trouble,
                _ = tx.closed() => return,
            };
            warn!(target = %self, %trouble, "etcd watch interrupted; keeping the last endpoints");
            // Start over, until it works: a new connection and a fresh list, as events
            // may have been missed (or compacted away) meanwhile. Never back to the old
            // watch: its revision may be past events it has not delivered.
            loop {
                let delay = RECONNECT.delay(failures, &mut rng);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return,
                }
                let resynced = async {
                    let mut fresh = self.connect().await?;
                    let (now, at) = self.list(&mut fresh).await?;
                    Ok::<_, Error>((fresh, now, at))
                };
                match resynced.await {
                    Ok((fresh, now, at)) => {
                        (client, registered, revision) = (fresh, now, at);
                        publish(&self, &registered, &tx);
                        break;
                    }
                    Err(err) => warn!("{err}; trying again"),
                }
            }
        }
    }

    /// Watches from `revision + 1` until the watch fails; returns why.
    async fn follow(
        &self,
        client: &mut Client,
        registered: &mut BTreeMap<String, Endpoint>,
        revision: &mut i64,
        tx: &watch::Sender<Vec<Endpoint>>,
        failures: &mut u32,
    ) -> String {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(*revision + 1);
        let mut stream = match client.watch(self.watched(), Some(options)).await {
            Ok(stream) => stream,
            Err(err) => return format!("cannot watch: {}", reason(&err)),
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return "the watch stream ended".into(),
                Err(err) => return reason(&err),
            };
            if response.canceled() {
                return format!("watch cancelled by etcd: {}", response.cancel_reason());
            }
            *failures = 0;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                // The revision seen is that of the events applied, not the header's:
                // a header can be ahead of events still to be delivered.
                *revision = (*revision).max(kv.mod_revision());
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Put => match parse_registration(&key, kv.value()) {
                        Ok(endpoint) => {
                            registered.insert(key, endpoint);
                        }
                        Err(reason) => {
                            warn!(%key, %reason, "ignoring an etcd registration");
                            registered.remove(&key);
                        }
                    },
                    EventType::Delete => {
                        registered.remove(&key);
                    }
                }
            }
            publish(self, registered, tx);
        }
    }
}

/// What went wrong, in one line: etcd-client's own `Display` of a gRPC status
/// prints the transport error's `Debug` form.
pub(super) fn reason(err: &etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
            Some(source) => describe(source),
            None => format!("{:?}: {}", status.code(), status.message()),
        },
        other => describe(other),
    }
}

fn publish(
    target: &EtcdTarget,
    registered: &BTreeMap<String, Endpoint>,
    tx: &watch::Sender<Vec<Endpoint>>,
) {
    let endpoints = endpoints_of(registered);
    if tx.send_if_modified(|current| {
        let changed = *current != endpoints;
        *current = endpoints.clone();
        changed
    }) {
        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        info!(%target, endpoints = %list.join(","), "etcd registrations changed");
    }
}
