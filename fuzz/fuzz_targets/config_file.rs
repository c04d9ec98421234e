//! The `--config` TOML file through the public loader: `Config::load` with a `Cli` whose only
//! setting is `config` (a per-process temporary file rewritten with each input).
//!
//! Checks, besides "no panic, no abort": an accepted config validates again, its address
//! helpers and `check_secure_bind` do not panic, and its inline `[[users]]` are accepted or
//! refused by `Users::from_entries` without panicking (what the node does at start).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringcache_server::auth::Users;
use ringcache_server::config::{Cli, Config};

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("ringcache-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    std::fs::write(path(), text).expect("write the temporary config file");
    let cli = Cli {
        config: Some(path().clone()),
        ..Cli::default()
    };
    let Ok(config) = Config::load(cli) else {
        return;
    };
    config.validate().expect("a loaded config validates again");
    let grpc = config.grpc_addr();
    let _ = config.advertised(grpc);
    let _ = config.http_addr();
    let _ = config.cluster_addr();
    let _ = config.check_secure_bind();
    let _ = config.missing_protections();
    let _ = config.security.auth_configured();
    if let Ok(users) = Users::from_entries(&config.security.users) {
        assert_eq!(users.len(), config.security.users.len());
    }
    let _ = format!("{config:?}");
});
