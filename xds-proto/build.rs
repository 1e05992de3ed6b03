//! Compiles `proto/` with protox (pure Rust, no `protoc`) and generates the prost messages and the
//! tonic client/server code from the resulting descriptors.

use std::{env, fs, io, path::PathBuf};

/// Every file of the project's schema; imports (the well-known types) are resolved by protox.
const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "envoy/config/core/v3/node.proto",
    "envoy/service/discovery/v3/delta.proto",
    "envoy/service/discovery/v3/ads.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/v1/auth/ca.proto",
    "istio/workload/zds/zds.proto",
    "mesh/waypoint/v1/waypoint.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR unset"))?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    // Imports (the well-known types) are included: prost-build needs every referenced message to
    // decide which derives apply, and a reflection pool needs them to resolve our files. No code
    // is used for them: prost maps `google.protobuf` to prost-types.
    compiler.include_imports(true);
    compiler.include_source_info(true);
    compiler.open_files(PROTOS)?;
    // With source info, so the proto comments become Rust docs.
    let fds = compiler.file_descriptor_set();

    // The exported set drops source info to stay small.
    compiler.include_source_info(false);
    fs::write(
        out_dir.join("file_descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // Only the codegen parts of tonic: no hyper/tower transport in this crate.
        .build_transport(false)
        .build_client(true)
        .build_server(true)
        // Sorted maps make encoding deterministic (content-hash versions, golden bytes).
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
