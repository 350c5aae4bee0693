//! End-to-end: the web-identity S3 credential source. A granted job's verified GitLab ID token
//! goes to STS `AssumeRoleWithWebIdentity` (moto's STS, which checks no token but hands out
//! working, distinct temporary keys and reports the assumed-role session), through the sibling
//! `p3-executor-aws`, and the job reaches S3 with nothing but its injected files.
//!
//! Needs: a MIT KDC (`krb5-kdc`), `pip install 'moto[server]' awscli`, and the AWS CLI for
//! jobs (`apt-get install awscli`: the job's uid cannot use root's pyenv).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::common as runner;
use crate::common::tokens;
use p3_testkit::driver::{Host, Job};
use p3_testkit::kdc;
use p3_testkit::s3::S3Server;
use runner::JobResult;
use serde_json::Value;
use tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};

const PROJECT: &str = "data-ml/forecast";
const ROLE: &str = "arn:aws:iam::123456789012:role/gitlab-deploy";
const BUCKET: &str = "wi-data";
/// The audience an STS of the site expects (a second `id_tokens:` entry).
const STS_AUD: &str = "sts.amazonaws.com";

struct Env {
    _kdc: kdc::Kdc,
    minter: TokenMinter,
    _jwks: JwksServer,
    host: Host,
    srv: S3Server,
}

/// A KDC, a JWKS, moto with bucket [`BUCKET`] holding `seed.txt`, and a host whose
/// `client_dev` account gets S3 from `web_identity = { <web_identity> }` (`s3_extra`: more
/// `[accounts.client_dev.s3]` lines). The built-in steps and `/usr/bin` are on the job's PATH.
fn env(web_identity: &str, s3_extra: &str) -> Env {
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let srv = S3Server::start_moto();
    srv.create_bucket(BUCKET);
    let seed = srv.scratch().join("seed.txt");
    std::fs::write(&seed, "seed\n").unwrap();
    srv.aws_ok(&[
        "s3",
        "cp",
        seed.to_str().unwrap(),
        &format!("s3://{BUCKET}/seed.txt"),
    ]);
    let config =
        p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "")
            .replace(
                "[accounts.client_uat]",
                &format!(
                    "[accounts.client_dev.s3]\nendpoint_url = \"{}\"\npath_style = true\nweb_identity = {{ {web_identity} }}\n{s3_extra}\n\n[accounts.client_uat]",
                    srv.endpoint()
                ),
            );
    let bin_dir = runner::exe().parent().unwrap().to_path_buf();
    let host = runner::host(&format!(
        "job_path = \"{}:/usr/bin:/bin\"\n{config}",
        bin_dir.display()
    ));
    assert!(
        std::path::Path::new("/usr/bin/aws").exists(),
        "install the AWS CLI for jobs: apt-get install awscli"
    );
    Env {
        _kdc: kdc,
        minter,
        _jwks: jwks,
        host,
        srv,
    }
}

impl Env {
    fn token(&self, minter: &TokenMinter, id: u64, audience: &str) -> String {
        minter.mint(gitlab_claims(
            ISSUER,
            audience,
            id,
            PROJECT,
            "feature/wi",
            "branch",
            false,
        ))
    }

    /// A client_dev job with a valid identity token.
    fn job(&self, id: u64, script: &str) -> Job {
        self.host
            .job(id, script)
            .var("P3_ID_TOKEN", &self.token(&self.minter, id, "p3-executor"))
            .var("P3_DEVSTAGE", "client_dev")
    }

    fn creds_dir(&self, id: u64) -> PathBuf {
        self.host.root().join(format!("state/creds/{id}"))
    }

