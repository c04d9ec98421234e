//! The `ringcache` crate can be published: it and every crate it depends on by path
//! (`ringcache-proto`) are publishable with the metadata a registry page needs, while the node,
//! the benchmarks and the test crates stay unpublished.
//!
//! Read through `cargo metadata` (workspace inheritance resolved, as `cargo publish` sees it),
//! offline and without building anything.

use std::{path::Path, process::Command};

use serde_json::Value;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn package<'m>(metadata: &'m Value, name: &str) -> &'m Value {
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no package {name} in the workspace"))
}

/// `publish` is `null` for "any registry" and `[]` for `publish = false`.
fn publishable(package: &Value) -> bool {
    package["publish"].is_null()
}

fn non_empty_string(package: &Value, field: &str) -> String {
    let value = package[field]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(
        !value.is_empty(),
        "{} has no {field} (a registry page needs one)",
        package["name"]
    );
    value
}

fn non_empty_list(package: &Value, field: &str) -> Vec<String> {
    let values: Vec<String> = package[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(!values.is_empty(), "{} has no {field}", package["name"]);
    values
}

#[test]
fn the_client_crate_is_publishable_with_full_metadata() {
    let metadata = metadata();
    let client = package(&metadata, "ringcache");
    assert!(
        publishable(client),
        "ringcache has publish = {} (it must be publishable)",
        client["publish"]
    );
    non_empty_string(client, "description");
    non_empty_string(client, "license");
    non_empty_string(client, "repository");
    let documentation = non_empty_string(client, "documentation");
    assert!(documentation.starts_with("https://"), "{documentation}");

    let keywords = non_empty_list(client, "keywords");
    assert!(keywords.len() <= 5, "crates.io takes at most 5 keywords");
    for keyword in &keywords {
        assert!(
            keyword.len() <= 20
                && keyword
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "crates.io refuses the keyword {keyword:?}"
        );
    }
    let categories = non_empty_list(client, "categories");
    assert!(
        categories.len() <= 5,
        "crates.io takes at most 5 categories"
    );

    // The readme the registry shows is the crate's own, inside the package.
    let readme = non_empty_string(client, "readme");
    let manifest_dir = Path::new(client["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    let readme_path = manifest_dir.join(&readme);
    assert!(
        readme_path.starts_with(&manifest_dir),
        "the readme {readme} is outside the package"
    );
    let text = std::fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme_path.display()));
    assert!(
        text.contains("Client::connect") && text.contains("[dependencies]"),
        "{} does not show how to use the crate",
        readme_path.display()
    );
}

#[test]
fn what_the_client_depends_on_by_path_is_publishable_too() {
    let metadata = metadata();
    let client = package(&metadata, "ringcache");
    let mut path_dependencies = 0;
    for dependency in client["dependencies"].as_array().unwrap() {
        if dependency["kind"] == "dev" || dependency["path"].is_null() {
            continue;
        }
        path_dependencies += 1;
        let name = dependency["name"].as_str().unwrap();
        assert_ne!(
            dependency["req"], "*",
            "the path dependency {name} has no version: a published crate could not resolve it"
        );
        let target = package(&metadata, name);
        assert!(
            publishable(target),
            "ringcache depends on {name}, which is not publishable"
        );
        non_empty_string(target, "description");
        non_empty_string(target, "license");
    }
    assert!(
        path_dependencies >= 1,
        "ringcache-proto is a path dependency"
    );
}

#[test]
fn the_node_benchmarks_and_tests_stay_unpublished() {
    let metadata = metadata();
    for name in ["ringcache-server", "ringcache-bench", "ringcache-tests"] {
        let package = package(&metadata, name);
        assert_eq!(
            package["publish"],
            Value::Array(Vec::new()),
            "{name} must keep publish = false"
        );
    }
}

/// Library users pay for the client only: the default features are empty, and what only the
/// `ringctl` CLI needs is optional, behind `cli`.
#[test]
fn the_default_features_are_the_client_alone() {
    let metadata = metadata();
    let client = package(&metadata, "ringcache");
    let default = client["features"]["default"].as_array().unwrap();
    assert!(default.is_empty(), "default features: {default:?}");
    let cli: Vec<&str> = client["features"]["cli"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for only_cli in ["clap", "clap_complete", "indicatif", "anyhow", "humantime"] {
        let dependency = client["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == only_cli && d["kind"].is_null())
            .unwrap_or_else(|| panic!("no dependency {only_cli}"));
        assert_eq!(dependency["optional"], true, "{only_cli} is not optional");
        assert!(
            cli.contains(&format!("dep:{only_cli}").as_str()),
            "{only_cli} is not behind `cli`: {cli:?}"
        );
    }
    let ringctl = client["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ringctl")
        .expect("the ringctl binary");
    assert_eq!(ringctl["required-features"], serde_json::json!(["cli"]));
}
