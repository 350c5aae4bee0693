//! `run <script> <stage>`: run one runner-generated script as the job user.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::JobContext;
use crate::process::{self, ScriptOutcome, ScriptSpec};
use crate::sandbox::Sandbox;
use crate::workspace::{JobPaths, JobState};

/// Variables passed through from the runner's own environment (locale and terminal only).
const PASSTHROUGH: [&str; 4] = ["LANG", "LC_ALL", "TZ", "TERM"];

/// The complete environment of a job script: nothing from the runner process leaks in except
/// locale, so the job sees neither JOB_RESPONSE_FILE nor the executor's own settings.
pub fn script_env(cfg: &Config, paths: &JobPaths, state: &JobState) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = PASSTHROUGH
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect();
    let fixed = [
        ("PATH", crate::siblings::job_path(&cfg.job_path)),
        ("HOME", paths.home.display().to_string()),
        ("TMPDIR", paths.tmp.display().to_string()),
        ("USER", state.user.clone()),
        ("LOGNAME", state.user.clone()),
        ("SHELL", cfg.shell.clone()),
    ];
    env.extend(fixed.into_iter().map(|(k, v)| (k.into(), v.into())));
    env.extend(
        cfg.job_env
            .iter()
            .chain(state.env.iter())
            .map(|(k, v)| (k.into(), v.into())),
    );
    env
}

/// `p3-executor run <script> <stage>`: returns the script's outcome.
pub fn execute(
    cfg: &Config,
    job: &JobContext,
    script: &Path,
    stage: &str,
) -> Result<ScriptOutcome> {
    let paths = JobPaths::new(cfg, job.job_id());
    paths.check_announced()?;
    crate::job_owner::require(&paths, job)?;
    let mut state = JobState::load(&paths)?;
    let _active = crate::workspace::hold_active(&paths)?;
    match std::fs::metadata(script) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Error::Spawn(format!(
                "script {} for stage {stage} is not a regular file",
                script.display()
            )));
        }
        Err(e) => {
            return Err(Error::Spawn(format!(
                "script {} for stage {stage} cannot be read: {e}",
                script.display()
            )));
        }
    }
    // Multi-hour jobs: renew the ticket / refresh S3 credentials before each stage as needed.
    crate::grant::refresh(cfg, job, &paths, &mut state)?;
    tracing::debug!(stage, "running job script");
    // The stage's walls, in their order (`walls::WALLS`): the supervisor joins the job's
    // cgroup, and what the shell enters before exec is made here, before any fork.
    let mut walls = crate::walls::Stage::enter(cfg, &paths, &state, stage)?;
    let mut env = script_env(cfg, &paths, &state);
    if let Some(image) = &walls.image {
        crate::images::stage_env(image, &mut env);
    }
    let spec = ScriptSpec {
        shell: cfg.shell.clone(),
        script: script.to_path_buf(),
        cwd: paths.builds_dir.clone(),
        env,
        user: state
            .ids
            .switch_user
            .then_some((state.ids.uid, state.ids.gid)),
        grace: Duration::from_secs(cfg.grace_period_secs),
        walls: walls.child.clone(),
    };
    let outcome = if state.ids.switch_user && cfg.sandbox.enabled {
        let sandbox = Sandbox::for_job(cfg, &paths, state.ids.uid)?
            .with_userns(walls.userns.take())
            .with_image(
                walls
                    .image
                    .as_ref()
                    .map(|i| crate::images::root_for_run(cfg, paths.job_id, i)),
            );
        crate::sandbox::run_script(&spec, sandbox)
    } else {
        process::run_script(&spec)
    }?;
    // A failed script is the job's fault either way; when a limit was hit during the stage,
    // say which limit and which setting sets it instead of leaving the job to guess.
    if let Some(hit) = walls.verdict(outcome.code != 0 && !outcome.cancelled) {
        return Err(Error::LimitExceeded(hit));
    }
    Ok(outcome)
}
