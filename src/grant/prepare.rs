//! `prepare`'s part of a grant: decide, check the job's image, obtain every credential kind
//! while the job's walls are set up, record, inject. Each step is another module's; this one
//! only puts them in order and withdraws what was obtained when a later step fails.

use chrono::Utc;

use super::decide::{self, Granted};
use super::inject::{self, CCACHE_FILE};
use super::lifetime::Window;
use super::obtain::{Credential, Ctx, Issued, Kerberos, S3, web_token};
use super::record;
use crate::audit::{AuditRecord, Decision as Outcome};
use crate::config::{Account, Config};
use crate::credentials::web_identity::JobToken;
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::job::JobContext;
use crate::workspace::{GrantState, JobPaths, JobState};

/// Decide and obtain the credentials a job asked for, and set up the job's `walls` once its
/// devstage is decided (they may depend on it). Without a request the job runs plain and only
/// the walls are set up; a denied job gets no walls.
///
/// Obtaining and the walls run side by side, the walls on a thread of their own: obtaining
/// mostly waits on kinit and the KDC, the walls on the kernel (the network wall's nft
/// transaction, in-process, the cgroup, the job root), so prepare takes about the longer of
/// the two rather than their sum. Nothing reaches the job before both
/// have succeeded and the grant is recorded.
///
/// Updates `state` (env, grant, walls); the caller saves it afterwards, on success and on
/// failure.
pub fn prepare<W: Send>(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
    walls: impl FnOnce(&mut JobState) -> Result<W> + Send,
) -> Result<W> {
    inject::steps_file(cfg, paths, state)?;
    let Some(requested) = decide::requested(cfg, job) else {
        return walls(state);
    };
    decide::offered(cfg, requested).map_err(|d| record::deny(cfg, job, None, *d))?;
    let identity = identity::verify(cfg, job)
        .map_err(|e| record::deny(cfg, job, None, decide::unverified(requested, &e)))?;
    let deny = |d: decide::Denial| record::deny(cfg, job, Some(&identity), d);
    let granted = decide::decide(&identity, requested, cfg).map_err(|d| deny(*d))?;
    // A web-identity account's STS token is checked before anything is obtained.
    let web_token = match cfg.accounts.get(&granted.deploy_account) {
        Some(account) => web_token(cfg, job, account)
            .map_err(|e| deny(decide::web_token_refused(requested, &granted, &e)))?,
        None => None,
    };
    let job = Job {
        cfg,
        job,
        paths,
        identity: &identity,
    };
    grant(&job, state, granted, web_token, walls)
}

/// The job a grant is for: config, payload, paths and verified identity.
struct Job<'a> {
    cfg: &'a Config,
    job: &'a JobContext,
    paths: &'a JobPaths,
    identity: &'a Identity,
}

/// What was obtained, recorded only once the walls stand too.
struct Obtained {
    /// The ticket: its env and expiries.
    ticket: Issued,
    /// The grant record (decision, ticket); the network policy is added once the walls stand.
    rec: AuditRecord,
    /// The S3 credentials and their record, when the account has S3.
    s3: Option<(Issued, AuditRecord)>,
}

