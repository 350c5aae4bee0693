//! Job identity end to end: real RS256 tokens signed by the test, the JWKS served over HTTP on
//! loopback by a request-counting server, `identity::verify`, and `policy::decide`.

use crate::common::tokens;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use p3_executor::config::{Config, RefType};
use p3_executor::identity::{self, Identity, IdentityError, IdentitySource, JwksStore};
use p3_executor::job::JobContext;
use p3_executor::policy::{self, Decision};
use serde_json::{Value, json};
use tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims, job_payload_json};

const AUD: &str = "p3-executor";
const JOB_ID: u64 = 4242;

/// Accounts and devstages as the team uses them: prod deploys with the UAT account.
const POLICY: &str = r#"
[accounts.client_dev]
principal = "svc_client_dev@EXAMPLE.COM"
keytab = "/etc/p3-executor/keytabs/client_dev.keytab"

[accounts.client_uat]
principal = "svc_client_uat@EXAMPLE.COM"
keytab = "/etc/p3-executor/keytabs/client_uat.keytab"

[devstages.client_dev]
deploy_account = "client_dev"
projects = ["client/*"]

[devstages.client_uat]
deploy_account = "client_uat"
projects = ["client/*"]
protected_ref = true
pipeline_sources = ["push", "web", "schedule"]

[devstages.client_prod]
deploy_account = "client_uat"
projects = ["client/*"]
ref_types = ["tag"]
protected_ref = true
tag_pattern = '^v\d+\.\d+\.\d+$'
pipeline_sources = ["push", "web"]
"#;

