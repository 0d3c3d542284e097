//! Compiles `proto/` into Rust (prost + tonic), a file descriptor set for gRPC reflection, and
//! serde impls following protobuf's canonical JSON mapping (pbjson) for the queue body.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("carrier_ingest_descriptor.bin");
    let protos = ["proto/carrier/ingest/v1/ingest.proto"];

    let mut config = prost_build::Config::new();
    // A vendored protoc keeps the build self-contained on a fresh machine; PROTOC overrides it.
    match env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(config, &protos, &["proto"])?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".carrier.ingest.v1"])?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
