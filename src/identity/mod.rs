//! Who a job is: a GitLab ID token verified against the instance's JWKS, optionally confirmed
//! with the GitLab API.
//!
//! Only two inputs are trusted here: the job id in JOB_RESPONSE_FILE (it comes from GitLab
//! through the runner, the job cannot change it) and claims inside a token whose RS256 signature
//! checks out against GitLab's published keys. Job variables such as `CI_COMMIT_REF_PROTECTED`
//! or `CI_COMMIT_TAG` are *never* read: a job's own `variables:` outrank predefined ones, so any
//! branch can forge them. The token itself travels in a job variable, but forging it is useless:
//! it must be signed by GitLab and name this very job.
//!
//! Nothing in this module logs or formats the token: errors carry claim names and the values
//! policy compares (issuer, audience, ids), never the token text.

pub mod gitlab_api;
pub mod jwks;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Config, RefType};
use crate::job::JobContext;

pub use jwks::JwksStore;

/// Where the identity's facts were confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// A GitLab ID token with a valid signature.
    IdToken,
    /// A valid ID token whose job, ref, tag flag and user the GitLab API confirmed.
    IdTokenAndGitlabApi,
}

/// The verified facts about a job that policy decides on and the audit log records.
///
/// Every field comes from a signed ID token (and, for [`IdentitySource::IdTokenAndGitlabApi`],
/// was cross-checked with the GitLab API); none comes from a job variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `project_path`, e.g. `group/sub/project`.
    pub project_path: String,
    /// `project_id`.
    pub project_id: u64,
    /// `namespace_path`, e.g. `group/sub`.
    pub namespace_path: String,
    /// `ref`: branch or tag name.
    pub ref_name: String,
    /// `ref_type`.
    pub ref_type: RefType,
    /// `ref_protected`.
    pub ref_protected: bool,
    /// `ref_path`, e.g. `refs/heads/main` (derived from `ref`/`ref_type` when absent).
    pub ref_path: String,
    /// `environment`, when the job declares one.
    pub environment: Option<String>,
    /// `environment_protected` (false without an environment).
    pub environment_protected: bool,
    /// `pipeline_source`, e.g. `push`, `merge_request_event`, `schedule`.
    pub pipeline_source: String,
    /// `pipeline_id`.
    pub pipeline_id: u64,
    /// `user_login`: the user the job runs for.
    pub user_login: String,
    /// `job_id`; always equal to the payload's job id.
    pub job_id: u64,
    /// `jti`: the token's unique id, for the audit log.
    pub jti: String,
    /// `sha`: the commit.
    pub sha: String,
    /// How the identity was established.
    pub source: IdentitySource,
}

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

/// Verify the job's ID token and return its identity, confirmed with the GitLab API when
/// `identity.confirm_with_gitlab_api` is set.
///
/// The JWKS comes from `identity.jwks_file`, or from `cfg.jwks_url()` through the on-disk cache
/// under `<state_root>/jwks/`.
pub fn verify(cfg: &Config, job: &JobContext) -> Result<Identity, IdentityError> {
    verify_with(cfg, job, &JwksStore::from_config(cfg))
}

/// [`verify`] with an explicit key store (tests, or a caller that keeps one around).
pub fn verify_with(
    cfg: &Config,
    job: &JobContext,
    keys: &JwksStore,
) -> Result<Identity, IdentityError> {
    // Checked before the token is read, so a config without an issuer says so first.
    expected_issuer(cfg)?;
    let (identity, _) = verify_job_token(cfg, job, keys, &Expected::identity(cfg))?;
    if cfg.identity.confirm_with_gitlab_api {
        gitlab_api::confirm(cfg, job, &identity)?;
        return Ok(Identity {
            source: IdentitySource::IdTokenAndGitlabApi,
            ..identity
        });
    }
    Ok(identity)
}

/// The ID token's expected issuer: `identity.gitlab_url` without its trailing slash; a config
/// without one cannot verify any token.
fn expected_issuer(cfg: &Config) -> Result<&str, IdentityError> {
    let issuer = cfg.identity.gitlab_url.trim_end_matches('/');
    if issuer.is_empty() {
        return Err(IdentityError::Config(
            "identity.gitlab_url is not set (it is the ID token's expected issuer)".into(),
        ));
    }
    Ok(issuer)
}

