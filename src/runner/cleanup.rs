//! `cleanup`: destroy the job's credentials, kill what is left of it, remove its directories.
//!
//! Idempotent, and safe after a prepare that never ran or stopped half-way: every step works
//! from the job id in JOB_RESPONSE_FILE and tolerates missing pieces (see [`crate::teardown`]).

use crate::config::Config;
use crate::error::Result;
use crate::grant::Ending;
use crate::job::JobContext;
use crate::job_owner::Owner;
use crate::workspace::JobPaths;

/// `p3-executor cleanup`.
pub fn execute(cfg: &Config, job: &JobContext) -> Result<()> {
    // Clean up what this config knows about even on a mismatch, then report it: the job's
    // old workspace needs an operator (or gc with the old config).
    let paths = JobPaths::new(cfg, job.job_id());
    let announced = paths.check_announced();
    // Another job with this id owns what is there (`job_owner`): this job's prepare was
    // refused and left nothing, and the owner's cleanup (or gc) takes the rest down.
    if crate::job_owner::owner(&paths, job)? == Owner::Another {
        eprintln!(
            "p3-executor: cleanup: {}",
            crate::job_owner::conflict(job.job_id())
        );
        return Ok(());
    }
    crate::teardown::teardown(cfg, job.job_id(), Ending::Cleanup)?;
    // Opportunistic and bounded (`[audit.s3] cleanup_ship_secs`): the gc timer ships the rest.
    if let Some(s3) = &cfg.audit.s3 {
        let bound = std::time::Duration::from_secs_f64(s3.cleanup_ship_secs);
        if let Err(e) = crate::audit::shipper::ship(cfg, bound) {
            tracing::warn!("{e}");
        }
    }
    // Incremental (only the records since the last update): a few file operations; the
    // network table's counter keeps its last reading (gc and `metrics` read it).
    crate::metrics::update_textfile(cfg, crate::metrics::Table::Kept);
    announced
}
