//! The pure decisions of the file scrub: what to do with one directory entry, and whose budget
//! an entry or a level of depth is charged to. No system calls here; table-tested.

use std::collections::HashMap;
use std::time::Instant;

/// The uid being scrubbed, and the group every job runs with (`job_user`'s; jobs have no
/// supplementary groups), which decides what the uid could write into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    /// The job uid.
    pub uid: u32,
    /// The jobs' gid; None when `job_user` cannot be looked up (then only directories the uid
    /// owns or everyone may write count as writable by it).
    pub gid: Option<u32>,
}

/// Owner and mode of one directory entry, from `lstat` (never following a link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Owner uid.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode`, file type bits included.
    pub mode: u32,
}

impl Meta {
    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// What the walk does with one entry of a directory it searches.
///
/// "The uid's tree" is a directory the uid owns and everything below it, whoever owns that:
/// the uid let others in (a world-writable directory of its own), and what they put there goes
/// with the directory. Everything in it is charged to the uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Unlink it (a non-directory of the uid's, or in the uid's tree).
    Unlink,
    /// Search the directory; with `owned`, it is part of the uid's tree: empty it, remove it,
    /// and charge it to the uid. Otherwise it is another owner's that the uid could write into:
    /// search it for the uid's entries, on the owner's budget.
    Descend {
        /// The directory is the uid's own.
        owned: bool,
    },
    /// Not the uid's, and nothing of the uid's can be inside.
    Skip,
}

/// Could `who` have created entries in the directory `dir`? Its owner can (it may `chmod`),
/// others need write and search permission through the bits that apply to them: "other", or
/// "group" when the directory's group is the jobs' gid. POSIX ACLs are not read (see the
/// module doc of [`crate::residue`] for what that leaves).
pub fn could_write_into(who: Who, dir: &Meta) -> bool {
    const WX_OTHER: u32 = libc::S_IWOTH | libc::S_IXOTH;
    const WX_GROUP: u32 = libc::S_IWGRP | libc::S_IXGRP;
    dir.uid == who.uid
        || dir.mode & WX_OTHER == WX_OTHER
        || (Some(dir.gid) == who.gid && dir.mode & WX_GROUP == WX_GROUP)
}

/// The decision for `entry`, found in a directory the walk searches for `who`; `in_own_tree`
/// says whether that directory is part of `who`'s tree.
///
/// In the uid's tree everything goes, whoever owns it: otherwise a hard link the job made to a
/// file it does not own, or a directory another job made in a world-writable directory of the
/// uid's (and then closed with `chmod`), would keep the uid's directory, and so its uid,
/// quarantined forever, and two colluding jobs could take a uid out of the pool for good.
/// Outside it, another owner's directory is searched only if the uid could have written into
/// it, and another owner's file is left alone.
pub fn judge(who: Who, entry: &Meta, in_own_tree: bool) -> Action {
    let owned = in_own_tree || entry.uid == who.uid;
    if entry.is_dir() {
        if owned || could_write_into(who, entry) {
            Action::Descend { owned }
        } else {
            Action::Skip
        }
    } else if owned {
        Action::Unlink
    } else {
        Action::Skip
    }
}

/// The bounds of one pass over the scrub dirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest level (below the scrub dir) of a directory of the uid's tree; a deeper one
    /// leaves the uid unproven. None: no bound (gc's purge of a quarantined uid).
    pub own_depth: Option<usize>,
    /// Most entries of the uid's (its own, and all in its tree) examined; more leaves it
    /// unproven. None: no bound.
    pub own_entries: Option<usize>,
    /// Deepest level at which another owner's directory is searched; deeper ones are skipped
    /// and that owner's.
    pub foreign_depth: usize,
    /// Most entries charged to any one other owner; once its count passes this, that owner's
    /// directories are no longer searched.
    pub foreign_entries: usize,
    /// Most entries examined in all (the bound on a pass's time when there is no deadline);
    /// reaching it stops the pass without blaming the uid when its own entries are bounded
    /// (they stayed within `own_entries`, so the rest are other owners'). None: no bound.
    pub examined: Option<usize>,
    /// The pass stops at this instant; the uid stays unproven (gc's purge continues next run).
    pub deadline: Option<Instant>,
}

/// A bound that was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// A directory deeper than the depth bound.
    Depth,
    /// More entries than the entry bound.
    Entries,
    /// The pass's deadline passed.
    Time,
    /// The pass's bound on entries examined in all.
    Examined,
}

