//! Generates the client of the etcd v3 KV subset in `proto/etcd_kv.proto` with tonic-prost-build
//! and the vendored `protoc` (as `proto/build.rs` does for the IPAM protocol): the etcd benchmark
//! needs no system protoc and no etcd client crate.

use std::error::Error;

const PROTO_ROOT: &str = "proto";
const ETCD_KV: &str = "proto/etcd_kv.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // Only the client; callers build a `Channel` and call `KvClient::new`.
        .build_transport(false)
        .compile_with_config(config, &[ETCD_KV], &[PROTO_ROOT])?;
    Ok(())
}