/// A verifier set-up: one signing key, its JWKS on loopback, a private state root.
struct Fixture {
    minter: TokenMinter,
    jwks: JwksServer,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let minter = TokenMinter::new();
        let jwks = JwksServer::start(&minter.jwks_json());
        Self {
            minter,
            jwks,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// Config pointing at this fixture's JWKS; `extra` lines go into `[identity]`.
    fn config(&self, extra: &str) -> Config {
        config_with(self.state.path(), &self.jwks.url, extra)
    }

    fn claims(&self, ref_name: &str, ref_type: &str, protected: bool) -> Value {
        gitlab_claims(
            ISSUER,
            AUD,
            JOB_ID,
            "client/app",
            ref_name,
            ref_type,
            protected,
        )
    }
}

fn config_with(state: &std::path::Path, jwks_url: &str, extra: &str) -> Config {
    let text = format!(
        "state_root = {state:?}\n[identity]\ngitlab_url = {ISSUER:?}\njwks_url = {jwks_url:?}\n{extra}\n{POLICY}"
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

fn job_with(vars: &[(&str, &str)]) -> JobContext {
    JobContext::from_json(job_payload_json(JOB_ID, vars).as_bytes()).unwrap()
}

fn job(token: &str) -> JobContext {
    job_with(&[("P3_ID_TOKEN", token)])
}

/// Verification must fail; the error must never contain the token.
fn denied(cfg: &Config, token: &str) -> IdentityError {
    let err = identity::verify(cfg, &job(token)).expect_err("token must be rejected");
    let text = err.to_string();
    assert!(
        !token.is_empty() && !text.contains(token),
        "token leaked: {text}"
    );
    // Not even the signature part alone.
    if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() > 16) {
        assert!(!text.contains(sig), "signature leaked: {text}");
    }
    err
}

#[test]
fn valid_token_yields_the_signed_identity() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let mut claims = fx.claims("main", "branch", true);
    claims["environment"] = json!("uat");
    claims["environment_protected"] = json!("false");
    let token = fx.minter.mint(claims.clone());
    let id = identity::verify(&cfg, &job(&token)).unwrap();
    assert_eq!(id.project_path, "client/app");
    assert_eq!(id.namespace_path, "client");
    assert_eq!(id.project_id, 12);
    assert_eq!(id.ref_name, "main");
    assert_eq!(id.ref_type, RefType::Branch);
    assert!(id.ref_protected);
    assert_eq!(id.ref_path, "refs/heads/main");
    assert_eq!(id.environment.as_deref(), Some("uat"));
    assert!(!id.environment_protected);
    assert_eq!(id.pipeline_source, "push");
    assert_eq!(id.pipeline_id, 900);
    assert_eq!(id.user_login, "alice");
    assert_eq!(id.job_id, JOB_ID);
    assert_eq!(id.jti, claims["jti"].as_str().unwrap());
    assert_eq!(id.sha, claims["sha"].as_str().unwrap());
    assert_eq!(id.source, IdentitySource::IdToken);
}

#[test]
fn issuer_with_trailing_slash_in_config_still_matches() {
    let fx = Fixture::new();
    let mut cfg = fx.config("");
    cfg.identity.gitlab_url = format!("{ISSUER}/");
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    identity::verify(&cfg, &job(&token)).unwrap();
}

#[test]
fn expired_token_is_denied_but_leeway_is_honoured() {
    let fx = Fixture::new();
    let cfg = fx.config("leeway_secs = 30");
    let mut claims = fx.claims("main", "branch", true);
    claims["iat"] = json!(tokens::now() - 7200);
    claims["nbf"] = json!(tokens::now() - 7200);
    claims["exp"] = json!(tokens::now() - 120);
    let err = denied(&cfg, &fx.minter.mint(claims.clone()));
    assert!(matches!(err, IdentityError::Expired { .. }), "{err}");
    assert!(!err.is_system());

    // Ten seconds past exp is within the 30 s clock-skew allowance.
    claims["exp"] = json!(tokens::now() - 10);
    identity::verify(&cfg, &job(&fx.minter.mint(claims))).unwrap();
}

#[test]
fn token_from_the_future_is_denied() {
    let fx = Fixture::new();
    let cfg = fx.config("leeway_secs = 30");
    let mut claims = fx.claims("main", "branch", true);
    claims["nbf"] = json!(tokens::now() + 600);
    let err = denied(&cfg, &fx.minter.mint(claims));
    assert!(
        matches!(err, IdentityError::NotYetValid { claim: "nbf" }),
        "{err}"
    );

    let mut claims = fx.claims("main", "branch", true);
    claims["iat"] = json!(tokens::now() + 600);
    let err = denied(&cfg, &fx.minter.mint(claims));
    assert!(
        matches!(err, IdentityError::NotYetValid { claim: "iat" }),
        "{err}"
    );
}

#[test]
fn wrong_audience_is_denied_and_named() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let claims = gitlab_claims(
        ISSUER,
        "vault",
        JOB_ID,
        "client/app",
        "main",
        "branch",
        true,
    );
    let err = denied(&cfg, &fx.minter.mint(claims));
    match &err {
        IdentityError::WrongAudience { expected, got } => {
            assert_eq!(expected, AUD);
            assert_eq!(got, &vec!["vault".to_string()]);
        }
        other => panic!("{other}"),
    }
    assert!(!err.is_system());
    assert!(err.to_string().contains("aud: p3-executor"), "{err}");

    // A list of audiences that includes ours is fine (GitLab allows `aud: [a, b]`).
    let mut claims = fx.claims("main", "branch", true);
    claims["aud"] = json!(["vault", AUD]);
    identity::verify(&cfg, &job(&fx.minter.mint(claims))).unwrap();
}

#[test]
fn wrong_issuer_is_denied() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let claims = gitlab_claims(
        "https://gitlab.evil.example",
        AUD,
        JOB_ID,
        "client/app",
        "main",
        "branch",
        true,
    );
    let err = denied(&cfg, &fx.minter.mint(claims));
    match &err {
        IdentityError::WrongIssuer { expected, got } => {
            assert_eq!(expected, ISSUER);
            assert_eq!(got, "https://gitlab.evil.example");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn token_for_another_job_is_denied() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    // A perfectly valid token, but minted for job 4241 and replayed in job 4242.
    let claims = gitlab_claims(
        ISSUER,
        AUD,
        JOB_ID - 1,
        "client/app",
        "main",
        "branch",
        true,
    );
    let err = denied(&cfg, &fx.minter.mint(claims));
    assert!(
        matches!(err, IdentityError::JobMismatch { token_job_id, payload_job_id }
            if token_job_id == JOB_ID - 1 && payload_job_id == JOB_ID),
        "{err}"
    );
}

#[test]
fn signature_by_another_key_is_denied() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    // Same kid as GitLab's key, different private key.
    let forger = TokenMinter::with_kid(fx.minter.kid());
    let err = denied(&cfg, &forger.mint(fx.claims("main", "branch", true)));
    assert!(matches!(err, IdentityError::BadSignature), "{err}");
    assert!(!err.is_system());

    // A valid token whose payload was swapped after signing is just as dead.
    let good = fx.minter.mint(fx.claims("feature/x", "branch", false));
    let evil = fx.minter.mint(fx.claims("main", "branch", true));
    let parts_good: Vec<&str> = good.split('.').collect();
    let parts_evil: Vec<&str> = evil.split('.').collect();
    let spliced = format!("{}.{}.{}", parts_good[0], parts_evil[1], parts_good[2]);
    assert!(matches!(
        denied(&cfg, &spliced),
        IdentityError::BadSignature
    ));
}

