//! The part of etcd discovery that talks to etcd (with `etcd-client`, whose build
//! needs `protoc`): watching a prefix, and registering under a lease. Behind the
//! `etcd` feature.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use rand::{SeedableRng, rngs::SmallRng};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{DEFAULT_TTL, EtcdTarget, endpoints_of, parse_registration, registration_value};
use crate::{Backoff, Endpoint, Error, error::describe};

/// How long connecting to etcd, or one request to it, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnects to etcd: from 250 ms up to 10 s apart.
const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(250),
    multiplier: 1.6,
    jitter: 0.2,
    max: Duration::from_secs(10),
};

impl EtcdTarget {
    async fn connect(&self) -> Result<Client, Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        Client::connect(&self.cluster, Some(options))
            .await
            .map_err(|e| self.error("cannot connect", &e))
    }

    fn error(&self, what: &str, err: &etcd_client::Error) -> Error {
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
fn reason(err: &etcd_client::Error) -> String {
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

/// A server's registration in etcd: its keys, kept alive by a lease.
///
/// Dropping it stops the renewals (the keys then expire with the lease, as after a
/// crash); [`Registration::deregister`] removes them at once.
///
/// ```no_run
/// # async fn demo() -> Result<(), lb_core::Error> {
/// use lb_core::resolver::{Target, etcd::Registration};
///
/// let Target::Etcd(target) = "etcd://127.0.0.1:2379/greeter".parse()? else { unreachable!() };
/// let me = "127.0.0.1:50051".parse()?;
/// let registration = Registration::register(&target, vec![me], Registration::DEFAULT_TTL).await?;
/// // ... serve ...
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
pub struct Registration {
    target: EtcdTarget,
    lease: watch::Receiver<i64>,
    task: JoinHandle<()>,
    client: Client,
}

impl Registration {
    /// How long a registration outlives its server's last renewal, by default.
    pub const DEFAULT_TTL: Duration = DEFAULT_TTL;

    /// Registers `endpoints` under `target`'s prefix with a lease of `ttl` (at least
    /// 2 s, etcd's minimum), and renews it in the background.
    pub async fn register(
        target: &EtcdTarget,
        endpoints: Vec<Endpoint>,
        ttl: Duration,
    ) -> Result<Self, Error> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let mut client = target.connect().await?;
        let lease = put_under_lease(target, &mut client, &endpoints, ttl_secs).await?;
        let keys: Vec<String> = endpoints.iter().map(|e| target.key_for(e)).collect();
        info!(%target, keys = %keys.join(","), lease, ttl = ttl_secs, "registered in etcd");
        let (lease_tx, lease_rx) = watch::channel(lease);
        let task = tokio::spawn(keep_alive(
            target.clone(),
            client.clone(),
            endpoints,
            ttl_secs,
            lease_tx,
        ));
        Ok(Self {
            target: target.clone(),
            lease: lease_rx,
            task,
            client,
        })
    }

    /// The lease the keys live under now.
    pub fn lease(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Removes the registration now: revokes the lease, which deletes its keys.
    pub async fn deregister(mut self) -> Result<(), Error> {
        // Stopped first and waited for, so that it cannot grant a new lease after the
        // one read here.
        self.task.abort();
        let _ = (&mut self.task).await;
        let lease = self.lease();
        let revoked = tokio::time::timeout(REQUEST_TIMEOUT, self.client.lease_revoke(lease)).await;
        match revoked {
            Ok(Ok(_)) => {
                info!(target = %self.target, lease, "deregistered from etcd");
                Ok(())
            }
            Ok(Err(err)) => Err(self.target.error("cannot revoke the lease", &err)),
            Err(_) => Err(Error::Discovery {
                target: self.target.to_string(),
                reason: format!("cannot revoke the lease: no answer within {REQUEST_TIMEOUT:?}"),
            }),
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("target", &self.target.to_string())
            .field("lease", &self.lease())
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Grants a lease and puts every endpoint's key under it.
async fn put_under_lease(
    target: &EtcdTarget,
    client: &mut Client,
    endpoints: &[Endpoint],
    ttl_secs: i64,
) -> Result<i64, Error> {
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| target.error("cannot grant a lease", &e))?
        .id();
    for endpoint in endpoints {
        let put = client
            .put(
                target.key_for(endpoint),
                registration_value(endpoint),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await;
        if let Err(err) = put {
            // Take back the keys already written: half a registration is a lie.
            let _ = client.lease_revoke(lease).await;
            return Err(target.error("cannot register", &err));
        }
    }
    Ok(lease)
}

/// Renews the lease every third of its time-to-live. If the lease is lost (etcd
/// answers with a TTL of 0: it expired, as after a long network cut), registers again
/// under a new one; if etcd cannot be reached, tries again with backoff.
async fn keep_alive(
    target: EtcdTarget,
    mut client: Client,
    endpoints: Vec<Endpoint>,
    ttl_secs: i64,
    lease_tx: watch::Sender<i64>,
) {
    let period = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(2)) / 3;
    let mut failures = 0;
    let mut rng = SmallRng::seed_from_u64(lease_tx.borrow().unsigned_abs());
    loop {
        let lease = *lease_tx.borrow();
        let trouble = renew(&mut client, lease, period, &mut failures).await;
        let delay = RECONNECT.delay(failures, &mut rng).min(period);
        failures = failures.saturating_add(1);
        warn!(%target, lease, %trouble, retry_in = ?delay, "etcd lease renewal interrupted");
        tokio::time::sleep(delay).await;
        if trouble == LEASE_LOST {
            match put_under_lease(&target, &mut client, &endpoints, ttl_secs).await {
                Ok(lease) => {
                    info!(%target, lease, "registered in etcd again under a new lease");
                    lease_tx.send_replace(lease);
                }
                Err(err) => warn!("{err}"),
            }
        }
    }
}

const LEASE_LOST: &str = "the lease expired";

/// Sends keep-alives on one stream until it fails; returns why.
async fn renew(client: &mut Client, lease: i64, period: Duration, failures: &mut u32) -> String {
    let (mut keeper, mut answers) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(err) => return reason(&err),
    };
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        if let Err(err) = keeper.keep_alive().await {
            return reason(&err);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, answers.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => *failures = 0,
            Ok(Ok(Some(_))) => return LEASE_LOST.into(),
            Ok(Ok(None)) => return "the keep-alive stream ended".into(),
            Ok(Err(err)) => return reason(&err),
            Err(_) => return format!("no keep-alive answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}
