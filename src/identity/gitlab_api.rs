//! Optional second opinion from the GitLab API: `GET /api/v4/job` authenticated with the job's
//! own token (from JOB_RESPONSE_FILE) must describe a running job with the token's id, ref, tag
//! flag and user.
//!
//! The endpoint and its error handling come from the `gitlab` crate (`gitlab::api::job::Job`
//! queried through `gitlab::api::Query`). The crate's own `Gitlab` client has no request timeout
//! setting and makes an extra connection check when built, so this module gives the crate a
//! small [`gitlab::api::Client`] of its own: a reqwest client bounded by
//! `identity.http_timeout_secs` that sends the `JOB-TOKEN` header.

use std::time::Duration;

use bytes::Bytes;
use gitlab::api::{self, ApiError, Query};
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

/// Transport errors of [`JobTokenClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection, timeout or body read failure.
    #[error("{0}")]
    Http(String),
    /// The request could not be built (bad URL or header).
    #[error("invalid request: {0}")]
    Request(String),
}

/// A `gitlab` crate API client that authenticates with a job token and bounds every request.
pub struct JobTokenClient {
    base: reqwest::Url,
    token: String,
    http: reqwest::blocking::Client,
}

impl std::fmt::Debug for JobTokenClient {
    // Hand-written: the job token must never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTokenClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl JobTokenClient {
    /// A client for the REST API under `base_url` (a GitLab URL, with or without `/api/v4`).
    pub fn new(base_url: &str, token: &str, timeout: Duration) -> Result<Self, ClientError> {
        let trimmed = base_url.trim_end_matches('/');
        let api = if trimmed.ends_with("/api/v4") {
            format!("{trimmed}/")
        } else {
            format!("{trimmed}/api/v4/")
        };
        let base = reqwest::Url::parse(&api).map_err(|e| ClientError::Request(e.to_string()))?;
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self {
            base,
            token: token.into(),
            http,
        })
    }
}

impl api::RestClient for JobTokenClient {
    type Error = ClientError;

    fn rest_endpoint(&self, endpoint: &str) -> Result<reqwest::Url, ApiError<Self::Error>> {
        Ok(self.base.join(endpoint)?)
    }
}

impl api::Client for JobTokenClient {
    fn rest(
        &self,
        mut request: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<http::Response<Bytes>, ApiError<Self::Error>> {
        let call = || -> Result<http::Response<Bytes>, ClientError> {
            let mut token = http::HeaderValue::from_str(&self.token).map_err(|_| {
                ClientError::Request("job token is not a valid header value".into())
            })?;
            token.set_sensitive(true);
            if let Some(headers) = request.headers_mut() {
                headers.insert("JOB-TOKEN", token);
            }
            let request = request
                .body(body)
                .map_err(|e| ClientError::Request(e.to_string()))?;
            let request = reqwest::blocking::Request::try_from(request)
                .map_err(|e| ClientError::Request(error_chain(&e)))?;
            let response = self
                .http
                .execute(request)
                .map_err(|e| ClientError::Http(error_chain(&e.without_url())))?;
            let mut out = http::Response::builder()
                .status(response.status())
                .version(response.version());
            if let Some(headers) = out.headers_mut() {
                for (k, v) in response.headers() {
                    headers.insert(k, v.clone());
                }
            }
            let bytes = response
                .bytes()
                .map_err(|e| ClientError::Http(error_chain(&e.without_url())))?;
            out.body(bytes)
                .map_err(|e| ClientError::Request(e.to_string()))
        };
        call().map_err(ApiError::client)
    }
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
    let client = JobTokenClient::new(&base, &job.payload.token, timeout)
        .map_err(|e| unavailable(e.to_string()))?;
    let endpoint = api::job::Job::builder()
        .build()
        .map_err(|e| unavailable(e.to_string()))?;
    let api_job: ApiJob = endpoint.query(&client).map_err(|e| classify(e, &base))?;
    compare(identity, &api_job)
}

fn classify(e: ApiError<ClientError>, base: &str) -> IdentityError {
    let status = match &e {
        ApiError::GitlabWithStatus { status, .. }
        | ApiError::GitlabObjectWithStatus { status, .. }
        | ApiError::GitlabUnrecognizedWithStatus { status, .. }
        | ApiError::GitlabService { status, .. } => Some(status.as_u16()),
        _ => None,
    };
    match status {
        // GitLab answers 401 to a job token whose job is no longer running (or never existed),
        // 403/404 to one it does not accept for this endpoint: the job's fault, not the host's.
        Some(s @ (401 | 403 | 404)) => IdentityError::JobTokenRejected { status: s },
        _ => IdentityError::GitlabApiUnavailable {
            url: base.into(),
            detail: match e {
                // Response bodies of server errors are not echoed: only the status.
                ApiError::GitlabService { status, .. } => format!("HTTP {status}"),
                other => other.to_string(),
            },
        },
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
