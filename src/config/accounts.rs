//! `[accounts.<name>]`: the system accounts whose keytabs live on this host.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AccountKerberos, IdentityConfig, Problem, S3Account};

/// A Kerberos system account whose keytab stays on this host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Kerberos principal, e.g. `svc_client_uat@EXAMPLE.COM`.
    pub principal: String,
    /// Keytab on the host; must be readable by root only.
    pub keytab: PathBuf,
    /// Requested ticket lifetime in seconds (0: krb5.conf's default), capped for each job by
    /// its timeout plus `kerberos.lifetime_margin_secs`.
    #[serde(default = "default_ticket_lifetime")]
    pub ticket_lifetime_secs: u64,
    /// Requested renewable lifetime in seconds. The default, 0, gives tickets that are not
    /// renewable at all, whatever krb5.conf's `renew_lifetime` says: the executor re-obtains
    /// tickets from the keytab before a stage, so jobs need no renewal, and a copied ticket
    /// dies with its lifetime. A value above 0 is an explicit per-account opt-in.
    #[serde(default = "default_renewable_lifetime")]
    pub renewable_lifetime_secs: u64,
    /// S3 access for this account, if any.
    #[serde(default)]
    pub s3: Option<S3Account>,
    /// The account's own realm and DCs (an Active Directory domain). Without it kinit and the
    /// job use the host's krb5.conf (`kerberos.krb5_config`), as before.
    #[serde(default)]
    pub kerberos: Option<AccountKerberos>,
}

fn default_ticket_lifetime() -> u64 {
    10 * 3600
}
fn default_renewable_lifetime() -> u64 {
    0
}

impl Account {
    /// Problems with `[accounts.<name>]` and its subsections.
    pub fn problems(&self, name: &str, identity: &IdentityConfig) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.keytab.is_absolute() {
            problems.push(Problem::new(
                format!("accounts.{name}.keytab"),
                format!("{:?} is not an absolute path", self.keytab),
            ));
        }
        if let Some(realm) = &self.kerberos {
            problems.extend(realm.problems(name, &self.principal));
        }
        if let Some(s3) = &self.s3 {
            problems.extend(s3.problems(name, identity));
        }
        problems
    }
}