/// Which token a check is about: the job variable it came from and the `aud` it must carry.
///
/// The job's identity token is [`Expected::identity`]; a web-identity S3 account may ask for a
/// second `id_tokens:` entry with the audience its STS expects, checked exactly the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    /// The job variable holding the token (for messages: never the token itself).
    pub variable: &'a str,
    /// The audience the token must name.
    pub audience: &'a str,
}

impl<'a> Expected<'a> {
    /// The identity token: `identity.token_variable` with `identity.audience`.
    pub fn identity(cfg: &'a Config) -> Self {
        Expected {
            variable: &cfg.identity.token_variable,
            audience: &cfg.identity.audience,
        }
    }
}

/// Read the token `expected` names from the job's variables and verify it with
/// [`verify_token_for`], plus `job_id` = the payload's job id. Returns the identity and the
/// token text (borrowed from the payload; callers that pass it on must not print it).
///
/// A token defined more than once is refused: a job variable could shadow GitLab's.
pub fn verify_job_token<'j>(
    cfg: &Config,
    job: &'j JobContext,
    keys: &JwksStore,
    expected: &Expected<'_>,
) -> Result<(Identity, &'j str), IdentityError> {
    let variable = expected.variable;
    let count = job.variable_count(variable);
    if count > 1 {
        return Err(IdentityError::DuplicateToken {
            variable: variable.into(),
            count,
        });
    }
    let token = job.variable(variable).map(str::trim).unwrap_or_default();
    if token.is_empty() {
        return Err(IdentityError::MissingToken {
            variable: variable.into(),
            audience: expected.audience.into(),
        });
    }
    let identity = verify_token_for(cfg, token, keys, None, expected)?;
    if identity.job_id != job.job_id() {
        return Err(IdentityError::JobMismatch {
            token_job_id: identity.job_id,
            payload_job_id: job.job_id(),
        });
    }
    Ok((identity, token))
}

/// Check one ID token's signature (RS256 against `keys`), issuer, audience and times, and
/// return the identity its claims describe. `at` replaces the clock (`policy explain --at`).
/// The one token check behind `prepare` and `policy explain`.
pub fn verify_token(
    cfg: &Config,
    token: &str,
    keys: &JwksStore,
    at: Option<u64>,
) -> Result<Identity, IdentityError> {
    verify_token_for(cfg, token, keys, at, &Expected::identity(cfg))
}

/// [`verify_token`] for a token from `expected.variable` that must name `expected.audience`
/// (the identity token, or a web-identity account's STS token).
pub fn verify_token_for(
    cfg: &Config,
    token: &str,
    keys: &JwksStore,
    at: Option<u64>,
    expected: &Expected<'_>,
) -> Result<Identity, IdentityError> {
    let ic = &cfg.identity;
    let issuer = expected_issuer(cfg)?;
    let variable = expected.variable;

    // The header is read before the signature is checked only to pick the key; nothing in it
    // is trusted beyond that, and only RS256 is accepted (no `none`, no HMAC key confusion).
    let header = jsonwebtoken::decode_header(token).map_err(|e| IdentityError::Malformed {
        variable: variable.into(),
        detail: format!(
            "cannot decode header ({}); only RS256 JWTs are accepted",
            describe(&e)
        ),
    })?;
    if header.alg != Algorithm::RS256 {
        return Err(IdentityError::Algorithm {
            alg: format!("{:?}", header.alg),
        });
    }
    let kid = header.kid.ok_or(IdentityError::MissingKid)?;
    let key = keys.decoding_key(&kid)?;

    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = ic.leeway_secs;
    // With an explicit time (`policy explain --at`), expiry is checked below against it.
    validation.validate_exp = at.is_none();
    validation.validate_nbf = at.is_none();
    validation.validate_aud = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_audience(&[expected.audience]);
    // GitLab's `iss` is its URL without a trailing slash; accept either spelling of the
    // configured URL so a config typo does not deny every job.
    validation.set_issuer(&[issuer.to_string(), format!("{issuer}/")]);

    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| map_decode_error(e, token, cfg, expected))?;
    let claims = data.claims;

    // jsonwebtoken does not check `iat`; a token "issued" in the future means a skewed clock
    // or a forgery attempt with a long-lived key, either way not acceptable.
    let now = at.unwrap_or_else(jsonwebtoken::get_current_timestamp);
    if at.is_some() {
        let time = |claim: &str| claims.get(claim).and_then(Value::as_u64);
        if let Some(exp) = time("exp").filter(|exp| exp + ic.leeway_secs < now) {
            return Err(IdentityError::Expired {
                exp: rfc3339(exp as i64),
                now: rfc3339(now as i64),
                leeway: ic.leeway_secs,
            });
        }
        if time("nbf").is_some_and(|nbf| nbf > now + ic.leeway_secs) {
            return Err(IdentityError::NotYetValid { claim: "nbf" });
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_u64().ok_or_else(|| IdentityError::InvalidClaim {
            claim: "iat".into(),
            detail: "not a number".into(),
        })?;
        if iat > now + ic.leeway_secs {
            return Err(IdentityError::NotYetValid { claim: "iat" });
        }
    }

    identity_from_claims(&claims)
}

