//! The one reader of `/proc`: which processes exist, their parent, state and ids. The executor
//! (kill by uid, a script's descendants, a subordinate range's holders) and the tests' view of
//! leftover processes all read it here, so a field is parsed one way.

use std::path::Path;

/// What `/proc/<pid>/status` says about one process (the fields the executor needs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `State:` is `Z` (a zombie: dead, waiting for its parent to reap it).
    pub zombie: bool,
    /// `PPid:` (0 when absent).
    pub ppid: i32,
    /// `Uid:`: real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// `Gid:`: real, effective, saved and filesystem gid.
    pub gids: Vec<u32>,
}

impl Status {
    /// Parse the text of a `/proc/<pid>/status` file (pure; missing fields stay empty).
    pub fn parse(text: &str) -> Self {
        let ids = |v: &str| {
            v.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        };
        let mut status = Status::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "State" => status.zombie = value.trim_start().starts_with('Z'),
                "PPid" => status.ppid = value.trim().parse().unwrap_or(0),
                "Uid" => status.uids = ids(value),
                "Gid" => status.gids = ids(value),
                _ => {}
            }
        }
        status
    }

    /// A live process (not a zombie) holding a uid for which `wanted` is true, in any of the
    /// real, effective, saved and filesystem fields.
    pub fn holds_uid(&self, wanted: impl Fn(u32) -> bool) -> bool {
        !self.zombie && self.uids.iter().any(|&u| wanted(u))
    }

    /// [`Status::holds_uid`] for a uid or a gid.
    pub fn holds_id(&self, wanted: impl Fn(u32) -> bool) -> bool {
        !self.zombie && self.uids.iter().chain(&self.gids).any(|&id| wanted(id))
    }
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its pid (in the PID namespace of this `/proc`).
    pub pid: i32,
    /// Its status.
    pub status: Status,
}

/// Every process whose status could be read, zombies included (a process that exits while
/// `/proc` is read is simply missing).
pub fn processes() -> Vec<Process> {
    processes_in(Path::new("/proc"))
}

fn processes_in(proc: &Path) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("status")).ok()?;
            Some(Process {
                pid,
                status: Status::parse(&text),
            })
        })
        .collect()
}

/// The command line of `pid`, its arguments joined by spaces (empty when it cannot be read:
/// the process is gone, or a kernel thread).
pub fn cmdline(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_of_a_status_file() {
        let s = Status::parse(
            "Name:\tcat\nState:\tR (running)\nTgid:\t7\nPPid:\t1348\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n",
        );
        assert_eq!(
            s,
            Status {
                zombie: false,
                ppid: 1348,
                uids: vec![1, 2, 3, 4],
                gids: vec![5, 6, 7, 8],
            }
        );
        assert!(Status::parse("State:\tZ (zombie)\n").zombie);
        assert_eq!(Status::parse(""), Status::default());
    }

    #[test]
    fn this_process_is_listed_with_its_parent() {
        let me = std::process::id() as i32;
        let mine = processes().into_iter().find(|p| p.pid == me).unwrap();
        assert_eq!(mine.status.ppid, nix::unistd::getppid().as_raw());
        assert!(!mine.status.zombie);
        assert!(!cmdline(me).is_empty());
    }
}
