//! Private subordinate id ranges for container jobs, from `job_subid_range`: 65,536 uids (and
//! the same gids) leased with a job, proven clean before another job gets them.
//!
//! Modelled on [`crate::uid_pool`]: `<state_root>/subids/<first id>` is the lease, created
//! complete or not at all (`O_TMPFILE` + `linkat`, which fails if the range is taken), holding
//! the job id or `quarantine: <why>`. A range goes back to the pool only when no process holds
//! an id of it (any uid or gid field) and no entry of the scrub dirs is owned by one; otherwise
//! it is quarantined and `gc` retries it. SysV IPC and keyrings need no scan: a container job's
//! IPC namespace dies with it, and its seccomp profile still refuses every keyring call.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::workspace::ensure_dir;

/// Ids in one job's range: what rootless podman and buildah expect (`/etc/subuid`'s usual
/// 65,536), enough for every uid an image's files commonly carry (up to `nobody`, 65534).
pub const RANGE_SIZE: u32 = 65_536;

/// `job_subid_range` when the config names none: 256 ranges from 2^30, far above any
/// account's uid, [`crate::config::DEFAULT_JOB_UID_RANGE`] and the usual `/etc/subuid` ranges.
pub const DEFAULT_JOB_SUBID_RANGE: [u32; 2] = [1 << 30, (1 << 30) + 256 * RANGE_SIZE - 1];

const QUARANTINE: &str = "quarantine: ";

/// Bound on the entries the release check examines in the scrub dirs; past it the range
/// cannot be proven clean cheaply and is quarantined.
const MAX_EXAMINED: usize = 200_000;
/// Deepest directory level searched below a scrub dir.
const MAX_DEPTH: usize = 32;

/// One job's subordinate range: ids `first ..= first + RANGE_SIZE - 1`, uids and gids alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubidRange {
    /// First host id of the range.
    pub first: u32,
}

impl SubidRange {
    /// Last host id of the range.
    pub fn last(&self) -> u32 {
        self.first + (RANGE_SIZE - 1)
    }

    /// Does the range hold host id `id`?
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last()).contains(&id)
    }
}

/// The configured range of subordinate ids (inclusive).
pub fn configured(cfg: &Config) -> [u32; 2] {
    cfg.job_subid_range.unwrap_or(DEFAULT_JOB_SUBID_RANGE)
}

/// Config check: the range holds at least one job's range, stays clear of system ids and
/// of `job_uid_range` (a job uid inside another job's range would let one job own the
/// other's files).
pub fn validate(cfg: &Config) -> std::result::Result<(), String> {
    let [lo, hi] = configured(cfg);
    if lo < 1000 || hi < lo || u64::from(hi - lo) + 1 < u64::from(RANGE_SIZE) || hi == u32::MAX {
        return Err(format!(
            "job_subid_range [{lo}, {hi}] must be ascending, above 1000 (system ids), below \
             4294967295 and hold at least {RANGE_SIZE} ids (one job's range)"
        ));
    }
    if let Some([ulo, uhi]) = cfg.private_uid_range() {
        if ulo <= hi && lo <= uhi {
            return Err(format!(
                "job_subid_range [{lo}, {hi}] overlaps job_uid_range [{ulo}, {uhi}]: a job's \
                 private uid must never fall in another job's subordinate range"
            ));
        }
    }
    Ok(())
}

fn dir(cfg: &Config) -> PathBuf {
    cfg.state_root.join("subids")
}

/// Every range of the pool, in order.
fn slots(cfg: &Config) -> Vec<SubidRange> {
    let [lo, hi] = configured(cfg);
    let count = (u64::from(hi - lo) + 1) / u64::from(RANGE_SIZE);
    (0..count)
        .map(|k| SubidRange {
            first: lo + (k as u32) * RANGE_SIZE,
        })
        .collect()
}

/// What one lease file says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lease {
    Job(u64),
    Quarantined(String),
}

