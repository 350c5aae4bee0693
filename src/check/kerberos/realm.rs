//! An account's own realm (`[accounts.<name>.kerberos]`): what can be known without asking a
//! DC.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::MUTE_DC_WAIT_SECS;
use crate::check::finding::{Finding, Severity, finding};
use crate::config::{AccountKerberos, Config};
use crate::credentials::kerberos::realm_conf::{self, SYSTEM_KRB5_CONF};

/// What can be known about an account's own realm without asking a DC: whether its jobs can
/// read the host file their krb5.conf includes, whether the kinit bound leaves room for
/// failover, weak enctypes; and, as an `ok:` line, what the job's krb5.conf will say.
pub(super) fn findings(cfg: &Config, name: &str, realm: &AccountKerberos, out: &mut Vec<Finding>) {
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
