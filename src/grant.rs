//! Credential grants for one job: identity → policy → credentials → audit.
//!
//! The only module that connects a job's verified identity to the credentials it gets. Every
//! decision and every credential event becomes one audit record; a grant whose record cannot
//! be written is withdrawn (fail closed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::atomic_file;
use crate::audit::{self, AuditEvent, AuditRecord, Decision as Outcome};
use crate::config::{Account, S3Account};
use crate::config::{Config, RefType};
use crate::credentials::web_identity::{self, JobToken};
use crate::credentials::{aws, kerberos};
use crate::error::{Error, Result};
use crate::identity::{self, Identity, IdentityError, IdentitySource};
use crate::job::JobContext;
use crate::policy::{self, Decision};
use crate::workspace::{GrantState, JobPaths, JobState};
use p3_contract::env;

/// Ticket cache file name in the job's credentials dir.
pub const CCACHE_FILE: &str = "krb5cc";
/// Settings for the built-in steps, readable by the job.
pub const STEPS_FILE: &str = "steps.json";

/// Decide and obtain the credentials a job asked for. Without a request the job runs plain.
///
/// Updates `state` (env, grant); the caller saves it afterwards, on success and on failure.
pub fn prepare(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
) -> Result<()> {
    write_steps_file(cfg, paths, state)?;
    let Some(requested) = job
        .variable(&cfg.identity.request_variable)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Ok(());
    };
    if cfg.devstages.is_empty() {
        // Not a host fault to retry: this runner simply offers no credentials.
        let reason = format!(
            "devstage {requested} requested, but this runner grants no devstages; remove {} or run the job on a p3-executor runner that offers it",
            cfg.identity.request_variable
        );
        let mut rec = base_record(
            cfg,
            job,
            None,
            AuditEvent::Deny,
            Outcome::Denied,
            reason.clone(),
        );
        rec.devstage = Some(requested.to_string());
        record_best_effort(cfg, rec);
        return Err(Error::Denied(reason));
    }
    let identity = match identity::verify(cfg, job) {
        Ok(identity) => identity,
        Err(e) => {
            let mut rec = base_record(
                cfg,
                job,
                None,
                AuditEvent::Deny,
                Outcome::Denied,
                e.to_string(),
            );
            rec.devstage = Some(requested.to_string());
            if e.is_system() {
                rec.decision = Outcome::Failed;
            }
            record_best_effort(cfg, rec);
            return Err(if e.is_system() {
                Error::Credentials(format!("cannot verify the job's identity: {e}"))
            } else {
                Error::Denied(format!("devstage {requested} denied: {e}"))
            });
        }
    };
    match policy::decide(&identity, requested, cfg) {
        Decision::Deny { rule, reason } => {
            let mut rec = base_record(
                cfg,
                job,
                Some(&identity),
                AuditEvent::Deny,
                Outcome::Denied,
                format!("{rule}: {reason}"),
            );
            rec.devstage = Some(requested.to_string());
            record_best_effort(cfg, rec);
            Err(Error::Denied(format!(
                "devstage {requested} denied: {rule}: {reason}"
            )))
        }
        Decision::Grant {
            devstage,
            deploy_account,
            principal,
        } => {
            // A web-identity account's STS token is checked before anything is obtained: a
            // missing or forged second token denies the job like a bad identity token.
            let web_token = match web_identity_token(cfg, job, &deploy_account) {
                Ok(token) => token,
                Err(e) => {
                    let (outcome, err) = web_token_failure(&e, &format!("devstage {requested}"));
                    let mut rec = base_record(
                        cfg,
                        job,
                        Some(&identity),
                        AuditEvent::Deny,
                        outcome,
                        format!("accounts.{deploy_account}.s3.web_identity token: {e}"),
                    );
                    rec.devstage = Some(devstage.clone());
                    rec.deploy_stage = Some(deploy_account.clone());
                    rec.account = Some(deploy_account.clone());
                    record_best_effort(cfg, rec);
                    return Err(err);
                }
            };
            grant(
                cfg,
                job,
                paths,
                state,
                &identity,
                Granted {
                    devstage,
                    deploy_account,
                    principal,
                    web_token,
                },
            )
        }
    }
}

