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
    /// Every DC that answered rejected the keytab's key ("Password incorrect", "Preauthentication
    /// failed", a key version the keytab does not hold): the account's password has probably
    /// been rotated and the keytab not refreshed (or a DC has not replicated the new key yet,
    /// and none that has answered). Each DC of the account's list was asked in turn.
    #[error(
        "kinit for {principal} with keytab {keytab}: {}\n  the account's password has probably been rotated: the keytab holds key version(s) {} and no DC accepted them\n  fix: export a fresh keytab with the account's current key, using your site's tool: Active Directory: ktpass on a DC (ktpass /princ {principal} ... /out <file>), msktutil --update or adcli update on Linux, or your gMSA keytab tool (gMSA passwords rotate every 30 days by default); MIT kadmin: ktadd -norandkey. Install it at {keytab} (root, 0600), then run `p3-executor check --probe` to see which DC accepts which key version",
        answers_text(.answers),
        kvnos_text(.kvnos)
    )]
    KeyRejected {
        /// Principal asked for.
        principal: String,
        /// Keytab used.
        keytab: PathBuf,
        /// The key versions of the principal in the keytab (empty: could not be read).
        kvnos: Vec<u32>,
        /// Each DC's answer, in the order asked.
        answers: Vec<DcAnswer>,
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

/// What one DC answered a kinit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcAnswer {
    /// The DC (`host:port` as kinit's trace names it, or the configured entry).
    pub kdc: String,
    /// The metric reason ([`KerberosError::reason`]): `wrong_key`, `unreachable`, ...
    pub reason: &'static str,
    /// kinit's own words.
    pub answer: String,
}

fn answers_text(answers: &[DcAnswer]) -> String {
    let list: Vec<String> = answers
        .iter()
        .map(|a| format!("{} answered: {}", a.kdc, a.answer))
        .collect();
    format!("no DC accepted the key ({})", list.join("; "))
}

fn kvnos_text(kvnos: &[u32]) -> String {
    if kvnos.is_empty() {
        return "(unknown: the keytab could not be read)".into();
    }
    kvnos
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl KerberosError {
    /// The reason label of `p3_executor_kinit_failures_total`: `unreachable`, `wrong_key`,
    /// `unknown_principal` or `other`.
    pub fn reason(&self) -> &'static str {
        match self {
            KerberosError::KdcUnreachable { .. } | KerberosError::Timeout { .. } => "unreachable",
            KerberosError::WrongKeytab { .. } | KerberosError::KeyRejected { .. } => "wrong_key",
            KerberosError::PrincipalUnknown { .. } => "unknown_principal",
            _ => "other",
        }
    }

    /// Each DC's answer for the audit record: the rejections of [`KerberosError::KeyRejected`],
    /// or this one failure (no DC named).
    pub fn answers(&self) -> Vec<DcAnswer> {
        match self {
            KerberosError::KeyRejected { answers, .. } => answers.clone(),
            other => vec![DcAnswer {
                kdc: String::new(),
                reason: other.reason(),
                answer: other
                    .to_string()
                    .split("\n  fix: ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            }],
        }
    }
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
