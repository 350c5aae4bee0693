//! The generator as packaging/build-deb.sh runs it. Having this test also makes
//! `cargo test --workspace` build the `p3-executor-xtask` binary, which the packaging test in
//! tests/it uses.

use std::process::Command;

fn xtask(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_p3-executor-xtask"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn man_and_completions_write_the_files_they_list() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let pages = xtask(&["man", man.to_str().unwrap()]);
    assert!(pages.len() > 10, "{pages:?}");
    assert!(
        pages.iter().any(|p| p.ends_with("/p3-executor.1")),
        "{pages:?}"
    );
    let completions = dir.path().join("completions");
    let scripts = xtask(&["completions", completions.to_str().unwrap()]);
    assert_eq!(scripts.len(), 3, "{scripts:?}");
    for file in pages.iter().chain(&scripts) {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains("p3-executor"), "{file}");
    }
}

#[test]
fn an_unknown_request_fails_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_p3-executor-xtask"))
        .arg("deb")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
