//! `[kerberos]` (the tools and timings) and `[accounts.<name>.kerberos]` (an account's own
//! realm).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Problem, default_true};

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
        }
    }
}

/// An account's own Kerberos realm, usually an Active Directory domain: each job granted the
/// account gets a krb5.conf of its own naming this realm and its DCs (see
/// `credentials::kerberos::realm_conf`), used by the executor's kinit and by the job's clients.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountKerberos {
    /// The realm: for AD the domain name in upper case (`CORP.EXAMPLE.COM`). It becomes the
    /// job's `default_realm`.
    pub realm: String,
    /// The realm's DCs, `host` or `host:port` (`[v6 address]:port`), tried in this order: one
    /// that refuses the connection is skipped at once, one that accepts and never answers
    /// after about 10 s (MIT's wait for a TCP reply).
    #[serde(default)]
    pub kdcs: Vec<String>,
    /// Find DCs from the `_kerberos._tcp.<realm>` DNS SRV records, for the realm when `kdcs`
    /// is empty and for realms a referral leads to (trusted domains of the forest).
    #[serde(default)]
    pub dns_lookup_kdc: bool,
    /// Encryption types for tickets and session keys, in order of preference (empty: the
    /// library's defaults), e.g. `["aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"]`.
    #[serde(default)]
    pub enctypes: Vec<String>,
    /// Reverse-resolve service hosts before building their principal names. AD registers SPNs
    /// under the names clients use, so the default is false.
    #[serde(default)]
    pub rdns: bool,
    /// Let the KDC canonicalize the client principal (AD: UPNs and enterprise names).
    #[serde(default)]
    pub canonicalize: bool,
    /// End the per-job krb5.conf with `include <kerberos.krb5_config or /etc/krb5.conf>`, so
    /// the host's other settings and realms still apply. The account's own settings come first
    /// and win: MIT's profile returns the first value it reads.
    #[serde(default = "default_true")]
    pub include_host_config: bool,
    /// Bound on this account's kinit calls, instead of `kerberos.timeout_secs`. A DC that
    /// accepts and never answers costs MIT kinit about 10 s before it asks the next one: allow
    /// 10 s for every DC that may be mute, plus a few seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Encryption type names MIT krb5 accepts in `permitted_enctypes` and friends (compared
/// without case; a leading `+`/`-` adds or removes, as in `DEFAULT -rc4`).
const ENCTYPES: &[&str] = &[
    "default",
    "aes",
    "aes256-cts-hmac-sha1-96",
    "aes256-cts",
    "aes256-sha1",
    "aes128-cts-hmac-sha1-96",
    "aes128-cts",
    "aes128-sha1",
    "aes256-cts-hmac-sha384-192",
    "aes256-sha2",
    "aes128-cts-hmac-sha256-128",
    "aes128-sha2",
    "rc4",
    "arcfour-hmac",
    "rc4-hmac",
    "arcfour-hmac-md5",
    "des3",
    "des3-cbc-sha1",
    "des3-hmac-sha1",
    "des3-cbc-sha1-kd",
    "camellia",
    "camellia256-cts-cmac",
    "camellia256-cts",
    "camellia128-cts-cmac",
    "camellia128-cts",
];

impl AccountKerberos {
    /// Problems with `[accounts.<name>.kerberos]` for the account's `principal`, each naming
    /// its key. Everything here ends up in a krb5.conf, so only plain profile words pass.
    pub fn problems(&self, name: &str, principal: &str) -> Vec<Problem> {
        let key = |k: &str| format!("accounts.{name}.kerberos{k}");
        let mut problems = Vec::new();
        let realm = &self.realm;
        if realm.is_empty() {
            problems.push(Problem::new(
                key(".realm"),
                "the realm is empty: name the realm (AD: the domain in upper case, CORP.EXAMPLE.COM)",
            ));
        } else if !realm.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) || realm.starts_with('.')
            || realm.ends_with('.')
        {
            problems.push(Problem::new(
                key(".realm"),
                format!(
                    "{realm:?} is not a realm name: upper-case letters, digits, '.', '-' and '_' (AD: the domain in upper case, {:?})",
                    realm.to_ascii_uppercase()
                ),
            ));
        } else if let Some((_, own)) = principal.rsplit_once('@')
            && own != realm
        {
            problems.push(Problem::new(
                format!("accounts.{name}.principal"),
                format!(
                    "{principal:?} is in realm {own:?}, but {}.realm is {realm:?}: kinit would ask {realm}'s DCs for a principal of another realm (write the principal as <name>@{realm}, or leave its realm out)",
                    key("")
                ),
            ));
        }
        if self.kdcs.is_empty() && !self.dns_lookup_kdc {
            problems.push(Problem::new(
                key(""),
                "no way to find the realm's DCs: list them in kdcs = [\"dc1.example.com\", ...] or set dns_lookup_kdc = true",
            ));
        }
        let mut seen = Vec::new();
        for (i, kdc) in self.kdcs.iter().enumerate() {
            if let Err(why) = parse_kdc(kdc) {
                problems.push(Problem::new(
                    key(&format!(".kdcs.{i}")),
                    format!("{kdc:?}: {why}"),
                ));
            } else if seen.contains(&kdc) {
                problems.push(Problem::new(
                    key(&format!(".kdcs.{i}")),
                    format!("{kdc:?} is listed twice"),
                ));
            }
            seen.push(kdc);
        }
        for (i, enctype) in self.enctypes.iter().enumerate() {
            let bare = enctype.trim_start_matches(['+', '-']).to_ascii_lowercase();
            if !ENCTYPES.contains(&bare.as_str()) {
                problems.push(Problem::new(
                    key(&format!(".enctypes.{i}")),
                    format!("{enctype:?} is not an encryption type MIT krb5 knows (AD: \"aes256-cts-hmac-sha1-96\", \"aes128-cts-hmac-sha1-96\")"),
                ));
            }
        }
        if self.timeout_secs == Some(0) {
            problems.push(Problem::new(
                key(".timeout_secs"),
                "timeout_secs = 0 gives kinit no time: allow a few seconds (10 s more for every DC that may be mute)",
            ));
        }
        problems
    }
}

/// A DC entry, `host`, `host:port` or `[v6]:port`: the host and the port, if given.
pub fn parse_kdc(entry: &str) -> std::result::Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        match after {
            "" => (addr, None),
            _ => (
                addr,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected ':<port>' after ']'")?,
                ),
            ),
        }
    } else {
        match entry.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("an IPv6 address goes in brackets: \"[2001:db8::1]:88\"".into());
            }
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("no host name".into());
    }
    if !entry.starts_with('[')
        && (!host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            || host.starts_with(['.', '-']))
    {
        return Err("not a host name: letters, digits, '.', '-' and '_' only".into());
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}
