//! Per-job S3 credentials: obtained on the host, handed to the job as AWS config files.
//!
//! `prepare` calls [`retrieve`] (an AWS `credential_process` run with the job's Kerberos ticket,
//! or a host-side shared-credentials profile; a `web_identity` account goes through
//! [`super::web_identity`] instead) and [`write_job_files`], which writes an AWS
//! config and credentials file into the job's root-owned credentials directory and returns the
//! environment that points the AWS CLI, boto3, the SDKs and `p3-executor s3` at them. Before
//! each run stage [`needs_refresh`] decides whether to do both again; cleanup calls
//! [`remove_job_files`].
//!
//! Secrets appear in exactly two places: the [`S3Credentials`] value and the 0600 file owned by
//! the job user. They are never formatted into errors, logs or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use p3_contract::env;
use serde::Deserialize;

use crate::command::{CommandError, run_bounded};
use crate::config::{S3Account, S3Source};

/// Name of the AWS config file written into the job's credentials directory.
pub const CONFIG_FILE: &str = "aws-config";
/// Name of the AWS shared-credentials file written into the job's credentials directory.
pub const CREDENTIALS_FILE: &str = "aws-credentials";
/// Set for jobs whose S3 endpoint wants path-style addressing (read by the s3 step).
pub use p3_contract::env::S3_PATH_STYLE as PATH_STYLE_ENV;
/// Placeholder in a `credential_process` argv element replaced by the credential lifetime the
/// job needs, in seconds (e.g. `"--duration-seconds={duration_secs}"`).
pub const DURATION_PLACEHOLDER: &str = "{duration_secs}";
/// The duration a credential process is asked for.
pub use p3_contract::env::CREDENTIAL_DURATION_SECS as DURATION_ENV;
/// Duration asked for when nothing bounds it (no job timeout and no ticket lifetime), and by
/// [`retrieve`]: one hour, the usual default of temporary AWS credentials.
pub const DEFAULT_DURATION_SECS: u64 = 3600;

