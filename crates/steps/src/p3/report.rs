//! `--report`: the results of a run as JSON, read by the `release` step.

use serde::Serialize;

use super::execute::JobResult;
use super::output::strip_ansi;
use super::plan::Facts;
use super::{P3Args, P3Error};
use p3_contract::steps_config::Action;

/// JSON report of a run (read by `release`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub(crate) struct Report {
    /// Devstage.
    pub(crate) devstage: String,
    /// Deploy stage.
    pub(crate) deploy_stage: String,
    /// Image deployed, if any.
    pub(crate) image: Option<String>,
    /// Action.
    pub(crate) action: String,
    /// Per job: name and whether it succeeded.
    pub(crate) jobs: Vec<ReportJob>,
}

/// One job in a [`Report`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub(crate) struct ReportJob {
    /// Name.
    pub(crate) job: String,
    /// Success.
    pub(crate) ok: bool,
    /// The client's whole error output when it failed (ANSI stripped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// Write `--report`, if asked for.
pub(crate) fn write_report(
    args: &P3Args,
    action: Action,
    devstage: &str,
    deploy_stage: &str,
    facts: &Facts,
    results: &[JobResult],
) -> Result<(), P3Error> {
    let Some(path) = &args.report else {
        return Ok(());
    };
    let report = Report {
        devstage: devstage.into(),
        deploy_stage: deploy_stage.into(),
        image: facts.image.clone(),
        action: action.name().into(),
        jobs: results
            .iter()
            .map(|r| ReportJob {
                job: r.job.clone(),
                ok: r.ok,
                error: r.error.as_deref().map(strip_ansi),
            })
            .collect(),
    };
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    std::fs::write(path, json + "\n").map_err(|source| P3Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })
}
