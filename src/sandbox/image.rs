//! An `image:` job's root: the image's base directory, idmapped into the job's user namespace,
//! under an overlay whose upper is the job's own layer, made by the sandbox's init (root in
//! the host's user namespace, in the job's mount namespace) and pivoted into before the
//! shell goes on. See `images/mod.rs` for why this design.
//!
//! Order, in init, once the shell has unshared its user namespace and init has mapped it:
//! 1. the base directory (opened before the sandbox's covers hid the store) is cloned as a
//!    detached mount and idmapped with the shell's user namespace: image uid 0 appears as the
//!    job's uid, image uid N as the range's N-1th id, so the job (root inside) owns the image;
//! 2. an overlay of that lower and the job's `upper`/`work` is mounted in the private tmpfs;
//! 3. init pivots into it with the old root at `/proc`, binds from there (so an image's
//!    symlinks resolve inside the image, never on the host) `/dev`, `/sys` (read-only), the
//!    private tmp dirs, the job's root and credentials dir at their paths, the host's
//!    `/etc/resolv.conf` and `/etc/hosts`, and the executor's binaries at
//!    [`crate::images::EXEC_DIR`], then detaches the old root and mounts a fresh `/proc`.
//!
//! Everything is in the job's mount namespace: nothing is mounted on the host, and the stage's
//! end (init's exit) takes it all; only the layer dir remains, for the job's next stage.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// What a stage in an image needs (from `images::root_for_run`).
#[derive(Debug, Clone)]
pub struct ImageRoot {
    /// The image's read-only base directory.
    pub lower: PathBuf,
    /// The job's layer dir (`upper`, `work`), root-owned.
    pub layer: PathBuf,
    /// The directory of the executor's binaries, bound at `images::EXEC_DIR`.
    pub exec_dir: PathBuf,
}

/// The directories, opened in the job's mount namespace before the covers.
pub(crate) struct ImageFds {
    lower: OwnedFd,
    layer: OwnedFd,
}

fn open_dir(path: &Path) -> Result<OwnedFd, String> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("sandbox: open the image's {}: {e}", path.display()))
}

impl ImageRoot {
    pub(crate) fn open(&self) -> Result<ImageFds, String> {
        Ok(ImageFds {
            lower: open_dir(&self.lower)?,
            layer: open_dir(&self.layer)?,
        })
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn os_err(what: &str) -> String {
    format!("sandbox: {what}: {}", std::io::Error::last_os_error())
}

/// Clone `dir` as a detached mount, idmapped with `userns` and read-only; attach at `target`.
fn idmapped(dir: RawFd, userns: RawFd, target: &Path) -> Result<(), String> {
    let empty = c"";
    // SAFETY: open_tree(2) on a descriptor we hold, with an empty path.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir,
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(os_err("clone the image's base (open_tree)"));
    }
    // SAFETY: the descriptor open_tree just returned.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    // SAFETY: mount_setattr(2) with a properly sized struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(os_err(
            "idmap the image's base into the job's user namespace (mount_setattr; the store's \
             file system must support idmapped mounts: ext4, xfs, btrfs, tmpfs)",
        ));
    }
    let target = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: move_mount(2) of the detached tree to a path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(os_err("attach the image's base (move_mount)"));
    }
    Ok(())
}

fn mkdirs(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("sandbox: create {} in the image: {e}", path.display()))
}

/// Bind `source` (a path under the old root) at `target` inside the image.
fn bind(source: &Path, target: &Path, flags: MsFlags, file: bool) -> Result<(), String> {
    let none: Option<&str> = None;
    if file {
        // A file target: the host's, over whatever the image has there (a symlink in the
        // image is replaced in the job's layer, never followed).
        if let Some(parent) = target.parent() {
            mkdirs(parent)?;
        }
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                let _ = std::fs::remove_file(target);
                std::fs::write(target, b"")
                    .map_err(|e| format!("sandbox: create {}: {e}", target.display()))?;
            }
            Err(_) => std::fs::write(target, b"")
                .map_err(|e| format!("sandbox: create {}: {e}", target.display()))?,
        }
    } else {
        mkdirs(target)?;
    }
    mount(Some(source), target, none, MsFlags::MS_BIND | flags, none).map_err(|e| {
        format!(
            "sandbox: bind {} at {} in the image: {e}",
            source.display(),
            target.display()
        )
    })?;
    let ro = flags.contains(MsFlags::MS_RDONLY);
    if ro || flags.contains(MsFlags::MS_NOSUID) {
        mount(
            none,
            target,
            none,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | if ro {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                },
            none,
        )
        .map_err(|e| format!("sandbox: remount {} in the image: {e}", target.display()))?;
    }
    Ok(())
}