    /// The job's aws-credentials file as key → value (read as root, between stages).
    fn creds(&self, id: u64) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.creds_dir(id).join("aws-credentials"))
            .unwrap_or_else(|e| panic!("job {id} has no aws-credentials: {e}"));
        text.lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.host.root().join("audit/audit.jsonl")).unwrap_or_default()
    }

    fn audit_for(&self, id: u64) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["job_id"] == id)
            .collect()
    }

    fn events(&self, id: u64) -> Vec<(String, String)> {
        self.audit_for(id)
            .iter()
            .map(|r| {
                (
                    r["event"].as_str().unwrap().to_string(),
                    r["decision"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn verify_audit(&self) {
        let out = self.host.exec(&["audit", "verify"]);
        assert!(out.status.success(), "audit verify: {out:?}");
    }
}

fn pair(event: &str, decision: &str) -> (String, String) {
    (event.to_string(), decision.to_string())
}

/// Run a granted job stage by stage, keeping the credentials prepare wrote (read as root
/// before the first stage). Returns them and the build_script's exit code.
fn run_keeping_creds(env: &Env, job: &mut Job) -> (BTreeMap<String, String>, i32) {
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let creds = env.creds(job.id);
    for stage in ["prepare_script", "get_sources"] {
        assert_eq!(job.run_stage(stage), 0, "{stage}: {}", job.log);
    }
    let code = job.run_stage("build_script");
    job.run_stage("cleanup_file_variables");
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    (creds, code)
}

/// Secrets that must appear nowhere but in the job's credentials file.
fn assert_absent(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !text.contains(secret),
            "{what} contains a secret ({}…)",
            &secret[..8.min(secret.len())]
        );
    }
}

#[test]
fn web_identity_job_reaches_s3_with_only_its_injected_files() {
    let env = env(&format!("role_arn = \"{ROLE}\""), "");
    let script = format!(
        "echo from-job > job.txt\n\
         p3-executor s3 cp --no-progress job.txt s3://{BUCKET}/out/job.txt\n\
         p3-executor s3 ls s3://{BUCKET}/\n\
         /usr/bin/aws --endpoint-url \"$AWS_ENDPOINT_URL_S3\" s3 ls s3://{BUCKET}/\n\
         echo \"caller=$(/usr/bin/aws --endpoint-url \"$AWS_ENDPOINT_URL_S3\" sts get-caller-identity --query Arn --output text)\""
    );
    let mut job = env.job(601, &script);
    let token = job
        .variables
        .iter()
        .find(|(k, _)| k == "P3_ID_TOKEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    let (creds, code) = run_keeping_creds(&env, &mut job);
    assert_eq!(code, 0, "{}", job.log);
    // Both clients listed the bucket with the injected profile alone.
    assert!(job.log.matches("seed.txt").count() >= 2, "{}", job.log);
    // The job's own STS call shows the assumed role, with the session naming the job.
    let session = "p3-601-data-ml.forecast";
    let arn = format!("arn:aws:sts::123456789012:assumed-role/gitlab-deploy/{session}");
    assert!(job.log.contains(&format!("caller={arn}")), "{}", job.log);
    // The upload really landed (read back with the host's own AWS CLI).
    assert_eq!(
        env.srv
            .aws_ok(&["s3", "cp", &format!("s3://{BUCKET}/out/job.txt"), "-"]),
        "from-job\n"
    );
    // Temporary credentials from STS, not moto's fixed test keys.
    assert!(creds["aws_access_key_id"].starts_with("ASIA"), "{creds:?}");
    let secret = creds["aws_secret_access_key"].clone();
    let session_token = creds["aws_session_token"].clone();

    assert_eq!(
        env.events(601),
        vec![
            pair("grant", "granted"),
            pair("s3_credentials", "granted"),
            pair("cleanup", "succeeded")
        ]
    );
    let s3 = env
        .audit_for(601)
        .into_iter()
        .find(|r| r["event"] == "s3_credentials")
        .unwrap()["extra"]
        .clone();
    assert_eq!(s3["source"], "web_identity", "{s3}");
    assert_eq!(s3["role_arn"], ROLE, "{s3}");
    assert_eq!(s3["role_session_name"], session, "{s3}");
    assert_eq!(s3["assumed_role_arn"], arn.as_str(), "{s3}");
    assert_eq!(s3["token_variable"], "P3_ID_TOKEN", "{s3}");
    assert!(s3["s3_expires"].is_string(), "{s3}");
    // No token, key or session token in the audit log or the job log.
    let secrets = [token.as_str(), secret.as_str(), session_token.as_str()];
    assert_absent("the audit log", &env.audit_text(), &secrets);
    assert_absent("the job log", &job.log, &secrets);
    // Cleanup removed the files with the creds dir.
    assert!(!env.creds_dir(601).exists(), "credentials outlived the job");
    env.verify_audit();
}

#[test]
fn web_identity_credentials_near_expiry_are_refreshed_with_the_token_verified_again() {
    // STS sessions last at most an hour here (the default duration_secs); refreshing below two
    // hours means every stage assumes the role again.
    let env = env(
        &format!("role_arn = \"{ROLE}\""),
        "refresh_threshold_secs = 7200",
    );
    let mut job = env.job(611, &format!("p3-executor s3 ls s3://{BUCKET}/"));
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let first = env.creds(611);
    assert_eq!(job.run_stage("prepare_script"), 0, "{}", job.log);
    let second = env.creds(611);
    assert_ne!(
        first["aws_access_key_id"], second["aws_access_key_id"],
        "refresh kept the old keys"
    );
    assert_eq!(job.run_stage("get_sources"), 0, "{}", job.log);
    assert_eq!(job.run_stage("build_script"), 0, "{}", job.log);
    assert!(job.log.contains("seed.txt"), "{}", job.log);

    // The token is read from the payload and verified again at each refresh: a stage whose
    // payload carries a forged one gets no new credentials.
    let forged = env.token(&TokenMinter::new(), 611, "p3-executor");
    for (k, v) in &mut job.variables {
        if k == "P3_ID_TOKEN" {
            *v = forged.clone();
        }
    }
    assert_eq!(job.run_stage("after_script"), 1, "{}", job.log);
    assert!(job.log.contains("signature is invalid"), "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);

    let events = env.events(611);
    let refreshed = events
        .iter()
        .filter(|e| **e == pair("s3_credentials", "granted"))
        .count();
    // prepare, then prepare_script, get_sources and build_script.
    assert_eq!(refreshed, 4, "{events:?}");
    assert!(
        events.contains(&pair("s3_credentials", "denied")),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&pair("cleanup", "succeeded")));
    let every_key: Vec<&str> = [&first, &second]
        .iter()
        .flat_map(|c| [&c["aws_secret_access_key"], &c["aws_session_token"]])
        .map(String::as_str)
        .collect();
    assert_absent("the audit log", &env.audit_text(), &every_key);
    assert!(!env.creds_dir(611).exists(), "credentials outlived the job");
    env.verify_audit();
}

#[test]
fn a_second_audience_token_is_verified_like_the_identity_token() {
    let env = env(
        &format!(
            "role_arn = \"{ROLE}\", audience = \"{STS_AUD}\", token_variable = \"P3_STS_TOKEN\", duration_secs = 900"
        ),
        "",
    );
    let script = format!("p3-executor s3 ls s3://{BUCKET}/");

    // The job's second id_tokens entry, with the STS audience: granted.
    let sts_token = env.token(&env.minter, 621, STS_AUD);
    let mut job = env.job(621, &script).var("P3_STS_TOKEN", &sts_token);
    let (creds, code) = run_keeping_creds(&env, &mut job);
    assert_eq!(code, 0, "{}", job.log);
    assert!(job.log.contains("seed.txt"), "{}", job.log);
    let s3 = env
        .audit_for(621)
        .into_iter()
        .find(|r| r["event"] == "s3_credentials")
        .unwrap()["extra"]
        .clone();
    assert_eq!(s3["token_variable"], "P3_STS_TOKEN", "{s3}");
    assert_eq!(s3["token_audience"], STS_AUD, "{s3}");
    assert_eq!(s3["duration_secs"], 900, "{s3}");
    assert_absent(
        "the audit log",
        &env.audit_text(),
        &[&sts_token, &creds["aws_secret_access_key"]],
    );

    // Each bad second token is a denial before anything is obtained (no kinit, no STS).
    let other_key = TokenMinter::new();
    let cases: [(u64, Option<String>, &str); 4] = [
        // Signed by a key that is not GitLab's (same kid).
        (
            622,
            Some(env.token(&other_key, 622, STS_AUD)),
            "signature is invalid",
        ),
        // The identity audience instead of the STS one.
        (
            623,
            Some(env.token(&env.minter, 623, "p3-executor")),
            "audience",
        ),
        // Another job's token.
        (624, Some(env.token(&env.minter, 9999, STS_AUD)), "9999"),
        // Missing: the message says what to add to .gitlab-ci.yml.
        (
            625,
            None,
            "id_tokens:\n  P3_STS_TOKEN:\n    aud: sts.amazonaws.com",
        ),
    ];
    for (id, token, needle) in cases {
        let mut job = env.job(id, &script);
        if let Some(token) = &token {
            job = job.var("P3_STS_TOKEN", token);
        }
        assert_eq!(
            job.run_all(),
            JobResult::BuildFailure(Some(1)),
            "{}",
            job.log
        );
        assert!(job.log.contains("denied"), "{}", job.log);
        assert!(
            job.log.contains(needle),
            "job {id}: expected {needle:?} in:\n{}",
            job.log
        );
        assert!(
            !job.calls.iter().any(|(c, _)| c == "build_script"),
            "a denied job must not run"
        );
        assert_eq!(env.events(id), vec![pair("deny", "denied")], "job {id}");
        let rec = &env.audit_for(id)[0];
        assert!(
            rec["reason"]
                .as_str()
                .unwrap()
                .contains("accounts.client_dev.s3.web_identity"),
            "{rec}"
        );
        if let Some(token) = &token {
            assert_absent("the audit log", &env.audit_text(), &[token]);
        }
    }
    env.verify_audit();
}
