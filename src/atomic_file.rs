//! The one way the executor writes a file others will read: complete or not at all. Contents go
//! to a fresh temp file (O_EXCL, 0600, in the target's directory) that gets its final mode and
//! owner before it is renamed over the target, so no reader ever sees a half-written file, a
//! file with the wrong owner, or one a job could have opened in between.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How a file is written.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Final mode.
    pub mode: u32,
    /// Final owner (uid, gid); None keeps root's.
    pub owner: Option<(u32, u32)>,
    /// fsync before the rename: for what must survive a host crash (credentials, caches).
    /// Per-stage state skips it (a host crash ends the job anyway).
    pub durable: bool,
}

impl Options {
    /// Root-only (0600), not fsynced.
    pub const PRIVATE: Options = Options {
        mode: 0o600,
        owner: None,
        durable: false,
    };
}

/// Give `dir/name` a root-only (0600) file holding `contents`, unless `name` exists (then
/// `false`). The contents go to an unnamed `O_TMPFILE` inode that gets its only name by
/// `linkat`, so a process killed at any moment leaves neither a half-written file nor a temp
/// file, and of two racing creators exactly one wins (the lease files of the uid and
/// subordinate-range pools).
pub fn create_new(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<bool> {
    use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, open};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    let fd = open(
        dir,
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)?;
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    match nix::unistd::linkat(
        AT_FDCWD,
        source.as_str(),
        AT_FDCWD,
        &dir.join(name),
        AtFlags::AT_SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(true),
        Err(nix::Error::EEXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A complete temp file holding `contents` in `dir` (prefix `.p3-`), not yet in place.
pub fn temp_with(
    dir: &Path,
    contents: &[u8],
    opts: Options,
) -> std::io::Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new().prefix(".p3-").tempfile_in(dir)?;
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(opts.mode))?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    (&*file).write_all(contents)?;
    if opts.durable {
        file.sync_all()?;
    }
    Ok(tmp)
}

/// Write `contents` to `path` atomically with `opts`. `path`'s directory must be one only root
/// can write (a rename there cannot be redirected by a job).
pub fn write(path: &Path, contents: &[u8], opts: Options) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    temp_with(dir, contents, opts)?
        .persist(path)
        .map(drop)
        .map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_whole_with_the_final_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state.json");
        write(&f, b"first", Options::PRIVATE).unwrap();
        write(
            &f,
            b"second",
            Options {
                mode: 0o644,
                owner: None,
                durable: true,
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
