//! Prometheus metrics in the text exposition format, for a node_exporter textfile collector
//! (`[metrics] textfile`) and `p3-executor metrics`.
//!
//! Every runner call is its own process, so nothing is counted in memory: the counters are
//! derived from the audit log (the source of truth for every grant, denial, renewal and
//! cleanup), incrementally. `<state_root>/metrics.json` keeps the byte offset already read and
//! the counters so far, under an exclusive lock, so concurrent writers never double-count and
//! each update reads only the records appended since. A log that was rotated or shrank is read
//! from the start again (Prometheus takes the counter reset in its stride). Gauges (active
//! jobs, leased and quarantined uids) are read live from the state root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditRecord, Decision};
use crate::config::Config;
use crate::error::{Error, Result};

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative histogram of durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations at or below each of [`BUCKETS`].
    pub buckets: Vec<u64>,
    /// Sum of the observed seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Upper bounds (bytes) of the peak-memory histogram's buckets: 64 MiB to 64 GiB.
pub const MEMORY_BUCKETS: [f64; 6] = [
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
    17_179_869_184.0,
    68_719_476_736.0,
];

/// Upper bounds (seconds) of the job CPU-time histogram's buckets: 1 s to 2 h.
pub const CPU_BUCKETS: [f64; 6] = [1.0, 10.0, 60.0, 300.0, 1800.0, 7200.0];

impl Histogram {
    fn observe(&mut self, secs: f64) {
        self.observe_in(secs, &BUCKETS);
    }

