//! Keytabs, read only to identify them: the SHA-256 fingerprint for the audit log, and the
//! principals `klist -k` finds in one (for `p3-executor check`). kinit is the only reader of
//! the key material itself.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::KerberosError;
use super::tool::run_tool;
use crate::config::KerberosConfig;

/// SHA-256 (hex) of a keytab file, for the audit log: identifies which key material granted a
/// ticket without revealing it.
pub fn keytab_fingerprint(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The distinct principals a keytab holds keys for (`klist -k`), in file order.
pub fn keytab_principals(
    kcfg: &KerberosConfig,
    keytab: &Path,
) -> Result<Vec<String>, KerberosError> {
    let mut name = OsString::from("FILE:");
    name.push(keytab.as_os_str());
    let what = format!("-k {}", keytab.display());
    let out = run_tool(kcfg, &kcfg.klist, "klist", vec!["-k".into(), name], &what)?;
    if !out.status.success() {
        return Err(KerberosError::Tool {
            tool: "klist".into(),
            what,
            code: out.status.code().unwrap_or(-1),
            stderr: out.stderr_text(),
        });
    }
    Ok(parse_klist_keytab(&String::from_utf8_lossy(&out.stdout)))
}

/// Parse `klist -k` output: after the dashed header line, each line is `KVNO PRINCIPAL`.
fn parse_klist_keytab(text: &str) -> Vec<String> {
    let mut principals: Vec<String> = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("----"))
        .skip(1)
    {
        let line = line.trim();
        let Some((kvno, principal)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if kvno.parse::<u32>().is_err() {
            continue;
        }
        let principal = principal.trim().to_string();
        if !principal.is_empty() && !principals.contains(&principal) {
            principals.push(principal);
        }
    }
    principals
}

/// `svc@REALM` matches `svc@REALM`; a configured principal without a realm matches any realm
/// (kinit appended the default one).
pub(crate) fn principal_matches(actual: &str, configured: &str) -> bool {
    if configured.contains('@') {
        actual == configured
    } else {
        actual.split('@').next() == Some(configured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klist_keytab_output_is_parsed_and_deduplicated() {
        let text = "Keytab name: FILE:/tmp/x.keytab\nKVNO Principal\n---- ---------------------\n   2 svc@TEST.REALM\n   2 svc@TEST.REALM\n   3 host/a.example@TEST.REALM\n";
        assert_eq!(
            parse_klist_keytab(text),
            vec!["svc@TEST.REALM", "host/a.example@TEST.REALM"]
        );
        assert!(parse_klist_keytab("Keytab name: FILE:/x\nKVNO Principal\n---- ----\n").is_empty());
    }

    #[test]
    fn principal_without_realm_matches_any_realm() {
        assert!(principal_matches("svc@R", "svc@R"));
        assert!(principal_matches("svc@R", "svc"));
        assert!(!principal_matches("svc@R", "svc@OTHER"));
        assert!(!principal_matches("svc2@R", "svc"));
    }
}
