//! S3 credentials: retrieved on the host from the account's source and handed to the job as
//! AWS config files; refreshed before a stage when close to expiry; removed at the end.
//! Each source is one arm of the match in [`S3::retrieve`] (and of [`web_token`] when the
//! source needs the job's verified token).

use std::time::Duration;

use serde_json::Value;

use super::{Credential, Ctx, Failed, Issued, elapsed_ms};
use crate::audit::{AuditEvent, AuditRecord, Decision as Outcome};
use crate::config::{Account, Config, S3Account, S3Source};
use crate::credentials::aws::{self, AwsCredError, S3Credentials};
use crate::credentials::kerberos;
use crate::credentials::web_identity::{self, JobToken};
use crate::error::Error;
use crate::grant::decide::web_token_failure;
use crate::grant::inject;
use crate::grant::lifetime::{Window, credential_duration};
use crate::grant::record::{self, Facts};
use crate::identity::IdentityError;
use crate::job::JobContext;
use crate::workspace::GrantState;

/// The job's S3 credentials for `account`'s `s3` settings.
pub(crate) struct S3<'a> {
    /// The account granted (its ticket lifetime bounds the credentials').
    pub account: &'a Account,
    /// Its S3 settings and source.
    pub s3: &'a S3Account,
    /// The job (a web-identity token is read again from its payload at a refresh).
    pub job: &'a JobContext,
    /// The verified token a web-identity source sends (None for other sources).
    pub token: Option<JobToken>,
}

/// The verified token a web-identity S3 account sends to STS, read from the job's payload
/// (None: the account has no S3 or another credential source).
pub(crate) fn web_token(
    cfg: &Config,
    job: &JobContext,
    account: &Account,
) -> Result<Option<JobToken>, IdentityError> {
    match account.s3.as_ref().map(|s3| &s3.source) {
        Some(S3Source::WebIdentity(wi)) => web_identity::job_token(cfg, job, wi).map(Some),
        Some(S3Source::CredentialProcess(_) | S3Source::Profile { .. }) | None => Ok(None),
    }
}

impl Credential for S3<'_> {
    /// An `s3_credentials` record naming the source (never a token or key).
    fn describe(&self, grant: &GrantState) -> AuditRecord {
        let mut rec = record::from_grant(
            grant,
            AuditEvent::S3Credentials,
            Outcome::Granted,
            String::new(),
        );
        rec.extra
            .insert("source".into(), Value::String(self.s3.source.key().into()));
        rec
    }

    /// Retrieve the credentials with the job's fresh ticket (or, for `web_identity`, from STS
    /// with the verified token) and write the job's AWS files; a credential process or STS is
    /// asked for the job's credential duration. The facts: the expiry, for web identity the
    /// role, session name and assumed-role ARN, the time the source took.
    fn obtain(&self, ctx: &Ctx<'_>, win: &Window) -> Result<Issued, Failed> {
        let name = &ctx.grant.deploy_account;
        let mut facts = Facts::new();
        let written = self.retrieve(ctx, win, &mut facts).and_then(|creds| {
            inject::aws_files(&ctx.paths.creds, name, self.s3, &creds, win.owner)
                .map(|env| (env, creds.expiration))
        });
        match written {
            Ok((env, expires)) => {
                facts.insert(
                    "s3_expires".into(),
                    expires.map_or(Value::Null, |t| Value::String(t.to_rfc3339())),
                );
                Ok(Issued {
                    env,
                    expires,
                    renew_until: None,
                    reason: format!("S3 credentials for account {name} issued"),
                    facts,
                })
            }
            Err(e) => Err(Failed {
                decision: Outcome::Failed,
                reason: format!("S3 credentials for account {name} failed: {e}"),
                facts,
                error: Error::Credentials(format!(
                    "S3 credentials for account {name} could not be obtained: {e}"
                )),
            }),
        }
    }

    /// Obtained again once less than `refresh_threshold_secs` of their life is left; a
    /// web-identity token is re-read from this stage's payload and verified again rather than
    /// kept in `state.json`: the executor then never writes a bearer token to disk itself, the
    /// runner's payload is its one copy, and a token that has meanwhile expired is refused here
    /// instead of by STS.
    fn refresh(&self, ctx: &Ctx<'_>, win: &Window) -> Result<Option<Issued>, Failed> {
        let threshold = Duration::from_secs(self.s3.refresh_threshold_secs);
        if !aws::needs_refresh(ctx.grant.s3_expires, threshold, win.now) {
            return Ok(None);
        }
        let token = web_token(ctx.cfg, self.job, self.account).map_err(|e| {
            let (decision, error) = web_token_failure(&e, "S3 credentials refresh");
            Failed {
                decision,
                reason: format!(
                    "S3 credentials for account {} not refreshed: web identity token: {e}",
                    ctx.grant.deploy_account
                ),
                facts: Facts::new(),
                error,
            }
        })?;
        let fresh = S3 {
            token,
            account: self.account,
            s3: self.s3,
            job: self.job,
        };
        fresh.obtain(ctx, win).map(Some)
    }

    fn keep(issued: &Issued, grant: &mut GrantState) {
        grant.s3 = true;
        grant.s3_expires = issued.expires;
    }

    fn revoke(ctx: &Ctx<'_>) -> Result<(), String> {
        inject::remove_aws_files(&ctx.paths.creds).map_err(|e| e.to_string())
    }
}

