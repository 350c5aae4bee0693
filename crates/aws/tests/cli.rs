//! The binary's own contract with the executor: exit codes and messages for a host that has
//! not configured what it is asked to do. (The end-to-end behaviour against a real S3 and STS
//! is in the root package's tests/it/fleet.rs and web_identity.rs; building this test also
//! builds the binary they exec.)

use std::process::Command;

fn aws() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p3-executor-aws"))
}

#[test]
fn ship_without_audit_s3_says_what_to_configure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("state_root = {:?}\n", dir.path().join("state")),
    )
    .unwrap();
    let out = aws()
        .arg("--config")
        .arg(&config)
        .args(["audit", "ship"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no [audit.s3] in the config"), "{stderr}");
}

#[test]
fn the_timer_units_ship_does_nothing_without_audit_s3() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "gc_max_age_secs = 60\n").unwrap();
    let out = aws()
        .arg("--config")
        .arg(&config)
        .args(["audit", "ship", "--if-configured"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing is shipped"));
}

#[test]
fn a_bad_uri_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "gc_max_age_secs = 60\n").unwrap();
    let out = aws()
        .arg("--config")
        .arg(&config)
        .args(["audit", "verify", "--s3", "fleet/audit"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not an s3://bucket/prefix URI"),
        "{stderr}"
    );
}