/// Whether the walk may go into a directory, and if not, whose limit stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enter {
    /// Go in.
    Yes,
    /// The uid's own directory is past the uid's bound: the uid stays unproven.
    Unproven(Hit),
    /// Another owner's directory past that owner's bound: skipped, not the uid's fault.
    Skip(Hit),
}

/// Whether the walk continues after examining one more entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    /// Continue.
    On,
    /// Stop the whole pass: the uid's own entries passed its bound, or its deadline passed
    /// (both leave the uid unproven).
    Unproven(Hit),
    /// Stop the whole pass: the bound on all entries examined, reached through other owners'
    /// entries. The uid is not blamed.
    Others(Hit),
}

/// The accounting of one pass: every examined entry is charged to its owner, and each limit is
/// judged against the count of the owner concerned, so no owner's tree spends another's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    limits: Limits,
    who: Who,
    own: usize,
    others: HashMap<u32, usize>,
    examined: usize,
}

impl Budget {
    /// A fresh budget for scrubbing `who` within `limits`.
    pub fn new(who: Who, limits: Limits) -> Self {
        Budget {
            limits,
            who,
            own: 0,
            others: HashMap::new(),
            examined: 0,
        }
    }

    /// Charge one examined entry owned by `owner` (the uid, for anything in its tree), at `now`.
    pub fn charge(&mut self, owner: u32, now: Instant) -> Go {
        self.examined += 1;
        if owner == self.who.uid {
            self.own += 1;
            if self.limits.own_entries.is_some_and(|max| self.own > max) {
                return Go::Unproven(Hit::Entries);
            }
        } else {
            *self.others.entry(owner).or_default() += 1;
        }
        if self.limits.deadline.is_some_and(|d| now >= d) {
            return Go::Unproven(Hit::Time);
        }
        if self.limits.examined.is_some_and(|max| self.examined > max) {
            // With the uid's own entries unbounded, the uid may be the one who filled the
            // scrub dirs: it is not cleared by a pass that could not finish.
            return match self.limits.own_entries {
                Some(_) => Go::Others(Hit::Examined),
                None => Go::Unproven(Hit::Examined),
            };
        }
        Go::On
    }

