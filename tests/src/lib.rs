//! End-to-end tests of grpc-lb-rs; see the files under `tests/tests/`.
