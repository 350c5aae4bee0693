//! Optional second opinion from the GitLab API: `GET /api/v4/job` authenticated with the job's
//! own token (from JOB_RESPONSE_FILE) must describe a running job with the token's id, ref, tag
//! flag and user.
//!
//! One bounded GET with plain `reqwest` (the client the JWKS fetch already uses): the `gitlab`
//! crate earns its place in the release step, but for one endpoint here it only added an
//! adapter and 34 crates to the runner's build.

use std::time::Duration;

use serde::Deserialize;

use super::{Identity, IdentityError};
use crate::config::{Config, RefType};
use crate::job::JobContext;

/// The fields of `GET /job` this check compares.
#[derive(Debug, Deserialize)]
struct ApiJob {
    id: u64,
    status: String,
    #[serde(rename = "ref")]
    ref_name: String,
    tag: bool,
    #[serde(default)]
    user: Option<ApiUser>,
}

#[derive(Debug, Deserialize)]
struct ApiUser {
    username: String,
}

/// `<base>/api/v4/job` for a GitLab URL given with or without `/api/v4`.
fn job_url(base_url: &str) -> String {
    let trimmed = base_url.trim_end_matches('/');
    if trimmed.ends_with("/api/v4") {
        format!("{trimmed}/job")
    } else {
        format!("{trimmed}/api/v4/job")
    }
}

/// What `GET /job` answered, before it is compared with the token.
enum Answer {
    Job(ApiJob),
    Status(u16),
}

/// One bounded `GET /job` with the job token; transport failures are `Err(detail)`.
fn get_job(url: &str, token: &str, timeout: Duration) -> Result<Answer, String> {
    let mut header = reqwest::header::HeaderValue::from_str(token)
        .map_err(|_| "job token is not a valid header value".to_string())?;
    header.set_sensitive(true);
    super::crypto::install();
    let response = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| error_chain(&e))?
        .get(url)
        .header("JOB-TOKEN", header)
        .send()
        .map_err(|e| error_chain(&e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        // Response bodies are not echoed: only the status.
        return Ok(Answer::Status(status.as_u16()));
    }
    response.json::<ApiJob>().map(Answer::Job).map_err(|e| {
        format!(
            "invalid GET /job response: {}",
            error_chain(&e.without_url())
        )
    })
}

/// `error: cause: cause`, since reqwest's top-level message alone ("error sending request")
/// does not say whether the host refused, timed out or failed TLS.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The API base URL in effect: `identity.api_url`, else `identity.gitlab_url`.
pub fn api_base(cfg: &Config) -> String {
    cfg.identity
        .api_url
        .clone()
        .unwrap_or_else(|| cfg.identity.gitlab_url.clone())
}

/// Confirm with `GET /job` (job-token auth) that the job is running and matches `identity`.
/// A disagreement or a refused token is a denial; an unreachable API is a system failure.
pub fn confirm(cfg: &Config, job: &JobContext, identity: &Identity) -> Result<(), IdentityError> {
    let base = api_base(cfg);
    let unavailable = |detail: String| IdentityError::GitlabApiUnavailable {
        url: base.clone(),
        detail,
    };
    if job.payload.token.is_empty() {
        return Err(IdentityError::Config(
            "identity.confirm_with_gitlab_api is set but the job payload has no job token".into(),
        ));
    }
    let timeout = Duration::from_secs(cfg.identity.http_timeout_secs.max(1));
    match get_job(&job_url(&base), &job.payload.token, timeout).map_err(unavailable)? {
        Answer::Job(api_job) => compare(identity, &api_job),
        // GitLab answers 401 to a job token whose job is no longer running (or never existed),
        // 403/404 to one it does not accept for this endpoint: the job's fault, not the host's.
        Answer::Status(s @ (401 | 403 | 404)) => Err(IdentityError::JobTokenRejected { status: s }),
        Answer::Status(s) => Err(unavailable(format!("HTTP {s}"))),
    }
}

fn compare(identity: &Identity, api_job: &ApiJob) -> Result<(), IdentityError> {
    if api_job.status != "running" {
        return Err(IdentityError::JobNotRunning {
            job_id: api_job.id,
            status: api_job.status.clone(),
        });
    }
    let mismatch = |field: &'static str, token: String, api: String| {
        Err(IdentityError::ApiMismatch { field, token, api })
    };
    if api_job.id != identity.job_id {
        return mismatch(
            "job id",
            identity.job_id.to_string(),
            api_job.id.to_string(),
        );
    }
    if api_job.ref_name != identity.ref_name {
        return mismatch("ref", identity.ref_name.clone(), api_job.ref_name.clone());
    }
    let token_is_tag = identity.ref_type == RefType::Tag;
    if api_job.tag != token_is_tag {
        return mismatch("tag", token_is_tag.to_string(), api_job.tag.to_string());
    }
    let api_user = api_job
        .user
        .as_ref()
        .map(|u| u.username.clone())
        .unwrap_or_default();
    if api_user != identity.user_login {
        return mismatch("user", identity.user_login.clone(), api_user);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_job_endpoint_is_found_from_either_base() {
        for base in [
            "https://gitlab.example.com",
            "https://gitlab.example.com/",
            "https://gitlab.example.com/api/v4",
            "https://gitlab.example.com/api/v4/",
        ] {
            assert_eq!(
                super::job_url(base),
                "https://gitlab.example.com/api/v4/job"
            );
        }
    }
}
