//! An account's keytab: present, private to the executor (mode, owner, directory), holding
//! the account's principal; what it holds and how old it is.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::check::finding::{Finding, Severity, finding};
use crate::config::{Account, Config};
use crate::credentials::kerberos::{
    enctype_name, keytab_principals, principal_matches, read_keytab,
};

/// The keytab of account `name`: file, owner and mode; then, with klist, what it holds.
pub(super) fn findings(
    cfg: &Config,
    name: &str,
    account: &Account,
    klist_found: bool,
    out: &mut Vec<Finding>,
) {
    let k = &cfg.kerberos;
    let euid = nix::unistd::geteuid().as_raw();
    let job_uid = nix::unistd::User::from_name(&cfg.job_user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
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
                fix: missing_keytab_fix(account),
            });
            return;
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
        return;
    }
    contents(cfg, name, account, &meta, out);
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

/// What the keytab holds (each principal's key versions and enctypes) and its age, as an `ok:`
/// line; a warning past `kerberos.keytab_max_age_days`.
fn contents(
    cfg: &Config,
    name: &str,
    account: &Account,
    meta: &fs::Metadata,
    out: &mut Vec<Finding>,
) {
    let keytab = account.keytab.display();
    let age_days = meta
        .modified()
        .ok()
        .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
        .map_or(0, |d| d.as_secs() / 86_400);
    let entries = match read_keytab(&account.keytab) {
        Ok(entries) => entries,
        Err(why) => {
            out.push(finding(
                Severity::Warning,
                format!("accounts.{name}: keytab {keytab} {why}"),
                "export the keytab again (MIT kadmin ktadd, ktpass, msktutil or adcli)",
            ));
            return;
        }
    };
    let mut principals: Vec<&str> = Vec::new();
    for e in &entries {
        if !principals.contains(&e.principal.as_str()) {
            principals.push(&e.principal);
        }
    }
    let held: Vec<String> = principals
        .iter()
        .map(|p| {
            let mut kvnos: Vec<u32> = Vec::new();
            let mut enctypes: Vec<String> = Vec::new();
            for e in entries.iter().filter(|e| e.principal == *p) {
                if !kvnos.contains(&e.kvno) {
                    kvnos.push(e.kvno);
                }
                let n = enctype_name(e.enctype);
                if !enctypes.contains(&n) {
                    enctypes.push(n);
                }
            }
            kvnos.sort_unstable();
            let kvnos: Vec<String> = kvnos.iter().map(u32::to_string).collect();
            format!(
                "{p} key version(s) {} ({})",
                kvnos.join(", "),
                enctypes.join(", ")
            )
        })
        .collect();
    out.push(finding(
        Severity::Info,
        format!(
            "accounts.{name}: keytab {keytab}: {}; {age_days} day(s) old",
            if held.is_empty() {
                "no keys".to_string()
            } else {
                held.join("; ")
            }
        ),
        "",
    ));
    let max = cfg.kerberos.keytab_max_age_days;
    if max > 0 && age_days > max {
        out.push(finding(
            Severity::Warning,
            format!(
                "accounts.{name}: keytab {keytab} is {age_days} days old (kerberos.keytab_max_age_days = {max}): if the account's password rotates (a gMSA every 30 days, AD service accounts by policy), this keytab will soon stop working"
            ),
            "export a fresh keytab with your site's tool (ktpass, msktutil --update, adcli update, or a gMSA keytab tool) and run `p3-executor check --probe`; for an account whose password never rotates, raise kerberos.keytab_max_age_days (0: never warn)",
        ));
    }
}

/// How to put a missing keytab in place: MIT kadmin, or the Active Directory tools.
pub(super) fn missing_keytab_fix(account: &Account) -> String {
    let (principal, keytab) = (&account.principal, account.keytab.display());
    let user = principal.split('@').next().unwrap_or(principal);
    format!(
        "export the keytab of {principal} to {keytab}, owned by root, mode 0600. MIT KDC: kadmin: ktadd -norandkey -k {keytab} {principal}. Active Directory: on a DC, ktpass /princ {principal} /mapuser {user} /crypto AES256-SHA1 /ptype KRB5_NT_PRINCIPAL +rndPass /out {user}.keytab (then copy it here); on Linux, msktutil --use-service-account --account-name {user} --keytab {keytab}, or adcli (adcli create-msa for a managed service account). ktpass, msktutil and adcli set a new key: keytabs exported earlier for the account stop working"
    )
}
