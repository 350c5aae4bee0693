//! The Kerberos ticket: kinit from the account's keytab into the job's root-owned ticket
//! cache, capped at the job's deadline plus margin, with the account's own krb5.conf when it
//! has its own realm; refreshed when close to expiry; kdestroy at the end.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Credential, Ctx, Failed, Issued, elapsed_ms};
use crate::audit::{AuditEvent, AuditRecord, Decision as Outcome};
use crate::config::{Account, Config};
use crate::credentials::kerberos::{self, KerberosError};
use crate::error::Error;
use crate::grant::inject::{self, Env};
use crate::grant::lifetime::{Window, required_life};
use crate::grant::record::{self, Facts};
use crate::workspace::{GrantState, JobPaths};

/// The job's ticket for `account` (the grant's account).
pub(crate) struct Kerberos<'a> {
    /// The account whose keytab the ticket comes from.
    pub account: &'a Account,
}

impl Credential for Kerberos<'_> {
    /// A renewal record (the first ticket is recorded in the grant record itself).
    fn describe(&self, grant: &GrantState) -> AuditRecord {
        record::from_grant(grant, AuditEvent::Renew, Outcome::Succeeded, String::new())
    }

    fn obtain(&self, ctx: &Ctx<'_>, win: &Window) -> Result<Issued, Failed> {
        let g = ctx.grant;
        let started = std::time::Instant::now();
        let obtained = self.kinit(ctx, win, |opts| {
            kerberos::obtain_with(&ctx.cfg.kerberos, self.account, &g.ccache, opts)
        });
        let kinit_ms = elapsed_ms(started);
        match obtained {
            Ok((obtained, job_conf)) => Ok(issued(
                &obtained,
                inject::ticket(ctx.cfg, &g.ccache, job_conf.as_ref()),
                "ticket obtained from the keytab",
                kinit_ms,
            )),
            Err(e) => Err(failed(
                format!("kinit failed: {e}"),
                &e,
                format!(
                    "devstage {} was granted, but its Kerberos ticket (account {}, {}) could not be obtained: {}",
                    g.devstage,
                    g.deploy_account,
                    g.principal,
                    for_job_log(&e, &g.deploy_account, self.account)
                ),
            )),
        }
    }

    /// A ticket is re-obtained when it has less life left than [`required_life`]: the renewal
    /// threshold, or the rest of the job (to its deadline) when that is shorter, so a ticket
    /// capped at the job's deadline plus margin is kept for the whole of a short job.
    fn refresh(&self, ctx: &Ctx<'_>, win: &Window) -> Result<Option<Issued>, Failed> {
        let g = ctx.grant;
        let threshold = required_life(
            Duration::from_secs(ctx.cfg.kerberos.renew_threshold_secs),
            win.deadline,
            win.now,
        );
        // Cheap check first: the expiry recorded at the last kinit. Only near expiry is the
        // cache read and a new ticket obtained, so a stage of a healthy job costs no Kerberos
        // traffic.
        let near = g
            .ticket_expires
            .is_none_or(|exp| (exp - win.now).to_std().unwrap_or_default() < threshold);
        if !near {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let refreshed = self.kinit(ctx, win, |opts| {
            let kcfg = &ctx.cfg.kerberos;
            kerberos::refresh_with(kcfg, self.account, &g.ccache, threshold, win.now, opts)
        });
        match refreshed {
            Ok((Some(obtained), _)) => Ok(Some(issued(
                &obtained,
                Env::new(),
                "ticket close to expiry: obtained a fresh one from the keytab",
                elapsed_ms(started),
            ))),
            Ok((None, _)) => Ok(None),
            Err(e) => Err(failed(
                format!("renewal failed: {e}"),
                &e,
                format!(
                    "cannot renew the job's Kerberos ticket: {}",
                    for_job_log(&e, &g.deploy_account, self.account)
                ),
            )),
        }
    }

    fn keep(issued: &Issued, grant: &mut GrantState) {
        grant.ticket_expires = issued.expires;
        grant.ticket_renew_until = issued.renew_until;
    }

    fn revoke(ctx: &Ctx<'_>) -> Result<(), String> {
        kerberos::destroy(&ctx.cfg.kerberos, &ctx.grant.ccache).map_err(|e| e.to_string())
    }
}

