//! The audit log: hash chain, tamper detection, concurrent appends from separate processes,
//! and `audit show` / `audit verify` through the real binary.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use p3_executor::audit::{self, AuditEvent, AuditRecord, Decision, GENESIS};
use p3_executor::config::AuditConfig;

use crate::common as runner;

const WRITERS: usize = 8;
const PER_WRITER: usize = 50;

fn cfg(path: &Path) -> AuditConfig {
    AuditConfig {
        path: path.to_path_buf(),
        ..AuditConfig::default()
    }
}

fn grant(job: u64, project: &str, devstage: &str, deploy: &str) -> AuditRecord {
    let mut r = AuditRecord::new(
        AuditEvent::Grant,
        Decision::Granted,
        format!("devstage {devstage}: protected ref matches"),
    );
    r.job_id = Some(job);
    r.project = Some(project.into());
    r.git_ref = Some("main".into());
    r.ref_type = Some("branch".into());
    r.ref_protected = Some(true);
    r.devstage = Some(devstage.into());
    r.deploy_stage = Some(deploy.into());
    r.account = Some(deploy.into());
    r.principal = Some(format!("svc_{deploy}@EXAMPLE.COM"));
    r.keytab_sha256 = Some("ab".repeat(32));
    r.identity_source = Some("id_token".into());
    r.token_jti = Some(format!("jti-{job}"));
    r
}

