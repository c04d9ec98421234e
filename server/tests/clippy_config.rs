//! server/clippy.toml replaces the workspace root's clippy.toml for this crate (clippy reads only
//! the nearest one): it must repeat every rule of the root's, and keep the server's own.

use std::collections::BTreeSet;
use std::path::Path;

/// The `path`s of the entries of `list` (`disallowed-types`, `disallowed-methods`) in `file`.
fn paths(file: &Path, list: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let config: toml::Table = text.parse().unwrap();
    let Some(entries) = config.get(list) else {
        return BTreeSet::new();
    };
    entries
        .as_array()
        .unwrap_or_else(|| panic!("{}: {list} is not a list", file.display()))
        .iter()
        .map(|entry| match entry {
            toml::Value::String(path) => path.clone(),
            toml::Value::Table(entry) => entry["path"].as_str().unwrap().to_owned(),
            other => panic!("{}: unexpected {list} entry {other}", file.display()),
        })
        .collect()
}

#[test]
fn the_server_lint_config_repeats_the_root_one_and_forbids_tonic_status() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = server.parent().unwrap();
    for list in ["disallowed-types", "disallowed-methods"] {
        let ours = paths(&server.join("clippy.toml"), list);
        let missing: Vec<_> = paths(&root.join("clippy.toml"), list)
            .into_iter()
            .filter(|path| !ours.contains(path))
            .collect();
        assert!(
            missing.is_empty(),
            "server/clippy.toml lacks the root's {list}: {missing:?}"
        );
    }
    let types = paths(&server.join("clippy.toml"), "disallowed-types");
    for path in ["tonic::Status", "tonic::Code"] {
        assert!(types.contains(path), "{path} is not a disallowed type");
    }
}