fn read_leases(cfg: &Config) -> Vec<(SubidRange, Lease)> {
    let Ok(entries) = fs::read_dir(dir(cfg)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let first: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = fs::read_to_string(e.path()).ok()?;
            let lease = match text.trim().parse() {
                Ok(job) => Lease::Job(job),
                Err(_) => Lease::Quarantined(
                    text.strip_prefix(QUARANTINE)
                        .unwrap_or("unreadable lease")
                        .trim()
                        .to_string(),
                ),
            };
            Some((SubidRange { first }, lease))
        })
        .collect()
}

/// Lease a range for `job_id` (or return the one it holds): never one holding an id the host
/// gives an account, a group or a user's subordinate ids (`host_ids`).
pub fn lease(cfg: &Config, job_id: u64) -> Result<SubidRange> {
    let mut held = crate::host_ids::uids();
    held.extend(crate::host_ids::gids());
    lease_avoiding(cfg, job_id, &held)
}

/// [`lease`], never a range holding one of the ids `held` holds.
fn lease_avoiding(cfg: &Config, job_id: u64, held: &[crate::host_ids::Held]) -> Result<SubidRange> {
    let dir = dir(cfg);
    ensure_dir(&cfg.state_root, 0o711)?;
    ensure_dir(&dir, 0o700)?;
    let entries = read_leases(cfg);
    if let Some((range, _)) = entries.iter().find(|(_, l)| *l == Lease::Job(job_id)) {
        return Ok(*range);
    }
    let slots = slots(cfg);
    // From a job-dependent offset, so concurrent prepares rarely race for one file; the
    // link decides every race anyway.
    let start = (job_id % slots.len().max(1) as u64) as usize;
    for k in 0..slots.len() {
        let range = slots[(start + k) % slots.len()];
        if held.iter().any(|h| h.meets([range.first, range.last()])) {
            continue;
        }
        let name = range.first.to_string();
        if crate::atomic_file::create_new(&dir, &name, job_id.to_string().as_bytes())
            .map_err(|e| Error::io(format!("lease subids {name} in {}", dir.display()), e))?
        {
            return Ok(range);
        }
    }
    let quarantined = entries
        .iter()
        .filter(|(_, l)| matches!(l, Lease::Quarantined(_)))
        .count();
    let [lo, hi] = configured(cfg);
    let by_host = crate::host_ids::describe(held, [lo, hi])
        .map(|d| format!(" or holds ids of the host ({d}: never leased, see `p3-executor check`)"))
        .unwrap_or_default();
    Err(Error::Workspace(format!(
        "every subordinate range in job_subid_range [{lo}, {hi}] is leased ({quarantined} \
         quarantined){by_host}; run `p3-executor gc`, or widen the range"
    )))
}

/// The range leased to `job_id`, if any.
pub fn leased(cfg: &Config, job_id: u64) -> Option<SubidRange> {
    read_leases(cfg)
        .into_iter()
        .find(|(_, l)| *l == Lease::Job(job_id))
        .map(|(r, _)| r)
}

/// How many ranges are leased to jobs now (quarantined ones not counted).
pub fn leased_count(cfg: &Config) -> usize {
    read_leases(cfg)
        .iter()
        .filter(|(_, l)| matches!(l, Lease::Job(_)))
        .count()
}

/// Quarantined ranges (first id) and why.
pub fn quarantined(cfg: &Config) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = read_leases(cfg)
        .into_iter()
        .filter_map(|(r, l)| match l {
            Lease::Quarantined(why) => Some((r.first, why)),
            Lease::Job(_) => None,
        })
        .collect();
    out.sort();
    out
}

/// Processes holding an id of `range` in any uid or gid field (real, effective, saved, fs).
pub fn processes_in(range: SubidRange) -> Vec<i32> {
    p3_contract::procs::processes()
        .into_iter()
        .filter(|p| in_range(&p.status, range))
        .map(|p| p.pid)
        .collect()
}

/// A live (not zombie) process whose uids or gids hold an id of `range`.
fn in_range(status: &p3_contract::procs::Status, range: SubidRange) -> bool {
    status.holds_id(|id| range.contains(id))
}

