//! Private job uids from `job_uid_range`: leased one per job, proven clean before reuse.
//!
//! `<state_root>/uids/<uid>` is the lease. It is created complete or not at all (written to an
//! unnamed `O_TMPFILE` inode, then `linkat`ed into place, which fails if the uid is taken), so a crash never
//! leaves an empty lease behind. Its content is the job id, or `quarantine: <why>` for a uid
//! that could not be proven clean when its job ended: no process, SysV IPC object or file of
//! it may remain (see [`crate::residue`]). `gc` retries quarantined uids; `check` lists them.
//! `<state_root>/uids/.released/<uid>` records (by mtime, in a root-owned directory) when a uid
//! was last released, so the most recently released uids are reused last.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::residue::{self, Residue};
use crate::workspace::ensure_dir;

const QUARANTINE: &str = "quarantine: ";

/// A lease file that holds no job id and no quarantine note (left by an older version that
/// crashed mid-write) is treated as quarantined once it is this old.
const BROKEN_LEASE_AGE: Duration = Duration::from_secs(60);

fn dir(cfg: &Config) -> PathBuf {
    cfg.state_root.join("uids")
}

fn released_dir(cfg: &Config) -> PathBuf {
    dir(cfg).join(".released")
}

/// The order in which free uids of `[lo, hi]` are tried: never-used uids first (from a
/// job-dependent offset, so concurrent prepares rarely race for one), then released ones,
/// least recently released first.
///
/// Lazy: `prepare` usually takes the first uid, and the default range has 65,536 of them, so
/// the fresh ones are yielded as found and the released ones sorted only when every fresh uid
/// is gone (building the whole order took ~1 M instructions per 10,000 uids, every prepare).
pub fn lease_order<'a>(
    [lo, hi]: [u32; 2],
    taken: &'a HashSet<u32>,
    released: &'a HashMap<u32, SystemTime>,
    start: u64,
) -> impl Iterator<Item = u32> + 'a {
    let span = u64::from(hi - lo) + 1;
    let in_order = move || (0..span).map(move |i| lo + ((start + i) % span) as u32);
    let fresh = in_order().filter(|uid| !taken.contains(uid) && !released.contains_key(uid));
    let used = std::iter::once(()).flat_map(move |()| {
        let mut used: Vec<(SystemTime, u32)> = in_order()
            .filter(|uid| !taken.contains(uid))
            .filter_map(|uid| released.get(&uid).map(|t| (*t, uid)))
            .collect();
        used.sort();
        used.into_iter().map(|(_, uid)| uid)
    });
    fresh.chain(used)
}

/// A complete temp file in `dir` holding `content` (root-only, like everything in `uids/`).
fn temp_with(dir: &Path, content: &str) -> Result<tempfile::NamedTempFile> {
    crate::atomic_file::temp_with(
        dir,
        content.as_bytes(),
        crate::atomic_file::Options::PRIVATE,
    )
    .map_err(|e| Error::io(format!("write a lease in {}", dir.display()), e))
}

/// Replace `name`'s content atomically (temp file + rename).
fn replace(dir: &Path, name: &str, content: &str) -> Result<()> {
    temp_with(dir, content)?
        .persist(dir.join(name))
        .map(drop)
        .map_err(|e| Error::io(format!("write lease {name}"), e.error))
}

/// Lease a private uid for `job_id` (or return the one it holds); None without a range.
/// Never a uid the host gives an account or a user's subordinate ids (`host_ids`).
pub fn lease(cfg: &Config, job_id: u64) -> Result<Option<u32>> {
    // Where nsswitch names a directory service (sssd, winbind map AD users to uids that may
    // fall in the range), the user database is asked too. Not on other hosts: a miss there
    // asks every source, systemd's included (~0.6 ms of a 3 ms prepare, measured).
    let directory = crate::host_ids::host_passwd_beyond_files();
    lease_avoiding(cfg, job_id, &crate::host_ids::uids(), directory)
}

