//! `[accounts.<name>.kerberos]`: an account's own realm. The file's table
//! ([`AccountKerberosFile`]) and the resolved settings ([`AccountKerberos`], whose DCs are one
//! [`Dcs`]) side by side, with the checks.

use serde::{Deserialize, Serialize};

use super::{Problem, default_true};

/// An account's own Kerberos realm, usually an Active Directory domain: each job granted the
/// account gets a krb5.conf of its own naming this realm and its DCs (see
/// `credentials::kerberos::realm_conf`), used by the executor's kinit and by the job's clients.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "AccountKerberosFile", into = "AccountKerberosFile")]
pub struct AccountKerberos {
    /// The realm (`CORP.EXAMPLE.COM`), the job's `default_realm`.
    pub realm: String,
    /// How the realm's DCs are found (`kdcs`, `dns_lookup_kdc`).
    pub dcs: Dcs,
    /// Encryption types, in order of preference (empty: the library's defaults).
    pub enctypes: Vec<String>,
    /// Reverse-resolve service hosts before building their principal names.
    pub rdns: bool,
    /// Let the KDC canonicalize the client principal.
    pub canonicalize: bool,
    /// End the per-job krb5.conf with an include of the host's.
    pub include_host_config: bool,
    /// Bound on this account's kinit calls, instead of `kerberos.timeout_secs`.
    pub timeout_secs: Option<u64>,
    /// The file gave no way to find a DC (no `kdcs`, no `dns_lookup_kdc`): `dcs` is then a
    /// placeholder and [`AccountKerberos::problems`] reports it, so no loaded config has it.
    no_dc_source: bool,
}

/// How a realm's DCs are found: the valid combinations of `kdcs` and `dns_lookup_kdc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dcs {
    /// `kdcs` alone: these DCs, tried in this order; DNS is never asked.
    Listed(Vec<String>),
    /// `kdcs` with `dns_lookup_kdc = true`: these DCs for the realm, DNS SRV records for the
    /// realms a referral leads to (trusted domains of the forest).
    ListedThenSrv(Vec<String>),
    /// `dns_lookup_kdc = true` without `kdcs`: the `_kerberos._tcp.<realm>` SRV records.
    Srv,
}

impl Dcs {
    /// The DCs the config lists, in order (none with [`Dcs::Srv`]).
    pub fn listed(&self) -> &[String] {
        match self {
            Dcs::Listed(kdcs) | Dcs::ListedThenSrv(kdcs) => kdcs,
            Dcs::Srv => &[],
        }
    }

    /// Whether DNS SRV records are asked (krb5.conf's `dns_lookup_kdc`).
    pub fn srv(&self) -> bool {
        !matches!(self, Dcs::Listed(_))
    }
}

impl AccountKerberos {
    /// These settings with `dc` as the only listed DC (SRV records for referrals as before):
    /// the krb5.conf of a kinit that must ask that one DC.
    pub fn with_only_dc(&self, dc: &str) -> Self {
        let one = vec![dc.to_string()];
        Self {
            dcs: if self.dcs.srv() {
                Dcs::ListedThenSrv(one)
            } else {
                Dcs::Listed(one)
            },
            ..self.clone()
        }
    }
}

/// The infallible part of resolving the table: the shape of `kdcs` and `dns_lookup_kdc`
/// becomes one [`Dcs`] (the one invalid shape is kept aside for [`AccountKerberos::problems`]).
impl From<AccountKerberosFile> for AccountKerberos {
    fn from(file: AccountKerberosFile) -> Self {
        let no_dc_source = file.kdcs.is_empty() && !file.dns_lookup_kdc;
        let dcs = match (file.kdcs.is_empty(), file.dns_lookup_kdc) {
            (false, false) => Dcs::Listed(file.kdcs),
            (false, true) => Dcs::ListedThenSrv(file.kdcs),
            (true, _) => Dcs::Srv,
        };
        Self {
            realm: file.realm,
            dcs,
            enctypes: file.enctypes,
            rdns: file.rdns,
            canonicalize: file.canonicalize,
            include_host_config: file.include_host_config,
            timeout_secs: file.timeout_secs,
            no_dc_source,
        }
    }
}

impl From<AccountKerberos> for AccountKerberosFile {
    fn from(k: AccountKerberos) -> Self {
        let dns_lookup_kdc = k.dcs.srv() && !k.no_dc_source;
        let kdcs = match k.dcs {
            Dcs::Listed(kdcs) | Dcs::ListedThenSrv(kdcs) => kdcs,
            Dcs::Srv => Vec::new(),
        };
        Self {
            realm: k.realm,
            kdcs,
            dns_lookup_kdc,
            enctypes: k.enctypes,
            rdns: k.rdns,
            canonicalize: k.canonicalize,
            include_host_config: k.include_host_config,
            timeout_secs: k.timeout_secs,
        }
    }
}

/// `[accounts.<name>.kerberos]` as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountKerberosFile {
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
        if self.no_dc_source {
            problems.push(Problem::new(
                key(""),
                "no way to find the realm's DCs: list them in kdcs = [\"dc1.example.com\", ...] or set dns_lookup_kdc = true",
            ));
        }
        let mut seen = Vec::new();
        for (i, kdc) in self.dcs.listed().iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn realm(table: &str) -> AccountKerberos {
        toml::from_str(&format!("realm = \"R\"\n{table}")).unwrap()
    }

    #[test]
    fn kdcs_and_dns_lookup_kdc_resolve_to_one_shape() {
        let dc = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        // (table, shape, problem: no way to find a DC)
        let cases = [
            ("kdcs = [\"a\", \"b\"]", Dcs::Listed(dc(&["a", "b"])), false),
            (
                "kdcs = [\"a\"]\ndns_lookup_kdc = true",
                Dcs::ListedThenSrv(dc(&["a"])),
                false,
            ),
            ("dns_lookup_kdc = true", Dcs::Srv, false),
            ("", Dcs::Srv, true),
            ("kdcs = []\ndns_lookup_kdc = false", Dcs::Srv, true),
        ];
        for (table, shape, no_dc) in cases {
            let k = realm(table);
            assert_eq!(k.dcs, shape, "{table}");
            let named = k
                .problems("a", "p")
                .iter()
                .any(|p| p.message.contains("no way to find the realm's DCs"));
            assert_eq!(named, no_dc, "{table}");
            // Written back, the table reads the same.
            let again: AccountKerberos = toml::from_str(&toml::to_string(&k).unwrap()).unwrap();
            assert_eq!(again, k, "{table}");
        }
    }

    #[test]
    fn one_dc_keeps_srv_for_referrals() {
        let k = realm("kdcs = [\"a\", \"b\"]\ndns_lookup_kdc = true");
        assert_eq!(
            k.with_only_dc("b").dcs,
            Dcs::ListedThenSrv(vec!["b".into()])
        );
        let k = realm("kdcs = [\"a\", \"b\"]");
        assert_eq!(k.with_only_dc("b").dcs, Dcs::Listed(vec!["b".into()]));
    }
}