/// A jsonwebtoken error without any part of the token (its JSON errors may quote claim text).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::Base64(_) => "invalid base64".into(),
        ErrorKind::Json(_) => "invalid JSON".into(),
        ErrorKind::Utf8(_) => "invalid UTF-8".into(),
        ErrorKind::InvalidToken => "not three dot-separated parts".into(),
        other => format!("{other:?}"),
    }
}

fn map_decode_error(
    e: jsonwebtoken::errors::Error,
    token: &str,
    cfg: &Config,
    expected: &Expected<'_>,
) -> IdentityError {
    let ic = &cfg.identity;
    // Only reached after the signature verified (jsonwebtoken checks it before the claims), so
    // reading the claims unverified here just recovers values for a precise message.
    let unverified = || {
        jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
            .unwrap_or_default()
    };
    match e.kind() {
        ErrorKind::InvalidSignature => IdentityError::BadSignature,
        ErrorKind::InvalidAlgorithm => IdentityError::Algorithm {
            alg: "an algorithm the key does not support".into(),
        },
        ErrorKind::ExpiredSignature => {
            let exp = unverified()
                .get("exp")
                .and_then(Value::as_i64)
                .unwrap_or_default();
            IdentityError::Expired {
                exp: rfc3339(exp),
                now: rfc3339(jsonwebtoken::get_current_timestamp() as i64),
                leeway: ic.leeway_secs,
            }
        }
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid { claim: "nbf" },
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer {
            expected: ic.gitlab_url.trim_end_matches('/').to_string(),
            got: unverified().get("iss").map(value_text).unwrap_or_default(),
        },
        ErrorKind::InvalidAudience => IdentityError::WrongAudience {
            expected: expected.audience.to_string(),
            got: match unverified().get("aud") {
                Some(Value::Array(items)) => items.iter().map(value_text).collect(),
                Some(v) => vec![value_text(v)],
                None => Vec::new(),
            },
        },
        ErrorKind::MissingRequiredClaim(c) => IdentityError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => IdentityError::InvalidClaim {
            claim: c.clone(),
            detail: "wrong type".into(),
        },
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => IdentityError::JwksInvalid {
            source_name: ic
                .jwks_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| cfg.jwks_url()),
            detail: format!("key cannot be used: {}", describe(&e)),
        },
        _ => IdentityError::Malformed {
            variable: expected.variable.to_string(),
            detail: describe(&e),
        },
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| secs.to_string())
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Build an [`Identity`] from verified claims. GitLab encodes ids and booleans as strings in
/// ID tokens (`"job_id": "42"`, `"ref_protected": "true"`); native JSON forms are accepted too.
pub fn identity_from_claims(claims: &Map<String, Value>) -> Result<Identity, IdentityError> {
    let ref_name = req_str(claims, "ref")?;
    let ref_type = match req_str(claims, "ref_type")?.as_str() {
        "branch" => RefType::Branch,
        "tag" => RefType::Tag,
        other => {
            return Err(IdentityError::InvalidClaim {
                claim: "ref_type".into(),
                detail: format!("{other:?} is neither \"branch\" nor \"tag\""),
            });
        }
    };
    let ref_path = match opt_str(claims, "ref_path")? {
        Some(p) => p,
        None => match ref_type {
            RefType::Branch => format!("refs/heads/{ref_name}"),
            RefType::Tag => format!("refs/tags/{ref_name}"),
        },
    };
    let environment = opt_str(claims, "environment")?.filter(|e| !e.is_empty());
    // An environment's protection only means something when there is an environment.
    let environment_protected =
        environment.is_some() && opt_bool(claims, "environment_protected")?.unwrap_or(false);
    Ok(Identity {
        project_path: req_str(claims, "project_path")?,
        project_id: req_u64(claims, "project_id")?,
        namespace_path: req_str(claims, "namespace_path")?,
        ref_name,
        ref_type,
        ref_protected: opt_bool(claims, "ref_protected")?
            .ok_or_else(|| IdentityError::MissingClaim("ref_protected".into()))?,
        ref_path,
        environment,
        environment_protected,
        pipeline_source: req_str(claims, "pipeline_source")?,
        pipeline_id: req_u64(claims, "pipeline_id")?,
        user_login: req_str(claims, "user_login")?,
        job_id: req_u64(claims, "job_id")?,
        jti: req_str(claims, "jti")?,
        sha: req_str(claims, "sha")?,
        source: IdentitySource::IdToken,
    })
}

