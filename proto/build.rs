//! Generates the tonic/prost code for `proto/ringcache/v1/*.proto` with a vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protos = [
        "proto/ringcache/v1/cache.proto",
        "proto/ringcache/v1/cluster.proto",
        "proto/ringcache/v1/admin.proto",
        "proto/ringcache/v1/internal.proto",
    ];
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".")
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("ringcache_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
