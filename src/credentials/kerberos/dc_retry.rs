//! After a DC rejected the keytab's key: each DC of the account's list after it is asked on its
//! own (a krb5.conf naming only it), since MIT kinit moves on only from a DC that does not
//! answer. The first that accepts wins; the rejections are kept for the audit.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::error::{DcAnswer, KerberosError, io_err};
use super::keytab::keytab_kvnos;
use super::kinit::{KinitOptions, Obtained, obtain_once, remove_temp, temp_sibling};
use super::realm_conf;
use crate::config::{Account, KerberosConfig};

/// `first`, kinit's own answer, unless it is a key rejection of an account with its own realm
/// and several DCs: then each DC after the one that rejected, on its own, until one accepts.
/// When none accepts: [`KerberosError::KeyRejected`] with every DC's answer.
pub(super) fn after_rejection(
    kcfg: &KerberosConfig,
    account: &Account,
    ccache: &Path,
    opts: &KinitOptions<'_>,
    first: Result<Obtained, KerberosError>,
) -> Result<Obtained, KerberosError> {
    let (Err(KerberosError::KeyRejected { answers, .. }), Some(settings), Some(_)) =
        (&first, account.kerberos.as_ref(), opts.krb5_config)
    else {
        return first;
    };
    if settings.dcs.listed().len() < 2 {
        return first;
    }
    let mut answers = answers.clone();
    let rejecter = answers.first().map(|a| a.kdc.clone()).unwrap_or_default();
    let after = settings
        .dcs
        .listed()
        .iter()
        .position(|dc| same_dc(dc, &rejecter))
        .map_or(0, |i| i + 1);
    let include = realm_conf::host_include(kcfg, settings);
    for dc in &settings.dcs.listed()[after..] {
        if same_dc(dc, &rejecter) {
            continue;
        }
        let one = settings.with_only_dc(dc);
        let mut name = temp_sibling(ccache)?.into_os_string();
        name.push(".dc.krb5.conf");
        let conf = PathBuf::from(name);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&conf)
            .and_then(|mut f| {
                std::io::Write::write_all(
                    &mut f,
                    realm_conf::render(&one, include.as_deref()).as_bytes(),
                )
            });
        if let Err(e) = written {
            remove_temp(&conf);
            return Err(io_err(format!("write {}", conf.display()))(e));
        }
        let one_opts = KinitOptions {
            krb5_config: Some(&conf),
            trace: true,
            ..*opts
        };
        let result = obtain_once(kcfg, account, ccache, &one_opts);
        remove_temp(&conf);
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
