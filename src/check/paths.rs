//! The executor's own paths (config file, state root, builds root, audit log directory) are
//! owned by it and not open to group/others.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// Config: private. State root: traversable (jobs reach their credentials dir), never listable
/// or writable. Builds root and audit dir: not writable by others.
pub(super) fn private_paths(cfg: &Config, config_path: &Path, out: &mut Vec<Finding>) {
    check_private_path(config_path, "config file", (0o077, 0o600), out);
    check_private_path(&cfg.state_root, "state_root", (0o066, 0o711), out);
    check_private_path(&cfg.builds_root, "builds_root", (0o066, 0o711), out);
    if let Some(dir) = cfg.audit.path.parent() {
        check_private_path(dir, "audit log directory", (0o022, 0o750), out);
    }
}

/// A path the executor trusts must be its own and must not grant `forbidden` mode bits.
fn check_private_path(
    path: &Path,
    what: &str,
    (forbidden, wanted): (u32, u32),
    out: &mut Vec<Finding>,
) {
    let Ok(meta) = std::fs::metadata(path) else {
        out.push(finding(
            Severity::Error,
            format!("{what} {} does not exist", path.display()),
            format!(
                "create it: install -d -m {wanted:04o} -o root {} (scripts/install.sh does)",
                path.display()
            ),
        ));
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        out.push(finding(
            Severity::Error,
            format!(
                "{what} {} is owned by uid {}, not by the executor (uid {euid})",
                path.display(),
                meta.uid()
            ),
            format!("chown {euid} {}", path.display()),
        ));
    }
    if mode & forbidden != 0 {
        out.push(finding(
            Severity::Error,
            format!(
                "{what} {} has mode {mode:o}: group/others must not have {:o}",
                path.display(),
                mode & forbidden
            ),
            format!("chmod {wanted:04o} {}", path.display()),
        ));
    }
}
