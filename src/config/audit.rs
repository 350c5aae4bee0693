//! `[audit]`: the audit log, its syslog copy and the stamp on every record (`[audit.s3]`, the
//! shipping, is in `s3.rs`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Problem;
use super::s3::AuditS3Config;

/// Audit log settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append-only JSON-lines file, hash-chained.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Also send every record to the host's syslog (RFC 5424, JSON); never blocks a grant.
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
    /// Ship every record off the host to S3, as immutable Object-Locked batches
    /// (`p3-executor audit ship`; see `crates/aws/src/fleet/`).
    #[serde(default)]
    pub s3: Option<AuditS3Config>,
    /// What every record is stamped with; set when the config is loaded, never from the file.
    #[serde(skip)]
    pub stamp: AuditStamp,
}

/// `[audit.syslog]`: every audit record also to the local syslog socket (see `audit/syslog.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The local syslog datagram socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Syslog facility: `auth`, `authpriv`, `daemon`, `local0` … `local7`.
    #[serde(default = "default_facility")]
    pub facility: String,
}

fn default_socket() -> PathBuf {
    "/dev/log".into()
}
fn default_facility() -> String {
    "auth".into()
}

impl AuditConfig {
    /// Problems with `[audit]` and its subsections.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(s) = &self.syslog
            && s.facility_code().is_none()
        {
            problems.push(Problem::new(
                "audit.syslog.facility",
                format!(
                    "{:?} is not a syslog facility (auth, authpriv, daemon, user, local0 … local7)",
                    s.facility
                ),
            ));
        }
        if let Some(s3) = &self.s3 {
            problems.extend(s3.problems());
        }
        problems
    }
}

impl SyslogConfig {
    /// The numeric code of the facility, or None for an unknown name.
    pub fn facility_code(&self) -> Option<u8> {
        Some(match self.facility.as_str() {
            "kern" => 0,
            "user" => 1,
            "daemon" => 3,
            "auth" => 4,
            "authpriv" => 10,
            "local0" => 16,
            "local1" => 17,
            "local2" => 18,
            "local3" => 19,
            "local4" => 20,
            "local5" => 21,
            "local6" => 22,
            "local7" => 23,
            _ => return None,
        })
    }
}

/// Facts that let an auditor answer "on which runner, under which policy": the same for every
/// record one executor process writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStamp {
    /// The state root holding this runner host's stable id (`<state_root>/host-id`, made by
    /// the first append once the state root exists), which survives renames.
    pub state_root: Option<PathBuf>,
    /// SHA-256 of the executor config file in force.
    pub config_sha256: Option<String>,
    /// The config file it was loaded from (the shipper is started with the same one).
    pub config_path: Option<PathBuf>,
}

fn default_audit_path() -> PathBuf {
    "/var/log/p3-executor/audit.jsonl".into()
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: default_audit_path(),
            syslog: None,
            s3: None,
            stamp: AuditStamp::default(),
        }
    }
}

/// This host's stable id: `<state_root>/host-id`, made once (128 random bits, hex) and kept.
/// None when the state root cannot hold it (not root, read-only): records then name the host
/// by its name only.
pub fn host_id(state_root: &Path) -> Option<String> {
    let file = state_root.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Some(id.to_string());
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .ok()?;
    let id = hex::encode(bytes);
    // Never create the state root here (loading a config must not make directories, and the
    // workspace code makes it with the right mode); the first prepare does.
    if !state_root.is_dir() {
        return None;
    }
    // create_new: two first executions race; the loser reads the winner's id.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
    {
        Ok(mut f) => std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes()).ok()?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return std::fs::read_to_string(&file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
        Err(_) => return None,
    }
    Some(id)
}
