//! The hash chain: audit records, their canonical hash, appending one under an exclusive
//! `flock` with fsync, and walking the chain to verify it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::AuditConfig;

/// `prev` of the first record in a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest record line `append` will read back as the chain's tail.
const MAX_RECORD: u64 = 1 << 20;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// Credentials were granted to a job (prepare).
    Grant,
    /// A job's request for credentials was refused.
    Deny,
    /// A job's ticket was renewed or re-obtained before a run stage.
    Renew,
    /// A job's credentials were destroyed by cleanup.
    Cleanup,
    /// A job's credentials were destroyed by `gc` (its cleanup never ran).
    Gc,
    /// S3 credentials were issued or refreshed for a job.
    S3Credentials,
    /// An append found a torn tail (an earlier append was interrupted), removed exactly those
    /// bytes and recorded what it removed ([`AuditRecord::recovery`]).
    Recovered,
    /// An event written by a newer version (read-only: shown, never written).
    #[serde(other)]
    Other,
}

/// The outcome of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Policy allowed the request and the credentials were handed out.
    Granted,
    /// Policy refused the request.
    Denied,
    /// A renewal, cleanup or gc completed.
    Succeeded,
    /// A grant, renewal, cleanup or gc failed on the host side.
    Failed,
    /// A decision written by a newer version.
    #[serde(other)]
    Other,
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&enum_name(self))
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&enum_name(self))
    }
}

fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".into(),
    }
}

/// One audit record. Identity fields are optional so a denial without a verified identity
/// still records what is known; only verified claims belong in them (never job variables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1; set by [`append`].
    #[serde(default)]
    pub seq: u64,
    /// When the record was appended (RFC 3339, UTC); set by [`append`].
    pub time: DateTime<Utc>,
    /// Runner host that made the decision.
    pub host: String,
    /// Stable id of that host (`<state_root>/host-id`), kept across renames and rebuilds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// SHA-256 of the executor config in force: which policy version decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// What happened.
    pub event: AuditEvent,
    /// Its outcome.
    pub decision: Decision,
    /// Why: the policy rule that granted or denied, or the failure.
    pub reason: String,
    /// GitLab job id (from JOB_RESPONSE_FILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// The job's web URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_url: Option<String>,
    /// Pipeline id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<u64>,
    /// Project path (`group/project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Branch or tag name.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// `branch` or `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_type: Option<String>,
    /// Whether the ref is protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_protected: Option<bool>,
    /// GitLab user who started the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Devstage the job requested (`P3_DEVSTAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devstage: Option<String>,
    /// Deploy stage whose account serves the devstage (`devstages.<name>.deploy_account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_stage: Option<String>,
    /// The `[accounts.<name>]` entry used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Kerberos principal handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// SHA-256 of the keytab file used (never its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keytab_sha256: Option<String>,
    /// How the identity was established (`id_token`, `id_token+api`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_source: Option<String>,
    /// The ID token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_jti: Option<String>,
    /// Event-specific facts (ticket expiry, S3 credential expiry, ...): never secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
    /// For a `recovered` record: what was removed from the end of the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// Hash of the previous record ([`GENESIS`] for the first); set by [`append`].
    #[serde(default)]
    pub prev: String,
    /// SHA-256 of this record's canonical JSON without `hash`; set by [`append`].
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    /// A record for `event` with `decision` and `reason`, stamped with this host and now;
    /// fill in the known identity fields, then [`append`] it.
    pub fn new(event: AuditEvent, decision: Decision, reason: impl Into<String>) -> Self {
        Self {
            seq: 0,
            time: Utc::now(),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            host_id: None,
            config_sha256: None,
            event,
            decision,
            reason: reason.into(),
            job_id: None,
            job_url: None,
            pipeline_id: None,
            project: None,
            git_ref: None,
            ref_type: None,
            ref_protected: None,
            user: None,
            devstage: None,
            deploy_stage: None,
            account: None,
            principal: None,
            keytab_sha256: None,
            identity_source: None,
            token_jti: None,
            extra: BTreeMap::new(),
            recovery: None,
            prev: String::new(),
            hash: String::new(),
        }
    }
}

/// What a `recovered` record removed: the torn tail an interrupted append left at the end of
/// the log (never a complete record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// How many bytes were removed.
    pub removed_bytes: u64,
    /// SHA-256 (hex) of the removed bytes.
    pub removed_sha256: String,
    /// Where they started: the log's length after the removal, where this record begins.
    pub offset: u64,
    /// `seq` of the last good record (0 when the log held none).
    pub last_good_seq: u64,
    /// `hash` of the last good record ([`GENESIS`] when the log held none); also this
    /// record's `prev`.
    pub last_good_hash: String,
}

