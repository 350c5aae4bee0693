//! Host checks for Kerberos, for `p3-executor check`: kinit/klist/kdestroy present, krb5.conf
//! present, every account's keytab exists, is private to the executor, and holds its
//! principal, and every account's own realm (`[accounts.<name>.kerberos]`) can work for jobs.
//! `check --probe` ([`probe`]) also runs a real kinit per account and says which DC answered.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::finding::{Finding, Severity, finding};
use crate::config::{Account, AccountKerberos, Config};
use crate::credentials::kerberos::realm_conf::{self, SYSTEM_KRB5_CONF};
use crate::credentials::kerberos::{
    KerberosError, KinitOptions, destroy, enctype_name, keytab_principals, keytab_with_kvno,
    obtain_with, principal_matches, read_keytab, resolve_tool,
};

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
    let euid = nix::unistd::geteuid().as_raw();
    let job_uid = nix::unistd::User::from_name(&cfg.job_user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    for (name, account) in &cfg.accounts {
        if let Some(realm) = &account.kerberos {
            realm_findings(cfg, name, realm, &mut out);
        }
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
        keytab_findings(cfg, name, account, &meta, &mut out);
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

/// What the keytab holds (each principal's key versions and enctypes) and its age, as an `ok:`
/// line; a warning past `kerberos.keytab_max_age_days`.
fn keytab_findings(
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
fn missing_keytab_fix(account: &Account) -> String {
    let (principal, keytab) = (&account.principal, account.keytab.display());
    let user = principal.split('@').next().unwrap_or(principal);
    format!(
        "export the keytab of {principal} to {keytab}, owned by root, mode 0600. MIT KDC: kadmin: ktadd -norandkey -k {keytab} {principal}. Active Directory: on a DC, ktpass /princ {principal} /mapuser {user} /crypto AES256-SHA1 /ptype KRB5_NT_PRINCIPAL +rndPass /out {user}.keytab (then copy it here); on Linux, msktutil --use-service-account --account-name {user} --keytab {keytab}, or adcli (adcli create-msa for a managed service account). ktpass, msktutil and adcli set a new key: keytabs exported earlier for the account stop working"
    )
}

/// What can be known about an account's own realm without asking a DC: whether its jobs can
/// read the host file their krb5.conf includes, whether the kinit bound leaves room for
/// failover, weak enctypes; and, as an `ok:` line, what the job's krb5.conf will say.
fn realm_findings(cfg: &Config, name: &str, realm: &AccountKerberos, out: &mut Vec<Finding>) {
    let key = format!("accounts.{name}.kerberos");
    let include = realm_conf::host_include(&cfg.kerberos, realm);
    let mut found = vec![if realm.dcs.listed().is_empty() {
        format!("DCs from DNS (_kerberos._tcp.{})", realm.realm)
    } else {
        format!("DCs {} (in this order)", realm.dcs.listed().join(", "))
    }];
    if realm.include_host_config {
        let host = cfg
            .kerberos
            .krb5_config
            .clone()
            .unwrap_or_else(|| SYSTEM_KRB5_CONF.into());
        match &include {
            Some(host) => found.push(format!("then {}", host.display())),
            None => out.push(finding(
                Severity::Warning,
                format!(
                    "{key}: the host file {} does not exist, so jobs' krb5.conf cannot include it",
                    host.display()
                ),
                format!(
                    "create {} (or set kerberos.krb5_config), or set {key}.include_host_config = false",
                    host.display()
                ),
            )),
        }
    }
    if let Some(host) = &include {
        host_file_readable(cfg, &key, host, out);
    }
    out.push(finding(
        Severity::Info,
        format!(
            "{key}: jobs get a krb5.conf of their own for realm {}: {}",
            realm.realm,
            found.join(", ")
        ),
        "",
    ));
    let timeout = realm.timeout_secs.unwrap_or(cfg.kerberos.timeout_secs);
    let spare = realm.dcs.listed().len().saturating_sub(1) as u64;
    if spare > 0 && timeout < MUTE_DC_WAIT_SECS * spare + 5 {
        out.push(finding(
            Severity::Warning,
            format!(
                "{key}: {} DCs, but kinit is stopped after {timeout} s: MIT kinit waits {MUTE_DC_WAIT_SECS} s on a DC that accepts and never answers before it asks the next, so only {} mute DC(s) can be skipped in time",
                realm.dcs.listed().len(),
                timeout.saturating_sub(1) / MUTE_DC_WAIT_SECS
            ),
            format!(
                "set {key}.timeout_secs = {} ({MUTE_DC_WAIT_SECS} s for each DC but the last, plus 5)",
                MUTE_DC_WAIT_SECS * spare + 5
            ),
        ));
    }
    let weak: Vec<&String> = realm
        .enctypes
        .iter()
        .filter(|e| {
            let e = e.to_ascii_lowercase();
            !e.starts_with('-') && (e.contains("rc4") || e.contains("arcfour") || e.contains("des"))
        })
        .collect();
    if !weak.is_empty() {
        out.push(finding(
            Severity::Warning,
            format!(
                "{key}.enctypes allows weak encryption types: {}",
                weak.iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "give the account AES keys in AD (msDS-SupportedEncryptionTypes) and list only aes256-cts-hmac-sha1-96 and aes128-cts-hmac-sha1-96",
        ));
    }
}

/// A job's krb5.conf includes `host`: if the job cannot read it (mode, or hidden by the
/// sandbox), every Kerberos call in the job fails ("Included profile file could not be read").
fn host_file_readable(cfg: &Config, key: &str, host: &Path, out: &mut Vec<Finding>) {
    if let Ok(meta) = fs::metadata(host)
        && meta.permissions().mode() & 0o004 == 0
    {
        out.push(finding(
            Severity::Error,
            format!(
                "{key}: jobs' krb5.conf includes {}, which jobs cannot read (mode {:03o}): every Kerberos call in a job would fail",
                host.display(),
                meta.permissions().mode() & 0o777
            ),
            format!(
                "chmod 644 {} (it holds no secrets), or set {key}.include_host_config = false",
                host.display()
            ),
        ));
    }
    let hidden = cfg.sandbox.enabled
        && cfg
            .sandbox
            .hide
            .iter()
            .chain([&cfg.state_root, &cfg.builds_root])
            .any(|dir| host.starts_with(dir) && host != dir);
    if hidden {
        out.push(finding(
            Severity::Error,
            format!(
                "{key}: jobs' krb5.conf includes {}, which the job sandbox hides: every Kerberos call in a job would fail",
                host.display()
            ),
            format!(
                "keep the host krb5.conf outside sandbox.hide, state_root and builds_root (/etc/krb5.conf), or set {key}.include_host_config = false"
            ),
        ));
    }
}

/// `p3-executor check --probe`: a real kinit from each account's keytab, bounded by its
/// timeout, into a throwaway root-only cache (destroyed right after), with the krb5.conf a
/// job of the account would get. Reports which DC answered and how long it took, or why none
/// did.
pub fn probe(cfg: &Config) -> Vec<Finding> {
    cfg.accounts
        .iter()
        .flat_map(|(name, account)| {
            let mut out = vec![probe_account(cfg, name, account)];
            out.extend(probe_key_versions(cfg, name, account));
            out
        })
        .collect()
}

/// For an account with its own DCs: which DC accepts which key version of its keytab (a
/// kinit per DC and key version, each with a krb5.conf naming only that DC and a copy of the
/// keytab holding only that version, in a root-only temp dir). One line per DC.
fn probe_key_versions(cfg: &Config, name: &str, account: &Account) -> Vec<Finding> {
    let Some(realm) = account
        .kerberos
        .as_ref()
        .filter(|r| !r.dcs.listed().is_empty())
    else {
        return Vec::new();
    };
    let mut kvnos: Vec<u32> = read_keytab(&account.keytab)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| principal_matches(&e.principal, &account.principal))
        .map(|e| e.kvno)
        .collect();
    kvnos.sort_unstable();
    kvnos.dedup();
    if kvnos.is_empty() {
        return Vec::new();
    }
    let key = format!("accounts.{name}");
    let Ok(dir) = tempfile::Builder::new().prefix("p3-probe-kvno-").tempdir() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dc in realm.dcs.listed() {
        let one = realm.with_only_dc(dc);
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for kvno in &kvnos {
            let result = (|| -> Result<(), String> {
                let sub = dir.path().join(format!("dc-{kvno}"));
                let _ = fs::remove_dir_all(&sub);
                fs::create_dir(&sub).map_err(|e| e.to_string())?;
                let kt = sub.join("keytab");
                let bytes = keytab_with_kvno(&account.keytab, *kvno)?;
                fs::write(&kt, bytes).map_err(|e| e.to_string())?;
                let conf = realm_conf::write_job_conf(&cfg.kerberos, &one, &sub)
                    .map_err(|e| e.to_string())?;
                let probe_account = Account {
                    keytab: kt,
                    kerberos: Some(one.clone()),
                    ..account.clone()
                };
                let ccache = sub.join("krb5cc");
                let opts = KinitOptions {
                    owner: None,
                    max_life: Some(Duration::from_secs(60)),
                    krb5_config: Some(&conf),
                    trace: true,
                    // check's probes load every module, as a plain kinit would, and keep no file.
                    kinit_dir: None,
                };
                let r = obtain_with(&cfg.kerberos, &probe_account, &ccache, &opts);
                let _ = destroy(&cfg.kerberos, &ccache);
                r.map(drop).map_err(|e| match e {
                    KerberosError::KeyRejected { answers, .. } => answers
                        .iter()
                        .map(|a| a.answer.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                    e => e
                        .to_string()
                        .split("\n  fix: ")
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                })
            })();
            match result {
                Ok(()) => accepted.push(kvno.to_string()),
                Err(why) => rejected.push(format!("{kvno} ({why})")),
            }
        }
        let mut text = format!("{key}: probe DC {dc}: ");
        if accepted.is_empty() {
            text.push_str("accepts no key version of the keytab");
        } else {
            text.push_str(&format!("accepts key version {}", accepted.join(", ")));
        }
        if !rejected.is_empty() {
            text.push_str(&format!("; rejects {}", rejected.join(", ")));
        }
        out.push(if accepted.is_empty() {
            finding(
                Severity::Warning,
                text,
                "this DC holds a key the keytab does not (rotated and replicated here), or cannot be reached: export a fresh keytab (ktpass, msktutil --update, adcli update, or a gMSA keytab tool) once the rotation has replicated to every DC",
            )
        } else {
            finding(Severity::Info, text, "")
        });
    }
    out
}

fn probe_account(cfg: &Config, name: &str, account: &Account) -> Finding {
    let key = format!("accounts.{name}");
    let dir = match tempfile::Builder::new().prefix("p3-probe-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            return finding(
                Severity::Error,
                format!("{key}: probe: cannot create a temp dir: {e}"),
                "make the temp dir (TMPDIR) writable",
            );
        }
    };
    let job_conf = match account
        .kerberos
        .as_ref()
        .map(|realm| realm_conf::write_job_conf(&cfg.kerberos, realm, dir.path()))
        .transpose()
    {
        Ok(conf) => conf,
        Err(e) => {
            return finding(
                Severity::Error,
                format!("{key}: probe: {e}"),
                "see the error",
            );
        }
    };
    let ccache = dir.path().join("krb5cc");
    let opts = KinitOptions {
        owner: None,
        // A probe ticket is not for use: a minute is plenty.
        max_life: Some(Duration::from_secs(60)),
        krb5_config: job_conf.as_deref(),
        trace: true,
        // check's probes load every module, as a plain kinit would, and keep no file.
        kinit_dir: None,
    };
    let start = Instant::now();
    let result = obtain_with(&cfg.kerberos, account, &ccache, &opts);
    let ms = start.elapsed().as_millis();
    let _ = destroy(&cfg.kerberos, &ccache);
    match result {
        Ok(obtained) => {
            let skipped = if obtained.unanswered.is_empty() {
                String::new()
            } else {
                format!(" (no answer first from {})", obtained.unanswered.join(", "))
            };
            finding(
                Severity::Info,
                format!(
                    "{key}: probe kinit as {} answered by {} in {ms} ms{skipped}",
                    obtained.ticket.principal,
                    obtained
                        .kdc
                        .as_deref()
                        .unwrap_or("a KDC the trace did not name"),
                ),
                "",
            )
        }
        Err(e) => {
            let text = e.to_string();
            let (problem, fix) = text
                .split_once("\n  fix: ")
                .map(|(p, f)| (p.to_string(), f.to_string()))
                .unwrap_or((text.clone(), String::new()));
            let fix = match (&e, &account.kerberos) {
                (KerberosError::KdcUnreachable { .. }, Some(realm)) => format!(
                    "no DC of {} answered: check that {} accept TCP port 88 from this host (or that DNS has _kerberos._tcp.{} records when dns_lookup_kdc = true)",
                    realm.realm,
                    if realm.dcs.listed().is_empty() {
                        "the realm's DCs".to_string()
                    } else {
                        realm.dcs.listed().join(", ")
                    },
                    realm.realm
                ),
                (KerberosError::Timeout { .. }, Some(_)) => format!(
                    "a DC that accepts connections and never answers costs MIT kinit {MUTE_DC_WAIT_SECS} s before it asks the next: fix or remove the mute DC, or raise {key}.kerberos.timeout_secs"
                ),
                (KerberosError::WrongKeytab { .. }, _) if !account.keytab.exists() => {
                    missing_keytab_fix(account)
                }
                _ if fix.is_empty() => "see the error above".into(),
                _ => fix,
            };
            finding(
                Severity::Error,
                format!("{key}: probe kinit failed after {ms} ms: {problem}"),
                fix,
            )
        }
    }
}
