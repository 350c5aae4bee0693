//! Which devstage a verified job may have: a pure function of (identity, request, config).
//!
//! No I/O and no job variables: the only input about the job is an [`Identity`] built from a
//! verified ID token. Every denial names the config rule that failed
//! (`devstages.<name>.<key>`) and the value that failed it, so a developer reading the job log
//! knows what to change, and an operator reading the audit log knows why.
//!
//! Values that come from the job (the requested devstage, project path, ref name, pipeline
//! source, environment) are always quoted with `{:?}`: Rust's Debug escaping covers every
//! character [`crate::terminal::is_unsafe`] names (tested there), so a message is one line
//! that cannot carry a newline or an escape sequence into the job log or the audit `reason`.

use serde::Serialize;

use crate::config::{Config, Devstage, RefType};
use crate::identity::Identity;
use crate::pattern_match;

/// The outcome of a credential request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The job gets the account's credentials.
    Grant {
        /// Requested devstage (exported to the job as `P3_DEVSTAGE`).
        devstage: String,
        /// Account / deploy stage whose credentials it gets (`P3_DEPLOY_STAGE`).
        deploy_account: String,
        /// That account's Kerberos principal (`P3_SYSTEM_ACCOUNT`).
        principal: String,
    },
    /// The job gets nothing.
    Deny {
        /// Config key of the rule that failed, e.g. `devstages.client_prod.tag_pattern`.
        rule: String,
        /// Why, with the values compared.
        reason: String,
    },
}

impl Decision {
    /// True for [`Decision::Grant`].
    pub fn is_grant(&self) -> bool {
        matches!(self, Decision::Grant { .. })
    }
}

impl std::fmt::Display for Decision {
    /// One line for the job log and the audit record: `devstages.x.rule: reason` for a denial.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Grant {
                devstage,
                deploy_account,
                principal,
            } => write!(
                f,
                "devstage {devstage} granted: credentials of account {deploy_account} ({principal})"
            ),
            Decision::Deny { rule, reason } => write!(f, "{rule}: {reason}"),
        }
    }
}

