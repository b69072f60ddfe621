//! TLS is off: lb-core was built without its `tls` feature (on by default).
//!
//! The balancer connects with plaintext HTTP/2 only. [`ClientTls`] stands in for the
//! type the balancer's plumbing names, and has no values: nothing can turn TLS on.

use std::time::Duration;

use crate::{Endpoint, Error};

/// TLS settings, which cannot exist without the `tls` feature.
#[derive(Clone, Debug)]
pub enum ClientTls {}

/// What a TLS connection needs: nothing can, here.
pub(crate) type TlsFor = std::convert::Infallible;

impl ClientTls {
    pub(crate) fn with_timeout(self, _: Duration) -> Self {
        match self {}
    }

    pub(crate) fn for_endpoint(&self, _: &Endpoint) -> Result<TlsFor, Error> {
        match *self {}
    }
}

/// No TLS error to explain.
pub(crate) fn explain(_: &(dyn std::error::Error + 'static)) -> Option<String> {
    None
}
