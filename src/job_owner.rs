//! Which job a job id's workspace belongs to.
//!
//! Every per-job path, the uid lease and the cgroup are named by the GitLab job id, and the id
//! is only unique within one GitLab instance: two instances whose runners share this host's
//! config (a staging and a production GitLab, say) send the same numbers. Without an owner, the
//! second job's prepare would be taken for a retry of the first's: same uid, its job root
//! rebuilt, its state (and with it the record of where its credentials are) overwritten, and
//! its cleanup would tear the first job down.
//!
//! So prepare claims the workspace for the job's token (the payload's, which the runner takes
//! from GitLab and a job cannot choose), as `<workspace>/owner` holding the token's SHA-256,
//! created complete or not at all. A prepare the runner retries carries the same token and
//! passes; one with another token is refused before anything is touched. `run` refuses a job
//! that does not own the workspace, and its `cleanup` leaves everything to the owner.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::job::JobContext;
use crate::workspace::JobPaths;

/// The claim's file name in the workspace.
const FILE: &str = "owner";

/// Hashed before the token, so the stamp is this file's and nothing else's digest of it.
const DOMAIN: &[u8] = b"p3-executor job owner v1\0";

/// Whose a workspace is, seen from one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This job claimed it (or a prepare of this job, retried).
    ThisJob,
    /// Nobody has: no prepare ran, or it was removed (by cleanup or gc), or an older version
    /// prepared the job.
    Unclaimed,
    /// Another job with the same id.
    Another,
}

/// Claim `paths`' workspace (which must exist) for `job`; `Err` when another job holds it.
pub(crate) fn claim(paths: &JobPaths, job: &JobContext) -> Result<()> {
    let stamp = stamp(job);
    // Twice: a cleanup of the owner may remove the claim between our attempt and our read.
    for _ in 0..2 {
        let created = crate::atomic_file::create_new(&paths.workspace, FILE, stamp.as_bytes())
            .map_err(|e| Error::io(format!("claim {}", paths.workspace.display()), e))?;
        if created {
            return Ok(());
        }
        match read(paths, &stamp)? {
            Owner::ThisJob => return Ok(()),
            Owner::Another => return Err(conflict(paths.job_id)),
            Owner::Unclaimed => {}
        }
    }
    Err(conflict(paths.job_id))
}

/// Whose `paths`' workspace is, for `job`.
pub(crate) fn owner(paths: &JobPaths, job: &JobContext) -> Result<Owner> {
    read(paths, &stamp(job))
}

/// `Err` when another job owns the workspace: what `run` checks before it trusts the state.
pub(crate) fn require(paths: &JobPaths, job: &JobContext) -> Result<()> {
    match owner(paths, job)? {
        Owner::Another => Err(conflict(paths.job_id)),
        Owner::ThisJob | Owner::Unclaimed => Ok(()),
    }
}

/// The refusal, for the job log: what happened and what the operator changes.
pub(crate) fn conflict(job_id: u64) -> Error {
    Error::Workspace(format!(
        "job id {job_id} is in use on this host by another job (its workspace was claimed with \
         a different job token): two GitLab instances send jobs to this executor config. Give \
         each instance a config of its own (its own state_root, builds_root and \
         job_uid_range); nothing of the other job was touched"
    ))
}

fn read(paths: &JobPaths, stamp: &str) -> Result<Owner> {
    let file = paths.workspace.join(FILE);
    match std::fs::read(&file) {
        Ok(held) if held == stamp.as_bytes() => Ok(Owner::ThisJob),
        Ok(_) => Ok(Owner::Another),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Owner::Unclaimed),
        Err(e) => Err(Error::io(format!("read {}", file.display()), e)),
    }
}

/// The claim's content: a digest of the job token, never the token.
fn stamp(job: &JobContext) -> String {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(job.payload.token.as_bytes())
        .finalize();
    format!("sha256:{}\n", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, token: &str) -> JobContext {
        JobContext::from_json(format!(r#"{{"id": {id}, "token": "{token}"}}"#).as_bytes()).unwrap()
    }

    fn paths(dir: &std::path::Path, id: u64) -> JobPaths {
        let cfg =
            crate::config::Config::parse(&format!("state_root = \"{}\"\n", dir.display())).unwrap();
        let paths = JobPaths::new(&cfg, id);
        std::fs::create_dir_all(&paths.workspace).unwrap();
        paths
    }

    #[test]
    fn the_first_token_owns_the_workspace_and_a_retry_passes() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path(), 7);
        let a = job(7, "glcbt-a");
        assert_eq!(owner(&p, &a).unwrap(), Owner::Unclaimed);
        claim(&p, &a).unwrap();
        claim(&p, &a).unwrap();
        assert_eq!(owner(&p, &a).unwrap(), Owner::ThisJob);
        require(&p, &a).unwrap();
    }

    #[test]
    fn another_token_with_the_same_id_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path(), 7);
        let (a, b) = (job(7, "glcbt-a"), job(7, "glcbt-b"));
        claim(&p, &a).unwrap();
        let held = std::fs::read(p.workspace.join(FILE)).unwrap();
        let err = claim(&p, &b).unwrap_err();
        assert!(err.to_string().contains("job id 7 is in use"), "{err}");
        assert_eq!(err.kind(), crate::error::FailureKind::System);
        assert_eq!(owner(&p, &b).unwrap(), Owner::Another);
        assert!(require(&p, &b).is_err());
        assert_eq!(std::fs::read(p.workspace.join(FILE)).unwrap(), held);
        assert_eq!(owner(&p, &a).unwrap(), Owner::ThisJob);
    }

    #[test]
    fn the_claim_holds_a_digest_of_the_token_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path(), 8);
        claim(&p, &job(8, "glcbt-secret-value")).unwrap();
        let held = std::fs::read_to_string(p.workspace.join(FILE)).unwrap();
        assert!(!held.contains("secret"), "{held}");
        assert!(
            held.starts_with("sha256:") && held.len() == 7 + 64 + 1,
            "{held}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p.workspace.join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
