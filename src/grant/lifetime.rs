//! How long a job's credentials may live and must still live: pure arithmetic on the job's
//! deadline (prepare's time plus the payload's timeout), the margin, and the thresholds.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Account, Config};
use crate::credentials::{aws, kerberos};
use crate::job::JobContext;
use crate::workspace::JobState;

/// The time frame a credential is obtained or refreshed in: now, the job's deadline, the
/// longest a credential may live, and who the job's files belong to.
pub(super) struct Window {
    /// When the credentials are obtained.
    pub now: DateTime<Utc>,
    /// When the runner stops the job ([`job_deadline`]).
    pub deadline: Option<DateTime<Utc>>,
    /// The longest a credential obtained now may live ([`lifetime_cap`]).
    pub max_life: Option<Duration>,
    /// (uid, gid) the job's credential files are handed to; None keeps root's.
    pub owner: Option<(u32, u32)>,
}

impl Window {
    /// The window of `job` at `now`.
    pub fn of(cfg: &Config, job: &JobContext, state: &JobState, now: DateTime<Utc>) -> Self {
        let deadline = job_deadline(job, state);
        let margin = Duration::from_secs(cfg.kerberos.lifetime_margin_secs);
        Window {
            now,
            deadline,
            max_life: lifetime_cap(deadline, margin, now),
            owner: state
                .ids
                .switch_user
                .then_some((state.ids.uid, state.ids.gid)),
        }
    }
}

/// When the runner stops the job: prepare's time plus the payload's `runner_info.timeout`
/// (None without a timeout). The runner's clock started a little earlier, so this is never
/// before the real deadline.
pub(super) fn job_deadline(job: &JobContext, state: &JobState) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(job.timeout_secs()?).ok()?;
    state
        .created
        .checked_add_signed(chrono::Duration::try_seconds(secs)?)
}

/// The longest a credential obtained at `now` may live: until the job's `deadline` plus
/// `margin` (zero once that has passed). None without a deadline: the account's lifetime.
pub(super) fn lifetime_cap(
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
pub(super) fn required_life(
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
pub(super) fn credential_duration(account: &Account, max_life: Option<Duration>) -> u64 {
    kerberos::requested_lifetime(account.ticket_lifetime_secs, max_life)
        .unwrap_or(aws::DEFAULT_DURATION_SECS)
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
