//! Reading and writing cgroup interface files: one value per write (the kernel takes one
//! write per value), errors that name the file.

use std::io::Write;
use std::path::Path;

use super::error::CgroupError;

/// Write `value` to the interface file `name` in `dir`. Created when missing, so the same code
/// drives a directory tree that mimics cgroupfs in the tests (on cgroupfs the file exists).
pub(crate) fn write(dir: &Path, name: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Io {
            what: format!("write {value:?} to"),
            path,
            source,
        })
}

/// Read the interface file `name` in `dir`.
pub(crate) fn read(dir: &Path, name: &str) -> Result<String, CgroupError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Io {
        what: "read".into(),
        path,
        source,
    })
}

/// The value of `key` in a flat keyed file (`oom_kill 3`, `max 12`, `usage_usec 1500`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `key` of the keyed file `name` in `dir`; None when the file or the key is missing.
pub(crate) fn read_keyed(dir: &Path, name: &str, key: &str) -> Option<u64> {
    keyed(&read(dir, name).ok()?, key)
}

/// A single-number file; None when missing or `max`.
pub(crate) fn read_u64(dir: &Path, name: &str) -> Option<u64> {
    read(dir, name).ok()?.trim().parse().ok()
}

/// The processes (thread-group ids) in a cgroup.
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    read(dir, "cgroup.procs")
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Make `dir`; true when this call made it (false: it was there).
pub(crate) fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Io {
            what: "create".into(),
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Remove a cgroup directory; a few retries, because the last killed process may still be
/// leaving it. A missing directory is fine.
pub(crate) fn rmdir(dir: &Path) -> Result<(), CgroupError> {
    let mut last = None;
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(if attempt < 10 {
            2
        } else {
            20
        }));
    }
    Err(CgroupError::Io {
        what: "remove".into(),
        path: dir.to_path_buf(),
        source: last.expect("set in the loop"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        let events = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(1));
        assert_eq!(keyed(events, "max"), Some(4));
        assert_eq!(keyed(events, "absent"), None);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(keyed(v1, "oom_kill"), Some(7));
    }
}
