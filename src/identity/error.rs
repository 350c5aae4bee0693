//! Why a job's identity could not be established, and whose fault that is.

/// Why a job's identity could not be established.
///
/// [`IdentityError::is_system`] separates the host's failures (JWKS or GitLab unreachable,
/// executor misconfigured: the runner should retry) from denials (the job's token is missing,
/// forged, stale or for something else: the job fails).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The job has no ID token.
    #[error(
        "job requests credentials but has no GitLab ID token in variable {variable}; add this to the job in .gitlab-ci.yml:\n\nid_tokens:\n  {variable}:\n    aud: {audience}\n"
    )]
    MissingToken {
        /// Expected variable.
        variable: String,
        /// Expected audience.
        audience: String,
    },
    /// The token variable is defined more than once (a job variable shadows the ID token).
    #[error(
        "variable {variable} is defined {count} times: only GitLab's `id_tokens:` may set it; remove it from the job's `variables:`"
    )]
    DuplicateToken {
        /// Variable name.
        variable: String,
        /// How many definitions.
        count: usize,
    },
    /// Not a JWT, or its header or claims cannot be decoded.
    #[error("ID token in {variable} is malformed: {detail}")]
    Malformed {
        /// Variable name.
        variable: String,
        /// What is wrong (never the token).
        detail: String,
    },
    /// Signed with something other than RS256 (`none`, HMAC, ...).
    #[error("ID token is signed with {alg}; only RS256 tokens from GitLab are accepted")]
    Algorithm {
        /// Algorithm found in the header.
        alg: String,
    },
    /// The header has no `kid`.
    #[error("ID token has no key id (kid) in its header")]
    MissingKid,
    /// The `kid` is not in GitLab's JWKS, even after a refetch.
    #[error("ID token is signed with key {kid:?}, which is not in GitLab's JWKS ({jwks})")]
    UnknownKey {
        /// Key id from the token.
        kid: String,
        /// JWKS source.
        jwks: String,
    },
    /// The `kid` names a key that cannot verify RS256.
    #[error("ID token key {kid:?} in the JWKS is not an RS256 signing key")]
    UnusableKey {
        /// Key id.
        kid: String,
    },
    /// The signature does not match.
    #[error("ID token signature is invalid (not signed by this GitLab instance)")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error(
        "ID token expired at {exp} (now {now}, leeway {leeway}s): GitLab ID tokens expire with the job timeout; retry the job"
    )]
    Expired {
        /// `exp` as RFC 3339.
        exp: String,
        /// Current time as RFC 3339.
        now: String,
        /// Allowed skew.
        leeway: u64,
    },
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("ID token is not valid yet ({claim} is in the future): check the runner host's clock")]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
    },
    /// `iss` is not the configured GitLab.
    #[error("ID token issuer is {got:?}, expected {expected:?}")]
    WrongIssuer {
        /// Configured GitLab URL.
        expected: String,
        /// The token's `iss`.
        got: String,
    },
    /// `aud` does not contain the configured audience.
    #[error(
        "ID token audience is {got:?}, expected {expected:?}: set `aud: {expected}` under the job's id_tokens"
    )]
    WrongAudience {
        /// Configured audience.
        expected: String,
        /// The token's `aud`.
        got: Vec<String>,
    },
    /// A required claim is absent.
    #[error("ID token lacks the {0:?} claim")]
    MissingClaim(String),
    /// A claim has an unusable value.
    #[error("ID token claim {claim:?} is invalid: {detail}")]
    InvalidClaim {
        /// Claim name.
        claim: String,
        /// What is wrong.
        detail: String,
    },
    /// The token belongs to another job.
    #[error(
        "ID token was issued for job {token_job_id}, but this is job {payload_job_id}: a token cannot be reused by another job"
    )]
    JobMismatch {
        /// `job_id` claim.
        token_job_id: u64,
        /// Job id from JOB_RESPONSE_FILE.
        payload_job_id: u64,
    },
    /// GitLab says the job is not running.
    #[error("GitLab API reports job {job_id} as {status:?}, not running")]
    JobNotRunning {
        /// Job id.
        job_id: u64,
        /// Status reported.
        status: String,
    },
    /// GitLab refused the job token.
    #[error(
        "GitLab API rejected the job token (HTTP {status}): the job is not running or the token is not its own"
    )]
    JobTokenRejected {
        /// HTTP status.
        status: u16,
    },
    /// The GitLab API disagrees with the token.
    #[error(
        "GitLab API disagrees with the ID token on {field}: token says {token:?}, API says {api:?}"
    )]
    ApiMismatch {
        /// What differs.
        field: &'static str,
        /// Value in the token.
        token: String,
        /// Value from the API.
        api: String,
    },
    /// The JWKS cannot be obtained (system failure).
    #[error("cannot obtain GitLab's JWKS from {source_name}: {detail}")]
    JwksUnavailable {
        /// URL or file.
        source_name: String,
        /// Why.
        detail: String,
    },
    /// The JWKS was obtained but is not a usable key set (system failure).
    #[error("GitLab's JWKS from {source_name} is invalid: {detail}")]
    JwksInvalid {
        /// URL or file.
        source_name: String,
        /// Why.
        detail: String,
    },
    /// The GitLab API cannot be reached or answered unexpectedly (system failure).
    #[error("cannot confirm the job with the GitLab API at {url}: {detail}")]
    GitlabApiUnavailable {
        /// API base URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The executor's identity settings are unusable (system failure).
    #[error("identity configuration: {0}")]
    Config(String),
}

impl IdentityError {
    /// True when the host is at fault (JWKS or GitLab unreachable, bad config) rather than the
    /// job: the runner should report a system failure and may retry.
    pub fn is_system(&self) -> bool {
        matches!(
            self,
            IdentityError::JwksUnavailable { .. }
                | IdentityError::JwksInvalid { .. }
                | IdentityError::GitlabApiUnavailable { .. }
                | IdentityError::Config(_)
        )
    }
}

impl From<IdentityError> for crate::error::Error {
    fn from(e: IdentityError) -> Self {
        if e.is_system() {
            crate::error::Error::Credentials(e.to_string())
        } else {
            crate::error::Error::Denied(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_versus_denial() {
        assert!(
            IdentityError::JwksUnavailable {
                source_name: "u".into(),
                detail: "d".into()
            }
            .is_system()
        );
        assert!(!IdentityError::BadSignature.is_system());
        let missing = IdentityError::MissingToken {
            variable: "P3_ID_TOKEN".into(),
            audience: "p3-executor".into(),
        };
        assert!(!missing.is_system());
        assert!(
            missing
                .to_string()
                .contains("id_tokens:\n  P3_ID_TOKEN:\n    aud: p3-executor")
        );
    }
}
