//! `run`'s part of a grant, before each stage: every credential kind refreshes itself when it
//! is close to expiry, and each refresh (or its failure) is recorded.

use chrono::Utc;

use super::lifetime::Window;
use super::obtain::{Credential, Ctx, Issued, Kerberos, S3};
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
    let ctx = Ctx {
        cfg,
        paths,
        grant: &grant,
    };
    let ticket = refresh_one(&Kerberos { account }, &ctx, &win)?;
    let s3 = match (grant.s3, &account.s3) {
        (true, Some(s3)) => {
            let s3 = S3 {
                account,
                s3,
                job,
                token: None,
            };
            refresh_one(&s3, &ctx, &win)?
        }
        _ => None,
    };
    let changed = ticket.is_some() || s3.is_some();
    if let Some(issued) = &ticket {
        Kerberos::keep(issued, &mut grant);
    }
    if let Some(issued) = s3 {
        state.env.extend(issued.env.clone());
        S3::keep(&issued, &mut grant);
    }
    if changed {
        state.grant = Some(grant);
        state.save(paths)?;
    }
    Ok(())
}

/// Refresh one kind of credential; the fresh credential, or the failure, is recorded.
fn refresh_one(kind: &impl Credential, ctx: &Ctx<'_>, win: &Window) -> Result<Option<Issued>> {
    let fresh = kind.refresh(ctx, win).map_err(|failed| {
        record::best_effort(ctx.cfg, failed.record(kind.describe(ctx.grant)));
        failed.error
    })?;
    if let Some(issued) = &fresh {
        record::best_effort(ctx.cfg, issued.record(kind.describe(ctx.grant)));
    }
    Ok(fresh)
}
