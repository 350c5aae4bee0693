//! The audit trail beyond one host (issue 12), against moto's S3 with Object Lock and
//! conditional puts: several hosts ship to one bucket, `audit verify --s3` checks every chain
//! (and the local log on a host), `audit show --s3` queries them all; shippers killed at any
//! point are completed by the next; tampering in the bucket or the local log is named.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::Duration;

use p3_executor::audit::{AuditEvent, AuditRecord};
use p3_testkit::driver::Host;
use p3_testkit::fleet::{append_records as records, ship_to};
use p3_testkit::s3::S3Server;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::common::{JobResult, host, is_root, text};
use crate::s3::keys;
use p3_testkit::kdc;

/// A bucket with Object Lock (so versioned), created with the AWS CLI.
fn locked_bucket(s3: &S3Server, name: &str) {
    s3.aws_ok(&[
        "s3api",
        "create-bucket",
        "--bucket",
        name,
        "--object-lock-enabled-for-bucket",
    ]);
}

/// The executor with the host's config and no AWS settings of ours in its environment.
fn run(h: &Host, args: &[&str]) -> Output {
    let mut cmd = h.host_command(args);
    clean_env(&mut cmd);
    cmd.output().unwrap()
}

fn clean_env(cmd: &mut Command) {
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ] {
        cmd.env_remove(v);
    }
}