#[test]
fn alg_none_and_hmac_tokens_are_denied() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let claims = fx.claims("main", "branch", true);
    let err = denied(&cfg, &tokens::unsigned_token(&claims, fx.minter.kid()));
    assert!(!err.is_system(), "{err}");
    assert!(
        matches!(
            err,
            IdentityError::Malformed { .. } | IdentityError::Algorithm { .. }
        ),
        "{err}"
    );
    // HS256 keyed with the public modulus: the classic RS/HS confusion.
    let n = fx.minter.jwk()["n"].as_str().unwrap().to_string();
    let err = denied(
        &cfg,
        &tokens::hs256_token(&claims, fx.minter.kid(), n.as_bytes()),
    );
    assert!(
        matches!(err, IdentityError::Algorithm { ref alg } if alg == "HS256"),
        "{err}"
    );
    assert!(matches!(
        denied(&cfg, "not-a-jwt"),
        IdentityError::Malformed { .. }
    ));
}

#[test]
fn missing_token_says_what_to_add_to_gitlab_ci_yml() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let err = identity::verify(&cfg, &job_with(&[("P3_DEVSTAGE", "client_uat")])).unwrap_err();
    assert!(matches!(err, IdentityError::MissingToken { .. }), "{err}");
    assert!(!err.is_system());
    assert!(
        err.to_string()
            .contains("id_tokens:\n  P3_ID_TOKEN:\n    aud: p3-executor"),
        "{err}"
    );
    // A configured variable name and audience show up in the advice.
    let cfg = fx.config("token_variable = \"GITLAB_OIDC\"\naudience = \"https://p3.example\"");
    let err = identity::verify(&cfg, &job(&"x".repeat(10))).unwrap_err();
    assert!(
        err.to_string()
            .contains("id_tokens:\n  GITLAB_OIDC:\n    aud: https://p3.example"),
        "{err}"
    );
    assert_eq!(fx.jwks.hits(), 0, "no token, no JWKS fetch");
}

#[test]
fn token_variable_defined_twice_is_denied() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    let job = job_with(&[("P3_ID_TOKEN", &token), ("P3_ID_TOKEN", &token)]);
    let err = identity::verify(&cfg, &job).unwrap_err();
    assert!(
        matches!(err, IdentityError::DuplicateToken { count: 2, .. }),
        "{err}"
    );
}

#[test]
fn unknown_kid_refetches_once_then_denies_and_rotation_is_picked_up() {
    let fx = Fixture::new();
    let cfg = fx.config("jwks_refetch_min_interval_secs = 0");
    let good = fx.minter.mint(fx.claims("main", "branch", true));
    identity::verify(&cfg, &job(&good)).unwrap();
    assert_eq!(fx.jwks.hits(), 1);

    // Signed by a key GitLab does not (yet) publish.
    let rotated = TokenMinter::with_kid("test-key-2");
    let token = rotated.mint(fx.claims("main", "branch", true));
    let err = denied(&cfg, &token);
    assert!(
        matches!(err, IdentityError::UnknownKey { ref kid, .. } if kid == "test-key-2"),
        "{err}"
    );
    assert_eq!(fx.jwks.hits(), 2, "exactly one refetch for the unknown kid");

    // GitLab rotates: the new key appears in the JWKS; the cached set lacks it, one refetch
    // finds it, and the old key keeps working from the refreshed cache.
    fx.jwks
        .set_jwks(&tokens::jwks_json_of(&[&fx.minter, &rotated]));
    identity::verify(&cfg, &job(&token)).unwrap();
    assert_eq!(fx.jwks.hits(), 3);
    identity::verify(&cfg, &job(&good)).unwrap();
    assert_eq!(fx.jwks.hits(), 3);
}

