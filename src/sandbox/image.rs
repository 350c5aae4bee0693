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
//!    [`crate::images::EXEC_DIR`] ([`exec_tree`]), then detaches the old root and mounts a
//!    fresh `/proc`.
//!
//! The executor's binaries are linked against the host's glibc, so the image's libc (musl,
//! an older glibc, or none at all) cannot run them. Rather than a second, statically linked
//! build of both binaries (another toolchain target and a second build of the AWS SDK for
//! every release), the image gets the host's own loader and library directories, read-only,
//! under `/.p3-executor`, and `/.p3-executor/bin/p3-executor` is a two-line `sh` wrapper that
//! runs the real binary through that loader with `--library-path` (an option, not
//! `LD_LIBRARY_PATH`, so nothing the steps start inherits it). The loader sits in `bin/` next
//! to the wrappers: a program run through a loader has the loader as its `/proc/self/exe`, so
//! `p3-executor`'s sibling lookup (`siblings.rs`) finds the steps' wrapper beside it. The image
//! needs only `/bin/sh`, which its script needs anyway.
//!
//! Everything is in the job's mount namespace: nothing is mounted on the host, and the stage's
//! end (init's exit) takes it all; only the layer dir remains, for the job's next stage.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::image_root::{CA_BUNDLES, ImageRoot};

/// The binaries a job may run inside an image (the AWS side stays on the host).
const BINARIES: [&str; 2] = ["p3-executor", crate::siblings::STEPS];

/// Where the host's CA bundle appears in an image (under `/.p3-executor`).
const HOST_CA: &str = "certs/ca-certificates.crt";