fn ok(h: &Host, args: &[&str]) -> String {
    let out = run(h, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seq ranges the keys name, checked to cover 1..=n exactly once (no gap, no overlap,
/// so no record under two keys).
fn assert_covers(keys: &[String], n: u64) {
    let mut ranges: Vec<(u64, u64)> = keys
        .iter()
        .map(|k| {
            let name = k.rsplit('/').next().unwrap().trim_end_matches(".jsonl");
            let (a, b) = name.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    ranges.sort();
    let mut next = 1;
    for (a, b) in &ranges {
        assert_eq!(*a, next, "keys {keys:?}");
        next = b + 1;
    }
    assert_eq!(next, n + 1, "keys {keys:?}");
}

fn host_id(h: &Host) -> String {
    std::fs::read_to_string(h.root().join("state/host-id"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn three_hosts_ship_thirty_jobs_to_one_bucket_and_verify() {
    if !is_root() {
        eprintln!("skipped: grants need root");
        return;
    }
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "fleet");
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let config = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "");
    let hosts: Vec<Host> = (0..3)
        .map(|_| {
            let h = host(&config);
            // Small batches, so each host ships several objects.
            ship_to(&h, &s3, "fleet", "audit", "batch_records = 4");
            h
        })
        .collect();
    // 30 jobs, 10 per host: granted (feature branch → client_dev) and denied (client_uat
    // wants a protected ref), all at once; each cleanup ships opportunistically.
    let mut jobs = Vec::new();
    for i in 0..30u64 {
        let id = 7700 + i;
        let granted = i % 3 != 0;
        let claims = gitlab_claims(
            ISSUER,
            "p3-executor",
            id,
            "data-ml/fleet",
            if granted { "feature/x" } else { "main" },
            "branch",
            false,
        );
        let job = hosts[(i % 3) as usize]
            .job(id, "true")
            .var("P3_ID_TOKEN", &minter.mint(claims))
            .var(
                "P3_DEVSTAGE",
                if granted { "client_dev" } else { "client_uat" },
            );
        jobs.push((granted, (i % 3) as usize, job));
    }
    std::thread::scope(|s| {
        for (granted, _, job) in jobs.iter_mut() {
            s.spawn(move || {
                let result = job.run_all();
                let want = if *granted {
                    JobResult::Success
                } else {
                    JobResult::BuildFailure(Some(1))
                };
                assert_eq!(result, want, "{}", job.log);
            });
        }
    });
    // Two shippers per host at once: the lock and the conditional put keep them apart.
    std::thread::scope(|s| {
        for h in &hosts {
            for _ in 0..2 {
                s.spawn(|| ok(h, &["audit", "ship"]));
            }
        }
    });
    for h in &hosts {
        let id = host_id(h);
        let n = std::fs::read_to_string(h.root().join("audit/audit.jsonl"))
            .unwrap()
            .lines()
            .count() as u64;
        assert_covers(&keys(&s3, "fleet", &format!("audit/{id}/")), n);
        // Run on each host: every chain verifies, and this host's local log agrees.
        let out = ok(h, &["audit", "verify", "--s3", "s3://fleet/audit"]);
        assert_eq!(out.matches("OK   host").count(), 3, "{out}");
        assert!(
            out.contains(&format!("host {id} chain"))
                && out
                    .lines()
                    .any(|l| l.contains(&id) && l.contains("local log agrees")),
            "{out}"
        );
        // Nothing waits, and check says so.
        let check = String::from_utf8_lossy(&run(h, &["check"]).stdout).into_owned();
        assert!(
            check.contains("audit shipping to s3://fleet/audit: 0 record(s) waiting"),
            "{check}"
        );
        let metrics = ok(h, &["metrics"]);
        assert!(
            metrics.contains("p3_executor_audit_ship_lag_records 0"),
            "{metrics}"
        );
    }
    // --host narrows both to one host.
    let one = host_id(&hosts[2]);
    let out = ok(
        &hosts[0],
        &[
            "audit",
            "verify",
            "--s3",
            "s3://fleet/audit",
            "--host",
            &one,
        ],
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(&format!("OK   host {one}")), "{out}");
    let out = ok(
        &hosts[0],
        &[
            "audit",
            "show",
            "--s3",
            "s3://fleet/audit",
            "--host",
            &one,
            "--json",
        ],
    );
    assert!(!out.is_empty());
    assert!(
        out.lines().all(|l| serde_json::from_str::<AuditRecord>(l)
            .unwrap()
            .host_id
            .as_deref()
            == Some(one.as_str())),
        "{out}"
    );
    // Every job exactly once across the fleet, with the host that ran it.
    let out = ok(
        &hosts[0],
        &[
            "audit",
            "show",
            "--s3",
            "s3://fleet/audit",
            "--project",
            "data-ml/*",
            "--json",
        ],
    );
    let mut decided: BTreeMap<u64, Vec<(String, AuditEvent)>> = BTreeMap::new();
    for line in out.lines() {
        let r: AuditRecord = serde_json::from_str(line).unwrap();
        if matches!(r.event, AuditEvent::Grant | AuditEvent::Deny) {
            decided
                .entry(r.job_id.unwrap())
                .or_default()
                .push((r.host_id.unwrap(), r.event));
        }
    }
    assert_eq!(decided.len(), 30, "{decided:?}");
    for (granted, h, job) in &jobs {
        let event = if *granted {
            AuditEvent::Grant
        } else {
            AuditEvent::Deny
        };
        assert_eq!(
            decided[&job.id],
            vec![(host_id(&hosts[*h]), event)],
            "job {}",
            job.id
        );
    }
    // "Who was refused, fleet-wide": the same filters as the local log's.
    let out = ok(
        &hosts[0],
        &[
            "audit",
            "show",
            "--s3",
            "s3://fleet/audit",
            "--decision",
            "denied",
            "--json",
        ],
    );
    let refused: BTreeSet<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<AuditRecord>(l)
                .unwrap()
                .job_id
                .unwrap()
        })
        .collect();
    let want: BTreeSet<u64> = jobs
        .iter()
        .filter(|(granted, _, _)| !granted)
        .map(|(_, _, job)| job.id)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(refused, want);
    // The table names the host of each row.
    let table = ok(
        &hosts[1],
        &["audit", "show", "--s3", "s3://fleet/audit", "--job", "7701"],
    );
    assert!(table.starts_with("HOST"), "{table}");
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.contains(&host_id(&hosts[1])[..8])),
        "{table}"
    );
}

#[test]
fn shippers_killed_anywhere_are_completed_by_the_next() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "crash");
    let h = host("");
    ship_to(&h, &s3, "crash", "trail", "batch_records = 2");
    let mut total = 0;
    // Kill the shipper at spread-out moments: before, between and during uploads.
    for (round, delay_ms) in [5u64, 15, 30, 45, 60, 90, 120, 150].into_iter().enumerate() {
        records(&h, 10 + round as u64);
        total += 10 + round as u64;
        let mut child = h.host_command(&["audit", "ship"]);
        clean_env(&mut child);
        let mut child = child
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = ok(&h, &["audit", "ship"]);
    assert!(out.contains(&format!("seq 1..{total}")), "{out}");
    let id = host_id(&h);
    assert_covers(&keys(&s3, "crash", &format!("trail/{id}/")), total);
    let out = ok(&h, &["audit", "verify", "--s3", "s3://crash/trail"]);
    assert!(out.contains("local log agrees"), "{out}");
    // Another run finds nothing new and puts nothing.
    let before = keys(&s3, "crash", "trail/");
    let out = ok(&h, &["audit", "ship"]);
    assert!(out.contains("shipped 0 record(s) in 0 object(s)"), "{out}");
    assert_eq!(keys(&s3, "crash", "trail/"), before);
    // Losing the watermark (a rebuilt state dir) ships nothing twice either: the bucket is
    // listed and what is there is checked and adopted.
    std::fs::remove_file(h.root().join("state/audit-ship/state.json")).unwrap();
    let out = ok(&h, &["audit", "ship"]);
    assert!(out.contains("shipped 0 record(s)"), "{out}");
    assert_eq!(keys(&s3, "crash", "trail/"), before);
}

/// A host that shipped 12 records in batches of 4 to its own prefix.
fn shipped_host(s3: &S3Server, bucket: &str, prefix: &str) -> (Host, Vec<String>) {
    let h = host("");
    ship_to(&h, s3, bucket, prefix, "batch_records = 4");
    records(&h, 12);
    ok(&h, &["audit", "ship"]);
    let k = keys(s3, bucket, &format!("{prefix}/"));
    assert_eq!(k.len(), 3, "{k:?}");
    let out = ok(
        &h,
        &[
            "audit",
            "verify",
            "--s3",
            &format!("s3://{bucket}/{prefix}"),
        ],
    );
    assert!(out.contains("OK"), "{out}");
    (h, k)
}

fn verify_fails(h: &Host, uri: &str) -> String {
    let out = run(h, &["audit", "verify", "--s3", uri]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_local_tail_cut_after_shipping_is_detected_on_that_host() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "cut");
    let (h, _) = shipped_host(&s3, "cut", "t");
    let log = h.root().join("audit/audit.jsonl");
    let text_before = std::fs::read_to_string(&log).unwrap();
    let kept: String = text_before
        .lines()
        .take(9)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, kept).unwrap();
    let out = verify_fails(&h, "s3://cut/t");
    assert!(
        out.contains("local log: ends at seq 9, but this host shipped records up to seq 12"),
        "{out}"
    );
    // The shipper refuses to go on from a log that no longer holds what it shipped.
    records(&h, 5);
    let out = run(&h, &["audit", "ship"]);
    assert!(!out.status.success(), "{}", text(&out));
    let check = String::from_utf8_lossy(&run(&h, &["check"]).stdout).into_owned();
    assert!(
        check.contains("audit shipping to s3://cut/t is failing"),
        "{check}"
    );
}

