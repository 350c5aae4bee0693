//! `web_identity = { ... }`: the web-identity source's settings and their checks.

use serde::{Deserialize, Serialize};

use super::{IdentityConfig, Problem};

/// `web_identity = { role_arn = "...", ... }` of `[accounts.<name>.s3]`: temporary credentials
/// from STS `AssumeRoleWithWebIdentity` (AWS, MinIO, Ceph RGW), obtained in `prepare` with
/// the job's GitLab ID token and refreshed like any other S3 credentials.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebIdentity {
    /// The role to assume; its trust policy names GitLab as the OIDC provider.
    pub role_arn: String,
    /// The `aud` the STS expects, when it is not `identity.audience`: the job then supplies a
    /// second `id_tokens:` entry with it, in `token_variable`.
    #[serde(default)]
    pub audience: Option<String>,
    /// The job variable of that second token (verified like the identity token, against
    /// `audience`). Without it the identity token prepare verified is sent.
    #[serde(default)]
    pub token_variable: Option<String>,
    /// The longest session to ask for: the role's maximum session duration (STS refuses
    /// more). Default 3600, STS's default maximum; the job's own duration is clamped to
    /// 900 (STS's minimum) ..= this.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// STS endpoint; default the account's `endpoint_url` (MinIO and Ceph RGW serve STS
    /// there), or AWS's regional STS when neither is set.
    #[serde(default)]
    pub sts_endpoint_url: Option<String>,
}

impl WebIdentity {
    /// STS's shortest session.
    pub const MIN_DURATION_SECS: u64 = 900;
    /// STS's longest role session (a role's maximum session duration is at most 12 hours).
    pub const MAX_DURATION_SECS: u64 = 43_200;
    /// The longest session asked for when `duration_secs` is not set: STS's default maximum.
    pub const DEFAULT_MAX_DURATION_SECS: u64 = 3600;

    /// Problems with these settings, each naming its key under `accounts.<account>.s3`.
    pub fn problems(&self, account: &str, identity: &IdentityConfig) -> Vec<Problem> {
        let key = |k: &str| format!("accounts.{account}.s3.web_identity.{k}");
        let mut problems = Vec::new();
        let arn = self.role_arn.as_str();
        if !arn.starts_with("arn:")
            || arn.split(':').count() < 6
            || arn.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push(Problem::new(
                key("role_arn"),
                format!(
                    "{arn:?} is not a role ARN (e.g. arn:aws:iam::123456789012:role/gitlab-deploy)"
                ),
            ));
        }
        if let Some(d) = self.duration_secs
            && !(Self::MIN_DURATION_SECS..=Self::MAX_DURATION_SECS).contains(&d)
        {
            problems.push(Problem::new(
                key("duration_secs"),
                format!(
                    "{d} is outside what STS accepts ({}..={})",
                    Self::MIN_DURATION_SECS,
                    Self::MAX_DURATION_SECS
                ),
            ));
        }
        match (&self.token_variable, &self.audience) {
            (Some(var), _) if !is_variable_name(var) => problems.push(Problem::new(
                key("token_variable"),
                format!("{var:?} is not a CI variable name (letters, digits, '_')"),
            )),
            (Some(var), _) if *var == identity.token_variable => problems.push(Problem::new(
                key("token_variable"),
                format!("{var:?} is identity.token_variable: leave token_variable out to send the identity token"),
            )),
            (Some(_), None) => problems.push(Problem::new(
                key("audience"),
                "missing: token_variable needs it, the aud the STS expects of that token",
            )),
            (None, Some(aud)) if *aud != identity.audience => problems.push(Problem::new(
                key("audience"),
                format!(
                    "{aud:?} needs token_variable: without it the identity token (aud {:?}) is sent",
                    identity.audience
                ),
            )),
            _ => {}
        }
        if matches!(&self.audience, Some(a) if a.trim().is_empty()) {
            problems.push(Problem::new(key("audience"), "is empty"));
        }
        if let Some(url) = &self.sts_endpoint_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            problems.push(Problem::new(
                key("sts_endpoint_url"),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        problems
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