/// Temporary AWS credentials for one job.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// Access key id (not secret on its own, but still only shown redacted).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// When the credentials stop working (None: they do not expire).
    pub expiration: Option<DateTime<Utc>>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key id prefix (AKIA/ASIA) helps tell long-term from temporary keys; the rest
        // stays hidden so a debug log never carries a usable credential.
        let prefix: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("S3Credentials")
            .field("access_key_id", &format_args!("{prefix}…"))
            .field("secret_access_key", &format_args!("<redacted>"))
            .field(
                "session_token",
                &format_args!(
                    "{}",
                    if self.session_token.is_some() {
                        "<redacted>"
                    } else {
                        "None"
                    }
                ),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// Why S3 credentials could not be obtained or handed over. No variant carries a secret or
/// the credential process's stdout.
#[derive(Debug, thiserror::Error)]
pub enum AwsCredError {
    /// The `credential_process` argv is empty (the config refuses it; a direct caller may not).
    #[error(
        "S3 account has no credential source (set credential_process, profile or web_identity)"
    )]
    NoSource,
    /// A `web_identity` account's credentials need the job's verified token: they are
    /// obtained by `credentials::web_identity`, not by [`retrieve`].
    #[error("S3 account uses web_identity: its credentials are obtained with the job's ID token")]
    NeedsJobToken,
    /// A sibling binary the executor runs is missing.
    #[error(
        "{program} is not installed next to p3-executor (the package and scripts/install.sh put it there)"
    )]
    MissingSibling {
        /// The binary's name.
        program: &'static str,
    },
    /// The credential process could not be started or timed out.
    #[error("credential_process: {0}")]
    Command(#[from] CommandError),
    /// The credential process exited non-zero.
    #[error("credential_process {program} failed ({status}): {stderr}")]
    ProcessFailed {
        /// Program run.
        program: String,
        /// Exit status.
        status: String,
        /// Its stderr (stdout may hold secrets and is never shown).
        stderr: String,
    },
    /// The credential process printed something that is not the documented JSON.
    #[error("credential_process {program} printed invalid credentials: {reason}")]
    InvalidOutput {
        /// Program run.
        program: String,
        /// What is wrong, without quoting the output.
        reason: String,
    },
    /// The host-side shared-credentials file or profile is unusable.
    #[error("shared credentials file {}, profile {profile}: {reason}", file.display())]
    Profile {
        /// File read.
        file: PathBuf,
        /// Profile asked for.
        profile: String,
        /// What is wrong.
        reason: String,
    },
    /// The credentials had already expired when obtained.
    #[error("S3 credentials from {source_name} expired at {expiration}")]
    Expired {
        /// `credential_process`, `profile` or `web_identity`.
        source_name: &'static str,
        /// Their expiry.
        expiration: DateTime<Utc>,
    },
    /// Writing or removing the job's files failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<AwsCredError> for crate::error::Error {
    fn from(e: AwsCredError) -> Self {
        crate::error::Error::Credentials(e.to_string())
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AwsCredError {
    let context = context.into();
    move |source| AwsCredError::Io { context, source }
}

/// Obtain the account's S3 credentials on the host, asking a credential process for
/// [`DEFAULT_DURATION_SECS`] (see [`retrieve_with_duration`]).
pub fn retrieve(
    account: &S3Account,
    krb5ccname: Option<&str>,
    krb5_config: Option<&Path>,
) -> Result<S3Credentials, AwsCredError> {
    retrieve_with_duration(account, krb5ccname, krb5_config, DEFAULT_DURATION_SECS)
}

/// Obtain the account's S3 credentials on the host, for a job that needs them for
/// `duration_secs` (its ticket's capped lifetime).
///
/// `credential_process` runs with its argv (no shell), bounded by `timeout_secs`, with
/// `KRB5CCNAME` (and `KRB5_CONFIG`) set to the job's ticket so an internal credential service
/// can authenticate the job's account; without a ticket, `KRB5CCNAME` is removed so the process
/// cannot fall back to the executor's own cache. `{duration_secs}` in its argv and
/// `P3_CREDENTIAL_DURATION_SECS` in its environment carry `duration_secs`, for services that
/// accept a duration. A host profile's credentials are what they are.
pub fn retrieve_with_duration(
    account: &S3Account,
    krb5ccname: Option<&str>,
    krb5_config: Option<&Path>,
    duration_secs: u64,
) -> Result<S3Credentials, AwsCredError> {
    let creds = match &account.source {
        S3Source::CredentialProcess(argv) => run_credential_process(
            &credential_process_argv(argv, duration_secs),
            krb5ccname,
            krb5_config,
            duration_secs,
            Duration::from_secs(account.timeout_secs),
        )?,
        S3Source::Profile { name, file } => {
            let file = file.clone().unwrap_or_else(default_shared_credentials_file);
            read_profile(&file, name)?
        }
        S3Source::WebIdentity(_) => return Err(AwsCredError::NeedsJobToken),
    };
    if let Some(expiration) = creds.expiration
        && expiration <= Utc::now()
    {
        return Err(AwsCredError::Expired {
            source_name: account.source.key(),
            expiration,
        });
    }
    Ok(creds)
}

/// `~/.aws/credentials` of the executor's user (root's, `/root`, without `HOME`).
pub fn default_shared_credentials_file() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".aws").join("credentials")
}

/// `argv` with every `{duration_secs}` replaced by `duration_secs` (each element stays one
/// argument).
pub fn credential_process_argv(argv: &[String], duration_secs: u64) -> Vec<String> {
    let value = duration_secs.to_string();
    argv.iter()
        .map(|arg| arg.replace(DURATION_PLACEHOLDER, &value))
        .collect()
}