/// Why the audit log could not be written or read. A failed append is a host-side (system)
/// failure: no credential is handed out without its record.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {context}: {source}")]
    Io {
        /// The log or its directory.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log is damaged beyond a torn last append: complete records are affected, and those
    /// are never removed, so the chain cannot be continued (fail closed).
    #[error(
        "audit log {path} is damaged: {message}\n  nothing was removed, and no record can be appended to it\n  fix: inspect it with `p3-executor audit verify`, then move it aside and keep it as evidence (mv {path} {path}.damaged-$(date +%Y%m%dT%H%M%S)); the next record starts a new chain"
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// Where it is damaged (the line, when known) and how.
        message: String,
    },
}

impl From<AuditError> for crate::error::Error {
    /// Audit failures are the host's: a system failure.
    fn from(e: AuditError) -> Self {
        let msg = e.to_string();
        let source = match e {
            AuditError::Io { source, .. } => source,
            AuditError::Damaged { .. } => std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        };
        crate::error::Error::io("cannot write the audit record", source)
    }
}

/// Map an I/O error on the log at `path` while doing `context` to an [`AuditError`].
pub(super) fn io(path: &Path, context: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io {
        path,
        context,
        source,
    }
}

/// Serialise a JSON value canonically: object keys sorted, no whitespace. Done by hand so
/// the hash does not depend on serde_json's map ordering features.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The hash of a record given as a JSON object: SHA-256 hex of its canonical form without
/// the `hash` key.
pub fn record_hash(record: &Value) -> String {
    let mut v = record.clone();
    if let Value::Object(map) = &mut v {
        map.remove("hash");
    }
    let mut text = String::new();
    canonical(&v, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Append `record` to the log at `cfg.path`, filling `seq`, `time`, `prev` and `hash`; returns
/// the record as written. Creates the directory (0750) and the log (0640) if missing.
///
/// A torn tail (an earlier append was interrupted: the bytes after the last newline, which
/// follow a good record) is removed first, exactly those bytes, and a `recovered` record with their
/// SHA-256 and length is appended before `record`. Damage that reaches a complete record is
/// never repaired: [`AuditError::Damaged`], naming the line and the fix.
pub fn append(cfg: &AuditConfig, record: AuditRecord) -> Result<AuditRecord, AuditError> {
    let path = &cfg.path;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(io(dir, "create directory"))?;
        }
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path, "open"))?;
    // Held until `locked` drops at the end of this function (after the fsync).
    let locked = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(path, "lock")(std::io::Error::from(errno)))?;

    // Only the last two lines are read on this path, however long the log is.
    let (last_seq, last_hash) = match inspect_tail(&locked, path)? {
        Tail::Good { seq, hash } => (seq, hash),
        Tail::Torn(torn) => {
            // Rare (once per interrupted append): walk the whole chain to make sure everything
            // before the torn bytes verifies, so nothing but the torn bytes is ever removed.
            let walked = walk(&locked, path)?;
            let v = &walked.verification;
            if walked.break_offset != Some(torn.good_end)
                || v.records != torn.seq
                || v.head != torn.hash
            {
                return Err(damaged(path, &walked, torn.why));
            }
            let recovered = recover(&locked, path, &torn)?;
            (recovered.seq, recovered.hash)
        }
        Tail::Damaged(message) => {
            // The failure path: walk the chain to name the first broken line.
            let walked = walk(&locked, path)?;
            return Err(damaged(path, &walked, message));
        }
    };
    let mut record = record;
    record.host_id = record
        .host_id
        .or_else(|| crate::config::host_id(cfg.stamp.state_root.as_deref()?));
    record.config_sha256 = record
        .config_sha256
        .or_else(|| cfg.stamp.config_sha256.clone());
    let written = write_record(&locked, path, record, last_seq, last_hash)?;
    drop(locked);
    if let Some(syslog) = &cfg.syslog {
        super::syslog::send(syslog, path, &written);
    }
    Ok(written)
}

/// Stamp `record` as the successor of (`last_seq`, `last_hash`), write it as one line on the
/// locked `O_APPEND` descriptor and fsync it.
fn write_record(
    file: &File,
    path: &Path,
    mut record: AuditRecord,
    last_seq: u64,
    last_hash: String,
) -> Result<AuditRecord, AuditError> {
    record.seq = last_seq.checked_add(1).ok_or_else(|| AuditError::Damaged {
        path: path.to_path_buf(),
        message: format!("the last record's seq {last_seq} cannot be followed"),
    })?;
    // Stamped under the lock, so times follow the order of the log.
    record.time = Utc::now();
    record.prev = last_hash;
    record.hash = String::new();
    let value = serde_json::to_value(&record).expect("audit record serialises");
    record.hash = record_hash(&value);
    let mut line = serde_json::to_vec(&record).expect("audit record serialises");
    line.push(b'\n');
    // One write on an O_APPEND descriptor: the whole line lands at the end, in one piece.
    let mut out = file;
    out.write_all(&line).map_err(io(path, "write"))?;
    out.sync_data().map_err(io(path, "fsync"))?;
    Ok(record)
}

