//! S3 settings and credential sources: `[accounts.<name>.s3]` (a job's S3 access) and
//! `[audit.s3]` (where `audit ship` puts this host's records).
//!
//! The file names a source by one of its keys (`credential_process`, `profile` with
//! `shared_credentials_file`, `web_identity`); parsing settles them into one [`S3Source`],
//! which every consumer matches on. The tables as written are the private `*File` structs
//! below, so the format stays what it was; a table naming no source or two is kept aside and
//! reported by `problems` with its key, like every other problem.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::audit::ObjectLockConfig;
use super::{IdentityConfig, Problem};

/// Where S3 credentials come from: exactly one source per account. Adding a source is a
/// variant here, its key in [`S3Source::settle`], and the arms the compiler then asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum S3Source {
    /// argv of an AWS `credential_process` command, run with the job's KRB5CCNAME. The
    /// credential lifetime the job needs (the same capped duration as its ticket: the time to
    /// the job's deadline plus `kerberos.lifetime_margin_secs`, at most the account's
    /// `ticket_lifetime_secs`) replaces `{duration_secs}` in any argv element and is also in
    /// the process's environment as `P3_CREDENTIAL_DURATION_SECS`, for services that accept a
    /// duration (clamp it to what the service allows, e.g. STS: 900 s and up).
    CredentialProcess(Vec<String>),
    /// A host-side shared-credentials profile.
    Profile {
        /// `profile`: the profile's name.
        name: String,
        /// `shared_credentials_file` (default `~root/.aws/credentials`).
        file: Option<PathBuf>,
    },
    /// STS `AssumeRoleWithWebIdentity` with the job's verified GitLab ID token: no secret on
    /// the host. Accounts only (the shipper has no job token).
    WebIdentity(WebIdentity),
}

impl S3Source {
    /// The source's key in the config, which audit records name it by.
    pub fn key(&self) -> &'static str {
        match self {
            S3Source::CredentialProcess(_) => "credential_process",
            S3Source::Profile { .. } => "profile",
            S3Source::WebIdentity(_) => "web_identity",
        }
    }

    /// The source the file's keys name (the first, in the order of the keys above), and every
    /// source key it named: more than one is a problem the caller reports with its key.
    /// `shared_credentials_file` only belongs to a profile and is ignored otherwise, as always.
    fn settle(keys: SourceKeys) -> (Option<S3Source>, Vec<&'static str>) {
        let SourceKeys {
            credential_process,
            profile,
            shared_credentials_file,
            web_identity,
        } = keys;
        let named = [
            credential_process.map(S3Source::CredentialProcess),
            profile.map(|name| S3Source::Profile {
                name,
                file: shared_credentials_file,
            }),
            web_identity.map(S3Source::WebIdentity),
        ];
        let named: Vec<S3Source> = named.into_iter().flatten().collect();
        let keys = named.iter().map(S3Source::key).collect();
        (named.into_iter().next(), keys)
    }

    /// The file's keys for this source.
    fn keys(source: Option<&S3Source>) -> SourceKeys {
        let mut keys = SourceKeys::default();
        match source {
            None => {}
            Some(S3Source::CredentialProcess(argv)) => keys.credential_process = Some(argv.clone()),
            Some(S3Source::Profile { name, file }) => {
                keys.profile = Some(name.clone());
                keys.shared_credentials_file = file.clone();
            }
            Some(S3Source::WebIdentity(wi)) => keys.web_identity = Some(wi.clone()),
        }
        keys
    }
}

/// The keys that name a source, as the file spells them.
#[derive(Default)]
struct SourceKeys {
    credential_process: Option<Vec<String>>,
    profile: Option<String>,
    shared_credentials_file: Option<PathBuf>,
    web_identity: Option<WebIdentity>,
}

const NO_SOURCE: &str = "set exactly one of credential_process, profile or web_identity";

/// `[audit.s3]`: where `audit ship` puts this host's records, with the host's own credentials
/// (never a job's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(from = "AuditS3File", into = "AuditS3File")]
pub struct AuditS3Config {
    /// The bucket (created with Object Lock enabled, so versioned).
    pub bucket: String,
    /// Key prefix; objects are `<prefix>/<host-id>/<chain>/<first_seq>-<last_seq>.jsonl`.
    pub prefix: String,
    /// AWS region.
    pub region: String,
    /// Endpoint URL for S3-compatible stores (MinIO, Ceph RGW).
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    pub path_style: bool,
    /// The shipper's credentials: a `credential_process` or a `profile` (the file has no
    /// `web_identity` key here: no job token); None: the SDK's default chain (environment,
    /// `~root/.aws`, instance role).
    pub source: Option<S3Source>,
    /// Every source key the file named (more than one is a problem).
    named: Vec<&'static str>,
    /// Object Lock retention for every shipped batch. Without it objects are only protected
    /// by the conditional put and the chain; with COMPLIANCE not even the bucket owner can
    /// shorten it.
    pub object_lock: Option<ObjectLockConfig>,
    /// At most this many records per object.
    pub batch_records: u64,
    /// Bound of the opportunistic ship at the end of `cleanup` (0: do not ship from cleanup).
    pub cleanup_ship_secs: f64,
    /// Upper bound on each S3 call.
    pub timeout_secs: u64,
}

