//! The grant's decision, pure: what the job asked for, the verified identity and the config
//! in; the devstage and account granted, or a [`Denial`] with everything its audit record and
//! its job-log error need, out. No I/O: the caller verifies the tokens and records the denial
//! (`record::deny`, the one place a deny record is built).

use crate::audit::Decision as Outcome;
use crate::config::Config;
use crate::error::Error;
use crate::identity::{Identity, IdentityError};
use crate::images::ImageError;
use crate::job::JobContext;
use crate::policy::{self, Decision};

/// What policy granted: the devstage, and the account (deploy stage) and principal serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Granted {
    /// The devstage asked for and granted.
    pub devstage: String,
    /// The account (deploy stage) whose credentials the job gets.
    pub deploy_account: String,
    /// That account's Kerberos principal.
    pub principal: String,
}

/// Which gate refused the job: it decides what the deny record names besides the devstage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    /// This runner grants no devstages (nothing about the job was verified).
    Offer,
    /// The job's identity token did not verify.
    Identity,
    /// A rule of the devstage failed.
    Policy,
    /// The web-identity S3 account's token did not verify (names the account).
    WebToken {
        /// The account granted.
        account: String,
    },
    /// The job's image is refused or cannot be pulled (names the deploy stage and the image).
    Image {
        /// The account granted (recorded as the deploy stage).
        account: String,
        /// The image the job asked for, as written.
        image: Option<String>,
    },
}

/// Why a job gets nothing: the audit record's outcome and reason, and the job's error.
#[derive(Debug)]
pub(super) struct Denial {
    /// Where the job was stopped.
    pub gate: Gate,
    /// The devstage asked for.
    pub devstage: String,
    /// `Denied` (the job's fault) or `Failed` (the host's: a system failure).
    pub decision: Outcome,
    /// The audit record's reason.
    pub reason: String,
    /// What the job log says (a build failure for a denial, a system failure otherwise).
    pub error: Error,
}

/// The devstage the job asks for in the request variable, trimmed; None: a plain job.
pub(super) fn requested<'j>(cfg: &Config, job: &'j JobContext) -> Option<&'j str> {
    job.variable(&cfg.identity.request_variable)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A runner without devstages refuses every request at once, before any token is read: not a
/// host fault to retry, this runner simply offers no credentials.
pub(super) fn offered(cfg: &Config, requested: &str) -> Result<(), Box<Denial>> {
    if !cfg.devstages.is_empty() {
        return Ok(());
    }
    let reason = format!(
        "devstage {requested} requested, but this runner grants no devstages; remove {} or run the job on a p3-executor runner that offers it",
        cfg.identity.request_variable
    );
    Err(Box::new(Denial {
        gate: Gate::Offer,
        devstage: requested.into(),
        decision: Outcome::Denied,
        error: Error::Denied(reason.clone()),
        reason,
    }))
}

/// The job's identity token did not verify: a denial, or a system failure when the host is
/// at fault (JWKS unreachable).
pub(super) fn unverified(requested: &str, e: &IdentityError) -> Denial {
    let (decision, error) = if e.is_system() {
        (
            Outcome::Failed,
            Error::Credentials(format!("cannot verify the job's identity: {e}")),
        )
    } else {
        (
            Outcome::Denied,
            Error::Denied(format!("devstage {requested} denied: {e}")),
        )
    };
    Denial {
        gate: Gate::Identity,
        devstage: requested.into(),
        decision,
        reason: e.to_string(),
        error,
    }
}

/// Policy's decision on a verified identity ([`policy::decide`]).
pub(super) fn decide(
    identity: &Identity,
    requested: &str,
    cfg: &Config,
) -> Result<Granted, Box<Denial>> {
    match policy::decide(identity, requested, cfg) {
        Decision::Grant {
            devstage,
            deploy_account,
            principal,
        } => Ok(Granted {
            devstage,
            deploy_account,
            principal,
        }),
        Decision::Deny { rule, reason } => Err(Box::new(Denial {
            gate: Gate::Policy,
            devstage: requested.into(),
            decision: Outcome::Denied,
            reason: format!("{rule}: {reason}"),
            error: Error::Denied(format!("devstage {requested} denied: {rule}: {reason}")),
        })),
    }
}

