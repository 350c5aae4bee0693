//! Host checks for Kerberos, for `p3-executor check`: kinit/klist/kdestroy present, krb5.conf
//! present, every account's keytab exists, is private to the executor, and holds its
//! principal ([`keytab`]), every account's own realm (`[accounts.<name>.kerberos]`) can work
//! for jobs ([`realm`]), and what its kinits learned about SPAKE ([`spake`]).
//! `check --probe` ([`probe()`]) also runs a real kinit per account and says which DC answered.

mod keytab;
mod probe;
mod realm;
mod spake;

pub use probe::probe;

use super::finding::{Finding, Severity};
use crate::config::Config;
use crate::credentials::kerberos::resolve_tool;

/// How long MIT kinit (1.20) waits for a DC that accepts a TCP connection and never answers
/// before it asks the next one (measured; not configurable before MIT 1.22).
pub const MUTE_DC_WAIT_SECS: u64 = 10;

/// Host checks for `p3-executor check`: tools present; every account's keytab exists, is
/// private to the executor, and holds its principal.
pub fn check(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if cfg.accounts.is_empty() {
        return out;
    }
    let k = &cfg.kerberos;
    // The keytab/principal check below needs klist; without it only the file checks run.
    let mut klist_found = true;
    for (configured, key) in [
        (&k.kinit, "kinit"),
        (&k.klist, "klist"),
        (&k.kdestroy, "kdestroy"),
    ] {
        if let Err(e) = resolve_tool(configured, key) {
            klist_found &= key != "klist";
            out.push(Finding {
                severity: Severity::Error,
                problem: format!("{key}: {e}"),
                fix: format!(
                    "apt-get install krb5-user, or set kerberos.{key} to the tool's absolute path"
                ),
            });
        }
    }
    if let Some(conf) = &k.krb5_config {
        if !conf.is_file() {
            out.push(Finding {
                severity: Severity::Error,
                problem: format!("kerberos.krb5_config {} does not exist", conf.display()),
                fix: "point kerberos.krb5_config at the realm's krb5.conf, or remove it to use /etc/krb5.conf".into(),
            });
        }
    }
    for (name, account) in &cfg.accounts {
        if let Some(realm) = &account.kerberos {
            realm::findings(cfg, name, realm, &mut out);
        }
        keytab::findings(cfg, name, account, klist_found, &mut out);
        spake::findings(cfg, name, account, &mut out);
    }
    out
}
