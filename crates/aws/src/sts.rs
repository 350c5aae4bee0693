//! STS for the web-identity S3 credential source.
//!
//! `prepare` (and a refresh before a run stage) runs
//! `p3-executor-aws sts assume-role-with-web-identity --role-arn ... --role-session-name ...
//! --duration-secs N --region R [--endpoint-url U]` with the job's verified ID token in
//! `P3_WEB_IDENTITY_TOKEN` (an environment variable: argv is visible to every user in `ps`).
//! This calls STS `AssumeRoleWithWebIdentity`, which needs no AWS credentials (the token is
//! the proof), and prints the AWS `credential_process` JSON (plus `AssumedRoleArn`) on stdout
//! for the executor's `credentials::aws::parse_process_output`. stderr carries only errors,
//! never the token or a key.

use std::io::Write;

use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_smithy_types::date_time::Format;
use aws_smithy_types::error::display::DisplayErrorContext;
use p3_executor::config::WebIdentity;
use p3_executor::credentials::web_identity::{ASSUMED_ROLE_ARN_KEY, SESSION_NAME_MAX, TOKEN_ENV};

/// `sts` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StsCommand {
    /// Temporary credentials for a role from a web identity (OIDC) token, as the AWS
    /// `credential_process` JSON on stdout. The token is read from `P3_WEB_IDENTITY_TOKEN`.
    AssumeRoleWithWebIdentity(AssumeArgs),
}

/// Arguments of `sts assume-role-with-web-identity` (everything but the token).
#[derive(Debug, clap::Args)]
pub struct AssumeArgs {
    /// The role to assume.
    #[arg(long)]
    pub role_arn: String,
    /// The role session name (STS: 2 to 64 characters of `[A-Za-z0-9+=,.@_-]`).
    #[arg(long)]
    pub role_session_name: String,
    /// Session length in seconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(WebIdentity::MIN_DURATION_SECS..=WebIdentity::MAX_DURATION_SECS))]
    pub duration_secs: u64,
    /// Region of the STS endpoint.
    #[arg(long)]
    pub region: String,
    /// STS endpoint (MinIO, Ceph RGW, a test server); default AWS's regional endpoint.
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

/// Why no credentials were printed. No variant carries the token or a key.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// The token variable is missing or empty.
    #[error("{TOKEN_ENV} is not set: the web identity token is passed in the environment")]
    NoToken,
    /// The session name is not one STS accepts.
    #[error("role session name {0:?} is not 2 to 64 characters of letters, digits and +=,.@_-")]
    SessionName(String),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// STS refused or could not be reached.
    #[error("STS AssumeRoleWithWebIdentity for {role_arn} failed: {detail}")]
    Sts {
        /// The role asked for.
        role_arn: String,
        /// The SDK's error with its causes (STS messages never quote the token).
        detail: String,
    },
    /// STS answered without credentials.
    #[error("STS AssumeRoleWithWebIdentity for {0} returned no credentials")]
    NoCredentials(String),
    /// The expiry cannot be written as RFC 3339.
    #[error("STS returned an expiry that cannot be formatted: {0}")]
    Expiration(String),
    /// stdout is gone.
    #[error("cannot write the credentials to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

/// Run an `sts` subcommand; returns the exit code.
pub fn run(cmd: StsCommand) -> anyhow::Result<i32> {
    match cmd {
        StsCommand::AssumeRoleWithWebIdentity(args) => {
            let token = std::env::var(TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or(StsError::NoToken)?;
            let json = assume_role_with_web_identity(&args, &token)?;
            let mut out = std::io::stdout().lock();
            out.write_all(json.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .map_err(StsError::Stdout)?;
            Ok(0)
        }
    }
}

/// Whether STS accepts `name` as a role session name.
pub fn valid_session_name(name: &str) -> bool {
    (2..=SESSION_NAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// Call STS and return the `credential_process` JSON.
pub fn assume_role_with_web_identity(args: &AssumeArgs, token: &str) -> Result<String, StsError> {
    if !valid_session_name(&args.role_session_name) {
        return Err(StsError::SessionName(args.role_session_name.clone()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StsError::Runtime)?;
    runtime.block_on(call(args, token))
}

async fn call(args: &AssumeArgs, token: &str) -> Result<String, StsError> {
    // No credentials provider, and nothing read from the environment or ~/.aws: this call is
    // unsigned (the token is the proof), so the host's AWS settings cannot change it.
    let mut conf = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(args.region.clone()));
    if let Some(url) = &args.endpoint_url {
        conf = conf.endpoint_url(url);
    }
    let client = aws_sdk_sts::Client::from_conf(conf.build());
    let duration = i32::try_from(args.duration_secs).unwrap_or(i32::MAX);
    let out = client
        .assume_role_with_web_identity()
        .role_arn(&args.role_arn)
        .role_session_name(&args.role_session_name)
        .web_identity_token(token)
        .duration_seconds(duration)
        .send()
        .await
        .map_err(|e| StsError::Sts {
            role_arn: args.role_arn.clone(),
            detail: DisplayErrorContext(&e).to_string(),
        })?;
    let creds = out
        .credentials()
        .ok_or_else(|| StsError::NoCredentials(args.role_arn.clone()))?;
    let expiration = creds
        .expiration()
        .fmt(Format::DateTime)
        .map_err(|e| StsError::Expiration(e.to_string()))?;
    let mut doc = serde_json::json!({
        "Version": 1,
        "AccessKeyId": creds.access_key_id(),
        "SecretAccessKey": creds.secret_access_key(),
        "SessionToken": creds.session_token(),
        "Expiration": expiration,
    });
    if let Some(user) = out.assumed_role_user() {
        doc[ASSUMED_ROLE_ARN_KEY] = serde_json::Value::String(user.arn().to_string());
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_sts_accepts() {
        for ok in ["p3-1-a", "ab", "p3-42-data-ml.forecast", &"x".repeat(64)] {
            assert!(valid_session_name(ok), "{ok}");
        }
        for bad in ["", "a", "p3 1", "p3/1", &"x".repeat(65), "grün"] {
            assert!(!valid_session_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_invalid_session_name_fails_before_any_call() {
        let args = AssumeArgs {
            role_arn: "arn:aws:iam::1:role/r".into(),
            role_session_name: "has space".into(),
            duration_secs: 900,
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:9".into()),
        };
        let err = assume_role_with_web_identity(&args, "SECRET-TOKEN").unwrap_err();
        assert!(matches!(err, StsError::SessionName(_)), "{err}");
    }

    #[test]
    fn an_unreachable_sts_is_an_error_without_the_token() {
        // Port 9 on loopback: nothing listens, the connection is refused.
        let args = AssumeArgs {
            role_arn: "arn:aws:iam::1:role/r".into(),
            role_session_name: "p3-1-a".into(),
            duration_secs: 900,
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:9".into()),
        };
        let err = assume_role_with_web_identity(&args, "SECRET-TOKEN")
            .unwrap_err()
            .to_string();
        assert!(err.contains("arn:aws:iam::1:role/r"), "{err}");
        assert!(!err.contains("SECRET-TOKEN"), "{err}");
    }
}
