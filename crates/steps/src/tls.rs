//! Which CA certificates the steps' HTTPS clients trust, decided like the AWS tools.
//!
//! The first of these names a PEM bundle that is trusted *instead of* the system store (as
//! the AWS CLI's `--ca-bundle` does): the step's `--ca-bundle`, `AWS_CA_BUNDLE`, the AWS
//! profile's `ca_bundle` (in `AWS_CONFIG_FILE`, profile `AWS_PROFILE`), and for the GitLab
//! API also `CI_SERVER_TLS_CA_FILE` (what GitLab Runner gives a job for a GitLab behind a
//! private CA). Without any, the system store applies, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`. Every certificate error names the CAs that were used.

use std::path::{Path, PathBuf};

/// A CA bundle to trust and where its name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// The PEM file.
    pub(crate) path: PathBuf,
    /// `--ca-bundle`, `AWS_CA_BUNDLE`, `ca_bundle of profile X in FILE`, ...
    pub(crate) source: String,
}

/// Which HTTPS client the trust is for: the GitLab API also honours `CI_SERVER_TLS_CA_FILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum For {
    /// S3 (the AWS SDK).
    S3,
    /// The GitLab API.
    Gitlab,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The bundle to trust, if any: `flag`, `AWS_CA_BUNDLE`, the profile's `ca_bundle`, then (for
/// GitLab) `CI_SERVER_TLS_CA_FILE`.
pub(crate) fn resolve(flag: Option<&Path>, client: For) -> Option<CaBundle> {
    if let Some(p) = flag {
        return Some(CaBundle {
            path: p.to_path_buf(),
            source: "--ca-bundle".into(),
        });
    }
    if let Some(p) = env("AWS_CA_BUNDLE") {
        return Some(CaBundle {
            path: p.into(),
            source: "AWS_CA_BUNDLE".into(),
        });
    }
    if let Some(found) = profile_ca_bundle() {
        return Some(found);
    }
    if client == For::Gitlab
        && let Some(p) = env("CI_SERVER_TLS_CA_FILE")
    {
        return Some(CaBundle {
            path: p.into(),
            source: "CI_SERVER_TLS_CA_FILE".into(),
        });
    }
    None
}

/// `ca_bundle` of the active profile in the AWS config file.
fn profile_ca_bundle() -> Option<CaBundle> {
    let file = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/config")))?;
    // No config file, or one we cannot read: no bundle from it (the AWS tools read it the same).
    let text = std::fs::read_to_string(&file).ok()?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let value = profile_value(&text, &profile, "ca_bundle")?;
    Some(CaBundle {
        path: value.into(),
        source: format!("ca_bundle of profile {profile} in {}", file.display()),
    })
}

/// The value of `key` in `[profile <name>]` (or `[default]`) of an AWS config file (pure).
pub(crate) fn profile_value(text: &str, profile: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            let name = section.strip_prefix("profile ").map_or(section, str::trim);
            inside = name == profile;
            continue;
        }
        if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            let v = v.trim();
            return (!v.is_empty()).then(|| v.to_string());
        }
    }
    None
}

/// The PEM text of `bundle`, checked to hold at least one certificate.
pub(crate) fn load(bundle: &CaBundle) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(&bundle.path).map_err(|e| {
        format!(
            "cannot read the CA bundle {} (from {}): {e}",
            bundle.path.display(),
            bundle.source
        )
    })?;
    // The SDK's TLS setup panics on a PEM block it cannot parse: check it here first.
    let parsed = reqwest::Certificate::from_pem_bundle(&pem);
    if let Err(e) = &parsed {
        return Err(format!(
            "the CA bundle {} (from {}) is not valid PEM: {e}",
            bundle.path.display(),
            bundle.source
        ));
    }
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        || parsed.is_ok_and(|certs| certs.is_empty())
    {
        return Err(format!(
            "the CA bundle {} (from {}) holds no PEM certificate",
            bundle.path.display(),
            bundle.source
        ));
    }
    Ok(pem)
}

/// The CAs in use, for error messages.
pub(crate) fn describe(bundle: Option<&CaBundle>) -> String {
    match bundle {
        Some(b) => format!("the CA bundle {} (from {})", b.path.display(), b.source),
        None => match env("SSL_CERT_FILE") {
            Some(f) => format!("the system's CAs (SSL_CERT_FILE={f})"),
            None => "the system's CAs".into(),
        },
    }
}

/// Whether an error text is about the server's certificate.
pub(crate) fn is_certificate_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    // rustls names some failures by their kind alone (`BadSignature` when a CA of the same
    // name but another key signed the certificate).
    [
        "certificate",
        "unknownissuer",
        "badsignature",
        "notvalidforname",
        "notvalidyet",
        "invalidpurpose",
        "unhandledcriticalextension",
        "applicationverificationfailure",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// The hint appended to a certificate error.
pub(crate) fn certificate_hint(bundle: Option<&CaBundle>) -> String {
    let hint = if bundle.is_some() {
        "is the server's CA in that file?"
    } else {
        "for a private CA set AWS_CA_BUNDLE (or --ca-bundle) to its PEM file"
    };
    format!(
        "the server's certificate is not trusted by {}; {hint}",
        describe(bundle)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_ca_bundle_is_read_from_the_right_section() {
        let text = "[default]\nca_bundle = /d.pem\n\n[profile client_dev]\nregion = x\n  ca_bundle=/dev.pem\n[profile other]\nca_bundle = /o.pem\n";
        assert_eq!(
            profile_value(text, "client_dev", "ca_bundle").as_deref(),
            Some("/dev.pem")
        );
        assert_eq!(
            profile_value(text, "default", "ca_bundle").as_deref(),
            Some("/d.pem")
        );
        assert_eq!(profile_value(text, "none", "ca_bundle"), None);
    }

    #[test]
    fn a_bundle_that_is_not_pem_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n%%% not base64 %%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let b = CaBundle {
            path: path.clone(),
            source: "--ca-bundle".into(),
        };
        let err = load(&b).unwrap_err();
        assert!(
            err.contains("bad.pem (from --ca-bundle) is not valid PEM"),
            "{err}"
        );
        std::fs::write(&path, "nothing here").unwrap();
        assert!(load(&b).unwrap_err().contains("holds no PEM certificate"));
    }

    #[test]
    fn certificate_errors_are_recognised() {
        assert!(is_certificate_error(
            "invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error("Connection refused"));
        assert!(is_certificate_error("io error: BadSignature"));
        let b = CaBundle {
            path: "/ca.pem".into(),
            source: "AWS_CA_BUNDLE".into(),
        };
        assert!(certificate_hint(Some(&b)).contains("/ca.pem (from AWS_CA_BUNDLE)"));
    }
}
