//! What an image stage's root is made of: the image's directories and the host's runtime the
//! executor's binaries run with (loader, library dirs, CA bundle). A leaf of its own, so
//! `crate::images`, which builds an [`ImageRoot`], does not depend on the sandbox that mounts it
//! (`image.rs`, which depends on `crate::images`).

use std::path::{Path, PathBuf};

/// What a stage in an image needs (from `images::root_for_run`).
#[derive(Debug, Clone)]
pub struct ImageRoot {
    /// The image's read-only base directory.
    pub lower: PathBuf,
    /// The job's layer dir (`upper`, `work`), root-owned.
    pub layer: PathBuf,
    /// The directory of the executor's binaries, bound at `images::EXEC_DIR`.
    pub exec_dir: PathBuf,
    /// The host's loader and library dirs the binaries run with (None: linked statically).
    pub runtime: Option<HostRuntime>,
    /// The host's CA bundle, trusted by the steps in an image that has none.
    pub ca_bundle: Option<PathBuf>,
}

/// The host's dynamic loader and the directories of the libraries the executor runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRuntime {
    /// The loader (e.g. `/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`).
    pub loader: PathBuf,
    /// Every directory a mapped library comes from, the loader's first.
    pub lib_dirs: Vec<PathBuf>,
}

/// The running executor's runtime, from its own `/proc/self/maps`: the mapped `ld-*.so*` is
/// the loader, and the directories of every mapped shared object are searched. None when the
/// executor is linked statically (then the binaries are bound as they are).
pub fn host_runtime() -> Option<HostRuntime> {
    parse_maps(&std::fs::read_to_string("/proc/self/maps").ok()?)
}

fn parse_maps(maps: &str) -> Option<HostRuntime> {
    let mut loader: Option<PathBuf> = None;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line
            .split_whitespace()
            .nth(5)
            .filter(|p| p.starts_with('/'))
        else {
            continue;
        };
        let path = Path::new(path);
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !(name.ends_with(".so") || name.contains(".so.")) {
            continue;
        }
        if name.starts_with("ld-") && loader.is_none() {
            loader = Some(path.to_path_buf());
        }
        if let Some(d) = path.parent().filter(|d| !dirs.iter().any(|x| x == d)) {
            dirs.push(d.to_path_buf());
        }
    }
    let loader = loader?;
    let first = loader.parent()?.to_path_buf();
    dirs.retain(|d| *d != first);
    dirs.insert(0, first);
    Some(HostRuntime {
        loader,
        lib_dirs: dirs,
    })
}

/// Where the usual system CA bundles are (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE).
pub(super) const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The host's system CA bundle, resolved on the host (no symlink is followed inside an image).
pub fn host_ca_bundle() -> Option<PathBuf> {
    CA_BUNDLES
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_and_library_dirs_come_from_the_maps() {
        let maps = "\
55d0a000-55d0b000 r--p 00000000 08:01 1 /opt/p3/bin/p3-executor
7f00-7f01 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f01-7f02 r--p 00000000 08:01 3 /opt/odd/libextra.so
7f02-7f03 r--p 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/libm.so.6
7f03-7f04 r--p 00000000 08:01 5 /usr/lib64/ld-linux-x86-64.so.2
7f04-7f05 rw-p 00000000 00:00 0 [heap]
7f05-7f06 r--p 00000000 08:01 6 /usr/lib/locale/C.utf8/LC_CTYPE
";
        let rt = parse_maps(maps).unwrap();
        assert_eq!(rt.loader, PathBuf::from("/usr/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(
            rt.lib_dirs,
            ["/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/opt/odd"]
                .map(PathBuf::from)
                .to_vec()
        );
        // A static executor maps no loader.
        assert_eq!(parse_maps(maps.lines().next().unwrap()), None);
    }
}
