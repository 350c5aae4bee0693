//! The client calls of a `p3` run, rendered before any runs (pure): the values each template
//! gets for one job, and every job's argv.

use p3_contract::steps_config::{Action, P3Config};
use p3_contract::template::{self, Value, Values};

use super::P3Error;
use crate::p3toml::ResolvedJob;

/// The job-independent values every template gets.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// Account the client authenticates as.
    pub(crate) deploy_stage: String,
    /// Devstage the P3 job runs as.
    pub(crate) devstage: String,
    /// Image (digest-pinned), needed by deploy.
    pub(crate) image: Option<String>,
}

/// The values for one job. `{schedule}`, `{cpu}` and `{memory}` are optional (their element is
/// dropped when unset); `{env}` is one `KEY=VALUE` per variable; `{image}` exists only when an
/// image is known, so a remove template that names it fails loudly instead of guessing.
pub(crate) fn values(job: &ResolvedJob, facts: &Facts) -> Values {
    let mut v = Values::new();
    v.insert(
        "deploy_stage".into(),
        Value::One(facts.deploy_stage.clone()),
    );
    v.insert("devstage".into(), Value::One(facts.devstage.clone()));
    if let Some(image) = &facts.image {
        v.insert("image".into(), Value::One(image.clone()));
    }
    v.insert("job".into(), Value::One(job.name.clone()));
    v.insert("command".into(), Value::One(job.command.clone()));
    v.insert("schedule".into(), Value::optional(job.schedule.clone()));
    v.insert("cpu".into(), Value::optional(job.resources.cpu.clone()));
    v.insert(
        "memory".into(),
        Value::optional(job.resources.memory.clone()),
    );
    v.insert(
        "env".into(),
        Value::Many(job.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
    );
    v
}

/// One client call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    /// P3 job name.
    pub(crate) job: String,
    /// Full argv (program first).
    pub(crate) argv: Vec<String>,
}

/// Render every call before running any (pure).
pub(crate) fn plan(
    action: Action,
    cfg: &P3Config,
    jobs: &[ResolvedJob],
    facts: &Facts,
) -> Result<Vec<Invocation>, P3Error> {
    if action == Action::Deploy && facts.image.is_none() {
        return Err(P3Error::Missing(
            "deploy needs an image: pass --image or set P3_IMAGE (the build job's dotenv artifact)"
                .into(),
        ));
    }
    jobs.iter()
        .map(|job| {
            let argv = template::render(action.name(), action.template(cfg), &values(job, facts))
                .map_err(|source| P3Error::Template {
                action: action.name(),
                source,
            })?;
            Ok(Invocation {
                job: job.name.clone(),
                argv,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p3_contract::steps_config::validate_templates;

    fn cfg() -> P3Config {
        P3Config {
            deploy: [
                "p3",
                "apply",
                "--as={deploy_stage}",
                "--devstage={devstage}",
                "--image={image}",
                "--name={job}",
                "--cmd",
                "{command}",
                "--cron={schedule}",
                "--env={env}",
            ]
            .map(String::from)
            .to_vec(),
            remove: ["p3", "rm", "--as={deploy_stage}", "{job}"]
                .map(String::from)
                .to_vec(),
            status: vec![],
            timeout_secs: 5,
        }
    }

    fn job(name: &str, schedule: Option<&str>) -> ResolvedJob {
        ResolvedJob {
            name: name.into(),
            command: "run it; now".into(),
            schedule: schedule.map(Into::into),
            resources: Default::default(),
            env: [("A".to_string(), "1 2".to_string())].into(),
        }
    }

    fn facts(image: Option<&str>) -> Facts {
        Facts {
            deploy_stage: "client_uat".into(),
            devstage: "client_prod".into(),
            image: image.map(Into::into),
        }
    }

    #[test]
    fn plan_renders_the_prod_split_per_job() {
        let calls = plan(
            Action::Deploy,
            &cfg(),
            &[job("a", Some("0 2 * * *")), job("b", None)],
            &facts(Some("reg/app@sha256:1")),
        )
        .unwrap();
        assert_eq!(
            calls[0].argv,
            [
                "p3",
                "apply",
                "--as=client_uat",
                "--devstage=client_prod",
                "--image=reg/app@sha256:1",
                "--name=a",
                "--cmd",
                "run it; now",
                "--cron=0 2 * * *",
                "--env=A=1 2"
            ]
        );
        assert!(!calls[1].argv.iter().any(|a| a.starts_with("--cron")));
    }

    #[test]
    fn deploy_without_image_and_remove_naming_image_fail_clearly() {
        let err = plan(Action::Deploy, &cfg(), &[job("a", None)], &facts(None)).unwrap_err();
        assert!(err.to_string().contains("P3_IMAGE"), "{err}");
        let mut c = cfg();
        c.remove.push("{image}".into());
        let err = plan(Action::Remove, &c, &[job("a", None)], &facts(None)).unwrap_err();
        assert!(err.to_string().contains("{image}"), "{err}");
        let err = plan(Action::Status, &cfg(), &[job("a", None)], &facts(None)).unwrap_err();
        assert!(err.to_string().contains("steps.p3.status"), "{err}");
    }

    #[test]
    fn template_validation_names_key_and_placeholder() {
        assert!(validate_templates(&cfg()).is_empty());
        assert!(validate_templates(&P3Config::default()).is_empty());
        let mut c = cfg();
        c.remove.push("--image={image}".into());
        c.status = vec!["p3".into(), "{jbo}".into()];
        let problems = validate_templates(&c);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("steps.p3.remove:") && problems[0].contains("{image}"));
        assert!(problems[1].starts_with("steps.p3.status:") && problems[1].contains("{jbo}"));
    }
}