#[test]
fn garbage_kids_cannot_make_us_hammer_gitlab() {
    let fx = Fixture::new();
    let cfg = fx.config(""); // default: refetch at most once per 30 s
    identity::verify(
        &cfg,
        &job(&fx.minter.mint(fx.claims("main", "branch", true))),
    )
    .unwrap();
    assert_eq!(fx.jwks.hits(), 1);
    for i in 0..10 {
        let token = fx
            .minter
            .mint_with_kid(fx.claims("main", "branch", true), &format!("garbage-{i}"));
        assert!(matches!(
            denied(&cfg, &token),
            IdentityError::UnknownKey { .. }
        ));
    }
    assert_eq!(
        fx.jwks.hits(),
        1,
        "a fresh cache is not refetched for unknown kids"
    );
}

#[test]
fn cached_jwks_is_not_fetched_per_job() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    for _ in 0..20 {
        // Each call builds its store from the config, as separate `prepare` processes do: the
        // cache that saves the fetches is the one on disk.
        let token = fx.minter.mint(fx.claims("main", "branch", true));
        identity::verify(&cfg, &job(&token)).unwrap();
    }
    // The JWKS server counts what it served: the only fetch is the first verification's.
    assert_eq!(fx.jwks.hits(), 1, "20 verifications, one JWKS fetch");

    let store = JwksStore::from_config(&cfg);
    let file = store.cache_file().unwrap();
    assert!(file.starts_with(fx.state.path().join("jwks")));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.state.path().join("jwks")), 0o700);
    assert_eq!(mode(&file), 0o600);
    let cached: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(cached["url"], json!(fx.jwks.url));
    assert!(cached["fetched_at"].as_u64().unwrap() <= tokens::now());
}

#[test]
fn cache_older_than_ttl_is_refetched() {
    let fx = Fixture::new();
    let cfg = fx.config("jwks_cache_ttl_secs = 3600");
    let verify = || {
        let token = fx.minter.mint(fx.claims("main", "branch", true));
        identity::verify(&cfg, &job(&token)).unwrap();
    };
    verify();
    verify();
    assert_eq!(fx.jwks.hits(), 1);
    // Age the cache entry by two hours instead of sleeping through a TTL.
    let file = JwksStore::from_config(&cfg).cache_file().unwrap();
    let mut cached: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    cached["fetched_at"] = json!(tokens::now() - 7200);
    std::fs::write(&file, cached.to_string()).unwrap();
    verify();
    assert_eq!(fx.jwks.hits(), 2, "stale cache refetched");
    verify();
    assert_eq!(fx.jwks.hits(), 2, "and the refetched set is cached again");

    // A corrupt cache file is ignored and replaced, not fatal.
    std::fs::write(&file, "{not json").unwrap();
    verify();
    assert_eq!(fx.jwks.hits(), 3);
    verify();
    assert_eq!(fx.jwks.hits(), 3);

    // A cache file others could have written is not trusted (it decides which keys are valid).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    verify();
    assert_eq!(fx.jwks.hits(), 4, "group/world-writable cache ignored");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600,
        "and replaced by a private one"
    );
}