impl Kerberos<'_> {
    /// Run `kinit` with the job's options: an account with its own realm gets a krb5.conf of
    /// its own in the creds dir, and kinit runs with it (traced, to record the DC that
    /// answered); returns that krb5.conf too.
    fn kinit<T>(
        &self,
        ctx: &Ctx<'_>,
        win: &Window,
        run: impl FnOnce(&kerberos::KinitOptions<'_>) -> Result<T, KerberosError>,
    ) -> Result<(T, Option<PathBuf>), KerberosError> {
        let job_conf = job_krb5_conf(ctx.cfg, self.account, ctx.paths)?;
        let kinit_dir = kerberos::kinit_dir(&ctx.cfg.state_root);
        let opts = kerberos::KinitOptions {
            owner: win.owner,
            max_life: win.max_life,
            krb5_config: job_conf.as_deref(),
            trace: job_conf.is_some(),
            kinit_dir: Some(&kinit_dir),
        };
        run(&opts).map(|o| (o, job_conf))
    }
}

/// The job's own krb5.conf for an account with its own realm (`[accounts.<name>.kerberos]`),
/// written (again: the config may have changed) into its root-owned credentials dir. None: the
/// account uses the host's krb5.conf, as accounts always did.
fn job_krb5_conf(
    cfg: &Config,
    account: &Account,
    paths: &JobPaths,
) -> Result<Option<PathBuf>, KerberosError> {
    account
        .kerberos
        .as_ref()
        .map(|realm| kerberos::realm_conf::write_job_conf(&cfg.kerberos, realm, &paths.creds))
        .transpose()
}

/// A ticket obtained: its expiry, the DC that answered (and those that did not), the time kinit
/// took.
fn issued(obtained: &kerberos::Obtained, env: Env, reason: &str, kinit_ms: u64) -> Issued {
    let ticket = &obtained.ticket;
    let mut facts = Facts::from([(
        "ticket_expires".into(),
        Value::String(ticket.expires.to_rfc3339()),
    )]);
    kinit_failures(&mut facts, &obtained.rejected);
    if let Some(kdc) = &obtained.kdc {
        facts.insert("kdc".into(), Value::String(kdc.clone()));
    }
    if !obtained.unanswered.is_empty() {
        facts.insert(
            "kdc_unanswered".into(),
            Value::from(obtained.unanswered.clone()),
        );
    }
    facts.insert("kinit_ms".into(), Value::from(kinit_ms));
    Issued {
        env,
        expires: Some(ticket.expires),
        renew_until: ticket.renew_until,
        reason: reason.into(),
        facts,
    }
}

/// A kinit that failed: `reason` for the record (with every DC's answer), `error` for the job.
fn failed(reason: String, e: &KerberosError, error: String) -> Failed {
    let mut facts = Facts::new();
    kinit_failures(&mut facts, &e.answers());
    Failed {
        decision: Outcome::Failed,
        reason,
        facts,
        error: Error::Credentials(error),
    }
}

/// Each failed kinit answer (`kdc`, `reason` as in `p3_executor_kinit_failures_total`, kinit's
/// words) as `kinit_failures`: the DCs that rejected a key before one accepted it, or why the
/// kinit failed.
fn kinit_failures(facts: &mut Facts, answers: &[kerberos::DcAnswer]) {
    if answers.is_empty() {
        return;
    }
    let list: Vec<Value> = answers
        .iter()
        .map(|a| serde_json::json!({"kdc": a.kdc, "reason": a.reason, "answer": a.answer}))
        .collect();
    facts.insert("kinit_failures".into(), Value::from(list));
}

/// A credential error as the job log shows it. Everyone on the project reads job logs, so the
/// host's keytab paths are replaced by the account's name; the audit record and
/// `p3-executor check` keep the full text for operators. kinit's own words stay.
fn for_job_log(err: &KerberosError, account_name: &str, account: &Account) -> String {
    err.to_string().replace(
        &account.keytab.display().to_string(),
        &format!("<keytab of account {account_name}>"),
    )
}
