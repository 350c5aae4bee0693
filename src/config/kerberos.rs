//! `[kerberos]`: the Kerberos tools and timings (an account's own realm is `realm.rs`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Kerberos tools and timings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosConfig {
    /// `kinit` command (name looked up on PATH, or absolute path).
    #[serde(default = "default_kinit")]
    pub kinit: String,
    /// `kdestroy` command.
    #[serde(default = "default_kdestroy")]
    pub kdestroy: String,
    /// `klist` command.
    #[serde(default = "default_klist")]
    pub klist: String,
    /// `KRB5_CONFIG` for the executor's own kinit calls and for jobs (None: system default).
    #[serde(default)]
    pub krb5_config: Option<PathBuf>,
    /// Upper bound on every kinit/kdestroy/klist call (MIT kinit can hang ~27 s on a mute KDC).
    #[serde(default = "default_kinit_timeout")]
    pub timeout_secs: u64,
    /// Before each run stage, re-obtain a ticket with less life left than this, or than the
    /// job still needs (the time to the job's deadline), whichever is less: a ticket that
    /// already covers the rest of the job is kept.
    #[serde(default = "default_renew_threshold")]
    pub renew_threshold_secs: u64,
    /// Slack after the job's deadline (its creation plus the payload's `runner_info.timeout`)
    /// that a ticket, and S3 credentials asked for with a duration, may outlive it: a ticket
    /// is requested for at most the time to that deadline plus this margin (never more than
    /// the account's `ticket_lifetime_secs`). Jobs without a timeout get the account's lifetime.
    /// Keep it at a minute or more: it is also the slack that lets a capped ticket last the
    /// whole job without being re-obtained before every stage.
    #[serde(default = "default_lifetime_margin")]
    pub lifetime_margin_secs: u64,
    /// `check` warns about a keytab older than this many days (0: never). AD service accounts
    /// and gMSAs rotate their passwords (a gMSA every 30 days), and a keytab is only as fresh
    /// as its last export.
    #[serde(default = "default_keytab_max_age_days")]
    pub keytab_max_age_days: u64,
    /// Whether a job's kinit loads MIT's SPAKE pre-authentication module: `auto` leaves it out
    /// for a principal whose KDC was seen not to offer SPAKE (see
    /// `credentials/kerberos/preauth.rs`), `always` never leaves it out.
    #[serde(default)]
    pub spake: Spake,
}

/// `kerberos.spake`: when a kinit loads MIT's SPAKE client module (`spake.so` and OpenSSL's
/// libcrypto, about a third of a kinit's time), which only a KDC that offers SPAKE uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spake {
    /// Learned per principal from the KDC's own answers: left out once the KDC answered that
    /// principal without offering SPAKE, back as soon as it offers it.
    #[default]
    Auto,
    /// Every kinit loads it, as MIT's default does.
    Always,
}

fn default_keytab_max_age_days() -> u64 {
    30
}

fn default_kinit() -> String {
    "kinit".into()
}
fn default_kdestroy() -> String {
    "kdestroy".into()
}
fn default_klist() -> String {
    "klist".into()
}
fn default_kinit_timeout() -> u64 {
    15
}
fn default_renew_threshold() -> u64 {
    3600
}
fn default_lifetime_margin() -> u64 {
    900
}

impl Default for KerberosConfig {
    fn default() -> Self {
        Self {
            kinit: default_kinit(),
            kdestroy: default_kdestroy(),
            klist: default_klist(),
            krb5_config: None,
            timeout_secs: default_kinit_timeout(),
            renew_threshold_secs: default_renew_threshold(),
            lifetime_margin_secs: default_lifetime_margin(),
            keytab_max_age_days: default_keytab_max_age_days(),
            spake: Spake::default(),
        }
    }
}
