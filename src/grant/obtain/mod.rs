//! The credentials a grant hands out, one implementation of [`Credential`] per kind: the
//! Kerberos ticket (`kerberos.rs`) and the S3 credentials (`s3.rs`, one arm per source). Each
//! kind obtains, refreshes before a stage, destroys, and describes itself for the audit log;
//! `prepare`, `refresh` and `revoke` only compose them.

mod kerberos;
mod s3;

pub(super) use kerberos::Kerberos;
pub(super) use s3::{S3, web_token};

use chrono::{DateTime, Utc};

use super::inject::Env;
use super::lifetime::Window;
use super::record::Facts;
use crate::audit::{AuditRecord, Decision as Outcome};
use crate::config::Config;
use crate::error::Error;
use crate::workspace::{GrantState, JobPaths};

/// What every kind works with: the config, the job's paths, and the grant it serves.
pub(super) struct Ctx<'a> {
    /// The executor's config.
    pub cfg: &'a Config,
    /// The job's paths (its root-owned credentials dir).
    pub paths: &'a JobPaths,
    /// The grant: devstage, account, principal, ticket cache, expiries, audit context.
    pub grant: &'a GrantState,
}

/// A credential obtained: what the job gets and what the audit record says.
pub(super) struct Issued {
    /// The environment the job gets (empty when it does not change).
    pub env: Env,
    /// When it stops working (None: it does not expire).
    pub expires: Option<DateTime<Utc>>,
    /// When a ticket's renewable life ends.
    pub renew_until: Option<DateTime<Utc>>,
    /// The record's reason.
    pub reason: String,
    /// The record's facts (the KDC that answered, the STS session, timings).
    pub facts: Facts,
}

impl Issued {
    /// `rec` (the kind's [`Credential::describe`]) turned into the record of this credential:
    /// its reason and facts.
    pub fn record(&self, rec: AuditRecord) -> AuditRecord {
        let mut rec = super::record::with(rec, self.facts.clone());
        rec.reason = self.reason.clone();
        rec
    }
}

/// A credential that could not be obtained: the record's outcome, reason and facts, and the
/// job's error.
pub(super) struct Failed {
    /// `Failed` (the host's fault), or `Denied` (a web-identity token that no longer verifies).
    pub decision: Outcome,
    /// The record's reason (full text, for operators).
    pub reason: String,
    /// The record's facts gathered up to the failure.
    pub facts: Facts,
    /// What the job log says.
    pub error: Error,
}

impl Failed {
    /// `rec` turned into the record of this failure.
    pub fn record(&self, mut rec: AuditRecord) -> AuditRecord {
        rec.decision = self.decision;
        rec.reason = self.reason.clone();
        rec.extra.extend(self.facts.clone());
        rec
    }
}

/// One kind of credential a grant hands the job. Adding a kind is a new file implementing
/// this, and its lines in `prepare`, `refresh` and `revoke`.
pub(super) trait Credential {
    /// The record this kind's events are written in, before their outcome: the grant's
    /// verified job, the event, and what it names about where the credential comes from.
    fn describe(&self, grant: &GrantState) -> AuditRecord;

    /// Obtain it for the job (prepare).
    fn obtain(&self, ctx: &Ctx<'_>, win: &Window) -> Result<Issued, Failed>;

    /// Before a run stage: obtain it again when it is close to expiry (None: it is kept).
    fn refresh(&self, ctx: &Ctx<'_>, win: &Window) -> Result<Option<Issued>, Failed>;

    /// Remember what was issued in the job's state (expiries).
    fn keep(issued: &Issued, grant: &mut GrantState);

    /// Destroy what the job holds (cleanup, gc, a withdrawn grant); missing is fine.
    fn revoke(ctx: &Ctx<'_>) -> Result<(), String>;
}

/// Milliseconds since `started`, for the duration histograms (`metrics.rs`).
fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
