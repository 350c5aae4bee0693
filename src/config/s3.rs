//! S3 settings and credential sources: `[accounts.<name>.s3]` (a job's S3 access) and
//! `[audit.s3]` (where `audit ship` puts this host's records).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::audit::ObjectLockConfig;
use super::{IdentityConfig, Problem};

/// `[audit.s3]`: where `audit ship` puts this host's records, with the host's own credentials
/// (never a job's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditS3Config {
    /// The bucket (created with Object Lock enabled, so versioned).
    pub bucket: String,
    /// Key prefix; objects are `<prefix>/<host-id>/<chain>/<first_seq>-<last_seq>.jsonl`.
    #[serde(default = "default_audit_prefix")]
    pub prefix: String,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL for S3-compatible stores (MinIO, Ceph RGW).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    #[serde(default)]
    pub path_style: bool,
    /// Host-side shared-credentials profile (from `shared_credentials_file`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Host-side shared-credentials file for `profile` (default `~root/.aws/credentials`).
    #[serde(default)]
    pub shared_credentials_file: Option<PathBuf>,
    /// argv of an AWS `credential_process` for the shipper (alternative to `profile`).
    #[serde(default)]
    pub credential_process: Option<Vec<String>>,
    /// Object Lock retention for every shipped batch. Without it objects are only protected
    /// by the conditional put and the chain; with COMPLIANCE not even the bucket owner can
    /// shorten it.
    #[serde(default)]
    pub object_lock: Option<ObjectLockConfig>,
    /// At most this many records per object.
    #[serde(default = "default_batch_records")]
    pub batch_records: u64,
    /// Bound of the opportunistic ship at the end of `cleanup` (0: do not ship from cleanup).
    #[serde(default = "default_cleanup_ship_secs")]
    pub cleanup_ship_secs: f64,
    /// Upper bound on each S3 call.
    #[serde(default = "default_audit_s3_timeout")]
    pub timeout_secs: u64,
}

impl AuditS3Config {
    /// The settings for reading `bucket` when the config has no `[audit.s3]` (an auditor's
    /// `audit verify --s3`): every key at its default, credentials from the default chain.
    pub fn for_bucket(bucket: &str) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            region: default_region(),
            endpoint_url: None,
            path_style: false,
            profile: None,
            shared_credentials_file: None,
            credential_process: None,
            object_lock: None,
            batch_records: default_batch_records(),
            cleanup_ship_secs: default_cleanup_ship_secs(),
            timeout_secs: default_audit_s3_timeout(),
        }
    }
}

fn default_audit_prefix() -> String {
    "p3-executor-audit".into()
}
fn default_batch_records() -> u64 {
    1000
}
fn default_cleanup_ship_secs() -> f64 {
    2.0
}
fn default_audit_s3_timeout() -> u64 {
    30
}

/// S3 settings and credential source for an account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Account {
    /// AWS region (S3-compatible stores usually accept `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL for S3-compatible stores.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    #[serde(default)]
    pub path_style: bool,
    /// argv of an AWS `credential_process` command, run with the job's KRB5CCNAME. The
    /// credential lifetime the job needs (the same capped duration as its ticket: the time to
    /// the job's deadline plus `kerberos.lifetime_margin_secs`, at most the account's
    /// `ticket_lifetime_secs`) replaces `{duration_secs}` in any argv element and is also in
    /// the process's environment as `P3_CREDENTIAL_DURATION_SECS`, for services that accept a
    /// duration (clamp it to what the service allows, e.g. STS: 900 s and up).
    #[serde(default)]
    pub credential_process: Option<Vec<String>>,
    /// Host-side shared-credentials profile (alternative to `credential_process`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Host-side shared-credentials file for `profile` (default `~root/.aws/credentials`).
    #[serde(default)]
    pub shared_credentials_file: Option<PathBuf>,
    /// STS `AssumeRoleWithWebIdentity` with the job's verified GitLab ID token (alternative to
    /// `credential_process` and `profile`: no secret on the host).
    #[serde(default)]
    pub web_identity: Option<WebIdentity>,
    /// Refresh credentials expiring within this many seconds before each run stage.
    #[serde(default = "default_s3_refresh")]
    pub refresh_threshold_secs: u64,
    /// Upper bound on the credential_process call.
    #[serde(default = "default_process_timeout")]
    pub timeout_secs: u64,
}

/// `web_identity = { role_arn = "...", ... }` of `[accounts.<name>.s3]`: temporary credentials
/// from STS `AssumeRoleWithWebIdentity` (AWS, MinIO, Ceph RGW), obtained in `prepare` with
/// the job's GitLab ID token and refreshed like any other S3 credentials.
#[derive(Debug, Clone, Deserialize, Serialize)]
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

impl S3Account {
    /// Problems with `[accounts.<account>.s3]`: exactly one credential source, and that
    /// source's own settings.
    pub fn problems(&self, account: &str, identity: &IdentityConfig) -> Vec<Problem> {
        let key = format!("accounts.{account}.s3");
        let mut problems = Vec::new();
        let sources = [
            self.credential_process.is_some(),
            self.profile.is_some(),
            self.web_identity.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            problems.push(Problem::new(
                &key,
                "set exactly one of credential_process, profile or web_identity",
            ));
        }
        if let Some(wi) = &self.web_identity {
            problems.extend(wi.problems(account, identity));
        }
        if matches!(&self.credential_process, Some(argv) if argv.is_empty()) {
            problems.push(Problem::new(
                format!("{key}.credential_process"),
                "is empty: give the command and its arguments",
            ));
        }
        problems
    }
}

impl AuditS3Config {
    /// Problems with `[audit.s3]`.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.bucket.is_empty() || self.bucket.contains('/') {
            problems.push(Problem::new(
                "audit.s3.bucket",
                format!(
                    "{:?} is not a bucket name (the key prefix goes in audit.s3.prefix)",
                    self.bucket
                ),
            ));
        }
        if self.profile.is_some() && self.credential_process.is_some() {
            problems.push(Problem::new(
                "audit.s3",
                "profile and credential_process contradict each other: keep one",
            ));
        }
        if self.batch_records == 0 {
            problems.push(Problem::new("audit.s3.batch_records", "must be at least 1"));
        }
        if !(self.cleanup_ship_secs >= 0.0 && self.cleanup_ship_secs <= 60.0) {
            problems.push(Problem::new(
                "audit.s3.cleanup_ship_secs",
                format!(
                    "{} must be between 0 (off) and 60: it delays every job's cleanup",
                    self.cleanup_ship_secs
                ),
            ));
        }
        if self
            .object_lock
            .as_ref()
            .is_some_and(|l| l.retain_days == 0)
        {
            problems.push(Problem::new(
                "audit.s3.object_lock.retain_days",
                "must be at least 1",
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

fn default_region() -> String {
    "us-east-1".into()
}
fn default_s3_refresh() -> u64 {
    600
}
fn default_process_timeout() -> u64 {
    30
}