/// Remove the torn bytes at the end of the locked log (exactly those), fsync, and append the
/// `recovered` record that says what was removed. Returns that record.
fn recover(file: &File, path: &Path, torn: &Torn) -> Result<AuditRecord, AuditError> {
    let removed_bytes = torn.len - torn.good_end;
    let mut bytes = vec![0u8; removed_bytes as usize];
    file.read_exact_at(&mut bytes, torn.good_end)
        .map_err(io(path, "read the torn tail"))?;
    let removed_sha256 = hex::encode(Sha256::digest(&bytes));
    file.set_len(torn.good_end)
        .map_err(io(path, "truncate the torn tail"))?;
    file.sync_data()
        .map_err(io(path, "fsync after truncating the torn tail"))?;
    let last = if torn.seq == 0 {
        "the log held no complete record".to_string()
    } else {
        format!("the last good record is seq {}", torn.seq)
    };
    let mut rec = AuditRecord::new(
        AuditEvent::Recovered,
        Decision::Succeeded,
        format!(
            "torn tail removed: {removed_bytes} byte(s) at offset {} (sha256 {removed_sha256}): {}; {last}",
            torn.good_end, torn.why
        ),
    );
    rec.recovery = Some(Recovery {
        removed_bytes,
        removed_sha256,
        offset: torn.good_end,
        last_good_seq: torn.seq,
        last_good_hash: torn.hash.clone(),
    });
    let rec = write_record(file, path, rec, torn.seq, torn.hash.clone())?;
    tracing::warn!(
        "audit log {}: removed a torn tail of {removed_bytes} byte(s) ({}) and recorded the removal as seq {}",
        path.display(),
        torn.why,
        rec.seq
    );
    Ok(rec)
}

/// The [`AuditError::Damaged`] for the log at `path`: the first break the full walk found
/// (its line), or what the tail showed when the walk found none.
fn damaged(path: &Path, walked: &Walk, tail: String) -> AuditError {
    let message = match &walked.verification.broken {
        Some(b) => format!(
            "line {}{}: {}",
            b.line,
            b.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
            b.message
        ),
        None => tail,
    };
    AuditError::Damaged {
        path: path.to_path_buf(),
        message,
    }
}

/// How the log ends, judged from its last two lines only.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// Empty, or the last line is a good record continuing the one before it.
    Good {
        /// Its `seq` (0 for an empty log).
        seq: u64,
        /// Its `hash` ([`GENESIS`] for an empty log).
        hash: String,
    },
    /// Bytes after the last newline, which ends a good record: an interrupted append.
    Torn(Torn),
    /// Not a torn append: damage that reaches a complete record.
    Damaged(String),
}

/// A torn tail: bytes `good_end..len` of the log are not a record.
#[derive(Debug, PartialEq, Eq)]
struct Torn {
    /// Where the last good record ends (0 when there is none).
    good_end: u64,
    /// The log's length.
    len: u64,
    /// `seq` of the last good record (0 when there is none).
    seq: u64,
    /// `hash` of the last good record ([`GENESIS`] when there is none).
    hash: String,
    /// What the torn bytes are.
    why: String,
}

/// A line that is a record on its own: it parses and its `hash` is its content's hash.
struct Good {
    seq: u64,
    hash: String,
    prev: String,
}

/// Whether `line` (without its newline) is a record on its own; otherwise what it is.
fn check_line(line: &[u8]) -> Result<Good, String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err("is not a JSON object".into()),
        Err(e) => return Err(format!("is not valid JSON ({e})")),
    };
    let stored = v.get("hash").and_then(Value::as_str).unwrap_or_default();
    let actual = record_hash(&v);
    if stored != actual {
        return Err(format!(
            "does not match its hash (stored {:.16}…, content hashes to {:.16}…)",
            stored, actual
        ));
    }
    let Some(seq) = v.get("seq").and_then(Value::as_u64) else {
        return Err("has no seq".into());
    };
    let prev = v.get("prev").and_then(Value::as_str).unwrap_or_default();
    Ok(Good {
        seq,
        hash: actual,
        prev: prev.to_string(),
    })
}

/// Whether `line` (without its newline) is the record after (`seq`, `prev`): a record on its
/// own ([`check_line`]) whose `seq` and `prev` continue them. Returns its hash, or what is wrong.
/// The same rule for shipped objects as for the log (`p3-executor-aws audit verify --s3`).
pub fn continues(line: &[u8], seq: u64, prev: &str) -> Result<String, String> {
    let good = check_line(line).map_err(|why| format!("the record after seq {seq} {why}"))?;
    if good.seq != seq + 1 {
        return Err(format!(
            "seq {} follows seq {seq}: records are missing, duplicated or reordered",
            good.seq
        ));
    }
    if good.prev != prev {
        return Err(format!(
            "record seq {} does not continue seq {seq} (prev {:.16}… ≠ {:.16}…)",
            good.seq, good.prev, prev
        ));
    }
    Ok(good.hash)
}

