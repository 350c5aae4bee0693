//! Ending a job on this host: kill what is left of it, destroy its credentials, remove its
//! trees, and give its uid back (once proven clean). The one implementation behind `cleanup`
//! and `gc`, which say which of them is ending the job.

use crate::config::Config;
use crate::error::Result;
use crate::grant::Ending;
use crate::process;
use crate::workspace::{self, JobPaths, JobState};

/// Tear down everything belonging to `job_id`; used by cleanup and gc.
///
/// Runs every step even when one fails and returns the first error.
pub fn teardown(cfg: &Config, job_id: u64, ending: Ending) -> Result<()> {
    let paths = JobPaths::new(cfg, job_id);
    let state = JobState::load(&paths).ok();
    let mut first_err = None;
    if let Some(state) = &state {
        // First the cgroup: one kill of everything the job started, which no fork can race and
        // no process can leave; then what it used, for the audit record.
        let mut usage = std::collections::BTreeMap::new();
        if let Some(cgroup) = &state.cgroup {
            let (used, ended) = crate::walls::cgroup::end(cfg, job_id, cgroup);
            usage = cgroup.audit_fields(&used);
            if let Err(e) = ended {
                tracing::error!("job {job_id}: ending its cgroup failed: {e}");
                first_err.get_or_insert(e.into());
            }
        }
        if state.ids.private_uid {
            // Nothing the job started may survive, even processes that left its process group.
            process::kill_uid(state.ids.uid);
        }
        if let Err(e) = crate::grant::revoke(cfg, &paths, state, ending, usage) {
            tracing::error!("job {job_id}: destroying credentials failed: {e}");
            first_err.get_or_insert(e);
        }
    } else if let Some(uid) = crate::uid_pool::leased_uid(cfg, job_id) {
        process::kill_uid(uid);
    }
    // The job's image layer (everything it wrote in its image).
    if let Err(e) = crate::images::remove_layer(cfg, job_id) {
        tracing::error!("job {job_id}: {e}");
        first_err.get_or_insert(e);
    }
    for dir in [&paths.creds, &paths.job_root, &paths.workspace] {
        if let Err(e) = workspace::remove_tree(dir) {
            tracing::error!("job {job_id}: {e}");
            first_err.get_or_insert(e);
        }
    }
    // Its network rules before its uid (and subordinate range) go back to the pool, so a
    // reused uid never inherits an allowance (prepare also flushes the uid's chain first).
    if let Err(e) = crate::walls::network::release(cfg, job_id, state.as_ref()) {
        tracing::error!("job {job_id}: removing its network rules failed: {e}");
        first_err.get_or_insert(e.into());
    }
    // Only once its trees are gone: the uid is scrubbed and either freed or quarantined.
    if let Err(e) = crate::uid_pool::release(cfg, job_id) {
        tracing::error!("job {job_id}: releasing its uid failed: {e}");
        first_err.get_or_insert(e);
    }
    // A container job's subordinate range likewise: its processes killed, then free or
    // quarantined (its storage went with the job root above).
    if let Err(e) = crate::subid_pool::release(cfg, job_id) {
        tracing::error!("job {job_id}: releasing its subordinate range failed: {e}");
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}
