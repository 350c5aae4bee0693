//! `scripts/install.sh --binary`: a release tarball missing one binary stops the install before
//! it changes anything, naming the file.

use std::path::Path;
use std::process::Command;

use crate::common::{is_root, text};

/// Lay out an unpacked tarball in `dir`: the three binaries (copies of the built ones) and
/// completions, without `leave_out`.
fn unpacked(dir: &Path, leave_out: &str) {
    let built = Path::new(env!("CARGO_BIN_EXE_p3-executor"))
        .parent()
        .unwrap();
    for bin in ["p3-executor", "p3-executor-steps", "p3-executor-aws"] {
        if bin != leave_out {
            std::fs::copy(built.join(bin), dir.join(bin)).unwrap();
        }
    }
}

#[test]
fn a_tarball_missing_a_binary_stops_install_sh_before_it_changes_anything() {
    if !is_root() {
        eprintln!("skipped: install.sh runs as root");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for missing in ["p3-executor-aws", "p3-executor-steps"] {
        let dist = tempfile::tempdir().unwrap();
        unpacked(dist.path(), missing);
        let prefix = tempfile::tempdir().unwrap();
        let tmpfiles = Path::new("/etc/tmpfiles.d/p3-executor.conf");
        let tmpfiles_before = std::fs::read(tmpfiles).ok();
        let out = Command::new("bash")
            .arg(root.join("scripts/install.sh"))
            .arg("--binary")
            .arg(dist.path().join("p3-executor"))
            .arg("--prefix")
            .arg(prefix.path())
            .arg("--no-deps")
            .output()
            .unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("nothing was changed")
                && stderr.contains(&format!("{}/{missing}", dist.path().display())),
            "{all}"
        );
        assert_eq!(
            std::fs::read_dir(prefix.path()).unwrap().count(),
            0,
            "nothing installed under the prefix: {all}"
        );
        assert_eq!(
            std::fs::read(tmpfiles).ok(),
            tmpfiles_before,
            "no system file changed"
        );
    }
}
