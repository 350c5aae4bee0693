//! `p3-executor check --probe`: a real kinit per account, and which DC accepts which key
//! version.

use std::fs;
use std::time::{Duration, Instant};

use super::MUTE_DC_WAIT_SECS;
use super::keytab::missing_keytab_fix;
use crate::check::finding::{Finding, Severity, finding};
use crate::config::{Account, Config};
use crate::credentials::kerberos::{
    KerberosError, KinitOptions, destroy, keytab_with_kvno, obtain_with, principal_matches,
    read_keytab, realm_conf,
};

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
