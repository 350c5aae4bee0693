//! `object_lock` of `[audit.s3]`: a leaf of its own, so `s3.rs` (which has `[audit.s3]`) and
//! `audit.rs` (which holds it) do not depend on each other both ways.

use serde::{Deserialize, Serialize};

/// `object_lock = { mode = "...", retain_days = N }` of `[audit.s3]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    /// Retention mode.
    pub mode: ObjectLockMode,
    /// Days each object is retained from its upload.
    pub retain_days: u32,
}

/// S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ObjectLockMode {
    /// Users with `s3:BypassGovernanceRetention` can still overwrite or delete (verify
    /// detects it).
    Governance,
    /// Nobody can overwrite or delete before the retention ends, not even the root account.
    Compliance,
}