/// Run a `credential_process` argv (no shell) bounded by `timeout`, with `KRB5CCNAME` set to
/// `krb5ccname` or removed, and `P3_CREDENTIAL_DURATION_SECS`; parse its JSON. Its stdout may
/// hold secrets and is never shown; a failure carries its stderr.
pub fn run_credential_process(
    argv: &[String],
    krb5ccname: Option<&str>,
    krb5_config: Option<&Path>,
    duration_secs: u64,
    timeout: Duration,
) -> Result<S3Credentials, AwsCredError> {
    let program = argv.first().ok_or(AwsCredError::NoSource)?;
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..]);
    cmd.env(DURATION_ENV, duration_secs.to_string());
    match krb5ccname {
        Some(cc) => cmd.env(env::KRB5CCNAME, cc),
        None => cmd.env_remove(env::KRB5CCNAME),
    };
    if let Some(conf) = krb5_config {
        cmd.env(env::KRB5_CONFIG, conf);
    }
    let out = run_bounded(cmd, timeout)?;
    if !out.status.success() {
        return Err(AwsCredError::ProcessFailed {
            program: program.clone(),
            status: out.status.to_string(),
            stderr: out.stderr_text(),
        });
    }
    parse_process_output(&out.stdout).map_err(|reason| AwsCredError::InvalidOutput {
        program: program.clone(),
        reason,
    })
}

/// The JSON document of AWS's `credential_process` contract.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessOutput {
    version: serde_json::Value,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
}

/// Parse a `credential_process` stdout. The error never quotes the input: serde_json messages
/// can contain values (`invalid type: string "…"`), so only the position is reported.
pub fn parse_process_output(stdout: &[u8]) -> Result<S3Credentials, String> {
    let doc: ProcessOutput = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "not the expected JSON object ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if doc.version != serde_json::json!(1) {
        return Err("unsupported or missing Version (must be 1)".into());
    }
    let non_empty = |v: Option<String>, name: &str| match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(format!("{name} is missing or empty")),
    };
    let expiration = match doc.expiration {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| format!("Expiration is not an RFC 3339 timestamp: {e}"))?
                .with_timezone(&Utc),
        ),
    };
    Ok(S3Credentials {
        access_key_id: non_empty(doc.access_key_id, "AccessKeyId")?,
        secret_access_key: non_empty(doc.secret_access_key, "SecretAccessKey")?,
        session_token: doc.session_token.filter(|s| !s.is_empty()),
        expiration,
    })
}

/// Read `profile` from an AWS shared-credentials file (INI).
///
/// A dozen lines of parsing instead of an INI crate: the format we need is `[section]` and
/// `key = value` with `#`/`;` comments; nested (indented) sub-keys are skipped.
pub fn read_profile(file: &Path, profile: &str) -> Result<S3Credentials, AwsCredError> {
    let fail = |reason: String| AwsCredError::Profile {
        file: file.to_path_buf(),
        profile: profile.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    let values = parse_ini_section(&text, profile).ok_or_else(|| fail("no such profile".into()))?;
    let get = |k: &str| values.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(S3Credentials {
        access_key_id: get("aws_access_key_id")
            .ok_or_else(|| fail("aws_access_key_id is missing".into()))?,
        secret_access_key: get("aws_secret_access_key")
            .ok_or_else(|| fail("aws_secret_access_key is missing".into()))?,
        session_token: get("aws_session_token"),
        expiration: None,
    })
}

/// Key/value pairs of section `name` (`[name]` or `[profile name]`), keys lower-cased.
fn parse_ini_section(text: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<bool> = None; // Some(true) while inside the wanted section
    let mut found = None::<BTreeMap<String, String>>;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            let section = section
                .strip_prefix("profile ")
                .map(str::trim)
                .unwrap_or(section);
            let wanted = section == name;
            if wanted && found.is_none() {
                found = Some(BTreeMap::new());
            }
            current = Some(wanted);
            continue;
        }
        // Indented lines belong to a nested block (`s3 =` ...): not credentials.
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        if current == Some(true)
            && let Some((k, v)) = line.split_once('=')
            && let Some(map) = found.as_mut()
        {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    found
}

/// Profile name used in the job's files: the account name restricted to characters every AWS
/// tool accepts in a section header.
pub fn profile_name(account_name: &str) -> String {
    let cleaned: String = account_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "p3".into()
    } else {
        cleaned
    }
}