/// What policy granted: the devstage, and the account (deploy stage) and principal serving it;
/// for a web-identity S3 account, the verified token STS gets.
struct Granted {
    devstage: String,
    deploy_account: String,
    principal: String,
    web_token: Option<JobToken>,
}

/// The verified token a web-identity S3 account sends to STS, read from the job's payload
/// (None: the account has no S3 or another credential source).
fn web_identity_token(
    cfg: &Config,
    job: &JobContext,
    account_name: &str,
) -> std::result::Result<Option<JobToken>, IdentityError> {
    let wi = cfg
        .accounts
        .get(account_name)
        .and_then(|a| a.s3.as_ref())
        .and_then(|s3| s3.web_identity.as_ref());
    wi.map(|wi| web_identity::job_token(cfg, job, wi))
        .transpose()
}

/// How a web-identity token that did not verify ends what was being done (`what`: the
/// devstage, or the refresh): the job's fault is a denial (build failure), the host's (JWKS
/// unreachable) a system failure. Returns the audit outcome and the error.
fn web_token_failure(e: &IdentityError, what: &str) -> (Outcome, Error) {
    if e.is_system() {
        (
            Outcome::Failed,
            Error::Credentials(format!(
                "{what}: cannot verify the S3 web identity token: {e}"
            )),
        )
    } else {
        (
            Outcome::Denied,
            Error::Denied(format!("{what} denied: S3 web identity token: {e}")),
        )
    }
}

