//! Keytabs, read to identify them: the SHA-256 fingerprint for the audit log, the principals
//! `klist -k` finds in one, and (the pure [`parse_keytab`]) each entry's principal, key version
//! and encryption type, for `p3-executor check` and for naming the key versions when a DC
//! rejects the key. kinit is the only user of the key material itself; [`keytab_with_kvno`]
//! copies the entries of one key version for `check --probe` (into a root-only temp dir).

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

/// One entry of a keytab: a key of `principal` at version `kvno` for `enctype`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeytabEntry {
    /// `name/instance@REALM`.
    pub principal: String,
    /// The key version number (the 32-bit field when present, else the 8-bit one).
    pub kvno: u32,
    /// The encryption type number (RFC 3961 registry).
    pub enctype: u16,
}

/// The longest keytab read: a keytab is a few hundred bytes per key.
const MAX_KEYTAB: u64 = 1 << 20;

/// The name of an encryption type number, as MIT's tools print it.
pub fn enctype_name(enctype: u16) -> String {
    match enctype {
        16 => "des3-cbc-sha1".into(),
        17 => "aes128-cts-hmac-sha1-96".into(),
        18 => "aes256-cts-hmac-sha1-96".into(),
        19 => "aes128-cts-hmac-sha256-128".into(),
        20 => "aes256-cts-hmac-sha384-192".into(),
        23 => "arcfour-hmac".into(),
        25 => "camellia128-cts-cmac".into(),
        26 => "camellia256-cts-cmac".into(),
        n => format!("enctype {n}"),
    }
}

/// Parse a keytab (format 0x0502, MIT's and AD's): each entry with the byte range of its
/// record (size field included). Holes (negative sizes) are skipped.
pub fn parse_keytab(bytes: &[u8]) -> Result<Vec<(KeytabEntry, std::ops::Range<usize>)>, String> {
    if bytes.len() < 2 || bytes[0] != 5 {
        return Err("is not a keytab (no 0x05 version byte)".into());
    }
    if bytes[1] != 2 {
        return Err(format!(
            "has keytab format 0x05{:02x}; only 0x0502 is read",
            bytes[1]
        ));
    }
    let mut out = Vec::new();
    let mut pos = 2usize;
    while pos + 4 <= bytes.len() {
        let size = i32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        let start = pos;
        pos += 4;
        if size == 0 {
            break;
        }
        let len = size.unsigned_abs() as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("entry at offset {start} runs past the end of the file"))?;
        if size > 0 {
            let entry = parse_entry(&bytes[pos..end])
                .map_err(|why| format!("entry at offset {start}: {why}"))?;
            out.push((entry, start..end));
        }
        pos = end;
    }
    Ok(out)
}

/// Reads big-endian fields of one keytab entry.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| "truncated".to_string())?;
        self.pos += n;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

fn parse_entry(b: &[u8]) -> Result<KeytabEntry, String> {
    let mut c = Cursor { b, pos: 0 };
    let components = c.u16()?;
    let realm = c.string()?;
    let mut names = Vec::new();
    for _ in 0..components {
        names.push(c.string()?);
    }
    c.take(4)?; // name type
    c.take(4)?; // timestamp
    let vno8 = c.take(1)?[0];
    let enctype = c.u16()?;
    let key_len = c.u16()? as usize;
    c.take(key_len)?;
    let kvno = match c.take(4) {
        Ok(v) => match u32::from_be_bytes([v[0], v[1], v[2], v[3]]) {
            0 => u32::from(vno8),
            v => v,
        },
        Err(_) => u32::from(vno8),
    };
    Ok(KeytabEntry {
        principal: format!("{}@{realm}", names.join("/")),
        kvno,
        enctype,
    })
}

