//! Without the `dns` feature: a `dns:///` target still parses, and resolving it says
//! what to turn on.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};

use crate::Endpoint;

pub(super) async fn resolve(
    _host: &str,
    _port: u16,
    _server: Option<SocketAddr>,
    _refresh: Duration,
    _resolve_now: Arc<Notify>,
) -> Result<watch::Receiver<Vec<Endpoint>>, String> {
    Err(
        "DNS resolution needs lb-core's `dns` feature (on by default): \
         enable it, or list the servers as host:port"
            .into(),
    )
}