/// Write the job's `aws-config` and `aws-credentials` into `creds_dir` and return the
/// environment the job gets.
///
/// Each file is written to a temporary file in the same directory, made 0600 and owned by
/// `owner` (uid, gid) before any secret is written, then renamed over the old one, so a
/// refresh never exposes a half-written file. `creds_dir` must be root-owned and not writable
/// by the job (see `workspace`), so the job cannot redirect these writes with a symlink.
pub fn write_job_files(
    creds_dir: &Path,
    account_name: &str,
    account: &S3Account,
    creds: &S3Credentials,
    owner: Option<(u32, u32)>,
) -> Result<BTreeMap<String, String>, AwsCredError> {
    let profile = profile_name(account_name);
    let config_path = creds_dir.join(CONFIG_FILE);
    let creds_path = creds_dir.join(CREDENTIALS_FILE);
    write_atomic(
        &config_path,
        render_config(&profile, account).as_bytes(),
        owner,
    )?;
    write_atomic(
        &creds_path,
        render_credentials(&profile, creds).as_bytes(),
        owner,
    )?;

    let mut env = BTreeMap::new();
    env.insert(
        "AWS_CONFIG_FILE".into(),
        config_path.to_string_lossy().into_owned(),
    );
    env.insert(
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        creds_path.to_string_lossy().into_owned(),
    );
    env.insert("AWS_PROFILE".into(), profile);
    env.insert("AWS_REGION".into(), account.region.clone());
    // AWS CLI v1 / boto3 read AWS_DEFAULT_REGION (the config file also has the region).
    env.insert("AWS_DEFAULT_REGION".into(), account.region.clone());
    if let Some(url) = &account.endpoint_url {
        env.insert("AWS_ENDPOINT_URL_S3".into(), url.clone());
    }
    if account.path_style {
        env.insert(PATH_STYLE_ENV.into(), "true".into());
    }
    Ok(env)
}

fn section_header_config(profile: &str) -> String {
    if profile == "default" {
        "[default]".into()
    } else {
        format!("[profile {profile}]")
    }
}

fn render_config(profile: &str, account: &S3Account) -> String {
    let mut s = format!(
        "# Written by p3-executor for this job; replaced on refresh, removed at cleanup.\n{}\nregion = {}\n",
        section_header_config(profile),
        account.region
    );
    if account.path_style {
        s.push_str("s3 =\n    addressing_style = path\n");
    }
    s
}

fn render_credentials(profile: &str, creds: &S3Credentials) -> String {
    let mut s = format!(
        "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        creds.access_key_id, creds.secret_access_key
    );
    if let Some(token) = &creds.session_token {
        s.push_str(&format!("aws_session_token = {token}\n"));
    }
    s
}

fn write_atomic(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), AwsCredError> {
    let opts = crate::atomic_file::Options {
        mode: 0o600,
        owner,
        durable: true,
    };
    crate::atomic_file::write(path, contents, opts)
        .map_err(io_err(format!("write {}", path.display())))?;
    Ok(())
}

/// Whether credentials expiring at `expiration` must be refreshed at `now`: true once less
/// than `threshold` of their life is left. Credentials without an expiry never need it.
pub fn needs_refresh(
    expiration: Option<DateTime<Utc>>,
    threshold: Duration,
    now: DateTime<Utc>,
) -> bool {
    match expiration {
        None => false,
        Some(exp) => {
            let threshold = chrono::Duration::from_std(threshold).unwrap_or(chrono::Duration::MAX);
            exp.signed_duration_since(now) <= threshold
        }
    }
}