/// How a web-identity token that did not verify ends what was being done (`what`: the
/// devstage, or the refresh): the job's fault is a denial (build failure), the host's (JWKS
/// unreachable) a system failure. Returns the audit outcome and the error.
pub(super) fn web_token_failure(e: &IdentityError, what: &str) -> (Outcome, Error) {
    if e.is_system() {
        (
            Outcome::Failed,
            Error::Credentials(format!(
                "{what}: cannot verify the S3 web identity token: {e}"
            )),
        )
    } else {
        (
            Outcome::Denied,
            Error::Denied(format!("{what} denied: S3 web identity token: {e}")),
        )
    }
}

/// A web-identity S3 account's token did not verify: checked before anything is obtained, so
/// a missing or forged second token denies the job like a bad identity token.
pub(super) fn web_token_refused(requested: &str, granted: &Granted, e: &IdentityError) -> Denial {
    let (decision, error) = web_token_failure(e, &format!("devstage {requested}"));
    Denial {
        gate: Gate::WebToken {
            account: granted.deploy_account.clone(),
        },
        devstage: granted.devstage.clone(),
        decision,
        reason: format!(
            "accounts.{}.s3.web_identity token: {e}",
            granted.deploy_account
        ),
        error,
    }
}

/// The job's image is refused by the devstage's policy (a denial) or cannot be pulled (a
/// system failure); `image` is what the job asked for.
pub(super) fn image_refused(granted: &Granted, e: ImageError, image: Option<String>) -> Denial {
    let decision = if matches!(e, ImageError::Failed(_)) {
        Outcome::Failed
    } else {
        Outcome::Denied
    };
    Denial {
        gate: Gate::Image {
            account: granted.deploy_account.clone(),
            image,
        },
        devstage: granted.devstage.clone(),
        decision,
        reason: format!("image: {e}"),
        error: e.into(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::RefType;
    use crate::identity::IdentitySource;
    use crate::images::policy::Refusal;

    pub(in crate::grant) const CONFIG: &str = r#"
[identity]
gitlab_url = "https://gitlab.example.com"

[accounts.uat]
principal = "svc_uat@EXAMPLE.COM"
keytab = "/k/uat.keytab"

[devstages.client_uat]
deploy_account = "uat"
projects = ["client/*"]
protected_ref = true
"#;

    pub(in crate::grant) fn cfg(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    pub(in crate::grant) fn identity(project: &str, protected: bool) -> Identity {
        Identity {
            project_path: project.into(),
            project_id: 7,
            namespace_path: "client".into(),
            ref_name: "main".into(),
            ref_type: RefType::Branch,
            ref_protected: protected,
            ref_path: "refs/heads/main".into(),
            environment: None,
            environment_protected: false,
            pipeline_source: "push".into(),
            pipeline_id: 99,
            user_login: "alice".into(),
            job_id: 42,
            jti: "j-1".into(),
            sha: "abc".into(),
            source: IdentitySource::IdToken,
        }
    }

    pub(in crate::grant) fn granted() -> Granted {
        Granted {
            devstage: "client_uat".into(),
            deploy_account: "uat".into(),
            principal: "svc_uat@EXAMPLE.COM".into(),
        }
    }

    /// (error, is a build failure) for comparing errors, which are not `PartialEq`.
    fn job_error(e: &Error) -> (String, bool) {
        (e.to_string(), matches!(e, Error::Denied(_)))
    }

    #[test]
    fn policy_grants_the_devstages_account_or_denies_naming_the_rule() {
        let cfg = cfg(CONFIG);
        // (project, protected ref, devstage asked) → Ok(granted) or Err((reason starts with, error))
        type Want = Result<Granted, (&'static str, &'static str)>;
        let table: [(&str, bool, &str, Want); 4] = [
            ("client/app", true, "client_uat", Ok(granted())),
            (
                "client/app",
                false,
                "client_uat",
                Err((
                    "devstages.client_uat.protected_ref: ",
                    "devstage client_uat denied: devstages.client_uat.protected_ref: ",
                )),
            ),
            (
                "other/app",
                true,
                "client_uat",
                Err((
                    "devstages.client_uat.projects: ",
                    "devstage client_uat denied: devstages.client_uat.projects: ",
                )),
            ),
            (
                "client/app",
                true,
                "client_prod",
                Err(("devstages: ", "devstage client_prod denied: devstages: ")),
            ),
        ];
        for (project, protected, asked, want) in table {
            let got = decide(&identity(project, protected), asked, &cfg);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{project} {asked}"),
                (Err(d), Err((reason, error))) => {
                    assert_eq!(d.gate, Gate::Policy);
                    assert_eq!(d.devstage, asked);
                    assert_eq!(d.decision, Outcome::Denied);
                    assert!(d.reason.starts_with(reason), "{}", d.reason);
                    let (text, build) = job_error(&d.error);
                    assert!(text.starts_with(error) && build, "{text}");
                }
                (got, want) => panic!("{project} {asked}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn each_denial_says_whose_fault_it_is() {
        let jwks_down = IdentityError::JwksUnavailable {
            source_name: "https://gitlab.example.com/oauth/discovery/keys".into(),
            detail: "timed out".into(),
        };
        let forged = IdentityError::BadSignature;
        let image = |e| image_refused(&granted(), e, Some("alpine".into()));
        // (denial, gate, decision, job error, is a build failure)
        let table = [
            (
                *offered(
                    &cfg("[identity]\ngitlab_url = \"https://g\"\n"),
                    "client_uat",
                )
                .unwrap_err(),
                Gate::Offer,
                Outcome::Denied,
                "devstage client_uat requested, but this runner grants no devstages; remove P3_DEVSTAGE or run the job on a p3-executor runner that offers it",
                true,
            ),
            (
                unverified("client_uat", &forged),
                Gate::Identity,
                Outcome::Denied,
                "devstage client_uat denied: ID token signature is invalid (not signed by this GitLab instance)",
                true,
            ),
            (
                unverified("client_uat", &jwks_down),
                Gate::Identity,
                Outcome::Failed,
                "cannot verify the job's identity: cannot obtain GitLab's JWKS from https://gitlab.example.com/oauth/discovery/keys: timed out",
                false,
            ),
            (
                web_token_refused("client_uat", &granted(), &forged),
                Gate::WebToken {
                    account: "uat".into(),
                },
                Outcome::Denied,
                "devstage client_uat denied: S3 web identity token: ID token signature is invalid (not signed by this GitLab instance)",
                true,
            ),
            (
                web_token_refused("client_uat", &granted(), &jwks_down),
                Gate::WebToken {
                    account: "uat".into(),
                },
                Outcome::Failed,
                "devstage client_uat: cannot verify the S3 web identity token: cannot obtain GitLab's JWKS from https://gitlab.example.com/oauth/discovery/keys: timed out",
                false,
            ),
            (
                image(ImageError::Denied(Refusal {
                    rule: "devstages.client_uat.images".into(),
                    reason: "alpine is not allowed".into(),
                })),
                Gate::Image {
                    account: "uat".into(),
                    image: Some("alpine".into()),
                },
                Outcome::Denied,
                "",
                true,
            ),
            (
                image(ImageError::Failed("registry unreachable".into())),
                Gate::Image {
                    account: "uat".into(),
                    image: Some("alpine".into()),
                },
                Outcome::Failed,
                "",
                false,
            ),
        ];
        for (denial, gate, decision, error, build) in table {
            assert_eq!(denial.gate, gate, "{}", denial.reason);
            assert_eq!(denial.devstage, "client_uat");
            assert_eq!(denial.decision, decision, "{}", denial.reason);
            let (text, is_build) = job_error(&denial.error);
            if !error.is_empty() {
                assert_eq!(text, error);
            }
            assert_eq!(is_build, build, "{text}");
        }
    }

    #[test]
    fn the_request_is_the_trimmed_variable_and_empty_is_none() {
        let cfg = cfg(CONFIG);
        let job = |value: &str| {
            let text = format!(
                r#"{{"id": 42, "variables": [{{"key": "P3_DEVSTAGE", "value": {value:?}}}]}}"#
            );
            JobContext::from_json(text.as_bytes()).unwrap()
        };
        for (value, want) in [
            ("client_uat", Some("client_uat")),
            ("  client_uat\n", Some("client_uat")),
            ("", None),
            ("   ", None),
        ] {
            assert_eq!(requested(&cfg, &job(value)), want, "{value:?}");
        }
    }
}
