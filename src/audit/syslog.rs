//! Every audit record also to the host's syslog socket (`[audit.syslog]`): RFC 5424 with the
//! record as JSON in the message, facility `auth` by default, so journald and every log
//! pipeline collect it. The local hash-chained log stays the source of truth: the send is
//! non-blocking and never fails an append. A record that could not be sent is counted in
//! `<audit log>.syslog-drops`, which `check` and the metrics show.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::record::{AuditRecord, Decision};
use crate::config::SyslogConfig;

/// The RFC 5424 line for `record` (pure): PRI from the facility and a severity by outcome
/// (denials and failures are warnings), the record's own time, the host, app `p3-executor`,
/// msgid the event, and the record as JSON.
pub fn format(record: &AuditRecord, facility: u8) -> String {
    let severity = match record.decision {
        Decision::Denied | Decision::Failed => 4, // warning
        _ => 6,                                   // informational
    };
    let json = serde_json::to_string(record).expect("audit record serialises");
    format!(
        "<{}>1 {} {} p3-executor {} {} - {json}",
        u16::from(facility) * 8 + severity,
        record
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        nonempty(&record.host),
        std::process::id(),
        record.event,
    )
}

fn nonempty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Where undelivered records are counted.
pub fn drops_file(audit_log: &Path) -> PathBuf {
    let mut name = audit_log.as_os_str().to_owned();
    name.push(".syslog-drops");
    PathBuf::from(name)
}

/// How many records could not be sent so far.
pub fn drops(audit_log: &Path) -> u64 {
    std::fs::read_to_string(drops_file(audit_log))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Send `record`; on failure, count the drop. Never blocks, never fails the caller.
pub fn send(cfg: &SyslogConfig, audit_log: &Path, record: &AuditRecord) {
    let facility = cfg.facility_code().unwrap_or(4);
    let line = format(record, facility);
    let sent = UnixDatagram::unbound().and_then(|sock| {
        sock.set_nonblocking(true)?;
        sock.send_to(line.as_bytes(), &cfg.socket)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %cfg.socket.display(), "audit record not sent to syslog: {e}");
        count_drop(audit_log);
    }
}

/// Add one to the drop counter, under a lock (concurrent runner calls). A counter that cannot
/// be updated is logged: the record itself is safe in the log, only the count is short.
fn count_drop(audit_log: &Path) {
    let path = drops_file(audit_log);
    if let Err(e) = add_one(&path) {
        tracing::warn!("syslog drop counter {} not updated: {e}", path.display());
    }
}

fn add_one(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut *file, &mut text)?;
    // A damaged counter starts again from zero rather than staying stuck.
    let n = text.trim().parse::<u64>().unwrap_or(0) + 1;
    file.set_len(0)?;
    std::io::Seek::seek(&mut *file, std::io::SeekFrom::Start(0))?;
    writeln!(file, "{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, Decision};

    #[test]
    fn rfc5424_with_the_record_as_json() {
        let mut r = AuditRecord::new(AuditEvent::Deny, Decision::Denied, "devstages: no");
        r.host = "runner-1".into();
        let line = format(&r, 4);
        // auth (4) * 8 + warning (4)
        assert!(line.starts_with("<36>1 "), "{line}");
        assert!(line.contains(" runner-1 p3-executor "), "{line}");
        assert!(line.contains(" deny - {"), "{line}");
        let json = &line[line.find(" - {").unwrap() + 3..];
        let back: AuditRecord = serde_json::from_str(json).unwrap();
        assert_eq!(back.reason, "devstages: no");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_missing_socket_counts_a_drop_and_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let cfg = SyslogConfig {
            socket: dir.path().join("no-such-socket"),
            facility: "auth".into(),
        };
        let r = AuditRecord::new(AuditEvent::Grant, Decision::Granted, "ok");
        send(&cfg, &log, &r);
        send(&cfg, &log, &r);
        assert_eq!(drops(&log), 2);
    }

    #[test]
    fn a_listening_socket_receives_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("log.sock");
        let listener = UnixDatagram::bind(&socket).unwrap();
        let cfg = SyslogConfig {
            socket,
            facility: "local3".into(),
        };
        let r = AuditRecord::new(AuditEvent::Grant, Decision::Granted, "granted");
        send(&cfg, &dir.path().join("audit.jsonl"), &r);
        let mut buf = vec![0u8; 65536];
        let n = listener.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]);
        assert!(line.starts_with("<158>1 "), "{line}"); // local3 (19) * 8 + info (6)
        assert!(line.contains("\"reason\":\"granted\""), "{line}");
    }
}