fn grant(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
    identity: &Identity,
    granted: Granted,
) -> Result<()> {
    let Granted {
        devstage,
        deploy_account,
        principal,
        web_token,
    } = granted;
    let account = cfg.accounts.get(&deploy_account).ok_or_else(|| {
        Error::Credentials(format!("account {deploy_account} vanished from config"))
    })?;
    let ccache = paths.creds.join(CCACHE_FILE);
    let mut template = base_record(
        cfg,
        job,
        Some(identity),
        AuditEvent::Grant,
        Outcome::Granted,
        String::new(),
    );
    // The job's image (images/), checked against this devstage's policy and its digest
    // resolved before any credential is obtained; every record of the job names both.
    match crate::images::resolve(cfg, job, paths, Some(&devstage)) {
        Ok(image) => {
            if let Some(image) = image {
                template
                    .extra
                    .insert("image".into(), image.qualified.into());
                template
                    .extra
                    .insert("image_digest".into(), image.digest.into());
            }
        }
        Err(e) => {
            let denied = !matches!(e, crate::images::ImageError::Failed(_));
            let mut rec = template.clone();
            rec.event = AuditEvent::Deny;
            rec.decision = if denied {
                Outcome::Denied
            } else {
                Outcome::Failed
            };
            rec.reason = format!("image: {e}");
            rec.devstage = Some(devstage.clone());
            rec.deploy_stage = Some(deploy_account.clone());
            if let Some((name, _)) = crate::images::requested(cfg, job) {
                rec.extra.insert("image".into(), name.into());
            }
            record_best_effort(cfg, rec);
            return Err(e.into());
        }
    }
    let mut grant = GrantState {
        devstage: devstage.clone(),
        deploy_account: deploy_account.clone(),
        principal: principal.clone(),
        ccache: ccache.clone(),
        audit_context: Some(template.clone()),
        ..GrantState::default()
    };
    // Record where the credentials will be before obtaining them: a prepare that fails half-way
    // still leaves cleanup what it needs to destroy them.
    state.grant = Some(grant.clone());
    state.save(paths)?;
    let owner = owner(state);
    let mut rec = template.clone();
    rec.devstage = Some(devstage.clone());
    rec.deploy_stage = Some(deploy_account.clone());
    rec.account = Some(deploy_account.clone());
    rec.principal = Some(principal.clone());
    rec.keytab_sha256 = kerberos::keytab_fingerprint(&account.keytab).ok();
    let max_life = lifetime_cap(
        job_deadline(job, state),
        Duration::from_secs(cfg.kerberos.lifetime_margin_secs),
        Utc::now(),
    );
    // An account with its own realm gets a krb5.conf of its own in the creds dir: kinit runs
    // with it (traced, to record the DC that answered) and the job gets it as KRB5_CONFIG.
    let kinit_started = std::time::Instant::now();
    let obtained = job_krb5_conf(cfg, account, paths).and_then(|job_conf| {
        let opts = kerberos::KinitOptions {
            owner,
            max_life,
            krb5_config: job_conf.as_deref(),
            trace: job_conf.is_some(),
        };
        kerberos::obtain_with(&cfg.kerberos, account, &ccache, &opts).map(|o| (o, job_conf))
    });
    let kinit_ms = elapsed_ms(kinit_started);
    let (obtained, job_conf) = match obtained {
        Ok(o) => o,
        Err(e) => {
            rec.decision = Outcome::Failed;
            rec.reason = format!("kinit failed: {e}");
            record_kinit_failures(&mut rec, &e.answers());
            record_best_effort(cfg, rec);
            return Err(Error::Credentials(format!(
                "devstage {devstage} was granted, but its Kerberos ticket (account {deploy_account}, {principal}) could not be obtained: {}",
                for_job_log(&e, &deploy_account, account)
            )));
        }
    };
    let ticket = &obtained.ticket;
    grant.ticket_expires = Some(ticket.expires);
    grant.ticket_renew_until = ticket.renew_until;
    let mut env = BTreeMap::from([
        (env::KRB5CCNAME.to_string(), kerberos::krb5ccname(&ccache)),
        (env::DEVSTAGE.to_string(), devstage.clone()),
        (env::DEPLOY_STAGE.to_string(), deploy_account.clone()),
        (env::SYSTEM_ACCOUNT.to_string(), principal.clone()),
    ]);
    if let Some(krb5_config) = job_conf.as_ref().or(cfg.kerberos.krb5_config.as_ref()) {
        env.insert(env::KRB5_CONFIG.into(), krb5_config.display().to_string());
    }
    rec.reason = format!("devstages.{devstage}: every rule satisfied");
    rec.extra.insert(
        "ticket_expires".into(),
        Value::String(ticket.expires.to_rfc3339()),
    );
    record_kdc(&mut rec, &obtained);
    rec.extra.insert("kinit_ms".into(), Value::from(kinit_ms));
    // The network policy the grant comes with: its name and the hash of its rules as
    // configured (prepare applies exactly these; the job log shows the pinned addresses).
    let network = crate::walls::network::policy_for(cfg, Some(&devstage));
    rec.extra
        .insert("network_policy".into(), Value::String(network.name.clone()));
    rec.extra
        .insert("network_sha256".into(), Value::String(network.sha256()));
    let s3_rec = match &account.s3 {
        Some(s3) => match obtain_s3(
            cfg,
            paths,
            state,
            &deploy_account,
            s3,
            web_token.as_ref(),
            credential_duration(account, max_life),
        ) {
            Ok((s3_env, expires, s3_rec)) => {
                env.extend(s3_env);
                grant.s3 = true;
                grant.s3_expires = expires;
                Some(s3_rec)
            }
            Err((e, failed)) => {
                let _ = kerberos::destroy(&cfg.kerberos, &ccache);
                record_best_effort(cfg, *failed);
                return Err(e);
            }
        },
        None => None,
    };
    // Fail closed: an unrecorded grant is withdrawn.
    let recorded = audit::append(&cfg.audit, rec)
        .and_then(|_| s3_rec.map_or(Ok(()), |r| audit::append(&cfg.audit, r).map(drop)));
    if let Err(e) = recorded {
        let _ = kerberos::destroy(&cfg.kerberos, &ccache);
        let _ = aws::remove_job_files(&paths.creds);
        return Err(Error::Credentials(format!(
            "cannot write the audit record for the grant, so it is withdrawn: {e}"
        )));
    }
    state.env.extend(env);
    state.grant = Some(grant);
    // prepare saves the state once more right after this returns, whatever the outcome.
    Ok(())
}

/// The job's AWS environment, the credentials' expiry, and the audit record of the retrieval.
type S3Grant = (
    BTreeMap<String, String>,
    Option<chrono::DateTime<Utc>>,
    AuditRecord,
);

