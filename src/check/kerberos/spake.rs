//! What an account's kinits learned about SPAKE (`kerberos.spake = "auto"`): whether they leave
//! MIT's SPAKE module out, and since when.

use chrono::{DateTime, Utc};

use crate::check::finding::{Finding, Severity, finding};
use crate::config::{Account, Config};
use crate::credentials::kerberos::{kinit_dir, spake_left_out};

/// An `ok:` line when the account's kinits leave the SPAKE module out; nothing otherwise (they
/// load it, as MIT's default does).
pub(super) fn findings(cfg: &Config, name: &str, account: &Account, out: &mut Vec<Finding>) {
    let dir = kinit_dir(&cfg.state_root);
    if let Some(since) = spake_left_out(&cfg.kerberos, account, &dir) {
        let since: DateTime<Utc> = since.into();
        out.push(finding(
            Severity::Info,
            format!(
                "accounts.{name}: kinits for {} leave the SPAKE module out: the KDC did not offer SPAKE on {} (checked again by every kinit)",
                account.principal,
                since.format("%Y-%m-%d %H:%M UTC")
            ),
            format!(
                "nothing to do; to load it again, set kerberos.spake = \"always\" or delete {}",
                dir.join("no-spake").display()
            ),
        ));
    }
}
