//! The audit record: its fields, its canonical hash, and the rule that a line continues the
//! chain. Pure: no file is read or written here, and nothing here knows about the log's sinks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first record in a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// Position in the chain, from 1; set by [`append`](fn@super::append).
    #[serde(default)]
    pub seq: u64,
    /// When the record was appended (RFC 3339, UTC); set by [`append`](fn@super::append).
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
    /// Hash of the previous record ([`GENESIS`] for the first); set by [`append`](fn@super::append).
    #[serde(default)]
    pub prev: String,
    /// SHA-256 of this record's canonical JSON without `hash`; set by [`append`](fn@super::append).
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    /// A record for `event` with `decision` and `reason`, stamped with this host and now;
    /// fill in the known identity fields, then [`append`](fn@super::append) it.
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

/// A line that is a record on its own: it parses and its `hash` is its content's hash.
pub(super) struct Good {
    pub(super) seq: u64,
    pub(super) hash: String,
    pub(super) prev: String,
}

/// Whether `line` (without its newline) is a record on its own; otherwise what it is.
pub(super) fn check_line(line: &[u8]) -> Result<Good, String> {
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