/// How the log ends, reading only its last two lines (backwards, in small chunks), so appends
/// stay cheap however long the log grows.
///
/// Torn: only the bytes after the last newline (an append writes its line with its newline in
/// one write, so an interrupted one leaves no newline), after a last complete line that is a
/// record continuing the one before it. Damaged: a complete last line that is not a record (not
/// JSON, not matching its hash) or does not continue the one before it.
fn inspect_tail(file: &File, path: &Path) -> Result<Tail, AuditError> {
    let len = file.metadata().map_err(io(path, "stat"))?.len();
    if len == 0 {
        return Ok(Tail::Good {
            seq: 0,
            hash: GENESIS.into(),
        });
    }
    let Some((after_newline, partial)) = line_ending_at(file, path, len)? else {
        return Ok(Tail::Damaged(
            "its last 1 MiB holds no line end, so it is not a torn append".into(),
        ));
    };
    let partial = (!partial.is_empty())
        .then(|| "an incomplete line (no newline): an append was interrupted".to_string());
    let torn = |good_end: u64, seq: u64, hash: String, why: String| {
        Tail::Torn(Torn {
            good_end,
            len,
            seq,
            hash,
            why,
        })
    };
    if after_newline == 0 {
        let why = partial.unwrap_or_default();
        return Ok(torn(0, 0, GENESIS.into(), why));
    }
    // The last complete line: `line_start..after_newline - 1`, then its newline.
    let Some((line_start, line)) = line_ending_at(file, path, after_newline - 1)? else {
        return Ok(Tail::Damaged("the last line is longer than 1 MiB".into()));
    };
    // The record before the last line (GENESIS, seq 0, when the last line is the first).
    let before = || -> Result<Result<Good, String>, AuditError> {
        if line_start == 0 {
            return Ok(Ok(Good {
                seq: 0,
                hash: GENESIS.into(),
                prev: String::new(),
            }));
        }
        Ok(match line_ending_at(file, path, line_start - 1)? {
            Some((_, bytes)) => check_line(&bytes),
            None => Err("is longer than 1 MiB".into()),
        })
    };
    match check_line(&line) {
        Ok(last) => {
            let prev = match before()? {
                Ok(prev) => prev,
                Err(why) => {
                    return Ok(Tail::Damaged(format!(
                        "the line before the last record {why}"
                    )));
                }
            };
            if prev.seq.checked_add(1) != Some(last.seq) || last.prev != prev.hash {
                return Ok(Tail::Damaged(format!(
                    "the last record (seq {}) does not continue the one before it (seq {}): records were removed, replaced or reordered",
                    last.seq, prev.seq
                )));
            }
            Ok(match partial {
                None => Tail::Good {
                    seq: last.seq,
                    hash: last.hash,
                },
                Some(why) => torn(after_newline, last.seq, last.hash, why),
            })
        }
        // A complete line (it ends in a newline) that is not a record is never a torn append:
        // an append writes its line and its newline in one write, so an interrupted one
        // leaves no newline. It was edited or corrupted: damage, never removed.
        Err(line_why) => Ok(Tail::Damaged(format!(
            "the last complete line {line_why}: an interrupted append leaves no newline, so this line was edited or corrupted"
        ))),
    }
}

/// The line that ends at offset `end` (exclusive: `end` is its newline, or the end of the
/// file): where it starts and its bytes, read backwards in small chunks. None when it is
/// longer than [`MAX_RECORD`].
pub(super) fn line_ending_at(
    file: &File,
    path: &Path,
    end: u64,
) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
    let mut start = end;
    // Read chunks, nearest to `end` first; none of them holds a newline.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let joined = |mut chunks: Vec<Vec<u8>>| {
        chunks.reverse();
        chunks.concat()
    };
    loop {
        if start == 0 {
            return Ok((end <= MAX_RECORD).then(|| (0, joined(chunks))));
        }
        if end - start > MAX_RECORD {
            return Ok(None);
        }
        let n = start.min(4096);
        start -= n;
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(io(path, "read"))?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            let line_start = start + i as u64 + 1;
            buf.drain(..=i);
            chunks.push(buf);
            return Ok((end - line_start <= MAX_RECORD).then(|| (line_start, joined(chunks))));
        }
        chunks.push(buf);
    }
}

/// The first inconsistency `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number in the log.
    pub line: u64,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// What mismatched, and what that means.
    pub message: String,
}

/// A `recovered` record found by `verify`: an append removed a torn tail here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryNote {
    /// 1-based line number of the `recovered` record.
    pub line: u64,
    /// Its `seq`.
    pub seq: u64,
    /// When the torn tail was removed.
    pub time: DateTime<Utc>,
    /// What was removed.
    pub recovery: Recovery,
}

/// The log ends in a torn append: the next append removes it and records a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// 1-based line number where the torn bytes start.
    pub line: u64,
    /// Byte offset where they start.
    pub offset: u64,
    /// How many there are.
    pub bytes: u64,
    /// What they are.
    pub message: String,
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records read before the first break (all of them when the chain is intact).
    pub records: u64,
    /// Hash of the last good record ([`GENESIS`] for an empty log).
    pub head: String,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
    /// The `recovered` records among the good ones: torn appends that a later append removed.
    pub recoveries: Vec<RecoveryNote>,
    /// Set when the break is only a torn append at the end (everything before it verifies):
    /// the next append removes exactly those bytes and records it, so no operator action is
    /// needed.
    pub torn_tail: Option<TornTail>,
}

