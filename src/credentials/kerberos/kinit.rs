//! One kinit for a job: from the account's keytab into a temporary cache next to the job's,
//! lifetime capped by the job, not renewable unless the account opts in (a root-only profile
//! put in front of krb5.conf), read back, handed to the job's uid and renamed into place; a
//! failure classified by kinit's stderr.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use nix::fcntl::OFlag;
use p3_contract::env;
use sha2::{Digest, Sha256};

use super::ccache::{Ticket, read_ticket};
use super::error::{DcAnswer, KerberosError, io_err};
use super::keytab::keytab_kvnos;
use super::preauth::{self, Memory};
use super::tool::{KRB5_TRACE, KdcTrace, parse_kdc_trace, run_tool_with, without_trace};
use crate::atomic_file;
use crate::command::Output;
use crate::config::{Account, KerberosConfig, Spake};

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

/// The cache name kinit and kdestroy take for the file cache at `path`.
pub(super) fn cache_name(path: &Path) -> OsString {
    let mut name = OsString::from("FILE:");
    name.push(path.as_os_str());
    name
}

/// A fresh name next to `ccache` (same directory, so the final rename is atomic).
pub(super) fn temp_sibling(ccache: &Path) -> Result<PathBuf, KerberosError> {
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
    /// Where kinit's root-only files outlive a job ([`super::kinit_dir`]): the profiles put in
    /// front of krb5.conf, and what KDCs offered its principals (`kerberos.spake = "auto"`,
    /// [`super::preauth`]). None: each kinit writes its profile next to the cache and removes
    /// it, nothing is learned and every kinit loads the SPAKE module.
    pub kinit_dir: Option<&'a Path>,
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

/// One kinit (MIT's own failover over the DCs of the krb5.conf it reads). With
/// `kerberos.spake = "auto"` and a memory to learn in, the kinit is traced, loads the SPAKE
/// module only when the KDC may offer it, and runs once more with it when the KDC turns out to
/// offer it to a kinit that failed without it ([`super::preauth`]).
pub(super) fn obtain_once(
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
    let memory = opts.kinit_dir.and_then(|dir| memory(kcfg, account, dir));
    let mut skip_spake = memory.as_ref().is_some_and(Memory::spake_unoffered);
    loop {
        let how = How {
            no_renew: account.renewable_lifetime_secs == 0,
            skip_spake,
            traced: opts.trace || memory.is_some(),
        };
        let (result, offered) = attempt(kcfg, account, ccache, how, opts);
        // `skip_spake` is what is remembered (the record, read once above): learn only what
        // differs from it, from a success or from an offer.
        if let (Some(memory), Some(offered)) = (&memory, offered)
            && offered == skip_spake
            && (result.is_ok() || offered)
        {
            memory.learn(offered);
        }
        if skip_spake && result.is_err() && offered == Some(true) {
            skip_spake = false;
            continue;
        }
        return result;
    }
}

/// What the executor remembers about the KDC of `account` in `kinit_dir`; None when
/// `kerberos.spake = "always"` (nothing is learned).
fn memory(kcfg: &KerberosConfig, account: &Account, kinit_dir: &Path) -> Option<Memory> {
    if kcfg.spake != Spake::Auto {
        return None;
    }
    // Where the account's KDCs come from: its own realm, or the krb5.conf kinit reads.
    let realm_conf = match &account.kerberos {
        Some(own) => OsString::from(&own.realm),
        None => base_krb5_config(kcfg, None),
    };
    Some(Memory::new(
        kinit_dir,
        &account.principal,
        &realm_conf.to_string_lossy(),
    ))
}

/// Since when `account`'s kinits leave the SPAKE module out (its KDC was last seen not
/// offering SPAKE then), for `check`; None when they load it.
pub fn spake_left_out(
    kcfg: &KerberosConfig,
    account: &Account,
    kinit_dir: &Path,
) -> Option<std::time::SystemTime> {
    memory(kcfg, account, kinit_dir)?.learned_at()
}

/// How one kinit runs.
#[derive(Debug, Clone, Copy)]
struct How {
    /// Ask for a ticket that is not renewable (the account did not opt in).
    no_renew: bool,
    /// Leave the SPAKE client module out.
    skip_spake: bool,
    /// Run with `KRB5_TRACE`.
    traced: bool,
}

/// One kinit into a fresh temporary cache (with its profile when `how` needs one), its
/// temporary files removed; and whether the KDC offered SPAKE (traced kinits only).
fn attempt(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    how: How,
    opts: &KinitOptions<'_>,
) -> (Result<Obtained, KerberosError>, Option<bool>) {
    let tmp = match temp_sibling(ccache) {
        Ok(tmp) => tmp,
        Err(e) => return (Err(e), None),
    };
    let profile = match (how.no_renew || how.skip_spake)
        .then(|| kinit_profile(&account.principal, how.no_renew, how.skip_spake))
        .map(|text| write_profile(opts.kinit_dir, &tmp, &text))
        .transpose()
    {
        Ok(profile) => profile,
        Err(e) => return (Err(e), None),
    };
    let lifetime = requested_lifetime(account.ticket_lifetime_secs, opts.max_life);
    let (result, offered) = obtain_into(
        kcfg,
        account,
        ccache,
        &tmp,
        profile.as_ref().map(|p| p.path.as_path()),
        how,
        lifetime,
        opts,
    );
    if let Some(Profile { path, kept: false }) = &profile {
        remove_temp(path);
    }
    if result.is_err() {
        remove_temp(&tmp);
    }
    (result, offered)
}

/// The profile a kinit reads in front of krb5.conf.
struct Profile {
    path: PathBuf,
    /// Kept for later kinits (else removed after this one).
    kept: bool,
}

/// Put `text` where kinit can read it, root-only: in `kinit_dir` under a name from its
/// contents, written by the first kinit that needs it and read by every later one (a job's
/// kinit then creates and removes no file for it), else next to the temporary cache `tmp`,
/// for this kinit only.
fn write_profile(
    kinit_dir: Option<&Path>,
    tmp: &Path,
    text: &str,
) -> Result<Profile, KerberosError> {
    let Some(dir) = kinit_dir else {
        let mut name = tmp.as_os_str().to_os_string();
        name.push(".krb5.conf");
        let path = PathBuf::from(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .map_err(io_err(format!("write {}", path.display())))?;
        return Ok(Profile { path, kept: false });
    };
    let dir = dir.join("profiles");
    let name = format!("{}.conf", &hex::encode(Sha256::digest(text))[..32]);
    let path = dir.join(&name);
    if !path.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        // Durable: a profile left empty by a host crash would make every later kinit ask for
        // a renewable ticket (refused by the read-back, so the grants would fail). Two kinits
        // racing to write it rename the same bytes into place.
        let opts = atomic_file::Options {
            durable: true,
            ..atomic_file::Options::PRIVATE
        };
        atomic_file::write(&path, text.as_bytes(), opts)
            .map_err(io_err(format!("write {}", path.display())))?;
    }
    Ok(Profile { path, kept: true })
}

/// Remove a temporary file of ours (a cache or profile next to the job's cache). Missing is
/// fine (kinit failed before writing it); any other failure is logged, not returned: the
/// kinit's own result is the one to report, and what is left is in the root-owned creds dir,
/// removed with it when the job ends.
pub(super) fn remove_temp(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
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

/// The profile put in front of krb5.conf for a kinit. `no_renew` makes kinit ask for a
/// non-renewable ticket: `renew_lifetime = 0` in `[libdefaults]` and, when the principal names
/// its realm, in that realm's subsection (which MIT consults before the global relation); a
/// realm that is not a plain profile word is left out (the read-back check still refuses a
/// renewable ticket). `skip_spake` leaves the SPAKE client module out ([`super::preauth`]).
pub(super) fn kinit_profile(principal: &str, no_renew: bool, skip_spake: bool) -> String {
    let mut text = String::from("# Written by p3-executor: its kinits read it before krb5.conf.\n");
    if no_renew {
        text.push_str(
            "# This account's tickets are not renewable.\n[libdefaults]\n renew_lifetime = 0\n",
        );
        if let Some((_, realm)) = principal.rsplit_once('@')
            && !realm.is_empty()
            && realm
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            text.push_str(&format!(" {realm} = {{\n  renew_lifetime = 0\n }}\n"));
        }
    }
    if skip_spake {
        text.push_str("# Leave the SPAKE module out: the KDC was last seen not offering it.\n");
        text.push_str(preauth::PROFILE);
    }
    text
}

/// The profile kinit reads without the non-renewable one: the job's krb5.conf of an account
/// with its own realm, else `kerberos.krb5_config`, else what the executor inherited.
pub(super) fn base_krb5_config(kcfg: &KerberosConfig, job_conf: Option<&Path>) -> OsString {
    match job_conf.or(kcfg.krb5_config.as_deref()) {
        Some(conf) => conf.as_os_str().to_os_string(),
        None => std::env::var_os(env::KRB5_CONFIG).unwrap_or_else(|| "/etc/krb5.conf".into()),
    }
}

/// `KRB5_CONFIG` for a kinit with a profile of its own: `first` in front of `base`, the
/// profile kinit would otherwise read.
fn profile_krb5_config(base: OsString, first: &Path) -> Result<OsString, KerberosError> {
    if first.as_os_str().as_encoded_bytes().contains(&b':') {
        return Err(KerberosError::Io {
            context: format!("profile {}", first.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a path in KRB5_CONFIG cannot contain ':'",
            ),
        });
    }
    let mut list = first.as_os_str().to_os_string();
    list.push(":");
    list.push(base);
    Ok(list)
}

/// kinit into `tmp`, read the ticket back, hand it to the owner and rename it over `ccache`;
/// and whether the KDC offered SPAKE, when the kinit was traced.
#[allow(clippy::too_many_arguments)]
fn obtain_into(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    tmp: &Path,
    profile: Option<&Path>,
    how: How,
    lifetime: Option<u64>,
    opts: &KinitOptions<'_>,
) -> (Result<Obtained, KerberosError>, Option<bool>) {
    let base = base_krb5_config(kcfg, opts.krb5_config);
    let out = match run_kinit(kcfg, account, tmp, (profile, how), lifetime, &base, opts) {
        Ok(out) => out,
        Err(e) => return (Err(e), None),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let offered = how
        .traced
        .then(|| preauth::spake_offered(&stderr))
        .flatten();
    // Which KDC answered is reported only when the caller asked for it.
    let trace = if opts.trace {
        parse_kdc_trace(&stderr)
    } else {
        KdcTrace::default()
    };
    if !out.status.success() {
        let krb5_config = base.to_string_lossy().into_owned();
        return (
            Err(kinit_error(account, krb5_config, &out, trace.answered)),
            offered,
        );
    }
    (hand_over(account, ccache, tmp, how, opts, trace), offered)
}

/// Run kinit into `tmp`: its arguments, and its environment (the profile in front of `base`,
/// the trace).
fn run_kinit(
    kcfg: &KerberosConfig,
    account: &Account,
    tmp: &Path,
    (profile, how): (Option<&Path>, How),
    lifetime: Option<u64>,
    base: &OsString,
    opts: &KinitOptions<'_>,
) -> Result<Output, KerberosError> {
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
    let mut envs = Vec::new();
    match profile {
        Some(first) => envs.push((env::KRB5_CONFIG, profile_krb5_config(base.clone(), first)?)),
        None if opts.krb5_config.is_some() => envs.push((env::KRB5_CONFIG, base.clone())),
        None => {}
    }
    if how.traced {
        envs.push((KRB5_TRACE, "/dev/stderr".into()));
    }
    run_tool_with(
        kcfg,
        &kcfg.kinit,
        "kinit",
        args,
        &format!("for {}", account.principal),
        envs,
    )
}

/// After a kinit succeeded: read back what the KDC actually granted (it may cap lifetimes)
/// before the job can touch it, then hand the cache to its owner and rename it into place.
fn hand_over(
    account: &Account,
    ccache: &Path,
    tmp: &Path,
    how: How,
    opts: &KinitOptions<'_>,
    trace: KdcTrace,
) -> Result<Obtained, KerberosError> {
    let ticket = read_ticket(tmp)?;
    if how.no_renew && ticket.renew_until.is_some() {
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
    fn kinit_profile_covers_the_principals_realm_and_the_spake_module() {
        let p = kinit_profile("svc@P3.TEST", true, false);
        assert!(
            p.contains(
                "[libdefaults]\n renew_lifetime = 0\n P3.TEST = {\n  renew_lifetime = 0\n }\n"
            ),
            "{p}"
        );
        assert!(!p.contains("[plugins]"));
        assert!(!kinit_profile("svc", true, false).contains('{'));
        // A realm that is not a plain profile word is left to the read-back check.
        assert!(!kinit_profile("svc@EVIL}\n[x]", true, false).contains("EVIL"));
        // A renewable account's kinit gets only the plugin lines.
        let p = kinit_profile("svc@P3.TEST", false, true);
        assert!(!p.contains("renew_lifetime"), "{p}");
        assert!(
            p.contains("[plugins]\n clpreauth = {\n  disable = spake\n }\n"),
            "{p}"
        );
    }
}