/// `[audit.s3]` as the file spells it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AuditS3File {
    bucket: String,
    #[serde(default = "default_audit_prefix")]
    prefix: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default)]
    endpoint_url: Option<String>,
    #[serde(default)]
    path_style: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credential_process: Option<Vec<String>>,
    #[serde(default)]
    object_lock: Option<ObjectLockConfig>,
    #[serde(default = "default_batch_records")]
    batch_records: u64,
    #[serde(default = "default_cleanup_ship_secs")]
    cleanup_ship_secs: f64,
    #[serde(default = "default_audit_s3_timeout")]
    timeout_secs: u64,
}

impl From<AuditS3File> for AuditS3Config {
    fn from(t: AuditS3File) -> Self {
        let (source, named) = S3Source::settle(SourceKeys {
            credential_process: t.credential_process,
            profile: t.profile,
            shared_credentials_file: t.shared_credentials_file,
            web_identity: None,
        });
        Self {
            bucket: t.bucket,
            prefix: t.prefix,
            region: t.region,
            endpoint_url: t.endpoint_url,
            path_style: t.path_style,
            source,
            named,
            object_lock: t.object_lock,
            batch_records: t.batch_records,
            cleanup_ship_secs: t.cleanup_ship_secs,
            timeout_secs: t.timeout_secs,
        }
    }
}

impl From<AuditS3Config> for AuditS3File {
    fn from(c: AuditS3Config) -> Self {
        let keys = S3Source::keys(c.source.as_ref());
        Self {
            bucket: c.bucket,
            prefix: c.prefix,
            region: c.region,
            endpoint_url: c.endpoint_url,
            path_style: c.path_style,
            profile: keys.profile,
            shared_credentials_file: keys.shared_credentials_file,
            credential_process: keys.credential_process,
            object_lock: c.object_lock,
            batch_records: c.batch_records,
            cleanup_ship_secs: c.cleanup_ship_secs,
            timeout_secs: c.timeout_secs,
        }
    }
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
            source: None,
            named: Vec::new(),
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
#[serde(from = "S3AccountFile", into = "S3AccountFile")]
pub struct S3Account {
    /// AWS region (S3-compatible stores usually accept `us-east-1`).
    pub region: String,
    /// Endpoint URL for S3-compatible stores.
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    pub path_style: bool,
    /// Where the job's credentials come from.
    pub source: S3Source,
    /// Every source key the file named (none or more than one is a problem).
    named: Vec<&'static str>,
    /// Refresh credentials expiring within this many seconds before each run stage.
    pub refresh_threshold_secs: u64,
    /// Upper bound on the credential_process call.
    pub timeout_secs: u64,
}

/// `[accounts.<name>.s3]` as the file spells it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct S3AccountFile {
    #[serde(default = "default_region")]
    region: String,
    #[serde(default)]
    endpoint_url: Option<String>,
    #[serde(default)]
    path_style: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credential_process: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    web_identity: Option<WebIdentity>,
    #[serde(default = "default_s3_refresh")]
    refresh_threshold_secs: u64,
    #[serde(default = "default_process_timeout")]
    timeout_secs: u64,
}

/// The infallible part of resolving the table: the source keys become one [`S3Source`] (a
/// table naming none gets an empty `credential_process`, which [`S3Account::problems`]
/// reports as the missing source, so no loaded config has it).
impl From<S3AccountFile> for S3Account {
    fn from(t: S3AccountFile) -> Self {
        let (source, named) = S3Source::settle(SourceKeys {
            credential_process: t.credential_process,
            profile: t.profile,
            shared_credentials_file: t.shared_credentials_file,
            web_identity: t.web_identity,
        });
        Self {
            region: t.region,
            endpoint_url: t.endpoint_url,
            path_style: t.path_style,
            source: source.unwrap_or(S3Source::CredentialProcess(Vec::new())),
            named,
            refresh_threshold_secs: t.refresh_threshold_secs,
            timeout_secs: t.timeout_secs,
        }
    }
}

impl From<S3Account> for S3AccountFile {
    fn from(a: S3Account) -> Self {
        let source = (!a.named.is_empty()).then_some(&a.source);
        let keys = S3Source::keys(source);
        Self {
            region: a.region,
            endpoint_url: a.endpoint_url,
            path_style: a.path_style,
            credential_process: keys.credential_process,
            profile: keys.profile,
            shared_credentials_file: keys.shared_credentials_file,
            web_identity: keys.web_identity,
            refresh_threshold_secs: a.refresh_threshold_secs,
            timeout_secs: a.timeout_secs,
        }
    }
}

