//! The sandbox's mounts, made by its init (root, in the job's new mount namespace): each
//! [`MountOp`] of the plan (`plan.rs`), the one tmpfs behind the private tmp dirs, the mask
//! over hidden files, and a container job's own `/etc` files.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::plan::MountOp;

pub(super) fn mount_op(
    op: &MountOp,
    keep_fds: &[OwnedFd],
    exec_fd: Option<&OwnedFd>,
    tmpfs_size: &str,
) -> Result<(), String> {
    let none: Option<&str> = None;
    let plain = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match op {
        MountOp::PrivateRoot => mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .map_err(|e| fail("make private", Path::new("/"), e)),
        MountOp::PrivateTmp(target) => {
            // One tmpfs for all private dirs, so they share one size limit: mounted on the
            // first, then each dir (the first too, stacked over the store) is a sticky
            // directory of it bound into place.
            let store = match TMP_STORE.get() {
                Some(fd) => fd,
                None => {
                    mount(
                        Some("tmpfs"),
                        target,
                        Some("tmpfs"),
                        plain,
                        Some(format!("mode=0700,size={tmpfs_size}").as_str()),
                    )
                    .map_err(|e| fail("private tmpfs on", target, e))?;
                    let fd = nix::fcntl::open(
                        target,
                        nix::fcntl::OFlag::O_RDONLY
                            | nix::fcntl::OFlag::O_DIRECTORY
                            | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(|e| fail("open the private tmpfs", target, e))?;
                    let _ = PRIVATE_TMP.set(target.clone());
                    TMP_STORE.get_or_init(|| fd)
                }
            };
            let name = format!(
                "{}",
                TMP_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let dir_mode = nix::sys::stat::Mode::from_bits_truncate(0o1777);
            nix::sys::stat::mkdirat(store, name.as_str(), dir_mode)
                .map_err(|e| fail("create a private dir for", target, e))?;
            // mkdir applies the umask: set the mode explicitly.
            nix::sys::stat::fchmodat(
                store,
                name.as_str(),
                dir_mode,
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|e| fail("chmod the private dir for", target, e))?;
            let source = format!("/proc/self/fd/{}/{name}", store.as_raw_fd());
            mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
                .map_err(|e| fail("bind the private dir on", target, e))
        }
        MountOp::HideDir(target) => {
            make_dirs(target, COVER_DIR_MODE)?;
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                plain | MsFlags::MS_NOEXEC,
                Some("mode=0711,size=1m"),
            )
            .map_err(|e| fail("hide", target, e))?;
            let _ = MASK_DIR.set(target.clone());
            Ok(())
        }
        MountOp::HideFile(target) => mount(
            Some(mask_source(target)?.as_path()),
            target,
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(|e| fail("hide", target, e)),
        MountOp::Keep { target, index } => bind_fd(
            keep_fds[*index].as_raw_fd(),
            target,
            plain,
            ("bind the job's directory at", "remount nosuid"),
        ),
        MountOp::ExecDir(target) => {
            let fd = exec_fd.ok_or("sandbox: the executor's directory was not opened")?;
            bind_fd(
                fd.as_raw_fd(),
                target,
                plain | MsFlags::MS_RDONLY,
                ("bind the executor's directory at", "remount read-only"),
            )
        }
        MountOp::Mqueue => mount(
            Some("mqueue"),
            "/dev/mqueue",
            Some("mqueue"),
            plain | MsFlags::MS_NOEXEC,
            none,
        )
        .map_err(|e| fail("mount", Path::new("/dev/mqueue"), e)),
        // hidepid=2: the job sees only its own processes, not this init (a copy of the
        // supervisor, whose command line names the config and the runner's script).
        MountOp::Proc => mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            plain | MsFlags::MS_NOEXEC,
            Some("hidepid=2"),
        )
        .map_err(|e| fail("mount", Path::new("/proc"), e)),
    }
}

/// An empty file nobody but root may open, bound over hidden files: reading a hidden keytab
/// fails with EACCES instead of returning nothing. Made once per sandbox in a private tmpfs
/// (the first hidden dir's), so it is never the host's.
fn mask_source(target: &Path) -> Result<PathBuf, String> {
    static MASK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = MASK.get() {
        return Ok(p.clone());
    }
    let dir = MASK_DIR.get().or(PRIVATE_TMP.get()).ok_or_else(|| {
        format!(
            "sandbox: no private tmpfs to hide {} with",
            target.display()
        )
    })?;
    let path = dir.join(".p3-hidden");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| format!("sandbox: create {}: {e}", path.display()))?;
    Ok(MASK.get_or_init(|| path).clone())
}

