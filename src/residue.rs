//! What a job uid left on the host, and removing it, so the uid is clean before another job
//! leases it: processes (any uid field), SysV IPC objects, kernel keyrings, and files in the
//! scrub dirs (the world-writable places, `[sandbox] scrub_dirs`).
//!
//! # The file scrub, and why no job can jam it
//! Files are walked and removed through directory fds (`openat` with `O_NOFOLLOW |
//! O_DIRECTORY`, `unlinkat`), with an explicit stack instead of recursion ([`tree`]), so a link
//! planted anywhere in those trees is removed, never followed, and no depth costs the stack.
//!
//! Scrubbing uid U, the walk goes only where U could have put something ([`judge`]): into U's
//! tree (a directory U owns and everything in it, whoever owns that: U let them in, and it all
//! goes with the directory), and into another owner's directories that U could write into
//! (others' write and search bits, or the group's when the group is the jobs' gid; jobs share
//! `job_user`'s gid and have no supplementary groups). Every entry examined is charged to its
//! owner (to U, in U's tree), and each bound is judged against the owner concerned:
//! - U's own entries past [`MAX_ENTRIES`], or a directory of U's deeper than [`MAX_DEPTH`],
//!   leave U unproven: quarantined, with the bound named in the reason. `gc` then purges U's
//!   trees with no depth or entry bound, within [`PURGE_TIME`] per run ([`Pass::Purge`]).
//! - Another owner A's directory deeper than [`MAX_DEPTH`], or A's entries past
//!   [`MAX_ENTRIES`], are not searched for U and cost U nothing: a tree of A's cannot quarantine
//!   U. A itself is quarantined by its own scrub (its own entries are past the bound) and
//!   purged by `gc`.
//! - Past [`MAX_EXAMINED`] entries in all (other owners' floods of a shared directory), the walk
//!   stops without blaming U.
//!
//! The trade-off, chosen for availability: U is released without its entries being searched in
//! (a) a deep or huge world-writable tree of another uid A below the bounds' reach, (b) a
//! directory U could write into only through a POSIX ACL or a path it searched but could not
//! write (a world-writable directory below another uid's 0755 one), or (c) a directory its owner
//! made unwritable after U wrote into it. In each case what U left lies inside another uid's
//! directory, and goes with that directory: A's own scrub (or gc's purge of A's quarantined uid)
//! removes A's whole tree, U's entries included. Until then U's next job could read it. A job only leaves files there by writing into a directory another (hostile)
//! job prepared for it, so the window is one an honest job does not open; the alternative,
//! quarantining U for trees it cannot be shown to have touched, let any job take the pool down.
//! Skipped trees are logged with their owner and path.

mod judge;
mod tree;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use judge::{Hit, Who};
pub use tree::Skipped;

/// Bound on the scrubbed uid's own entries examined per scrub (and on any other owner's
/// searched for it): a uid with more in the scrub dirs cannot be proven clean cheaply, and is
/// quarantined for `gc` to purge.
pub const MAX_ENTRIES: usize = 200_000;

/// Deepest directory level (below a scrub dir) searched at release: deeper directories of the
/// uid's own quarantine it; deeper ones of other owners are skipped.
pub const MAX_DEPTH: usize = 32;

/// Bound on all entries examined by one scrub, whoever owns them: the bound on its time.
pub const MAX_EXAMINED: usize = 1_000_000;

/// Time `gc` spends purging quarantined uids per run; a purge that runs out of it leaves its
/// uid quarantined, and the next run continues (what was removed stays removed).
pub const PURGE_TIME: Duration = Duration::from_secs(300);

/// Which pass over the scrub dirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// When a job's uid is released: bounded by [`MAX_DEPTH`] and [`MAX_ENTRIES`].
    Release,
    /// `gc` on a quarantined uid: its own trees are removed however deep or large, until
    /// `deadline`.
    Purge {
        /// When to stop.
        deadline: Instant,
    },
}

