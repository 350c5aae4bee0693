//! The file walk of a scrub: one scrub dir at a time, depth-first, with an explicit stack of
//! directory fds instead of recursion, so a tree of any depth costs heap, never the thread's
//! stack. Every step is relative to a directory fd (`fstatat`, `openat` with `O_NOFOLLOW |
//! O_DIRECTORY`, `unlinkat`), so a link planted anywhere is unlinked, never followed, and a
//! directory renamed during the walk is noticed (its device and inode are compared).
//!
//! A tree deeper than the process may hold fds for (gc's purge of a quarantined uid has no depth
//! bound) keeps only some fds open: those of the top `window` levels and of every
//! `checkpoint`-th level. Returning to a level whose fd was closed reopens the levels from the
//! nearest open one by name, checking each is still the directory it was.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use nix::unistd::UnlinkatFlags;

use super::judge::{Action, Budget, Enter, Go, Hit, Limits, Meta, Who, judge};

/// Paths kept as examples (of what was left or skipped); the rest are only counted. Building a
/// path costs its depth, so a deep tree must not build one per level.
const SAMPLES: usize = 8;

/// Another owner's tree the walk did not search, and the bound that stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The tree's owner; None when the pass's bound on all entries stopped it.
    pub owner: Option<u32>,
    /// Where.
    pub path: PathBuf,
    /// Which bound.
    pub hit: Hit,
}

/// What one pass found and did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Entries of the uid's that are still there, counted.
    pub left: usize,
    /// Some of them.
    pub left_sample: Vec<PathBuf>,
    /// The first bound of the uid's own that stopped the walk, and where (for depth).
    pub unproven: Option<(Hit, Option<PathBuf>)>,
    /// Other owners' trees not searched (a few; each is logged by the caller).
    pub skipped: Vec<Skipped>,
    /// Directory fds held at once, at most (the walk's only cost that grows with depth besides
    /// the names on its stack).
    pub peak_fds: usize,
    /// Levels reopened after their fd was closed to stay within the window.
    pub reopened: usize,
}

struct Frame {
    /// None while closed to save fds (only below the top `window` levels).
    fd: Option<OwnedFd>,
    /// Name in the parent directory; the scrub dir's own path for the bottom frame.
    name: CString,
    dev: u64,
    ino: u64,
    /// Part of the uid's tree: emptied and removed.
    owned: bool,
    /// Entries still to examine.
    names: Vec<CString>,
}

/// A walk for one uid over any number of scrub dirs, within one budget.
pub struct Walk {
    who: Who,
    /// More ids that count as `who.uid` (a container job's subordinate range): an entry whose
    /// uid or gid is one of them is the uid's.
    alias: Option<(u32, u32)>,
    budget: Budget,
    window: usize,
    checkpoint: usize,
    stopped: bool,
    /// Directory fds held by the stack now.
    fds: usize,
    out: Outcome,
}