/// The tmpfs behind every private dir (root-owned, 0700; see `MountOp::PrivateTmp`).
static TMP_STORE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
/// Private dirs made in the store so far (their names).
static TMP_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The private dirs' shared tmpfs is (nearly) full: at most 1% or 1 MiB left. Read by init
/// when the script failed, to say why.
pub(super) fn tmp_store_full() -> bool {
    let Some(fd) = TMP_STORE.get() else {
        return false;
    };
    let Ok(st) = nix::sys::statvfs::fstatvfs(fd) else {
        return false;
    };
    let size = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    size > 0 && free <= (size / 100).max(1 << 20)
}

/// The first root-owned tmpfs the sandbox mounted (see [`mask_source`]).
static MASK_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// The first private tmp dir, where the mask goes when nothing is hidden (sticky: the job
/// cannot remove a root-owned file there).
static PRIVATE_TMP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A mount step's error: what failed, where, and the kernel's reason.
fn fail(what: &str, target: &Path, e: nix::Error) -> String {
    format!("sandbox: {what} {}: {e}", target.display())
}

/// Bind the directory open as `fd` at `target` (a mount point made in the cover), then
/// remount it with `flags` (a bind mount takes its flags only from a remount); `what` names
/// the two steps in errors.
fn bind_fd(
    fd: std::os::fd::RawFd,
    target: &Path,
    flags: MsFlags,
    what: (&str, &str),
) -> Result<(), String> {
    let none: Option<&str> = None;
    make_dirs(target, COVER_DIR_MODE)?;
    let source = format!("/proc/self/fd/{fd}");
    mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
        .map_err(|e| fail(what.0, target, e))?;
    mount(
        none,
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        none,
    )
    .map_err(|e| fail(what.1, target, e))
}

/// Mount points made in a cover: root's, traversable, not listable.
const COVER_DIR_MODE: u32 = 0o711;

/// Create `target` and its missing parents with `mode`, as a mount point inside something the
/// sandbox just mounted (root-owned, nothing of the job's yet: a cover, the image's layer).
pub(super) fn make_dirs(target: &Path, mode: u32) -> Result<(), String> {
    if target.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(target)
        .map_err(|e| format!("sandbox: create mount point {}: {e}", target.display()))
}

/// Bind the container job's own `/etc/passwd` (and group, subuid, subgid) read-only over the
/// host's, in the job's mount namespace. The files are written to a root-owned tmpfs the
/// sandbox just mounted (like the mask of hidden files; a memfd cannot be a bind source).
pub(super) fn bind_userns_files(userns: &crate::walls::userns::JobUserns) -> Result<(), String> {
    let none: Option<&str> = None;
    let dir = MASK_DIR
        .get()
        .or(PRIVATE_TMP.get())
        .ok_or("sandbox: no private tmpfs for the job's /etc files")?;
    for (i, (target, content)) in userns.files.iter().enumerate() {
        let source = dir.join(format!(".p3-etc-{i}"));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&source)
            .and_then(|mut f| std::io::Write::write_all(&mut f, content))
            .map_err(|e| format!("sandbox: write {}: {e}", source.display()))?;
        mount(Some(source.as_path()), target, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("sandbox: bind the job's {}: {e}", target.display()))?;
        mount(
            none,
            target,
            none,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            none,
        )
        .map_err(|e| {
            format!(
                "sandbox: remount the job's {} read-only: {e}",
                target.display()
            )
        })?;
    }
    Ok(())
}

/// The private tmpfs's fd, once the plan has mounted it (an image's root is made in it).
pub(super) fn tmp_store() -> Option<&'static OwnedFd> {
    TMP_STORE.get()
}
