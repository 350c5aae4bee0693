//! What a config takes on its host that no other config may share, and what two configs
//! share (pure: no I/O, tested with a table of cases).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The host-wide ids and directories one config's jobs are given: two configs whose claims
/// meet would give one job's uid or directory to a job of the other. (The nftables table may
/// be shared: its chains are per uid, and each config touches only its own uids'.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The config file, for messages and to tell a removed config from one in use.
    pub(crate) config: Option<PathBuf>,
    /// `state_root`: one per config (two files naming one state root are one deployment).
    pub(crate) state_root: PathBuf,
    /// `builds_root`, where job roots are named by job id.
    pub(crate) builds_root: PathBuf,
    /// Private job uids; None when jobs share `job_user`'s uid.
    pub(crate) uids: Option<[u32; 2]>,
    /// Subordinate ids of container and `image:` jobs; None when the config runs neither.
    pub(crate) subids: Option<[u32; 2]>,
}

impl Claims {
    /// The claims of `cfg` as loaded.
    pub(crate) fn of(cfg: &Config) -> Self {
        let containers = cfg.images.enabled
            || cfg.sandbox.containers
            || cfg.devstages.values().any(|d| d.containers);
        Claims {
            config: cfg.audit.stamp.config_path.clone(),
            state_root: cfg.state_root.clone(),
            builds_root: cfg.builds_root.clone(),
            uids: cfg.private_uid_range(),
            subids: containers.then(|| crate::subid_pool::configured(cfg)),
        }
    }

    /// What `self` shares with `other`, one phrase each ("job uids 200000-265535"); empty when
    /// nothing, or when both are one deployment's (one state root).
    pub(crate) fn shared_with(&self, other: &Claims) -> Vec<String> {
        if self.state_root == other.state_root {
            return Vec::new();
        }
        let mut shared = Vec::new();
        let dirs = |c: &Claims| {
            [
                ("state_root", c.state_root.clone()),
                ("builds_root", c.builds_root.clone()),
            ]
        };
        for (mine, a) in dirs(self) {
            for (theirs, b) in dirs(other) {
                if a == b {
                    shared.push(directory(mine, theirs, &a));
                }
            }
        }
        let ids = |c: &Claims| {
            [("job_uid_range", c.uids), ("job_subid_range", c.subids)]
                .into_iter()
                .filter_map(|(key, range)| Some((key, range?)))
                .collect::<Vec<_>>()
        };
        for (mine, a) in ids(self) {
            for (theirs, b) in ids(other) {
                if let Some([lo, hi]) = overlap(a, b) {
                    let keys = if mine == theirs {
                        format!("{mine} of both")
                    } else {
                        format!("{mine} here, {theirs} there")
                    };
                    shared.push(format!("ids {lo}-{hi} ({keys})"));
                }
            }
        }
        shared
    }
}

fn directory(mine: &str, theirs: &str, path: &Path) -> String {
    if mine == theirs {
        format!("{mine} {}", path.display())
    } else {
        format!("{} ({mine} here, {theirs} there)", path.display())
    }
}

/// The ids two inclusive ranges have in common.
fn overlap([a_lo, a_hi]: [u32; 2], [b_lo, b_hi]: [u32; 2]) -> Option<[u32; 2]> {
    let (lo, hi) = (a_lo.max(b_lo), a_hi.min(b_hi));
    (lo <= hi).then_some([lo, hi])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(
        state: &str,
        builds: &str,
        uids: Option<[u32; 2]>,
        subids: Option<[u32; 2]>,
    ) -> Claims {
        Claims {
            config: None,
            state_root: state.into(),
            builds_root: builds.into(),
            uids,
            subids,
        }
    }

    #[test]
    fn configs_share_ids_and_directories_and_nothing_else() {
        let a = claims("/s/a", "/b/a", Some([100, 199]), Some([1000, 1999]));
        #[rustfmt::skip]
        let cases: &[(&str, Claims, &[&str])] = &[
            ("apart", claims("/s/b", "/b/b", Some([500, 599]), Some([5000, 5999])), &[]),
            ("one deployment: one state root", claims("/s/a", "/b/a", Some([100, 199]), None), &[]),
            ("adjacent ranges", claims("/s/b", "/b/b", Some([200, 299]), Some([2000, 2999])), &[]),
            ("uids overlap", claims("/s/b", "/b/b", Some([150, 250]), None),
                &["ids 150-199 (job_uid_range of both)"]),
            ("one uid in common", claims("/s/b", "/b/b", Some([199, 199]), None),
                &["ids 199-199 (job_uid_range of both)"]),
            ("their uids in our subids", claims("/s/b", "/b/b", Some([1500, 1600]), None),
                &["ids 1500-1600 (job_subid_range here, job_uid_range there)"]),
            ("our uids in their subids", claims("/s/b", "/b/b", None, Some([0, 150])),
                &["ids 100-150 (job_uid_range here, job_subid_range there)"]),
            ("subids overlap", claims("/s/b", "/b/b", None, Some([1999, 5000])),
                &["ids 1999-1999 (job_subid_range of both)"]),
            ("shared uid mode and no containers claim no ids", claims("/s/b", "/b/b", None, None), &[]),
            ("builds_root", claims("/s/b", "/b/a", None, None), &["builds_root /b/a"]),
            ("our builds are their state", claims("/b/a", "/b/b", None, None),
                &["/b/a (builds_root here, state_root there)"]),
            ("everything", claims("/s/b", "/b/a", Some([100, 199]), Some([1000, 1999])), &[
                "builds_root /b/a",
                "ids 100-199 (job_uid_range of both)",
                "ids 1000-1999 (job_subid_range of both)",
            ]),
        ];
        for (name, other, want) in cases {
            assert_eq!(a.shared_with(other), *want, "{name}");
            // Sharing is mutual: the other config finds as many things.
            assert_eq!(other.shared_with(&a).len(), want.len(), "{name}, reversed");
        }
    }

    #[test]
    fn a_configs_claims_follow_its_settings() {
        let defaults = Config::parse("state_root = \"/s\"\nbuilds_root = \"/b\"\n").unwrap();
        let c = Claims::of(&defaults);
        assert_eq!(c.uids, Some(crate::config::DEFAULT_JOB_UID_RANGE));
        // image: jobs are on by default, and their images' uids map into subordinate ids.
        assert_eq!(c.subids, Some(crate::subid_pool::DEFAULT_JOB_SUBID_RANGE));
        let no_containers = Config::parse("[images]\nenabled = false\n").unwrap();
        assert_eq!(Claims::of(&no_containers).subids, None);
        let containers = Config::parse(
            "job_uid_range = [300000, 300099]\n[images]\nenabled = false\n[sandbox]\ncontainers = true\n",
        )
        .unwrap();
        let c = Claims::of(&containers);
        assert_eq!(c.uids, Some([300000, 300099]));
        assert_eq!(c.subids, Some(crate::subid_pool::DEFAULT_JOB_SUBID_RANGE));
        let shared = Config::parse("shared_job_uid = true\n").unwrap();
        assert_eq!(Claims::of(&shared).uids, None);
    }
}