/// Read and parse the keytab at `path` (bounded).
pub fn read_keytab(path: &Path) -> Result<Vec<KeytabEntry>, String> {
    let bytes = read_bounded(path)?;
    Ok(parse_keytab(&bytes)?.into_iter().map(|(e, _)| e).collect())
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEYTAB + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_KEYTAB {
        return Err(format!("is larger than {MAX_KEYTAB} bytes"));
    }
    Ok(bytes)
}

/// The key versions of `principal` (configured form, see [`principal_matches`]) the keytab at
/// `path` holds, ascending; empty when it cannot be read.
pub fn keytab_kvnos(path: &Path, principal: &str) -> Vec<u32> {
    let mut kvnos: Vec<u32> = read_keytab(path)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| principal_matches(&e.principal, principal))
        .map(|e| e.kvno)
        .collect();
    kvnos.sort_unstable();
    kvnos.dedup();
    kvnos
}

/// The keytab at `path` with only the entries of key version `kvno` (for `check --probe`).
pub fn keytab_with_kvno(path: &Path, kvno: u32) -> Result<Vec<u8>, String> {
    let bytes = read_bounded(path)?;
    let mut out = bytes[..2].to_vec();
    for (entry, range) in parse_keytab(&bytes)? {
        if entry.kvno == kvno {
            out.extend_from_slice(&bytes[range]);
        }
    }
    Ok(out)
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

    /// One v2 entry, as MIT's ktadd writes it.
    fn entry(names: &[&str], realm: &str, kvno: u32, enctype: u16, key: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend((names.len() as u16).to_be_bytes());
        for s in std::iter::once(&realm).chain(names) {
            e.extend((s.len() as u16).to_be_bytes());
            e.extend(s.as_bytes());
        }
        e.extend(1u32.to_be_bytes());
        e.extend(1_700_000_000u32.to_be_bytes());
        e.push(kvno as u8);
        e.extend(enctype.to_be_bytes());
        e.extend((key.len() as u16).to_be_bytes());
        e.extend(key);
        e.extend(kvno.to_be_bytes());
        let mut out = (e.len() as i32).to_be_bytes().to_vec();
        out.extend(e);
        out
    }

    #[test]
    fn keytab_entries_are_parsed_and_filtered_by_kvno() {
        let mut kt = vec![5u8, 2];
        kt.extend(entry(&["svc"], "R.TEST", 3, 18, &[1; 32]));
        kt.extend((-7i32).to_be_bytes());
        kt.extend([0u8; 7]);
        kt.extend(entry(&["svc"], "R.TEST", 300, 17, &[2; 16]));
        kt.extend(entry(&["host", "a.example"], "R.TEST", 3, 18, &[3; 32]));
        let parsed: Vec<KeytabEntry> = parse_keytab(&kt)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        let want = |p: &str, kvno, enctype| KeytabEntry {
            principal: p.into(),
            kvno,
            enctype,
        };
        assert_eq!(
            parsed,
            vec![
                want("svc@R.TEST", 3, 18),
                want("svc@R.TEST", 300, 17),
                want("host/a.example@R.TEST", 3, 18)
            ]
        );
        assert_eq!(enctype_name(18), "aes256-cts-hmac-sha1-96");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kt");
        fs::write(&path, &kt).unwrap();
        assert_eq!(keytab_kvnos(&path, "svc"), vec![3, 300]);
        let only = keytab_with_kvno(&path, 3).unwrap();
        let kept: Vec<u32> = parse_keytab(&only)
            .unwrap()
            .iter()
            .map(|(e, _)| e.kvno)
            .collect();
        assert_eq!(kept, vec![3, 3]);
        assert!(parse_keytab(b"\x05\x02\x00\x00\x00\x40abc").is_err());
        assert!(parse_keytab(b"garbage").is_err());
    }

    #[test]
    fn principal_without_realm_matches_any_realm() {
        assert!(principal_matches("svc@R", "svc@R"));
        assert!(principal_matches("svc@R", "svc"));
        assert!(!principal_matches("svc@R", "svc@OTHER"));
        assert!(!principal_matches("svc2@R", "svc"));
    }
}