/// SIGKILL every process of `range`, a few rounds (a dying parent may still fork).
fn kill_range(range: SubidRange) {
    for _ in 0..50 {
        let pids = processes_in(range);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // Ignored: ESRCH (gone already); the next round looks again.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Entries of the scrub dirs owned (uid or gid) by `range`: a few of them, and whether the
/// walk stopped at a bound before it could prove there are none. Never follows a link.
fn files_in(range: SubidRange, dirs: &[PathBuf]) -> (Vec<PathBuf>, bool) {
    let mut found = Vec::new();
    let mut examined = 0usize;
    let mut stack: Vec<(PathBuf, usize)> = dirs.iter().map(|d| (d.clone(), 0)).collect();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            examined += 1;
            if examined > MAX_EXAMINED {
                return (found, true);
            }
            let Ok(meta) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if range.contains(meta.uid()) || range.contains(meta.gid()) {
                if found.len() < 5 {
                    found.push(e.path());
                }
                continue;
            }
            if meta.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    return (found, true);
                }
                stack.push((e.path(), depth + 1));
            }
        }
    }
    (found, false)
}

/// Why `range` is not clean, or None when it is.
fn residue(cfg: &Config, range: SubidRange) -> Option<String> {
    kill_range(range);
    let procs = processes_in(range);
    if !procs.is_empty() {
        return Some(format!("{} processes survive SIGKILL", procs.len()));
    }
    let (files, bounded) = files_in(range, &cfg.sandbox.scrub_dirs);
    if !files.is_empty() {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return Some(format!(
            "files owned by the range in the scrub dirs: {}",
            names.join(", ")
        ));
    }
    bounded.then(|| {
        format!("the scrub dirs hold more than {MAX_EXAMINED} entries or {MAX_DEPTH} levels")
    })
}

fn settle(cfg: &Config, range: SubidRange) -> Result<Option<String>> {
    let path = dir(cfg).join(range.first.to_string());
    match residue(cfg, range) {
        None => match fs::remove_file(&path) {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("release {}", path.display()), e)),
        },
        Some(why) => {
            tracing::error!(
                first = range.first,
                "subordinate range quarantined: {why}; gc retries it"
            );
            crate::atomic_file::temp_with(
                &dir(cfg),
                format!("{QUARANTINE}{why}\n").as_bytes(),
                crate::atomic_file::Options::PRIVATE,
            )
            .and_then(|t| t.persist(&path).map(drop).map_err(|e| e.error))
            .map_err(|e| Error::io(format!("quarantine {}", path.display()), e))?;
            Ok(Some(why))
        }
    }
}

/// Give back the range held by `job_id` (if any): free once proven clean, else quarantined.
pub fn release(cfg: &Config, job_id: u64) -> Result<()> {
    match leased(cfg, job_id) {
        Some(range) => settle(cfg, range).map(drop),
        None => Ok(()),
    }
}

