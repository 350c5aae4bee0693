//! End-to-end: verified identity → policy → Kerberos ticket → audit, through the runner
//! protocol, against a real MIT KDC and real RS256 ID tokens served from a loopback JWKS.

use crate::common as runner;
use crate::common::tokens;
use p3_testkit::kdc;
use p3_testkit::s3 as s3srv;

use p3_testkit::driver::{Host, Job};
use runner::{JobResult, is_root};
use serde_json::Value;
use tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};

const PROJECT: &str = "data-ml/forecast";

struct Env {
    kdc: kdc::Kdc,
    minter: TokenMinter,
    jwks: JwksServer,
    host: Host,
}

fn env_with(extra: &str) -> Env {
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let config =
        p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), extra);
    let host = runner::host(&config);
    Env {
        kdc,
        minter,
        jwks,
        host,
    }
}

fn env() -> Env {
    env_with("")
}

impl Env {
    /// A job with a valid ID token for `ref` and a devstage request.
    fn job(
        &self,
        id: u64,
        git_ref: &str,
        ref_type: &str,
        protected: bool,
        devstage: &str,
        script: &str,
    ) -> Job {
        let claims = gitlab_claims(
            ISSUER,
            "p3-executor",
            id,
            PROJECT,
            git_ref,
            ref_type,
            protected,
        );
        self.job_with_token(id, &self.minter.mint(claims), devstage, script)
    }

    fn job_with_token(&self, id: u64, token: &str, devstage: &str, script: &str) -> Job {
        self.host
            .job(id, script)
            .var("P3_ID_TOKEN", token)
            .var("P3_DEVSTAGE", devstage)
    }

