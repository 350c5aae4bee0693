//! Kerberos tickets from host-side keytabs, the public surface: what a grant, a refresh and a
//! revocation call, re-exported from the files that do one job each.
//!
//! The keytab never leaves the host and is never read by this module except to fingerprint it:
//! `kinit -kt` reads it as the executor (root). The job receives only a file ticket cache inside
//! its root-owned credentials dir (`<state_root>/creds/<job_id>/`), owned by the job's uid with
//! mode 0600.
//!
//! - `ticket.rs`: [`obtain`], [`obtain_capped`], [`refresh_if_needed`], [`destroy`]. A job's
//!   ticket lives at most until the job's deadline plus a margin ([`requested_lifetime`]) and is
//!   not renewable unless the account opts in, so a copy taken out of the job is worth little
//!   once the job is over.
//! - `kinit.rs`: one kinit into a temporary cache (the profile in front of krb5.conf, kept in
//!   [`kinit_dir`] for the next kinits; the read-back,
//!   the hand-over to the job's uid, kinit's stderr classified) and [`KinitOptions`].
//! - `preauth.rs`: whether a kinit loads MIT's SPAKE module (`kerberos.spake`), learned per
//!   principal from the KDC's answers in the kinits' traces, remembered in [`kinit_dir`].
//! - `dc_retry.rs`: after a DC rejected the key, each later DC of the account's list on its own
//!   (key rotation not yet replicated everywhere).
//! - `ccache.rs`: [`read_ticket`], the pure parser of MIT FILE caches (v3/v4), rather than
//!   `klist` output, whose dates are locale-formatted with two-digit years.
//! - `keytab.rs`: [`keytab_fingerprint`] for the audit log, [`keytab_principals`], and the pure
//!   [`parse_keytab`] (principal, key version, enctype of each entry) for `check` and for the
//!   key versions a rotation message names.
//! - `realm_conf.rs`: the per-job krb5.conf of an account with its own realm
//!   (`[accounts.<name>.kerberos]`, an AD domain): [`realm_conf::render`] (pure) and
//!   [`realm_conf::write_job_conf`] into the job's credentials dir. kinit, refresh and the job
//!   all use it; accounts without the table use the host's krb5.conf.
//! - `tool.rs`: every kinit/klist/kdestroy call, bounded by `kerberos.timeout_secs` (or the
//!   account's own), and [`parse_kdc_trace`] (which DC answered a traced kinit).
//! - `error.rs`: [`KerberosError`].
//!
//! The host checks for `p3-executor check` live in [`crate::check::kerberos`]: check depends on
//! this module, never the other way round.

mod ccache;
mod dc_retry;
mod error;
mod keytab;
mod kinit;
mod preauth;
pub mod realm_conf;
mod ticket;
mod tool;

pub use ccache::{Ticket, read_ticket};
pub use error::{DcAnswer, KerberosError};
pub(crate) use keytab::principal_matches;
pub use keytab::{
    KeytabEntry, enctype_name, keytab_fingerprint, keytab_kvnos, keytab_principals,
    keytab_with_kvno, parse_keytab, read_keytab,
};
pub use kinit::{KinitOptions, Obtained, requested_lifetime, spake_left_out};

/// Where kinit's root-only files that outlive a job live under the state root: the profiles
/// put in front of krb5.conf (`profiles/`) and what KDCs offered (`no-spake/`).
pub fn kinit_dir(state_root: &std::path::Path) -> std::path::PathBuf {
    state_root.join("kinit")
}
pub use ticket::{
    destroy, krb5ccname, obtain, obtain_capped, obtain_with, refresh_if_needed, refresh_with,
};
pub(crate) use tool::resolve_tool;
pub use tool::{KdcTrace, parse_kdc_trace};
