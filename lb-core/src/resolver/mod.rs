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

//!
//! May import: `endpoint`, `locality`, `error`, `backoff`.

mod attributes;
#[cfg_attr(not(feature = "dns"), path = "no_dns.rs")]
mod dns;
pub mod etcd;
mod file;
mod resolution;
mod target;

use std::time::Duration;

pub use etcd::EtcdTarget;
pub use file::{
    FILE_POLL_INTERVAL, MAX_ENDPOINTS_FILE_BYTES, parse_endpoints_json, read_endpoints_file,
};
pub use resolution::Resolution;
pub use target::Target;

/// DNS resolves again on request at most this often. (grpc-go waits at least 30 s
/// between resolutions; one second finds a replaced pod sooner, and reconnect backoff
/// already spaces out the failures that ask.)
pub const DNS_RESOLVE_NOW_MIN: Duration = Duration::from_secs(1);

/// How often a DNS target is re-resolved unless told otherwise (as gRPC does).
pub const DNS_REFRESH: Duration = Duration::from_secs(30);
/// The shortest re-resolution interval allowed, so that a fleet of clients cannot
/// flood its DNS server. (Tests use their own resolver settings, not this.)
pub const DNS_MIN_REFRESH: Duration = Duration::from_millis(100);
