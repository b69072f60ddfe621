//! The article's `example.proto`, compiled by tonic.
//!
//! ```proto
//! package example;
//! service MyService { rpc SayHello (HelloRequest) returns (HelloResponse) {} }
//! message HelloRequest  { string name = 1; }
//! message HelloResponse { string message = 1; }
//! ```
//!
//! The generated code lives in [`example`]; the most used items are re-exported at the
//! crate root:
//!
//! - [`MyServiceClient`]: the client stub. It is generic over any
//!   `tower::Service<http::Request<tonic::body::Body>>`, which is how `lb-core`'s
//!   balancer slides in underneath it.
//! - [`MyService`] and [`MyServiceServer`]: the trait a server implements and the
//!   tonic service that routes `/example.MyService/SayHello` to it.

/// Code generated from `example.proto` (package `example`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod example {
    tonic::include_proto!("example");
}

pub use example::my_service_client::MyServiceClient;
pub use example::my_service_server::{MyService, MyServiceServer};
pub use example::{HelloRequest, HelloResponse};

/// The xDS ORCA load report and service (`proto/xds/`), compiled by protoc; lb-core has
/// its own declaration of the same messages (`lb_core::orca`), checked against these.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod xds {
    /// `xds.data.orca.v3`.
    pub mod data {
        /// `xds.data.orca.v3`.
        pub mod orca {
            /// `xds.data.orca.v3`.
            pub mod v3 {
                tonic::include_proto!("xds.data.orca.v3");
            }
        }
    }
    /// `xds.service.orca.v3`.
    pub mod service {
        /// `xds.service.orca.v3`.
        pub mod orca {
            /// `xds.service.orca.v3`.
            pub mod v3 {
                tonic::include_proto!("xds.service.orca.v3");
            }
        }
    }
}

/// The encoded `FileDescriptorSet` of `example.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("example_descriptor");

/// The fully qualified service name, as health checks and reflection spell it.
pub const SERVICE_NAME: &str = "example.MyService";

/// The response metadata in which this repository's greeter-server says who it is
/// (`x-served-by: 127.0.0.1:50051`), so that a client sees where each call went
/// without any change to `example.proto`.
pub const SERVED_BY: &str = "x-served-by";
