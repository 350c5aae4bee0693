//! What a job uid left on the host, and removing it, so the uid is clean before another job
//! leases it: processes (any uid field), SysV IPC objects, and files in world-writable places.
//!
//! Files are walked and removed through directory fds (`openat`/`unlinkat` without following
//! symlinks), so a link planted anywhere in those trees is removed, never followed.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, fstatat};
use nix::unistd::UnlinkatFlags;

/// Upper bound on directory entries examined per scrub: a host with more in its world-writable
/// places cannot be proven clean cheaply, and the uid is quarantined instead.
pub const MAX_ENTRIES: usize = 200_000;

/// Deepest directory level walked below a scrub dir.
const MAX_DEPTH: usize = 32;

/// What a uid still holds after a scrub; empty means clean.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Residue {
    /// Live processes holding the uid.
    pub processes: usize,
    /// SysV IPC objects (shm, sem, msg) owned or created by the uid.
    pub ipc: usize,
    /// Files and directories owned by the uid that could not be removed.
    pub files: Vec<PathBuf>,
    /// The walk stopped at [`MAX_ENTRIES`] or [`MAX_DEPTH`]: cleanliness is unproven.
    pub incomplete: bool,
}

impl Residue {
    /// Nothing left.
    pub fn is_clean(&self) -> bool {
        self.processes == 0 && self.ipc == 0 && self.files.is_empty() && !self.incomplete
    }

    /// One line for `check`, the lease file and the logs.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.processes > 0 {
            parts.push(format!("{} process(es)", self.processes));
        }
        if self.ipc > 0 {
            parts.push(format!("{} SysV IPC object(s)", self.ipc));
        }
        if let Some(first) = self.files.first() {
            parts.push(format!(
                "{} file(s) such as {}",
                self.files.len(),
                crate::terminal::escape(&first.display().to_string())
            ));
        }
        if self.incomplete {
            parts.push(format!(
                "the search of the world-writable places stopped at {MAX_ENTRIES} entries"
            ));
        }
        parts.join(", ")
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

fn remove_ipc(kind: usize, id: i32) {
    // SAFETY: IPC_RMID on an id; a stale id just fails.
    unsafe {
        match kind {
            0 => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            1 => libc::semctl(id, 0, libc::IPC_RMID),
            _ => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        };
    }
}

struct Walk {
    uid: u32,
    seen: usize,
    incomplete: bool,
    left: Vec<PathBuf>,
}

fn open_dir_at(parent: &OwnedFd, name: &CStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

impl Walk {
    /// Remove everything owned by `uid` in the directory `dir` (at `path`), recursively.
    fn scrub_dir(&mut self, dir: &OwnedFd, path: &Path, depth: usize) {
        let Ok(dup) = nix::unistd::dup(dir) else {
            return;
        };
        let Ok(mut entries) = Dir::from_fd(dup) else {
            return;
        };
        let names: Vec<(CString, Option<Type>)> = entries
            .iter()
            .flatten()
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .map(|e| (e.file_name().to_owned(), e.file_type()))
            .collect();
        for (name, _) in names {
            self.seen += 1;
            if self.seen > MAX_ENTRIES {
                self.incomplete = true;
                return;
            }
            let Ok(st) = fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let child = path.join(std::ffi::OsStr::from_bytes_ext(name.to_bytes()));
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let owned = st.st_uid == self.uid;
            if is_dir {
                if depth >= MAX_DEPTH {
                    self.incomplete = true;
                    continue;
                }
                let Ok(sub) = open_dir_at(dir, &name) else {
                    if owned {
                        self.left.push(child);
                    }
                    continue;
                };
                self.scrub_dir(&sub, &child, depth + 1);
                if owned
                    && nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir)
                        .is_err()
                {
                    self.left.push(child);
                }
            } else if owned
                && nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir).is_err()
            {
                self.left.push(child);
            }
        }
    }
}

/// Small extension so a directory entry's bytes become a path component.
trait FromBytesExt {
    fn from_bytes_ext(b: &[u8]) -> &Self;
}

impl FromBytesExt for std::ffi::OsStr {
    fn from_bytes_ext(b: &[u8]) -> &Self {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Remove and delete everything `uid` left (SysV IPC objects, files in `dirs`), then report
/// what is still there, processes included. The caller has killed the uid's processes first
/// (cleanup does, before it revokes the job's credentials).
pub fn scrub(uid: u32, dirs: &[PathBuf]) -> Residue {
    for (kind, id) in ipc_objects(uid) {
        remove_ipc(kind, id);
    }
    let mut walk = Walk {
        uid,
        seen: 0,
        incomplete: false,
        left: Vec::new(),
    };
    for dir in dirs {
        let Ok(fd) = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue; // absent on this host
        };
        walk.scrub_dir(&fd, dir, 0);
        let _ = fd.as_raw_fd();
    }
    Residue {
        processes: crate::process::pids_of_uid(uid).len(),
        ipc: ipc_objects(uid).len(),
        files: walk.left,
        incomplete: walk.incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = scrub(uid, &[d.to_path_buf()]);
        assert!(r.is_clean(), "{r:?}");
        assert!(!d.join("theirs").exists() && !d.join("ccache-copy").exists());
        assert!(std::fs::symlink_metadata(d.join("link")).is_err());
        assert!(d.join("mine").exists(), "another owner's file was removed");
        assert!(victim.path().join("keep").exists(), "followed a symlink");
    }
}
