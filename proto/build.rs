//! Generates the Rust code of `ipam.v1` and `agent.v1` (messages, clients and servers) with
//! tonic-prost-build, using the vendored `protoc` so that no system protoc is needed.

use std::error::Error;
use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "proto/ipam/v1/types.proto",
    "proto/ipam/v1/agent_service.proto",
    "proto/ipam/v1/admin_service.proto",
    "proto/ipam/v1/audit_service.proto",
    "proto/ipam/v1/raft_service.proto",
    "proto/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    // Hand the protoc path to prost-build's Config rather than through the PROTOC environment
    // variable: setting the environment is `unsafe` in edition 2024.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // This crate enables only tonic's `codegen` feature: no `connect()` helpers that need
        // `tonic::transport`. Users build a `Channel` (or any service) and call `Client::new`.
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("ipam_descriptor.bin"))
        .compile_with_config(config, PROTOS, &[PROTO_ROOT])?;
    Ok(())
}