    /// May the walk go into a directory owned by `owner` (the uid, for anything in its tree) at
    /// `depth` (1 = directly in a scrub dir)?
    pub fn enter(&self, owner: u32, depth: usize) -> Enter {
        if owner == self.who.uid {
            match self.limits.own_depth {
                Some(max) if depth > max => Enter::Unproven(Hit::Depth),
                _ => Enter::Yes,
            }
        } else if depth > self.limits.foreign_depth {
            Enter::Skip(Hit::Depth)
        } else if self.others.get(&owner).copied().unwrap_or(0) > self.limits.foreign_entries {
            Enter::Skip(Hit::Entries)
        } else {
            Enter::Yes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const U: u32 = 5000;
    const A: u32 = 5001;
    const JOBS: u32 = 900;
    const WHO: Who = Who {
        uid: U,
        gid: Some(JOBS),
    };

    fn dir(uid: u32, gid: u32, perm: u32) -> Meta {
        Meta {
            uid,
            gid,
            mode: libc::S_IFDIR | perm,
        }
    }
    fn file(uid: u32) -> Meta {
        Meta {
            uid,
            gid: JOBS,
            mode: libc::S_IFREG | 0o600,
        }
    }
    fn link(uid: u32) -> Meta {
        Meta {
            uid,
            gid: 0,
            mode: libc::S_IFLNK | 0o777,
        }
    }

    #[test]
    fn what_the_uid_could_have_written_into() {
        // (name, who, directory, could write)
        let cases = [
            ("its own, even 0500", WHO, dir(U, 0, 0o500), true),
            ("world-writable (1777)", WHO, dir(0, 0, 0o1777), true),
            (
                "world-writable of another job",
                WHO,
                dir(A, JOBS, 0o777),
                true,
            ),
            ("other w without x", WHO, dir(0, 0, 0o1772), false),
            ("another job's 0755", WHO, dir(A, JOBS, 0o755), false),
            (
                "group-writable, the jobs' gid",
                WHO,
                dir(A, JOBS, 0o770),
                true,
            ),
            ("group-writable, another gid", WHO, dir(A, 4, 0o770), false),
            ("group w without x", WHO, dir(A, JOBS, 0o760), false),
            (
                "group-writable, jobs' gid unknown",
                Who { uid: U, gid: None },
                dir(A, JOBS, 0o770),
                false,
            ),
            ("root's 0755", WHO, dir(0, 0, 0o755), false),
        ];
        for (name, who, d, want) in cases {
            assert_eq!(could_write_into(who, &d), want, "{name}");
        }
    }

    #[test]
    fn what_the_walk_does_with_an_entry() {
        let own = Action::Descend { owned: true };
        let theirs = Action::Descend { owned: false };
        let (unlink, skip) = (Action::Unlink, Action::Skip);
        // (name, entry, found in the uid's tree, action)
        let cases = [
            ("its file", file(U), false, unlink),
            ("its symlink (not followed)", link(U), false, unlink),
            ("another's file", file(A), false, skip),
            ("another's file in its tree", file(A), true, unlink),
            ("root's link in its tree", link(0), true, unlink),
            ("its dir, 0700", dir(U, JOBS, 0o700), false, own),
            ("its dir, 0000", dir(U, JOBS, 0), false, own),
            ("A's 0755 tree", dir(A, JOBS, 0o755), false, skip),
            ("A's 0755 dir in its tree", dir(A, JOBS, 0o755), true, own),
            ("root's 0700 in its tree", dir(0, 0, 0o700), true, own),
            ("A's open tree", dir(A, JOBS, 0o1777), false, theirs),
            ("root's 1777 dir", dir(0, 0, 0o1777), false, theirs),
            ("A's group dir", dir(A, JOBS, 0o2770), false, theirs),
        ];
        for (name, entry, in_own, want) in cases {
            assert_eq!(judge(WHO, &entry, in_own), want, "{name}");
        }
    }

    fn limits() -> Limits {
        Limits {
            own_depth: Some(3),
            own_entries: Some(5),
            foreign_depth: 2,
            foreign_entries: 4,
            examined: Some(20),
            deadline: None,
        }
    }

    #[test]
    fn depth_is_judged_against_the_owner_of_the_directory() {
        let b = Budget::new(WHO, limits());
        // (name, owner, depth, verdict)
        let cases = [
            ("its own, in bounds", U, 3, Enter::Yes),
            ("its own, too deep", U, 4, Enter::Unproven(Hit::Depth)),
            ("another's, in bounds", A, 2, Enter::Yes),
            (
                "another's, too deep: skipped",
                A,
                3,
                Enter::Skip(Hit::Depth),
            ),
            ("root's, too deep: skipped", 0, 30, Enter::Skip(Hit::Depth)),
        ];
        for (name, owner, depth, want) in cases {
            assert_eq!(b.enter(owner, depth), want, "{name}");
        }
        let unbounded = Budget::new(
            WHO,
            Limits {
                own_depth: None,
                ..limits()
            },
        );
        assert_eq!(unbounded.enter(U, 100_000), Enter::Yes);
        assert_eq!(unbounded.enter(A, 3), Enter::Skip(Hit::Depth));
    }

    #[test]
    fn entries_are_charged_to_their_owner() {
        let now = Instant::now();
        let mut b = Budget::new(WHO, limits());
        // Another owner's flood never stops the pass through the uid's own bound...
        for _ in 0..5 {
            assert_eq!(b.charge(A, now), Go::On);
        }
        // ...but that owner's directories are no longer searched.
        assert_eq!(b.enter(A, 1), Enter::Skip(Hit::Entries));
        assert_eq!(b.enter(0, 1), Enter::Yes, "another owner is unaffected");
        assert_eq!(b.enter(U, 1), Enter::Yes, "and so is the uid");
        for _ in 0..5 {
            assert_eq!(b.charge(U, now), Go::On);
        }
        assert_eq!(b.charge(U, now), Go::Unproven(Hit::Entries));
    }

    #[test]
    fn the_total_bound_stops_without_blaming_the_uid_and_the_deadline_does() {
        let now = Instant::now();
        let mut b = Budget::new(WHO, limits());
        for owner in 0..20 {
            assert_eq!(b.charge(10_000 + owner, now), Go::On);
        }
        assert_eq!(b.charge(U, now), Go::Others(Hit::Examined));
        let mut unbounded = Budget::new(
            WHO,
            Limits {
                own_entries: None,
                ..limits()
            },
        );
        for _ in 0..20 {
            assert_eq!(unbounded.charge(U, now), Go::On);
        }
        assert_eq!(
            unbounded.charge(A, now),
            Go::Unproven(Hit::Examined),
            "with no bound of its own the uid may be the one who filled the dirs"
        );

        let mut timed = Budget::new(
            WHO,
            Limits {
                deadline: Some(now + Duration::from_secs(1)),
                ..limits()
            },
        );
        assert_eq!(timed.charge(A, now), Go::On);
        assert_eq!(
            timed.charge(A, now + Duration::from_secs(1)),
            Go::Unproven(Hit::Time)
        );
    }
}
