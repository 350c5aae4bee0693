//! `[identity]`: how a job's identity is verified.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Job identity verification.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Base URL of the GitLab instance; the token's `iss` must equal it.
    #[serde(default)]
    pub gitlab_url: String,
    /// Audience (`aud`) the job's ID token must be minted for.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Job variable holding the ID token (`id_tokens:` key in `.gitlab-ci.yml`).
    #[serde(default = "default_token_variable")]
    pub token_variable: String,
    /// Job variable naming the requested devstage.
    #[serde(default = "default_request_variable")]
    pub request_variable: String,
    /// JWKS URL; default `<gitlab_url>/oauth/discovery/keys`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A local JWKS file instead of a URL (air-gapped hosts, tests).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// How long a fetched JWKS is trusted before it is fetched again.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_cache_ttl_secs: u64,
    /// Clock-skew allowance for `exp`/`nbf`/`iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Timeout for JWKS and GitLab API requests.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_secs: u64,
    /// On a token whose `kid` is not in the cached JWKS, refetch the JWKS only if the cached
    /// copy is at least this old, so tokens with made-up key ids cannot make every job hit GitLab.
    #[serde(default = "default_jwks_refetch_min_interval")]
    pub jwks_refetch_min_interval_secs: u64,
    /// Also confirm the job with the GitLab API (`GET /job` with the job token).
    #[serde(default)]
    pub confirm_with_gitlab_api: bool,
    /// GitLab API base for the confirmation; default `<gitlab_url>`.
    #[serde(default)]
    pub api_url: Option<String>,
}

fn default_audience() -> String {
    "p3-executor".into()
}
fn default_token_variable() -> String {
    "P3_ID_TOKEN".into()
}
fn default_request_variable() -> String {
    "P3_DEVSTAGE".into()
}
fn default_jwks_ttl() -> u64 {
    3600
}
fn default_leeway() -> u64 {
    30
}
fn default_http_timeout() -> u64 {
    10
}
fn default_jwks_refetch_min_interval() -> u64 {
    30
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            gitlab_url: String::new(),
            audience: default_audience(),
            token_variable: default_token_variable(),
            request_variable: default_request_variable(),
            jwks_url: None,
            jwks_file: None,
            jwks_cache_ttl_secs: default_jwks_ttl(),
            leeway_secs: default_leeway(),
            http_timeout_secs: default_http_timeout(),
            jwks_refetch_min_interval_secs: default_jwks_refetch_min_interval(),
            confirm_with_gitlab_api: false,
            api_url: None,
        }
    }
}