/// Decide whether `identity` may have devstage `requested`. Rules are checked in a fixed order
/// (projects, ref_types, protected_ref, branch_pattern, tag_pattern, pipeline_sources,
/// environment) and the first failure is reported.
pub fn decide(identity: &Identity, requested: &str, cfg: &Config) -> Decision {
    let Some(stage) = cfg.devstages.get(requested) else {
        let known: Vec<&str> = cfg.devstages.keys().map(String::as_str).collect();
        return deny(
            "devstages",
            format!(
                "unknown devstage {requested:?} requested in {}; known devstages: {}",
                cfg.identity.request_variable,
                if known.is_empty() {
                    "(none configured)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    };
    if let Err(denial) = check_stage(identity, requested, stage) {
        return denial;
    }
    // Config validation guarantees the account exists; stay safe if a caller skipped it.
    let Some(account) = cfg.accounts.get(&stage.deploy_account) else {
        return deny(
            &format!("devstages.{requested}.deploy_account"),
            format!(
                "account {:?} is not configured on this runner",
                stage.deploy_account
            ),
        );
    };
    Decision::Grant {
        devstage: requested.to_string(),
        deploy_account: stage.deploy_account.clone(),
        principal: account.principal.clone(),
    }
}

fn deny(rule: &str, reason: String) -> Decision {
    Decision::Deny {
        rule: rule.to_string(),
        reason,
    }
}

fn ref_type_name(t: RefType) -> &'static str {
    match t {
        RefType::Branch => "branch",
        RefType::Tag => "tag",
    }
}

/// One rule of a devstage applied to one job: what the config asks, what the job's verified
/// claims say, and whether it holds (with the denial's wording when it does not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCheck {
    /// Config key, e.g. `devstages.client_prod.tag_pattern`.
    pub rule: String,
    /// The claim value compared (from the verified identity).
    pub claim: String,
    /// What the rule requires (`(any)` when the devstage does not set it).
    pub expected: String,
    /// The rule holds.
    pub ok: bool,
    /// Why not, in the words of the denial `prepare` would give.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every rule of devstage `name`, in the fixed order [`decide`] checks them, applied to `id`.
/// `decide` denies with the first failing one; `policy explain` shows them all.
pub fn evaluate(id: &Identity, name: &str, stage: &Devstage) -> Vec<RuleCheck> {
    let rule = |key: &str| format!("devstages.{name}.{key}");
    let check = |key: &str, claim: String, expected: String, failure: Option<String>| RuleCheck {
        rule: rule(key),
        claim,
        expected,
        ok: failure.is_none(),
        reason: failure,
    };
    let mut out = Vec::new();

    // `*` must not cross `/`: `client/*` must not admit `client/forks/evil`.
    let project_ok = stage
        .projects
        .iter()
        .any(|pattern| pattern_match::glob(pattern, &id.project_path).unwrap_or(false));
    out.push(check(
        "projects",
        format!("{:?}", id.project_path),
        format!("{:?}", stage.projects),
        (!project_ok).then(|| {
            format!(
                "project {:?} matches none of {:?}",
                id.project_path, stage.projects
            )
        }),
    ));

    let kind = ref_type_name(id.ref_type);
    let allowed: Vec<&str> = stage.ref_types.iter().map(|t| ref_type_name(*t)).collect();
    out.push(check(
        "ref_types",
        kind.to_string(),
        allowed.join(", "),
        (!stage.ref_types.contains(&id.ref_type)).then(|| {
            format!(
                "{kind} {:?} is a {kind}; allowed ref types: {}",
                id.ref_name,
                allowed.join(", ")
            )
        }),
    ));

    out.push(check(
        "protected_ref",
        if id.ref_protected {
            "protected"
        } else {
            "not protected"
        }
        .into(),
        if stage.protected_ref {
            "protected"
        } else {
            "(any)"
        }
        .into(),
        (stage.protected_ref && !id.ref_protected)
            .then(|| format!("{kind} {:?} is not protected", id.ref_name)),
    ));

    let (key, pattern) = match id.ref_type {
        RefType::Branch => ("branch_pattern", stage.branch_pattern.as_ref()),
        RefType::Tag => ("tag_pattern", stage.tag_pattern.as_ref()),
    };
    let failure = pattern.and_then(|p| match pattern_match::full_regex(p, &id.ref_name) {
        Ok(true) => None,
        Ok(false) => Some(format!("{kind} {:?} does not match {p}", id.ref_name)),
        Err(e) => Some(format!("invalid regex {p}: {e}")),
    });
    out.push(check(
        key,
        format!("{:?}", id.ref_name),
        pattern.cloned().unwrap_or_else(|| "(any)".into()),
        failure,
    ));

    out.push(check(
        "pipeline_sources",
        format!("{:?}", id.pipeline_source),
        stage
            .pipeline_sources
            .as_ref()
            .map_or_else(|| "(any)".into(), |s| format!("{s:?}")),
        stage
            .pipeline_sources
            .as_ref()
            .filter(|sources| !sources.iter().any(|s| s == &id.pipeline_source))
            .map(|sources| {
                format!(
                    "pipeline source {:?} is not one of {:?}",
                    id.pipeline_source, sources
                )
            }),
    ));

    let env_claim = match &id.environment {
        Some(env) if id.environment_protected => format!("{env:?} (protected)"),
        Some(env) => format!("{env:?} (not protected)"),
        None => "(none)".into(),
    };
    let env_failure = stage.environment.as_ref().and_then(|required| match &id.environment {
        Some(env) if env == required => (!id.environment_protected)
            .then(|| format!("environment {env:?} is not a protected environment")),
        Some(env) => Some(format!("job environment is {env:?}, required {required:?}")),
        None => Some(format!(
            "job declares no environment; required {required:?} (set `environment: {required}` on the job)"
        )),
    });
    out.push(check(
        "environment",
        env_claim,
        stage
            .environment
            .as_ref()
            .map_or_else(|| "(any)".into(), |e| format!("{e:?} (protected)")),
        env_failure,
    ));
    out
}

fn check_stage(id: &Identity, name: &str, stage: &Devstage) -> Result<(), Decision> {
    match evaluate(id, name, stage).into_iter().find(|c| !c.ok) {
        Some(failed) => Err(Decision::Deny {
            rule: failed.rule,
            reason: failed.reason.unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentitySource;

    const CONFIG: &str = r#"
[identity]
gitlab_url = "https://gitlab.example.com"

[accounts.client_dev]
principal = "svc_client_dev@EXAMPLE.COM"
keytab = "/etc/p3-executor/keytabs/client_dev.keytab"

[accounts.client_uat]
principal = "svc_client_uat@EXAMPLE.COM"
keytab = "/etc/p3-executor/keytabs/client_uat.keytab"

[accounts.client_prod]
principal = "svc_client_prod@EXAMPLE.COM"
keytab = "/etc/p3-executor/keytabs/client_prod.keytab"

[devstages.client_dev]
deploy_account = "client_dev"
projects = ["client/*"]

[devstages.client_uat]
deploy_account = "client_uat"
projects = ["client/*"]
ref_types = ["branch", "tag"]
protected_ref = true
branch_pattern = '^(main|release/.+)$'
pipeline_sources = ["push", "web", "schedule"]

[devstages.client_prod]
deploy_account = "client_uat"
projects = ["client/*"]
ref_types = ["tag"]
protected_ref = true
tag_pattern = '^v\d+\.\d+\.\d+$'
pipeline_sources = ["push", "web"]

[devstages.client_prod_own]
deploy_account = "client_prod"
projects = ["client/app"]
ref_types = ["tag"]
protected_ref = true
tag_pattern = 'v\d+\.\d+\.\d+'
environment = "production"
"#;

    fn cfg() -> Config {
        Config::parse(CONFIG).unwrap()
    }

    fn branch(name: &str, protected: bool) -> Identity {
        Identity {
            project_path: "client/app".into(),
            project_id: 12,
            namespace_path: "client".into(),
            ref_name: name.into(),
            ref_type: RefType::Branch,
            ref_protected: protected,
            ref_path: format!("refs/heads/{name}"),
            environment: None,
            environment_protected: false,
            pipeline_source: "push".into(),
            pipeline_id: 7,
            user_login: "alice".into(),
            job_id: 4242,
            jti: "jti-1".into(),
            sha: "0123abcd".into(),
            source: IdentitySource::IdToken,
        }
    }

    fn tag(name: &str, protected: bool) -> Identity {
        Identity {
            ref_type: RefType::Tag,
            ref_path: format!("refs/tags/{name}"),
            ..branch(name, protected)
        }
    }

    /// (case, identity, requested devstage, expected: Ok(account) or Err(rule substring)).
    type Case = (
        &'static str,
        Identity,
        &'static str,
        Result<&'static str, &'static str>,
    );

    fn table() -> Vec<Case> {
        let mr = Identity {
            pipeline_source: "merge_request_event".into(),
            ..branch("main", true)
        };
        let fork = Identity {
            project_path: "client/forks/app".into(),
            ..branch("main", true)
        };
        let prod_env = |env: Option<&str>, protected: bool| Identity {
            environment: env.map(String::from),
            environment_protected: protected,
            ..tag("v2.0.0", true)
        };
        vec![
            (
                "dev branch → client_dev",
                branch("feature/x", false),
                "client_dev",
                Ok("client_dev"),
            ),
            (
                "unprotected feature → uat",
                branch("feature/x", false),
                "client_uat",
                Err("devstages.client_uat.protected_ref"),
            ),
            (
                "unprotected feature → prod",
                branch("feature/x", false),
                "client_prod",
                Err("devstages.client_prod.ref_types"),
            ),
            (
                "protected main → uat",
                branch("main", true),
                "client_uat",
                Ok("client_uat"),
            ),
            (
                "protected other branch → uat",
                branch("hotfix", true),
                "client_uat",
                Err("devstages.client_uat.branch_pattern"),
            ),
            (
                "protected main → prod",
                branch("main", true),
                "client_prod",
                Err("devstages.client_prod.ref_types"),
            ),
            (
                "protected release tag → prod via uat",
                tag("v1.2.3", true),
                "client_prod",
                Ok("client_uat"),
            ),
            (
                "unprotected release tag → prod",
                tag("v1.2.3", false),
                "client_prod",
                Err("devstages.client_prod.protected_ref"),
            ),
            (
                "protected non-release tag → prod",
                tag("v1.2", true),
                "client_prod",
                Err("devstages.client_prod.tag_pattern"),
            ),
            (
                "release tag with suffix → prod",
                tag("v1.2.3-rc1", true),
                "client_prod",
                Err("devstages.client_prod.tag_pattern"),
            ),
            (
                "MR pipeline → uat",
                mr.clone(),
                "client_uat",
                Err("devstages.client_uat.pipeline_sources"),
            ),
            (
                "MR pipeline → dev (any source)",
                mr,
                "client_dev",
                Ok("client_dev"),
            ),
            (
                "nested project → dev",
                fork,
                "client_dev",
                Err("devstages.client_dev.projects"),
            ),
            (
                "unknown devstage",
                branch("main", true),
                "client_qa",
                Err("devstages"),
            ),
            (
                "prod_own without environment",
                prod_env(None, false),
                "client_prod_own",
                Err("devstages.client_prod_own.environment"),
            ),
            (
                "prod_own unprotected environment",
                prod_env(Some("production"), false),
                "client_prod_own",
                Err("devstages.client_prod_own.environment"),
            ),
            (
                "prod_own other environment",
                prod_env(Some("staging"), true),
                "client_prod_own",
                Err("devstages.client_prod_own.environment"),
            ),
            (
                "prod_own protected production",
                prod_env(Some("production"), true),
                "client_prod_own",
                Ok("client_prod"),
            ),
            (
                "unanchored pattern still full-match",
                Identity {
                    environment: Some("production".into()),
                    environment_protected: true,
                    ..tag("xv1.2.3", true)
                },
                "client_prod_own",
                Err("devstages.client_prod_own.tag_pattern"),
            ),
        ]
    }

    #[test]
    fn decision_table() {
        let cfg = cfg();
        for (case, identity, requested, expected) in table() {
            let decision = decide(&identity, requested, &cfg);
            match (expected, &decision) {
                (
                    Ok(account),
                    Decision::Grant {
                        devstage,
                        deploy_account,
                        principal,
                    },
                ) => {
                    assert_eq!(devstage, requested, "{case}");
                    assert_eq!(deploy_account, account, "{case}");
                    assert_eq!(principal, &cfg.accounts[account].principal, "{case}");
                }
                (Err(rule_expected), Decision::Deny { rule, reason }) => {
                    assert_eq!(rule, rule_expected, "{case}: {reason}");
                    assert!(!reason.is_empty(), "{case}");
                }
                _ => panic!("{case}: expected {expected:?}, got {decision:?}"),
            }
        }
    }

    #[test]
    fn tag_pattern_denial_names_rule_tag_and_pattern() {
        let Decision::Deny { rule, reason } = decide(&tag("v1.2", true), "client_prod", &cfg())
        else {
            panic!("granted");
        };
        assert_eq!(rule, "devstages.client_prod.tag_pattern");
        assert_eq!(reason, r#"tag "v1.2" does not match ^v\d+\.\d+\.\d+$"#);
        let shown = decide(&tag("v1.2", true), "client_prod", &cfg()).to_string();
        assert_eq!(
            shown,
            r#"devstages.client_prod.tag_pattern: tag "v1.2" does not match ^v\d+\.\d+\.\d+$"#
        );
    }

    #[test]
    fn unknown_devstage_lists_known_ones() {
        let Decision::Deny { reason, .. } = decide(&branch("main", true), "nope", &cfg()) else {
            panic!("granted");
        };
        assert!(reason.contains("\"nope\""), "{reason}");
        assert!(
            reason.contains("client_dev, client_prod, client_prod_own, client_uat"),
            "{reason}"
        );
        assert!(reason.contains("P3_DEVSTAGE"), "{reason}");
    }

    #[test]
    fn job_supplied_values_are_escaped_in_every_denial() {
        const EVIL: &str = "x\n2026-01-01 grant granted\x1b[2J\u{9b}\u{202e}";
        let hostile_env = Identity {
            environment: Some(EVIL.into()),
            environment_protected: true,
            ..tag("v1.2.3", true)
        };
        let cases: Vec<(Identity, &str, &str)> = vec![
            (branch("main", true), EVIL, "devstages"),
            (
                Identity {
                    project_path: format!("other/{EVIL}"),
                    ..branch("main", true)
                },
                "client_dev",
                "devstages.client_dev.projects",
            ),
            (
                branch(EVIL, false),
                "client_prod",
                "devstages.client_prod.ref_types",
            ),
            (
                branch(EVIL, false),
                "client_uat",
                "devstages.client_uat.protected_ref",
            ),
            (
                branch(EVIL, true),
                "client_uat",
                "devstages.client_uat.branch_pattern",
            ),
            (
                tag(EVIL, true),
                "client_prod",
                "devstages.client_prod.tag_pattern",
            ),
            (
                Identity {
                    pipeline_source: EVIL.into(),
                    ..branch("main", true)
                },
                "client_uat",
                "devstages.client_uat.pipeline_sources",
            ),
            (
                hostile_env,
                "client_prod_own",
                "devstages.client_prod_own.environment",
            ),
        ];
        for (identity, requested, expected_rule) in cases {
            let decision = decide(&identity, requested, &cfg());
            let Decision::Deny { rule, reason } = &decision else {
                panic!("{expected_rule}: granted");
            };
            assert_eq!(rule, expected_rule, "{reason}");
            let shown = decision.to_string();
            assert!(
                !shown.chars().any(crate::terminal::is_unsafe),
                "{expected_rule}: {shown:?}"
            );
            assert!(
                shown.contains(r#"x\n2026-01-01 grant granted\u{1b}[2J\u{9b}\u{202e}""#),
                "{expected_rule}: {shown}"
            );
        }
    }

    #[test]
    fn project_glob_star_does_not_cross_slash_but_double_star_does() {
        let mut cfg = cfg();
        let id = Identity {
            project_path: "client/forks/app".into(),
            ..branch("x", false)
        };
        assert!(!decide(&id, "client_dev", &cfg).is_grant());
        cfg.devstages.get_mut("client_dev").unwrap().projects = vec!["client/**".into()];
        assert!(decide(&id, "client_dev", &cfg).is_grant());
        let other = Identity {
            project_path: "clientele/app".into(),
            ..branch("x", false)
        };
        assert!(!decide(&other, "client_dev", &cfg).is_grant());
    }

    #[test]
    fn branch_pattern_does_not_apply_to_tags_nor_tag_pattern_to_branches() {
        let mut cfg = cfg();
        let stage = cfg.devstages.get_mut("client_dev").unwrap();
        stage.branch_pattern = Some("^main$".into());
        stage.tag_pattern = Some(r"^v\d+$".into());
        assert!(decide(&tag("v1", false), "client_dev", &cfg).is_grant());
        assert!(decide(&branch("main", false), "client_dev", &cfg).is_grant());
        let Decision::Deny { rule, .. } = decide(&branch("dev", false), "client_dev", &cfg) else {
            panic!("granted");
        };
        assert_eq!(rule, "devstages.client_dev.branch_pattern");
    }
}
