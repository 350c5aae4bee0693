//! The demo binary's command line. (Also what makes `cargo test` build `p3-executor-demo`,
//! which the root suite reaches through `p3-executor demo`.)

use std::process::Command;

#[test]
fn demo_help_names_its_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_p3-executor-demo"))
        .args(["demo", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--keep"));
}
