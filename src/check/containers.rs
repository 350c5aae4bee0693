//! Containers and `image:` jobs on this host: the container tooling, the shared image store,
//! the subordinate range pool (leased and quarantined ranges, overlap with the host's own
//! `/etc/subuid`) and `[images] auth_file`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// The image wall (`image:` jobs): buildah for the shared store, the store, the auth file.
pub(super) fn image_findings(cfg: &Config, out: &mut Vec<Finding>) {
    if cfg.images.enabled {
        store_tooling(out);
        store(cfg, out);
    }
    auth_file(cfg, out);
}

/// The user namespace wall: buildah or podman on the job's PATH for container jobs, and the
/// subordinate range pool (container and `image:` jobs both lease from it).
pub(super) fn userns_findings(cfg: &Config, out: &mut Vec<Finding>) {
    let containers = cfg.sandbox.containers || cfg.devstages.values().any(|d| d.containers);
    if containers {
        job_tooling(cfg, out);
    }
    if cfg.images.enabled || containers {
        pool(cfg, out);
    }
}

/// `buildah --version`'s line, or why it cannot run.
fn buildah_version(program: &Path) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("--version failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// buildah as root, for the image store (`image:` jobs).
fn store_tooling(out: &mut Vec<Finding>) {
    match which::which("buildah")
        .map_err(|e| e.to_string())
        .and_then(|p| buildah_version(&p).map(|v| (p, v)))
    {
        Ok((path, version)) => out.push(finding(
            Severity::Info,
            format!(
                "image: jobs: {} ({version}) pulls into the image store",
                path.display()
            ),
            "nothing to do",
        )),
        Err(why) => out.push(finding(
            Severity::Warning,
            format!("image: jobs cannot run: buildah is not usable ({why})"),
            "apt-get install buildah, or set [images] enabled = false to refuse image: jobs",
        )),
    }
}

/// buildah or podman on the job's PATH, for `image build` in container jobs.
fn job_tooling(cfg: &Config, out: &mut Vec<Finding>) {
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let on_path = ["buildah", "podman"]
        .into_iter()
        .filter(|t| which::which_in(t, Some(&cfg.job_path), &cwd).is_ok())
        .collect::<Vec<_>>();
    if on_path.is_empty() {
        out.push(finding(
            Severity::Warning,
            "container jobs are allowed, but neither buildah nor podman is on job_path: \
             `p3-executor image build` fails in them",
            "apt-get install buildah (or podman), or add its directory to job_path",
        ));
    } else {
        out.push(finding(
            Severity::Info,
            format!("container jobs: {} on job_path", on_path.join(" and ")),
            "nothing to do",
        ));
    }
}

/// File systems whose mounts can be idmapped (the image's base is mounted so in every job).
fn idmappable(magic: i64) -> Option<&'static str> {
    match magic {
        0xEF53 => Some("ext4"),
        0x5846_5342 => Some("xfs"),
        0x9123_683E => Some("btrfs"),
        0x0102_1994 => Some("tmpfs"),
        0xF2F5_2010 => Some("f2fs"),
        _ => None,
    }
}

/// The shared store: root-only, on a file system that supports idmapped mounts; job layers
/// no job holds (a crash) are gc's.
fn store(cfg: &Config, out: &mut Vec<Finding>) {
    let root = crate::images::store::root(cfg);
    match std::fs::symlink_metadata(&root) {
        Err(_) => out.push(finding(
            Severity::Info,
            format!(
                "image store {}: not made yet (the first image: job's prepare makes it)",
                root.display()
            ),
            "nothing to do",
        )),
        Ok(m) if !m.is_dir() || m.uid() != 0 || m.mode() & 0o077 != 0 => out.push(finding(
            Severity::Error,
            format!(
                "image store {} must be a directory owned by root, mode 0700 (it is uid {}, \
                 mode {:o}): a job user could change the images other jobs run",
                root.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
            format!("chown root: {0} && chmod 0700 {0}", root.display()),
        )),
        Ok(_) => {
            let images = std::fs::read_dir(&root)
                .map(|d| {
                    d.flatten()
                        .filter(|e| {
                            let n = e.file_name();
                            let n = n.to_string_lossy();
                            n.starts_with("p3-base-") && n.ends_with(".lock")
                        })
                        .count()
                })
                .unwrap_or(0);
            out.push(finding(
                Severity::Info,
                format!(
                    "image store {}: root-only, {images} image(s) prepared for jobs",
                    root.display()
                ),
                "nothing to do",
            ));
        }
    }
    // The store's own directory, or the nearest existing parent.
    let probe = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if let Ok(st) = nix::sys::statfs::statfs(probe) {
        let magic = st.filesystem_type().0;
        if idmappable(magic).is_none() {
            out.push(finding(
                Severity::Warning,
                format!(
                    "image store {} is on a file system (magic {magic:#x}) that may not support \
                     idmapped mounts: image: jobs would fail at their first stage",
                    root.display()
                ),
                "put [images] store on ext4, xfs, btrfs or tmpfs",
            ));
        }
    }
    let layers = cfg.state_root.join("layers");
    let stale: Vec<String> = std::fs::read_dir(&layers)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|id| !cfg.state_root.join("jobs").join(id).exists())
                .collect()
        })
        .unwrap_or_default();
    if !stale.is_empty() {
        out.push(finding(
            Severity::Warning,
            format!(
                "{} job layer(s) in {} belong to no job (a crash): {}",
                stale.len(),
                layers.display(),
                stale.join(", ")
            ),
            "run p3-executor gc (the gc timer does)",
        ));
    }
}