impl S3<'_> {
    /// The credentials from the account's source, with what the record says about it.
    fn retrieve(
        &self,
        ctx: &Ctx<'_>,
        win: &Window,
        facts: &mut Facts,
    ) -> Result<S3Credentials, AwsCredError> {
        let duration_secs = credential_duration(self.account, win.max_life);
        let started = std::time::Instant::now();
        match (&self.s3.source, &self.token) {
            (S3Source::WebIdentity(wi), Some(token)) => {
                facts.insert("role_arn".into(), Value::String(wi.role_arn.clone()));
                facts.insert(
                    "token_variable".into(),
                    Value::String(token.variable.clone()),
                );
                facts.insert(
                    "token_audience".into(),
                    Value::String(token.audience.clone()),
                );
                let assumed = web_identity::sibling_path().and_then(|sts| {
                    web_identity::assume_role(&sts, self.s3, wi, token, duration_secs)
                });
                facts.insert("sts_ms".into(), Value::from(elapsed_ms(started)));
                assumed.map(|a| {
                    facts.insert(
                        "role_session_name".into(),
                        Value::String(a.session_name.clone()),
                    );
                    facts.insert(
                        "assumed_role_arn".into(),
                        a.assumed_role_arn
                            .clone()
                            .map_or(Value::Null, Value::String),
                    );
                    facts.insert("duration_secs".into(), Value::from(a.duration_secs));
                    a.creds
                })
            }
            (S3Source::WebIdentity(_), None) => Err(AwsCredError::NeedsJobToken),
            (S3Source::CredentialProcess(_), _) => {
                // The credential process authenticates as the job's account with its ticket
                // (and the account's own krb5.conf, when it has its own realm).
                let ccname = kerberos::krb5ccname(&ctx.grant.ccache);
                let krb5_config = match self.account.kerberos {
                    Some(_) => Some(ctx.paths.creds.join(kerberos::realm_conf::JOB_KRB5_CONF)),
                    None => ctx.cfg.kerberos.krb5_config.clone(),
                };
                let creds = aws::retrieve_with_duration(
                    self.s3,
                    Some(&ccname),
                    krb5_config.as_deref(),
                    duration_secs,
                );
                facts.insert(
                    "credential_process_ms".into(),
                    Value::from(elapsed_ms(started)),
                );
                creds
            }
            (S3Source::Profile { .. }, _) => {
                aws::retrieve_with_duration(self.s3, None, None, duration_secs)
            }
        }
    }
}