/// Retrieve the account's S3 credentials with the job's fresh ticket (or, for `web_identity`,
/// from STS with `web_token`) and hand them to the job as AWS config files; a credential
/// process or STS is asked for `duration_secs`. Returns the job's AWS environment, the expiry,
/// and the audit record (account, source, expiry, for web identity the role, session name and
/// assumed-role ARN; never a token or key); on failure the error and a failure record.
fn obtain_s3(
    cfg: &Config,
    paths: &JobPaths,
    state: &JobState,
    account_name: &str,
    s3: &S3Account,
    web_token: Option<&JobToken>,
    duration_secs: u64,
) -> std::result::Result<S3Grant, (Error, Box<AuditRecord>)> {
    let grant = state.grant.clone().unwrap_or_default();
    let mut rec = record_from_grant(
        &grant,
        AuditEvent::S3Credentials,
        Outcome::Granted,
        String::new(),
    );
    rec.extra.insert(
        "source".into(),
        Value::String(aws::S3Credentials::source_of(s3).into()),
    );
    let ccname = kerberos::krb5ccname(&grant.ccache);
    let krb5_config = match cfg.accounts.get(account_name) {
        Some(account) if account.kerberos.is_some() => {
            Some(paths.creds.join(kerberos::realm_conf::JOB_KRB5_CONF))
        }
        _ => cfg.kerberos.krb5_config.clone(),
    };
    let started = std::time::Instant::now();
    let retrieved = match (&s3.web_identity, web_token) {
        (Some(wi), Some(token)) => {
            rec.extra
                .insert("role_arn".into(), Value::String(wi.role_arn.clone()));
            rec.extra.insert(
                "token_variable".into(),
                Value::String(token.variable.clone()),
            );
            rec.extra.insert(
                "token_audience".into(),
                Value::String(token.audience.clone()),
            );
            let assumed = web_identity::sibling_path()
                .and_then(|sts| web_identity::assume_role(&sts, s3, wi, token, duration_secs));
            rec.extra
                .insert("sts_ms".into(), Value::from(elapsed_ms(started)));
            assumed.map(|a| {
                rec.extra.insert(
                    "role_session_name".into(),
                    Value::String(a.session_name.clone()),
                );
                rec.extra.insert(
                    "assumed_role_arn".into(),
                    a.assumed_role_arn
                        .clone()
                        .map_or(Value::Null, Value::String),
                );
                rec.extra
                    .insert("duration_secs".into(), Value::from(a.duration_secs));
                a.creds
            })
        }
        (Some(_), None) => Err(aws::AwsCredError::NeedsJobToken),
        (None, _) => {
            aws::retrieve_with_duration(s3, Some(&ccname), krb5_config.as_deref(), duration_secs)
        }
    };
    if s3.credential_process.is_some() {
        rec.extra.insert(
            "credential_process_ms".into(),
            Value::from(elapsed_ms(started)),
        );
    }
    let written = retrieved.and_then(|creds| {
        aws::write_job_files(&paths.creds, account_name, s3, &creds, owner(state))
            .map(|env| (env, creds.expiration))
    });
    match written {
        Ok((env, expires)) => {
            rec.reason = format!("S3 credentials for account {account_name} issued");
            rec.extra.insert(
                "s3_expires".into(),
                expires.map_or(Value::Null, |t| Value::String(t.to_rfc3339())),
            );
            Ok((env, expires, rec))
        }
        Err(e) => {
            rec.decision = Outcome::Failed;
            rec.reason = format!("S3 credentials for account {account_name} failed: {e}");
            Err((
                Error::Credentials(format!(
                    "S3 credentials for account {account_name} could not be obtained: {e}"
                )),
                Box::new(rec),
            ))
        }
    }
}