/// `gc`: check every quarantined range again; returns those still quarantined.
pub fn retry_quarantined(cfg: &Config) -> Vec<(u32, String)> {
    quarantined(cfg)
        .into_iter()
        .filter_map(|(first, why)| match settle(cfg, SubidRange { first }) {
            Ok(None) => None,
            Ok(Some(why)) => Some((first, why)),
            Err(e) => Some((first, format!("{why} (retry failed: {e})"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(root: &Path, extra: &str) -> Config {
        Config::parse(&format!(
            "state_root = \"{}\"\nbuilds_root = \"{}\"\n{extra}",
            root.join("state").display(),
            root.join("builds").display()
        ))
        .unwrap()
    }

    #[test]
    fn concurrent_jobs_get_disjoint_ranges_and_a_release_frees_one() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(
            tmp.path(),
            "job_subid_range = [3000000000, 3000196607]\n[sandbox]\nscrub_dirs = []\n",
        );
        let a = lease(&cfg, 1).unwrap();
        let b = lease(&cfg, 2).unwrap();
        let c = lease(&cfg, 3).unwrap();
        assert_eq!(lease(&cfg, 1).unwrap(), a, "a job keeps its range");
        let mut firsts = [a.first, b.first, c.first];
        firsts.sort();
        assert_eq!(firsts, [3_000_000_000, 3_000_065_536, 3_000_131_072]);
        assert!(lease(&cfg, 4).is_err(), "three ranges, three jobs");
        release(&cfg, 2).unwrap();
        assert_eq!(lease(&cfg, 4).unwrap(), b);
        assert_eq!(leased(&cfg, 2), None);
    }

    #[test]
    fn a_range_holding_a_host_users_subordinate_id_or_group_is_never_leased() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(tmp.path(), "job_subid_range = [3200000000, 3200196607]\n");
        // bob's subordinate gids reach into the first range, a group's gid is in the third.
        let mut held = crate::host_ids::subordinate("bob:3199990000:10001\n");
        held.extend(crate::host_ids::accounts("odd:x:3200140000:\n"));
        assert_eq!(lease_avoiding(&cfg, 1, &held).unwrap().first, 3_200_065_536);
        let err = lease_avoiding(&cfg, 2, &held).unwrap_err().to_string();
        assert!(
            err.contains("or holds ids of the host (bob:3199990000:10001, odd (3200140000)"),
            "{err}"
        );
    }

    #[test]
    fn a_file_owned_by_the_range_quarantines_it_until_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let scrub = tmp.path().join("scrub");
        fs::create_dir_all(scrub.join("a/b")).unwrap();
        let cfg = cfg(
            tmp.path(),
            &format!(
                "job_subid_range = [3100000000, 3100065535]\n[sandbox]\nscrub_dirs = [\"{}\"]\n",
                scrub.display()
            ),
        );
        let r = lease(&cfg, 7).unwrap();
        let left = scrub.join("a/b/left");
        fs::write(&left, "x").unwrap();
        if nix::unistd::chown(&left, Some((r.first + 5).into()), None).is_err() {
            return; // not root: cannot give a file away
        }
        release(&cfg, 7).unwrap();
        let q = quarantined(&cfg);
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(q[0].1.contains("a/b/left"), "{q:?}");
        assert!(lease(&cfg, 8).is_err(), "a quarantined range is not leased");
        assert_eq!(retry_quarantined(&cfg).len(), 1);
        fs::remove_file(&left).unwrap();
        assert!(retry_quarantined(&cfg).is_empty());
        assert_eq!(lease(&cfg, 8).unwrap(), r);
    }

    #[test]
    fn validation_refuses_overlap_with_job_uids_and_short_ranges() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().display();
        let parse = |extra: &str| {
            Config::parse(&format!(
                "state_root = \"{root}/s\"\nbuilds_root = \"{root}/b\"\n{extra}"
            ))
        };
        assert!(parse("").is_ok(), "the defaults are disjoint");
        let e = parse("job_uid_range = [300000, 400000]\njob_subid_range = [350000, 500000]")
            .unwrap_err();
        assert!(e.contains("overlaps job_uid_range"), "{e}");
        let e = parse("job_subid_range = [300000, 300100]").unwrap_err();
        assert!(e.contains("at least 65536"), "{e}");
    }

    /// A `/proc/<pid>/status` text of a live process holding an id of `range`.
    fn status_in_range(status: &str, range: SubidRange) -> bool {
        in_range(&p3_contract::procs::Status::parse(status), range)
    }

    #[test]
    fn status_lines_in_range() {
        let r = SubidRange { first: 5_000_000 };
        let st = |uid: u32, gid: u32| {
            format!(
                "State:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\n"
            )
        };
        assert!(status_in_range(&st(5_000_001, 0), r));
        assert!(status_in_range(&st(0, 5_065_535), r));
        assert!(!status_in_range(&st(5_065_536, 4_999_999), r));
        assert!(!status_in_range(
            "State:\tZ (zombie)\nUid:\t5000001\t0\t0\t0\n",
            r
        ));
    }
}