impl S3Account {
    /// An account with `source` and every other setting at its default.
    pub fn new(source: S3Source) -> Self {
        Self {
            region: default_region(),
            endpoint_url: None,
            path_style: false,
            named: vec![source.key()],
            source,
            refresh_threshold_secs: default_s3_refresh(),
            timeout_secs: default_process_timeout(),
        }
    }

    /// Problems with `[accounts.<account>.s3]`: exactly one credential source, and that
    /// source's own settings.
    pub fn problems(&self, account: &str, identity: &IdentityConfig) -> Vec<Problem> {
        let key = format!("accounts.{account}.s3");
        let mut problems = Vec::new();
        if self.named.len() != 1 {
            problems.push(Problem::new(&key, NO_SOURCE));
        }
        if self.named.is_empty() {
            return problems;
        }
        match &self.source {
            S3Source::CredentialProcess(argv) if argv.is_empty() => {
                problems.push(Problem::new(
                    format!("{key}.credential_process"),
                    "is empty: give the command and its arguments",
                ));
            }
            S3Source::CredentialProcess(_) | S3Source::Profile { .. } => {}
            S3Source::WebIdentity(wi) => problems.extend(wi.problems(account, identity)),
        }
        problems
    }
}

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
        if self.named.len() > 1 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn account(keys: &str) -> S3Account {
        toml::from_str(keys).unwrap()
    }

    fn problems(keys: &str) -> Vec<String> {
        let identity: IdentityConfig = toml::from_str("").unwrap();
        account(keys)
            .problems("a", &identity)
            .iter()
            .map(Problem::to_string)
            .collect()
    }

    #[test]
    fn each_source_key_settles_into_its_variant() {
        let role = r#"web_identity = { role_arn = "arn:aws:iam::1:role/r" }"#;
        // (the table's source keys, the source)
        let table = [
            (
                r#"credential_process = ["get-creds", "--job"]"#,
                S3Source::CredentialProcess(vec!["get-creds".into(), "--job".into()]),
            ),
            (
                r#"profile = "uat""#,
                S3Source::Profile {
                    name: "uat".into(),
                    file: None,
                },
            ),
            (
                "profile = \"uat\"\nshared_credentials_file = \"/etc/aws/creds\"",
                S3Source::Profile {
                    name: "uat".into(),
                    file: Some("/etc/aws/creds".into()),
                },
            ),
            (
                role,
                S3Source::WebIdentity(WebIdentity {
                    role_arn: "arn:aws:iam::1:role/r".into(),
                    audience: None,
                    token_variable: None,
                    duration_secs: None,
                    sts_endpoint_url: None,
                }),
            ),
        ];
        for (keys, want) in table {
            let a = account(keys);
            assert_eq!(a.source, want, "{keys}");
            assert_eq!(problems(keys), Vec::<String>::new(), "{keys}");
            // Written back, the table has the same keys: the file format is unchanged.
            let back: toml::Table = toml::from_str(&toml::to_string(&a).unwrap()).unwrap();
            let keys: toml::Table = toml::from_str(keys).unwrap();
            for (k, v) in keys {
                assert_eq!(back.get(&k), Some(&v), "{k}");
            }
        }
    }

    #[test]
    fn a_table_naming_no_source_or_two_is_a_problem_with_its_key() {
        let two = "set exactly one of credential_process, profile or web_identity";
        // (the table's source keys, the problems)
        let table = [
            ("region = \"eu-west-1\"".to_string(), vec![format!("accounts.a.s3: {two}")]),
            (
                "profile = \"x\"\ncredential_process = [\"y\"]".to_string(),
                vec![format!("accounts.a.s3: {two}")],
            ),
            (
                "credential_process = []".to_string(),
                vec!["accounts.a.s3.credential_process: is empty: give the command and its arguments"
                    .to_string()],
            ),
        ];
        for (keys, want) in table {
            assert_eq!(problems(&keys), want, "{keys}");
        }
        // The shipper's source is optional (the SDK's chain), one at most, never web_identity.
        let audit = |keys: &str| -> Result<AuditS3Config, String> {
            toml::from_str(&format!("bucket = \"b\"\n{keys}")).map_err(|e| e.to_string())
        };
        assert_eq!(audit("").unwrap().source, None);
        assert_eq!(
            audit("profile = \"ship\"").unwrap().source,
            Some(S3Source::Profile {
                name: "ship".into(),
                file: None
            })
        );
        let both = audit("profile = \"p\"\ncredential_process = [\"c\"]").unwrap();
        assert_eq!(
            both.problems(),
            [Problem::new(
                "audit.s3",
                "profile and credential_process contradict each other: keep one"
            )]
        );
        let err = audit("web_identity = { role_arn = \"arn:aws:iam::1:role/r\" }").unwrap_err();
        assert!(err.contains("unknown field `web_identity`"), "{err}");
    }
}
