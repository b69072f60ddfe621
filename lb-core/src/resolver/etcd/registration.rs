//! Registering a server in etcd under a lease, for the clients that watch the prefix
//! (the `etcd` and `server` features).

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use rand::{SeedableRng, rngs::SmallRng};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::client::{RECONNECT, REQUEST_TIMEOUT, reason};
use super::{DEFAULT_TTL, EtcdTarget, registration_value};
use crate::{Endpoint, Error};

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