fn opt_str(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, IdentityError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(IdentityError::InvalidClaim {
            claim: name.into(),
            detail: "not a string".into(),
        }),
    }
}

fn req_str(claims: &Map<String, Value>, name: &str) -> Result<String, IdentityError> {
    opt_str(claims, name)?.ok_or_else(|| IdentityError::MissingClaim(name.into()))
}

fn req_u64(claims: &Map<String, Value>, name: &str) -> Result<u64, IdentityError> {
    let invalid = |detail: &str| IdentityError::InvalidClaim {
        claim: name.into(),
        detail: detail.into(),
    };
    match claims.get(name) {
        None | Some(Value::Null) => Err(IdentityError::MissingClaim(name.into())),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| invalid("not a positive integer")),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .map_err(|_| invalid("not a positive integer")),
        Some(_) => Err(invalid("not a number")),
    }
}

fn opt_bool(claims: &Map<String, Value>, name: &str) -> Result<Option<bool>, IdentityError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(_) => Err(IdentityError::InvalidClaim {
            claim: name.into(),
            detail: "not \"true\" or \"false\"".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn gitlab_like() -> Value {
        json!({
            "project_path": "client/app", "project_id": "12", "namespace_path": "client",
            "ref": "main", "ref_type": "branch", "ref_protected": "true",
            "ref_path": "refs/heads/main", "pipeline_source": "push", "pipeline_id": "99",
            "user_login": "alice", "job_id": "4242", "jti": "j-1", "sha": "abc"
        })
    }

    #[test]
    fn string_encoded_ids_and_booleans_are_parsed() {
        let id = identity_from_claims(&claims(gitlab_like())).unwrap();
        assert_eq!(id.job_id, 4242);
        assert_eq!(id.project_id, 12);
        assert!(id.ref_protected);
        assert_eq!(id.ref_type, RefType::Branch);
        assert_eq!(id.environment, None);
    }

    #[test]
    fn native_json_forms_are_accepted_too() {
        let mut v = gitlab_like();
        v["job_id"] = json!(4242);
        v["ref_protected"] = json!(false);
        v["environment"] = json!("production");
        v["environment_protected"] = json!(true);
        let id = identity_from_claims(&claims(v)).unwrap();
        assert_eq!(id.job_id, 4242);
        assert!(!id.ref_protected);
        assert_eq!(id.environment.as_deref(), Some("production"));
        assert!(id.environment_protected);
    }

    #[test]
    fn bad_or_missing_claims_are_named() {
        let mut v = gitlab_like();
        v["ref_protected"] = json!("yes");
        let err = identity_from_claims(&claims(v)).unwrap_err();
        assert!(err.to_string().contains("ref_protected"), "{err}");
        let mut v = gitlab_like();
        v.as_object_mut().unwrap().remove("project_path");
        let err = identity_from_claims(&claims(v)).unwrap_err();
        assert!(matches!(err, IdentityError::MissingClaim(ref c) if c == "project_path"));
        let mut v = gitlab_like();
        v["ref_type"] = json!("commit");
        assert!(identity_from_claims(&claims(v)).is_err());
    }

    #[test]
    fn ref_path_is_derived_when_absent() {
        let mut v = gitlab_like();
        v.as_object_mut().unwrap().remove("ref_path");
        v["ref_type"] = json!("tag");
        v["ref"] = json!("v1.0.0");
        let id = identity_from_claims(&claims(v)).unwrap();
        assert_eq!(id.ref_path, "refs/tags/v1.0.0");
    }

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
