//! The verified claims of an ID token turned into an [`Identity`].

use serde_json::{Map, Value};

use super::{Identity, IdentityError, IdentitySource};
use crate::config::RefType;

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
}