fn open_dir_at(parent: &OwnedFd, name: &CStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The names in `dir`, without `.` and `..`. Read once, before anything in it is removed (a
/// directory changing under `getdents` may repeat or skip names).
fn read_names(dir: &OwnedFd) -> Vec<CString> {
    // A fresh open file description: `Dir` reads (and moves the offset of) its own.
    let Ok(fd) = nix::fcntl::openat(
        dir,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(mut entries) = Dir::from_fd(fd) else {
        return Vec::new();
    };
    entries
        .iter()
        .map_while(std::result::Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| e.file_name().to_owned())
        .collect()
}

fn meta(st: &FileStat) -> Meta {
    Meta {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
    }
}

impl Walk {
    /// A walk for `who` within `limits`; `window` and `checkpoint` bound the fds it holds.
    pub fn new(who: Who, limits: Limits) -> Self {
        Self::with_fds(who, limits, 256, 256)
    }

    /// As [`Walk::new`] with explicit fd bounds (tests use small ones to exercise reopening).
    pub fn with_fds(who: Who, limits: Limits, window: usize, checkpoint: usize) -> Self {
        Walk {
            who,
            alias: None,
            budget: Budget::new(who, limits),
            window: window.max(1),
            checkpoint: checkpoint.max(1),
            stopped: false,
            fds: 0,
            out: Outcome::default(),
        }
    }

    /// Entries owned (uid or gid) by an id of `first..=last` count as the uid's: the walk of a
    /// subordinate range, which one job's processes held under many ids.
    pub fn with_ids(mut self, first: u32, last: u32) -> Self {
        self.alias = Some((first, last));
        self
    }

    /// `st` with an aliased owner (uid or gid in the alias range) replaced by the uid.
    fn canonical(&self, st: &FileStat) -> Meta {
        let mut m = meta(st);
        if let Some((lo, hi)) = self.alias {
            if (lo..=hi).contains(&m.uid) || (lo..=hi).contains(&m.gid) {
                m.uid = self.who.uid;
            }
        }
        m
    }

    /// What the walk found.
    pub fn finish(self) -> Outcome {
        self.out
    }

    /// The path of `stack[..=top]`, plus `name` below it.
    fn path_of(stack: &[Frame], top: usize, name: Option<&CStr>) -> PathBuf {
        let mut path = PathBuf::from(OsStr::from_bytes(stack[0].name.to_bytes()));
        for f in &stack[1..=top] {
            path.push(OsStr::from_bytes(f.name.to_bytes()));
        }
        if let Some(n) = name {
            path.push(OsStr::from_bytes(n.to_bytes()));
        }
        path
    }

    fn leave(&mut self, stack: &[Frame], top: usize, name: Option<&CStr>) {
        self.out.left += 1;
        if self.out.left_sample.len() < SAMPLES {
            self.out.left_sample.push(Self::path_of(stack, top, name));
        }
    }

    fn skip(&mut self, owner: Option<u32>, path: impl FnOnce() -> PathBuf, hit: Hit) {
        if self.out.skipped.len() < SAMPLES {
            self.out.skipped.push(Skipped {
                owner,
                path: path(),
                hit,
            });
        }
    }

    fn unproven(&mut self, hit: Hit, path: impl FnOnce() -> Option<PathBuf>) {
        if self.out.unproven.is_none() {
            self.out.unproven = Some((hit, path()));
        }
    }

    fn opened(&mut self) {
        self.fds += 1;
        self.out.peak_fds = self.out.peak_fds.max(self.fds);
    }

    /// Drop the frames from `k` up (their fds with them).
    fn truncate(&mut self, stack: &mut Vec<Frame>, k: usize) {
        self.fds -= stack[k..].iter().filter(|f| f.fd.is_some()).count();
        stack.truncate(k);
    }

    /// Make sure the top frame has an open fd, reopening closed levels from the nearest open
    /// one. A level that is gone or was replaced ends the walk of its subtree there.
    fn reopen_top(&mut self, stack: &mut Vec<Frame>) -> bool {
        let top = stack.len() - 1;
        if stack[top].fd.is_some() {
            return true;
        }
        // The bottom frame is never closed, so some level below is open.
        let open = (0..top).rev().find(|&i| stack[i].fd.is_some()).unwrap_or(0);
        for k in open + 1..=top {
            let parent = stack[k - 1].fd.as_ref().expect("opened in order");
            let same = open_dir_at(parent, &stack[k].name).ok().and_then(|fd| {
                let st = fstat(&fd).ok()?;
                (st.st_dev == stack[k].dev && st.st_ino == stack[k].ino).then_some(fd)
            });
            match same {
                Some(fd) => {
                    stack[k].fd = Some(fd);
                    self.opened();
                    self.out.reopened += 1;
                }
                None => {
                    // Moved or replaced while we were below it: what is under it now is not
                    // what we were walking. Unproven for this pass (quarantine stays, and the
                    // next pass starts afresh).
                    self.leave(stack, k, None);
                    self.truncate(stack, k);
                    return false;
                }
            }
        }
        true
    }

    /// Walk the scrub dir `root` (absent: nothing to do).
    pub fn dir(&mut self, root: &Path) {
        if self.stopped {
            return;
        }
        let Ok(fd) = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return; // absent on this host
        };
        let (Ok(st), Ok(name)) = (fstat(&fd), CString::new(root.as_os_str().as_bytes())) else {
            return;
        };
        let names = read_names(&fd);
        self.opened();
        let mut stack = vec![Frame {
            fd: Some(fd),
            name,
            dev: st.st_dev,
            ino: st.st_ino,
            owned: false, // the scrub dir itself is the host's, never removed
            names,
        }];
        while !stack.is_empty() && !self.stopped {
            if !self.reopen_top(&mut stack) {
                continue;
            }
            let top = stack.len() - 1;
            let Some(name) = stack[top].names.pop() else {
                self.finish_dir(&mut stack);
                continue;
            };
            self.entry(&mut stack, name);
        }
        // A stopped walk leaves frames behind.
        self.truncate(&mut stack, 0);
    }

    /// The top directory is searched: pop it, and remove it if it is the uid's.
    fn finish_dir(&mut self, stack: &mut Vec<Frame>) {
        let done = stack.pop().expect("a frame");
        self.fds -= usize::from(done.fd.is_some());
        if !done.owned || stack.is_empty() {
            return;
        }
        if !self.reopen_top(stack) {
            return;
        }
        let top = stack.len() - 1;
        let parent = stack[top].fd.as_ref().expect("reopened");
        if nix::unistd::unlinkat(parent, done.name.as_c_str(), UnlinkatFlags::RemoveDir).is_err() {
            self.leave(stack, top, Some(&done.name));
        }
    }

    /// Examine (and unlink, or search) the entry `name` of the top directory.
    fn entry(&mut self, stack: &mut Vec<Frame>, name: CString) {
        let top = stack.len() - 1;
        let dir = stack[top].fd.as_ref().expect("reopened");
        let Ok(st) = fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return; // gone meanwhile
        };
        // Everything in the uid's tree is the uid's to answer for (see `judge`).
        let in_own_tree = stack[top].owned;
        let m = self.canonical(&st);
        let owner = if in_own_tree { self.who.uid } else { m.uid };
        match self.budget.charge(owner, Instant::now()) {
            Go::On => {}
            Go::Unproven(hit) => {
                self.unproven(hit, || None);
                self.stopped = true;
                return;
            }
            Go::Others(hit) => {
                self.skip(None, || Self::path_of(stack, 0, None), hit);
                self.stopped = true;
                return;
            }
        }
        match judge(self.who, &m, in_own_tree) {
            Action::Skip => {}
            Action::Unlink => {
                if nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir).is_err()
                {
                    self.leave(stack, top, Some(&name));
                }
            }
            Action::Descend { owned } => match self
                .budget
                .enter(if owned { self.who.uid } else { m.uid }, stack.len())
            {
                Enter::Yes => self.descend(stack, name, &st, owned),
                Enter::Unproven(hit) => {
                    self.unproven(hit, || Some(Self::path_of(stack, top, Some(&name))));
                    // The directory stays, so do its ancestors of the uid's: counted as left
                    // when their own removal fails.
                }
                Enter::Skip(hit) => {
                    self.skip(
                        Some(st.st_uid),
                        || Self::path_of(stack, top, Some(&name)),
                        hit,
                    );
                }
            },
        }
    }

    fn descend(&mut self, stack: &mut Vec<Frame>, name: CString, st: &FileStat, owned: bool) {
        let top = stack.len() - 1;
        let dir = stack[top].fd.as_ref().expect("reopened");
        // The directory opened must be the one judged: a swap between fstatat and openat
        // (another job renaming in a shared directory) must not let us remove its entries.
        let opened = open_dir_at(dir, &name).ok().filter(|fd| {
            fstat(fd).is_ok_and(|now| {
                now.st_dev == st.st_dev && now.st_ino == st.st_ino && now.st_uid == st.st_uid
            })
        });
        let Some(fd) = opened else {
            if owned {
                self.leave(stack, top, Some(&name));
            }
            return;
        };
        let names = read_names(&fd);
        self.opened();
        stack.push(Frame {
            fd: Some(fd),
            name,
            dev: st.st_dev,
            ino: st.st_ino,
            owned,
            names,
        });
        // Keep the fds of the top `window` levels and of every `checkpoint`-th level: the one
        // just leaving the window is closed unless it is a checkpoint (the bottom one is).
        if let Some(leaving) = stack.len().checked_sub(self.window + 1) {
            if leaving % self.checkpoint != 0 && stack[leaving].fd.take().is_some() {
                self.fds -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const U: u32 = 4_000_321;
    const A: u32 = 4_000_322;
    const JOBS: u32 = 4_000_999;
    const WHO: Who = Who {
        uid: U,
        gid: Some(JOBS),
    };

    fn root() -> bool {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to own files as another uid");
        }
        nix::unistd::geteuid().is_root()
    }

    fn scrub_limits() -> Limits {
        Limits {
            own_depth: Some(32),
            own_entries: Some(1000),
            foreign_depth: 32,
            foreign_entries: 1000,
            examined: Some(10_000),
            deadline: None,
        }
    }

    fn purge_limits() -> Limits {
        Limits {
            own_depth: None,
            own_entries: None,
            examined: None,
            deadline: Some(Instant::now() + Duration::from_secs(120)),
            ..scrub_limits()
        }
    }

    /// A chain `top/d/d/...` of `levels` directories below `top` (which is made too), each
    /// chowned to `owner` and given `perm`, with a file at the bottom; built with dir fds
    /// because its paths outgrow PATH_MAX. Returns the number of entries made.
    fn chain(top: &Path, levels: usize, owner: u32, perm: u32) -> usize {
        std::fs::create_dir(top).unwrap();
        let set = |fd: &OwnedFd| {
            nix::unistd::fchown(fd, Some(owner.into()), Some(JOBS.into())).unwrap();
            nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(perm)).unwrap();
        };
        let mut fd =
            nix::fcntl::open(top, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        set(&fd);
        for _ in 0..levels {
            nix::sys::stat::mkdirat(&fd, c"d", Mode::from_bits_truncate(0o700)).unwrap();
            fd = open_dir_at(&fd, c"d").unwrap();
            set(&fd);
        }
        let file = nix::fcntl::openat(
            &fd,
            c"f",
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        nix::unistd::fchown(&file, Some(owner.into()), None).unwrap();
        levels + 2
    }

    fn walk(who: Who, limits: Limits, window: usize, dir: &Path) -> Outcome {
        let mut w = Walk::with_fds(who, limits, window, window);
        w.dir(dir);
        w.finish()
    }

    /// The trees of these tests live where no other test looks (a root-only temp dir).
    fn scrub_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        d
    }

    #[test]
    fn a_tree_hundreds_of_levels_deep_is_removed_without_recursion_and_few_fds() {
        if !root() {
            return;
        }
        let d = scrub_dir();
        chain(&d.path().join("t"), 700, U, 0o700);
        // A window of 16 levels and a checkpoint every 16th: the way back up reopens levels
        // from the checkpoints, dozens of times.
        let out = walk(WHO, purge_limits(), 16, d.path());
        assert_eq!(out.unproven, None, "{out:?}");
        assert_eq!((out.left, out.skipped.len()), (0, 0), "{out:?}");
        assert!(!d.path().join("t").exists(), "the tree is still there");
        // 702 levels (the scrub dir, t, 700 d's) on 16 + 702/16 + a reopened run of 16 fds.
        assert!(out.peak_fds <= 16 + 44 + 16, "{} fds", out.peak_fds);
        assert!(out.reopened >= 600, "{} levels reopened", out.reopened);
    }

    #[test]
    fn a_deep_tree_within_a_deadline_that_passed_is_left_unproven_and_kept() {
        if !root() {
            return;
        }
        let d = scrub_dir();
        chain(&d.path().join("t"), 150, U, 0o700);
        let limits = Limits {
            deadline: Some(Instant::now()),
            ..purge_limits()
        };
        let out = walk(WHO, limits, 256, d.path());
        assert_eq!(out.unproven, Some((Hit::Time, None)));
        assert!(d.path().join("t").exists());
        // The next run, with time, finishes it.
        let out = walk(WHO, purge_limits(), 256, d.path());
        assert_eq!((out.unproven, out.left), (None, 0));
        assert!(!d.path().join("t").exists());
    }

    #[test]
    fn the_scrub_stops_at_its_own_depth_and_names_where() {
        if !root() {
            return;
        }
        let d = scrub_dir();
        chain(&d.path().join("t"), 40, U, 0o700);
        let out = walk(WHO, scrub_limits(), 256, d.path());
        let (hit, at) = out.unproven.clone().expect("unproven");
        assert_eq!(hit, Hit::Depth);
        let at = at.unwrap();
        assert_eq!(at.components().count(), d.path().components().count() + 33);
        assert!(out.left > 0, "the levels above it stay: {out:?}");
        assert!(d.path().join("t").exists());
    }

    #[test]
    fn another_uids_deep_trees_cost_the_uid_nothing() {
        if !root() {
            return;
        }
        let d = scrub_dir();
        // A plain tree of A's: not searched at all. A world-writable one: searched to the
        // foreign depth bound, skipped below it, the uid's own entry in it removed.
        chain(&d.path().join("plain"), 40, A, 0o755);
        chain(&d.path().join("open"), 40, A, 0o1777);
        let mine = d.path().join("open/d/d/mine");
        std::fs::write(&mine, "x").unwrap();
        std::os::unix::fs::lchown(&mine, Some(U), None).unwrap();
        let out = walk(WHO, scrub_limits(), 256, d.path());
        assert_eq!((out.unproven.clone(), out.left), (None, 0), "{out:?}");
        assert!(!mine.exists(), "the uid's file in A's open tree was missed");
        assert_eq!(out.skipped.len(), 1, "{out:?}");
        assert_eq!(
            (out.skipped[0].owner, out.skipped[0].hit),
            (Some(A), Hit::Depth)
        );
        // A's trees are A's: untouched by U's scrub, removed by A's purge however deep.
        assert!(d.path().join("plain").exists() && d.path().join("open").exists());
        let a = Who {
            uid: A,
            gid: Some(JOBS),
        };
        let out = walk(a, purge_limits(), 256, d.path());
        assert_eq!((out.unproven.clone(), out.left), (None, 0), "{out:?}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_flood_of_another_owners_entries_stops_the_walk_without_blaming_the_uid() {
        if !root() {
            return;
        }
        let d = scrub_dir();
        for i in 0..30 {
            let f = d.path().join(format!("f{i}"));
            std::fs::write(&f, "").unwrap();
            std::os::unix::fs::lchown(&f, Some(A), None).unwrap();
        }
        let limits = Limits {
            examined: Some(20),
            ..scrub_limits()
        };
        let out = walk(WHO, limits, 256, d.path());
        assert_eq!(out.unproven, None);
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(
            (out.skipped[0].owner, out.skipped[0].hit),
            (None, Hit::Examined)
        );
        // With the uid's own entries past its bound, the uid is the one blamed.
        for i in 0..5 {
            let f = d.path().join(format!("u{i}"));
            std::fs::write(&f, "").unwrap();
            std::os::unix::fs::lchown(&f, Some(U), None).unwrap();
        }
        let limits = Limits {
            own_entries: Some(2),
            ..scrub_limits()
        };
        let out = walk(WHO, limits, 256, d.path());
        assert_eq!(out.unproven, Some((Hit::Entries, None)));
    }

    #[test]
    fn everything_in_the_uids_tree_goes_with_it_whoever_owns_it() {
        if !root() {
            return;
        }
        let d = scrub_dir();
        let own = d.path().join("own");
        chain(&own, 1, U, 0o1777);
        // In U's world-writable directory: a hard link to root's file, a file of A's, a 0755
        // directory of A's with A's file in it, and a directory of root's.
        let roots = d.path().join("roots");
        std::fs::write(&roots, "keep").unwrap();
        std::fs::hard_link(&roots, own.join("link")).unwrap();
        std::fs::write(own.join("of-a"), "").unwrap();
        std::os::unix::fs::lchown(own.join("of-a"), Some(A), None).unwrap();
        chain(&own.join("a"), 0, A, 0o755);
        std::fs::create_dir(own.join("r")).unwrap();
        let out = walk(WHO, scrub_limits(), 256, d.path());
        assert_eq!((out.unproven.clone(), out.left), (None, 0), "{out:?}");
        assert!(!own.exists());
        assert_eq!(std::fs::read_to_string(&roots).unwrap(), "keep");
    }

    #[test]
    fn a_directory_closed_on_the_uid_goes_with_its_owners_tree() {
        if !root() {
            return;
        }
        // Two colluding jobs: A opens a directory, U leaves a 0755 directory in it, A closes
        // it (0755). U's scrub cannot tell it ever wrote there, so U is released with its
        // directory still inside A's (the trade-off in the module doc of `residue`); A's scrub
        // removes A's whole tree, U's directory included, so neither uid is lost for good.
        let d = scrub_dir();
        let shared = d.path().join("shared");
        chain(&shared, 0, A, 0o1777);
        chain(&shared.join("u"), 0, U, 0o755);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = walk(WHO, scrub_limits(), 256, d.path());
        assert_eq!((out.unproven.clone(), out.left), (None, 0), "{out:?}");
        assert!(shared.join("u/f").exists());
        let a = Who {
            uid: A,
            gid: Some(JOBS),
        };
        let out = walk(a, scrub_limits(), 256, d.path());
        assert_eq!((out.unproven.clone(), out.left), (None, 0), "{out:?}");
        assert!(!shared.exists());
    }
}
