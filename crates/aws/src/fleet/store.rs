//! The bucket side of the audit trail: an S3 client with the host's own credentials (never a
//! job's) and the few calls shipping and verifying need: list, list versions, get, and a put
//! that never overwrites.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectLockMode as SdkLockMode;
use base64::Engine;
use md5::Digest;

use p3_executor::config::{AuditS3Config, ObjectLockConfig, ObjectLockMode, S3Source};

/// One bucket, with the shipper's client (cheap to clone: the client is shared).
#[derive(Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    /// The bucket.
    pub bucket: String,
}

/// One version of an object, as `ListObjectVersions` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The key.
    pub key: String,
    /// Its version id (`null` in an unversioned bucket).
    pub version_id: Option<String>,
    /// Whether this is the current version.
    pub is_latest: bool,
    /// Whether it is a delete marker (the object was deleted; older versions remain).
    pub delete_marker: bool,
}

/// What a put that never overwrites found.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// The object was created.
    Created,
    /// An object already had the key (412): a crashed or concurrent shipper put it.
    Exists,
}

/// Connection settings: `[audit.s3]`, or, when only an `s3://` URI is known, the defaults with
/// the region and endpoint of the AWS environment variables.
pub fn settings(cfg: Option<&AuditS3Config>, bucket: &str) -> AuditS3Config {
    let mut s = cfg.cloned().unwrap_or_else(|| {
        let mut s = AuditS3Config::for_bucket(bucket);
        if let Ok(region) = std::env::var("AWS_REGION") {
            s.region = region;
        }
        s.endpoint_url = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok();
        s
    });
    s.bucket = bucket.into();
    s
}

impl Store {
    /// A client for `s.bucket` with the host's credentials: `credential_process`, `profile`,
    /// or the SDK's default chain (environment, `~root/.aws`, instance role).
    pub async fn connect(s: &AuditS3Config) -> Result<Store> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(100)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(s.timeout_secs.max(1)))
                    .build(),
            )
            // Content-MD5 is sent by hand (Object Lock puts need it, every S3-compatible
            // server understands it); the SDK's aws-chunked trailers are not understood by all.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(url) = &s.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        match &s.source {
            Some(S3Source::CredentialProcess(argv)) => {
                loader = loader.credentials_provider(process_credentials(argv, s.timeout_secs)?);
            }
            Some(S3Source::Profile { name, file }) => {
                // The same reading of a shared-credentials profile as the executor's own.
                let file = file
                    .clone()
                    .unwrap_or_else(p3_executor::credentials::aws::default_shared_credentials_file);
                let c = p3_executor::credentials::aws::read_profile(&file, name)
                    .map_err(|e| anyhow!("audit.s3: {e}"))?;
                loader = loader.credentials_provider(static_credentials(&c, "audit.s3.profile"));
            }
            // [audit.s3] has no web_identity key: the shipper has no job token to send.
            Some(S3Source::WebIdentity(_)) => {
                return Err(anyhow!("audit.s3: web_identity needs a job's ID token"));
            }
            None => {}
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.path_style)
            .build();
        Ok(Store {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: s.bucket.clone(),
        })
    }

    /// Every key under `prefix`, in key order, after `start_after` if given.
    pub async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_start_after(start_after.map(Into::into))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.failed("list", prefix, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            token = out.next_continuation_token().map(String::from);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Every version and delete marker under `prefix`.
    pub async fn versions(&self, prefix: &str) -> Result<Vec<Version>> {
        let mut all = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .map_err(|e| self.failed("list versions of", prefix, e))?;
            for v in out.versions() {
                all.push(Version {
                    key: v.key().unwrap_or_default().into(),
                    version_id: v.version_id().map(String::from),
                    is_latest: v.is_latest().unwrap_or(true),
                    delete_marker: false,
                });
            }
            for m in out.delete_markers() {
                all.push(Version {
                    key: m.key().unwrap_or_default().into(),
                    version_id: m.version_id().map(String::from),
                    is_latest: m.is_latest().unwrap_or(false),
                    delete_marker: true,
                });
            }
            if out.is_truncated() != Some(true) {
                return Ok(all);
            }
            key_marker = out.next_key_marker().map(String::from);
            version_marker = out.next_version_id_marker().map(String::from);
        }
    }

    /// The current content of `key`.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failed("get", key, e))?;
        let body = out
            .body
            .collect()
            .await
            .with_context(|| format!("read s3://{}/{key}", self.bucket))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Put `body` at `key` unless an object already has that key (`If-None-Match: *`), with
    /// the Object Lock retention of `lock`.
    pub async fn put_new(
        &self,
        key: &str,
        body: Vec<u8>,
        lock: Option<&ObjectLockConfig>,
    ) -> Result<Put> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .content_md5(md5)
            .if_none_match("*")
            .body(ByteStream::from(body));
        if let Some(lock) = lock {
            let until = chrono::Utc::now() + chrono::Duration::days(i64::from(lock.retain_days));
            put = put
                .object_lock_mode(match lock.mode {
                    ObjectLockMode::Governance => SdkLockMode::Governance,
                    ObjectLockMode::Compliance => SdkLockMode::Compliance,
                })
                .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(
                    until.timestamp(),
                ));
        }
        match put.send().await {
            Ok(_) => Ok(Put::Created),
            Err(e) => {
                // 412: the key exists. 409: a concurrent conditional put on the same key is
                // in flight; either way someone else owns it and the caller compares.
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(412) | Some(409)) {
                    Ok(Put::Exists)
                } else {
                    Err(self.failed("put", key, e))
                }
            }
        }
    }

    fn failed<E>(&self, what: &str, key: &str, e: aws_sdk_s3::error::SdkError<E>) -> anyhow::Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let detail = match &e {
            aws_sdk_s3::error::SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                format!(
                    "HTTP {status}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            }
            _ => aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        };
        anyhow!("cannot {what} s3://{}/{key}: {detail}", self.bucket)
    }
}

