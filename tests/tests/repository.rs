//! The repository stands alone: no file points at documents that live outside it (the design
//! notes and research the project started from), since users of the repository do not have them.

use std::path::{Path, PathBuf};

/// Phrases that point outside the repository, built so this file does not contain them.
fn outside() -> Vec<String> {
    vec![
        format!("../{}/", "shared"),
        format!("{}.md", "DESIGN"),
        format!("{} §", "DESIGN"),
    ]
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type().unwrap().is_dir() {
            // Build output, version control and installed packages are not the repository's.
            if !matches!(name.as_ref(), "target" | ".git" | "node_modules") {
                walk(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_file_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    walk(root, &mut files);
    assert!(files.len() > 100, "walked only {} files", files.len());
    let mut found = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not UTF-8 text (binary descriptors, images)
        };
        for phrase in outside() {
            for (n, line) in text.lines().enumerate() {
                if line.contains(&phrase) {
                    found.push(format!("{}:{}: {line}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