/// Renew or refresh credentials that are close to expiry, before a run stage.
///
/// A ticket is re-obtained when it has less life left than [`required_life`]: the renewal
/// threshold, or the rest of the job (to its deadline) when that is shorter, so a ticket
/// capped at the job's deadline plus margin is kept for the whole of a short job.
pub fn refresh(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
) -> Result<()> {
    let Some(grant) = state.grant.clone() else {
        return Ok(());
    };
    let Some(account) = cfg.accounts.get(&grant.deploy_account) else {
        return Err(Error::Credentials(format!(
            "account {} of this job's grant is no longer configured",
            grant.deploy_account
        )));
    };
    let now = Utc::now();
    let deadline = job_deadline(job, state);
    let margin = Duration::from_secs(cfg.kerberos.lifetime_margin_secs);
    let max_life = lifetime_cap(deadline, margin, now);
    let threshold = required_life(
        Duration::from_secs(cfg.kerberos.renew_threshold_secs),
        deadline,
        now,
    );
    // Cheap check first: the expiry recorded at the last kinit. Only near expiry is the cache
    // read and a new ticket obtained, so a stage of a healthy job costs no Kerberos traffic.
    let near = grant
        .ticket_expires
        .is_none_or(|exp| (exp - now).to_std().unwrap_or_default() < threshold);
    let mut changed = false;
    if near {
        let mut rec =
            record_from_grant(&grant, AuditEvent::Renew, Outcome::Succeeded, String::new());
        let kinit_started = std::time::Instant::now();
        let refreshed = job_krb5_conf(cfg, account, paths).and_then(|job_conf| {
            let opts = kerberos::KinitOptions {
                owner: owner(state),
                max_life,
                krb5_config: job_conf.as_deref(),
                trace: job_conf.is_some(),
            };
            kerberos::refresh_with(&cfg.kerberos, account, &grant.ccache, threshold, now, &opts)
        });
        match refreshed {
            Ok(Some(obtained)) => {
                let ticket = &obtained.ticket;
                rec.reason = "ticket close to expiry: obtained a fresh one from the keytab".into();
                rec.extra.insert(
                    "ticket_expires".into(),
                    Value::String(ticket.expires.to_rfc3339()),
                );
                record_kdc(&mut rec, &obtained);
                rec.extra
                    .insert("kinit_ms".into(), Value::from(elapsed_ms(kinit_started)));
                record_best_effort(cfg, rec);
                if let Some(g) = state.grant.as_mut() {
                    g.ticket_expires = Some(ticket.expires);
                    g.ticket_renew_until = ticket.renew_until;
                }
                changed = true;
            }
            Ok(None) => {}
            Err(e) => {
                rec.decision = Outcome::Failed;
                rec.reason = format!("renewal failed: {e}");
                record_kinit_failures(&mut rec, &e.answers());
                record_best_effort(cfg, rec);
                return Err(Error::Credentials(format!(
                    "cannot renew the job's Kerberos ticket: {}",
                    for_job_log(&e, &grant.deploy_account, account)
                )));
            }
        }
    }
    if let (true, Some(s3)) = (grant.s3, &account.s3) {
        let s3_threshold = Duration::from_secs(s3.refresh_threshold_secs);
        if aws::needs_refresh(grant.s3_expires, s3_threshold, now) {
            let web_token = refresh_web_token(cfg, job, &grant, s3)?;
            let (env, expires, rec) = obtain_s3(
                cfg,
                paths,
                state,
                &grant.deploy_account,
                s3,
                web_token.as_ref(),
                credential_duration(account, max_life),
            )
            .map_err(|(e, rec)| {
                record_best_effort(cfg, *rec);
                e
            })?;
            record_best_effort(cfg, rec);
            state.env.extend(env);
            if let Some(g) = state.grant.as_mut() {
                g.s3_expires = expires;
            }
            changed = true;
        }
    }
    if changed {
        state.save(paths)?;
    }
    Ok(())
}

/// The token a web-identity account sends again when its credentials are refreshed before a
/// run stage (None for other sources); a failure is recorded.
///
/// Re-read from this stage's payload and verified again rather than kept in `state.json`: the
/// executor then never writes a bearer token to disk itself, the runner's payload is its one
/// copy, and a token that has meanwhile expired is refused here instead of by STS.
fn refresh_web_token(
    cfg: &Config,
    job: &JobContext,
    grant: &GrantState,
    s3: &S3Account,
) -> Result<Option<JobToken>> {
    let Some(wi) = &s3.web_identity else {
        return Ok(None);
    };
    web_identity::job_token(cfg, job, wi)
        .map(Some)
        .map_err(|e| {
            let (outcome, err) = web_token_failure(&e, "S3 credentials refresh");
            let mut rec = record_from_grant(
                grant,
                AuditEvent::S3Credentials,
                outcome,
                format!(
                    "S3 credentials for account {} not refreshed: web identity token: {e}",
                    grant.deploy_account
                ),
            );
            rec.extra
                .insert("source".into(), Value::String("web_identity".into()));
            record_best_effort(cfg, rec);
            err
        })
}

