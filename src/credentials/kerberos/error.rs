//! Why a Kerberos operation failed: [`KerberosError`], always a host-side (system) failure.

use std::path::PathBuf;

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
        "kinit for {principal} with keytab {keytab} failed: {stderr}\n  fix: the keytab must hold the principal's current key: compare `klist -kt {keytab}` with the account's principal, and re-export it if the key was rotated (MIT kadmin: ktadd -norandkey; Active Directory: ktpass on a DC, or msktutil or adcli on Linux, each of which sets a new key); then run `p3-executor check`"
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

/// Wrap an I/O error with what was being done.
pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KerberosError {
    let context = context.into();
    move |source| KerberosError::Io { context, source }
}
