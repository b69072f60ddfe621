//! Layer 3, the transport: one HTTP/2 connection to one address, and nothing more.
//!
//! What it knows is how bytes reach a server: open a TCP connection (`connector.rs`),
//! with TLS when asked ([`tls`]), drive hyper's HTTP/2 client on it (`wire.rs`: a
//! `Wire` is a cheap handle on which calls are sent), ping it when its calls get
//! no answer ([`liveness`]), count its streams against the server's limit
//! (`streams.rs`), and say what an error on it means (`errors.rs`: never sent, the
//! connection gone, GOAWAY). It knows nothing of endpoints' health, of policies or of
//! retries: the layers above decide what to do with a connection.
//!
//! ```text
//! connector.rs ──TCP (+TLS)──▶ wire.rs ──HTTP/2 (hyper)──▶ the server
//!                                 │ streams.rs: streams open / the server's limit
//!                                 └ liveness.rs: pings while calls wait
//! ```
//!
//! May import: `endpoint`, `error`, `sync`.

pub(crate) mod connector;
pub(crate) mod errors;
pub mod liveness;
pub(crate) mod streams;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "tls_off.rs"]
pub mod tls;
pub(crate) mod wire;

pub use connector::connect;
pub use liveness::Liveness;
