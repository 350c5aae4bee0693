//! What a grant hands the job: the environment its scripts get and the files in its
//! root-owned credentials dir (the ticket cache's name, the per-job krb5.conf's, the AWS config
//! and credentials files, the steps' settings). Never a secret in the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::decide::Granted;
use crate::atomic_file;
use crate::config::{Config, S3Account};
use crate::credentials::aws::{self, AwsCredError, S3Credentials};
use crate::credentials::kerberos;
use crate::error::{Error, Result};
use crate::workspace::{JobPaths, JobState};
use p3_contract::env;

/// The environment a grant adds to the job's.
pub(super) type Env = BTreeMap<String, String>;

/// Ticket cache file name in the job's credentials dir.
pub(super) const CCACHE_FILE: &str = "krb5cc";
/// Settings for the built-in steps, readable by the job.
pub(super) const STEPS_FILE: &str = "steps.json";

/// The settings the built-in steps need, in a file the job can read (never secrets).
pub(super) fn steps_file(cfg: &Config, paths: &JobPaths, state: &mut JobState) -> Result<()> {
    let file = paths.creds.join(STEPS_FILE);
    let steps = serde_json::to_vec_pretty(&cfg.steps).expect("steps serialize");
    let readable = atomic_file::Options {
        mode: 0o644,
        ..atomic_file::Options::PRIVATE
    };
    atomic_file::write(&file, &steps, readable)
        .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
    state
        .env
        .insert(env::STEPS_CONFIG.into(), file.display().to_string());
    Ok(())
}

/// What the job learns of its grant: the devstage, the account and its principal.
pub(super) fn granted(granted: &Granted) -> Env {
    Env::from([
        (env::DEVSTAGE.to_string(), granted.devstage.clone()),
        (
            env::DEPLOY_STAGE.to_string(),
            granted.deploy_account.clone(),
        ),
        (env::SYSTEM_ACCOUNT.to_string(), granted.principal.clone()),
    ])
}

/// Where the job's ticket is (`KRB5CCNAME`), and its krb5.conf (`KRB5_CONFIG`): the job's own
/// for an account with its own realm, else the configured one, if any.
pub(super) fn ticket(cfg: &Config, ccache: &Path, job_conf: Option<&PathBuf>) -> Env {
    let mut env = Env::from([(env::KRB5CCNAME.to_string(), kerberos::krb5ccname(ccache))]);
    if let Some(krb5_config) = job_conf.or(cfg.kerberos.krb5_config.as_ref()) {
        env.insert(env::KRB5_CONFIG.into(), krb5_config.display().to_string());
    }
    env
}

/// The job's AWS config and credentials files for `creds` ([`aws::write_job_files`]), and the
/// environment pointing the AWS tools at them.
pub(super) fn aws_files(
    creds_dir: &Path,
    account_name: &str,
    s3: &S3Account,
    creds: &S3Credentials,
    owner: Option<(u32, u32)>,
) -> std::result::Result<Env, AwsCredError> {
    aws::write_job_files(creds_dir, account_name, s3, creds, owner)
}

/// Remove the job's AWS files (missing files are fine).
pub(super) fn remove_aws_files(creds_dir: &Path) -> std::result::Result<(), AwsCredError> {
    aws::remove_job_files(creds_dir)
}
