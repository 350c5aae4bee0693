//! The per-job krb5.conf of an account with its own realm (`[accounts.<name>.kerberos]`): the
//! account's realm, DCs and AD settings first, then `include` of the host's file.
//!
//! MIT's profile library returns the first value it reads for a single-valued relation
//! (`default_realm`, `udp_preference_limit`, `rdns`, ...), and an `include` is read where it
//! stands, so the account's settings win over the host file's by coming before the include.
//! Multi-valued relations add up: if the host file also lists DCs for the account's realm,
//! they are tried after the account's own (a `*` "final" marker does not stop that within one
//! file). Checked against kinit and klist in `tests/it/realms.rs`.
//!
//! [`render`] is pure and table-tested; [`write_job_conf`] puts the text into the job's
//! root-owned credentials dir.

use std::path::{Path, PathBuf};

use super::error::{KerberosError, io_err};
use crate::atomic_file;
use crate::config::{AccountKerberos, KerberosConfig};

/// File name of the per-job krb5.conf in the job's credentials dir.
pub const JOB_KRB5_CONF: &str = "krb5.conf";

/// The host's krb5.conf when none is configured.
pub const SYSTEM_KRB5_CONF: &str = "/etc/krb5.conf";

/// The krb5.conf text for an account's realm `settings`, ending with `include <include>` when
/// given. The realm, DCs and enctypes are the validated words of the config
/// ([`AccountKerberos::problems`]), so nothing here can open a new section.
pub fn render(settings: &AccountKerberos, include: Option<&Path>) -> String {
    let realm = &settings.realm;
    let yes_no = |b: bool| if b { "true" } else { "false" };
    let mut text = format!(
        "# Written by p3-executor for one job: realm {realm} ([accounts.<name>.kerberos]).\n\
         # These settings come first, so they win over the host file included at the end.\n\
         [libdefaults]\n \
         default_realm = {realm}\n \
         dns_lookup_realm = false\n \
         dns_lookup_kdc = {}\n \
         rdns = {}\n \
         canonicalize = {}\n \
         udp_preference_limit = 1\n",
        yes_no(settings.dcs.srv()),
        yes_no(settings.rdns),
        yes_no(settings.canonicalize),
    );
    if !settings.enctypes.is_empty() {
        let list = settings.enctypes.join(" ");
        for key in [
            "default_tkt_enctypes",
            "default_tgs_enctypes",
            "permitted_enctypes",
        ] {
            text.push_str(&format!(" {key} = {list}\n"));
        }
    }
    if !settings.dcs.listed().is_empty() {
        text.push_str(&format!("\n[realms]\n {realm} = {{\n"));
        for kdc in settings.dcs.listed() {
            text.push_str(&format!("  kdc = {kdc}\n"));
        }
        text.push_str(" }\n");
    }
    if let Some(host) = include {
        text.push_str(&format!("\ninclude {}\n", host.display()));
    }
    text
}

/// The host file a job's krb5.conf includes: `kerberos.krb5_config`, or /etc/krb5.conf. None
/// when the account does not want it, or the file does not exist (an `include` of a missing
/// file makes every Kerberos call fail: "Included profile file could not be read").
pub fn host_include(kcfg: &KerberosConfig, settings: &AccountKerberos) -> Option<PathBuf> {
    if !settings.include_host_config {
        return None;
    }
    let host = kcfg
        .krb5_config
        .clone()
        .unwrap_or_else(|| SYSTEM_KRB5_CONF.into());
    host.is_file().then_some(host)
}

