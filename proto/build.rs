//! Compiles `example.proto` with a vendored `protoc`, so a fresh machine needs no system install.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Honour a user's own PROTOC (as prost-build does); otherwise use the binary that
    // protoc-bin-vendored ships inside its crate for this platform.
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    // The descriptor set is embedded in the crate so that the server can offer
    // reflection (grpcurl lists and describes MyService without the .proto file).
    let descriptor = PathBuf::from(env::var("OUT_DIR")?).join("example_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_with_config(config, &["example.proto"], &["."])?;

    // The xDS ORCA protos (load reports), for the tests that check lb-core's own
    // declaration of them against protoc's; google/protobuf/duration.proto comes with
    // the vendored protoc.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    });
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known
        .to_str()
        .ok_or("the vendored protoc's include path is not UTF-8")?;
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "xds/data/orca/v3/orca_load_report.proto",
            "xds/service/orca/v3/orca.proto",
        ],
        &[".", well_known],
    )?;
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
