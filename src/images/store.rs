//! The shared image store: a root-owned containers-storage (vfs) driven by `buildah` as root.
//!
//! Pulls go through containers-storage, whose own locks make concurrent pulls of one image by
//! several prepares safe (they share its layers). Each image gets one read-only *base*
//! container (`p3-base-<image id>`, made once under a lock file), whose directory is the lower
//! layer every job in that image shares; no job ever writes it (its writes go to its own
//! overlay upper, `layers/<job id>`), and vfs means the base is a plain directory, so nothing
//! is mounted on the host.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Config;

/// The store's root.
pub fn root(cfg: &Config) -> PathBuf {
    cfg.images
        .store
        .clone()
        .unwrap_or_else(|| cfg.state_root.join("images"))
}

/// `buildah` with the store's global options.
pub fn buildah(cfg: &Config) -> Command {
    let root = root(cfg);
    let mut c = Command::new("buildah");
    c.arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs"])
        .env_remove("CONTAINERS_STORAGE_CONF")
        .env("BUILDAH_ISOLATION", "chroot");
    c
}

fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run buildah: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.trim().chars().take(2000).collect();
        return Err(format!("{what}: buildah failed ({}): {err}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One pulled image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pulled {
    /// Image id (sha256 hex of its config).
    pub id: String,
    /// Manifest digest (`sha256:...`): what `name@digest` pulls.
    pub digest: String,
    /// The image's `Env` (`KEY=value`).
    pub env: Vec<String>,
}

/// Pull `reference` with `policy` (GitLab's names), authenticating with `auth_file` (None: no
/// credentials); `insecure`: the registry speaks plain HTTP.
pub fn pull(
    cfg: &Config,
    reference: &str,
    policy: &str,
    auth_file: Option<&Path>,
    insecure: bool,
) -> Result<Pulled, String> {
    let root = root(cfg);
    crate::workspace::ensure_dir(&root, 0o700).map_err(|e| e.to_string())?;
    let mut c = buildah(cfg);
    c.args(["pull", "--quiet", "--policy"]).arg(match policy {
        "always" => "always",
        "never" => "never",
        _ => "missing",
    });
    if let Some(f) = auth_file {
        c.arg("--authfile").arg(f);
    }
    if insecure {
        c.arg("--tls-verify=false");
    }
    c.arg(reference);
    let id = run(c, &format!("pull {reference} (pull_policy {policy})"))?;
    let id = id.lines().last().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "pull {reference}: buildah printed no image id ({id:?})"
        ));
    }
    let mut c = buildah(cfg);
    c.args(["inspect", "--type", "image"]).arg(&id);
    let text = run(c, &format!("inspect {reference}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("inspect {reference}: not JSON: {e}"))?;
    let digest = v["FromImageDigest"].as_str().unwrap_or("").to_string();
    if !digest.starts_with("sha256:") {
        return Err(format!(
            "inspect {reference}: no manifest digest ({digest:?})"
        ));
    }
    let env: Vec<String> = v["OCIv1"]["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(Pulled { id, digest, env })
}

/// The read-only root filesystem of image `id`: its base container's directory, made once
/// (under a lock, so concurrent prepares of one image make one).
pub fn base_rootfs(cfg: &Config, id: &str) -> Result<PathBuf, String> {
    let root = root(cfg);
    let name = format!("p3-base-{}", &id[..id.len().min(32)]);
    let lock_path = root.join(format!("{name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "lock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut c = buildah(cfg);
    c.arg("mount").arg(&name);
    let path = match run(c, "mount") {
        Ok(p) => p,
        Err(_) => {
            let mut c = buildah(cfg);
            c.args(["from", "--quiet", "--pull=never", "--name"])
                .arg(&name)
                .arg(id);
            run(c, &format!("base container of image {id}"))?;
            let mut c = buildah(cfg);
            c.arg("mount").arg(&name);
            run(c, &format!("mount the base container of image {id}"))?
        }
    };
    drop(lock);
    let path = PathBuf::from(path);
    if !path.is_dir() {
        return Err(format!(
            "base of image {id}: {} is no directory",
            path.display()
        ));
    }
    Ok(path)
}

/// A resolved reference remembered by the store: what `pull` and `base_rootfs` returned for it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Resolved {
    qualified: String,
    pulled: Pulled,
    rootfs: PathBuf,
}

fn resolved_path(cfg: &Config, qualified: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    root(cfg).join("resolved").join(format!(
        "{}.json",
        hex::encode(Sha256::digest(qualified.as_bytes()))
    ))
}

/// The image `qualified` resolved to when it was last pulled, if its base is still in the
/// store: what a pull policy other than `always` would find (buildah's `--policy missing`
/// uses a present image without asking the registry either), without three buildah calls.
pub fn cached(cfg: &Config, qualified: &str) -> Option<(Pulled, PathBuf)> {
    let text = std::fs::read(resolved_path(cfg, qualified)).ok()?;
    let r: Resolved = serde_json::from_slice(&text).ok()?;
    (r.qualified == qualified && r.rootfs.is_dir()).then_some((r.pulled, r.rootfs))
}

/// Remember what `qualified` resolved to (root-only, written atomically; best effort).
pub fn remember(cfg: &Config, qualified: &str, pulled: &Pulled, rootfs: &Path) {
    let path = resolved_path(cfg, qualified);
    let r = Resolved {
        qualified: qualified.to_string(),
        pulled: pulled.clone(),
        rootfs: rootfs.to_path_buf(),
    };
    let written = path
        .parent()
        .ok_or_else(|| "no parent".to_string())
        .and_then(|d| crate::workspace::ensure_dir(d, 0o700).map_err(|e| e.to_string()))
        .and_then(|()| serde_json::to_vec(&r).map_err(|e| e.to_string()))
        .and_then(|text| {
            crate::atomic_file::write(&path, &text, crate::atomic_file::Options::PRIVATE)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::debug!("remember {qualified}: {e}");
    }
}