#[test]
fn jwks_server_down_is_a_system_failure() {
    let state = tempfile::tempdir().unwrap();
    let minter = TokenMinter::new();
    let token = minter.mint(gitlab_claims(
        ISSUER,
        AUD,
        JOB_ID,
        "client/app",
        "main",
        "branch",
        true,
    ));

    let cfg = config_with(state.path(), &tokens::unused_local_url(), "");
    let err = denied(&cfg, &token);
    assert!(
        matches!(err, IdentityError::JwksUnavailable { .. }),
        "{err}"
    );
    assert!(err.is_system(), "{err}");

    // A GitLab that accepts the connection and never answers: bounded by http_timeout_secs.
    let (_listener, url) = tokens::silent_listener();
    let cfg = config_with(state.path(), &url, "http_timeout_secs = 1");
    let started = std::time::Instant::now();
    let err = denied(&cfg, &token);
    assert!(err.is_system(), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn jwks_errors_and_garbage_are_system_failures() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    fx.jwks.set_response(500, "{\"message\":\"boom\"}");
    let err = denied(&cfg, &token);
    assert!(
        matches!(err, IdentityError::JwksUnavailable { .. }) && err.is_system(),
        "{err}"
    );
    fx.jwks.set_response(200, "<html>login</html>");
    let err = denied(&cfg, &token);
    assert!(
        matches!(err, IdentityError::JwksInvalid { .. }) && err.is_system(),
        "{err}"
    );
    fx.jwks.set_response(200, "{\"keys\":[]}");
    assert!(denied(&cfg, &token).is_system());
}

#[test]
fn jwks_file_source_needs_no_http() {
    let fx = Fixture::new();
    let file = fx.state.path().join("keys.json");
    std::fs::write(&file, fx.minter.jwks_json()).unwrap();
    let cfg = fx.config(&format!("jwks_file = {file:?}"));
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    identity::verify(&cfg, &job(&token)).unwrap();
    assert_eq!(fx.jwks.hits(), 0);
    let forger = TokenMinter::with_kid(fx.minter.kid());
    assert!(matches!(
        denied(&cfg, &forger.mint(fx.claims("main", "branch", true))),
        IdentityError::BadSignature
    ));
}

#[test]
fn forged_ci_variables_change_nothing() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let token = fx.minter.mint(fx.claims("feature/x", "branch", false));
    let honest = job_with(&[("P3_ID_TOKEN", &token), ("P3_DEVSTAGE", "client_prod")]);
    // The job's own `variables:` outrank GitLab's predefined ones: any branch can set these.
    let forged = job_with(&[
        ("CI_COMMIT_REF_PROTECTED", "false"),
        ("CI_COMMIT_REF_NAME", "feature/x"),
        ("P3_ID_TOKEN", &token),
        ("P3_DEVSTAGE", "client_prod"),
        ("CI_COMMIT_REF_PROTECTED", "true"),
        ("CI_COMMIT_TAG", "v9.9.9"),
        ("CI_COMMIT_REF_NAME", "v9.9.9"),
        ("CI_PIPELINE_SOURCE", "web"),
        ("CI_JOB_ID", "1"),
    ]);
    let id_honest = identity::verify(&cfg, &honest).unwrap();
    let id_forged = identity::verify(&cfg, &forged).unwrap();
    assert_eq!(id_honest, id_forged);
    assert!(!id_forged.ref_protected);
    assert_eq!(id_forged.ref_type, RefType::Branch);
    assert_eq!(id_forged.ref_name, "feature/x");
    for stage in ["client_prod", "client_uat"] {
        let d_honest = policy::decide(&id_honest, stage, &cfg);
        let d_forged = policy::decide(&id_forged, stage, &cfg);
        assert_eq!(d_honest, d_forged);
        assert!(!d_forged.is_grant(), "{stage}: {d_forged:?}");
    }
}

