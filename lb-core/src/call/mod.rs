//! Layer 5, the call: everything that happens to one call between the balancer's
//! `tower::Service` and the wire.
//!
//! 1. Pick (`pick.rs`): the policy's picker chooses from the pool's current snapshot,
//!    without a lock; when no endpoint is usable, the call waits while one is still
//!    connecting.
//! 2. Send (`attempt.rs`): the call is counted in flight on its endpoint and sent on
//!    the endpoint's connection, within its deadline (`headers.rs` reads and writes
//!    `grpc-timeout`); the response body (`response.rs`) keeps it counted until it
//!    ends and reports how it ended.
//! 3. Retry (`retry.rs`): an attempt that never reached a server, or was cut off with
//!    its connection, goes to another endpoint, within the retry budget
//!    (`budget.rs`); a method's `retryPolicy` retries by status too, with backoff and
//!    pushback. The request body is kept for that (`replay.rs`).
//! 4. Hedge (`hedge.rs`): a method's `hedgingPolicy` sends the call again elsewhere
//!    each time its delay passes without an answer; the first answer wins.
//!
//! All of it reads one `Router` (`router.rs`), what every clone of a balancer shares.
//!
//! May import: `subchannels`, `transport`, `policy`, `service_config`, `state`,
//! `endpoint`, `error`, `clock`, `sync`, `orca`.

pub(crate) mod attempt;
pub mod budget;
pub(crate) mod headers;
pub(crate) mod hedge;
pub(crate) mod pick;
pub(crate) mod replay;
pub mod response;
pub(crate) mod retry;
pub(crate) mod router;

pub use budget::RetryPolicy;
pub use response::{PickedEndpoint, ResponseBody};