impl Pass {
    fn limits(self) -> judge::Limits {
        let release = judge::Limits {
            own_depth: Some(MAX_DEPTH),
            own_entries: Some(MAX_ENTRIES),
            foreign_depth: MAX_DEPTH,
            foreign_entries: MAX_ENTRIES,
            examined: Some(MAX_EXAMINED),
            deadline: None,
        };
        match self {
            Pass::Release => release,
            Pass::Purge { deadline } => judge::Limits {
                own_depth: None,
                own_entries: None,
                examined: None,
                deadline: Some(deadline),
                ..release
            },
        }
    }
}

/// Why a scrub could not prove the uid clean although it removed what it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// A directory of the uid's deeper than [`MAX_DEPTH`], at this path.
    Depth(PathBuf),
    /// More than [`MAX_ENTRIES`] entries of the uid's.
    Entries,
    /// gc's purge ran out of [`PURGE_TIME`].
    Time,
    /// More than [`MAX_EXAMINED`] entries in all, in a pass with no bound on the uid's own
    /// entries (neither pass here combines the two; named rather than folded into another).
    Examined,
}

/// What a uid still holds after a scrub; empty means clean.
///
/// Each kind of thing a uid can hold across jobs has its field here (processes, IPC, files,
/// keyrings), and `is_clean` requires all of them empty.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Residue {
    /// Live processes holding the uid.
    pub processes: usize,
    /// SysV IPC objects (shm, sem, msg) owned or created by the uid.
    pub ipc: usize,
    /// Entries of the uid's in the scrub dirs that could not be removed, counted.
    pub files_left: usize,
    /// A few of them.
    pub files: Vec<PathBuf>,
    /// The bound that stopped the file walk before it could prove the uid clean.
    pub limit: Option<Limit>,
    /// Other owners' trees not searched for this uid (informational: they do not keep it).
    pub skipped: Vec<Skipped>,
    /// The uid's user, user-session or persistent keyring could not be emptied (why).
    pub keyrings: Option<String>,
}

impl Residue {
    /// Nothing left.
    pub fn is_clean(&self) -> bool {
        self.processes == 0
            && self.ipc == 0
            && self.files_left == 0
            && self.limit.is_none()
            && self.keyrings.is_none()
    }

    /// One line for `check`, the lease file and the logs; it names the bound that was hit.
    pub fn summary(&self) -> String {
        let esc =
            |p: &std::path::Path| crate::terminal::escape(&p.display().to_string()).into_owned();
        let mut parts = Vec::new();
        if self.processes > 0 {
            parts.push(format!("{} process(es)", self.processes));
        }
        if self.ipc > 0 {
            parts.push(format!("{} SysV IPC object(s)", self.ipc));
        }
        if let Some(why) = &self.keyrings {
            parts.push(why.clone());
        }
        match &self.limit {
            Some(Limit::Depth(at)) => parts.push(format!(
                "its own tree goes deeper than the scrub's depth limit ({MAX_DEPTH} levels) at {}",
                esc(at)
            )),
            Some(Limit::Entries) => parts.push(format!(
                "it owns more than the scrub's entry limit ({MAX_ENTRIES}) in the scrub dirs"
            )),
            Some(Limit::Time) => parts.push(format!(
                "gc's purge ran out of its time ({} s) before its trees were removed; the next \
                 gc continues",
                PURGE_TIME.as_secs()
            )),
            Some(Limit::Examined) => parts.push(format!(
                "the scrub stopped at {MAX_EXAMINED} entries examined in all"
            )),
            None => {}
        }
        if self.limit.is_some() && self.files_left > 0 {
            // What the bound kept (the levels above a too-deep directory): the limit says where.
            parts.push(format!("{} entries left for gc to remove", self.files_left));
        } else if let Some(first) = self.files.first() {
            parts.push(format!(
                "{} file(s) that could not be removed, such as {}",
                self.files_left,
                esc(first)
            ));
        }
        parts.join(", ")
    }

    /// One line per skipped tree, for the logs.
    pub fn skipped_lines(&self) -> Vec<String> {
        self.skipped
            .iter()
            .map(|s| {
                let owner = s.owner.map_or("many owners".into(), |o| format!("uid {o}"));
                let bound = match s.hit {
                    Hit::Depth => format!("deeper than {MAX_DEPTH} levels"),
                    Hit::Entries => format!("more than {MAX_ENTRIES} entries"),
                    Hit::Examined => format!("{MAX_EXAMINED} entries examined in all"),
                    Hit::Time => "out of time".into(),
                };
                format!(
                    "not searched: {} ({owner}'s, {bound})",
                    crate::terminal::escape(&s.path.display().to_string())
                )
            })
            .collect()
    }
}