/// When the runner stops the job: prepare's time plus the payload's `runner_info.timeout`
/// (None without a timeout). The runner's clock started a little earlier, so this is never
/// before the real deadline.
fn job_deadline(job: &JobContext, state: &JobState) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(job.timeout_secs()?).ok()?;
    state
        .created
        .checked_add_signed(chrono::Duration::try_seconds(secs)?)
}

/// The longest a credential obtained at `now` may live: until the job's `deadline` plus
/// `margin` (zero once that has passed). None without a deadline: the account's lifetime.
fn lifetime_cap(
    deadline: Option<DateTime<Utc>>,
    margin: Duration,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let end = deadline?.checked_add_signed(chrono::Duration::from_std(margin).ok()?)?;
    Some((end - now).to_std().unwrap_or(Duration::ZERO))
}

/// The life a ticket must still have at `now`, before a stage, to be kept: the renewal
/// `threshold`, or the time left until the job's `deadline` when that is less. A ticket that
/// covers the rest of the job is not replaced, and past the deadline none is obtained.
///
/// The deadline, not the deadline plus margin: a capped ticket ends at the deadline plus
/// margin only to the second, and a moment after prepare's clock started, so asking for that
/// much would re-obtain it before every stage. The margin is the slack that absorbs this.
fn required_life(
    threshold: Duration,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Duration {
    match deadline {
        None => threshold,
        Some(deadline) => threshold.min((deadline - now).to_std().unwrap_or(Duration::ZERO)),
    }
}

/// The duration a credential process is asked for: the ticket's requested lifetime (the
/// account's, capped by the job), or [`aws::DEFAULT_DURATION_SECS`] when neither bounds it.
fn credential_duration(account: &Account, max_life: Option<Duration>) -> u64 {
    kerberos::requested_lifetime(account.ticket_lifetime_secs, max_life)
        .unwrap_or(aws::DEFAULT_DURATION_SECS)
}

/// Why a job's credentials are being destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The runner's `cleanup` call.
    Cleanup,
    /// `gc` sweeping a job whose cleanup never ran.
    Gc,
}

impl Ending {
    /// The word audit records and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Cleanup => "cleanup",
            Ending::Gc => "gc",
        }
    }

    fn audit_event(self) -> AuditEvent {
        match self {
            Ending::Cleanup => AuditEvent::Cleanup,
            Ending::Gc => AuditEvent::Gc,
        }
    }
}

/// Destroy a job's credentials and record it; `usage` (the job's limits, peak memory and CPU
/// time, from its cgroup) goes into the record.
pub fn revoke(
    cfg: &Config,
    paths: &JobPaths,
    state: &JobState,
    ending: Ending,
    usage: BTreeMap<String, Value>,
) -> Result<()> {
    let Some(grant) = &state.grant else {
        return Ok(());
    };
    let event = ending.audit_event();
    let reason = ending.as_str();
    let result = kerberos::destroy(&cfg.kerberos, &grant.ccache)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            if grant.s3 {
                aws::remove_job_files(&paths.creds).map_err(|e| e.to_string())
            } else {
                Ok(())
            }
        });
    let mut rec = record_from_grant(
        grant,
        event,
        Outcome::Succeeded,
        format!("{reason}: credentials destroyed"),
    );
    rec.extra.extend(usage);
    if let Err(e) = &result {
        rec.decision = Outcome::Failed;
        rec.reason = format!("{reason}: destroying credentials failed: {e}");
    }
    record_best_effort(cfg, rec);
    result.map_err(Error::Credentials)
}

/// A credential error as the job log shows it. Everyone on the project reads job logs, so the
/// host's keytab paths are replaced by the account's name; the audit record and
/// `p3-executor check` keep the full text for operators. kinit's own words stay.
fn for_job_log(err: &kerberos::KerberosError, account_name: &str, account: &Account) -> String {
    err.to_string().replace(
        &account.keytab.display().to_string(),
        &format!("<keytab of account {account_name}>"),
    )
}

