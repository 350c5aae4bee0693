//! How far this host's audit log has been shipped to `[audit.s3]`: the shipper's watermark
//! (`<state_root>/audit-ship/state.json`), written by `p3-executor-aws audit ship` after each
//! object it put, and read here for `check` and the metrics (the shipping lag).
//!
//! The bucket is the truth and this file a cache of it: a shipper that crashed between a put
//! and saving the watermark finds the object by listing, checks it against the local log and
//! moves the watermark past it, so nothing is shipped twice under different keys.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::{AuditRecord, GENESIS};
use super::tail::line_ending_at;
use crate::config::Config;

/// The shipper's watermark for one chain of this host's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    /// The chain shipped: the first 16 hex digits of its first record's hash. A log moved aside
    /// (damaged) starts a new chain, shipped under its own key prefix.
    pub chain: String,
    /// `seq` of the last record shipped (0: none yet).
    pub last_seq: u64,
    /// Its `hash` ([`GENESIS`] when none).
    pub last_hash: String,
    /// Byte offset in the local log just after that record.
    pub offset: u64,
    /// Key of the last object put or found.
    #[serde(default)]
    pub last_key: Option<String>,
    /// When the watermark last moved.
    pub updated: DateTime<Utc>,
    /// Why the last ship stopped short, until one succeeds (shown by `check`).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl ShipState {
    /// Nothing of `chain` shipped yet.
    pub fn start(chain: &str) -> Self {
        Self {
            chain: chain.to_string(),
            last_seq: 0,
            last_hash: GENESIS.into(),
            offset: 0,
            last_key: None,
            updated: Utc::now(),
            last_error: None,
        }
    }
}

/// The shipper's directory: its watermark and its lock.
pub fn dir(state_root: &Path) -> PathBuf {
    state_root.join("audit-ship")
}

fn state_file(state_root: &Path) -> PathBuf {
    dir(state_root).join("state.json")
}

/// The lock two shippers on one host take (exclusive `flock`), so only one ships at a time.
pub fn lock_file(state_root: &Path) -> PathBuf {
    dir(state_root).join("lock")
}

