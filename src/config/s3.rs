//! S3 settings and credential sources: `[accounts.<name>.s3]` (a job's S3 access) and
//! `[audit.s3]` (where `audit ship` puts this host's records).
//!
//! The file names a source by one of its keys (`credential_process`, `profile` with
//! `shared_credentials_file`, `web_identity`); parsing settles them into one [`S3Source`],
//! which every consumer matches on. The tables as written are the private `*File` structs of
//! `s3/file.rs`, so the format stays what it was; a table naming no source or two is kept
//! aside and reported by `problems` with its key, like every other problem. The web-identity
//! source's settings are `s3/web_identity.rs`.

mod file;
mod web_identity;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::object_lock::ObjectLockConfig;
use super::{IdentityConfig, Problem};
use file::{
    default_audit_s3_timeout, default_batch_records, default_cleanup_ship_secs,
    default_process_timeout, default_region, default_s3_refresh,
};
pub use web_identity::WebIdentity;

/// Where S3 credentials come from: exactly one source per account. Adding a source is a
/// variant here, its key in `S3Source::settle` (`s3/file.rs`), and the arms the compiler then asks for.
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
}

const NO_SOURCE: &str = "set exactly one of credential_process, profile or web_identity";

/// `[audit.s3]`: where `audit ship` puts this host's records, with the host's own credentials
/// (never a job's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(from = "file::AuditS3File", into = "file::AuditS3File")]
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

/// S3 settings and credential source for an account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(from = "file::S3AccountFile", into = "file::S3AccountFile")]
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