/// The wrapper at `/.p3-executor/bin/<name>`: the real binary through the host's loader. With
/// `ca`, in an image with no system CA bundle of its own (a minimal or libc-less one) and a job
/// that names none (`SSL_CERT_FILE`, `SSL_CERT_DIR`), the steps trust the host's bundle.
fn wrapper(top: &Path, loader_name: &str, lib_dirs: usize, name: &str, ca: bool) -> String {
    let libs: Vec<String> = (0..lib_dirs)
        .map(|i| top.join("lib").join(i.to_string()).display().to_string())
        .collect();
    let trust = if ca {
        let missing: Vec<String> = CA_BUNDLES.iter().map(|b| format!("[ ! -s {b} ]")).collect();
        format!(
            "if [ -z \"${{SSL_CERT_FILE-}}${{SSL_CERT_DIR-}}\" ] && {}; then\n  \
             SSL_CERT_FILE={}; export SSL_CERT_FILE\nfi\n",
            missing.join(" && "),
            top.join(HOST_CA).display()
        )
    } else {
        String::new()
    };
    format!(
        "#!/bin/sh\n# {name}, run with the host's loader and libraries (p3-executor; any libc)\n\
         {trust}exec {bin}/{loader_name} --inhibit-cache --library-path {libs} {libexec}/{name} \
         \"$@\"\n",
        bin = top.join("bin").display(),
        libs = libs.join(":"),
        libexec = top.join("libexec").display(),
    )
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
    // SAFETY: open_tree(2) on a descriptor we hold, with an empty path. Raw syscalls here:
    // neither nix nor libc wraps open_tree, mount_setattr or move_mount.
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

/// Directories made in the image's layer: as an image's own are.
fn mkdirs(path: &Path) -> Result<(), String> {
    super::mounts::make_dirs(path, 0o755)
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
                // Ignored: what cannot be removed makes the create below fail with its reason.
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

/// The executor's binaries under `/.p3-executor` (a small read-only tmpfs, so the image's
/// layer holds only its mount point): `bin/` on the job's PATH with the wrappers and the
/// loader, `libexec/` the real binaries, `lib/<n>` the host's library dirs; all read-only
/// binds from the host's root (`old`). A statically linked executor: its binaries in `bin/`.
fn exec_tree(root: &ImageRoot, old: &dyn Fn(&Path) -> PathBuf) -> Result<(), String> {
    let bin = Path::new(crate::images::EXEC_DIR);
    let top = bin.parent().unwrap_or(Path::new("/"));
    mkdirs(top)?;
    mount(
        Some("tmpfs"),
        top,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| format!("sandbox: mount {} in the image: {e}", top.display()))?;
    mkdirs(bin)?;
    let present: Vec<&str> = BINARIES
        .into_iter()
        .filter(|n| old(&root.exec_dir.join(n)).is_file())
        .collect();
    match &root.runtime {
        None => {
            for name in &present {
                bind(
                    &old(&root.exec_dir.join(name)),
                    &bin.join(name),
                    MsFlags::MS_RDONLY,
                    true,
                )?;
            }
        }
        Some(rt) => {
            let loader_name = rt
                .loader
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| {
                    n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                })
                .ok_or_else(|| {
                    format!("sandbox: unexpected loader name {}", rt.loader.display())
                })?;
            bind(
                &old(&rt.loader),
                &bin.join(loader_name),
                MsFlags::MS_RDONLY,
                true,
            )?;
            if let Some(ca) = &root.ca_bundle {
                bind(&old(ca), &top.join(HOST_CA), MsFlags::MS_RDONLY, true)?;
            }
            for (i, dir) in rt.lib_dirs.iter().enumerate() {
                bind(
                    &old(dir),
                    &top.join("lib").join(i.to_string()),
                    MsFlags::MS_RDONLY,
                    false,
                )?;
            }
            for name in &present {
                bind(
                    &old(&root.exec_dir.join(name)),
                    &top.join("libexec").join(name),
                    MsFlags::MS_RDONLY,
                    true,
                )?;
                let path = bin.join(name);
                let text = wrapper(
                    top,
                    loader_name,
                    rt.lib_dirs.len(),
                    name,
                    root.ca_bundle.is_some(),
                );
                std::fs::write(&path, text)
                    .and_then(|()| {
                        std::fs::set_permissions(
                            &path,
                            std::os::unix::fs::PermissionsExt::from_mode(0o555),
                        )
                    })
                    .map_err(|e| format!("sandbox: write {}: {e}", path.display()))?;
            }
        }
    }
    let none: Option<&str> = None;
    mount(
        none,
        top,
        none,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        none,
    )
    .map_err(|e| format!("sandbox: remount {} read-only: {e}", top.display()))
}

/// The marker a `volatile` overlay leaves in its workdir; the next mount refuses to start
/// while it is there (the kernel cannot know the upper survived intact).
const VOLATILE_MARKER: &str = "work/work/incompat/volatile";

/// Mount the job's layer (`layer`/`upper`, `layer`/`work`) over `lower` at `target`.
///
/// `volatile`: the overlay skips every sync of its upper, above all the `syncfs` of the whole
/// upper file system when the stage's mount namespace goes away, which on a host whose disk
/// other jobs keep busy cost each stage 20 to 200 ms of writeback it did not cause. The layer
/// is the job's scratch, removed at cleanup, so nothing needs it durable. The marker a volatile
/// mount leaves is removed before the next stage mounts: the kernel asks for that only where
/// the system may have crashed since, and a crashed host's jobs never run another stage (gc
/// removes their layers). Kernels before 5.10 refuse the option: the layer is mounted plain.
fn overlay(lower: &Path, layer: &Path, target: &Path) -> Result<(), String> {
    // The marker is a directory holding one empty file, `dirty`.
    let marker = layer.join(VOLATILE_MARKER);
    for removed in [
        std::fs::remove_file(marker.join("dirty")),
        std::fs::remove_dir(&marker),
    ] {
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("sandbox: remove {}: {e}", marker.display())),
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={}/upper,workdir={}/work",
        lower.display(),
        layer.display(),
        layer.display()
    );
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let volatile = format!("{opts},volatile");
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(volatile.as_str()),
    )
    .or_else(|e| match e {
        nix::errno::Errno::EINVAL => mount(
            Some("overlay"),
            target,
            Some("overlay"),
            flags,
            Some(opts.as_str()),
        ),
        other => Err(other),
    })
    .map_err(|e| format!("sandbox: mount the job's layer over its image: {e}"))
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
    overlay(&lower, Path::new(&layer), &newroot)?;
    // The old root goes to /proc of the image, which a fresh proc covers afterwards.
    let put_old = newroot.join("proc");
    match std::fs::symlink_metadata(&put_old) {
        Ok(m) if m.is_dir() => {}
        _ => {
            // Ignored: what cannot be removed makes mkdirs below fail with its reason.
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
    exec_tree(root, &old)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_runs_the_binary_through_the_loader_with_every_dir() {
        let w = wrapper(
            Path::new("/.p3-executor"),
            "ld-linux-x86-64.so.2",
            2,
            "p3-executor-steps",
            false,
        );
        assert!(w.starts_with("#!/bin/sh\n"), "{w}");
        assert!(
            w.ends_with(
                "exec /.p3-executor/bin/ld-linux-x86-64.so.2 --inhibit-cache --library-path \
                 /.p3-executor/lib/0:/.p3-executor/lib/1 /.p3-executor/libexec/p3-executor-steps \
                 \"$@\"\n"
            ),
            "{w}"
        );
        // With the host's CA bundle: used only when the job and the image name none.
        let w = wrapper(Path::new("/.p3-executor"), "ld.so", 1, "p3-executor", true);
        assert!(
            w.contains(
                "if [ -z \"${SSL_CERT_FILE-}${SSL_CERT_DIR-}\" ] && \
                 [ ! -s /etc/ssl/certs/ca-certificates.crt ] && "
            ),
            "{w}"
        );
        assert!(
            w.contains("  SSL_CERT_FILE=/.p3-executor/certs/ca-certificates.crt; export"),
            "{w}"
        );
        // The text is valid sh.
        let path = std::env::temp_dir().join(format!("p3-wrapper-{}", std::process::id()));
        std::fs::write(&path, &w).unwrap();
        let ok = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(ok.success(), "{w}");
    }
}
