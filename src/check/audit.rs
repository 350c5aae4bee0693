//! The audit log's hash chain is intact. A torn last append is repaired by the next append (a
//! `recovered` record), so `check` warns about it and about recoveries that happened; damage
//! to complete records blocks appends that reach it and needs the operator, so it is an error.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// An existing audit log must verify; torn appends and their recoveries are reported.
pub(super) fn audit_chain(cfg: &Config, out: &mut Vec<Finding>) {
    let path = &cfg.audit.path;
    if let Some(syslog) = &cfg.audit.syslog {
        let drops = crate::audit::syslog::drops(path);
        if drops > 0 {
            out.push(finding(
                Severity::Warning,
                format!(
                    "{drops} audit record(s) could not be sent to syslog ({}); the local log has them all",
                    syslog.socket.display()
                ),
                format!(
                    "check the syslog daemon's socket; then reset the count: rm {}",
                    crate::audit::syslog::drops_file(path).display()
                ),
            ));
        }
    }
    shipping(cfg, out);
    if !path.exists() {
        return;
    }
    let v = match crate::audit::verify(path) {
        Ok(v) => v,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("audit log {} cannot be read: {e}", path.display()),
                "fix its permissions (root, 0640) or move it aside",
            ));
            return;
        }
    };
    if let Some(last) = v.recoveries.last() {
        let r = &last.recovery;
        out.push(finding(
            Severity::Warning,
            format!(
                "audit log {}: {} recovery record(s); the last, at {} (line {}, seq {}), removed a torn append of {} byte(s) (sha256 {}) after seq {}",
                path.display(),
                v.recoveries.len(),
                last.time.format("%Y-%m-%d %H:%M:%S UTC"),
                last.line,
                last.seq,
                r.removed_bytes,
                r.removed_sha256,
                r.last_good_seq
            ),
            "an append was interrupted (crash or full disk) and the next one repaired the tail; the chain verifies. Check free space and the host's crash history around that time (details: p3-executor audit verify)",
        ));
    }
    match (&v.broken, &v.torn_tail) {
        (None, _) => {}
        (Some(_), Some(t)) => out.push(finding(
            Severity::Warning,
            format!(
                "audit log {} ends in a torn append at line {}: {} byte(s) ({})",
                path.display(),
                t.line,
                t.bytes,
                t.message
            ),
            "nothing to do: the next append removes exactly those bytes and records a `recovered` record; if it recurs, check free space and crashes",
        )),
        (Some(b), None) => out.push(finding(
            Severity::Error,
            format!(
                "audit log {} is damaged at line {}{}: {}",
                path.display(),
                b.line,
                b.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
                b.message
            ),
            format!(
                "inspect it with `p3-executor audit verify`, then move it aside and keep it as evidence (mv {0} {0}.damaged-$(date +%Y%m%dT%H%M%S)); the next record starts a new chain. A damaged log is never repaired: an append that finds the damage fails, and the grant with it (fail closed)",
                path.display()
            ),
        )),
    }
}

/// Records waiting longer than this to be shipped are a warning: every cleanup ships and the
/// gc timer's ship unit runs hourly, so two hours means shipping is failing or not scheduled.
const SHIP_LAG_WARN_SECS: u64 = 7200;

/// With `[audit.s3]`: how far shipping is behind, and why the last ship stopped short.
fn shipping(cfg: &Config, out: &mut Vec<Finding>) {
    let Some(s3) = &cfg.audit.s3 else { return };
    let Some(lag) = crate::audit::shipped::lag(cfg) else {
        return;
    };
    let age = lag.age_secs(chrono::Utc::now());
    let dest = format!("s3://{}/{}", s3.bucket, s3.prefix);
    if let Some(err) = lag.state.as_ref().and_then(|s| s.last_error.as_ref()) {
        out.push(finding(
            Severity::Error,
            format!("audit shipping to {dest} is failing: {err}"),
            "fix the cause, then run `p3-executor audit ship` (the gc timer retries on its own); the local log keeps every record meanwhile",
        ));
    } else if lag.records > 0 && age > SHIP_LAG_WARN_SECS {
        out.push(finding(
            Severity::Warning,
            format!(
                "audit shipping to {dest} is {} record(s) behind; the oldest waits for {age} s",
                lag.records
            ),
            "make sure the gc timer and its ship unit run (systemctl status p3-executor-gc.timer p3-executor-audit-ship.service) or run `p3-executor audit ship`",
        ));
    } else {
        out.push(finding(
            Severity::Info,
            format!(
                "audit shipping to {dest}: {} record(s) waiting{}",
                lag.records,
                if lag.records > 0 {
                    format!(", the oldest for {age} s")
                } else {
                    String::new()
                }
            ),
            "",
        ));
    }
}
