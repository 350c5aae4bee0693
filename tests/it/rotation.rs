//! Kerberos under key rotation, with two real MIT KDCs of one realm standing in for two DCs of
//! an AD domain before and after a rotation replicated: two databases, the same principal at
//! key version 3 on one and 4 on the other (the same password gives the same key: same realm,
//! same salt). A key one DC rejects moves on to the next DC; when every DC rejects it the job
//! is told the password was probably rotated, which key versions the keytab holds, and how to
//! export a fresh one; `check` lists key versions and `check --probe` says which DC accepts
//! which; the metric counts `wrong_key`.

use crate::common::{self as runner, tokens};

use std::path::{Path, PathBuf};

use p3_testkit::driver::Host;
use p3_testkit::kdc::Kdc;
use runner::JobResult;
use serde_json::Value;
use tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};

const REALM: &str = "AD.TEST";
const SVC: &str = "svc_ad";

struct Domain {
    /// The DC still at key version 3 (replication has not reached it).
    old: Kdc,
    /// The DC at key version 4 (it has the rotated key).
    new: Kdc,
    minter: TokenMinter,
    jwks: JwksServer,
    keytabs: tempfile::TempDir,
}

impl Domain {
    fn start() -> Domain {
        let old = Kdc::start_named(REALM, &[SVC]);
        let new = Kdc::start_named(REALM, &[SVC]);
        old.set_key(SVC, "rotation-3", 3);
        new.set_key(SVC, "rotation-4", 4);
        let minter = TokenMinter::new();
        let jwks = JwksServer::start(&minter.jwks_json());
        let keytabs = tempfile::Builder::new()
            .prefix("p3-kt-")
            .tempdir_in(p3_testkit::driver::scratch_dir())
            .unwrap();
        Domain {
            old,
            new,
            minter,
            jwks,
            keytabs,
        }
    }

    /// A keytab exported from the given DCs (one key version each).
    fn keytab(&self, file: &str, from: &[&Kdc]) -> PathBuf {
        let path = self.keytabs.path().join(file);
        for kdc in from {
            kdc.export_keytab(SVC, &path);
        }
        path
    }

    fn host(&self, keytab: &Path, dcs: &[&Kdc]) -> Host {
        let dcs: Vec<String> = dcs.iter().map(|k| addr(k)).collect();
        runner::host(&format!(
            r#"
[identity]
gitlab_url = "{ISSUER}"
audience = "p3-executor"
jwks_url = "{jwks}"

[kerberos]
timeout_secs = 20

[accounts.ad]
principal = "{SVC}@{REALM}"
keytab = "{keytab}"
[accounts.ad.kerberos]
realm = "{REALM}"
kdcs = {dcs:?}
include_host_config = false

[devstages.ad]
deploy_account = "ad"
projects = ["data-ml/*"]
"#,
            jwks = self.jwks.url,
            keytab = keytab.display(),
        ))
    }

    fn run(&self, host: &Host, id: u64) -> (JobResult, String) {
        let claims = gitlab_claims(
            ISSUER,
            "p3-executor",
            id,
            "data-ml/forecast",
            "main",
            "branch",
            true,
        );
        let mut job = host
            .job(id, "klist | grep -i 'default principal'")
            .var("P3_ID_TOKEN", &self.minter.mint(claims))
            .var("P3_DEVSTAGE", "ad");
        let result = job.run_all();
        (result, job.log)
    }
}

fn addr(kdc: &Kdc) -> String {
    format!("127.0.0.1:{}", kdc.port())
}

