//! `p3-executor demo` through the built binary: the whole story (grant, forged-variable
//! denial, plain job, audit) must end as expected and never print a token.

use std::process::Command;

use p3_testkit::realm;

#[test]
fn demo_tells_the_whole_story() {
    let missing = realm::missing_tools();
    // Fail loudly rather than silently testing only the plain fallback.
    assert!(
        missing.is_empty(),
        "the demo test needs MIT Kerberos ({missing:?}): {}",
        realm::INSTALL_HINT
    );
    let out = Command::new(env!("CARGO_BIN_EXE_p3-executor"))
        .arg("demo")
        .env("NO_COLOR", "1")
        .env_remove("P3_EXECUTOR_CONFIG")
        .output()
        .expect("run p3-executor demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");

    // a. the release tag: client_prod via the client_uat account, ticket visible to the job.
    for needle in [
        "devstage client_prod granted: deploy stage client_uat, Kerberos principal svc_client_uat@P3.TEST",
        "Default principal: svc_client_uat@P3.TEST",
        "P3_DEVSTAGE=client_prod P3_DEPLOY_STAGE=client_uat P3_SYSTEM_ACCOUNT=svc_client_uat@P3.TEST",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    if nix::unistd::geteuid().is_root() {
        assert!(text.contains("keytab not readable by the job"), "{text}");
        assert!(text.contains("private uid"), "{text}");
    }
    // b. the forged variables: denied by a client_prod rule, the script never ran.
    assert!(
        text.contains("devstage client_prod denied: devstages.client_prod."),
        "{text}"
    );
    assert!(!text.contains("this must never run\n"), "{text}");
    // c. the plain job: no credentials.
    assert!(text.contains("KRB5CCNAME=<none>"), "{text}");
    assert_eq!(text.matches("✔ as expected").count(), 4, "{text}");
    assert!(!text.contains('✘'), "{text}");

    // The audit table: grant, cleanup and deny records, and a verified chain.
    let audit = text
        .split_once("p3-executor audit show")
        .map(|(_, rest)| rest)
        .expect("audit section");
    let has = |event: &str, decision: &str| {
        audit.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.windows(2).any(|w| w == [event, decision])
        })
    };
    assert!(has("grant", "granted"), "{audit}");
    assert!(has("cleanup", "succeeded"), "{audit}");
    assert!(has("deny", "denied"), "{audit}");
    assert!(audit.contains("OK: 3 record(s)"), "{audit}");
    assert!(text.contains("demo: every job ended as expected"), "{text}");

    // Never a token: JWTs start with base64url("{\"") = "eyJ"; job tokens with "glcbt-".
    assert!(!text.contains("eyJ"), "a JWT was printed:\n{text}");
    assert!(!text.contains("glcbt-"), "a job token was printed:\n{text}");
}