/// The job's own krb5.conf for an account with its own realm (`[accounts.<name>.kerberos]`),
/// written (again: the config may have changed) into its root-owned credentials dir. None: the
/// account uses the host's krb5.conf, as accounts always did.
fn job_krb5_conf(
    cfg: &Config,
    account: &Account,
    paths: &JobPaths,
) -> std::result::Result<Option<PathBuf>, kerberos::KerberosError> {
    account
        .kerberos
        .as_ref()
        .map(|realm| kerberos::realm_conf::write_job_conf(&cfg.kerberos, realm, &paths.creds))
        .transpose()
}

/// The DC that answered a traced kinit, and those asked before it that did not.
/// Milliseconds since `started`, for the duration histograms (`metrics.rs`).
fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Each failed kinit answer (`kdc`, `reason` as in `p3_executor_kinit_failures_total`, kinit's
/// words) as `extra.kinit_failures`: the DCs that rejected a key before one accepted it, or why
/// the kinit failed.
fn record_kinit_failures(rec: &mut AuditRecord, answers: &[kerberos::DcAnswer]) {
    if answers.is_empty() {
        return;
    }
    let list: Vec<Value> = answers
        .iter()
        .map(|a| serde_json::json!({"kdc": a.kdc, "reason": a.reason, "answer": a.answer}))
        .collect();
    rec.extra.insert("kinit_failures".into(), Value::from(list));
}

fn record_kdc(rec: &mut AuditRecord, obtained: &kerberos::Obtained) {
    record_kinit_failures(rec, &obtained.rejected);
    if let Some(kdc) = &obtained.kdc {
        rec.extra.insert("kdc".into(), Value::String(kdc.clone()));
    }
    if !obtained.unanswered.is_empty() {
        rec.extra.insert(
            "kdc_unanswered".into(),
            Value::from(obtained.unanswered.clone()),
        );
    }
}

fn owner(state: &JobState) -> Option<(u32, u32)> {
    state
        .ids
        .switch_user
        .then_some((state.ids.uid, state.ids.gid))
}

/// The settings the built-in steps need, in a file the job can read (never secrets).
fn write_steps_file(cfg: &Config, paths: &JobPaths, state: &mut JobState) -> Result<()> {
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

/// An audit record with what is known about the job: the payload's job id always, verified
/// claims when there is an identity (never job variables).
fn base_record(
    cfg: &Config,
    job: &JobContext,
    identity: Option<&Identity>,
    event: AuditEvent,
    decision: Outcome,
    reason: String,
) -> AuditRecord {
    let mut rec = AuditRecord::new(event, decision, reason);
    rec.job_id = Some(job.job_id());
    rec.identity_source = Some("none".into());
    if let Some(id) = identity {
        rec.job_url = Some(format!(
            "{}/{}/-/jobs/{}",
            cfg.identity.gitlab_url.trim_end_matches('/'),
            id.project_path,
            id.job_id
        ));
        rec.pipeline_id = Some(id.pipeline_id);
        rec.project = Some(id.project_path.clone());
        rec.git_ref = Some(id.ref_name.clone());
        rec.ref_type = Some(match id.ref_type {
            RefType::Branch => "branch".into(),
            RefType::Tag => "tag".into(),
        });
        rec.ref_protected = Some(id.ref_protected);
        rec.user = Some(id.user_login.clone());
        rec.identity_source = Some(
            match id.source {
                IdentitySource::IdToken => "id_token",
                IdentitySource::IdTokenAndGitlabApi => "id_token+gitlab_api",
            }
            .into(),
        );
        rec.token_jti = Some(id.jti.clone());
    }
    rec
}

/// A record for a later event of a grant (renew, S3, cleanup, gc): the grant's record of the
/// verified job (kept in the job's state), with this event's outcome.
fn record_from_grant(
    grant: &GrantState,
    event: AuditEvent,
    decision: Outcome,
    reason: String,
) -> AuditRecord {
    let mut rec = match &grant.audit_context {
        Some(job) => AuditRecord {
            time: Utc::now(),
            event,
            decision,
            reason,
            extra: BTreeMap::new(),
            ..job.clone()
        },
        None => AuditRecord::new(event, decision, reason),
    };
    rec.devstage = Some(grant.devstage.clone());
    rec.deploy_stage = Some(grant.deploy_account.clone());
    rec.account = Some(grant.deploy_account.clone());
    rec.principal = Some(grant.principal.clone());
    rec
}

/// Denials and credential events are recorded; a failure to record is loud but does not
/// change the outcome (a denial stays a denial).
fn record_best_effort(cfg: &Config, rec: AuditRecord) {
    if let Err(e) = audit::append(&cfg.audit, rec) {
        tracing::error!(
            "cannot write audit record to {}: {e}",
            cfg.audit.path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap()
    }

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn lifetime_is_capped_at_the_deadline_plus_margin() {
        // (deadline, margin, now) → cap
        let table = [
            (Some(at(600)), 900, at(0), Some(secs(1500))),
            (Some(at(600)), 900, at(1000), Some(secs(500))),
            (Some(at(600)), 0, at(600), Some(secs(0))),
            (Some(at(600)), 900, at(5000), Some(secs(0))),
            (None, 900, at(0), None),
        ];
        for (deadline, margin, now, want) in table {
            assert_eq!(
                lifetime_cap(deadline, secs(margin), now),
                want,
                "{deadline:?} {margin} {now}"
            );
        }
    }

    #[test]
    fn required_life_is_the_threshold_or_the_rest_of_the_job() {
        // (renew threshold, deadline, now) → required life
        let table = [
            // Short job: what is left of it, so its capped ticket is kept stage after stage.
            (3600, Some(600), 0, 600),
            (3600, Some(600), 400, 200),
            // Long job: the usual threshold applies.
            (3600, Some(20000), 0, 3600),
            // No timeout in the payload: the threshold alone.
            (3600, None, 0, 3600),
            // Past the deadline: nothing is required, nothing is re-obtained.
            (3600, Some(600), 600, 0),
            (3600, Some(600), 5000, 0),
        ];
        for (threshold, deadline, now, want) in table {
            assert_eq!(
                required_life(secs(threshold), deadline.map(at), at(now)),
                secs(want),
                "{threshold} {deadline:?} {now}"
            );
        }
    }

    #[test]
    fn a_capped_ticket_is_kept_for_the_rest_of_a_short_job() {
        // Prepare at 0 (timeout 600 s, margin 900 s); kinit runs 0.7 s later and the KDC
        // counts whole seconds, so the ticket ends a little before the deadline plus margin.
        let deadline = Some(at(600));
        let kinit_at = at(0) + chrono::Duration::milliseconds(700);
        let cap = lifetime_cap(deadline, secs(900), kinit_at).unwrap();
        assert_eq!(cap.as_secs(), 1499);
        let expires = at(0) + chrono::Duration::seconds(cap.as_secs() as i64);
        for stage_at in [1, 100, 599, 600, 1400] {
            let now = at(stage_at);
            let left = (expires - now).to_std().unwrap();
            let need = required_life(secs(3600), deadline, now);
            assert!(left >= need, "stage at {stage_at}: {left:?} < {need:?}");
        }
        // A ticket that ends before the deadline is replaced once the threshold is reached.
        let short = at(0) + chrono::Duration::seconds(300);
        let need = required_life(secs(60), deadline, at(250));
        assert!((short - at(250)).to_std().unwrap() < need);
    }

    #[test]
    fn credential_duration_follows_the_ticket() {
        let account = |life: u64| -> Account {
            toml::from_str(&format!(
                "principal = \"p\"\nkeytab = \"/k\"\nticket_lifetime_secs = {life}\n"
            ))
            .unwrap()
        };
        assert_eq!(credential_duration(&account(36000), Some(secs(1500))), 1500);
        assert_eq!(credential_duration(&account(600), Some(secs(1500))), 600);
        assert_eq!(credential_duration(&account(36000), None), 36000);
        assert_eq!(
            credential_duration(&account(0), None),
            aws::DEFAULT_DURATION_SECS
        );
    }
}
