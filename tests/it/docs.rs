//! The documentation names only paths that exist: every `src/…`, `crates/…` and `tests/…` path
//! in the README, ARCHITECTURE.md, docs/ and the example config is in the tree, so a move or a
//! rename that leaves a doc behind fails here.

use std::path::Path;

/// The paths under `src/`, `crates/` or `tests/` that `text` names.
fn named_paths(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for prefix in ["src/", "crates/", "tests/"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix).map(|i| i + from) {
            from = i + prefix.len();
            // A word of its own: not `target/tmp/tests/…` or `/usr/src/…`.
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || b"/._-".contains(&bytes[i - 1])) {
                continue;
            }
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
                .map_or(text.len(), |n| i + n);
            let path = text[i..end].trim_end_matches(['.', ',']);
            out.push(path.to_string());
        }
    }
    out
}

#[test]
fn named_paths_are_found_and_only_whole_words() {
    let text = "see `src/runner/`, tests/it/main.rs. and target/tmp/tests/x and /usr/src/linux";
    assert_eq!(named_paths(text), ["src/runner/", "tests/it/main.rs"]);
}

#[test]
fn every_path_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("executor-config/config.toml"),
    ];
    for dir in ["docs", "executor-config/example-project"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path
                .extension()
                .is_some_and(|e| e == "md" || e == "toml" || e == "yml")
            {
                docs.push(path);
            }
        }
    }
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for path in named_paths(&text) {
            if !root.join(&path).exists() {
                missing.push(format!(
                    "{}: {path}",
                    doc.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs name paths that are not in the tree:\n{}",
        missing.join("\n")
    );
}