/// SysV IPC kinds: their `/proc/sysvipc` file, id column, and how to remove one.
const IPC_KINDS: [(&str, &str); 3] = [
    ("/proc/sysvipc/shm", "shmid"),
    ("/proc/sysvipc/sem", "semid"),
    ("/proc/sysvipc/msg", "msqid"),
];

/// Ids of the objects in one `/proc/sysvipc/*` table whose owner or creator is `uid`.
fn ipc_ids_of(table: &str, id_column: &str, uid: u32) -> Vec<i32> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(id), Some(owner), Some(creator)) = (col(id_column), col("uid"), col("cuid")) else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let holds = [owner, creator]
                .iter()
                .any(|&c| f.get(c).and_then(|v| v.parse::<u32>().ok()) == Some(uid));
            holds.then(|| f.get(id)?.parse().ok()).flatten()
        })
        .collect()
}

fn ipc_objects(uid: u32) -> Vec<(usize, i32)> {
    IPC_KINDS
        .iter()
        .enumerate()
        .flat_map(|(kind, (file, column))| {
            let table = std::fs::read_to_string(file).unwrap_or_default();
            ipc_ids_of(&table, column, uid)
                .into_iter()
                .map(move |id| (kind, id))
        })
        .collect()
}

/// Remove one SysV IPC object (raw libc: neither nix nor rustix has the SysV calls).
fn remove_ipc(kind: usize, id: i32) -> std::io::Result<()> {
    // SAFETY: IPC_RMID on an id, with no buffer; a stale id just fails.
    let rc = unsafe {
        match kind {
            0 => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            1 => libc::semctl(id, 0, libc::IPC_RMID),
            _ => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Remove everything `who` left (SysV IPC objects, files in `dirs`), then report what is still
/// there, processes included. The caller has killed the uid's processes first (cleanup does,
/// before it revokes the job's credentials; gc does before a purge).
pub fn scrub(who: Who, dirs: &[PathBuf], pass: Pass) -> Residue {
    for (kind, id) in ipc_objects(who.uid) {
        // Not fatal: an object removed meanwhile is gone, and one that stays is counted below.
        if let Err(e) = remove_ipc(kind, id) {
            tracing::debug!(uid = who.uid, "remove {}: {e}", IPC_KINDS[kind].0);
        }
    }
    // Kernel keyrings outlive the uid's processes (which are gone by now): a key left in
    // them would reach the uid's next job.
    let keyrings = crate::walls::keyring::clear_uid(who.uid).err();
    let mut walk = tree::Walk::new(who, pass.limits());
    for dir in dirs {
        walk.dir(dir);
    }
    let out = walk.finish();
    Residue {
        processes: crate::process::pids_of_uid(who.uid).len(),
        ipc: ipc_objects(who.uid).len(),
        files_left: out.left,
        files: out.left_sample,
        limit: out.unproven.map(|(hit, at)| match hit {
            Hit::Depth => Limit::Depth(at.unwrap_or_default()),
            Hit::Entries => Limit::Entries,
            Hit::Time => Limit::Time,
            Hit::Examined => Limit::Examined,
        }),
        skipped: out.skipped,
        keyrings,
    }
}

/// Remove every entry of `dirs` owned (uid or gid) by an id of `first..=last`, a container
/// job's subordinate range, with the walk's guarantees (no link followed, directory fds, an
/// explicit stack; other owners' trees judged as for a uid). Files only: the range's processes
/// are `subid_pool`'s to kill, its IPC namespace died with its job, and its seccomp profile
/// refuses keyrings. `gid` is the jobs' gid (a container job's inside 0).
pub fn scrub_ids(first: u32, last: u32, gid: Option<u32>, dirs: &[PathBuf], pass: Pass) -> Residue {
    let who = Who { uid: first, gid };
    let mut walk = tree::Walk::new(who, pass.limits()).with_ids(first, last);
    for dir in dirs {
        walk.dir(dir);
    }
    let out = walk.finish();
    Residue {
        files_left: out.left,
        files: out.left_sample,
        limit: out.unproven.map(|(hit, at)| match hit {
            Hit::Depth => Limit::Depth(at.unwrap_or_default()),
            Hit::Entries => Limit::Entries,
            Hit::Time => Limit::Time,
            Hit::Examined => Limit::Examined,
        }),
        skipped: out.skipped,
        ..Residue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_reason_names_the_bound_that_was_hit() {
        let at = PathBuf::from("/run/lock/t/d/d");
        let left = |limit| Residue {
            files_left: 3,
            files: vec![at.clone()],
            limit,
            ..Residue::default()
        };
        // (name, residue, the reason says, and does not say)
        let cases = [
            (
                "depth",
                left(Some(Limit::Depth(at.clone()))),
                "deeper than the scrub's depth limit (32 levels) at /run/lock/t/d/d",
                "entry limit",
            ),
            (
                "entries",
                left(Some(Limit::Entries)),
                "more than the scrub's entry limit (200000)",
                "depth",
            ),
            (
                "time",
                left(Some(Limit::Time)),
                "ran out of its time",
                "limit",
            ),
            (
                "files only",
                left(None),
                "3 file(s) that could not be removed, such as /run/lock/t/d/d",
                "limit",
            ),
            (
                "processes and IPC",
                Residue {
                    processes: 2,
                    ipc: 1,
                    ..Residue::default()
                },
                "2 process(es), 1 SysV IPC object(s)",
                "file",
            ),
        ];
        for (name, residue, says, not) in cases {
            assert!(!residue.is_clean(), "{name}");
            let line = residue.summary();
            assert!(line.contains(says) && !line.contains(not), "{name}: {line}");
        }
        let skipped_only = Residue {
            skipped: vec![Skipped {
                owner: Some(5001),
                path: at.clone(),
                hit: Hit::Depth,
            }],
            ..Residue::default()
        };
        assert!(skipped_only.is_clean(), "another uid's tree keeps nobody");
        assert_eq!(
            skipped_only.skipped_lines(),
            vec!["not searched: /run/lock/t/d/d (uid 5001's, deeper than 32 levels)"]
        );
    }

    const SHM: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
         0          7   600                  4096  100   0      0  5000  5000  5000  5000          0          0 1700000000                     0                     0
         0          8   600                  4096  100   0      0     0     0  5000     0          0          0 1700000000                     0                     0
         0          9   600                  4096  100   0      0     0     0     0     0          0          0 1700000000                     0                     0
";

    #[test]
    fn ipc_objects_owned_or_created_by_the_uid_are_found() {
        assert_eq!(ipc_ids_of(SHM, "shmid", 5000), vec![7, 8]);
        assert_eq!(ipc_ids_of(SHM, "shmid", 6000), Vec::<i32>::new());
        assert_eq!(ipc_ids_of("", "shmid", 5000), Vec::<i32>::new());
    }

    #[test]
    fn scrub_removes_only_the_uids_files_and_never_follows_links() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to own files as another uid");
            return;
        }
        let uid = 4_000_123;
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("keep"), "x").unwrap();
        let own = |p: &Path| std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("theirs/nested")).unwrap();
        std::fs::write(d.join("theirs/nested/f"), "x").unwrap();
        own(&d.join("theirs"));
        own(&d.join("theirs/nested"));
        own(&d.join("theirs/nested/f"));
        std::fs::write(d.join("mine"), "x").unwrap();
        std::fs::write(d.join("ccache-copy"), "x").unwrap();
        own(&d.join("ccache-copy"));
        std::os::unix::fs::symlink(victim.path(), d.join("link")).unwrap();
        own(&d.join("link"));
        std::os::unix::fs::symlink(victim.path(), d.join("root-link")).unwrap();
        let who = Who { uid, gid: None };
        let r = scrub(who, &[d.to_path_buf()], Pass::Release);
        assert!(r.is_clean(), "{r:?}");
        assert!(!d.join("theirs").exists() && !d.join("ccache-copy").exists());
        assert!(std::fs::symlink_metadata(d.join("link")).is_err());
        assert!(d.join("mine").exists(), "another owner's file was removed");
        assert!(victim.path().join("keep").exists(), "followed a symlink");
    }
}