/// Steps 1-3 of the module docs. `store` is the private tmpfs (root-only dir), `shell` the
/// shell's pid (its user namespace), `tmp_dirs` and `keep` the paths bound back in.
pub(crate) fn enter(
    root: &ImageRoot,
    fds: &ImageFds,
    store: RawFd,
    shell: i32,
    owner: (u32, u32),
    tmp_dirs: &[PathBuf],
    keep: &[PathBuf],
) -> Result<(), String> {
    // Mount points made in the image must be traversable by the job whatever the runner's
    // umask; the job's own umask is restored after.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let entered = enter_inner(root, fds, store, shell, owner, tmp_dirs, keep);
    nix::sys::stat::umask(umask);
    entered
}

fn enter_inner(
    root: &ImageRoot,
    fds: &ImageFds,
    store: RawFd,
    shell: i32,
    owner: (u32, u32),
    tmp_dirs: &[PathBuf],
    keep: &[PathBuf],
) -> Result<(), String> {
    let none: Option<&str> = None;
    let base = PathBuf::from(format!("/proc/self/fd/{store}"));
    let (lower, newroot) = (base.join(".p3-lower"), base.join(".p3-root"));
    for d in [&lower, &newroot] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(|e| format!("sandbox: create {}: {e}", d.display()))?;
    }
    let userns = nix::fcntl::open(
        format!("/proc/{shell}/ns/user").as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("sandbox: open the job's user namespace: {e}"))?;
    idmapped(fds.lower.as_raw_fd(), userns.as_raw_fd(), &lower)?;
    let layer = format!("/proc/self/fd/{}", fds.layer.as_raw_fd());
    // The upper's own attributes are those of the image's `/`: the job's (inside 0), 0755.
    let upper = PathBuf::from(format!("{layer}/upper"));
    std::os::unix::fs::lchown(&upper, Some(owner.0), Some(owner.1))
        .and_then(|()| {
            std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        })
        .map_err(|e| format!("sandbox: prepare the job's layer: {e}"))?;
    let opts = format!(
        "lowerdir={},upperdir={layer}/upper,workdir={layer}/work",
        lower.display()
    );
    mount(
        Some("overlay"),
        &newroot,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("sandbox: mount the job's layer over its image: {e}"))?;
    // The old root goes to /proc of the image, which a fresh proc covers afterwards.
    let put_old = newroot.join("proc");
    match std::fs::symlink_metadata(&put_old) {
        Ok(m) if m.is_dir() => {}
        _ => {
            let _ = std::fs::remove_file(&put_old);
            mkdirs(&put_old)?;
        }
    }
    nix::unistd::chdir(&newroot).map_err(|e| format!("sandbox: enter the image: {e}"))?;
    nix::unistd::pivot_root(".", "proc").map_err(|e| format!("sandbox: pivot_root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("sandbox: chdir /: {e}"))?;
    let old = |p: &Path| Path::new("/proc").join(p.strip_prefix("/").unwrap_or(p));
    let plain = MsFlags::MS_NOSUID;
    bind(
        &old(Path::new("/dev")),
        Path::new("/dev"),
        MsFlags::MS_REC,
        false,
    )?;
    bind(
        &old(Path::new("/sys")),
        Path::new("/sys"),
        MsFlags::MS_REC | MsFlags::MS_RDONLY,
        false,
    )?;
    for d in tmp_dirs.iter().filter(|d| !d.starts_with("/dev")) {
        bind(&old(d), d, plain, false)?;
    }
    for d in keep {
        bind(&old(d), d, plain, false)?;
    }
    bind(
        &old(&root.exec_dir),
        Path::new(crate::images::EXEC_DIR),
        MsFlags::MS_RDONLY,
        false,
    )?;
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if old(Path::new(f)).exists() {
            bind(&old(Path::new(f)), Path::new(f), MsFlags::MS_RDONLY, true)?;
        }
    }
    umount2("/proc", MntFlags::MNT_DETACH)
        .map_err(|e| format!("sandbox: detach the host's root: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("hidepid=2"),
    )
    .map_err(|e| format!("sandbox: mount /proc in the image: {e}"))?;
    let _ = none;
    Ok(())
}