    fn observe_in(&mut self, value: f64, bounds: &[f64]) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, le) in self.buckets.iter_mut().zip(bounds) {
            if value <= *le {
                *b += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Counters derived from audit records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Grants by (devstage, deploy account).
    pub grants: BTreeMap<String, u64>,
    /// Denials by (devstage, rule).
    pub denials: BTreeMap<String, u64>,
    /// Renewals, cleanups, gc sweeps and S3 issues by (event, outcome).
    pub events: BTreeMap<String, u64>,
    /// Records read.
    pub records: u64,
    /// `recovered` records: torn tails the log healed.
    pub recoveries: u64,
    /// kinit durations.
    pub kinit: Histogram,
    /// credential_process durations.
    pub credential_process: Histogram,
    /// Peak memory of ended jobs (cleanup and gc records), by devstage.
    #[serde(default)]
    pub job_peak_memory: BTreeMap<String, Histogram>,
    /// CPU seconds of ended jobs, by devstage.
    #[serde(default)]
    pub job_cpu: BTreeMap<String, Histogram>,
    /// Failed kinit answers (`extra.kinit_failures`) by (account, reason).
    #[serde(default)]
    pub kinit_failures: BTreeMap<String, u64>,
}

/// Join label values with a separator no value can hold (they are escaped on output).
const SEP: char = '\u{1f}';

fn key(parts: &[&str]) -> String {
    parts.join(&SEP.to_string())
}

fn millis(r: &AuditRecord, name: &str) -> Option<f64> {
    r.extra.get(name)?.as_f64().map(|ms| ms / 1000.0)
}

impl Counters {
    /// Count one record. A denial's devstage is a label only when it is one of `devstages`
    /// (the config's): a job chooses what it requests, and must not choose label values.
    pub fn observe(&mut self, r: &AuditRecord, devstages: &BTreeSet<String>) {
        self.records += 1;
        match (r.event, r.decision) {
            (AuditEvent::Grant, Decision::Granted) => {
                let devstage = r.devstage.as_deref().unwrap_or("");
                let account = r.deploy_stage.as_deref().unwrap_or("");
                *self.grants.entry(key(&[devstage, account])).or_default() += 1;
            }
            (AuditEvent::Grant | AuditEvent::Deny, Decision::Denied) => {
                let devstage = r
                    .devstage
                    .as_deref()
                    .filter(|d| devstages.contains(*d))
                    .unwrap_or("(other)");
                // The rule is the config key that decided: `devstages.<name>.<key>: why`.
                let rule = r
                    .reason
                    .split_once(": ")
                    .map(|(rule, _)| rule)
                    .filter(|rule| rule.starts_with("devstages") || *rule == "identity")
                    .unwrap_or("(other)");
                let rule = if rule.starts_with("devstages.") && !devstages.contains(devstage) {
                    "(other)"
                } else {
                    rule
                };
                *self.denials.entry(key(&[devstage, rule])).or_default() += 1;
            }
            (AuditEvent::Recovered, _) => self.recoveries += 1,
            (event, decision) => {
                *self
                    .events
                    .entry(key(&[&event.to_string(), &decision.to_string()]))
                    .or_default() += 1;
            }
        }
        if let Some(secs) = millis(r, "kinit_ms") {
            self.kinit.observe(secs);
        }
        if let Some(secs) = millis(r, "credential_process_ms") {
            self.credential_process.observe(secs);
        }
        // Each DC that rejected a key, and each failed kinit, with its reason (`grant.rs`).
        if let Some(failures) = r
            .extra
            .get("kinit_failures")
            .and_then(serde_json::Value::as_array)
        {
            let account = r.account.as_deref().unwrap_or("");
            for f in failures {
                let reason = f
                    .get("reason")
                    .and_then(serde_json::Value::as_str)
                    .filter(|r| matches!(*r, "unreachable" | "wrong_key" | "unknown_principal"))
                    .unwrap_or("other");
                *self
                    .kinit_failures
                    .entry(key(&[account, reason]))
                    .or_default() += 1;
            }
        }
        // What a job used, from its cgroup (`walls::cgroup::JobCgroup::audit_fields`).
        if matches!(r.event, AuditEvent::Cleanup | AuditEvent::Gc) {
            let devstage = r
                .devstage
                .as_deref()
                .filter(|d| devstages.contains(*d))
                .unwrap_or("(other)");
            if let Some(peak) = r
                .extra
                .get("peak_memory_bytes")
                .and_then(serde_json::Value::as_f64)
            {
                self.job_peak_memory
                    .entry(devstage.to_string())
                    .or_default()
                    .observe_in(peak, &MEMORY_BUCKETS);
            }
            if let Some(cpu) = r
                .extra
                .get("cpu_seconds")
                .and_then(serde_json::Value::as_f64)
            {
                self.job_cpu
                    .entry(devstage.to_string())
                    .or_default()
                    .observe_in(cpu, &CPU_BUCKETS);
            }
        }
    }
}

/// Live values read from the state root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Jobs with a workspace on this host (prepared, not yet cleaned up).
    pub jobs_active: u64,
    /// Private uids held by jobs.
    pub uids_leased: u64,
    /// Private uids out of the pool until they are proven clean.
    pub uids_quarantined: u64,
    /// Audit records that could not be sent to syslog.
    pub syslog_drops: u64,
    /// Age in seconds of each account's keytab (its modification time), by account.
    pub keytab_ages: BTreeMap<String, u64>,
    /// With `[audit.s3]`: records not yet shipped, the age of the oldest in seconds, and
    /// whether the last ship failed.
    pub ship: Option<(u64, u64, bool)>,
    /// With `[network] loopback_apart`: loopback connections refused because they reached
    /// another job's (or, from the host, a job's) listener, since the table's rules were made.
    pub loopback_crossed: Option<u64>,
}

/// A label value in the exposition format: `\`, `"` and line breaks escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labelled(out: &mut String, name: &str, names: &[&str], map: &BTreeMap<String, u64>) {
    for (k, v) in map {
        let values: Vec<&str> = k.split(SEP).collect();
        let labels: Vec<String> = names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
    }
}