/// Write the job's krb5.conf for `settings` into `dir` (the job's root-owned credentials dir)
/// and return its path.
///
/// Owned by root, mode 0644: the job's clients read it, and only root can change it. Root's
/// own kinit reads this file at every refresh, and a krb5.conf can load plugin modules and
/// name KDCs, so it must not be the job's to write (which a 0600 file owned by the job uid
/// would be). Nothing in it is secret: DC names and the realm.
pub fn write_job_conf(
    kcfg: &KerberosConfig,
    settings: &AccountKerberos,
    dir: &Path,
) -> Result<PathBuf, KerberosError> {
    let path = dir.join(JOB_KRB5_CONF);
    let include = host_include(kcfg, settings);
    if let Some(host) = &include
        && host
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .any(|b| matches!(b, b'\n' | b'\r'))
    {
        return Err(KerberosError::Io {
            context: format!("include {} in {}", host.display(), path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the host krb5.conf's path must not contain a line break",
            ),
        });
    }
    let readable = atomic_file::Options {
        mode: 0o644,
        ..atomic_file::Options::PRIVATE
    };
    atomic_file::write(
        &path,
        render(settings, include.as_deref()).as_bytes(),
        readable,
    )
    .map_err(io_err(format!("write {}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> AccountKerberos {
        toml::from_str(toml_text).unwrap()
    }

    const HEAD: &str = "# Written by p3-executor for one job: realm CORP.EXAMPLE.COM ([accounts.<name>.kerberos]).\n# These settings come first, so they win over the host file included at the end.\n";

    #[test]
    fn renders_the_exact_text_for_each_kind_of_realm() {
        // (account's [kerberos] table, host file to include) → the whole krb5.conf
        let table: [(&str, Option<&str>, String); 4] = [
            // Two DCs tried in order, the host file after them: the AD defaults.
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1.corp.example.com\", \"dc2.corp.example.com:88\"]",
                Some("/etc/krb5.conf"),
                format!(
                    "{HEAD}[libdefaults]\n default_realm = CORP.EXAMPLE.COM\n dns_lookup_realm = false\n dns_lookup_kdc = false\n rdns = false\n canonicalize = false\n udp_preference_limit = 1\n\n[realms]\n CORP.EXAMPLE.COM = {{\n  kdc = dc1.corp.example.com\n  kdc = dc2.corp.example.com:88\n }}\n\ninclude /etc/krb5.conf\n"
                ),
            ),
            // SRV discovery: no [realms] entry, so MIT asks DNS for _kerberos._tcp.<realm>.
            (
                "realm = \"CORP.EXAMPLE.COM\"\ndns_lookup_kdc = true\ninclude_host_config = false",
                None,
                format!(
                    "{HEAD}[libdefaults]\n default_realm = CORP.EXAMPLE.COM\n dns_lookup_realm = false\n dns_lookup_kdc = true\n rdns = false\n canonicalize = false\n udp_preference_limit = 1\n"
                ),
            ),
            // DCs plus DNS for the realms referrals lead to; enctypes; canonicalize and rdns.
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"[2001:db8::10]:88\"]\ndns_lookup_kdc = true\nenctypes = [\"aes256-cts-hmac-sha1-96\", \"aes128-cts-hmac-sha1-96\"]\ncanonicalize = true\nrdns = true",
                Some("/etc/p3-executor/krb5.conf"),
                format!(
                    "{HEAD}[libdefaults]\n default_realm = CORP.EXAMPLE.COM\n dns_lookup_realm = false\n dns_lookup_kdc = true\n rdns = true\n canonicalize = true\n udp_preference_limit = 1\n default_tkt_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96\n default_tgs_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96\n permitted_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96\n\n[realms]\n CORP.EXAMPLE.COM = {{\n  kdc = [2001:db8::10]:88\n }}\n\ninclude /etc/p3-executor/krb5.conf\n"
                ),
            ),
            // One DC, no host file (it did not exist, or include_host_config = false).
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"10.0.0.5\"]",
                None,
                format!(
                    "{HEAD}[libdefaults]\n default_realm = CORP.EXAMPLE.COM\n dns_lookup_realm = false\n dns_lookup_kdc = false\n rdns = false\n canonicalize = false\n udp_preference_limit = 1\n\n[realms]\n CORP.EXAMPLE.COM = {{\n  kdc = 10.0.0.5\n }}\n"
                ),
            ),
        ];
        for (toml_text, include, want) in table {
            let got = render(&settings(toml_text), include.map(Path::new));
            assert_eq!(got, want, "for:\n{toml_text}");
        }
    }

    #[test]
    fn the_include_comes_after_every_section_of_the_account() {
        let s =
            settings("realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1\"]\nenctypes = [\"aes256-cts\"]");
        let text = render(&s, Some(Path::new("/etc/krb5.conf")));
        let include = text.find("\ninclude /etc/krb5.conf\n").unwrap();
        for own in [
            "[libdefaults]",
            "[realms]",
            "kdc = dc1",
            "permitted_enctypes",
        ] {
            assert!(text.find(own).unwrap() < include, "{own} after the include");
        }
        assert!(text.ends_with("include /etc/krb5.conf\n"), "{text}");
    }

    #[test]
    fn the_host_file_is_included_only_when_wanted_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("krb5.conf");
        let kcfg = KerberosConfig {
            krb5_config: Some(host.clone()),
            ..KerberosConfig::default()
        };
        let mut s = settings("realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1\"]");
        assert_eq!(host_include(&kcfg, &s), None, "missing file");
        std::fs::write(&host, "[libdefaults]\n").unwrap();
        assert_eq!(host_include(&kcfg, &s), Some(host.clone()));
        s.include_host_config = false;
        assert_eq!(host_include(&kcfg, &s), None, "not wanted");
    }

    #[test]
    fn the_job_conf_is_root_owned_and_world_readable() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let kcfg = KerberosConfig {
            krb5_config: Some(dir.path().join("absent.conf")),
            ..KerberosConfig::default()
        };
        let s = settings("realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1\"]");
        let path = write_job_conf(&kcfg, &s, dir.path()).unwrap();
        assert_eq!(path, dir.path().join(JOB_KRB5_CONF));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render(&s, None));
    }
}
