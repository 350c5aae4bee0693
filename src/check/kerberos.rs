//! Host checks for Kerberos, for `p3-executor check`: kinit/klist/kdestroy present, krb5.conf
//! present, and every account's keytab exists, is private to the executor, and holds its
//! principal.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::finding::{Finding, Severity};
use crate::config::Config;
use crate::credentials::kerberos::{keytab_principals, principal_matches, resolve_tool};

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
    let euid = nix::unistd::geteuid().as_raw();
    let job_uid = nix::unistd::User::from_name(&cfg.job_user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    for (name, account) in &cfg.accounts {
        let keytab = &account.keytab;
        let meta = match fs::metadata(keytab) {
            Ok(m) => m,
            Err(e) => {
                out.push(Finding {
                    severity: Severity::Error,
                    problem: format!(
                        "accounts.{name}: keytab {} cannot be read: {e}",
                        keytab.display()
                    ),
                    fix: format!(
                        "export the keytab of {} to {} (kadmin: ktadd -norandkey -k {} {}), owned by root, mode 0600",
                        account.principal,
                        keytab.display(),
                        keytab.display(),
                        account.principal
                    ),
                });
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(Finding {
                severity: Severity::Error,
                problem: format!(
                    "accounts.{name}: keytab {} has mode {mode:03o}: group/others can {}",
                    keytab.display(),
                    if mode & 0o044 != 0 {
                        "read it"
                    } else {
                        "access it"
                    }
                ),
                fix: format!("chmod 600 {}", keytab.display()),
            });
        }
        if job_uid.is_some_and(|uid| uid == meta.uid() && uid != euid) {
            out.push(Finding {
                severity: Severity::Error,
                problem: format!(
                    "accounts.{name}: keytab {} is owned by job_user {:?}: every job can read it",
                    keytab.display(),
                    cfg.job_user
                ),
                fix: format!("chown root:root {}", keytab.display()),
            });
        } else if meta.uid() != 0 && meta.uid() != euid {
            out.push(Finding {
                severity: Severity::Error,
                problem: format!(
                    "accounts.{name}: keytab {} is owned by uid {}, not root or the executor (uid {euid})",
                    keytab.display(),
                    meta.uid()
                ),
                fix: format!("chown root:root {}", keytab.display()),
            });
        }
        if let Some(dir) = keytab.parent() {
            if let Ok(dmeta) = fs::metadata(dir) {
                if dmeta.permissions().mode() & 0o022 != 0 {
                    out.push(Finding {
                        severity: Severity::Error,
                        problem: format!(
                            "accounts.{name}: keytab directory {} is writable by group/others: the keytab could be replaced",
                            dir.display()
                        ),
                        fix: format!("chmod go-w {}", dir.display()),
                    });
                }
            }
        }
        if !klist_found {
            continue;
        }
        match keytab_principals(k, keytab) {
            Ok(found) if found.iter().any(|p| principal_matches(p, &account.principal)) => {}
            Ok(found) => out.push(Finding {
                severity: Severity::Error,
                problem: format!(
                    "accounts.{name}: keytab {} holds no key for {} (it holds: {})",
                    keytab.display(),
                    account.principal,
                    if found.is_empty() {
                        "nothing".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
                fix: format!(
                    "set accounts.{name}.principal to the keytab's principal, or export {}'s key into the keytab",
                    account.principal
                ),
            }),
            Err(e) => out.push(Finding {
                severity: Severity::Error,
                problem: format!("accounts.{name}: {e}"),
                fix: format!(
                    "make {} a valid keytab holding {}",
                    keytab.display(),
                    account.principal
                ),
            }),
        }
    }
    out
}
