//! The web-identity S3 credential source: STS `AssumeRoleWithWebIdentity` with the job's
//! verified GitLab ID token, so no S3 secret is stored on the host.
//!
//! The executor itself links no AWS SDK (it starts for every stage of every job): it runs its
//! sibling `p3-executor-aws sts assume-role-with-web-identity` (crates/aws/src/sts.rs), bounded
//! by the account's `timeout_secs`, with the token in that process's environment (argv is
//! visible in `ps`). The sibling prints the AWS `credential_process` JSON, which
//! [`aws::parse_process_output`] reads, plus the assumed-role ARN for the audit record; the
//! job's AWS files are then written as for every other source.
//!
//! The token is never stored by the executor: each call (prepare, and a refresh before a run
//! stage) reads it from the job's payload and verifies it again (signature, issuer, audience,
//! expiry, job id) with [`identity::verify_job_token`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use crate::command::run_bounded;
use crate::config::{Config, S3Account, WebIdentity};
use crate::credentials::aws::{self, AwsCredError, S3Credentials};
use crate::identity::{self, Expected, Identity, IdentityError, JwksStore};
use crate::job::JobContext;

/// The environment variable that carries the token to `p3-executor-aws` (never its argv).
pub const TOKEN_ENV: &str = "P3_WEB_IDENTITY_TOKEN";
/// The sibling binary that calls STS.
pub use crate::siblings::AWS as SIBLING;
/// Longest role session name STS accepts.
pub const SESSION_NAME_MAX: usize = 64;
/// The extra key in the sibling's JSON naming the assumed role (`AssumedRoleUser.Arn`).
pub const ASSUMED_ROLE_ARN_KEY: &str = "AssumedRoleArn";

/// A verified ID token's text. It is a bearer credential for the role: `Debug` hides it, it
/// has no `Display`, and it is only handed to the sibling's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct WebToken(String);

impl WebToken {
    /// The token text, for the one place that passes it on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebToken(<redacted>)")
    }
}

/// The token sent to STS for one job, verified, with the identity its claims describe.
#[derive(Debug, Clone)]
pub struct JobToken {
    /// The token.
    pub token: WebToken,
    /// Its verified claims (job id, project: the role session name).
    pub identity: Identity,
    /// The job variable it came from (for the audit record).
    pub variable: String,
    /// The audience it was verified against.
    pub audience: String,
}

/// Read and verify the token an account's `web_identity` sends: the identity token
/// (`identity.token_variable`, `identity.audience`), or the job's second `id_tokens:` entry in
/// `token_variable` with `audience`. Both are checked the same way (RS256 against the JWKS,
/// `iss`, `aud`, times, `job_id` = the payload's). A failure that is not
/// [`IdentityError::is_system`] is a denial: the job's token is missing, forged or stale.
pub fn job_token(
    cfg: &Config,
    job: &JobContext,
    wi: &WebIdentity,
) -> Result<JobToken, IdentityError> {
    job_token_with(cfg, job, wi, &JwksStore::from_config(cfg))
}

/// [`job_token`] with an explicit key store.
pub fn job_token_with(
    cfg: &Config,
    job: &JobContext,
    wi: &WebIdentity,
    keys: &JwksStore,
) -> Result<JobToken, IdentityError> {
    let expected = match &wi.token_variable {
        Some(variable) => Expected {
            variable,
            audience: wi.audience.as_deref().unwrap_or(&cfg.identity.audience),
        },
        None => Expected::identity(cfg),
    };
    let (identity, token) = identity::verify_job_token(cfg, job, keys, &expected)?;
    Ok(JobToken {
        token: WebToken(token.to_string()),
        identity,
        variable: expected.variable.to_string(),
        audience: expected.audience.to_string(),
    })
}

/// The STS role session name of a job: `p3-<job id>-<project path, '/' → '.'>`, reduced to the
/// characters STS allows (`[A-Za-z0-9+=,.@_-]`, others become `_`) and cut at 64 characters.
/// The job id comes first so that a long project path never cuts it off: CloudTrail (or the
/// store's log) then names the job that used the role.
pub fn session_name(job_id: u64, project_path: &str) -> String {
    let raw = format!("p3-{job_id}-{}", project_path.replace('/', "."));
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(SESSION_NAME_MAX)
        .collect()
}

