//! `[sandbox] seccomp`: a leaf of its own, so `crate::config` (which parses it) does not depend
//! on the seccomp wall (which reads `crate::config`).

use serde::{Deserialize, Serialize};

/// `[sandbox] seccomp`: which filter jobs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    /// The built-in profile ([`super::profile`]); the default.
    #[default]
    Default,
    /// No filter: `check` warns.
    Off,
}
