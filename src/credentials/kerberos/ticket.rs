//! Tickets for a job: kinit from the account's keytab into the job's file cache (lifetime
//! capped by the job, not renewable unless the account opts in), refresh when close to expiry,
//! destroy when the job ends.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use p3_contract::env;

use super::ccache::{Ticket, read_ticket};
use super::error::DcAnswer;
use super::error::{KerberosError, io_err};
use super::keytab::{keytab_kvnos, principal_matches};
use super::realm_conf;
use super::tool::{parse_kdc_trace, run_tool, run_tool_with, without_trace};
use crate::command::Output;
use crate::config::{Account, KerberosConfig};

/// Classify a failed kinit by its (precise, stable) stderr text, trace lines left out;
/// `krb5_config` is the file whose KDC entries it used, `answered` the DC that answered (from
/// the trace). A key the DC rejects is [`KerberosError::KeyRejected`] with that DC's answer;
/// a keytab that cannot be used at all (missing, no key for the principal) is `WrongKeytab`.
fn kinit_error(
    account: &Account,
    krb5_config: String,
    out: &Output,
    answered: Option<String>,
) -> KerberosError {
    let stderr = without_trace(&out.stderr_text());
    let principal = account.principal.clone();
    if stderr.contains("Cannot contact any KDC")
        || stderr.contains("Cannot find KDC")
        || stderr.contains("Cannot resolve network address")
    {
        KerberosError::KdcUnreachable {
            principal,
            stderr,
            krb5_config,
        }
    } else if stderr.contains("Password incorrect")
        || stderr.contains("Preauthentication failed")
        || stderr.contains("Key version number for principal in key table is incorrect")
    {
        KerberosError::KeyRejected {
            kvnos: keytab_kvnos(&account.keytab, &principal),
            principal,
            keytab: account.keytab.clone(),
            answers: vec![DcAnswer {
                kdc: answered.unwrap_or_else(|| "the realm's KDC".into()),
                reason: "wrong_key",
                answer: stderr,
            }],
        }
    } else if stderr.contains("Keytab contains no suitable keys")
        || stderr.contains("Key table file")
    {
        KerberosError::WrongKeytab {
            principal,
            keytab: account.keytab.clone(),
            stderr,
        }
    } else if stderr.contains("not found in Kerberos database") {
        KerberosError::PrincipalUnknown { principal, stderr }
    } else {
        KerberosError::Tool {
            tool: "kinit".into(),
            what: format!("for {principal}"),
            code: out.status.code().unwrap_or(-1),
            stderr,
        }
    }
}

/// The `KRB5CCNAME` value for a file cache at `ccache` (`FILE:<path>`), for the job's
/// environment.
pub fn krb5ccname(ccache: &Path) -> String {
    format!("FILE:{}", ccache.display())
}

/// The cache name kinit and kdestroy take for the file cache at `path`.
fn cache_name(path: &Path) -> OsString {
    let mut name = OsString::from("FILE:");
    name.push(path.as_os_str());
    name
}

/// A fresh name next to `ccache` (same directory, so the final rename is atomic).
fn temp_sibling(ccache: &Path) -> Result<PathBuf, KerberosError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = ccache.parent().ok_or_else(|| KerberosError::Cache {
        path: ccache.to_path_buf(),
        message: "has no parent directory".into(),
    })?;
    let base = ccache
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ccache".into());
    let nanos = Utc::now().timestamp_subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!(".{base}.{}.{n}.{nanos}.tmp", std::process::id())))
}

/// How a kinit for a job runs, beyond the account's own settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct KinitOptions<'a> {
    /// (uid, gid) the cache is handed to; None keeps root's.
    pub owner: Option<(u32, u32)>,
    /// The longest the ticket may live (the job's deadline plus margin; see
    /// [`requested_lifetime`]).
    pub max_life: Option<Duration>,
    /// `KRB5_CONFIG` instead of `kerberos.krb5_config`: the job's own krb5.conf of an account
    /// with its own realm ([`super::realm_conf::write_job_conf`]).
    pub krb5_config: Option<&'a Path>,
    /// Run kinit with `KRB5_TRACE` to learn which KDC answered ([`Obtained::kdc`]).
    pub trace: bool,
}