/// The decision table of issue 3, from a signed token through verify and decide.
#[test]
fn policy_table_end_to_end() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let dev_branch = fx.claims("feature/login", "branch", false);
    let main = fx.claims("main", "branch", true);
    let release = fx.claims("v1.2.3", "tag", true);
    let unprotected_release = fx.claims("v1.2.3", "tag", false);
    let mut mr = fx.claims("main", "branch", true);
    mr["pipeline_source"] = json!("merge_request_event");
    let mut expired = fx.claims("main", "branch", true);
    expired["iat"] = json!(tokens::now() - 7200);
    expired["exp"] = json!(tokens::now() - 3600);
    let other_job = gitlab_claims(
        ISSUER,
        AUD,
        JOB_ID + 1,
        "client/app",
        "main",
        "branch",
        true,
    );
    let wrong_aud = gitlab_claims(
        ISSUER,
        "other",
        JOB_ID,
        "client/app",
        "main",
        "branch",
        true,
    );

    // (case, claims, devstage, Ok(account) | Err(rule or error fragment))
    let cases: Vec<(&str, Value, &str, Result<&str, &str>)> = vec![
        (
            "dev branch → client_dev",
            dev_branch.clone(),
            "client_dev",
            Ok("client_dev"),
        ),
        (
            "unprotected feature → client_uat",
            dev_branch.clone(),
            "client_uat",
            Err("devstages.client_uat.protected_ref"),
        ),
        (
            "unprotected feature → client_prod",
            dev_branch,
            "client_prod",
            Err("devstages.client_prod.ref_types"),
        ),
        (
            "protected main → client_uat",
            main.clone(),
            "client_uat",
            Ok("client_uat"),
        ),
        (
            "protected main → client_prod",
            main.clone(),
            "client_prod",
            Err("devstages.client_prod.ref_types"),
        ),
        (
            "protected v1.2.3 → client_prod via client_uat",
            release,
            "client_prod",
            Ok("client_uat"),
        ),
        (
            "unprotected v1.2.3 → client_prod",
            unprotected_release,
            "client_prod",
            Err("devstages.client_prod.protected_ref"),
        ),
        (
            "merge request pipeline → client_uat",
            mr,
            "client_uat",
            Err("devstages.client_uat.pipeline_sources"),
        ),
        ("unknown devstage", main, "client_qa", Err("devstages")),
        (
            "token for another job",
            other_job,
            "client_dev",
            Err("issued for job 4243"),
        ),
        ("expired token", expired, "client_dev", Err("expired")),
        ("wrong audience", wrong_aud, "client_dev", Err("audience")),
    ];
    for (case, claims, devstage, expected) in cases {
        let token = fx.minter.mint(claims);
        let job = job_with(&[("P3_ID_TOKEN", &token), ("P3_DEVSTAGE", devstage)]);
        let requested = job.variable("P3_DEVSTAGE").unwrap();
        let outcome: Result<Decision, IdentityError> =
            identity::verify(&cfg, &job).map(|id: Identity| policy::decide(&id, requested, &cfg));
        match (expected, outcome) {
            (
                Ok(account),
                Ok(Decision::Grant {
                    devstage: d,
                    deploy_account,
                    principal,
                }),
            ) => {
                assert_eq!(d, devstage, "{case}");
                assert_eq!(deploy_account, account, "{case}");
                assert_eq!(principal, cfg.accounts[account].principal, "{case}");
            }
            (Err(rule_expected), Ok(Decision::Deny { rule, reason })) => {
                assert_eq!(rule, rule_expected, "{case}: {reason}");
            }
            (Err(fragment), Err(e)) => {
                assert!(!e.is_system(), "{case}: {e}");
                assert!(e.to_string().contains(fragment), "{case}: {e}");
                assert!(!e.to_string().contains(&token), "{case}: token leaked");
            }
            (expected, got) => panic!("{case}: expected {expected:?}, got {got:?}"),
        }
    }
    let Decision::Deny { reason, .. } = policy::decide(
        &identity::verify(
            &cfg,
            &job(&fx.minter.mint(fx.claims("main", "branch", true))),
        )
        .unwrap(),
        "client_qa",
        &cfg,
    ) else {
        panic!("granted an unknown devstage")
    };
    assert!(
        reason.contains("client_dev, client_prod, client_uat"),
        "{reason}"
    );
    assert_eq!(fx.jwks.hits(), 1, "one JWKS fetch for the whole table");
}

// --- GitLab API confirmation -------------------------------------------------------------

/// What the GitLab stand-in reports for `GET /api/v4/job`.
#[derive(Clone)]
struct ApiJob {
    status: &'static str,
    id: u64,
    ref_name: &'static str,
    tag: bool,
    user: &'static str,
}