/// Remove the job's AWS files (missing files are fine: cleanup may run twice).
pub fn remove_job_files(creds_dir: &Path) -> Result<(), AwsCredError> {
    for name in [CONFIG_FILE, CREDENTIALS_FILE] {
        let path = creds_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn account() -> S3Account {
        let mut account = S3Account::new(S3Source::CredentialProcess(Vec::new()));
        account.region = "eu-central-1".into();
        account.endpoint_url = Some("http://127.0.0.1:9000".into());
        account.path_style = true;
        account.refresh_threshold_secs = 600;
        account.timeout_secs = 5;
        account
    }

    fn creds() -> S3Credentials {
        S3Credentials {
            access_key_id: "ASIAEXAMPLEKEY".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: Some("token-secret-value".into()),
            expiration: None,
        }
    }

    fn script(dir: &Path, body: &str) -> Vec<String> {
        let path = dir.join("cred.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        vec![path.to_string_lossy().into_owned()]
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let text = format!("{:?}", creds());
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(!text.contains("token-secret-value"), "{text}");
        assert!(!text.contains("EXAMPLEKEY"), "{text}");
        assert!(text.contains("ASIA"), "{text}");
    }

    #[test]
    fn parses_the_documented_json() {
        let c = parse_process_output(
            br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"ST","Expiration":"2030-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(c.secret_access_key, "SK");
        assert_eq!(c.session_token.as_deref(), Some("ST"));
        assert_eq!(
            c.expiration.unwrap().to_rfc3339(),
            "2030-01-02T03:04:05+00:00"
        );
        // SessionToken and Expiration are optional.
        let c = parse_process_output(br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK"}"#)
            .unwrap();
        assert_eq!(c.session_token, None);
        assert_eq!(c.expiration, None);
    }

    #[test]
    fn rejects_bad_json_without_quoting_it() {
        for bad in [
            &br#"{"Version":2,"AccessKeyId":"AK","SecretAccessKey":"SECRETX"}"#[..],
            br#"{"Version":1,"AccessKeyId":"AK"}"#,
            br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SECRETX","Expiration":"tomorrow"}"#,
            br#"{"Version":1,"AccessKeyId":5,"SecretAccessKey":"SECRETX"}"#,
            br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":["SECRETX"]}"#,
            b"SECRETX",
        ] {
            let err = parse_process_output(bad).unwrap_err();
            assert!(!err.contains("SECRETX"), "{err}");
        }
    }

    #[test]
    fn credential_process_runs_with_the_jobs_ticket() {
        let dir = tempfile::tempdir().unwrap();
        // The script proves it saw the job's KRB5CCNAME by echoing it back as the key id.
        let mut acc = account();
        acc.source = S3Source::CredentialProcess(script(
            dir.path(),
            r#"printf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"SK","Expiration":"2099-01-01T00:00:00Z"}' "$KRB5CCNAME""#,
        ));
        let c = retrieve(&acc, Some("FILE:/tmp/krb5cc_job"), None).unwrap();
        assert_eq!(c.access_key_id, "FILE:/tmp/krb5cc_job");
        assert!(c.expiration.is_some());
    }

    #[test]
    fn credential_process_is_asked_for_the_jobs_duration() {
        let dir = tempfile::tempdir().unwrap();
        // The script echoes its first argument and the environment variable as the key id.
        let mut acc = account();
        let mut argv = script(
            dir.path(),
            r#"printf '{"Version":1,"AccessKeyId":"%s|%s|%s","SecretAccessKey":"SK"}' "$1" "$2" "$P3_CREDENTIAL_DURATION_SECS""#,
        );
        argv.extend([
            "--duration-seconds={duration_secs}".to_string(),
            "{duration_secs}{duration_secs} x".to_string(),
        ]);
        acc.source = S3Source::CredentialProcess(argv);
        let c = retrieve_with_duration(&acc, None, None, 1500).unwrap();
        assert_eq!(c.access_key_id, "--duration-seconds=1500|15001500 x|1500");
        // Without a job duration the process gets the default.
        let c = retrieve(&acc, None, None).unwrap();
        assert_eq!(c.access_key_id, "--duration-seconds=3600|36003600 x|3600");
        // Arguments without the placeholder are passed on untouched.
        assert_eq!(
            credential_process_argv(&["p".into(), "{duration}".into(), "".into()], 9),
            vec!["p", "{duration}", ""]
        );
    }

    #[test]
    fn credential_process_failure_carries_stderr_not_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let mut acc = account();
        acc.source = S3Source::CredentialProcess(script(
            dir.path(),
            "echo '{\"SecretAccessKey\":\"LEAKED\"}'; echo 'ticket expired' >&2; exit 3",
        ));
        let err = retrieve(&acc, None, None).unwrap_err().to_string();
        assert!(err.contains("ticket expired"), "{err}");
        assert!(!err.contains("LEAKED"), "{err}");
    }

    #[test]
    fn credential_process_is_bounded_by_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut acc = account();
        acc.timeout_secs = 1;
        acc.source = S3Source::CredentialProcess(script(dir.path(), "sleep 30"));
        let start = std::time::Instant::now();
        let err = retrieve(&acc, None, None).unwrap_err();
        assert!(
            matches!(err, AwsCredError::Command(CommandError::Timeout { .. })),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn already_expired_credentials_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut acc = account();
        acc.source = S3Source::CredentialProcess(script(
            dir.path(),
            r#"echo '{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","Expiration":"2001-01-01T00:00:00Z"}'"#,
        ));
        assert!(matches!(
            retrieve(&acc, None, None),
            Err(AwsCredError::Expired { .. })
        ));
    }

    #[test]
    fn reads_a_profile_from_a_shared_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "# comment\n[default]\naws_access_key_id = DEF\naws_secret_access_key = DEFSK\n\n\
             [profile uat]\n  ; indented comment\naws_access_key_id=UATKEY\n\
             aws_secret_access_key = UAT SK\ns3 =\n  max_concurrent_requests = 4\n\
             [other]\naws_access_key_id = OTHER\n",
        )
        .unwrap();
        let mut acc = account();
        let profile = |name: &str| S3Source::Profile {
            name: name.into(),
            file: Some(file.clone()),
        };
        acc.source = profile("uat");
        let c = retrieve(&acc, None, None).unwrap();
        assert_eq!(c.access_key_id, "UATKEY");
        assert_eq!(c.secret_access_key, "UAT SK");
        assert_eq!(c.session_token, None);

        acc.source = profile("missing");
        let err = retrieve(&acc, None, None).unwrap_err().to_string();
        assert!(err.contains("no such profile"), "{err}");
        acc.source = profile("other");
        let err = retrieve(&acc, None, None).unwrap_err().to_string();
        assert!(err.contains("aws_secret_access_key is missing"), "{err}");
    }

    #[test]
    fn writes_private_files_and_returns_the_job_env() {
        let dir = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let env =
            write_job_files(dir.path(), "client uat", &account(), &creds(), Some(me)).unwrap();
        for name in [CONFIG_FILE, CREDENTIALS_FILE] {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
            assert_eq!((meta.uid(), meta.gid()), me, "{name}");
        }
        let config = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(
            config.contains("[profile client_uat]\nregion = eu-central-1\n"),
            "{config}"
        );
        assert!(
            config.contains("s3 =\n    addressing_style = path"),
            "{config}"
        );
        let secrets = std::fs::read_to_string(dir.path().join(CREDENTIALS_FILE)).unwrap();
        assert!(secrets.starts_with("[client_uat]\naws_access_key_id = ASIAEXAMPLEKEY\n"));
        assert!(secrets.contains("aws_session_token = token-secret-value\n"));
        assert_eq!(env["AWS_PROFILE"], "client_uat");
        assert_eq!(env["AWS_REGION"], "eu-central-1");
        assert_eq!(env["AWS_ENDPOINT_URL_S3"], "http://127.0.0.1:9000");
        assert_eq!(env[PATH_STYLE_ENV], "true");
        assert_eq!(
            env["AWS_SHARED_CREDENTIALS_FILE"],
            dir.path().join(CREDENTIALS_FILE).to_string_lossy()
        );
        // The env never carries a secret: the job log may show it.
        assert!(env.values().all(|v| !v.contains("secret")));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        remove_job_files(dir.path()).unwrap();
        remove_job_files(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn chowns_files_to_the_job_user_when_root() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("not root: chown to another uid cannot be tested");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write_job_files(dir.path(), "a", &account(), &creds(), Some((4242, 4343))).unwrap();
        let meta = std::fs::metadata(dir.path().join(CREDENTIALS_FILE)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    }

    #[test]
    fn refresh_threshold() {
        let now = Utc::now();
        let t = Duration::from_secs(600);
        assert!(!needs_refresh(None, t, now));
        assert!(!needs_refresh(
            Some(now + chrono::Duration::seconds(601)),
            t,
            now
        ));
        assert!(needs_refresh(
            Some(now + chrono::Duration::seconds(600)),
            t,
            now
        ));
        assert!(needs_refresh(
            Some(now - chrono::Duration::seconds(1)),
            t,
            now
        ));
    }

    #[test]
    fn profile_names_are_safe_section_headers() {
        assert_eq!(profile_name("client_uat"), "client_uat");
        assert_eq!(profile_name("a]b\n[c"), "a_b__c");
        assert_eq!(profile_name(""), "p3");
    }
}