fn grant<W: Send>(
    j: &Job<'_>,
    state: &mut JobState,
    granted: Granted,
    web_token: Option<JobToken>,
    walls: impl FnOnce(&mut JobState) -> Result<W> + Send,
) -> Result<W> {
    let Job {
        cfg,
        job,
        paths,
        identity,
    } = *j;
    let name = &granted.deploy_account;
    let account = cfg
        .accounts
        .get(name)
        .ok_or_else(|| Error::Credentials(format!("account {name} vanished from config")))?;
    let mut template = record::template(cfg, job, identity);
    // The job's image (images/), checked against this devstage's policy and its digest
    // resolved before any credential is obtained; every record of the job names both.
    match crate::images::resolve(cfg, job, paths, Some(&granted.devstage)) {
        Ok(Some(image)) => {
            template
                .extra
                .insert("image".into(), image.qualified.into());
            template
                .extra
                .insert("image_digest".into(), image.digest.into());
        }
        Ok(None) => {}
        Err(e) => {
            let asked = crate::images::requested(cfg, job).map(|(name, _)| name);
            let denial = decide::image_refused(&granted, e, asked);
            return Err(record::deny(cfg, job, Some(identity), denial));
        }
    }
    let mut grant = GrantState {
        devstage: granted.devstage.clone(),
        deploy_account: name.clone(),
        principal: granted.principal.clone(),
        ccache: paths.creds.join(CCACHE_FILE),
        audit_context: Some(template.clone()),
        ..GrantState::default()
    };
    // Record where the credentials will be before obtaining them: a prepare that fails half-way
    // still leaves cleanup what it needs to destroy them.
    state.grant = Some(grant.clone());
    state.save(paths)?;
    let win = Window::of(cfg, job, state, Utc::now());
    let ctx = Ctx {
        cfg,
        paths,
        grant: &grant,
    };
    let rec = record::grant(&template, &granted, &account.keytab);
    let s3 = account.s3.as_ref().map(|s3| S3 {
        account,
        s3,
        job,
        token: web_token,
    });
    // The credentials on this thread, so kinit starts at once; the walls on the new one, which
    // finish first, so joining them does not wait for a sleeping thread to be woken.
    let (obtained, walled) = std::thread::scope(|scope| {
        let walling = scope.spawn(|| walls(state));
        let obtained = obtain(&ctx, &win, account, s3.as_ref(), &granted, rec);
        let walled = walling
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (obtained, walled)
    });
    // A failure to obtain was recorded and withdrawn by `obtain`; the walls it leaves are
    // in `state`, for cleanup. When both failed, the job log names the credential and the
    // host's log the wall too.
    let obtained = obtained.inspect_err(|_| {
        if let Err(e) = &walled {
            tracing::error!(
                "job {}: setting up its walls failed as well: {e}",
                job.job_id()
            );
        }
    })?;
    let walled = match walled {
        Ok(walled) => walled,
        Err(e) => {
            withdraw(&ctx);
            let mut rec = obtained.rec;
            rec.decision = Outcome::Failed;
            rec.reason = format!(
                "the job's root or its walls could not be set up, so the credentials obtained were destroyed before the job could use them: {e}"
            );
            record::best_effort(cfg, rec);
            return Err(e);
        }
    };
    // The grant record names the network policy the wall applied (not computed twice).
    let network = record::network(cfg, &granted.devstage, state.network.as_ref());
    // Fail closed: an unrecorded grant is withdrawn.
    let recorded = record::append(cfg, record::with(obtained.rec, network)).and_then(|()| {
        match &obtained.s3 {
            Some((_, rec)) => record::append(cfg, rec.clone()),
            None => Ok(()),
        }
    });
    if let Err(e) = recorded {
        withdraw(&ctx);
        return Err(Error::Credentials(format!(
            "cannot write the audit record for the grant, so it is withdrawn: {e}"
        )));
    }
    state.env.extend(inject::granted(&granted));
    state.env.extend(obtained.ticket.env.clone());
    Kerberos::keep(&obtained.ticket, &mut grant);
    if let Some((issued, _)) = obtained.s3 {
        state.env.extend(issued.env.clone());
        S3::keep(&issued, &mut grant);
    }
    state.grant = Some(grant);
    // prepare saves the state once more right after this returns, whatever the outcome.
    Ok(walled)
}

/// Obtain every credential kind of the grant, in turn; a failure is recorded and what was
/// obtained before it destroyed.
fn obtain(
    ctx: &Ctx<'_>,
    win: &Window,
    account: &Account,
    s3: Option<&S3<'_>>,
    granted: &Granted,
    rec: AuditRecord,
) -> Result<Obtained> {
    // The grant record is the ticket's record: the decision, the ticket, the network policy.
    let ticket = Kerberos { account }.obtain(ctx, win).map_err(|failed| {
        record::best_effort(ctx.cfg, failed.record(rec.clone()));
        failed.error
    })?;
    let mut rec = record::with(rec, ticket.facts.clone());
    rec.reason = format!("devstages.{}: every rule satisfied", granted.devstage);
    let s3 = match s3 {
        Some(s3) => match s3.obtain(ctx, win) {
            Ok(issued) => {
                let rec = issued.record(s3.describe(ctx.grant));
                Some((issued, rec))
            }
            Err(failed) => {
                let _ = Kerberos::revoke(ctx);
                record::best_effort(ctx.cfg, failed.record(s3.describe(ctx.grant)));
                return Err(failed.error);
            }
        },
        None => None,
    };
    Ok(Obtained { ticket, rec, s3 })
}

/// Destroy what a grant obtained (missing is fine): it never reaches the job.
fn withdraw(ctx: &Ctx<'_>) {
    let _ = Kerberos::revoke(ctx);
    let _ = S3::revoke(ctx);
}
