//! `[accounts.<name>.s3]` and `[audit.s3]` as the file spells them, and the infallible part of
//! resolving them: the source keys settle into one [`S3Source`] (a table naming none or two is
//! kept aside for `problems`, so the format stays what it was and every problem is reported
//! with its key).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AuditS3Config, ObjectLockConfig, S3Account, S3Source, WebIdentity};

impl S3Source {
    /// The source the file's keys name (the first, in the order of the keys above), and every
    /// source key it named: more than one is a problem the caller reports with its key.
    /// `shared_credentials_file` only belongs to a profile and is ignored otherwise, as always.
    pub(super) fn settle(keys: SourceKeys) -> (Option<S3Source>, Vec<&'static str>) {
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
    pub(super) fn keys(source: Option<&S3Source>) -> SourceKeys {
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
pub(super) struct SourceKeys {
    pub(super) credential_process: Option<Vec<String>>,
    profile: Option<String>,
    pub(super) shared_credentials_file: Option<PathBuf>,
    web_identity: Option<WebIdentity>,
}

/// `[audit.s3]` as the file spells it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditS3File {
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
    pub(super) profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) shared_credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) credential_process: Option<Vec<String>>,
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

/// `[accounts.<name>.s3]` as the file spells it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct S3AccountFile {
    #[serde(default = "default_region")]
    region: String,
    #[serde(default)]
    endpoint_url: Option<String>,
    #[serde(default)]
    path_style: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) credential_process: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) shared_credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) web_identity: Option<WebIdentity>,
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

pub(super) fn default_audit_prefix() -> String {
    "p3-executor-audit".into()
}
pub(super) fn default_batch_records() -> u64 {
    1000
}
pub(super) fn default_cleanup_ship_secs() -> f64 {
    2.0
}
pub(super) fn default_audit_s3_timeout() -> u64 {
    30
}
pub(super) fn default_region() -> String {
    "us-east-1".into()
}
pub(super) fn default_s3_refresh() -> u64 {
    600
}
pub(super) fn default_process_timeout() -> u64 {
    30
}
