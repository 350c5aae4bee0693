//! One ID token checked: its signature (RS256 against the JWKS), issuer, audience and times;
//! and the job's token read from its variables and tied to the payload's job id.
//!
//! Nothing here logs or formats the token: errors carry claim names and compared values only.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::{Identity, IdentityError, JwksStore, identity_from_claims};
use crate::config::Config;
use crate::job::JobContext;

/// The ID token's expected issuer: `identity.gitlab_url` without its trailing slash; a config
/// without one cannot verify any token.
pub(super) fn expected_issuer(cfg: &Config) -> Result<&str, IdentityError> {
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

    super::crypto::install();
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