/// The session length asked for: the job's own credential duration (as a credential process
/// is asked for: the time to the job's deadline plus margin, at most the account's ticket
/// lifetime), at least STS's minimum of 900 s and at most `duration_secs` (the role's maximum
/// session duration; default 3600 s, STS's default), since STS refuses anything outside.
/// A job that outlives its session is refreshed before each stage.
pub fn session_duration(wi: &WebIdentity, job_duration_secs: u64) -> u64 {
    let max = wi
        .duration_secs
        .unwrap_or(WebIdentity::DEFAULT_MAX_DURATION_SECS)
        .max(WebIdentity::MIN_DURATION_SECS);
    job_duration_secs.clamp(WebIdentity::MIN_DURATION_SECS, max)
}

/// What STS handed out, and what the audit record says about it (never a secret).
#[derive(Debug)]
pub struct Assumed {
    /// The temporary credentials.
    pub creds: S3Credentials,
    /// The role session name used.
    pub session_name: String,
    /// The ARN of the assumed-role session STS reports (`AssumedRoleUser.Arn`).
    pub assumed_role_arn: Option<String>,
    /// The session length asked for.
    pub duration_secs: u64,
}

/// Where `p3-executor-aws` is: next to the running executor (as for every sibling).
pub fn sibling_path() -> Result<PathBuf, AwsCredError> {
    crate::siblings::path(SIBLING).ok_or(AwsCredError::MissingSibling { program: SIBLING })
}

