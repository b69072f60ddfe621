//! What a resolver hands the balancer: a watch channel of endpoint lists.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::Endpoint;

/// What a resolver produces: the endpoints, kept up to date in the background, and a
/// way to ask it to look again now.
#[derive(Clone, Debug)]
pub struct Resolution {
    endpoints: watch::Receiver<Vec<Endpoint>>,
    resolve_now: Arc<Notify>,
}

impl Resolution {
    /// A resolution of `endpoints`, which `resolve_now` asks to look again.
    pub(super) fn new(endpoints: watch::Receiver<Vec<Endpoint>>, resolve_now: Arc<Notify>) -> Self {
        Self {
            endpoints,
            resolve_now,
        }
    }

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