/// [`lease`], never one of the uids `held` holds, nor with `directory` one the user database
/// (NSS) knows.
fn lease_avoiding(
    cfg: &Config,
    job_id: u64,
    held: &[crate::host_ids::Held],
    directory: bool,
) -> Result<Option<u32>> {
    let Some(range) = cfg.private_uid_range() else {
        return Ok(None);
    };
    let in_range: Vec<_> = held.iter().filter(|h| h.meets(range)).collect();
    let dir = dir(cfg);
    ensure_dir(&cfg.state_root, 0o711)?;
    ensure_dir(&dir, 0o700)?;
    let entries = read_leases(cfg);
    if let Some((uid, _)) = entries.iter().find(|(_, l)| *l == Lease::Job(job_id)) {
        return Ok(Some(*uid));
    }
    let taken: HashSet<u32> = entries.iter().map(|(uid, _)| *uid).collect();
    let released = released_times(cfg);
    let span = u64::from(range[1] - range[0]) + 1;
    // The files first (cheap, all at once); then, with a directory service, the user database
    // for the uid about to be leased: usually one lookup per prepare.
    let free = lease_order(range, &taken, &released, job_id % span)
        .filter(|uid| !in_range.iter().any(|h| h.holds(*uid)))
        .filter(|uid| !directory || !is_account(*uid));
    for uid in free {
        let name = uid.to_string();
        if crate::atomic_file::create_new(&dir, &name, job_id.to_string().as_bytes())
            .map_err(|e| Error::io(format!("lease uid {name} in {}", dir.display()), e))?
        {
            return Ok(Some(uid));
        }
    }
    let quarantined = entries
        .iter()
        .filter(|(_, l)| matches!(l, Lease::Quarantined(_)))
        .count();
    let by_host = crate::host_ids::describe(held, range)
        .map(|d| format!(" or held by the host ({d}: never leased, see `p3-executor check`)"))
        .unwrap_or_default();
    Err(Error::Workspace(format!(
        "every uid in job_uid_range [{}, {}] is leased ({quarantined} quarantined){by_host}; \
         run `p3-executor gc`, `p3-executor check` for quarantined uids, or widen the range",
        range[0], range[1]
    )))
}

/// Does the system's user database (NSS) know an account with this uid? A failed lookup
/// counts as no: the files' check is the one that must hold.
fn is_account(uid: u32) -> bool {
    matches!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Ok(Some(_))
    )
}

/// What one lease file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Held by a job.
    Job(u64),
    /// Kept out of the pool: the reason.
    Quarantined(String),
}

fn read_leases(cfg: &Config) -> Vec<(u32, Lease)> {
    let Ok(entries) = fs::read_dir(dir(cfg)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let uid: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            let lease = match text.trim().parse() {
                Ok(job) => Lease::Job(job),
                Err(_) => match text.strip_prefix(QUARANTINE) {
                    Some(why) => Lease::Quarantined(why.trim().to_string()),
                    None => {
                        let age = e
                            .metadata()
                            .ok()
                            .and_then(|m| m.modified().ok())
                            .and_then(|m| SystemTime::now().duration_since(m).ok())
                            .unwrap_or_default();
                        if age < BROKEN_LEASE_AGE {
                            return None; // being written by an older version, or just now
                        }
                        Lease::Quarantined("lease file without a job id".into())
                    }
                },
            };
            Some((uid, lease))
        })
        .collect()
}

fn released_times(cfg: &Config) -> HashMap<u32, SystemTime> {
    let Ok(entries) = fs::read_dir(released_dir(cfg)) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let uid = e.file_name().to_str()?.parse().ok()?;
            Some((uid, e.metadata().ok()?.modified().ok()?))
        })
        .collect()
}