fn grant_record(host: &Host, job: u64) -> Value {
    std::fs::read_to_string(host.root().join("audit/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["job_id"] == job && r["event"] == "grant")
        .unwrap_or_else(|| panic!("no grant record for job {job}"))
}

#[test]
fn a_keytab_with_both_key_versions_is_granted_whichever_dc_is_listed_first() {
    let d = Domain::start();
    let both = d.keytab("both.keytab", &[&d.old, &d.new]);
    for (i, order) in [[&d.old, &d.new], [&d.new, &d.old]].iter().enumerate() {
        let host = d.host(&both, order);
        let id = 9401 + i as u64;
        let (result, log) = d.run(&host, id);
        assert_eq!(result, JobResult::Success, "order {i}: {log}");
        assert!(
            log.contains(&format!("Default principal: {SVC}@{REALM}")),
            "{log}"
        );
        let rec = grant_record(&host, id);
        assert_eq!(rec["decision"], "granted", "{rec}");
    }
}

#[test]
fn a_rejected_key_moves_on_to_the_next_dc_and_the_record_names_both_answers() {
    let d = Domain::start();
    let v3 = d.keytab("v3.keytab", &[&d.old]);
    // The rotated DC first: it rejects key version 3; the DC not yet replicated accepts it.
    let host = d.host(&v3, &[&d.new, &d.old]);
    let (result, log) = d.run(&host, 9411);
    assert_eq!(result, JobResult::Success, "{log}");
    let rec = grant_record(&host, 9411);
    assert_eq!(rec["decision"], "granted", "{rec}");
    assert_eq!(rec["extra"]["kdc"], addr(&d.old), "{rec}");
    let failures = rec["extra"]["kinit_failures"]
        .as_array()
        .expect("kinit_failures");
    assert_eq!(failures.len(), 1, "{rec}");
    assert_eq!(failures[0]["kdc"], addr(&d.new), "{rec}");
    assert_eq!(failures[0]["reason"], "wrong_key", "{rec}");
    let answer = failures[0]["answer"].as_str().unwrap();
    assert!(
        answer.contains("Password incorrect")
            || answer.contains("Preauthentication failed")
            || answer.contains("Key version"),
        "{answer}"
    );
    let metrics = String::from_utf8_lossy(&host.exec(&["metrics"]).stdout).into_owned();
    assert!(
        metrics.contains(r#"p3_executor_kinit_failures_total{account="ad",reason="wrong_key"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"p3_executor_keytab_age_seconds{account="ad"} "#),
        "{metrics}"
    );

    // check lists the keytab's key versions; --probe says which DC accepts which.
    let both = d.keytab("both.keytab", &[&d.old, &d.new]);
    let host = d.host(&both, &[&d.new, &d.old]);
    let out = host.exec(&["check", "--probe"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "ok: accounts.ad: keytab {}: {SVC}@{REALM} key version(s) 3, 4 (aes256-cts-hmac-sha1-96",
            both.display()
        )) && text.contains("0 day(s) old"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ok: accounts.ad: probe DC {}: accepts key version 4; rejects 3 (",
            addr(&d.new)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ok: accounts.ad: probe DC {}: accepts key version 3; rejects 4 (",
            addr(&d.old)
        )),
        "{text}"
    );
}

#[test]
fn when_every_dc_rejects_the_key_the_job_is_told_the_password_was_rotated() {
    let d = Domain::start();
    let both = d.keytab("both.keytab", &[&d.old, &d.new]);
    d.old.set_key(SVC, "rotation-5", 5);
    d.new.set_key(SVC, "rotation-5", 5);
    let host = d.host(&both, &[&d.old, &d.new]);
    let (result, log) = d.run(&host, 9421);
    assert_eq!(result, JobResult::SystemFailure, "{log}");
    for needle in [
        "password has probably been rotated",
        "key version(s) 3, 4",
        &addr(&d.old),
        &addr(&d.new),
        "ktpass",
        "msktutil",
        "adcli",
        "gMSA",
    ] {
        assert!(log.contains(needle), "{needle:?} in {log}");
    }
    let rec = grant_record(&host, 9421);
    assert_eq!(rec["decision"], "failed", "{rec}");
    let failures = rec["extra"]["kinit_failures"]
        .as_array()
        .expect("kinit_failures");
    let kdcs: Vec<&str> = failures
        .iter()
        .map(|f| f["kdc"].as_str().unwrap())
        .collect();
    assert_eq!(kdcs, vec![addr(&d.old), addr(&d.new)], "{rec}");
    let metrics = String::from_utf8_lossy(&host.exec(&["metrics"]).stdout).into_owned();
    assert!(
        metrics.contains(r#"p3_executor_kinit_failures_total{account="ad",reason="wrong_key"} 2"#),
        "{metrics}"
    );
}