/// A ticket, and which KDC it came from when kinit was traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained {
    /// What the KDC granted, read back from the cache.
    pub ticket: Ticket,
    /// The KDC (`host:port`) that answered.
    pub kdc: Option<String>,
    /// KDCs asked before it that never answered (refused, mute), in order.
    pub unanswered: Vec<String>,
    /// DCs of the account's list that answered before it and rejected the key (or could not
    /// be reached when asked one by one), in order: key rotation not yet replicated everywhere.
    pub rejected: Vec<DcAnswer>,
}

/// Obtain a ticket for `account` from its keytab into the file cache `ccache`, with the
/// account's own lifetime ([`obtain_capped`] without a cap).
pub fn obtain(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Ticket, KerberosError> {
    obtain_capped(kcfg, account, ccache, owner, None)
}

/// Obtain a ticket for `account` from its keytab into the file cache `ccache`, living at most
/// `max_life` (the job's deadline plus margin; see [`requested_lifetime`]).
///
/// kinit writes a temporary cache next to `ccache`, which is then handed to `owner`
/// (uid, gid) with mode 0600 and renamed over `ccache`: a refresh never leaves the job without
/// a cache, and the job never sees a half-written or root-owned one. `ccache`'s directory must
/// be one the job cannot write (the root-owned credentials dir), so nothing there can be a
/// symlink planted by the job.
///
/// Unless the account opts in with `renewable_lifetime_secs`, the ticket is not renewable:
/// kinit without `-r` still asks for a renewable ticket when krb5.conf sets `renew_lifetime`,
/// so kinit runs with a small root-only profile next to the temporary cache put in front of
/// the configured one (`KRB5_CONFIG=<it>:<krb5.conf>`; MIT's first file wins) that sets
/// `renew_lifetime = 0`, globally and for the principal's realm. A renewable ticket that
/// comes back anyway is discarded ([`KerberosError::UnwantedRenewable`]).
pub fn obtain_capped(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    owner: Option<(u32, u32)>,
    max_life: Option<Duration>,
) -> Result<Ticket, KerberosError> {
    let opts = KinitOptions {
        owner,
        max_life,
        ..KinitOptions::default()
    };
    obtain_with(kcfg, account, ccache, &opts).map(|o| o.ticket)
}

/// [`obtain_capped`] with [`KinitOptions`]: an account with its own realm runs kinit with the
/// job's krb5.conf (`KRB5_CONFIG=<non-renewable profile>:<job's krb5.conf>`, the account's
/// `timeout_secs` as the bound), and a traced kinit reports which KDC answered.
///
/// MIT kinit moves on to the next DC only when one does not answer. A DC that answers and
/// rejects the key (the password was rotated and this DC has the new key but the keytab does
/// not, or the keytab was refreshed before this DC got the change) would end the grant, so for
/// an account with several DCs each DC after the one that rejected is asked on its own (a
/// krb5.conf naming only it) before the grant fails: the first that accepts wins, and the
/// rejections are kept in [`Obtained::rejected`]. When none accepts:
/// [`KerberosError::KeyRejected`] with every DC's answer.
pub fn obtain_with(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    opts: &KinitOptions<'_>,
) -> Result<Obtained, KerberosError> {
    let first = obtain_once(kcfg, account, ccache, opts);
    let (Err(KerberosError::KeyRejected { answers, .. }), Some(settings), Some(_)) =
        (&first, account.kerberos.as_ref(), opts.krb5_config)
    else {
        return first;
    };
    if settings.kdcs.len() < 2 {
        return first;
    }
    let mut answers = answers.clone();
    let rejecter = answers.first().map(|a| a.kdc.clone()).unwrap_or_default();
    let after = settings
        .kdcs
        .iter()
        .position(|dc| same_dc(dc, &rejecter))
        .map_or(0, |i| i + 1);
    let include = realm_conf::host_include(kcfg, settings);
    for dc in &settings.kdcs[after..] {
        if same_dc(dc, &rejecter) {
            continue;
        }
        let one = crate::config::AccountKerberos {
            kdcs: vec![dc.clone()],
            ..settings.clone()
        };
        let mut name = temp_sibling(ccache)?.into_os_string();
        name.push(".dc.krb5.conf");
        let conf = PathBuf::from(name);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&conf)
            .and_then(|mut f| {
                std::io::Write::write_all(
                    &mut f,
                    realm_conf::render(&one, include.as_deref()).as_bytes(),
                )
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&conf);
            return Err(io_err(format!("write {}", conf.display()))(e));
        }
        let one_opts = KinitOptions {
            krb5_config: Some(&conf),
            trace: true,
            ..*opts
        };
        let result = obtain_once(kcfg, account, ccache, &one_opts);
        let _ = fs::remove_file(&conf);
        match result {
            Ok(mut obtained) => {
                tracing::warn!(
                    principal = %account.principal,
                    "DC(s) {} rejected the keytab's key; {dc} accepted it: the account's key was probably rotated and not yet replicated everywhere",
                    answers.iter().map(|a| a.kdc.as_str()).collect::<Vec<_>>().join(", ")
                );
                obtained.rejected = answers;
                return Ok(obtained);
            }
            Err(KerberosError::KeyRejected { answers: more, .. }) => answers.extend(more),
            Err(e @ (KerberosError::KdcUnreachable { .. } | KerberosError::Timeout { .. })) => {
                answers.push(DcAnswer {
                    kdc: dc.clone(),
                    reason: e.reason(),
                    answer: e
                        .to_string()
                        .split("\n  fix: ")
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Err(KerberosError::KeyRejected {
        principal: account.principal.clone(),
        keytab: account.keytab.clone(),
        kvnos: keytab_kvnos(&account.keytab, &account.principal),
        answers,
    })
}

/// Whether the configured DC `configured` (`host`, `host:port`, `[v6]:port`) is the address
/// `traced` (`ip:port`, as kinit's trace prints it). Port 88 when none is given; names are
/// resolved.
fn same_dc(configured: &str, traced: &str) -> bool {
    use std::net::ToSocketAddrs;
    if configured == traced || format!("{configured}:88") == traced {
        return true;
    }
    let with_port = if configured.starts_with('[') {
        if configured.contains("]:") {
            configured.to_string()
        } else {
            format!("{configured}:88")
        }
    } else if configured.matches(':').count() == 1 {
        configured.to_string()
    } else {
        format!("{configured}:88")
    };
    with_port
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| a.to_string() == traced))
        .unwrap_or(false)
}

/// One kinit (MIT's own failover over the DCs of the krb5.conf it reads).
fn obtain_once(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    opts: &KinitOptions<'_>,
) -> Result<Obtained, KerberosError> {
    let own_timeout;
    let kcfg = match account.kerberos.as_ref().and_then(|k| k.timeout_secs) {
        Some(timeout_secs) => {
            own_timeout = KerberosConfig {
                timeout_secs,
                ..kcfg.clone()
            };
            &own_timeout
        }
        None => kcfg,
    };
    let tmp = temp_sibling(ccache)?;
    let no_renew = (account.renewable_lifetime_secs == 0).then(|| {
        let mut name = tmp.clone().into_os_string();
        name.push(".krb5.conf");
        PathBuf::from(name)
    });
    let lifetime = requested_lifetime(account.ticket_lifetime_secs, opts.max_life);
    let result = obtain_into(
        kcfg,
        account,
        ccache,
        &tmp,
        no_renew.as_deref(),
        lifetime,
        opts,
    );
    if let Some(conf) = &no_renew {
        let _ = fs::remove_file(conf);
    }
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The ticket lifetime to ask kinit for, in seconds: the account's `ticket_lifetime_secs`
/// (0: krb5.conf's default) capped by `max_life`, never below 1 s (kinit reads 0 as "no
/// lifetime given"). None: no `-l`, krb5.conf decides.
pub fn requested_lifetime(account_secs: u64, max_life: Option<Duration>) -> Option<u64> {
    let cap = max_life.map(|d| d.as_secs().max(1));
    match (account_secs, cap) {
        (0, cap) => cap,
        (secs, None) => Some(secs),
        (secs, Some(cap)) => Some(secs.min(cap)),
    }
}

/// The profile that makes kinit ask for a non-renewable ticket: `renew_lifetime = 0` in
/// `[libdefaults]` and, when the principal names its realm, in that realm's subsection (which
/// MIT consults before the global relation). A realm that is not a plain profile word is left
/// out: the read-back check still refuses a renewable ticket.
fn no_renew_profile(principal: &str) -> String {
    let mut text = String::from(
        "# Written by p3-executor for one kinit: this account's tickets are not renewable.\n[libdefaults]\n renew_lifetime = 0\n",
    );
    if let Some((_, realm)) = principal.rsplit_once('@')
        && !realm.is_empty()
        && realm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        text.push_str(&format!(" {realm} = {{\n  renew_lifetime = 0\n }}\n"));
    }
    text
}

/// The profile kinit reads without the non-renewable one: the job's krb5.conf of an account
/// with its own realm, else `kerberos.krb5_config`, else what the executor inherited.
fn base_krb5_config(kcfg: &KerberosConfig, job_conf: Option<&Path>) -> OsString {
    match job_conf.or(kcfg.krb5_config.as_deref()) {
        Some(conf) => conf.as_os_str().to_os_string(),
        None => std::env::var_os(env::KRB5_CONFIG).unwrap_or_else(|| "/etc/krb5.conf".into()),
    }
}

/// `KRB5_CONFIG` for a kinit that must not ask for a renewable ticket: `first` (written here,
/// root-only, created exclusively) in front of `base`, the profile kinit would otherwise read.
fn no_renew_krb5_config(
    base: OsString,
    account: &Account,
    first: &Path,
) -> Result<OsString, KerberosError> {
    if first.as_os_str().as_encoded_bytes().contains(&b':') {
        return Err(KerberosError::Io {
            context: format!("profile {}", first.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a path in KRB5_CONFIG cannot contain ':'",
            ),
        });
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(first)
        .map_err(io_err(format!("create {}", first.display())))?;
    std::io::Write::write_all(&mut file, no_renew_profile(&account.principal).as_bytes())
        .map_err(io_err(format!("write {}", first.display())))?;
    let mut list = first.as_os_str().to_os_string();
    list.push(":");
    list.push(base);
    Ok(list)
}

/// kinit into `tmp`, read the ticket back, hand it to the owner and rename it over `ccache`.
fn obtain_into(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    tmp: &Path,
    no_renew: Option<&Path>,
    lifetime: Option<u64>,
    opts: &KinitOptions<'_>,
) -> Result<Obtained, KerberosError> {
    let mut args: Vec<OsString> = vec!["-kt".into(), account.keytab.clone().into()];
    if let Some(secs) = lifetime {
        args.extend(["-l".into(), format!("{secs}s").into()]);
    }
    if account.renewable_lifetime_secs > 0 {
        args.extend([
            "-r".into(),
            format!("{}s", account.renewable_lifetime_secs).into(),
        ]);
    }
    args.extend([
        "-c".into(),
        cache_name(tmp),
        account.principal.clone().into(),
    ]);
    let base = base_krb5_config(kcfg, opts.krb5_config);
    let mut envs = Vec::new();
    match no_renew {
        Some(first) => envs.push((
            env::KRB5_CONFIG,
            no_renew_krb5_config(base.clone(), account, first)?,
        )),
        None if opts.krb5_config.is_some() => envs.push((env::KRB5_CONFIG, base.clone())),
        None => {}
    }
    if opts.trace {
        envs.push(("KRB5_TRACE", "/dev/stderr".into()));
    }
    let out = run_tool_with(
        kcfg,
        &kcfg.kinit,
        "kinit",
        args,
        &format!("for {}", account.principal),
        envs,
    )?;
    if !out.status.success() {
        let answered = if opts.trace {
            parse_kdc_trace(&String::from_utf8_lossy(&out.stderr)).answered
        } else {
            None
        };
        return Err(kinit_error(
            account,
            base.to_string_lossy().into_owned(),
            &out,
            answered,
        ));
    }
    let trace = if opts.trace {
        parse_kdc_trace(&String::from_utf8_lossy(&out.stderr))
    } else {
        Default::default()
    };
    // Read back what the KDC actually granted (it may cap lifetimes) before the job can touch it.
    let ticket = read_ticket(tmp)?;
    if no_renew.is_some() && ticket.renew_until.is_some() {
        return Err(KerberosError::UnwantedRenewable {
            principal: account.principal.clone(),
        });
    }
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", tmp.display())))?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::lchown(tmp, Some(uid), Some(gid))
            .map_err(io_err(format!("chown {} to {uid}:{gid}", tmp.display())))?;
    }
    fs::rename(tmp, ccache).map_err(io_err(format!(
        "rename {} to {}",
        tmp.display(),
        ccache.display()
    )))?;
    tracing::debug!(
        principal = %ticket.principal,
        expires = %ticket.expires,
        cache = %ccache.display(),
        kdc = trace.answered.as_deref().unwrap_or("-"),
        "obtained Kerberos ticket"
    );
    Ok(Obtained {
        ticket,
        kdc: trace.answered,
        unanswered: trace.unanswered,
        rejected: Vec::new(),
    })
}

/// If the ticket in `ccache` has less than `threshold` of life left at `now` (or the cache is
/// missing, unreadable, or holds another principal's ticket), obtain a fresh one from the
/// keytab, living at most `max_life` (see [`obtain_capped`]). Returns the new ticket, or None
/// when the current one is good enough.
///
/// A fresh kinit from the keytab is used instead of `kinit -R`: renewing would make root
/// parse and rewrite a cache the job can write, and a keytab kinit costs the same one KDC
/// round trip.
pub fn refresh_if_needed(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    owner: Option<(u32, u32)>,
    threshold: Duration,
    now: DateTime<Utc>,
    max_life: Option<Duration>,
) -> Result<Option<Ticket>, KerberosError> {
    let opts = KinitOptions {
        owner,
        max_life,
        ..KinitOptions::default()
    };
    refresh_with(kcfg, account, ccache, threshold, now, &opts).map(|o| o.map(|o| o.ticket))
}

/// [`refresh_if_needed`] with [`KinitOptions`] (an account's own realm: the job's krb5.conf).
pub fn refresh_with(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    threshold: Duration,
    now: DateTime<Utc>,
    opts: &KinitOptions<'_>,
) -> Result<Option<Obtained>, KerberosError> {
    match read_ticket(ccache) {
        Ok(t)
            if principal_matches(&t.principal, &account.principal)
                && t.remaining(now) >= threshold =>
        {
            return Ok(None);
        }
        Ok(t) => tracing::info!(
            principal = %t.principal,
            expires = %t.expires,
            "ticket close to expiry: obtaining a fresh one"
        ),
        Err(e) => tracing::info!("no usable ticket in the cache ({e}): obtaining a fresh one"),
    }
    obtain_with(kcfg, account, ccache, opts).map(Some)
}

/// Destroy the cache at `ccache` (`kdestroy`, which overwrites it) and remove the file.
///
/// Idempotent: a missing cache is success. If kdestroy is missing or fails, the file is
/// overwritten with zeros and removed here, so the credential is gone either way; only a file
/// that cannot be removed is an error.
pub fn destroy(kcfg: &KerberosConfig, ccache: &Path) -> Result<(), KerberosError> {
    match fs::symlink_metadata(ccache) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("stat {}", ccache.display()))(e)),
        Ok(_) => {}
    }
    let cache = cache_name(ccache);
    match run_tool(
        kcfg,
        &kcfg.kdestroy,
        "kdestroy",
        vec!["-c".into(), cache],
        &format!("on {}", ccache.display()),
    ) {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            "kdestroy on {} failed: {}; removing the cache directly",
            ccache.display(),
            out.stderr_text()
        ),
        Err(e) => tracing::warn!("{e}; removing the cache directly"),
    }
    if let Ok(meta) = fs::symlink_metadata(ccache) {
        if meta.is_file() {
            // Best effort: zero the keys before unlinking, as kdestroy would have.
            if let Ok(mut f) = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(ccache)
            {
                use std::io::Write;
                let _ = f.write_all(&vec![0u8; meta.len().min(1 << 20) as usize]);
                let _ = f.sync_data();
            }
        }
    }
    match fs::remove_file(ccache) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", ccache.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_lifetime_is_the_account_lifetime_capped_by_the_job() {
        let cap = |s: u64| Some(Duration::from_secs(s));
        // (account ticket_lifetime_secs, cap) → -l
        let table: [(u64, Option<Duration>, Option<u64>); 7] = [
            (36000, None, Some(36000)),
            (36000, cap(1500), Some(1500)),
            (600, cap(1500), Some(600)),
            (0, None, None),
            (0, cap(1500), Some(1500)),
            (36000, cap(0), Some(1)),
            (36000, Some(Duration::from_millis(1_500_999)), Some(1500)),
        ];
        for (account, max_life, want) in table {
            assert_eq!(
                requested_lifetime(account, max_life),
                want,
                "{account} {max_life:?}"
            );
        }
    }

    #[test]
    fn no_renew_profile_covers_the_principals_realm() {
        let p = no_renew_profile("svc@P3.TEST");
        assert!(
            p.contains(
                "[libdefaults]\n renew_lifetime = 0\n P3.TEST = {\n  renew_lifetime = 0\n }\n"
            ),
            "{p}"
        );
        assert!(!no_renew_profile("svc").contains('{'));
        // A realm that is not a plain profile word is left to the read-back check.
        assert!(!no_renew_profile("svc@EVIL}\n[x]").contains("EVIL"));
    }
}