/// A histogram family with a `devstage` label and its own bucket bounds.
fn histograms_by_devstage(
    out: &mut String,
    name: &str,
    help: &str,
    by: &BTreeMap<String, Histogram>,
    bounds: &[f64],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (devstage, h) in by {
        let d = label(devstage);
        for (i, le) in bounds.iter().enumerate() {
            let n = h.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{devstage=\"{d}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{devstage=\"{d}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{devstage=\"{d}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{devstage=\"{d}\"}} {}", h.count);
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, le) in BUCKETS.iter().enumerate() {
        let n = h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

/// The exposition text (pure).
pub fn render(c: &Counters, g: &Gauges) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "p3_executor_grants_total",
        "counter",
        "Credentials granted, by devstage and deploy account.",
    );
    labelled(
        &mut out,
        "p3_executor_grants_total",
        &["devstage", "deploy_account"],
        &c.grants,
    );
    family(
        &mut out,
        "p3_executor_denials_total",
        "counter",
        "Requests denied, by devstage and the rule that denied.",
    );
    labelled(
        &mut out,
        "p3_executor_denials_total",
        &["devstage", "rule"],
        &c.denials,
    );
    family(
        &mut out,
        "p3_executor_events_total",
        "counter",
        "Renewals, S3 credential issues, cleanups and gc sweeps, by outcome.",
    );
    labelled(
        &mut out,
        "p3_executor_events_total",
        &["event", "outcome"],
        &c.events,
    );
    for (name, kind, help, value) in [
        (
            "p3_executor_audit_records_total",
            "counter",
            "Audit records written.",
            c.records,
        ),
        (
            "p3_executor_audit_recoveries_total",
            "counter",
            "Torn audit-log tails removed and recorded by a later append.",
            c.recoveries,
        ),
        (
            "p3_executor_syslog_drops_total",
            "counter",
            "Audit records that could not be sent to syslog (the local log has them).",
            g.syslog_drops,
        ),
        (
            "p3_executor_jobs_active",
            "gauge",
            "Jobs prepared on this host and not yet cleaned up.",
            g.jobs_active,
        ),
        (
            "p3_executor_uids_leased",
            "gauge",
            "Private job uids held by jobs.",
            g.uids_leased,
        ),
        (
            "p3_executor_uids_quarantined",
            "gauge",
            "Private job uids kept out of the pool until proven clean.",
            g.uids_quarantined,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "p3_executor_kinit_failures_total",
        "counter",
        "Failed kinit answers, by account and reason (unreachable, wrong_key, unknown_principal, other); a DC that rejects a key counts even when the next DC accepts it.",
    );
    labelled(
        &mut out,
        "p3_executor_kinit_failures_total",
        &["account", "reason"],
        &c.kinit_failures,
    );
    family(
        &mut out,
        "p3_executor_keytab_age_seconds",
        "gauge",
        "Age of each account's keytab (since its last change): a rotating password needs a fresh keytab.",
    );
    for (account, age) in &g.keytab_ages {
        let _ = writeln!(
            out,
            "p3_executor_keytab_age_seconds{{account=\"{}\"}} {age}",
            label(account)
        );
    }
    if let Some((records, age, failing)) = g.ship {
        for (name, help, value) in [
            (
                "p3_executor_audit_ship_lag_records",
                "Audit records not yet shipped to [audit.s3].",
                records,
            ),
            (
                "p3_executor_audit_ship_lag_seconds",
                "Age of the oldest audit record not yet shipped (0 when none waits).",
                age,
            ),
            (
                "p3_executor_audit_ship_failing",
                "1 when the last audit ship stopped on an error (check says which).",
                u64::from(failing),
            ),
        ] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    if let Some(crossed) = g.loopback_crossed {
        let name = "p3_executor_loopback_crossed_total";
        family(
            &mut out,
            name,
            "counter",
            "Loopback connections refused because they reached another job's listener, or a job's from the host ([network] loopback_apart; since the table's rules were made).",
        );
        let _ = writeln!(out, "{name} {crossed}");
    }
    histogram(
        &mut out,
        "p3_executor_kinit_duration_seconds",
        "Time to obtain a ticket from a keytab (kinit).",
        &c.kinit,
    );
    histogram(
        &mut out,
        "p3_executor_credential_process_duration_seconds",
        "Time the S3 credential_process took.",
        &c.credential_process,
    );
    histograms_by_devstage(
        &mut out,
        "p3_executor_job_peak_memory_bytes",
        "Peak memory of a job's cgroup when it ended, by devstage (granted jobs).",
        &c.job_peak_memory,
        &MEMORY_BUCKETS,
    );
    histograms_by_devstage(
        &mut out,
        "p3_executor_job_cpu_seconds",
        "CPU time of a job's cgroup when it ended, by devstage (granted jobs).",
        &c.job_cpu,
        &CPU_BUCKETS,
    );
    out
}

/// What `<state_root>/metrics.json` keeps between updates.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// The audit log's inode and how far it has been read.
    inode: u64,
    offset: u64,
    counters: Counters,
    /// The crossing rule's counter at its last reading ([`Table::Read`]).
    #[serde(default)]
    loopback_crossed: Option<u64>,
}

/// Whether an update reads the network table's counter now, or keeps its last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Read it (`metrics`, gc): a listing of the table, a few milliseconds.
    Read,
    /// Keep the last reading (cleanup: every job would pay for the listing).
    Kept,
}

fn gauges(cfg: &Config, loopback_crossed: Option<u64>) -> Gauges {
    let count = |dir: std::path::PathBuf| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u64>().is_ok())
                })
                .count() as u64
        })
    };
    Gauges {
        jobs_active: count(cfg.state_root.join("jobs")),
        uids_leased: crate::uid_pool::leases(cfg).len() as u64,
        uids_quarantined: crate::uid_pool::quarantined(cfg).len() as u64,
        syslog_drops: crate::audit::syslog::drops(&cfg.audit.path),
        keytab_ages: cfg
            .accounts
            .iter()
            .filter_map(|(name, a)| {
                let modified = std::fs::metadata(&a.keytab).ok()?.modified().ok()?;
                let age = std::time::SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default();
                Some((name.clone(), age.as_secs()))
            })
            .collect(),
        ship: crate::audit::shipped::lag(cfg).map(|l| {
            let failing = l.state.as_ref().is_some_and(|s| s.last_error.is_some());
            (l.records, l.age_secs(chrono::Utc::now()), failing)
        }),
        loopback_crossed,
    }
}

