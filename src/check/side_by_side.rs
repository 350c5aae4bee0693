//! Configs side by side on one host: no other config in use, and no other executor config
//! beside this one, may share its job ids or directories (`side_by_side`).

use std::path::Path;

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// One error per config that shares something with this one.
pub(super) fn others(cfg: &Config, config_path: &Path, out: &mut Vec<Finding>) {
    for clash in crate::side_by_side::clashes(cfg, config_path) {
        let when = if clash.entry.is_some() {
            "in use on this host"
        } else {
            "beside this one"
        };
        out.push(finding(
            Severity::Error,
            format!(
                "another executor config {when}: {}; prepare refuses every job of both until they are apart",
                clash.describe()
            ),
            clash.fix(),
        ));
    }
}