/// Walk the chain of the log at `path` (an empty or missing log is intact) and report the first
/// record that was edited, removed or reordered, and the recoveries of torn appends.
pub fn verify(path: &Path) -> Result<Verification, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verification {
                records: 0,
                head: GENESIS.into(),
                broken: None,
                recoveries: Vec::new(),
                torn_tail: None,
            });
        }
        Err(e) => return Err(io(path, "open")(e)),
    };
    // A shared lock: no append lands half-way through the walk.
    let locked = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, errno)| io(path, "lock")(std::io::Error::from(errno)))?;
    let Walk {
        mut verification,
        break_offset,
    } = walk(&locked, path)?;
    if let (Some(offset), Some(b)) = (break_offset, &verification.broken) {
        if let Tail::Torn(torn) = inspect_tail(&locked, path)? {
            if torn.good_end == offset && torn.seq == verification.records {
                verification.torn_tail = Some(TornTail {
                    line: b.line,
                    offset,
                    bytes: torn.len - torn.good_end,
                    message: torn.why,
                });
            }
        }
    }
    Ok(verification)
}

/// A walk over the chain, and where (byte offset) its first broken line starts.
struct Walk {
    verification: Verification,
    break_offset: Option<u64>,
}

/// Reads a file from the start with `pread`, leaving its offset alone.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Walk the whole chain of an open (and locked) log.
fn walk(file: &File, path: &Path) -> Result<Walk, AuditError> {
    let mut reader = BufReader::new(ReadAt { file, pos: 0 });
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut line_no = 0u64;
    let mut offset = 0u64;
    let mut recoveries = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(io(path, "read"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line_start = offset;
        offset += n as u64;
        let broken = |seq: Option<u64>, message: String| Walk {
            verification: Verification {
                records: line_no - 1,
                head: expected_prev.clone(),
                broken: Some(ChainBreak {
                    line: line_no,
                    seq,
                    message,
                }),
                recoveries: recoveries.clone(),
                torn_tail: None,
            },
            break_offset: Some(line_start),
        };
        if buf.last() != Some(&b'\n') {
            return Ok(broken(
                None,
                "incomplete last line (no newline): an append was interrupted or the file was truncated".into(),
            ));
        }
        let v: Value = match serde_json::from_slice(&buf) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return Ok(broken(
                    None,
                    "not a JSON object: the line was edited".into(),
                ));
            }
            Err(e) => {
                return Ok(broken(
                    None,
                    format!("not valid JSON ({e}): the line was edited"),
                ));
            }
        };
        let seq = v.get("seq").and_then(Value::as_u64);
        let stored = v.get("hash").and_then(Value::as_str).unwrap_or_default();
        let prev = v.get("prev").and_then(Value::as_str).unwrap_or_default();
        let actual = record_hash(&v);
        if stored != actual {
            return Ok(broken(
                seq,
                format!(
                    "hash mismatch (stored {:.16}…, content hashes to {:.16}…): the record was edited",
                    stored, actual
                ),
            ));
        }
        match seq {
            None => return Ok(broken(None, "no seq: the record was edited".into())),
            Some(s) if s > expected_seq => {
                return Ok(broken(
                    seq,
                    format!(
                        "seq {s} where {expected_seq} was expected: record(s) {expected_seq}..{} are missing here (removed, or moved later in the file)",
                        s - 1
                    ),
                ));
            }
            Some(s) if s < expected_seq => {
                return Ok(broken(
                    seq,
                    format!(
                        "seq {s} appears after seq {}: records were reordered or duplicated",
                        expected_seq - 1
                    ),
                ));
            }
            Some(_) => {}
        }
        if prev != expected_prev {
            let why = if line_no == 1 {
                "the log does not start a chain (its beginning was removed)".to_string()
            } else {
                format!(
                    "line {} was edited and re-hashed, or records were removed or reordered",
                    line_no - 1
                )
            };
            return Ok(broken(
                seq,
                format!(
                    "prev {:.16}… does not match the previous record's hash {:.16}…: {why}",
                    prev, expected_prev
                ),
            ));
        }
        if v.get("event").and_then(Value::as_str) == Some("recovered") {
            // A recovery must say what it follows, and sit where the torn bytes were.
            let record = serde_json::from_value::<AuditRecord>(v.clone()).ok();
            match record {
                Some(AuditRecord {
                    recovery: Some(r),
                    time,
                    ..
                }) if r.last_good_hash == expected_prev
                    && r.last_good_seq.checked_add(1) == Some(expected_seq)
                    && r.offset == line_start =>
                {
                    recoveries.push(RecoveryNote {
                        line: line_no,
                        seq: expected_seq,
                        time,
                        recovery: r,
                    });
                }
                _ => {
                    return Ok(broken(
                        seq,
                        "a recovered record that does not describe its place in the log (last good record, offset): it was edited".into(),
                    ));
                }
            }
        }
        expected_prev = actual;
        expected_seq += 1;
    }
    Ok(Walk {
        verification: Verification {
            records: line_no,
            head: expected_prev,
            broken: None,
            recoveries,
            torn_tail: None,
        },
        break_offset: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_recursively_and_hash_ignores_hash() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,"x"],"x":null},"hash":"z"}"#).unwrap();
        let mut s = String::new();
        canonical(&a, &mut s);
        assert_eq!(s, r#"{"a":{"x":null,"y":[1,"x"]},"b":1,"hash":"z"}"#);
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#).unwrap();
        assert_eq!(record_hash(&a), record_hash(&b));
        let c: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":2}"#).unwrap();
        assert_ne!(record_hash(&a), record_hash(&c));
    }

    #[test]
    fn unknown_events_from_newer_versions_still_parse() {
        let r: AuditRecord = serde_json::from_str(
            r#"{"seq":1,"time":"2026-11-26T12:00:00Z","host":"h","event":"teleport","decision":"maybe","reason":"r","prev":"","hash":""}"#,
        )
        .unwrap();
        assert_eq!(r.event, AuditEvent::Other);
        assert_eq!(r.decision, Decision::Other);
    }
}

