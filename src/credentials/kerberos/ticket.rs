//! Tickets for a job: kinit from the account's keytab into the job's file cache (lifetime
//! capped by the job, not renewable unless the account opts in), refresh when close to expiry,
//! destroy when the job ends.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::fcntl::OFlag;

use super::ccache::{Ticket, read_ticket};
use super::dc_retry;
use super::error::{KerberosError, io_err};
use super::keytab::principal_matches;
use super::kinit::{KinitOptions, Obtained, cache_name, obtain_once};
use super::tool::run_tool;
use crate::config::{Account, KerberosConfig};

/// The `KRB5CCNAME` value for a file cache at `ccache` (`FILE:<path>`), for the job's
/// environment.
pub fn krb5ccname(ccache: &Path) -> String {
    format!("FILE:{}", ccache.display())
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
/// `max_life` (the job's deadline plus margin; see [`requested_lifetime`](super::requested_lifetime)).
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
    dc_retry::after_rejection(kcfg, account, ccache, opts, first)
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
                .custom_flags(OFlag::O_NOFOLLOW.bits())
                .open(ccache)
            {
                use std::io::Write;
                // Unchecked: the unlink below is what must succeed; zeroing only shortens the
                // life of the key's bytes on disk.
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