/// Assume the account's role with `token` for `job_duration_secs` (clamped by
/// [`session_duration`]), running `program` (normally [`sibling_path`]).
pub fn assume_role(
    program: &Path,
    s3: &S3Account,
    wi: &WebIdentity,
    token: &JobToken,
    job_duration_secs: u64,
) -> Result<Assumed, AwsCredError> {
    let session_name = session_name(token.identity.job_id, &token.identity.project_path);
    let duration_secs = session_duration(wi, job_duration_secs);
    let argv = sibling_argv(s3, wi, &session_name, duration_secs);
    let mut cmd = Command::new(program);
    cmd.args(&argv);
    // Only what the sibling needs: prepare's own environment holds every job variable
    // (CUSTOM_ENV_*, the tokens among them) and the host's AWS settings.
    cmd.env_clear();
    for keep in ["PATH", "SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env(TOKEN_ENV, token.token.expose());
    let label = format!("{SIBLING} sts");
    let out = run_bounded(cmd, Duration::from_secs(s3.timeout_secs))?;
    if !out.status.success() {
        return Err(AwsCredError::ProcessFailed {
            program: label,
            status: out.status.to_string(),
            stderr: out.stderr_text(),
        });
    }
    let invalid = |reason: String| AwsCredError::InvalidOutput {
        program: label.clone(),
        reason,
    };
    let creds = aws::parse_process_output(&out.stdout).map_err(invalid)?;
    let assumed_role_arn = assumed_role_arn(&out.stdout);
    if let Some(expiration) = creds.expiration
        && expiration <= Utc::now()
    {
        return Err(AwsCredError::Expired {
            source_name: "web_identity",
            expiration,
        });
    }
    Ok(Assumed {
        creds,
        session_name,
        assumed_role_arn,
        duration_secs,
    })
}

/// The sibling's arguments (the token is not among them).
pub fn sibling_argv(
    s3: &S3Account,
    wi: &WebIdentity,
    session_name: &str,
    duration_secs: u64,
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "sts",
        "assume-role-with-web-identity",
        "--role-arn",
        &wi.role_arn,
        "--role-session-name",
        session_name,
        "--duration-secs",
        &duration_secs.to_string(),
        "--region",
        &s3.region,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = wi.sts_endpoint_url.as_ref().or(s3.endpoint_url.as_ref()) {
        argv.extend(["--endpoint-url".to_string(), url.clone()]);
    }
    argv
}

/// The assumed-role ARN in the sibling's output, if it names one (the key is ours, beside the
/// `credential_process` keys; other consumers of that format ignore it).
fn assumed_role_arn(stdout: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Arn {
        #[serde(rename = "AssumedRoleArn")]
        arn: Option<String>,
    }
    serde_json::from_slice::<Arn>(stdout)
        .ok()?
        .arn
        .filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn wi(duration: Option<u64>) -> WebIdentity {
        WebIdentity {
            role_arn: "arn:aws:iam::123456789012:role/deploy".into(),
            audience: None,
            token_variable: None,
            duration_secs: duration,
            sts_endpoint_url: None,
        }
    }

    fn s3() -> S3Account {
        toml::from_str(
            "region = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\ntimeout_secs = 5\n",
        )
        .unwrap()
    }

    #[test]
    fn session_names_carry_the_job_and_project_in_stss_alphabet() {
        let long = "a/".repeat(60) + "end";
        let table: [(u64, &str, &str); 6] = [
            (42, "data-ml/forecast", "p3-42-data-ml.forecast"),
            (7, "group/sub/proj_1", "p3-7-group.sub.proj_1"),
            // Characters STS refuses become '_'.
            (8, "grüne/app name", "p3-8-gr_ne.app_name"),
            (9, "a+b=c,d@e", "p3-9-a+b=c,d@e"),
            (10, "", "p3-10-"),
            // Long paths are cut at 64 characters; the job id is always kept.
            (
                18_446_744_073_709_551_615,
                &long,
                "p3-18446744073709551615-a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.",
            ),
        ];
        for (job, project, want) in table {
            let got = session_name(job, project);
            assert_eq!(got, want, "{job} {project}");
            assert!(got.len() <= SESSION_NAME_MAX, "{got}");
            assert!(
                got.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)),
                "{got}"
            );
        }
    }

    #[test]
    fn session_duration_is_the_jobs_within_what_sts_allows() {
        // (duration_secs, job's duration) → asked for
        let table = [
            (None, 1500, 1500),
            (None, 60, 900),
            (None, 36_000, 3600),
            (Some(43_200), 36_000, 36_000),
            (Some(7200), 36_000, 7200),
            (Some(900), 0, 900),
        ];
        for (max, job, want) in table {
            assert_eq!(session_duration(&wi(max), job), want, "{max:?} {job}");
        }
    }

    #[test]
    fn the_sibling_gets_the_token_in_its_environment_not_its_argv() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-sts");
        // Echo argv and whether the token arrived as the key id; fail if it is in argv.
        std::fs::write(
            &fake,
            r#"#!/bin/sh
case "$*" in *SECRET-TOKEN*) echo "token in argv" >&2; exit 9;; esac
printf '{"Version":1,"AccessKeyId":"%s|%s","SecretAccessKey":"SK","SessionToken":"ST","Expiration":"2099-01-01T00:00:00Z","AssumedRoleArn":"arn:aws:sts::1:assumed-role/deploy/x"}' "$P3_WEB_IDENTITY_TOKEN" "$*"
"#,
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "project_path": "data-ml/forecast", "project_id": "12", "namespace_path": "data-ml",
            "ref": "main", "ref_type": "branch", "ref_protected": "true", "pipeline_source": "push",
            "pipeline_id": "9", "user_login": "alice", "job_id": "77", "jti": "j", "sha": "s"
        }))
        .unwrap();
        let token = JobToken {
            token: WebToken("SECRET-TOKEN".into()),
            identity: identity::identity_from_claims(&claims).unwrap(),
            variable: "P3_ID_TOKEN".into(),
            audience: "p3-executor".into(),
        };
        assert!(!format!("{token:?}").contains("SECRET-TOKEN"));
        let assumed = assume_role(&fake, &s3(), &wi(None), &token, 1200).unwrap();
        assert_eq!(
            assumed.creds.access_key_id,
            "SECRET-TOKEN|sts assume-role-with-web-identity --role-arn arn:aws:iam::123456789012:role/deploy --role-session-name p3-77-data-ml.forecast --duration-secs 1200 --region eu-west-1 --endpoint-url http://127.0.0.1:5000"
        );
        assert_eq!(assumed.session_name, "p3-77-data-ml.forecast");
        assert_eq!(
            assumed.assumed_role_arn.as_deref(),
            Some("arn:aws:sts::1:assumed-role/deploy/x")
        );
        assert_eq!(assumed.creds.session_token.as_deref(), Some("ST"));

        // A failing sibling: its stderr is the message, never its stdout.
        std::fs::write(
            &fake,
            "#!/bin/sh\necho '{\"SecretAccessKey\":\"LEAKED\"}'\necho 'AccessDenied: not authorized' >&2\nexit 1\n",
        )
        .unwrap();
        let err = assume_role(&fake, &s3(), &wi(None), &token, 1200)
            .unwrap_err()
            .to_string();
        assert!(err.contains("AccessDenied"), "{err}");
        assert!(
            !err.contains("LEAKED") && !err.contains("SECRET-TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn an_sts_endpoint_of_its_own_wins_over_the_s3_endpoint() {
        let mut w = wi(None);
        w.sts_endpoint_url = Some("https://sts.example".into());
        let argv = sibling_argv(&s3(), &w, "p3-1-a", 900);
        assert_eq!(
            argv[argv.len() - 2..],
            ["--endpoint-url", "https://sts.example"]
        );
        let mut plain = s3();
        plain.endpoint_url = None;
        assert!(!sibling_argv(&plain, &wi(None), "p3-1-a", 900).contains(&"--endpoint-url".into()));
    }
}