    fn audit(&self) -> Vec<Value> {
        let path = self.host.root().join("audit/audit.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn audit_for(&self, job: u64) -> Vec<(String, String)> {
        self.audit()
            .iter()
            .filter(|r| r["job_id"] == job)
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

const SHOW: &str = "klist | grep -i 'default principal'\necho \"devstage=$P3_DEVSTAGE deploy=$P3_DEPLOY_STAGE account=$P3_SYSTEM_ACCOUNT\"\necho \"cache=$KRB5CCNAME\"";

fn assert_granted(env: &Env, job: &mut Job, principal: &str, devstage: &str, deploy: &str) {
    let result = job.run_all();
    assert_eq!(result, JobResult::Success, "{}", job.log);
    assert!(
        job.log.contains(&format!("Default principal: {principal}")),
        "{}",
        job.log
    );
    assert!(
        job.log.contains(&format!(
            "devstage={devstage} deploy={deploy} account={principal}"
        )),
        "{}",
        job.log
    );
    assert!(
        !job.log.contains(".keytab"),
        "keytab path leaked: {}",
        job.log
    );
    let creds = env.host.root().join(format!("state/creds/{}", job.id));
    assert!(!creds.exists(), "credentials outlived the job");
    assert_eq!(
        env.audit_for(job.id),
        vec![
            ("grant".to_string(), "granted".to_string()),
            ("cleanup".to_string(), "succeeded".to_string())
        ]
    );
}

fn assert_denied(env: &Env, job: &mut Job, needle: &str) {
    let result = job.run_all();
    assert_eq!(result, JobResult::BuildFailure(Some(1)), "{}", job.log);
    assert!(job.log.contains("denied"), "{}", job.log);
    assert!(
        job.log.contains(needle),
        "expected {needle:?} in:\n{}",
        job.log
    );
    assert!(
        !job.calls.iter().any(|(c, _)| c == "build_script"),
        "a denied job must not run"
    );
    assert_eq!(
        env.audit_for(job.id),
        vec![("deny".to_string(), "denied".to_string())]
    );
}

#[test]
fn policy_table_end_to_end() {
    let env = env();
    let dev = env.kdc.principal("svc_client_dev");
    let uat = env.kdc.principal("svc_client_uat");

    // dev branch → client_dev granted
    let mut j = env.job(501, "feature/x", "branch", false, "client_dev", SHOW);
    assert_granted(&env, &mut j, &dev, "client_dev", "client_dev");
    // unprotected feature branch → client_uat and client_prod denied
    let mut j = env.job(502, "feature/x", "branch", false, "client_uat", SHOW);
    assert_denied(&env, &mut j, "devstages.client_uat.");
    let mut j = env.job(503, "feature/x", "branch", false, "client_prod", SHOW);
    assert_denied(&env, &mut j, "devstages.client_prod.");
    // protected main → client_uat granted
    let mut j = env.job(504, "main", "branch", true, "client_uat", SHOW);
    assert_granted(&env, &mut j, &uat, "client_uat", "client_uat");
    // protected release tag → client_prod granted via the client_uat account
    let mut j = env.job(505, "v1.2.3", "tag", true, "client_prod", SHOW);
    assert_granted(&env, &mut j, &uat, "client_prod", "client_uat");
    // release-looking tag that is not protected → denied
    let mut j = env.job(506, "v1.2.3", "tag", false, "client_prod", SHOW);
    assert_denied(&env, &mut j, "devstages.client_prod.protected_ref");
    // forged predefined variables have no effect
    let mut j = env
        .job(507, "feature/x", "branch", false, "client_prod", SHOW)
        .var("CI_COMMIT_REF_PROTECTED", "true")
        .var("CI_COMMIT_TAG", "v9.9.9")
        .var("CI_COMMIT_REF_NAME", "v9.9.9");
    assert_denied(&env, &mut j, "devstages.client_prod.");
    // token for another job → denied
    let other = gitlab_claims(ISSUER, "p3-executor", 9999, PROJECT, "main", "branch", true);
    let mut j = env.job_with_token(508, &env.minter.mint(other), "client_uat", SHOW);
    assert_denied(&env, &mut j, "9999");
    // expired token → denied
    let mut expired = gitlab_claims(ISSUER, "p3-executor", 509, PROJECT, "main", "branch", true);
    let now = tokens::now();
    expired["iat"] = (now - 7200).into();
    expired["nbf"] = (now - 7200).into();
    expired["exp"] = (now - 3600).into();
    let mut j = env.job_with_token(509, &env.minter.mint(expired), "client_uat", SHOW);
    assert_denied(&env, &mut j, "expired");
    // wrong audience → denied
    let wrong_aud = gitlab_claims(ISSUER, "someone-else", 510, PROJECT, "main", "branch", true);
    let mut j = env.job_with_token(510, &env.minter.mint(wrong_aud), "client_uat", SHOW);
    assert_denied(&env, &mut j, "audience");
    // unknown devstage → denied with the list of known ones
    let mut j = env.job(511, "main", "branch", true, "client_qa", SHOW);
    assert_denied(&env, &mut j, "client_dev, client_prod, client_uat");
    // a 100 KiB request (the runner also passes every variable in the environment, where the
    // kernel allows 128 KiB) → denied; its record keeps a bounded part of it
    let mut j = env.job(514, "main", "branch", true, &"x".repeat(100 << 10), SHOW);
    assert_denied(&env, &mut j, "client_dev, client_prod, client_uat");
    let record = env
        .audit()
        .into_iter()
        .find(|r| r["job_id"] == 514)
        .unwrap();
    let size = record.to_string().len();
    assert!(size < 8 << 10, "a deny record of {size} bytes");
    assert!(
        record["devstage"]
            .as_str()
            .unwrap()
            .ends_with("… (101376 more characters)"),
        "{}",
        record["devstage"]
    );
    // a request without a token → denied with what to add to .gitlab-ci.yml
    let mut j = env.host.job(512, SHOW).var("P3_DEVSTAGE", "client_dev");
    assert_denied(&env, &mut j, "id_tokens:");
    // no request → a plain job without credentials
    let mut j = env.host.job(513, "echo \"cache=[${KRB5CCNAME:-none}]\"");
    assert_eq!(j.run_all(), JobResult::Success, "{}", j.log);
    assert!(j.log.contains("cache=[none]"), "{}", j.log);
    assert!(env.audit_for(513).is_empty());

    env.verify_audit();
    // One JWKS fetch served every job: the cache works across processes.
    assert_eq!(env.jwks.hits(), 1, "JWKS fetched per job");
}

#[test]
fn granted_job_deploys_with_the_deploy_stage_account_and_its_own_devstage() {
    let env = env_with("");
    // The built-in step runs inside the job: put the binary on the job's PATH and give the
    // executor P3 templates, which reach the job through P3_STEPS_CONFIG.
    let bin_dir = runner::exe().parent().unwrap().to_path_buf();
    let text = std::fs::read_to_string(&env.host.config).unwrap();
    let text = format!(
        "job_path = \"{}:/usr/bin:/bin\"\n{text}\n[steps.p3]\ndeploy = [\"p3\", \"apply\", \"--account={{deploy_stage}}\", \"--run-as={{devstage}}\", \"--name={{job}}\", \"--image={{image}}\"]\n",
        bin_dir.display()
    );
    std::fs::write(&env.host.config, text).unwrap();
    let script = "cat > p3.toml <<'EOF'\n[[job]]\nname = \"nightly\"\ncommand = \"python -m scoring\"\nEOF\np3-executor p3 deploy --file p3.toml --image registry/app@sha256:abc --dry-run";
    let mut job = env.job(550, "v1.2.3", "tag", true, "client_prod", script);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(
        job.log.contains("--account=client_uat") && job.log.contains("--run-as=client_prod"),
        "{}",
        job.log
    );
}

/// A stand-in for a site's S3 credential service client (AWS credential_process contract):
/// it refuses to answer without the job's Kerberos ticket, as the real one authenticates with it.
const CREDENTIAL_PROCESS: &str = r#"#!/bin/sh
klist -s || { echo "no valid Kerberos ticket in $KRB5CCNAME" >&2; exit 3; }
exp=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
printf '{"Version": 1, "AccessKeyId": "S3RVER", "SecretAccessKey": "S3RVER", "Expiration": "%s"}\n' "$exp"
"#;

/// An S3 server with bucket `job-data`, and `env`'s client_dev account given S3 through
/// [`CREDENTIAL_PROCESS`] (`s3_extra`: more `[accounts.client_dev.s3]` lines); the built-in
/// steps and `/usr/bin` are on the job's PATH.
fn with_s3(env: &Env, s3_extra: &str) -> s3srv::S3Server {
    let srv = s3srv::S3Server::start();
    srv.create_bucket("job-data");
    let helper = env.host.root().join("s3-credentials");
    std::fs::write(&helper, CREDENTIAL_PROCESS).unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin_dir = runner::exe().parent().unwrap().to_path_buf();
    let text = std::fs::read_to_string(&env.host.config).unwrap().replace(
        "[accounts.client_uat]",
        &format!(
            "[accounts.client_dev.s3]\nendpoint_url = \"{}\"\npath_style = true\ncredential_process = [\"{}\"]\n{s3_extra}\n\n[accounts.client_uat]",
            srv.endpoint(),
            helper.display()
        ),
    );
    std::fs::write(
        &env.host.config,
        format!("job_path = \"{}:/usr/bin:/bin\"\n{text}", bin_dir.display()),
    )
    .unwrap();
    srv
}

#[test]
fn another_gitlabs_job_with_the_same_id_gets_nothing_and_leaves_the_granted_job_its_ticket() {
    let env = env();
    let dev = env.kdc.principal("svc_client_dev");
    let mut first = env.job(531, "feature/x", "branch", false, "client_dev", SHOW);
    assert_eq!(first.config(), 0, "{}", first.log);
    assert_eq!(first.prepare(), 0, "{}", first.log);
    let ccache = env.host.root().join("state/creds/531/krb5cc");
    assert!(ccache.exists(), "no ticket: {}", first.log);
    // Job 531 of another GitLab instance, with its own (validly signed) ID token asking for
    // the same devstage: another job token.
    let mut other = env
        .job(531, "feature/x", "branch", false, "client_dev", SHOW)
        .token("glcbt-another-instance-token");
    assert_eq!(other.config(), 0, "{}", other.log);
    assert_eq!(other.prepare(), 2, "{}", other.log);
    assert_eq!(other.run_stage("build_script"), 2, "{}", other.log);
    assert!(!other.log.contains("Default principal"), "{}", other.log);
    assert_eq!(other.cleanup(), 0, "{}", other.log);
    // Nothing was granted, denied or revoked for it: the first job's records only.
    assert_eq!(
        env.audit_for(531),
        vec![("grant".to_string(), "granted".to_string())]
    );
    // The first job keeps its ticket and uses it; its own cleanup destroys it.
    assert!(
        ccache.exists(),
        "the other job's cleanup destroyed the ticket"
    );
    assert_eq!(first.run_stage("get_sources"), 0, "{}", first.log);
    assert_eq!(first.run_stage("build_script"), 0, "{}", first.log);
    assert!(
        first.log.contains(&format!("Default principal: {dev}")),
        "{}",
        first.log
    );
    assert_eq!(first.cleanup(), 0, "{}", first.log);
    assert!(!ccache.exists());
    assert_eq!(
        env.audit_for(531),
        vec![
            ("grant".to_string(), "granted".to_string()),
            ("cleanup".to_string(), "succeeded".to_string())
        ]
    );
    env.verify_audit();
}

#[test]
fn granted_job_uses_s3_with_no_credentials_of_its_own() {
    let env = env();
    let srv = with_s3(&env, "");
    // The job's own AWS CLI must be usable by the job's uid (root's pyenv is not). Debian's
    // AWS CLI (2.9) predates AWS_ENDPOINT_URL_S3 support, hence --endpoint-url in the script.
    assert!(
        std::path::Path::new("/usr/bin/aws").exists(),
        "install the AWS CLI for jobs: apt-get install awscli"
    );
    let script = "echo hello-s3 > hello.txt\np3-executor s3 cp --no-progress hello.txt s3://job-data/out/hello.txt\np3-executor s3 ls s3://job-data/out/\n/usr/bin/aws --endpoint-url \"$AWS_ENDPOINT_URL_S3\" s3 ls s3://job-data/out/\nenv | grep -c '^AWS_ACCESS_KEY_ID=' || true";
    let mut job = env.job(560, "feature/s3", "branch", false, "client_dev", script);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(job.log.matches("hello.txt").count() >= 3, "{}", job.log);
    assert!(!job.log.contains("aws_secret_access_key"), "{}", job.log);
    // The object really landed, read back with the host's own AWS CLI.
    let back = srv.aws_ok(&["s3", "cp", "s3://job-data/out/hello.txt", "-"]);
    assert_eq!(back, "hello-s3\n");
    let events: Vec<(String, String)> = env.audit_for(560);
    assert_eq!(
        events,
        vec![
            ("grant".to_string(), "granted".to_string()),
            ("s3_credentials".to_string(), "granted".to_string()),
            ("cleanup".to_string(), "succeeded".to_string())
        ]
    );
    let audit = std::fs::read_to_string(env.host.root().join("audit/audit.jsonl")).unwrap();
    assert!(
        !audit.contains("S3RVER\""),
        "a secret reached the audit log"
    );
    assert!(!env.host.root().join("state/creds/560").exists());
}

#[test]
fn s3_credentials_close_to_expiry_are_refreshed_before_each_stage() {
    let env = env();
    // The credential process hands out one-hour credentials; refreshing below two hours
    // means every stage must fetch new ones.
    let _srv = with_s3(&env, "refresh_threshold_secs = 7200");
    let mut job = env.job(
        570,
        "feature/s3",
        "branch",
        false,
        "client_dev",
        "p3-executor s3 ls s3://job-data/",
    );
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    let events: Vec<String> = env.audit_for(570).into_iter().map(|(e, _)| e).collect();
    let s3 = events.iter().filter(|e| *e == "s3_credentials").count();
    // prepare, then prepare_script, get_sources, build_script, cleanup_file_variables
    assert_eq!(s3, 5, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("cleanup"));
    env.verify_audit();
}

#[test]
fn job_cannot_read_keytabs_or_other_jobs_caches() {
    if !is_root() {
        eprintln!("skipped: needs root for private job uids");
        return;
    }
    let env = env();
    // The fixture's keytabs live in a temp dir; put one where a host would, root-only.
    let keytab = env.kdc.keytab("svc_client_uat");
    let mut holder = env.job(520, "main", "branch", true, "client_uat", "true");
    holder.config();
    assert_eq!(holder.prepare(), 0, "{}", holder.log);
    let other_cache = env.host.root().join("state/creds/520/krb5cc");
    assert!(other_cache.exists());
    // The kinit learned that the KDC offers no SPAKE to this principal: one root-only record
    // in the root-only kinit dir, beside the profile kept for the next kinits.
    let kinit_dir = env.host.root().join("state/kinit");
    let records: Vec<_> = std::fs::read_dir(kinit_dir.join("no-spake"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!((mode(&kinit_dir), mode(&records[0])), (0o700, 0o600));
    let probe = format!(
        "for f in {keytab} {other} {record}; do if cat $f >/dev/null 2>&1; then echo LEAK:$f; else echo denied:$f; fi; done\nif ls {creds} >/dev/null 2>&1; then echo LEAK:list; fi\nif ls {memory} >/dev/null 2>&1; then echo LEAK:memory; fi\nklist >/dev/null && echo own-cache-ok",
        keytab = keytab.display(),
        other = other_cache.display(),
        record = records[0].display(),
        creds = env.host.root().join("state/creds").display(),
        memory = kinit_dir.display(),
    );
    let mut job = env.job(521, "feature/y", "branch", false, "client_dev", &probe);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(!job.log.contains("LEAK"), "{}", job.log);
    assert_eq!(job.log.matches("denied:").count(), 3, "{}", job.log);
    assert!(job.log.contains("own-cache-ok"), "{}", job.log);
    holder.cleanup();
    assert!(!other_cache.exists());
}

#[test]
fn ticket_is_renewed_before_stages_when_close_to_expiry() {
    // Lifetime below the renewal threshold, and the job may run longer than its ticket (a
    // 4 h timeout): every run stage must re-obtain the ticket.
    let env = env_with("renew_threshold_secs = 7200");
    let text = std::fs::read_to_string(&env.host.config).unwrap().replace(
        "[accounts.client_dev]\n",
        "[accounts.client_dev]\nticket_lifetime_secs = 3600\n",
    );
    std::fs::write(&env.host.config, text).unwrap();
    let mut job = env
        .job(530, "feature/z", "branch", false, "client_dev", "klist")
        .timeout(4 * 3600);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    let events: Vec<String> = env.audit_for(530).into_iter().map(|(e, _)| e).collect();
    assert_eq!(events.first().map(String::as_str), Some("grant"));
    assert_eq!(events.last().map(String::as_str), Some("cleanup"));
    let renewals = events.iter().filter(|e| *e == "renew").count();
    // prepare_script, get_sources, build_script, cleanup_file_variables
    assert_eq!(renewals, 4, "{events:?}");
    env.verify_audit();
}

#[test]
fn gc_destroys_the_credentials_of_a_job_whose_cleanup_never_ran() {
    let env = env();
    let mut job = env.job(580, "main", "branch", true, "client_uat", "klist");
    job.config();
    assert_eq!(job.prepare(), 0, "{}", job.log);
    assert_eq!(job.run_stage("get_sources"), 0, "{}", job.log);
    assert_eq!(job.run_stage("build_script"), 0, "{}", job.log);
    let cache = env.host.root().join("state/creds/580/krb5cc");
    assert!(cache.exists());
    // The runner dies here: no cleanup. gc with the default age keeps the young job...
    env.host.exec(&["gc"]);
    assert!(cache.exists(), "gc removed a young job's ticket");
    // ...and removes it once it is old enough.
    let out = env.host.exec(&["gc", "--max-age-secs", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!cache.exists(), "the ticket outlived its job");
    assert!(!env.host.root().join("state/jobs/580").exists());
    assert_eq!(
        env.audit_for(580),
        vec![
            ("grant".to_string(), "granted".to_string()),
            ("gc".to_string(), "succeeded".to_string())
        ]
    );
    env.verify_audit();
}

#[test]
fn a_wrong_keytab_fails_with_kinits_words_but_no_host_path_in_the_job_log() {
    let env = env();
    // client_dev's keytab holds only the client_uat key.
    let dev_keytab = env.kdc.keytab("svc_client_dev");
    let uat_keytab = env.kdc.keytab("svc_client_uat");
    let text = std::fs::read_to_string(&env.host.config).unwrap();
    let text = text.replacen(
        &format!("keytab = \"{}\"", dev_keytab.display()),
        &format!("keytab = \"{}\"", uat_keytab.display()),
        1,
    );
    std::fs::write(&env.host.config, text).unwrap();
    let mut job = env.job(590, "feature/k", "branch", false, "client_dev", "true");
    assert_eq!(job.run_all(), JobResult::SystemFailure, "{}", job.log);
    assert!(
        job.log.contains("Keytab contains no suitable keys"),
        "{}",
        job.log
    );
    assert!(
        job.log.contains("<keytab of account client_dev>"),
        "{}",
        job.log
    );
    assert!(
        !job.log.contains(&uat_keytab.display().to_string()),
        "keytab path in the job log: {}",
        job.log
    );
    // Operators still get the whole story in the audit record.
    let audit = std::fs::read_to_string(env.host.root().join("audit/audit.jsonl")).unwrap();
    assert!(audit.contains(&uat_keytab.display().to_string()), "{audit}");
}

#[test]
fn kdc_down_is_a_system_failure_with_kinits_message() {
    let mut env = env();
    env.kdc.stop();
    let mut job = env.job(540, "main", "branch", true, "client_uat", "true");
    let result = job.run_all();
    assert_eq!(result, JobResult::SystemFailure, "{}", job.log);
    assert!(job.log.contains("Cannot contact any KDC"), "{}", job.log);
    assert!(!env.host.root().join("state/creds/540").exists());
    let audit = env.audit_for(540);
    assert_eq!(
        audit.first(),
        Some(&("grant".to_string(), "failed".to_string()))
    );
}

#[test]
fn fifty_concurrent_jobs_each_see_only_their_own_principal() {
    let env = env();
    let dev = env.kdc.principal("svc_client_dev");
    let uat = env.kdc.principal("svc_client_uat");
    let mut jobs: Vec<(Job, String)> = (0..50u64)
        .map(|i| {
            let id = 600 + i;
            match i % 3 {
                0 => (
                    env.job(id, "feature/a", "branch", false, "client_dev", SHOW),
                    dev.clone(),
                ),
                1 => (
                    env.job(id, "main", "branch", true, "client_uat", SHOW),
                    uat.clone(),
                ),
                _ => (
                    env.job(id, "v2.0.0", "tag", true, "client_prod", SHOW),
                    uat.clone(),
                ),
            }
        })
        .collect();
    std::thread::scope(|s| {
        for chunk in jobs.chunks_mut(10) {
            s.spawn(move || {
                for (job, _) in chunk.iter_mut() {
                    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
                }
            });
        }
    });
    for (job, principal) in &jobs {
        assert!(
            job.log.contains(&format!("Default principal: {principal}")),
            "{}",
            job.log
        );
        assert_eq!(
            job.log.matches("Default principal").count(),
            1,
            "{}",
            job.log
        );
        assert_eq!(
            env.audit_for(job.id),
            vec![
                ("grant".to_string(), "granted".to_string()),
                ("cleanup".to_string(), "succeeded".to_string())
            ]
        );
    }
    assert_eq!(env.audit().len(), 100);
    env.verify_audit();
    assert!(
        std::fs::read_dir(env.host.root().join("state/creds"))
            .unwrap()
            .next()
            .is_none(),
        "a credential outlived its job"
    );
}

/// A job step that prints its ticket cache into the job log, base64 between markers: a job
/// can always copy what it was given, so what matters is what the copy is worth afterwards.
const COPY_CCACHE: &str = "echo \"CCACHE-COPY:$(base64 -w0 < \"${KRB5CCNAME#FILE:}\"):CCACHE-END\"";

/// The ticket cache `job` printed with [`COPY_CCACHE`], written to a file of the test's own.
fn copied_ccache(job: &Job, dir: &std::path::Path) -> std::path::PathBuf {
    use base64::Engine;
    let start = job.log.find("CCACHE-COPY:").expect("no copy in the log") + "CCACHE-COPY:".len();
    let len = job.log[start..].find(":CCACHE-END").expect("end marker");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&job.log[start..start + len])
        .unwrap();
    let path = dir.join(format!("copy-{}", job.id));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Make the realm's client krb5.conf (the one jobs and the executor use) ask for 7-day
/// renewable tickets by default, globally and for the realm, as many sites' files do.
fn renewing_by_default(env: &Env) {
    let conf = env.kdc.krb5_conf();
    let text = std::fs::read_to_string(&conf).unwrap().replacen(
        "[libdefaults]\n",
        "[libdefaults]\n renew_lifetime = 7d\n P3.TEST = {\n  renew_lifetime = 7d\n }\n",
        1,
    );
    std::fs::write(&conf, text).unwrap();
}

/// `tool args... -c FILE:<cache>` with the realm's krb5.conf, as an attacker holding a copy.
fn krb5_tool(env: &Env, tool: &str, args: &[&str], cache: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg("-c")
        .arg(format!("FILE:{}", cache.display()))
        .env("KRB5_CONFIG", env.kdc.krb5_conf())
        .env("LC_ALL", "C")
        .env_remove("KRB5CCNAME")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_copied_ticket_cannot_be_renewed_and_dies_with_the_jobs_timeout() {
    let env = env();
    renewing_by_default(&env);
    let copies = tempfile::tempdir().unwrap();
    let (timeout, margin): (u64, i64) = (600, 900);
    let mut job = env
        .job(
            700,
            "feature/copy",
            "branch",
            false,
            "client_dev",
            COPY_CCACHE,
        )
        .timeout(timeout);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    // The ticket capped at the job's deadline covers the whole short job: no stage re-obtained
    // it, although it has less life than renew_threshold_secs (1 h).
    assert_eq!(
        env.audit_for(700),
        vec![
            ("grant".to_string(), "granted".to_string()),
            ("cleanup".to_string(), "succeeded".to_string())
        ]
    );
    assert!(!env.host.root().join("state/creds/700").exists());

    // After cleanup, the copy taken out of the job:
    let copy = copied_ccache(&job, copies.path());
    let (ok, text) = krb5_tool(&env, "klist", &["-f"], &copy);
    println!("klist -f of the copy after cleanup:\n{text}");
    assert!(ok && text.contains("krbtgt/P3.TEST@P3.TEST"), "{text}");
    // (a) is not renewable,
    assert!(!text.contains("renew until"), "{text}");
    // (b) so kinit -R cannot stretch it,
    let (renewed, text) = krb5_tool(&env, "kinit", &["-R"], &copy);
    println!("kinit -R of the copy: {text}");
    assert!(!renewed, "kinit -R renewed the copy: {text}");
    // (c) and it ends within the job's timeout plus the margin, not the account's 10 h.
    let ticket = p3_executor::credentials::kerberos::read_ticket(&copy).unwrap();
    let now = chrono::Utc::now();
    assert!(
        ticket.expires <= now + chrono::Duration::seconds(timeout as i64 + margin),
        "{ticket:?}"
    );
    assert!(
        ticket.expires > now + chrono::Duration::seconds(timeout as i64 + margin - 300),
        "the cap is the job's timeout plus margin: {ticket:?}"
    );
    assert_eq!(ticket.renew_until, None);
}

#[test]
fn an_account_that_opts_in_still_gets_a_renewable_ticket() {
    let env = env();
    renewing_by_default(&env);
    let text = std::fs::read_to_string(&env.host.config).unwrap().replace(
        "[accounts.client_uat]\n",
        "[accounts.client_uat]\nrenewable_lifetime_secs = 86400\n",
    );
    std::fs::write(&env.host.config, text).unwrap();
    let copies = tempfile::tempdir().unwrap();
    let script = format!("{COPY_CCACHE}\nklist");
    let mut uat = env
        .job(710, "main", "branch", true, "client_uat", &script)
        .timeout(600);
    assert_eq!(uat.run_all(), JobResult::Success, "{}", uat.log);
    assert!(uat.log.contains("renew until"), "{}", uat.log);
    let (renewed, text) = krb5_tool(&env, "kinit", &["-R"], &copied_ccache(&uat, copies.path()));
    assert!(
        renewed,
        "the opted-in account's ticket is not renewable: {text}"
    );
    // The same host's other account has not opted in.
    let mut dev = env
        .job(711, "feature/x", "branch", false, "client_dev", &script)
        .timeout(600);
    assert_eq!(dev.run_all(), JobResult::Success, "{}", dev.log);
    assert!(dev.log.contains("Default principal"), "{}", dev.log);
    assert!(!dev.log.contains("renew until"), "{}", dev.log);
}

#[test]
fn s3_credential_process_is_asked_for_the_jobs_timeout() {
    let env = env();
    let helper = env.host.root().join("s3-duration-credentials");
    let seen = env.host.root().join("s3-durations");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho \"$1 $P3_CREDENTIAL_DURATION_SECS\" >> {}\nexp=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)\nprintf '{{\"Version\": 1, \"AccessKeyId\": \"AK\", \"SecretAccessKey\": \"SK\", \"Expiration\": \"%s\"}}\\n' \"$exp\"\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&env.host.config).unwrap().replace(
        "[accounts.client_uat]",
        &format!(
            "[accounts.client_dev.s3]\ncredential_process = [\"{}\", \"--duration-seconds={{duration_secs}}\"]\n\n[accounts.client_uat]",
            helper.display()
        ),
    );
    std::fs::write(&env.host.config, text).unwrap();
    let mut job = env
        .job(720, "feature/s3", "branch", false, "client_dev", "true")
        .timeout(600);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    let seen = std::fs::read_to_string(&seen).unwrap();
    let first = seen.lines().next().unwrap();
    let (arg, env_value) = first.split_once(' ').unwrap();
    let secs: u64 = env_value.parse().unwrap();
    // The job's timeout plus the 900 s margin, less the moments since prepare began.
    assert!((1490..=1500).contains(&secs), "{seen}");
    assert_eq!(arg, format!("--duration-seconds={secs}"), "{seen}");
}