#[test]
fn an_object_overwritten_with_governance_bypass_is_named() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "over");
    let (h, k) = shipped_host(&s3, "over", "t");
    let forged = h.root().join("forged.jsonl");
    std::fs::write(&forged, "{}\n").unwrap();
    s3.aws_ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "over",
        "--key",
        &k[1],
        "--body",
        forged.to_str().unwrap(),
    ]);
    let out = verify_fails(&h, "s3://over/t");
    assert!(
        out.contains(&format!(
            "first problem: {}: overwritten after shipping",
            k[1]
        )),
        "{out}"
    );
}

#[test]
fn a_deleted_object_is_named_as_a_gap() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "gone");
    let (h, k) = shipped_host(&s3, "gone", "t");
    // Remove the object's only version, bypassing governance retention.
    let versions = s3.aws_ok(&[
        "s3api",
        "list-object-versions",
        "--bucket",
        "gone",
        "--prefix",
        &k[1],
        "--query",
        "Versions[0].VersionId",
        "--output",
        "text",
    ]);
    s3.aws_ok(&[
        "s3api",
        "delete-object",
        "--bucket",
        "gone",
        "--key",
        &k[1],
        "--version-id",
        versions.trim(),
        "--bypass-governance-retention",
    ]);
    let out = verify_fails(&h, "s3://gone/t");
    assert!(
        out.contains(&format!(
            "gap: records 5..8 are missing between {} and {}",
            k[0], k[2]
        )),
        "{out}"
    );
}

