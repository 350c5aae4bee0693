//! What `state.json` records of a job's cgroup: a leaf of its own, so `crate::workspace`'s
//! `JobState` can hold it without depending on the cgroup wall (which depends on workspace).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::limits::Limits;

/// Where a job's cgroup is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Placement {
    /// One directory in the unified hierarchy.
    V2 {
        /// `<base>/p3-executor/job-<id>-<tag>`.
        dir: PathBuf,
    },
    /// One directory per v1 hierarchy.
    V1 {
        /// `(controller, <base>/p3-executor/job-<id>-<tag>)`.
        dirs: Vec<(String, PathBuf)>,
    },
}

/// A job's cgroup and the limits it enforces, as recorded in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCgroup {
    /// Where it is.
    pub placement: Placement,
    /// The limits in force and the setting behind each.
    pub limits: Limits,
}
