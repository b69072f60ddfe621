//! Layer 4, the subchannels: every endpoint the balancer has, kept connected and
//! healthy, and the snapshot of the usable ones that calls read.
//!
//! A *subchannel* (gRPC's word) is one endpoint with its connection (`subchannel.rs`).
//! A task per endpoint connects it, watches its health with `grpc.health.v1`, notices
//! the connection go and reconnects with gRPC's backoff (`connection.rs`); it opens
//! more connections when one is full (`scaling.rs`, gRFC A105) and reads out-of-band
//! load reports (`load_reports.rs`). The *pool* (`pool.rs`) is the set of them: it
//! applies membership changes in one step and publishes, after every change, a
//! snapshot of the usable endpoints with a picker built for them by the policy.
//! Outlier detection (`outlier.rs` for its settings, `ejection.rs` for the algorithm)
//! takes endpoints whose calls keep failing out of that snapshot for a while.
//!
//! ```text
//!   pool.rs ── membership ──▶ subchannel.rs ◀── connection.rs (one task each)
//!      │                         │   health, backoff, load_reports.rs, scaling.rs
//!      └─ publish ─▶ Snapshot { usable endpoints, their wires, a picker }
//!                      ▲ ejection.rs leaves out the outliers
//! ```
//!
//! May import: `transport`, `policy`, `service_config`, `state`, `endpoint`, `error`,
//! `clock`, `sync`, `backoff`, `latency`, `histogram`, `orca`, `json`.

pub(crate) mod connection;
pub(crate) mod ejection;
pub(crate) mod load_reports;
pub mod outlier;
pub(crate) mod pool;
pub(crate) mod scaling;
pub(crate) mod subchannel;

pub use outlier::{FailurePercentage, OutlierDetection, SuccessRate};
pub use subchannel::{EndpointStatus, Health};
