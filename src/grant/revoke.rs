//! A job's ending (cleanup, gc): every credential kind destroys what the job holds, and one
//! record says so.

use serde_json::Value;
use std::collections::BTreeMap;

use super::obtain::{Credential, Ctx, Kerberos, S3};
use super::record;
use crate::audit::AuditEvent;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::workspace::{JobPaths, JobState};

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
    let ctx = Ctx { cfg, paths, grant };
    let result =
        Kerberos::revoke(&ctx).and_then(|()| if grant.s3 { S3::revoke(&ctx) } else { Ok(()) });
    let rec = record::ending(grant, ending.audit_event(), ending.as_str(), usage, &result);
    record::best_effort(cfg, rec);
    result.map_err(Error::Credentials)
}