/// The crossing rule's counter, read from the table (None: off, no nftables, no table yet).
fn loopback_crossed(cfg: &Config) -> Option<u64> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    let nft = crate::walls::network::nft::Nft::new(&cfg.network.nft);
    if !nft.installed() {
        return None;
    }
    nft.list(&cfg.network.table).ok()??.crossed
}

/// Bring the counters up to date with the audit log (and, with [`Table::Read`], the network
/// table's counter) and render the exposition.
pub fn collect(cfg: &Config, table: Table) -> Result<String> {
    crate::workspace::ensure_dir(&cfg.state_root, 0o711)?;
    let path = cfg.state_root.join("metrics.json");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut file = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io(format!("lock {}", path.display()), e.into()))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let mut progress: Progress = serde_json::from_str(&text).unwrap_or_default();
    let devstages: BTreeSet<String> = cfg.devstages.keys().cloned().collect();
    if let Ok(log) = std::fs::File::open(&cfg.audit.path) {
        let meta = log
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", cfg.audit.path.display()), e))?;
        if meta.ino() != progress.inode || meta.len() < progress.offset {
            progress = Progress {
                inode: meta.ino(),
                ..Progress::default()
            };
        }
        let mut reader = std::io::BufReader::new(log);
        reader
            .seek(SeekFrom::Start(progress.offset))
            .map_err(|e| Error::io(format!("seek {}", cfg.audit.path.display()), e))?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| Error::io(format!("read {}", cfg.audit.path.display()), e))?;
            // Only complete lines count: a line being appended right now is read next time.
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            progress.offset += n as u64;
            if let Ok(record) = serde_json::from_str::<AuditRecord>(&line) {
                progress.counters.observe(&record, &devstages);
            }
        }
    }
    progress.loopback_crossed = match table {
        _ if !cfg.network.loopback_apart => None,
        Table::Read => loopback_crossed(cfg),
        Table::Kept => progress.loopback_crossed,
    };
    let state = serde_json::to_vec(&progress).expect("metrics progress serialises");
    crate::atomic_file::write(&path, &state, crate::atomic_file::Options::PRIVATE)
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    drop(file);
    Ok(render(
        &progress.counters,
        &gauges(cfg, progress.loopback_crossed),
    ))
}