/// The saved watermark, if any (a missing or unreadable one means: nothing known, list the
/// bucket).
pub fn load(state_root: &Path) -> Option<ShipState> {
    let text = std::fs::read(state_file(state_root)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Save the watermark atomically and durably (root-only).
pub fn save(state_root: &Path, state: &ShipState) -> std::io::Result<()> {
    let d = dir(state_root);
    std::fs::create_dir_all(&d)?;
    let text = serde_json::to_vec_pretty(state).expect("ship state serialises");
    crate::atomic_file::write(
        &state_file(state_root),
        &text,
        crate::atomic_file::Options {
            durable: true,
            ..crate::atomic_file::Options::PRIVATE
        },
    )
}

/// The chain id of a log whose first record has `hash`.
pub fn chain_id(first_hash: &str) -> String {
    first_hash.chars().take(16).collect()
}

/// How far shipping is behind the local log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// Records in the local log not yet shipped.
    pub records: u64,
    /// Time of the oldest of them.
    pub oldest: Option<DateTime<Utc>>,
    /// The watermark, when a ship has run.
    pub state: Option<ShipState>,
}

impl Lag {
    /// Seconds since the oldest unshipped record was written (0 when none is waiting).
    pub fn age_secs(&self, now: DateTime<Utc>) -> u64 {
        self.oldest
            .map_or(0, |t| (now - t).num_seconds().max(0) as u64)
    }
}

/// The shipping lag of this host, or None when `[audit.s3]` is not configured. Reads the
/// watermark, the log's first line and its last complete line, and the line at the watermark:
/// cheap however long the log is.
pub fn lag(cfg: &Config) -> Option<Lag> {
    cfg.audit.s3.as_ref()?;
    let state = load(&cfg.state_root);
    let Ok(mut file) = File::open(&cfg.audit.path) else {
        return Some(Lag {
            records: 0,
            oldest: None,
            state,
        });
    };
    let first = read_line_at(&mut file, 0);
    let last_seq = last_record(&mut file, &cfg.audit.path).map_or(0, |r| r.seq);
    let same_chain = match (&first, &state) {
        (Some(f), Some(s)) => chain_id(&f.hash) == s.chain,
        _ => false,
    };
    let (records, oldest) = match (&state, same_chain) {
        (Some(s), true) => (
            last_seq.saturating_sub(s.last_seq),
            if last_seq > s.last_seq {
                read_line_at(&mut file, s.offset).map(|r| r.time)
            } else {
                None
            },
        ),
        _ => (last_seq, first.map(|r| r.time)),
    };
    Some(Lag {
        records,
        oldest,
        state,
    })
}

/// The complete record line starting at `offset`, if it is one.
fn read_line_at(file: &mut File, offset: u64) -> Option<AuditRecord> {
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut line = String::new();
    BufReader::new(file.take(1 << 20))
        .read_line(&mut line)
        .ok()?;
    line.ends_with('\n')
        .then(|| serde_json::from_str(&line).ok())
        .flatten()
}

/// The log's last complete record line, read backwards from the end in small chunks (the
/// same reader `append` uses for the tail): every cleanup's metrics update computes the lag.
fn last_record(file: &mut File, path: &Path) -> Option<AuditRecord> {
    let len = file.metadata().ok()?.len();
    // What follows the last newline is an append in flight, not a record yet.
    let (after_newline, _) = line_ending_at(file, path, len).ok()??;
    let (_, line) = line_ending_at(file, path, after_newline.checked_sub(1)?).ok()??;
    serde_json::from_slice(&line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, Decision, append};
    use crate::config::AuditConfig;

    fn config(dir: &Path) -> Config {
        let mut cfg = Config::parse("[audit.s3]\nbucket = \"b\"\n").unwrap();
        cfg.state_root = dir.join("state");
        cfg.audit = AuditConfig {
            path: dir.join("audit.jsonl"),
            s3: cfg.audit.s3.clone(),
            ..AuditConfig::default()
        };
        cfg
    }

    #[test]
    fn lag_counts_unshipped_records_from_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        std::fs::create_dir_all(&cfg.state_root).unwrap();
        assert_eq!(lag(&cfg).unwrap().records, 0);
        let written: Vec<AuditRecord> = (0..5)
            .map(|i| {
                append(
                    &cfg.audit,
                    AuditRecord::new(AuditEvent::Grant, Decision::Granted, format!("r{i}")),
                )
                .unwrap()
            })
            .collect();
        // Nothing shipped: all five wait, the oldest is the first.
        let l = lag(&cfg).unwrap();
        assert_eq!((l.records, l.oldest), (5, Some(written[0].time)));
        // Two shipped: three wait, from the third.
        let text = std::fs::read_to_string(&cfg.audit.path).unwrap();
        let offset: usize = text.lines().take(2).map(|l| l.len() + 1).sum();
        let mut s = ShipState::start(&chain_id(&written[0].hash));
        s.last_seq = 2;
        s.last_hash = written[1].hash.clone();
        s.offset = offset as u64;
        save(&cfg.state_root, &s).unwrap();
        let l = lag(&cfg).unwrap();
        assert_eq!((l.records, l.oldest), (3, Some(written[2].time)));
        // A last record longer than the first window read from the end is still found.
        append(
            &cfg.audit,
            AuditRecord::new(AuditEvent::Deny, Decision::Denied, "x".repeat(20_000)),
        )
        .unwrap();
        assert_eq!(lag(&cfg).unwrap().records, 4);
        // A watermark of another chain (the log was moved aside): everything waits again.
        s.chain = "0123456789abcdef".into();
        save(&cfg.state_root, &s).unwrap();
        assert_eq!(lag(&cfg).unwrap().records, 6);
    }
}
