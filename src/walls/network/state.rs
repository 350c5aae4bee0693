//! What `state.json` records of a job's network policy: a leaf of its own, so
//! `crate::workspace`'s `JobState` can hold it without depending on the network wall (which
//! depends on workspace).

use serde::{Deserialize, Serialize};

use super::config::Mode;
use super::policy::Pinned;
use super::render::JobKey;

/// A job's network policy as applied, kept in `state.json` (cleanup removes exactly this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNetwork {
    /// The table it lives in.
    pub table: String,
    /// The uid (and subordinate range) it is keyed by.
    pub key: JobKey,
    /// `plain` or `devstages.<name>`.
    pub policy: String,
    /// [`Policy::sha256`](super::policy::Policy::sha256).
    pub sha256: String,
    /// `open` or `allowlist`.
    pub mode: Mode,
    /// The rules with their pinned addresses.
    pub rules: Vec<Pinned>,
    /// The policy's chain its map elements jump to (None: prepared by an executor before
    /// policy chains, whose jobs had their own chain, `uid_<uid>`).
    #[serde(default)]
    pub chain: Option<String>,
}
