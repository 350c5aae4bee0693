//! Kerberos tickets from host-side keytabs: obtain, refresh, destroy, and host checks.
//!
//! The keytab never leaves the host and is never read by this module except to fingerprint it:
//! `kinit -kt` reads it as the executor (root). The job receives only a file ticket cache inside
//! its root-owned credentials dir (`<state_root>/creds/<job_id>/`), owned by the job's uid with
//! mode 0600.
//!
//! Every kinit/klist/kdestroy call goes through [`run_bounded`]: MIT kinit waits about 27 s on
//! a KDC that accepts connections but never answers, and has no timeout setting of its own.
//!
//! A job's ticket lives at most until the job's deadline plus a margin ([`obtain_capped`],
//! [`requested_lifetime`]) and is not renewable unless the account opts in, so a copy taken
//! out of the job is worth little once the job is over.
//!
//! The ticket's lifetime is read back by parsing the ccache file (MIT FILE format v3/v4) rather
//! than `klist` output, whose dates are locale-formatted with two-digit years.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::check::{Finding, Severity};
use crate::command::{CommandError, Output, run_bounded};
use crate::config::{Account, Config, KerberosConfig};

/// A ticket-granting ticket as it sits in a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Client principal (`svc_client_uat@EXAMPLE.COM`).
    pub principal: String,
    /// End of the ticket's life.
    pub expires: DateTime<Utc>,
    /// End of its renewable life, when the ticket is renewable.
    pub renew_until: Option<DateTime<Utc>>,
}