#[cfg(test)]
mod torn_tail_tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(path: &Path) -> AuditConfig {
        AuditConfig {
            path: path.to_path_buf(),
            ..AuditConfig::default()
        }
    }

    fn rec(i: u64) -> AuditRecord {
        let mut r = AuditRecord::new(AuditEvent::Grant, Decision::Granted, format!("grant {i}"));
        r.job_id = Some(i);
        r
    }

    /// A log of `n` records in a fresh directory; returns the directory, the log and the records.
    fn log_of(n: u64) -> (tempfile::TempDir, PathBuf, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let written = (1..=n)
            .map(|i| append(&cfg(&log), rec(i)).unwrap())
            .collect();
        (dir, log, written)
    }

    fn add(log: &Path, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new().append(true).open(log).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn records(log: &Path) -> Vec<AuditRecord> {
        fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Append after `torn` was added to a good log of three records: the torn bytes, and only
    /// they, are replaced by a `recovered` record, then the new record follows; the chain
    /// verifies and lists the recovery.
    fn assert_recovers(torn: &[u8]) {
        let (_dir, log, written) = log_of(3);
        let good = fs::read(&log).unwrap();
        add(&log, torn);
        let before = verify(&log).unwrap();
        let t = before.torn_tail.clone().expect("a torn tail is recognised");
        assert_eq!(
            (t.line, t.offset, t.bytes),
            (4, good.len() as u64, torn.len() as u64)
        );

        let new = append(&cfg(&log), rec(4)).unwrap();
        let after = fs::read(&log).unwrap();
        assert_eq!(
            &after[..good.len()],
            &good[..],
            "nothing complete is removed"
        );
        let all = records(&log);
        assert_eq!(all.len(), 5);
        assert_eq!(&all[..3], &written[..]);
        let r = &all[3];
        assert_eq!(
            (r.event, r.decision, r.seq),
            (AuditEvent::Recovered, Decision::Succeeded, 4)
        );
        assert_eq!(r.prev, written[2].hash);
        assert_eq!(
            r.recovery,
            Some(Recovery {
                removed_bytes: torn.len() as u64,
                removed_sha256: hex::encode(Sha256::digest(torn)),
                offset: good.len() as u64,
                last_good_seq: 3,
                last_good_hash: written[2].hash.clone(),
            })
        );
        assert!(r.reason.contains("torn tail removed"), "{}", r.reason);
        assert_eq!(all[4], new);
        assert_eq!((new.seq, &new.prev), (5, &r.hash));

        let v = verify(&log).unwrap();
        assert_eq!((v.records, v.broken, v.torn_tail), (5, None, None));
        assert_eq!(v.head, new.hash);
        assert_eq!(v.recoveries.len(), 1);
        assert_eq!((v.recoveries[0].line, v.recoveries[0].seq), (4, 4));
        assert_eq!(v.recoveries[0].recovery, r.recovery.clone().unwrap());

        // The repaired log appends as usual, with no second recovery.
        append(&cfg(&log), rec(5)).unwrap();
        assert_eq!(verify(&log).unwrap().recoveries.len(), 1);
    }

    /// What an interrupted append of the next record would leave: the first `n` bytes of it.
    fn prefix_of_a_record(n: usize) -> Vec<u8> {
        let mut r = rec(99);
        r.extra.insert("pad".into(), "x".repeat(n).into());
        r.prev = "ab".repeat(32);
        r.hash = "cd".repeat(32);
        serde_json::to_vec(&r).unwrap()[..n].to_vec()
    }

    #[test]
    fn a_partial_json_line_without_newline_is_removed_and_recorded() {
        assert_recovers(&prefix_of_a_record(57));
    }

    #[test]
    fn a_partial_line_longer_than_a_read_chunk_is_removed_and_recorded() {
        assert_recovers(&prefix_of_a_record(9000));
    }

    #[test]
    fn bytes_without_a_newline_at_the_end_are_removed_and_recorded() {
        // Zeros: what a crash can leave where the file grew but its data never reached disk.
        assert_recovers(&[0u8; 300]);
        assert_recovers(b"{\"seq\":4,");
        assert_recovers(b"\x00\xffnot json at all");
    }

    #[test]
    fn a_complete_last_line_that_is_not_a_record_stays_an_error() {
        // An edited last record, valid JSON on its own line with its newline: tampering, not a
        // torn append, so it is never removed.
        let (_dir, log, _) = log_of(2);
        edit_line(&log, 1, |v| v["reason"] = "edited after hashing".into());
        assert_fails_closed(&log, 2);

        for bad in [
            &b"\x00\xffnot json at all\n"[..],
            b"[1,2,3]\n{\"seq\":4,",
            b"\n",
            b"{\"seq\":4}\n",
        ] {
            let (_dir, log, _) = log_of(3);
            add(&log, bad);
            assert_fails_closed(&log, 4);
        }
    }

    #[test]
    fn a_log_with_no_complete_line_starts_its_chain_with_the_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let torn = prefix_of_a_record(40);
        fs::write(&log, &torn).unwrap();
        append(&cfg(&log), rec(1)).unwrap();
        let all = records(&log);
        assert_eq!(all[0].event, AuditEvent::Recovered);
        assert_eq!((all[0].seq, all[0].prev.as_str()), (1, GENESIS));
        let r = all[0].recovery.clone().unwrap();
        assert_eq!((r.removed_bytes, r.offset, r.last_good_seq), (40, 0, 0));
        let v = verify(&log).unwrap();
        assert_eq!((v.records, v.broken, v.recoveries.len()), (2, None, 1));
    }

    /// Damage that reaches a complete record is never repaired: the append fails with the line
    /// and the fix, and the log is left byte for byte as it was.
    fn assert_fails_closed(log: &Path, line: u64) {
        let before = fs::read(log).unwrap();
        let err = append(&cfg(log), rec(9)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AuditError::Damaged { .. }), "{text}");
        assert!(text.contains(&format!("line {line}")), "{text}");
        for fix in [
            "p3-executor audit verify",
            "move it aside",
            "evidence",
            "mv ",
        ] {
            assert!(text.contains(fix), "the fix names {fix:?}: {text}");
        }
        assert_eq!(fs::read(log).unwrap(), before, "nothing was removed");
        let v = verify(log).unwrap();
        assert_eq!(v.broken.map(|b| b.line), Some(line));
        assert_eq!(v.torn_tail, None, "damage is not a torn tail");
    }

    fn edit_line(log: &Path, index: usize, edit: impl FnOnce(&mut Value)) {
        let text = fs::read_to_string(log).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut v: Value = serde_json::from_str(&lines[index]).unwrap();
        edit(&mut v);
        lines[index] = v.to_string();
        fs::write(log, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn a_damaged_middle_with_a_torn_tail_stays_an_error() {
        let (_dir, log, _) = log_of(4);
        edit_line(&log, 1, |v| v["reason"] = "edited".into());
        add(&log, &prefix_of_a_record(30));
        assert_fails_closed(&log, 2);
    }

    #[test]
    fn a_last_record_that_does_not_continue_its_predecessor_stays_an_error() {
        // Removing the second-to-last record leaves two complete records that do not chain.
        let (_dir, log, _) = log_of(4);
        let text = fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        fs::write(&log, lines.join("\n") + "\n").unwrap();
        assert_fails_closed(&log, 3);

        // An edited and re-hashed last record: complete on its own, so never removed.
        let (_dir, log, _) = log_of(3);
        edit_line(&log, 2, |v| {
            v["prev"] = "ef".repeat(32).into();
            v["hash"] = record_hash(v).into();
        });
        assert_fails_closed(&log, 3);
    }

    #[test]
    fn two_bad_lines_at_the_end_stay_an_error() {
        let (_dir, log, _) = log_of(3);
        edit_line(&log, 2, |v| v["reason"] = "edited".into());
        add(&log, b"garbage\n");
        assert_fails_closed(&log, 3);
    }

    #[test]
    fn no_line_end_in_the_last_mebibyte_stays_an_error() {
        let (_dir, log, _) = log_of(1);
        add(&log, &vec![b'x'; MAX_RECORD as usize + 10]);
        let before = fs::read(&log).unwrap();
        let err = append(&cfg(&log), rec(2)).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(fs::read(&log).unwrap(), before);
    }

    #[test]
    fn an_edited_recovery_record_breaks_the_chain() {
        let (_dir, log, _) = log_of(2);
        add(&log, b"{\"seq\":3");
        append(&cfg(&log), rec(3)).unwrap();
        edit_line(&log, 2, |v| {
            v["recovery"]["last_good_seq"] = 1.into();
            v["hash"] = record_hash(v).into();
        });
        let v = verify(&log).unwrap();
        let b = v.broken.expect("broken");
        assert_eq!(b.line, 3);
        assert!(b.message.contains("recovered record"), "{}", b.message);
    }

    #[test]
    fn recovery_records_keep_the_schema_compatible() {
        // Records without the new field still parse; only recovered records carry it.
        let old: AuditRecord = serde_json::from_str(
            r#"{"seq":1,"time":"2026-11-26T12:00:00Z","host":"h","event":"grant","decision":"granted","reason":"r","prev":"","hash":""}"#,
        )
        .unwrap();
        assert_eq!(old.recovery, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("recovery"));
        let (_dir, log, _) = log_of(1);
        add(&log, b"{");
        append(&cfg(&log), rec(2)).unwrap();
        let text = fs::read_to_string(&log).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.contains(r#""event":"recovered""#), "{line}");
        let back: AuditRecord = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line, "round trip");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Cut the last record anywhere before its newline: always a torn append, healed.
        #[test]
        fn a_cut_anywhere_in_the_last_record_always_heals(cut in any::<prop::sample::Index>()) {
            let (_dir, log, written) = log_of(3);
            let full = fs::read(&log).unwrap();
            let last_start = full[..full.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            // Keep 1..=len-1 bytes of the last line (its newline is the last byte).
            let at = last_start + 1 + cut.index(full.len() - 1 - last_start);
            fs::write(&log, &full[..at]).unwrap();
            let new = append(&cfg(&log), rec(9)).unwrap();
            let after = fs::read(&log).unwrap();
            prop_assert_eq!(&after[..last_start], &full[..last_start]);
            let v = verify(&log).unwrap();
            prop_assert_eq!(&v.broken, &None);
            prop_assert_eq!(v.records, 4);
            prop_assert_eq!(v.recoveries.len(), 1);
            prop_assert_eq!(v.recoveries[0].recovery.removed_bytes, (at - last_start) as u64);
            prop_assert_eq!(&v.recoveries[0].recovery.last_good_hash, &written[1].hash);
            prop_assert_eq!(new.seq, 4);
        }

        /// Change any one byte of a complete record (not its newline): never healed. Nothing
        /// is removed and no recovery is recorded; a change in the last record (the tail an
        /// append reads) fails the append closed, leaving the log byte for byte as it was.
        #[test]
        fn a_changed_byte_in_a_complete_record_never_heals(
            pos in any::<prop::sample::Index>(),
            delta in 1u8..=255,
        ) {
            let (_dir, log, _) = log_of(3);
            let mut bytes = fs::read(&log).unwrap();
            let last_start = bytes[..bytes.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            let content: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != b'\n').collect();
            let i = content[pos.index(content.len())];
            bytes[i] = bytes[i].wrapping_add(delta);
            fs::write(&log, &bytes).unwrap();
            let result = append(&cfg(&log), rec(9));
            let after = fs::read(&log).unwrap();
            prop_assert_eq!(&after[..bytes.len()], &bytes[..], "nothing is removed");
            if i >= last_start {
                prop_assert!(matches!(result, Err(AuditError::Damaged { .. })), "{:?}", result);
                prop_assert_eq!(&after, &bytes);
            }
            let v = verify(&log).unwrap();
            prop_assert!(v.broken.is_some());
            prop_assert_eq!(v.torn_tail, None);
            prop_assert!(v.recoveries.is_empty());
            prop_assert!(v.recoveries.is_empty());
        }

        /// Cut a good log anywhere: at a line end nothing is recovered; anywhere else exactly
        /// the bytes after the last line end are removed, and the result verifies.
        #[test]
        fn a_log_cut_anywhere_heals_without_losing_a_complete_record(cut in any::<prop::sample::Index>()) {
            let (_dir, log, _) = log_of(3);
            let full = fs::read(&log).unwrap();
            let at = cut.index(full.len() + 1);
            fs::write(&log, &full[..at]).unwrap();
            let complete = full[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let lines = full[..complete].iter().filter(|&&b| b == b'\n').count() as u64;
            append(&cfg(&log), rec(9)).unwrap();
            let after = fs::read(&log).unwrap();
            prop_assert_eq!(&after[..complete], &full[..complete]);
            let v = verify(&log).unwrap();
            prop_assert_eq!(&v.broken, &None);
            let torn = (at - complete) as u64;
            prop_assert_eq!(v.recoveries.len(), usize::from(torn > 0));
            prop_assert_eq!(v.records, lines + 1 + u64::from(torn > 0));
            if let Some(r) = v.recoveries.first() {
                prop_assert_eq!(r.recovery.removed_bytes, torn);
                prop_assert_eq!(r.recovery.offset, complete as u64);
            }
        }
    }
}
