//! How soon a job counts as stale: `gc_max_age_secs` shorter than a live job can sit between
//! two runner calls lets prepare's sweep (or the gc timer) tear that job down under its runner.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// Below this, `check` warns: a runner uploading large artifacts or caches between two calls
/// can leave a job idle (by root's clocks) for many minutes.
const SHORTEST_SAFE_AGE_SECS: u64 = 3600;

/// A warning when `gc_max_age_secs` is shorter than an hour.
pub(super) fn max_age(cfg: &Config, out: &mut Vec<Finding>) {
    let secs = cfg.gc_max_age_secs;
    if secs < SHORTEST_SAFE_AGE_SECS {
        out.push(finding(
            Severity::Warning,
            format!(
                "gc_max_age_secs = {secs}: a job that waits longer than that between two runner \
                 calls (its runner uploading artifacts or a cache, say) is torn down as stale by \
                 the next prepare or gc while its runner still expects it"
            ),
            format!(
                "set gc_max_age_secs to at least {SHORTEST_SAFE_AGE_SECS} (the default is 86400: \
                 a day); a stage that is running is never swept, however long it takes"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(extra: &str) -> Vec<Finding> {
        let cfg = Config::parse(&format!(
            "state_root = \"/nonexistent/state\"\nbuilds_root = \"/nonexistent/builds\"\n{extra}"
        ))
        .unwrap();
        let mut out = Vec::new();
        max_age(&cfg, &mut out);
        out
    }

    #[test]
    fn a_gc_age_under_an_hour_is_a_warning_and_the_default_is_fine() {
        assert!(findings("").is_empty());
        assert!(findings("gc_max_age_secs = 3600\n").is_empty());
        for short in [0, 60, 3599] {
            let out = findings(&format!("gc_max_age_secs = {short}\n"));
            assert_eq!(out.len(), 1, "{short}: {out:?}");
            assert_eq!(out[0].severity, Severity::Warning);
            assert!(
                out[0]
                    .problem
                    .contains(&format!("gc_max_age_secs = {short}:"))
            );
        }
    }
}
