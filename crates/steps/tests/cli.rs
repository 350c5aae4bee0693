//! The steps binary's own command line. (Also what makes `cargo test` build
//! `p3-executor-steps`, which the root suite reaches through `p3-executor <step>`.)

use std::process::Command;

fn steps() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p3-executor-steps"))
}

#[test]
fn help_lists_every_step_under_the_name_users_type() {
    let out = steps().arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: p3-executor"), "{text}");
    for step in ["s3", "image", "p3", "release"] {
        assert!(
            text.contains(&format!("  {step} ")),
            "{step} missing: {text}"
        );
    }
}

#[test]
fn bad_usage_is_exit_code_2_with_the_reason() {
    let out = steps().args(["s3", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}
