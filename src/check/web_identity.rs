//! Web-identity S3 accounts: `prepare` runs the sibling `p3-executor-aws` to call STS, so it
//! must be installed next to this binary. (The settings themselves are validated with the
//! config, by `WebIdentity::problems`.)

use std::path::Path;

use super::finding::{Finding, Severity, finding};
use crate::config::{Config, S3Source};
use crate::credentials::web_identity::SIBLING;

/// An error for every web-identity account when `p3-executor-aws` is not next to `exe`.
pub(super) fn sibling(cfg: &Config, exe: &Path, out: &mut Vec<Finding>) {
    let accounts: Vec<&str> = cfg
        .accounts
        .iter()
        .filter(|(_, a)| {
            a.s3.as_ref()
                .is_some_and(|s3| matches!(s3.source, S3Source::WebIdentity(_)))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if accounts.is_empty() {
        return;
    }
    let sts = exe.with_file_name(SIBLING);
    if !sts.is_file() {
        out.push(finding(
            Severity::Error,
            format!(
                "{} is missing: accounts {} get S3 credentials from STS through it (web_identity), so their grants fail",
                sts.display(),
                accounts.join(", ")
            ),
            "install it next to p3-executor (the package and scripts/install.sh do)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_sibling_is_an_error_only_with_web_identity_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("p3-executor");
        let with = Config::parse(
            "[accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n[accounts.a.s3]\nweb_identity = { role_arn = \"arn:aws:iam::1:role/r\" }\n",
        )
        .unwrap();
        let without = Config::parse("").unwrap();
        let mut out = Vec::new();
        sibling(&without, &exe, &mut out);
        assert!(out.is_empty());
        sibling(&with, &exe, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].problem.contains("accounts a"), "{}", out[0].problem);
        std::fs::write(dir.path().join(SIBLING), "").unwrap();
        out.clear();
        sibling(&with, &exe, &mut out);
        assert!(out.is_empty());
    }
}
