//! Starting `p3-executor-aws audit ship` from the executor, bounded, at the end of each
//! `cleanup`. (The timer's ship is `p3-executor-audit-ship.service`, which the gc service wants:
//! gc's own unit has no network.) A failed or slow ship never fails a job: the records stay in
//! the local log, `check` and the metrics show the lag, and the next run ships them.

use std::process::Command;
use std::time::Duration;

use crate::config::Config;

/// Ship what waits, taking at most `bound` in all: uploads start only in the first half,
/// and the process is killed at the bound (an interrupted put leaves no object; the next ship
/// completes it). Does nothing without `[audit.s3]`. Returns what went wrong, for a warning.
pub fn ship(cfg: &Config, bound: Duration) -> Result<(), String> {
    if cfg.audit.s3.is_none() || bound.is_zero() {
        return Ok(());
    }
    let program = crate::siblings::path(crate::siblings::AWS).ok_or_else(|| {
        format!(
            "{} is not installed next to p3-executor: audit records are not shipped",
            crate::siblings::AWS
        )
    })?;
    let mut cmd = Command::new(program);
    if let Some(config) = &cfg.audit.stamp.config_path {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["audit", "ship", "--max-secs"])
        .arg(format!("{:.3}", bound.as_secs_f64() / 2.0));
    // The shipper uses the host's credentials from [audit.s3]; nothing of a job's
    // environment (prepare and cleanup run with every CUSTOM_ENV_ variable) reaches it.
    cmd.env_clear();
    for keep in ["PATH", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "RUST_LOG"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    match crate::command::run_bounded(cmd, bound) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "audit ship failed ({}): {}",
            out.status,
            out.stderr_text()
        )),
        Err(e) => Err(format!("audit ship: {e}")),
    }
}
