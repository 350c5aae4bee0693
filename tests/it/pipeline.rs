//! This project's own `.gitlab-ci.yml` is valid GitLab CI (checked by gitlab-ci-local against
//! GitLab's schema) and publishes only from release tags.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn list(dir: &Path, vars: &[&str]) -> BTreeSet<String> {
    let out = Command::new("gitlab-ci-local")
        .arg("--list")
        .args(vars)
        .args([
            "--ignore-predefined-vars",
            "CI_COMMIT_BRANCH,CI_COMMIT_TAG,CI_COMMIT_REF_PROTECTED,CI_DEFAULT_BRANCH",
        ])
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .expect("run gitlab-ci-local");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "gitlab-ci-local rejected .gitlab-ci.yml:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("name "));
    lines.next().expect("a --list table");
    lines
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn project_pipeline_is_valid_and_publishes_only_release_tags() {
    assert!(
        which::which("gitlab-ci-local").is_ok(),
        "gitlab-ci-local is not installed: npm i -g gitlab-ci-local@4.73.0 && apt-get install -y rsync (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let yml = Path::new(env!("CARGO_MANIFEST_DIR")).join(".gitlab-ci.yml");
    std::fs::copy(&yml, dir.path().join(".gitlab-ci.yml")).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.email=ci@example.com",
            "-c",
            "user.name=ci",
            "commit",
            "-q",
            "-m",
            "ci",
        ],
    ] {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let branch = list(dir.path(), &["--variable", "CI_COMMIT_BRANCH=main"]);
    assert_eq!(branch, names(&["fmt", "clippy", "test", "build"]));
    let release = list(dir.path(), &["--variable", "CI_COMMIT_TAG=v1.4.0"]);
    assert_eq!(
        release,
        names(&["fmt", "clippy", "test", "build", "publish"])
    );
    let other_tag = list(dir.path(), &["--variable", "CI_COMMIT_TAG=nightly"]);
    assert!(!other_tag.contains("publish"), "{other_tag:?}");
}