/// The subordinate range pool: its size, leases, quarantined ranges, and host users' own
/// subordinate ranges inside it (their rootless containers would share ids with jobs).
fn pool(cfg: &Config, out: &mut Vec<Finding>) {
    let [lo, hi] = crate::subid_pool::configured(cfg);
    let total = (u64::from(hi - lo) + 1) / u64::from(crate::subid_pool::RANGE_SIZE);
    let quarantined = crate::subid_pool::quarantined(cfg);
    let leased = crate::subid_pool::leased_count(cfg);
    out.push(finding(
        Severity::Info,
        format!(
            "subordinate range pool job_subid_range [{lo}, {hi}]: {total} range(s), {leased} \
             leased, {} quarantined",
            quarantined.len()
        ),
        "nothing to do",
    ));
    if leased as u64 + quarantined.len() as u64 >= total {
        out.push(finding(
            Severity::Warning,
            "every subordinate range is leased or quarantined: the next container or image: \
             job fails at prepare",
            "run p3-executor gc, or widen job_subid_range",
        ));
    }
    for (first, why) in quarantined {
        let last = first + (crate::subid_pool::RANGE_SIZE - 1);
        out.push(finding(
            Severity::Warning,
            format!("subordinate range {first}-{last} is quarantined: {why}"),
            format!(
                "run p3-executor gc (it kills the range's processes and removes its files from \
                 the scrub dirs); if it stays: ps -eo pid,uid,gid,cmd | awk '$2>={first} && \
                 $2<={last}'"
            ),
        ));
    }
    let mut held = crate::host_ids::uids();
    held.extend(crate::host_ids::gids());
    super::users::held_ids(
        "job_subid_range",
        [lo, hi],
        &held,
        "a container job's image ids would be shared with that account, group or user's \
         containers",
        out,
    );
}

/// `[images] auth_file`: there, a regular root-owned file no one else may read, and JSON with
/// `auths`.
fn auth_file(cfg: &Config, out: &mut Vec<Finding>) {
    let Some(file) = &cfg.images.auth_file else {
        return;
    };
    let fix = format!("chown root: {0} && chmod 0600 {0}", file.display());
    match std::fs::symlink_metadata(file) {
        Err(e) => out.push(finding(
            Severity::Error,
            format!(
                "[images] auth_file {}: {e}: every image pull fails",
                file.display()
            ),
            "create it (a containers auth.json, root-only) or remove auth_file from [images]",
        )),
        Ok(m) if !m.is_file() => out.push(finding(
            Severity::Error,
            format!(
                "[images] auth_file {} is not a regular file",
                file.display()
            ),
            "point auth_file at a containers auth.json",
        )),
        Ok(m) if m.uid() != 0 || m.mode() & 0o077 != 0 => out.push(finding(
            Severity::Error,
            format!(
                "[images] auth_file {} holds registry passwords but is uid {}, mode {:o}: \
                 others can read or change it",
                file.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
            fix,
        )),
        Ok(_) => {
            let parsed = std::fs::read_to_string(file)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(v) if v.get("auths").is_some_and(|a| a.is_object()) => {
                    let registries: Vec<String> = v["auths"]
                        .as_object()
                        .map(|a| a.keys().cloned().collect())
                        .unwrap_or_default();
                    out.push(finding(
                        Severity::Info,
                        format!(
                            "[images] auth_file {}: root-only, credentials for {}",
                            file.display(),
                            if registries.is_empty() {
                                "no registry".to_string()
                            } else {
                                registries.join(", ")
                            }
                        ),
                        "nothing to do",
                    ));
                }
                Ok(_) => out.push(finding(
                    Severity::Error,
                    format!("[images] auth_file {} has no \"auths\" object", file.display()),
                    "write it as a containers auth.json: {\"auths\": {\"registry\": {\"auth\": \"base64(user:password)\"}}}",
                )),
                Err(e) => out.push(finding(
                    Severity::Error,
                    format!("[images] auth_file {} is not JSON: {e}", file.display()),
                    "write it as a containers auth.json (buildah login --authfile FILE REGISTRY makes one)",
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &Path, extra: &str) -> Config {
        Config::parse(&format!(
            "state_root = \"{}\"\nbuilds_root = \"{}\"\n{extra}",
            root.join("state").display(),
            root.join("builds").display()
        ))
        .unwrap()
    }

    #[test]
    fn the_auth_file_must_exist_be_root_only_and_hold_auths() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("auth.json");
        let c = cfg(
            tmp.path(),
            &format!("[images]\nauth_file = \"{}\"\n", file.display()),
        );
        let run = || {
            let mut out = Vec::new();
            auth_file(&c, &mut out);
            out
        };
        let missing = run();
        assert_eq!(missing[0].severity, Severity::Error, "{missing:?}");
        assert!(missing[0].problem.contains("every image pull fails"));
        std::fs::write(
            &file,
            r#"{"auths": {"registry.example.com": {"auth": "eDp5"}}}"#,
        )
        .unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let open = run();
        assert_eq!(open[0].severity, Severity::Error, "{open:?}");
        assert!(open[0].problem.contains("others can read"), "{open:?}");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        if nix::unistd::geteuid().is_root() {
            let ok = run();
            assert_eq!(ok[0].severity, Severity::Info, "{ok:?}");
            assert!(ok[0].problem.contains("registry.example.com"), "{ok:?}");
            std::fs::write(&file, "{}").unwrap();
            assert!(run()[0].problem.contains("no \"auths\""));
            std::fs::write(&file, "nope").unwrap();
            assert!(run()[0].problem.contains("not JSON"));
        }
    }
}