/// A log with five records from three jobs in two projects; returns them as written.
fn five(path: &Path) -> Vec<AuditRecord> {
    let c = cfg(path);
    let mut deny = AuditRecord::new(
        AuditEvent::Deny,
        Decision::Denied,
        "devstage client_prod: ref feature/x is not protected",
    );
    deny.job_id = Some(3);
    deny.project = Some("other/app".into());
    deny.devstage = Some("client_prod".into());
    [
        grant(1, "grp/app", "client_dev", "client_dev"),
        grant(2, "grp/lib", "client_prod", "client_uat"),
        deny,
        AuditRecord::new(AuditEvent::Cleanup, Decision::Succeeded, "cleanup"),
        AuditRecord::new(AuditEvent::Gc, Decision::Succeeded, "gc"),
    ]
    .into_iter()
    .map(|r| audit::append(&c, r).unwrap())
    .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn broken_at(path: &Path) -> (u64, String) {
    let v = audit::verify(path).unwrap();
    let b = v.broken.expect("chain should be broken");
    (b.line, b.message)
}

/// Run the real binary with a config whose audit log is `log`.
fn p3(log: &Path, args: &[&str]) -> (i32, String) {
    let dir = log.parent().unwrap();
    let conf = dir.join("config.toml");
    std::fs::write(&conf, format!("[audit]\npath = {:?}\n", log)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_p3-executor"))
        .arg("--config")
        .arg(&conf)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn appended_records_form_a_chain_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log/p3/audit.jsonl");
    let written = five(&log);
    assert_eq!(written[0].prev, GENESIS);
    for (i, r) in written.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.hash.len(), 64);
        if i > 0 {
            assert_eq!(r.prev, written[i - 1].hash);
            assert!(r.time >= written[i - 1].time, "times follow the lock order");
        }
    }
    let v = audit::verify(&log).unwrap();
    assert_eq!(v.broken, None);
    assert_eq!(v.records, 5);
    assert_eq!(v.head, written[4].hash);

    // What was returned is what is stored, and identity fields keep their names.
    let stored: Vec<AuditRecord> = lines(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored, written);
    assert!(lines(&log)[0].contains(r#""ref":"main""#));
    assert!(
        !lines(&log)[3].contains("job_id"),
        "unknown fields are omitted"
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&log), 0o640);
    assert_eq!(mode(log.parent().unwrap()), 0o750);

    let (code, out) = p3(&log, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = p3(&dir.path().join("absent.jsonl"), &["audit", "verify"]);
    assert_eq!(code, 1, "a missing log is not a verified one: {out}");
    assert!(out.contains("does not exist"), "{out}");
    let (code, out) = p3(&log, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 5 record(s)"), "{out}");
    assert!(out.contains(&written[4].hash), "{out}");
}

#[test]
fn an_edited_field_is_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    five(&log);
    let mut l = lines(&log);
    assert!(l[2].contains("client_prod"));
    l[2] = l[2].replace("client_prod", "client_dev");
    write_lines(&log, &l);
    let (line, msg) = broken_at(&log);
    assert_eq!(line, 3);
    assert!(
        msg.contains("hash mismatch") && msg.contains("edited"),
        "{msg}"
    );

    let (code, out) = p3(&log, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at line 3 (seq 3)"), "{out}");
    assert!(out.contains("2 record(s) before it verify"), "{out}");
}

#[test]
fn an_edited_and_rehashed_record_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    five(&log);
    let mut l = lines(&log);
    let mut v: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
    v["principal"] = "svc_client_prod@EXAMPLE.COM".into();
    v["hash"] = audit::record_hash(&v).into();
    l[1] = v.to_string();
    write_lines(&log, &l);
    let (line, msg) = broken_at(&log);
    assert_eq!(line, 3);
    assert!(msg.contains("line 2 was edited and re-hashed"), "{msg}");
}

#[test]
fn a_deleted_line_is_detected_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    five(&log);
    let mut l = lines(&log);
    l.remove(2);
    write_lines(&log, &l);
    let (line, msg) = broken_at(&log);
    assert_eq!(line, 3);
    assert!(msg.contains("seq 4 where 3 was expected"), "{msg}");

    // Removing the first record is caught too: the log no longer starts a chain.
    five(&dir.path().join("b.jsonl"));
    let mut l = lines(&dir.path().join("b.jsonl"));
    l.remove(0);
    write_lines(&dir.path().join("b.jsonl"), &l);
    let (line, msg) = broken_at(&dir.path().join("b.jsonl"));
    assert_eq!(line, 1);
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn swapped_lines_are_reported_as_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    five(&log);
    let mut l = lines(&log);
    l.swap(1, 2);
    write_lines(&log, &l);
    let (line, msg) = broken_at(&log);
    assert_eq!(line, 2);
    assert!(msg.contains("seq 3 where 2 was expected"), "{msg}");
}

#[test]
fn a_torn_last_line_is_reported_then_removed_and_recorded_by_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let written = five(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    let cut = text.len() - 20;
    std::fs::write(&log, &text[..cut]).unwrap();
    let good = text[..cut].rfind('\n').unwrap() + 1;
    let (line, msg) = broken_at(&log);
    assert_eq!(line, 5);
    assert!(msg.contains("incomplete"), "{msg}");
    let (code, out) = p3(&log, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at line 5"), "{out}");
    assert!(
        out.contains(&format!("torn append, not damage: {} byte(s)", cut - good)),
        "{out}"
    );

    let new = audit::append(
        &cfg(&log),
        AuditRecord::new(AuditEvent::Grant, Decision::Granted, "x"),
    )
    .unwrap();
    let stored = lines(&log);
    assert_eq!(stored.len(), 6);
    assert_eq!(
        stored[..4].join("\n") + "\n",
        text[..good],
        "records 1-4 untouched"
    );
    let recovered: AuditRecord = serde_json::from_str(&stored[4]).unwrap();
    assert_eq!(recovered.event, AuditEvent::Recovered);
    assert_eq!(recovered.prev, written[3].hash);
    let r = recovered.recovery.unwrap();
    assert_eq!(r.removed_bytes as usize, cut - good);
    assert_eq!(r.last_good_hash, written[3].hash);
    assert_eq!((new.seq, new.prev), (6, recovered.hash));

    let (code, out) = p3(&log, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("OK: 6 record(s), 1 recovery record(s)"),
        "{out}"
    );
    assert!(out.contains("recovery at line 5 (seq 5"), "{out}");
    assert!(out.contains(&r.removed_sha256), "{out}");
}

/// Write `records` grants to the log at `log`, then `torn` bytes after them.
fn log_with_tail(log: &Path, records: u64, torn: &[u8]) {
    for i in 0..records {
        audit::append(
            &cfg(log),
            grant(i + 1, "grp/app", "client_dev", "client_dev"),
        )
        .unwrap();
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    std::io::Write::write_all(&mut f, torn).unwrap();
}

/// The runner host's `check` output.
fn check(host: &p3_testkit::driver::Host) -> String {
    let out = host.exec(&["check"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A crash during an append left half a record at the end of a host's log. The next job's
/// denial removes exactly those bytes, records the recovery and its own denial; `audit verify`
/// passes and lists the recovery; `check` warns about it.
#[test]
fn a_denied_job_heals_a_torn_tail_and_verify_and_check_report_it() {
    let host = runner::host("");
    let log = host.root().join("audit/audit.jsonl");
    let torn = br#"{"seq":3,"time":"2026-11-26T12:00:00Z","host":"h","event":"gra"#;
    log_with_tail(&log, 2, torn);
    let good = std::fs::metadata(&log).unwrap().len() as usize - torn.len();
    let before = std::fs::read(&log).unwrap();
    let out = check(&host);
    assert!(
        out.contains("ends in a torn append at line 3") && !out.contains("error: audit log"),
        "a torn tail is a warning, not an error: {out}"
    );

    let mut job = host.job(8811, "true").var("P3_DEVSTAGE", "client_dev");
    assert_eq!(
        job.run_all(),
        runner::JobResult::BuildFailure(Some(1)),
        "{}",
        job.log
    );
    assert!(job.log.contains("grants no devstages"), "{}", job.log);
    assert!(
        job.log.contains(&format!(
            "removed a torn tail of {} byte(s) (an incomplete line (no newline)",
            torn.len()
        )),
        "{}",
        job.log
    );

    let after = std::fs::read(&log).unwrap();
    assert_eq!(
        after[..good],
        before[..good],
        "no complete record is removed"
    );
    let records: Vec<AuditRecord> = lines(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_eq!(records[2].event, AuditEvent::Recovered);
    let r = records[2].recovery.clone().unwrap();
    assert_eq!(
        (r.removed_bytes as usize, r.offset as usize),
        (torn.len(), good)
    );
    assert_eq!(r.last_good_hash, records[1].hash);
    assert_eq!(records[3].event, AuditEvent::Deny);
    assert_eq!(records[3].job_id, Some(8811));

    let verify = host.exec(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    assert!(
        text.contains("OK: 4 record(s), 1 recovery record(s)"),
        "{text}"
    );
    assert!(text.contains("recovery at line 3 (seq 3"), "{text}");

    let out = check(&host);
    assert!(
        out.contains(&format!(
            "warning: audit log {}: 1 recovery record(s); the last, at ",
            log.display()
        )) && out.contains(&format!("removed a torn append of {} byte(s)", torn.len())),
        "{out}"
    );
    assert!(!out.contains("error: audit log"), "{out}");
}

/// A log damaged in the middle is never repaired: a denied job is still a denial (build
/// failure) and says in its log that its record could not be written, with the fix; the log
/// is left as it was; `check` and `audit verify` name the line.
#[test]
fn a_damaged_middle_fails_closed_and_a_denial_stays_a_denial() {
    let host = runner::host("");
    let log = host.root().join("audit/audit.jsonl");
    log_with_tail(&log, 3, b"{\"seq\":4,");
    let mut l = lines(&log);
    l[1] = l[1].replace("grp/app", "grp/other");
    std::fs::write(&log, l.join("\n")).unwrap();
    let before = std::fs::read(&log).unwrap();

    let mut job = host.job(8812, "true").var("P3_DEVSTAGE", "client_dev");
    assert_eq!(
        job.run_all(),
        runner::JobResult::BuildFailure(Some(1)),
        "{}",
        job.log
    );
    assert!(job.log.contains("grants no devstages"), "{}", job.log);
    assert!(
        job.log.contains("cannot write audit record")
            && job.log.contains("is damaged: line 2 (seq 2)")
            && job.log.contains("p3-executor audit verify")
            && job.log.contains("keep it as evidence"),
        "{}",
        job.log
    );
    assert_eq!(std::fs::read(&log).unwrap(), before, "nothing is removed");

    let verify = host.exec(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{text}");
    assert!(text.contains("BROKEN at line 2 (seq 2)"), "{text}");
    assert!(text.contains("move it aside"), "{text}");
    let out = check(&host);
    assert!(
        out.contains(&format!(
            "error: audit log {} is damaged at line 2",
            log.display()
        )) && out.contains("keep it as evidence"),
        "{out}"
    );
}

/// A complete last line that is not a good record is damage, never a torn append: an edited
/// last record (still valid JSON on its own line), a non-JSON complete last line, and a last
/// record that does not continue the chain each fail the next grant closed (system failure,
/// the line and the fix in the job log) and leave the log byte for byte as it was.
#[test]
fn a_damaged_complete_last_line_fails_the_next_grant_closed() {
    use runner::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
    let kdc = p3_testkit::kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let config = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "");
    type Damage = fn(&Path);
    let cases: [(&str, u64, Damage); 3] = [
        ("edited last record", 3, |log| {
            let mut l = lines(log);
            l[2] = l[2].replace("grp/app", "grp/other");
            write_lines(log, &l);
        }),
        ("non-JSON complete last line", 4, |log| {
            let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
            std::io::Write::write_all(&mut f, b"not a record\n").unwrap();
        }),
        ("last record that breaks the chain", 2, |log| {
            let mut l = lines(log);
            l.remove(1);
            write_lines(log, &l);
        }),
    ];
    for (i, (what, line, damage)) in cases.into_iter().enumerate() {
        let host = runner::host(&config);
        let log = host.root().join("audit/audit.jsonl");
        log_with_tail(&log, 3, b"");
        damage(&log);
        let before = std::fs::read(&log).unwrap();
        let id = 8830 + i as u64;
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
            .job(id, "echo granted")
            .var("P3_ID_TOKEN", &minter.mint(claims))
            .var("P3_DEVSTAGE", "client_dev");
        assert_eq!(
            job.run_all(),
            runner::JobResult::SystemFailure,
            "{what}: {}",
            job.log
        );
        assert!(!job.log.contains("\ngranted"), "{what}: {}", job.log);
        assert!(
            job.log.contains(&format!("is damaged: line {line}"))
                && job.log.contains("p3-executor audit verify")
                && job.log.contains("keep it as evidence"),
            "{what}: {}",
            job.log
        );
        assert_eq!(
            std::fs::read(&log).unwrap(),
            before,
            "{what}: the log is left byte for byte as it was"
        );
        let verify = host.exec(&["audit", "verify"]);
        let text = String::from_utf8_lossy(&verify.stdout);
        assert_eq!(verify.status.code(), Some(1), "{what}: {text}");
        assert!(
            text.contains(&format!("BROKEN at line {line}")),
            "{what}: {text}"
        );
        assert!(!text.contains("torn append"), "{what}: {text}");
    }
}

#[test]
fn the_tail_is_found_across_read_chunks() {
    // Records larger than the 4 KiB backwards-read chunk must still chain correctly.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    for i in 0..3 {
        let mut r = AuditRecord::new(AuditEvent::S3Credentials, Decision::Granted, "s3");
        r.extra
            .insert("note".into(), "x".repeat(5000 + i * 3000).into());
        r.extra
            .insert("expires".into(), "2026-11-26T13:00:00Z".into());
        audit::append(&cfg(&log), r).unwrap();
    }
    let v = audit::verify(&log).unwrap();
    assert_eq!((v.records, v.broken), (3, None));
}

/// Helper run in child processes by `concurrent_processes_never_lose_or_interleave_records`.
#[test]
#[ignore = "child process helper for the concurrency test"]
fn concurrent_writer_child() {
    // Run on its own (`cargo test -- --ignored`) it has nothing to do.
    let Ok(log) = std::env::var("P3_AUDIT_TEST_LOG") else {
        return;
    };
    let log = PathBuf::from(log);
    let writer: u64 = std::env::var("P3_AUDIT_TEST_WRITER")
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..PER_WRITER as u64 {
        let mut r = grant(writer * 1000 + i, "grp/app", "client_dev", "client_dev");
        r.extra.insert("writer".into(), writer.into());
        r.extra.insert("i".into(), i.into());
        audit::append(&cfg(&log), r).unwrap();
    }
}

#[test]
fn concurrent_processes_never_lose_or_interleave_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "audit::concurrent_writer_child",
                    "--exact",
                    "--ignored",
                    "--test-threads",
                    "1",
                ])
                .env("P3_AUDIT_TEST_LOG", &log)
                .env("P3_AUDIT_TEST_WRITER", w.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let v = audit::verify(&log).unwrap();
    assert_eq!(v.broken, None);
    assert_eq!(v.records as usize, WRITERS * PER_WRITER);
    let mut seen = BTreeSet::new();
    for (n, line) in lines(&log).iter().enumerate() {
        let r: AuditRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.seq, n as u64 + 1);
        assert!(seen.insert((r.extra["writer"].as_u64(), r.extra["i"].as_u64())));
    }
    assert_eq!(
        seen.len(),
        WRITERS * PER_WRITER,
        "every record exactly once"
    );
}

#[test]
fn show_filters_by_job_project_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let written = five(&log);

    let (code, out) = p3(&log, &["audit", "show"]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 6, "{out}");
    assert!(rows[0].starts_with("TIME (UTC)"), "{out}");
    assert!(
        rows[2].contains("grp/lib")
            && rows[2].contains("main (protected)")
            && rows[2].contains("client_prod → client_uat")
            && rows[2].contains("svc_client_uat@EXAMPLE.COM")
            && rows[2].contains("granted"),
        "{out}"
    );
    assert!(
        rows[3].contains("denied") && rows[3].contains("not protected"),
        "{out}"
    );

    let (_, out) = p3(&log, &["audit", "show", "--job", "2"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("grp/lib") && !out.contains("grp/app"), "{out}");

    let (_, out) = p3(&log, &["audit", "show", "--project", "grp/*"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(!out.contains("other/app"), "{out}");

    let (_, out) = p3(&log, &["audit", "show", "--since", "1h"]);
    assert_eq!(out.lines().count(), 6, "{out}");
    let (_, out) = p3(&log, &["audit", "show", "--since", "2999-01-01"]);
    assert_eq!(out.lines().count(), 1, "header only: {out}");
    let (code, _) = p3(&log, &["audit", "show", "--since", "last tuesday"]);
    assert_ne!(code, 0);

    let (_, out) = p3(&log, &["audit", "show", "--project", "other/app", "--json"]);
    let shown: Vec<AuditRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown, vec![written[2].clone()]);
}

/// "Who had `svc_client_uat`, and who was refused prod?" without jq: the filters an auditor
/// asks with, through the binary, on a log of appended records.
#[test]
fn show_answers_who_had_an_account_and_who_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let written = five(&log);
    let jobs = |args: &[&str]| -> Vec<Option<u64>> {
        let mut all = vec!["audit", "show", "--json"];
        all.extend(args);
        let (code, out) = p3(&log, &all);
        assert_eq!(code, 0, "{args:?}: {out}");
        out.lines()
            .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().job_id)
            .collect()
    };
    let principal = ["--principal", "svc_client_uat@EXAMPLE.COM"];
    assert_eq!(jobs(&principal), [Some(2)]);
    assert_eq!(
        jobs(&["--principal", "svc_client_*@EXAMPLE.COM"]),
        [Some(1), Some(2)]
    );
    assert_eq!(jobs(&["--account", "client_uat"]), [Some(2)]);
    assert_eq!(jobs(&["--devstage", "client_prod"]), [Some(2), Some(3)]);
    assert_eq!(
        jobs(&["--devstage", "client_prod", "--decision", "denied"]),
        [Some(3)]
    );
    assert_eq!(jobs(&["--event", "gc"]), [None]);
    // Up to the denial, not including it.
    let until = written[2]
        .time
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    assert!(written[1].time < written[2].time, "appends are ordered");
    let before = jobs(&["--until", &until]);
    assert!(
        before.contains(&Some(2)) && !before.contains(&Some(3)),
        "{before:?}"
    );

    // A filter that cannot mean anything is a usage error naming it, not an empty answer.
    let conf = dir.path().join("config.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_p3-executor"))
        .arg("--config")
        .arg(&conf)
        .args(["audit", "show", "--decision", "deny"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--decision \"deny\": expected one of granted, denied"),
        "{stderr}"
    );
}

/// A denied job's request variable forges a "granted" row with a newline and sends escape
/// sequences (clear screen, window title, 8-bit CSI, bidi override). `audit show` must print
/// every record as exactly one row with all of it visibly escaped, while `--json` and the log
/// keep the exact original string.
#[test]
fn show_escapes_what_a_denied_job_requested() {
    if !runner::is_root() {
        eprintln!("skipped: needs root for private job uids");
        return;
    }
    const FORGED: &str = "client_dev\n2026-01-01 00:00:00  999  client/app  main (protected)  client_prod → client_prod  svc_client_prod@EXAMPLE.COM  grant  granted  devstages.client_prod: every rule satisfied\x1b[2J\x1b]0;owned\x07\u{9b}31m\u{202e}end";
    // No devstages on this runner: the request is denied and recorded as it was made.
    let host = runner::host("");
    let mut job = host.job(8801, "true").var("P3_DEVSTAGE", FORGED);
    assert_ne!(
        job.run_all(),
        runner::JobResult::Success,
        "the request must be denied: {}",
        job.log
    );

    let log = host.root().join("audit/audit.jsonl");
    let stored = lines(&log);
    let records: Vec<AuditRecord> = stored
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denial = records
        .iter()
        .find(|r| r.event == AuditEvent::Deny)
        .expect("a deny record");
    assert_eq!(denial.devstage.as_deref(), Some(FORGED));
    assert_eq!(denial.job_id, Some(8801));

    let out = host.exec(&["audit", "show"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains(['\x1b', '\x07', '\r', '\u{9b}', '\u{202e}']),
        "raw control or bidi characters reach the terminal: {text:?}"
    );
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows.len(),
        1 + records.len(),
        "one header and exactly one row per record: {text}"
    );
    for row in &rows[1..] {
        assert!(
            row.starts_with(|c: char| c.is_ascii_digit()) && row.contains("  8801  "),
            "every row is a record of job 8801, none forged: {row}"
        );
    }
    assert!(
        !rows
            .iter()
            .any(|r| r.starts_with("2026-01-01 00:00:00  999")),
        "no forged row: {text}"
    );
    let deny_row = rows
        .iter()
        .find(|r| r.contains("  denied  "))
        .expect("the deny row");
    assert!(
        deny_row.contains(r"client_dev\n2026-01-01 00:00:00  999  client/app  main (protected)")
            && deny_row
                .contains(r"every rule satisfied\x1b[2J\x1b]0;owned\x07\u{9b}31m\u{202e}end → -"),
        "the devstage is shown escaped: {deny_row}"
    );

    // The JSON log and `--json` are unchanged: the exact stored lines, the exact string.
    let out = host.exec(&["audit", "show", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json = String::from_utf8(out.stdout).unwrap();
    assert_eq!(json, stored.join("\n") + "\n");
    let shown: Vec<AuditRecord> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown, records);
    let verify = host.exec(&["audit", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

/// Every record names the runner (a stable host id kept in the state root) and the policy
/// version (the config's SHA-256), and `check` shows the same two values.
#[test]
fn records_name_the_host_id_and_the_config_in_force() {
    use sha2::Digest;
    let host = crate::common::host("");
    let mut job = host.job(8840, "true").var("P3_DEVSTAGE", "client_dev");
    job.run_all();
    let mut again = host.job(8841, "true").var("P3_DEVSTAGE", "client_dev");
    again.run_all();
    let config_hash = hex::encode(sha2::Sha256::digest(std::fs::read(&host.config).unwrap()));
    let log = std::fs::read_to_string(host.root().join("audit/audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 2, "{log}");
    let host_id = records[0]["host_id"].as_str().expect("host_id").to_string();
    assert_eq!(host_id.len(), 32, "{host_id}");
    for r in &records {
        assert_eq!(r["host_id"], host_id.as_str(), "the id is stable: {r}");
        assert_eq!(r["config_sha256"], config_hash.as_str(), "{r}");
    }
    let check = String::from_utf8_lossy(&host.exec(&["check"]).stdout).to_string();
    assert!(
        check.contains(&config_hash) && check.contains(&host_id),
        "{check}"
    );
}

/// With `[audit.syslog]`, every record also reaches the syslog socket as RFC 5424 with the
/// record as JSON; with nothing listening, jobs are decided as before and the drop is counted,
/// shown by `check` and the metrics.
#[test]
fn records_reach_syslog_and_an_outage_never_blocks_a_decision() {
    use std::os::unix::net::UnixDatagram;
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("log.sock");
    let host = crate::common::host("");
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        format!(
            "{text}\n[audit.syslog]\nsocket = \"{}\"\nfacility = \"auth\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut job = host.job(8850, "true").var("P3_DEVSTAGE", "client_dev");
    assert_eq!(
        job.run_all(),
        runner::JobResult::BuildFailure(Some(1)),
        "{}",
        job.log
    );
    let mut buf = vec![0u8; 65536];
    let n = listener.recv(&mut buf).expect("a datagram");
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        line.starts_with("<36>1 "),
        "auth.warning for a denial: {line}"
    );
    let json = &line[line.find(" - {").unwrap() + 3..];
    let record: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(record["job_id"], 8850, "{line}");
    assert_eq!(record["event"], "deny", "{line}");

    // The syslog daemon is gone: the next denial is still a denial, and the drop is counted.
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
    let mut job = host.job(8851, "true").var("P3_DEVSTAGE", "client_dev");
    assert_eq!(
        job.run_all(),
        runner::JobResult::BuildFailure(Some(1)),
        "{}",
        job.log
    );
    let check = String::from_utf8_lossy(&host.exec(&["check"]).stdout).to_string();
    assert!(
        check.contains("1 audit record(s) could not be sent to syslog"),
        "{check}"
    );
    let metrics = String::from_utf8_lossy(&host.exec(&["metrics"]).stdout).to_string();
    assert!(
        metrics.contains("p3_executor_syslog_drops_total 1"),
        "{metrics}"
    );
}