/// Update the textfile-collector file if one is configured (gc and cleanup call this; a
/// failure is logged, never a job's problem).
pub fn update_textfile(cfg: &Config, table: Table) {
    if cfg.metrics.textfile.is_some() {
        match collect(cfg, table) {
            Ok(text) => write_textfile(cfg, &text),
            Err(e) => tracing::warn!("metrics not updated: {e}"),
        }
    }
}

/// Write `text`, an exposition [`collect`] rendered, to the textfile if one is configured.
pub fn write_textfile(cfg: &Config, text: &str) {
    let Some(textfile) = &cfg.metrics.textfile else {
        return;
    };
    let readable = crate::atomic_file::Options {
        mode: 0o644,
        ..crate::atomic_file::Options::PRIVATE
    };
    if let Err(e) = crate::atomic_file::write(textfile, text.as_bytes(), readable) {
        tracing::warn!("metrics not updated: write {}: {e}", textfile.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: AuditEvent, decision: Decision, devstage: &str, reason: &str) -> AuditRecord {
        let mut r = AuditRecord::new(event, decision, reason);
        r.devstage = Some(devstage.into());
        r.deploy_stage = Some("client_uat".into());
        r
    }

    #[test]
    fn counts_by_label_and_keeps_job_chosen_values_out_of_labels() {
        let devstages: BTreeSet<String> = ["client_prod".to_string()].into();
        let mut c = Counters::default();
        let mut granted = record(AuditEvent::Grant, Decision::Granted, "client_prod", "ok");
        granted.extra.insert("kinit_ms".into(), 30.into());
        c.observe(&granted, &devstages);
        c.observe(&granted, &devstages);
        let deny = |d: &str, reason: &str| record(AuditEvent::Deny, Decision::Denied, d, reason);
        c.observe(
            &deny(
                "client_prod",
                "devstages.client_prod.tag_pattern: tag \"x\"",
            ),
            &devstages,
        );
        c.observe(
            &deny("evil\"} 1\nforged 9", "devstages: unknown devstage"),
            &devstages,
        );
        let text = render(&c, &Gauges::default());
        assert!(
            text.contains(
                "p3_executor_grants_total{devstage=\"client_prod\",deploy_account=\"client_uat\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "p3_executor_denials_total{devstage=\"client_prod\",rule=\"devstages.client_prod.tag_pattern\"} 1"
        ), "{text}");
        assert!(
            text.contains("p3_executor_denials_total{devstage=\"(other)\",rule=\"devstages\"} 1"),
            "{text}"
        );
        assert!(!text.contains("forged"), "{text}");
        assert!(
            text.contains("p3_executor_kinit_duration_seconds_bucket{le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("p3_executor_kinit_duration_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("p3_executor_kinit_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("p3_executor_audit_records_total 4"), "{text}");
    }

    #[test]
    fn job_usage_histograms_by_devstage() {
        let devstages: BTreeSet<String> = ["client_dev".to_string()].into();
        let mut c = Counters::default();
        let mut ended = record(
            AuditEvent::Cleanup,
            Decision::Succeeded,
            "client_dev",
            "cleanup",
        );
        ended
            .extra
            .insert("peak_memory_bytes".into(), (100u64 << 20).into());
        ended.extra.insert("cpu_seconds".into(), 12.5.into());
        c.observe(&ended, &devstages);
        let mut forged = ended.clone();
        forged.devstage = Some("evil\"".into());
        c.observe(&forged, &devstages);
        let text = render(&c, &Gauges::default());
        for line in [
            "p3_executor_job_peak_memory_bytes_bucket{devstage=\"client_dev\",le=\"67108864\"} 0",
            "p3_executor_job_peak_memory_bytes_bucket{devstage=\"client_dev\",le=\"268435456\"} 1",
            "p3_executor_job_peak_memory_bytes_count{devstage=\"client_dev\"} 1",
            "p3_executor_job_cpu_seconds_bucket{devstage=\"client_dev\",le=\"10\"} 0",
            "p3_executor_job_cpu_seconds_bucket{devstage=\"client_dev\",le=\"60\"} 1",
            "p3_executor_job_cpu_seconds_sum{devstage=\"client_dev\"} 12.5",
            "p3_executor_job_cpu_seconds_count{devstage=\"(other)\"} 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
