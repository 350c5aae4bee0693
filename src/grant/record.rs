//! The grant's audit records: every decision and every credential event is one record. The
//! deny record is built here and nowhere else ([`deny`]); a credential kind only supplies the
//! facts of its event ([`Facts`]).

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::Value;

use super::decide::{Denial, Gate, Granted};
use crate::audit::{self, AuditEvent, AuditRecord, Decision as Outcome};
use crate::config::{Config, RefType};
use crate::credentials::kerberos;
use crate::error::Error;
use crate::identity::{Identity, IdentitySource};
use crate::job::JobContext;
use crate::terminal::clip;
use crate::walls::network::JobNetwork;
use crate::workspace::GrantState;

/// What a record says about one event beyond the common fields (`extra`): the KDC that
/// answered, the S3 source, timings. Never a secret.
pub(super) type Facts = BTreeMap<String, Value>;

/// An audit record with what is known about the job: the payload's job id always, verified
/// claims when there is an identity (never job variables).
pub(super) fn base(
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

/// Record a denial (best effort: a denial stays a denial) and return the job's error.
pub(super) fn deny(
    cfg: &Config,
    job: &JobContext,
    identity: Option<&Identity>,
    denial: Denial,
) -> Error {
    best_effort(cfg, deny_record(cfg, job, identity, &denial));
    denial.error
}

/// The most of a job-supplied text (the devstage it asked for, its image) a deny record keeps,
/// in characters; a reason, which may quote such text next to config, keeps four times as
/// much. The payload may be 16 MiB, and every record is fsynced, hash-chained and shipped.
const MAX_JOB_TEXT: usize = 1024;

/// The deny record: the one place it is built. What the job is known as (its verified
/// identity, when it got that far), the devstage asked for, and what the gate that refused it
/// names besides (the account, the image). The job's own text in it is bounded.
pub(super) fn deny_record(
    cfg: &Config,
    job: &JobContext,
    identity: Option<&Identity>,
    denial: &Denial,
) -> AuditRecord {
    let mut rec = base(
        cfg,
        job,
        identity,
        AuditEvent::Deny,
        denial.decision,
        clip(denial.reason.clone(), 4 * MAX_JOB_TEXT),
    );
    rec.devstage = Some(clip(denial.devstage.clone(), MAX_JOB_TEXT));
    match &denial.gate {
        Gate::Offer | Gate::Identity | Gate::Policy => {}
        Gate::WebToken { account } => {
            rec.deploy_stage = Some(account.clone());
            rec.account = Some(account.clone());
        }
        Gate::Image { account, image } => {
            rec.deploy_stage = Some(account.clone());
            if let Some(image) = image {
                rec.extra
                    .insert("image".into(), clip(image.clone(), MAX_JOB_TEXT).into());
            }
        }
    }
    rec
}

/// The grant's record before its outcome: the verified job, and (set by the caller) the image
/// it runs. Kept in the job's state, so later records of the grant repeat its facts.
pub(super) fn template(cfg: &Config, job: &JobContext, identity: &Identity) -> AuditRecord {
    base(
        cfg,
        job,
        Some(identity),
        AuditEvent::Grant,
        Outcome::Granted,
        String::new(),
    )
}

/// The grant record: the template with what was granted and the fingerprint of the keytab the
/// ticket comes from; the ticket's facts and the reason are added when it is obtained.
pub(super) fn grant(
    template: &AuditRecord,
    granted: &Granted,
    keytab: &std::path::Path,
) -> AuditRecord {
    let mut rec = template.clone();
    rec.devstage = Some(granted.devstage.clone());
    rec.deploy_stage = Some(granted.deploy_account.clone());
    rec.account = Some(granted.deploy_account.clone());
    rec.principal = Some(granted.principal.clone());
    rec.keytab_sha256 = kerberos::keytab_fingerprint(keytab).ok();
    rec
}

/// A record for a later event of a grant (renew, S3, cleanup, gc): the grant's record of the
/// verified job (kept in the job's state), with this event's outcome.
pub(super) fn from_grant(
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

/// `rec` with `facts` added.
pub(super) fn with(mut rec: AuditRecord, facts: Facts) -> AuditRecord {
    rec.extra.extend(facts);
    rec
}

/// The network policy the grant comes with: its name and the hash of its rules as configured,
/// and, where the wall applied it, the job's uid and the chain its packets go through.
/// `applied` is what the network wall put in place for the job (its policy and hash, computed
/// once, from the rules it applied); without a wall (isolation off, no nft and nothing
/// enforced) the policy the devstage is configured with.
pub(super) fn network(cfg: &Config, devstage: &str, applied: Option<&JobNetwork>) -> Facts {
    let (name, sha256) = match applied {
        Some(n) => (n.policy.clone(), n.sha256.clone()),
        None => {
            let policy = crate::walls::network::policy_for(cfg, Some(devstage));
            let sha256 = policy.sha256();
            (policy.name, sha256)
        }
    };
    let mut facts = Facts::from([
        ("network_policy".into(), Value::String(name)),
        ("network_sha256".into(), Value::String(sha256)),
    ]);
    // The kernel log's refusals name the policy and the socket's uid (its chain is shared by
    // the policy's jobs): these two lead from such a line to this job.
    if let Some(n) = applied {
        facts.insert("job_uid".into(), Value::from(n.key.uid));
        if let Some(chain) = &n.chain {
            facts.insert("network_chain".into(), Value::String(chain.clone()));
        }
        // Whether other jobs and the host were kept off this job's loopback listeners.
        facts.insert(
            "loopback_apart".into(),
            Value::Bool(cfg.network.loopback_apart),
        );
    }
    facts
}

/// The record of a job's credentials destroyed (`word`: cleanup or gc), with `usage` (the
/// job's limits, peak memory and CPU time).
pub(super) fn ending(
    grant: &GrantState,
    event: AuditEvent,
    word: &str,
    usage: Facts,
    result: &Result<(), String>,
) -> AuditRecord {
    let mut rec = from_grant(
        grant,
        event,
        Outcome::Succeeded,
        format!("{word}: credentials destroyed"),
    );
    rec.extra.extend(usage);
    if let Err(e) = result {
        rec.decision = Outcome::Failed;
        rec.reason = format!("{word}: destroying credentials failed: {e}");
    }
    rec
}

/// Append `rec`, failing closed: the caller withdraws what the record was about.
pub(super) fn append(cfg: &Config, rec: AuditRecord) -> Result<(), audit::AuditError> {
    audit::append(&cfg.audit, rec).map(drop)
}

/// Denials and credential events are recorded; a failure to record is loud but does not
/// change the outcome (a denial stays a denial).
pub(super) fn best_effort(cfg: &Config, rec: AuditRecord) {
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
    use crate::grant::decide::tests::{CONFIG, cfg, granted, identity};
    use crate::grant::decide::{image_refused, offered, unverified, web_token_refused};
    use crate::identity::IdentityError;
    use crate::images::ImageError;

    #[test]
    fn the_deny_record_names_what_each_gate_knew() {
        let cfg = cfg(CONFIG);
        let job = JobContext::from_json(br#"{"id": 42}"#).unwrap();
        let id = identity("client/app", true);
        let forged = IdentityError::BadSignature;
        let bare = crate::grant::decide::tests::cfg("[identity]\ngitlab_url = \"https://g\"\n");
        let image = Some("alpine:3".to_string());
        // (denial, identity) → (project, deploy_stage, account, extra.image)
        let table = [
            (
                *offered(&bare, "client_uat").unwrap_err(),
                None,
                (None, None, None, None),
            ),
            (
                unverified("client_uat", &forged),
                None,
                (None, None, None, None),
            ),
            (
                *crate::grant::decide::decide(&identity("other/app", true), "client_uat", &cfg)
                    .unwrap_err(),
                Some(&id),
                (Some("client/app"), None, None, None),
            ),
            (
                web_token_refused("client_uat", &granted(), &forged),
                Some(&id),
                (Some("client/app"), Some("uat"), Some("uat"), None),
            ),
            (
                image_refused(&granted(), ImageError::Failed("down".into()), image.clone()),
                Some(&id),
                (Some("client/app"), Some("uat"), None, Some("alpine:3")),
            ),
        ];
        for (denial, identity, (project, deploy_stage, account, image)) in table {
            let rec = deny_record(&cfg, &job, identity, &denial);
            let what = &denial.reason;
            assert_eq!(rec.event, AuditEvent::Deny, "{what}");
            assert_eq!(rec.decision, denial.decision, "{what}");
            assert_eq!(&rec.reason, what);
            assert_eq!(rec.job_id, Some(42), "{what}");
            assert_eq!(rec.devstage.as_deref(), Some("client_uat"), "{what}");
            // Only a verified identity's claims are recorded, never a job variable.
            let source = if identity.is_some() {
                "id_token"
            } else {
                "none"
            };
            assert_eq!(rec.project.as_deref(), project, "{what}");
            assert_eq!(rec.identity_source.as_deref(), Some(source), "{what}");
            assert_eq!(rec.deploy_stage.as_deref(), deploy_stage, "{what}");
            assert_eq!(rec.account.as_deref(), account, "{what}");
            assert_eq!(rec.principal, None, "{what}");
            assert_eq!(
                rec.extra.get("image").and_then(Value::as_str),
                image,
                "{what}"
            );
        }
    }

    #[test]
    fn a_deny_record_keeps_a_bounded_part_of_what_the_job_sent() {
        let cfg = cfg(CONFIG);
        let job = JobContext::from_json(br#"{"id": 42}"#).unwrap();
        // A devstage request of 4 MiB (the payload may hold 16), multi-byte characters at
        // the cut; and an image of 1 MiB.
        let huge = "é".repeat(2 << 20);
        let denial = unverified(&huge, &IdentityError::BadSignature);
        let rec = deny_record(&cfg, &job, None, &denial);
        let devstage = rec.devstage.unwrap();
        assert_eq!(
            devstage,
            format!("{}… (2096128 more characters)", "é".repeat(MAX_JOB_TEXT))
        );
        let image = Some(format!("r.io/{}", "a".repeat(1 << 20)));
        let denial = image_refused(&granted(), ImageError::Failed("down".into()), image);
        let rec = deny_record(&cfg, &job, Some(&identity("client/app", true)), &denial);
        let image = rec.extra["image"].as_str().unwrap();
        assert!(image.chars().count() < MAX_JOB_TEXT + 40, "{}", image.len());
        // A whole record stays small enough to append, verify and ship.
        let line = serde_json::to_string(&rec).unwrap();
        assert!(line.len() < 8 * MAX_JOB_TEXT, "{}", line.len());
    }
}
