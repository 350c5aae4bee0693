//! `prepare`'s part of a grant: decide, check the job's image, obtain every credential kind,
//! record, inject. Each step is another module's; this one only puts them in order and
//! withdraws what was obtained when a later step fails.

use chrono::Utc;

use super::decide::{self, Granted};
use super::inject::{self, CCACHE_FILE};
use super::lifetime::Window;
use super::obtain::{Credential, Ctx, Kerberos, S3, web_token};
use super::record;
use crate::config::Config;
use crate::credentials::web_identity::JobToken;
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::job::JobContext;
use crate::workspace::{GrantState, JobPaths, JobState};

/// Decide and obtain the credentials a job asked for. Without a request the job runs plain.
///
/// Updates `state` (env, grant); the caller saves it afterwards, on success and on failure.
pub fn prepare(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
) -> Result<()> {
    inject::steps_file(cfg, paths, state)?;
    let Some(requested) = decide::requested(cfg, job) else {
        return Ok(());
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
    grant(cfg, job, paths, state, &identity, granted, web_token)
}

fn grant(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
    identity: &Identity,
    granted: Granted,
    web_token: Option<JobToken>,
) -> Result<()> {
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

    // The grant record is the ticket's record: the decision, the ticket, the network policy.
    let rec = record::grant(&template, &granted, &account.keytab);
    let ticket = Kerberos { account }.obtain(&ctx, &win).map_err(|failed| {
        record::best_effort(cfg, failed.record(rec.clone()));
        failed.error
    })?;
    let mut rec = record::with(rec, ticket.facts.clone());
    rec.reason = format!("devstages.{}: every rule satisfied", granted.devstage);
    let rec = record::with(rec, record::network(cfg, &granted.devstage));

    let s3 = account.s3.as_ref().map(|s3| S3 {
        account,
        s3,
        job,
        token: web_token,
    });
    let s3_issued = match &s3 {
        Some(s3) => match s3.obtain(&ctx, &win) {
            Ok(issued) => {
                let mut rec = record::with(s3.describe(&grant), issued.facts.clone());
                rec.reason = issued.reason.clone();
                Some((issued, rec))
            }
            Err(failed) => {
                let _ = Kerberos::revoke(&ctx);
                record::best_effort(cfg, failed.record(s3.describe(&grant)));
                return Err(failed.error);
            }
        },
        None => None,
    };
    // Fail closed: an unrecorded grant is withdrawn.
    let recorded = record::append(cfg, rec).and_then(|()| match &s3_issued {
        Some((_, rec)) => record::append(cfg, rec.clone()),
        None => Ok(()),
    });
    if let Err(e) = recorded {
        let _ = Kerberos::revoke(&ctx);
        let _ = S3::revoke(&ctx);
        return Err(Error::Credentials(format!(
            "cannot write the audit record for the grant, so it is withdrawn: {e}"
        )));
    }
    state.env.extend(inject::granted(&granted));
    state.env.extend(ticket.env.clone());
    Kerberos::keep(&ticket, &mut grant);
    if let Some((issued, _)) = s3_issued {
        state.env.extend(issued.env.clone());
        S3::keep(&issued, &mut grant);
    }
    state.grant = Some(grant);
    // prepare saves the state once more right after this returns, whatever the outcome.
    Ok(())
}
