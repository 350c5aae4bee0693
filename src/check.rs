//! `check`: validate a config and the host it runs on; print every problem with its fix.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The executor will not work safely: `check` exits 1.
    Error,
    /// Works, but weaker than it should be.
    Warning,
    /// A fact about the host worth showing (what works), never a problem.
    Info,
}

/// One problem and how to fix it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

fn finding(severity: Severity, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        severity,
        problem: problem.into(),
        fix: fix.into(),
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

/// Every finding for this config on this host.
pub fn check(cfg: &Config, config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    // Config: private. State root: traversable (jobs reach their credentials dir), never
    // listable or writable. Builds root and audit dir: not writable by others.
    check_private_path(config_path, "config file", (0o077, 0o600), &mut out);
    check_private_path(&cfg.state_root, "state_root", (0o066, 0o711), &mut out);
    check_private_path(&cfg.builds_root, "builds_root", (0o066, 0o711), &mut out);
    if let Some(dir) = cfg.audit.path.parent() {
        check_private_path(dir, "audit log directory", (0o022, 0o750), &mut out);
    }
    // `p3-executor <step>` runs the steps binary installed next to this one.
    if let Ok(exe) = std::env::current_exe() {
        let steps = exe.with_file_name("p3-executor-steps");
        if !steps.is_file() {
            out.push(finding(
                Severity::Warning,
                format!(
                    "{} is missing: jobs cannot run the built-in steps (s3, image, p3, release)",
                    steps.display()
                ),
                "install it next to p3-executor (scripts/install.sh does)",
            ));
        }
    }
    if which::which(&cfg.shell).is_err() {
        out.push(finding(
            Severity::Error,
            format!("shell {:?} not found", cfg.shell),
            "install it (apt-get install bash) or set shell to an absolute path",
        ));
    }
    // The runner's generated scripts call git (get_sources) and gitlab-runner (caches,
    // artifacts) from the job's PATH.
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    for (tool, severity, why) in [
        ("git", Severity::Error, "get_sources clones with it"),
        (
            "gitlab-runner",
            Severity::Warning,
            "cache and artifact stages call it",
        ),
    ] {
        if which::which_in(tool, Some(&cfg.job_path), &cwd).is_err() {
            out.push(finding(
                severity,
                format!("{tool} is not on job_path ({why})"),
                format!("install {tool} or add its directory to job_path"),
            ));
        }
    }
    if root {
        match nix::unistd::User::from_name(&cfg.job_user) {
            Ok(Some(u)) if u.uid.is_root() => out.push(finding(
                Severity::Error,
                format!("job_user {:?} is root", cfg.job_user),
                "set job_user to an unprivileged account",
            )),
            Ok(Some(_)) => {}
            _ => out.push(finding(
                Severity::Error,
                format!("job_user {:?} does not exist", cfg.job_user),
                format!(
                    "useradd --system --no-create-home --shell /usr/sbin/nologin {}",
                    cfg.job_user
                ),
            )),
        }
        sandbox_findings(cfg, &mut out);
        if cfg.job_uid_range.is_none() {
            out.push(finding(
                Severity::Warning,
                "concurrent jobs share job_user's uid and could read each other's credentials",
                "set job_uid_range = [200000, 265535] (uids not used by any account) so each job gets its own uid",
            ));
        }
    } else {
        out.push(finding(
            Severity::Warning,
            "not running as root: isolation is off, jobs run as the executor's own user and can read its config and state",
            "run gitlab-runner (and so p3-executor) as root with job_user set",
        ));
    }
    // A broken chain also blocks every grant (appends refuse a damaged tail): say so here.
    if cfg.audit.path.exists() {
        match crate::audit::verify(&cfg.audit.path) {
            Ok(v) => {
                if let Some(b) = v.broken {
                    out.push(finding(
                        Severity::Error,
                        format!(
                            "audit log {} is broken at line {}: {}",
                            cfg.audit.path.display(),
                            b.line,
                            b.message
                        ),
                        "investigate (p3-executor audit verify), then move the log aside so a new chain starts; keep the old one as evidence",
                    ));
                }
            }
            Err(e) => out.push(finding(
                Severity::Error,
                format!("audit log {} cannot be read: {e}", cfg.audit.path.display()),
                "fix its permissions (root, 0640) or move it aside",
            )),
        }
    }
    out.extend(crate::grant::check(cfg));
    out
}

/// The job sandbox: does this host support it, is it on, and is any uid quarantined?
fn sandbox_findings(cfg: &Config, out: &mut Vec<Finding>) {
    let probe = crate::sandbox::probe();
    match (&probe, cfg.sandbox.enabled) {
        (Ok(()), true) => out.push(finding(
            Severity::Info,
            "job sandbox: mount, PID and IPC namespaces are available; every job script runs in its own",
            "nothing to do",
        )),
        (Ok(()), false) => out.push(finding(
            Severity::Warning,
            "[sandbox] enabled = false: jobs share /tmp, see the host's processes and the state root, and setuid binaries work",
            "remove `enabled = false` from [sandbox]: this host supports the sandbox",
        )),
        (Err(why), true) => out.push(finding(
            Severity::Error,
            format!("job sandbox unavailable: {why}; every job will fail with a system error"),
            "allow namespaces for the runner (not in an unprivileged container; kernel.unprivileged_userns_clone does not matter, root is used), or set [sandbox] enabled = false to accept running without it",
        )),
        (Err(why), false) => out.push(finding(
            Severity::Warning,
            format!("[sandbox] enabled = false, and this host could not run it anyway: {why}"),
            "run the executor where mount, PID and IPC namespaces are allowed",
        )),
    }
    for (uid, why) in crate::uid_pool::quarantined(cfg) {
        out.push(finding(
            Severity::Warning,
            format!("uid {uid} is quarantined (out of the job pool): {why}"),
            format!(
                "find and remove what it owns (ps -u {uid}; ipcs; find / -xdev -uid {uid}), then run p3-executor gc"
            ),
        ));
    }
}

/// Print findings; returns the exit code (0 when there is no error).
pub fn report(findings: &[Finding]) -> i32 {
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    for f in findings {
        let tag = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => {
                println!("ok: {}", f.problem);
                continue;
            }
        };
        println!("{tag}: {}\n  fix: {}", f.problem, f.fix);
    }
    if errors == 0 {
        println!(
            "config ok ({warnings} warning{})",
            if warnings == 1 { "" } else { "s" }
        );
        0
    } else {
        println!("{errors} error(s): the executor is not ready");
        1
    }
}
