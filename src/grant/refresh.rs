//! `run`'s part of a grant, before each stage: every credential kind refreshes itself when it
//! is close to expiry, and each refresh (or its failure) is recorded.

use chrono::Utc;

use super::lifetime::Window;
use super::obtain::{Credential, Ctx, Kerberos, S3};
use super::record;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::JobContext;
use crate::workspace::{JobPaths, JobState};

/// Renew or refresh credentials that are close to expiry, before a run stage.
///
/// A ticket is re-obtained when it has less life left than the renewal threshold, or the rest
/// of the job (to its deadline) when that is shorter, so a ticket capped at the job's deadline
/// plus margin is kept for the whole of a short job.
pub fn refresh(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
) -> Result<()> {
    let Some(mut grant) = state.grant.clone() else {
        return Ok(());
    };
    let Some(account) = cfg.accounts.get(&grant.deploy_account) else {
        return Err(Error::Credentials(format!(
            "account {} of this job's grant is no longer configured",
            grant.deploy_account
        )));
    };
    let win = Window::of(cfg, job, state, Utc::now());
    let mut changed = false;

    let kerberos = Kerberos { account };
    let ctx = Ctx {
        cfg,
        paths,
        grant: &grant,
    };
    let ticket = kerberos.refresh(&ctx, &win).map_err(|failed| {
        record::best_effort(cfg, failed.record(kerberos.describe(&grant)));
        failed.error
    })?;
    if let Some(issued) = ticket {
        let mut rec = record::with(kerberos.describe(&grant), issued.facts.clone());
        rec.reason = issued.reason.clone();
        record::best_effort(cfg, rec);
        Kerberos::keep(&issued, &mut grant);
        changed = true;
    }

    if let (true, Some(s3)) = (grant.s3, &account.s3) {
        let s3 = S3 {
            account,
            s3,
            job,
            token: None,
        };
        let ctx = Ctx {
            cfg,
            paths,
            grant: &grant,
        };
        let fresh = s3.refresh(&ctx, &win).map_err(|failed| {
            record::best_effort(cfg, failed.record(s3.describe(&grant)));
            failed.error
        })?;
        if let Some(issued) = fresh {
            let mut rec = record::with(s3.describe(&grant), issued.facts.clone());
            rec.reason = issued.reason.clone();
            record::best_effort(cfg, rec);
            state.env.extend(issued.env.clone());
            S3::keep(&issued, &mut grant);
            changed = true;
        }
    }
    if changed {
        state.grant = Some(grant);
        state.save(paths)?;
    }
    Ok(())
}