/// Run the shipper's `credential_process` once (bounded) and hand its keys to the SDK.
/// Run the shipper's `credential_process` once, as the executor runs an account's (without a
/// job ticket), and hand its keys to the SDK.
fn process_credentials(argv: &[String], timeout_secs: u64) -> Result<Credentials> {
    use p3_executor::credentials::aws::{
        DEFAULT_DURATION_SECS, credential_process_argv, run_credential_process,
    };
    let creds = run_credential_process(
        &credential_process_argv(argv, DEFAULT_DURATION_SECS),
        None,
        None,
        DEFAULT_DURATION_SECS,
        Duration::from_secs(timeout_secs.max(1)),
    )
    .map_err(|e| anyhow!("audit.s3.{e}"))?;
    Ok(static_credentials(&creds, "audit.s3.credential_process"))
}

fn static_credentials(
    c: &p3_executor::credentials::aws::S3Credentials,
    source: &'static str,
) -> Credentials {
    Credentials::new(
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
        c.session_token.clone(),
        c.expiration.map(std::time::SystemTime::from),
        source,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::ProvideCredentials;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, body: &str) -> Vec<String> {
        let path = dir.join("creds.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        vec![path.to_string_lossy().into_owned()]
    }

    #[tokio::test]
    async fn the_shippers_credential_process_is_run_like_an_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let argv = script(
            dir.path(),
            r#"echo '{"Version":1,"AccessKeyId":"AKIASHIP","SecretAccessKey":"s3cret"}'"#,
        );
        let creds = process_credentials(&argv, 5).unwrap();
        let got = creds.provide_credentials().await.unwrap();
        assert_eq!(got.access_key_id(), "AKIASHIP");
        // A failure says why (stderr), never what it printed on stdout.
        let argv = script(
            dir.path(),
            "echo s3cret-on-stdout; echo 'no ticket' >&2; exit 3",
        );
        let err = process_credentials(&argv, 5).unwrap_err().to_string();
        assert!(
            err.starts_with("audit.s3.credential_process") && err.contains("no ticket"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}