/// The uid leased to `job_id`, if any.
pub fn leased_uid(cfg: &Config, job_id: u64) -> Option<u32> {
    leases(cfg)
        .into_iter()
        .find(|(_, owner)| *owner == job_id)
        .map(|(uid, _)| uid)
}

/// Every uid held by a job, as (uid, job id).
pub fn leases(cfg: &Config) -> Vec<(u32, u64)> {
    read_leases(cfg)
        .into_iter()
        .filter_map(|(uid, l)| match l {
            Lease::Job(job) => Some((uid, job)),
            Lease::Quarantined(_) => None,
        })
        .collect()
}

/// Quarantined uids and why.
pub fn quarantined(cfg: &Config) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = read_leases(cfg)
        .into_iter()
        .filter_map(|(uid, l)| match l {
            Lease::Quarantined(why) => Some((uid, why)),
            Lease::Job(_) => None,
        })
        .collect();
    out.sort();
    out
}

/// The gid every job runs with (`job_user`'s), which decides what a job uid could write into.
fn jobs_gid(cfg: &Config) -> Option<u32> {
    nix::unistd::User::from_name(&cfg.job_user)
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
}

/// Scrub `uid` in `pass`; back to the pool if clean, else quarantined. Returns the residue.
fn release_uid(cfg: &Config, uid: u32, pass: residue::Pass) -> Result<Residue> {
    let residue = scrub_uid(cfg, uid, pass);
    settle_uid(cfg, uid, &residue)?;
    Ok(residue)
}

/// Remove what `uid` left behind (IPC objects, keyrings, files in the scrub dirs) in `pass`;
/// the residue says what could not be removed.
fn scrub_uid(cfg: &Config, uid: u32, pass: residue::Pass) -> Residue {
    let who = residue::Who {
        uid,
        gid: jobs_gid(cfg),
    };
    let residue = residue::scrub(who, &cfg.sandbox.scrub_dirs, pass);
    for line in residue.skipped_lines() {
        // Another owner's tree, not this uid's: logged for the operator, the uid is not held.
        tracing::warn!(uid, "scrub of uid {uid}: {line}");
    }
    residue
}

/// A scrubbed `uid` back to the pool if its scrub left nothing, else quarantined.
fn settle_uid(cfg: &Config, uid: u32, residue: &Residue) -> Result<()> {
    let dir = dir(cfg);
    if residue.is_clean() {
        ensure_dir(&released_dir(cfg), 0o700)?;
        fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(released_dir(cfg).join(uid.to_string()))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(|e| Error::io(format!("record the release of uid {uid}"), e))?;
        match fs::remove_file(dir.join(uid.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("release uid {uid}"), e)),
        }
    } else {
        tracing::error!(
            uid,
            "uid quarantined: {} remain after cleanup; gc retries it",
            residue.summary()
        );
        replace(
            &dir,
            &uid.to_string(),
            &format!("{QUARANTINE}{}\n", residue.summary()),
        )?;
    }
    Ok(())
}

/// Scrub every uid held by `job_id` (teardown's first half of a release: it may run while
/// other steps still hold the uid, e.g. its network rules); [`settle`] then frees them.
pub fn scrub(cfg: &Config, job_id: u64) -> Vec<(u32, Residue)> {
    leases(cfg)
        .into_iter()
        .filter(|&(_, owner)| owner == job_id)
        .map(|(uid, _)| (uid, scrub_uid(cfg, uid, residue::Pass::Release)))
        .collect()
}

