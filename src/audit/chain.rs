//! The hash chain: audit records, their canonical hash, appending one under an exclusive
//! `flock` with fsync, and walking the chain to verify it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
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
            prev: String::new(),
            hash: String::new(),
        }
    }
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
    /// The log's last record cannot be read, so the chain cannot be continued.
    #[error(
        "audit log {path}: {message}\n  fix: run `p3-executor audit verify` to find the damage; move the damaged log aside (keep it as evidence) to start a new chain"
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// What is wrong with its tail.
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
pub fn append(cfg: &AuditConfig, mut record: AuditRecord) -> Result<AuditRecord, AuditError> {
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
    let mut locked = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(path, "lock")(std::io::Error::from(errno)))?;

    let (last_seq, last_hash) = match last_line(&locked, path)? {
        None => (0, GENESIS.to_string()),
        Some(line) => {
            let v: Value = serde_json::from_slice(&line).map_err(|e| AuditError::Damaged {
                path: path.clone(),
                message: format!("the last record is not valid JSON ({e})"),
            })?;
            let seq = v.get("seq").and_then(Value::as_u64);
            let hash = v.get("hash").and_then(Value::as_str);
            match (seq, hash) {
                (Some(seq), Some(hash)) if hash.len() == 64 => (seq, hash.to_string()),
                _ => {
                    return Err(AuditError::Damaged {
                        path: path.clone(),
                        message: "the last record has no seq or hash".into(),
                    });
                }
            }
        }
    };
    record.seq = last_seq + 1;
    // Stamped under the lock, so times follow the order of the log.
    record.time = Utc::now();
    record.prev = last_hash;
    record.hash = String::new();
    let value = serde_json::to_value(&record).expect("audit record serialises");
    record.hash = record_hash(&value);
    let mut line = serde_json::to_vec(&record).expect("audit record serialises");
    line.push(b'\n');
    // One write on an O_APPEND descriptor: the whole line lands at the end, in one piece.
    locked.write_all(&line).map_err(io(path, "write"))?;
    locked.sync_data().map_err(io(path, "fsync"))?;
    Ok(record)
}

/// The last complete line of the log (without its newline), reading backwards from the end
/// in small chunks so appends stay cheap however long the log grows.
fn last_line(file: &File, path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    let len = file.metadata().map_err(io(path, "stat"))?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)
        .map_err(io(path, "read"))?;
    if last[0] != b'\n' {
        return Err(AuditError::Damaged {
            path: path.to_path_buf(),
            message:
                "the last record is incomplete (no trailing newline): an append was interrupted"
                    .into(),
        });
    }
    let end = len - 1; // exclusive end of the last line
    let mut start = end;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        if let Some(i) = tail.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(tail[i + 1..].to_vec()));
        }
        if start == 0 {
            return Ok(Some(tail));
        }
        if end - start > MAX_RECORD {
            return Err(AuditError::Damaged {
                path: path.to_path_buf(),
                message: "the last record is longer than 1 MiB".into(),
            });
        }
        let chunk = start.min(4096);
        start -= chunk;
        let mut buf = vec![0u8; chunk as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(io(path, "read"))?;
        buf.extend_from_slice(&tail);
        tail = buf;
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

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records read before the first break (all of them when the chain is intact).
    pub records: u64,
    /// Hash of the last good record ([`GENESIS`] for an empty log).
    pub head: String,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
}

/// Walk the chain of the log at `path` (an empty or missing log is intact) and report the first
/// record that was edited, removed or reordered.
pub fn verify(path: &Path) -> Result<Verification, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verification {
                records: 0,
                head: GENESIS.into(),
                broken: None,
            });
        }
        Err(e) => return Err(io(path, "open")(e)),
    };
    // A shared lock: no append lands half-way through the walk.
    let locked = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, errno)| io(path, "lock")(std::io::Error::from(errno)))?;
    let mut reader = BufReader::new(&*locked);
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut line_no = 0u64;
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
        let broken = |seq: Option<u64>, message: String| Verification {
            records: line_no - 1,
            head: expected_prev.clone(),
            broken: Some(ChainBreak {
                line: line_no,
                seq,
                message,
            }),
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
        expected_prev = actual;
        expected_seq += 1;
    }
    Ok(Verification {
        records: line_no,
        head: expected_prev,
        broken: None,
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