impl Ticket {
    /// Life left at `now` (zero when expired).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        (self.expires - now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// Why a Kerberos operation failed. Every variant is a host-side (system) failure: the job
/// cannot cause any of them. Messages carry the tool's own stderr verbatim and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum KerberosError {
    /// kinit, klist or kdestroy is not installed (or the configured path does not exist).
    #[error(
        "{tool} not found ({detail}): install it (apt-get install krb5-user) or set kerberos.{key} to an absolute path"
    )]
    ToolMissing {
        /// The configured command.
        tool: String,
        /// Config key naming it (`kinit`, `klist`, `kdestroy`).
        key: &'static str,
        /// Why the lookup failed.
        detail: String,
    },
    /// No KDC of the realm answered (refused, unresolvable, down).
    #[error(
        "kinit for {principal} failed: {stderr}\n  fix: check that the realm's KDC is running and reachable from this host (kdc entries in {krb5_config})"
    )]
    KdcUnreachable {
        /// Principal asked for.
        principal: String,
        /// kinit's stderr, verbatim.
        stderr: String,
        /// The krb5.conf in effect.
        krb5_config: String,
    },
    /// The keytab is missing, holds no key for the principal, or holds a stale key.
    #[error(
        "kinit for {principal} with keytab {keytab} failed: {stderr}\n  fix: the keytab must hold the principal's current key: compare `klist -kt {keytab}` with the account's principal, and re-export it (kadmin: ktadd -norandkey) if the key was rotated; then run `p3-executor check`"
    )]
    WrongKeytab {
        /// Principal asked for.
        principal: String,
        /// Keytab used.
        keytab: PathBuf,
        /// kinit's stderr, verbatim.
        stderr: String,
    },
    /// The KDC does not know the principal.
    #[error(
        "kinit for {principal} failed: {stderr}\n  fix: the principal does not exist in the KDC's database: correct accounts.<name>.principal or ask the KDC admins to create it"
    )]
    PrincipalUnknown {
        /// Principal asked for.
        principal: String,
        /// kinit's stderr, verbatim.
        stderr: String,
    },
    /// A tool ran past `kerberos.timeout_secs` and was killed.
    #[error(
        "{tool} {what} did not finish within {secs} s and was killed\n  fix: a KDC that accepts connections but never answers causes this: check the KDC's health and the network path; raise kerberos.timeout_secs only if the KDC is merely slow"
    )]
    Timeout {
        /// The tool.
        tool: String,
        /// What it was doing (`for <principal>`, `on <cache>`).
        what: String,
        /// The bound.
        secs: u64,
    },
    /// Any other kinit/klist/kdestroy failure.
    #[error("{tool} {what} failed (exit {code}): {stderr}")]
    Tool {
        /// The tool.
        tool: String,
        /// What it was doing.
        what: String,
        /// Its exit code (-1 when killed by a signal).
        code: i32,
        /// Its stderr, verbatim.
        stderr: String,
    },
    /// A ticket cache could not be read or understood.
    #[error("ticket cache {path}: {message}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The KDC issued a renewable ticket for an account that must not get one
    /// (`renewable_lifetime_secs = 0`); the ticket was discarded.
    #[error(
        "kinit for {principal} returned a renewable ticket although the account's renewable_lifetime_secs is 0, so it was discarded\n  fix: krb5.conf sets renew_lifetime for a realm the executor cannot override: write the realm into accounts.<name>.principal ({principal}@REALM), or opt in with renewable_lifetime_secs"
    )]
    UnwantedRenewable {
        /// Principal asked for.
        principal: String,
    },
    /// A file operation on a cache failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<KerberosError> for crate::error::Error {
    /// Kerberos failures are always the host's fault: a system failure, so the runner retries.
    fn from(e: KerberosError) -> Self {
        crate::error::Error::Credentials(e.to_string())
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KerberosError {
    let context = context.into();
    move |source| KerberosError::Io { context, source }
}

/// Resolve a configured tool: an absolute path is used as is, a bare name is looked up on PATH.
fn resolve_tool(configured: &str, key: &'static str) -> Result<PathBuf, KerberosError> {
    let missing = |detail: String| KerberosError::ToolMissing {
        tool: configured.to_string(),
        key,
        detail,
    };
    if configured.contains('/') {
        let path = PathBuf::from(configured);
        if !path.is_absolute() {
            return Err(missing("a path must be absolute".into()));
        }
        if !path.is_file() {
            return Err(missing(format!("{} does not exist", path.display())));
        }
        return Ok(path);
    }
    which::which(configured).map_err(|e| missing(format!("not on PATH: {e}")))
}

/// A command for a Kerberos tool with a controlled environment.
fn tool_command(kcfg: &KerberosConfig, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    // English messages: error classification and the docs quote them.
    cmd.env("LC_ALL", "C");
    // Never let an inherited cache, client keytab or trace setting redirect what we do.
    for var in [
        "KRB5CCNAME",
        "KRB5_CLIENT_KTNAME",
        "KRB5_KTNAME",
        "KRB5_TRACE",
    ] {
        cmd.env_remove(var);
    }
    if let Some(conf) = &kcfg.krb5_config {
        cmd.env("KRB5_CONFIG", conf);
    }
    cmd
}

fn timeout(kcfg: &KerberosConfig) -> Duration {
    Duration::from_secs(kcfg.timeout_secs.max(1))
}

/// Run a tool bounded by the configured timeout, mapping spawn failures and timeouts.
fn run_tool(
    kcfg: &KerberosConfig,
    configured: &str,
    key: &'static str,
    args: Vec<OsString>,
    what: &str,
) -> Result<Output, KerberosError> {
    run_tool_with(kcfg, configured, key, args, what, None)
}

/// [`run_tool`], with `KRB5_CONFIG` replaced by `krb5_config` when given.
fn run_tool_with(
    kcfg: &KerberosConfig,
    configured: &str,
    key: &'static str,
    args: Vec<OsString>,
    what: &str,
    krb5_config: Option<OsString>,
) -> Result<Output, KerberosError> {
    let program = resolve_tool(configured, key)?;
    let mut cmd = tool_command(kcfg, &program);
    if let Some(conf) = krb5_config {
        cmd.env("KRB5_CONFIG", conf);
    }
    cmd.args(args);
    run_bounded(cmd, timeout(kcfg)).map_err(|e| match e {
        CommandError::Timeout { .. } => KerberosError::Timeout {
            tool: key.to_string(),
            what: what.to_string(),
            secs: kcfg.timeout_secs.max(1),
        },
        CommandError::Spawn { source, .. } => KerberosError::ToolMissing {
            tool: configured.to_string(),
            key,
            detail: source.to_string(),
        },
    })
}

/// Classify a failed kinit by its (precise, stable) stderr text.
fn kinit_error(account: &Account, kcfg: &KerberosConfig, out: &Output) -> KerberosError {
    let stderr = out.stderr_text();
    let principal = account.principal.clone();
    if stderr.contains("Cannot contact any KDC")
        || stderr.contains("Cannot find KDC")
        || stderr.contains("Cannot resolve network address")
    {
        KerberosError::KdcUnreachable {
            principal,
            stderr,
            krb5_config: kcfg
                .krb5_config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/etc/krb5.conf".into()),
        }
    } else if stderr.contains("Keytab contains no suitable keys")
        || stderr.contains("Key table file")
        || stderr.contains("Password incorrect")
        || stderr.contains("Preauthentication failed")
        || stderr.contains("Key version number for principal in key table is incorrect")
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
    let tmp = temp_sibling(ccache)?;
    let no_renew = (account.renewable_lifetime_secs == 0).then(|| {
        let mut name = tmp.clone().into_os_string();
        name.push(".krb5.conf");
        PathBuf::from(name)
    });
    let lifetime = requested_lifetime(account.ticket_lifetime_secs, max_life);
    let result = obtain_into(
        kcfg,
        account,
        ccache,
        &tmp,
        no_renew.as_deref(),
        lifetime,
        owner,
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

/// `KRB5_CONFIG` for a kinit that must not ask for a renewable ticket: `first` (written here,
/// root-only, created exclusively) in front of the profile kinit would otherwise read.
fn no_renew_krb5_config(
    kcfg: &KerberosConfig,
    account: &Account,
    first: &Path,
) -> Result<OsString, KerberosError> {
    let base: OsString = match &kcfg.krb5_config {
        Some(conf) => conf.clone().into_os_string(),
        None => std::env::var_os("KRB5_CONFIG").unwrap_or_else(|| "/etc/krb5.conf".into()),
    };
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

fn obtain_into(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    tmp: &Path,
    no_renew: Option<&Path>,
    lifetime: Option<u64>,
    owner: Option<(u32, u32)>,
) -> Result<Ticket, KerberosError> {
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
    let krb5_config = match no_renew {
        Some(first) => Some(no_renew_krb5_config(kcfg, account, first)?),
        None => None,
    };
    let out = run_tool_with(
        kcfg,
        &kcfg.kinit,
        "kinit",
        args,
        &format!("for {}", account.principal),
        krb5_config,
    )?;
    if !out.status.success() {
        return Err(kinit_error(account, kcfg, &out));
    }
    // Read back what the KDC actually granted (it may cap lifetimes) before the job can touch it.
    let ticket = read_ticket(tmp)?;
    if no_renew.is_some() && ticket.renew_until.is_some() {
        return Err(KerberosError::UnwantedRenewable {
            principal: account.principal.clone(),
        });
    }
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", tmp.display())))?;
    if let Some((uid, gid)) = owner {
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
        "obtained Kerberos ticket"
    );
    Ok(ticket)
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
    obtain_capped(kcfg, account, ccache, owner, max_life).map(Some)
}

/// `svc@REALM` matches `svc@REALM`; a configured principal without a realm matches any realm
/// (kinit appended the default one).
fn principal_matches(actual: &str, configured: &str) -> bool {
    if configured.contains('@') {
        actual == configured
    } else {
        actual.split('@').next() == Some(configured)
    }
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

/// SHA-256 (hex) of a keytab file, for the audit log: identifies which key material granted a
/// ticket without revealing it.
pub fn keytab_fingerprint(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The distinct principals a keytab holds keys for (`klist -k`), in file order.
pub fn keytab_principals(
    kcfg: &KerberosConfig,
    keytab: &Path,
) -> Result<Vec<String>, KerberosError> {
    let mut name = OsString::from("FILE:");
    name.push(keytab.as_os_str());
    let what = format!("-k {}", keytab.display());
    let out = run_tool(kcfg, &kcfg.klist, "klist", vec!["-k".into(), name], &what)?;
    if !out.status.success() {
        return Err(KerberosError::Tool {
            tool: "klist".into(),
            what,
            code: out.status.code().unwrap_or(-1),
            stderr: out.stderr_text(),
        });
    }
    Ok(parse_klist_keytab(&String::from_utf8_lossy(&out.stdout)))
}

/// Parse `klist -k` output: after the dashed header line, each line is `KVNO PRINCIPAL`.
fn parse_klist_keytab(text: &str) -> Vec<String> {
    let mut principals: Vec<String> = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("----"))
        .skip(1)
    {
        let line = line.trim();
        let Some((kvno, principal)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if kvno.parse::<u32>().is_err() {
            continue;
        }
        let principal = principal.trim().to_string();
        if !principal.is_empty() && !principals.contains(&principal) {
            principals.push(principal);
        }
    }
    principals
}

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

// ---------------------------------------------------------------------------------------------
// Ticket cache parsing (MIT FILE ccache, versions 3 and 4, big-endian).

/// Largest cache we are willing to parse: real ones are a few KiB, and a job can write its own
/// cache, so the executor must not read an arbitrarily large file as root.
const MAX_CCACHE: u64 = 1 << 20;
/// `TKT_FLG_RENEWABLE` in the ccache's ticket_flags.
const TKT_FLG_RENEWABLE: u32 = 0x0080_0000;

/// Read the TGT's principal and lifetimes from a FILE ccache.
pub fn read_ticket(ccache: &Path) -> Result<Ticket, KerberosError> {
    let bad = |message: String| KerberosError::Cache {
        path: ccache.to_path_buf(),
        message,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(ccache)
        .map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_CCACHE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CCACHE {
        return Err(bad("larger than 1 MiB: not a ticket cache".into()));
    }
    parse_ccache(&bytes).map_err(bad)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn data(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn principal(&mut self) -> Result<(String, String), String> {
        let _name_type = self.u32()?;
        let count = self.u32()?;
        if count > 64 {
            return Err(format!("implausible principal with {count} components"));
        }
        let realm = String::from_utf8_lossy(self.data()?).into_owned();
        let mut parts = Vec::new();
        for _ in 0..count {
            parts.push(String::from_utf8_lossy(self.data()?).into_owned());
        }
        Ok((parts.join("/"), realm))
    }
}

fn parse_ccache(bytes: &[u8]) -> Result<Ticket, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.u16()?;
    match version {
        0x0504 => {
            let header_len = r.u16()? as usize;
            r.take(header_len)?;
        }
        0x0503 => {}
        v => return Err(format!("unsupported ccache format 0x{v:04x}")),
    }
    let (name, realm) = r.principal()?;
    let client = format!("{name}@{realm}");
    let tgt = format!("krbtgt/{realm}@{realm}");
    let mut first: Option<Ticket> = None;
    while r.pos < bytes.len() {
        let _client = r.principal()?;
        let (sname, srealm) = r.principal()?;
        let _keytype = r.u16()?;
        if version == 0x0503 {
            let _etype = r.u16()?;
        }
        r.data()?; // session key: skipped, never kept
        let _authtime = r.u32()?;
        let _starttime = r.u32()?;
        let endtime = r.u32()?;
        let renew_till = r.u32()?;
        let _is_skey = r.u8()?;
        let flags = r.u32()?;
        let naddr = r.u32()?;
        for _ in 0..naddr {
            r.u16()?;
            r.data()?;
        }
        let nauth = r.u32()?;
        for _ in 0..nauth {
            r.u16()?;
            r.data()?;
        }
        r.data()?; // ticket
        r.data()?; // second ticket
        // Config entries (realm X-CACHECONF:) carry cache metadata, not tickets.
        if srealm == "X-CACHECONF:" {
            continue;
        }
        let to_time = |t: u32| DateTime::<Utc>::from_timestamp(i64::from(t), 0);
        let ticket = Ticket {
            principal: client.clone(),
            expires: to_time(endtime).ok_or("invalid end time")?,
            renew_until: (flags & TKT_FLG_RENEWABLE != 0 && renew_till != 0)
                .then(|| to_time(renew_till))
                .flatten(),
        };
        if format!("{sname}@{srealm}") == tgt {
            return Ok(ticket);
        }
        first.get_or_insert(ticket);
    }
    first.ok_or_else(|| "holds no ticket".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klist_keytab_output_is_parsed_and_deduplicated() {
        let text = "Keytab name: FILE:/tmp/x.keytab\nKVNO Principal\n---- ---------------------\n   2 svc@TEST.REALM\n   2 svc@TEST.REALM\n   3 host/a.example@TEST.REALM\n";
        assert_eq!(
            parse_klist_keytab(text),
            vec!["svc@TEST.REALM", "host/a.example@TEST.REALM"]
        );
        assert!(parse_klist_keytab("Keytab name: FILE:/x\nKVNO Principal\n---- ----\n").is_empty());
    }

    fn put_data(out: &mut Vec<u8>, d: &[u8]) {
        out.extend((d.len() as u32).to_be_bytes());
        out.extend(d);
    }

    fn put_principal(out: &mut Vec<u8>, realm: &str, parts: &[&str]) {
        out.extend(1u32.to_be_bytes());
        out.extend((parts.len() as u32).to_be_bytes());
        put_data(out, realm.as_bytes());
        for p in parts {
            put_data(out, p.as_bytes());
        }
    }

    fn put_cred(
        out: &mut Vec<u8>,
        srealm: &str,
        sparts: &[&str],
        end: u32,
        renew: u32,
        flags: u32,
    ) {
        put_principal(out, "R.TEST", &["svc"]);
        put_principal(out, srealm, sparts);
        out.extend(18u16.to_be_bytes());
        put_data(out, &[7; 32]);
        for t in [100u32, 100, end, renew] {
            out.extend(t.to_be_bytes());
        }
        out.push(0);
        out.extend(flags.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        put_data(out, b"ticket");
        put_data(out, b"");
    }

    fn v4_cache() -> Vec<u8> {
        let mut c = vec![0x05, 0x04, 0x00, 0x0c];
        c.extend([0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        put_principal(&mut c, "R.TEST", &["svc"]);
        put_cred(
            &mut c,
            "X-CACHECONF:",
            &["krb5_ccache_conf_data", "pa_type"],
            0,
            0,
            0,
        );
        put_cred(
            &mut c,
            "R.TEST",
            &["krbtgt", "R.TEST"],
            2_000_000_000,
            2_000_086_400,
            TKT_FLG_RENEWABLE,
        );
        c
    }

    #[test]
    fn ccache_tgt_is_found_past_config_entries() {
        let t = parse_ccache(&v4_cache()).unwrap();
        assert_eq!(t.principal, "svc@R.TEST");
        assert_eq!(t.expires.timestamp(), 2_000_000_000);
        assert_eq!(t.renew_until.unwrap().timestamp(), 2_000_086_400);
    }

    #[test]
    fn truncated_or_foreign_caches_are_errors_not_panics() {
        let c = v4_cache();
        for cut in [0, 1, 5, 20, c.len() - 1] {
            assert!(parse_ccache(&c[..cut]).is_err(), "cut at {cut}");
        }
        assert!(
            parse_ccache(b"\x05\x01rest")
                .unwrap_err()
                .contains("unsupported")
        );
        // A length field pointing far past the end must not allocate or panic.
        let mut huge = vec![0x05, 0x03];
        huge.extend([0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(parse_ccache(&huge).is_err());
    }

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

    #[test]
    fn principal_without_realm_matches_any_realm() {
        assert!(principal_matches("svc@R", "svc@R"));
        assert!(principal_matches("svc@R", "svc"));
        assert!(!principal_matches("svc@R", "svc@OTHER"));
        assert!(!principal_matches("svc2@R", "svc"));
    }
}