/// Release the uids [`scrub`] scrubbed: each back to the pool only if its scrub left
/// nothing, else quarantined.
pub fn settle(cfg: &Config, scrubbed: &[(u32, Residue)]) -> Result<()> {
    let mut first = None;
    for (uid, residue) in scrubbed {
        if let Err(e) = settle_uid(cfg, *uid, residue) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Retry every quarantined uid (gc), purging its trees however deep ([`residue::Pass::Purge`])
/// within `time` in all; returns those still quarantined.
///
/// The uids are taken least recently tried first (the lease file's mtime: a retry that fails
/// rewrites it), so one uid whose trees take longer than `time` does not starve the others.
/// Once `time` is up, the rest keep their reason for the next run.
pub fn retry_quarantined(cfg: &Config, time: Duration) -> Vec<(u32, String)> {
    let deadline = std::time::Instant::now() + time;
    let tried_at = |uid: u32| {
        fs::symlink_metadata(dir(cfg).join(uid.to_string()))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let mut queue: Vec<(SystemTime, u32, String)> = quarantined(cfg)
        .into_iter()
        .map(|(uid, why)| (tried_at(uid), uid, why))
        .collect();
    queue.sort();
    queue
        .into_iter()
        .filter_map(|(_, uid, why)| {
            if std::time::Instant::now() >= deadline {
                return Some((uid, why));
            }
            crate::process::kill_uid(uid);
            match release_uid(cfg, uid, residue::Pass::Purge { deadline }) {
                Ok(r) if r.is_clean() => {
                    tracing::info!(uid, "quarantined uid is clean again: back in the pool");
                    None
                }
                Ok(r) => Some((uid, r.summary())),
                Err(e) => Some((uid, format!("{why} (retry failed: {e})"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's release as teardown does it: scrub, then settle.
    fn release(cfg: &Config, job_id: u64) -> Result<()> {
        settle(cfg, &scrub(cfg, job_id))
    }

    fn cfg(root: &Path, range: [u32; 2]) -> Config {
        let mut cfg = Config::parse("").unwrap();
        cfg.state_root = root.join("state");
        cfg.builds_root = root.join("builds");
        cfg.job_uid_range = Some(range);
        cfg.sandbox.scrub_dirs = Vec::new();
        cfg
    }

    #[test]
    fn lease_order_prefers_fresh_then_least_recently_released() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // (name, taken, released (uid, secs), start, expected order)
        type Case = (&'static str, Vec<u32>, Vec<(u32, u64)>, u64, Vec<u32>);
        let cases: Vec<Case> = vec![
            (
                "all fresh, from the offset",
                vec![],
                vec![],
                1,
                vec![11, 12, 13, 10],
            ),
            ("taken skipped", vec![11, 13], vec![], 1, vec![12, 10]),
            (
                "released last, oldest release first",
                vec![],
                vec![(10, 50), (11, 20), (12, 90)],
                0,
                vec![13, 11, 10, 12],
            ),
            ("none free", vec![10, 11, 12, 13], vec![], 0, vec![]),
        ];
        for (name, taken, released, start, want) in cases {
            let taken: HashSet<u32> = taken.into_iter().collect();
            let released = released.into_iter().map(|(u, s)| (u, t(s))).collect();
            assert_eq!(
                lease_order([10, 13], &taken, &released, start).collect::<Vec<_>>(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn leases_are_exclusive_reused_last_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), [5000, 5002]);
        let a = lease(&cfg, 10).unwrap().unwrap();
        let b = lease(&cfg, 11).unwrap().unwrap();
        assert_ne!(a, b);
        assert_eq!(lease(&cfg, 10).unwrap(), Some(a), "a retry keeps its uid");
        release(&cfg, 10).unwrap();
        let c = lease(&cfg, 12).unwrap().unwrap();
        assert!(c != a && c != b, "the released uid is reused last");
        assert!(lease(&cfg, 13).unwrap() == Some(a), "then it comes back");
        assert!(lease(&cfg, 14).is_err(), "range exhausted");
        // No lease file is ever empty, and no temp file is left.
        for e in fs::read_dir(cfg.state_root.join("uids")).unwrap().flatten() {
            if e.path().is_file() {
                assert!(!fs::read_to_string(e.path()).unwrap().is_empty());
            }
            assert!(!e.file_name().to_string_lossy().starts_with(".lease-"));
        }
    }

    #[test]
    fn uids_the_host_gives_accounts_or_users_subordinate_ids_are_never_leased() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), [5000, 5003]);
        let mut held = crate::host_ids::subordinate("bob:4990:12\n");
        held.extend(crate::host_ids::accounts(
            "carol:x:5003:5003::/home/carol:/bin/sh\n",
        ));
        let a = lease_avoiding(&cfg, 1, &held, false).unwrap();
        assert_eq!(
            a,
            Some(5002),
            "5000-5001 are bob's subordinate uids, 5003 is carol's"
        );
        let err = lease_avoiding(&cfg, 2, &held, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("leased (0 quarantined) or held by the host (bob:4990:12, carol (5003)"),
            "{err}"
        );
        assert_eq!(
            lease_avoiding(&cfg, 1, &held, false).unwrap(),
            a,
            "a retry keeps its uid"
        );
        // Past the files, with a directory service: the user database's answer for the uid
        // about to be leased (root's uid stands in for an account only that service knows).
        let nss = tempfile::tempdir().unwrap();
        let err = lease_avoiding(&self::cfg(nss.path(), [0, 0]), 3, &[], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("every uid in job_uid_range [0, 0] is leased"),
            "{err}"
        );
    }

    #[test]
    fn quarantined_and_broken_leases_stay_out_of_the_pool_until_clean() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), [5000, 5000]);
        lease(&cfg, 1).unwrap();
        let uids = cfg.state_root.join("uids");
        replace(&uids, "5000", "quarantine: 1 file(s) such as /tmp/x\n").unwrap();
        assert_eq!(
            quarantined(&cfg),
            vec![(5000, "1 file(s) such as /tmp/x".into())]
        );
        assert!(leases(&cfg).is_empty());
        let err = lease(&cfg, 2).unwrap_err().to_string();
        assert!(err.contains("1 quarantined"), "{err}");
        // Nothing of the uid is left on this host (no scrub dirs, no processes): gc frees it.
        if nix::unistd::geteuid().is_root() {
            assert!(retry_quarantined(&cfg, Duration::from_secs(60)).is_empty());
            assert_eq!(lease(&cfg, 2).unwrap(), Some(5000));
        }
        // A young empty lease is someone's write in progress; an old one is broken.
        let f = uids.join("4999");
        fs::write(&f, "").unwrap();
        assert!(quarantined(&cfg).iter().all(|(u, _)| *u != 4999));
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(quarantined(&cfg).iter().any(|(u, _)| *u == 4999));
    }

    #[test]
    fn a_deep_tree_quarantines_its_uid_naming_depth_and_gc_purges_it_within_its_time() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to own files as another uid");
            return;
        }
        let uid = 4_000_777; // no process has it: gc's kill_uid finds nothing
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg(dir.path(), [uid, uid]);
        let scrub = dir.path().join("lock");
        fs::create_dir(&scrub).unwrap();
        cfg.sandbox.scrub_dirs = vec![scrub.clone()];
        lease(&cfg, 1).unwrap();
        let mut d = scrub.join("t");
        for _ in 0..120 {
            fs::create_dir(&d).unwrap();
            std::os::unix::fs::lchown(&d, Some(uid), Some(uid)).unwrap();
            d.push("d");
        }
        release(&cfg, 1).unwrap();
        let why = quarantined(&cfg);
        assert_eq!(why.len(), 1);
        assert!(why[0].1.contains("depth limit (32 levels)"), "{why:?}");
        // A gc with no time left keeps it quarantined, for the same reason.
        assert_eq!(retry_quarantined(&cfg, Duration::ZERO), why);
        assert_eq!(quarantined(&cfg), why);
        // With time, gc removes the tree however deep, and the uid serves again.
        assert_eq!(retry_quarantined(&cfg, Duration::from_secs(60)), vec![]);
        assert!(!scrub.join("t").exists());
        assert_eq!(lease(&cfg, 2).unwrap(), Some(uid));
    }
}
