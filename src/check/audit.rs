//! The audit log's hash chain is intact: a broken chain also blocks every grant (appends refuse
//! a damaged tail), so `check` says so.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// An existing audit log must verify.
pub(super) fn audit_chain(cfg: &Config, out: &mut Vec<Finding>) {
    if cfg.audit.path.exists() {
        match crate::audit::verify(&cfg.audit.path) {
            Ok(v) => {
                if let Some(b) = v.broken {
                    out.push(finding(
                    Severity::Error,
                    format!(
                        "audit log {} is broken at line {}: {}",
                        cfg.audit.path.display(),
                        b.line,
                        b.message
                    ),
                    "investigate (p3-executor audit verify), then move the log aside so a new chain starts; keep the old one as evidence",
                ));
                }
            }
            Err(e) => out.push(finding(
                Severity::Error,
                format!("audit log {} cannot be read: {e}", cfg.audit.path.display()),
                "fix its permissions (root, 0640) or move it aside",
            )),
        }
    }
}
