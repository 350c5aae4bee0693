//! `config`: tell the runner where this job's directories are. Only JSON on stdout.

use serde::Serialize;

use crate::config::Config;
use crate::error::Result;
use crate::job::JobContext;
use crate::workspace::JobPaths;

/// The document the runner reads from `config_exec`'s stdout (protocol section 8).
#[derive(Debug, Serialize)]
pub struct ConfigOutput {
    /// Base builds directory, private to this job.
    pub builds_dir: String,
    /// Cache directory, private to this job.
    pub cache_dir: String,
    /// Always false: no two jobs share a builds dir.
    pub builds_dir_is_shared: bool,
    /// Shown as "Running on ... via `<hostname>`".
    pub hostname: String,
    /// Driver name and version for the job log.
    pub driver: Driver,
    /// Environment for the later calls (not for the job script).
    pub job_env: std::collections::BTreeMap<String, String>,
    /// Script dialect the runner generates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// `driver` object.
#[derive(Debug, Serialize)]
pub struct Driver {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
}

/// Compute the config output for a job.
pub fn output(cfg: &Config, job: &JobContext) -> ConfigOutput {
    let paths = JobPaths::new(cfg, job.job_id());
    let shell_name = std::path::Path::new(&cfg.shell)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("bash");
    let shell = match shell_name {
        "bash" => Some("bash".to_string()),
        "sh" | "dash" | "ash" => Some("sh".to_string()),
        _ => None,
    };
    ConfigOutput {
        builds_dir: paths.builds_dir.display().to_string(),
        cache_dir: paths.cache_dir.display().to_string(),
        builds_dir_is_shared: false,
        hostname: super::hostname(),
        driver: Driver {
            name: "p3-executor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        job_env: [(
            crate::workspace::ANNOUNCED_WORKSPACE.to_string(),
            paths.workspace.display().to_string(),
        )]
        .into(),
        shell,
    }
}

/// `p3-executor config`.
pub fn execute(cfg: &Config, job: &JobContext) -> Result<()> {
    let out = output(cfg, job);
    println!(
        "{}",
        serde_json::to_string(&out).expect("config output serializes")
    );
    Ok(())
}
