//! The generated protobuf code in `src/generated/` is committed, so building the crates needs
//! neither `protoc` nor the code generators. This test generates it again from the `.proto`
//! files and fails when the committed copy differs. After changing a `.proto` file, update it
//! with:
//!
//! ```text
//! RINGCACHE_REGENERATE=1 cargo test -p ringcache-proto --test generated
//! ```

use std::path::{Path, PathBuf};

const PROTOS: [&str; 4] = [
    "proto/ringcache/v1/cache.proto",
    "proto/ringcache/v1/cluster.proto",
    "proto/ringcache/v1/admin.proto",
    "proto/ringcache/v1/internal.proto",
];

/// The files generated, as named in `src/generated/`.
const OUTPUTS: [&str; 2] = ["ringcache.v1.rs", "ringcache_descriptor.bin"];

#[test]
fn the_committed_code_matches_the_proto_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ringcache-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("create the output directory");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("the vendored protoc"));
    tonic_prost_build::configure()
        .bytes(".")
        .build_transport(false)
        .out_dir(&out)
        .file_descriptor_set_path(out.join(OUTPUTS[1]))
        .compile_with_config(config, &PROTOS.map(|p| root.join(p)), &[root.join("proto")])
        .expect("generate the code");
    let regenerate = std::env::var_os("RINGCACHE_REGENERATE").is_some();
    let mut stale = Vec::new();
    for name in OUTPUTS {
        let fresh = std::fs::read(out.join(name)).expect("read the generated file");
        let committed_path = root.join("src/generated").join(name);
        if std::fs::read(&committed_path).ok().as_ref() != Some(&fresh) {
            if regenerate {
                std::fs::write(&committed_path, &fresh).expect("write the generated file");
            } else {
                stale.push(name);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        stale.is_empty(),
        "src/generated/{stale:?} no longer match the .proto files: run \
         `RINGCACHE_REGENERATE=1 cargo test -p ringcache-proto --test generated` and commit the result"
    );
}