/// A stand-in for GitLab's `GET /api/v4/job` ("Get job tokens job", docs.gitlab.com/api/jobs):
/// faithful to the documented API in what we use — authenticated with the `JOB-TOKEN` header,
/// 401 `{"message":"401 Unauthorized"}` for a wrong token, and the job object's `id`, `status`,
/// `ref`, `tag` and `user.username` fields (plus a few others GitLab sends).
fn gitlab_stand_in(job: ApiJob) -> tokens::HttpStub {
    tokens::HttpStub::start(Arc::new(move |req: &tokens::Request| {
        // Routing ignores the query string, as GitLab does (the client may send `job?`).
        let path = req.path.split('?').next().unwrap_or_default();
        if req.method != "GET" || path != "/api/v4/job" {
            return (
                404,
                json!({"message": format!("404 Not Found: {}", req.path)}).to_string(),
            );
        }
        if req.header("JOB-TOKEN") != Some(tokens::JOB_TOKEN) {
            return (401, r#"{"message":"401 Unauthorized"}"#.into());
        }
        let body = json!({
            "id": job.id, "status": job.status, "stage": "deploy", "name": "deploy",
            "ref": job.ref_name, "tag": job.tag, "allow_failure": false,
            "created_at": "2026-11-26T12:00:00.000Z", "started_at": "2026-11-26T12:00:01.000Z",
            "finished_at": null, "duration": 1.5, "web_url": format!("https://gitlab.example.com/client/app/-/jobs/{}", job.id),
            "pipeline": {"id": 900, "project_id": 12, "ref": job.ref_name, "sha": "4f0c3a1e", "status": "running"},
            "user": {"id": 5, "username": job.user, "name": "Alice", "state": "active"},
            "runner": {"id": 3, "description": "p3", "active": true, "is_shared": false},
        });
        (200, body.to_string())
    }))
}

fn running(id: u64) -> ApiJob {
    ApiJob {
        status: "running",
        id,
        ref_name: "main",
        tag: false,
        user: "alice",
    }
}

fn api_config(fx: &Fixture, api: &str) -> Config {
    fx.config(&format!(
        "confirm_with_gitlab_api = true\napi_url = {api:?}\nhttp_timeout_secs = 2"
    ))
}

#[test]
fn gitlab_api_confirms_a_running_matching_job() {
    let fx = Fixture::new();
    let api = gitlab_stand_in(running(JOB_ID));
    let cfg = api_config(&fx, &api.base_url);
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    let id = identity::verify(&cfg, &job(&token)).unwrap();
    assert_eq!(id.source, IdentitySource::IdTokenAndGitlabApi);
    assert_eq!(api.hits(), 1);
}

#[test]
fn gitlab_api_disagreement_is_a_denial() {
    let fx = Fixture::new();
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    let cases: Vec<(ApiJob, &str)> = vec![
        (
            ApiJob {
                status: "success",
                ..running(JOB_ID)
            },
            "not running",
        ),
        (running(JOB_ID + 7), "job id"),
        (
            ApiJob {
                ref_name: "feature/x",
                ..running(JOB_ID)
            },
            "on ref",
        ),
        (
            ApiJob {
                tag: true,
                ..running(JOB_ID)
            },
            "on tag",
        ),
        (
            ApiJob {
                user: "mallory",
                ..running(JOB_ID)
            },
            "on user",
        ),
    ];
    for (api_job, fragment) in cases {
        let api = gitlab_stand_in(api_job);
        let cfg = api_config(&fx, &api.base_url);
        let err = denied(&cfg, &token);
        assert!(!err.is_system(), "{fragment}: {err}");
        assert!(err.to_string().contains(fragment), "{fragment}: {err}");
        assert_eq!(api.hits(), 1);
    }
}

#[test]
fn gitlab_api_rejecting_the_job_token_is_a_denial_and_unreachable_is_system() {
    let fx = Fixture::new();
    let api = gitlab_stand_in(running(JOB_ID));
    let cfg = api_config(&fx, &api.base_url);
    let token = fx.minter.mint(fx.claims("main", "branch", true));
    // Same job, but the payload carries another job token: the stand-in answers 401.
    let mut job = job(&token);
    job.payload.token = "glcbt-64_someone-elses".into();
    let err = identity::verify(&cfg, &job).unwrap_err();
    assert!(
        matches!(err, IdentityError::JobTokenRejected { status: 401 }),
        "{err}"
    );
    assert!(!err.is_system());
    assert!(!err.to_string().contains("someone-elses"), "{err}");

    let down = tokens::unused_local_url();
    let base = down.trim_end_matches("/oauth/discovery/keys");
    let cfg = api_config(&fx, base);
    let err = denied(&cfg, &token);
    assert!(
        matches!(err, IdentityError::GitlabApiUnavailable { .. }),
        "{err}"
    );
    assert!(err.is_system(), "{err}");
    assert!(!err.to_string().contains(tokens::JOB_TOKEN), "{err}");
}