#[test]
fn cleanup_ships_within_its_bound_and_a_dead_store_never_fails_a_job() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "jobs");
    let h = host("");
    ship_to(&h, &s3, "jobs", "t", "cleanup_ship_secs = 2");
    // Records of earlier jobs wait (no timer ran); this job's cleanup ships them.
    records(&h, 3);
    let mut job = h.job(8801, "echo hi");
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    let id = host_id(&h);
    assert_covers(&keys(&s3, "jobs", &format!("t/{id}/")), 3);
    // A store that accepts connections and never answers (each S3 call would wait its
    // 30 s timeout): cleanup is cut at its 2 s bound and the job still succeeds.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        &s3.endpoint(),
        &format!("http://{}", mute.local_addr().unwrap()),
    );
    std::fs::write(&h.config, text).unwrap();
    records(&h, 2);
    let mut job = h.job(8802, "echo hi");
    let start = std::time::Instant::now();
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "the job took {took:?}");
    // The records wait in the local log; check shows the lag.
    let check = String::from_utf8_lossy(&run(&h, &["check"]).stdout).into_owned();
    assert!(
        check.contains("audit shipping to s3://jobs/t: 2 record(s) waiting"),
        "{check}"
    );
    let metrics = ok(&h, &["metrics"]);
    assert!(
        metrics.contains("p3_executor_audit_ship_lag_records 2\n"),
        "{metrics}"
    );
}

#[test]
fn a_local_log_emptied_after_shipping_is_detected_on_that_host() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "emptied");
    let (h, _) = shipped_host(&s3, "emptied", "t");
    let log = h.root().join("audit/audit.jsonl");
    let id = host_id(&h);
    // Truncated to nothing, and removed: both are an emptied log.
    std::fs::write(&log, "").unwrap();
    let out = verify_fails(&h, "s3://emptied/t");
    assert!(
        out.contains(&format!(
            "FAIL host {id}: the local log {} is empty",
            log.display()
        )) && out.contains("up to seq 12")
            && out.contains("emptied or replaced after shipping"),
        "{out}"
    );
    std::fs::remove_file(&log).unwrap();
    let out = verify_fails(&h, "s3://emptied/t");
    assert!(out.contains("is empty"), "{out}");
    // A log replaced by a new chain of its own is no better.
    records(&h, 2);
    let out = verify_fails(&h, "s3://emptied/t");
    assert!(
        out.contains("starts a new chain") && out.contains("emptied or replaced after shipping"),
        "{out}"
    );
}

#[test]
fn a_log_moved_aside_per_the_readme_starts_a_new_chain_and_verifies() {
    let s3 = S3Server::start_moto();
    locked_bucket(&s3, "aside");
    let (h, _) = shipped_host(&s3, "aside", "t");
    let log = h.root().join("audit/audit.jsonl");
    let aside = h.root().join("audit/audit.jsonl.damaged-20261206T120000");
    std::fs::rename(&log, &aside).unwrap();
    let uri = "s3://aside/t";
    let out = ok(&h, &["audit", "verify", "--s3", uri]);
    assert!(
        out.contains(&format!("was moved aside to {}", aside.display())),
        "{out}"
    );
    // The next record starts a new chain; it ships beside the old one, and both are listed.
    records(&h, 2);
    ok(&h, &["audit", "ship"]);
    let out = ok(&h, &["audit", "verify", "--s3", uri]);
    let chains: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("OK   host {} chain ", host_id(&h))))
        .collect();
    assert_eq!(chains.len(), 2, "{out}");
    assert!(
        chains.iter().any(|l| l.contains("records 1..12"))
            && chains
                .iter()
                .any(|l| l.contains("records 1..2, local log agrees")),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}
