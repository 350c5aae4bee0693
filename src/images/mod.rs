//! `image:` jobs: the user's script stages run with the job's image as `/`, over a private
//! writable layer; the runner's own stages stay in the host's sandbox.
//!
//! - prepare ([`resolve`]): the job's image (payload, or `[images] default`) is checked against
//!   policy ([`policy`]: the devstage's `images` globs and `require_digest`), pulled into the
//!   shared root-owned store with the job's registry credentials or `[images] auth_file`
//!   ([`store`]), and its manifest digest resolved, all before any script runs; the grant's
//!   audit record names both. With a warm store and a pull policy other than `always`, the
//!   reference resolves from what its last pull recorded (`store::cached`), without buildah. The job's overlay upper and work dirs are made in
//!   `<state_root>/layers/<job id>/` (root-owned, so the job cannot plant links there).
//! - run: a user stage ([`is_image_stage`]) gets [`crate::sandbox::ImageRoot`]: the sandbox's
//!   init mounts the image's base directory idmapped into the job's user namespace (image
//!   uid 0 is the job's uid, the others its subordinate range) as the lower layer of an
//!   overlay whose upper is the job's, binds the job's dirs, `/dev`, `/proc`, the private tmp
//!   dirs, the host's `/etc/resolv.conf` and `/etc/hosts` and the executor's binaries in, and
//!   pivots into it. The shell is bash if the image has it, else sh (as the docker executor).
//! - teardown and gc remove the layer ([`remove_layer`], [`sweep_orphans`]).
//!
//! Why an overlay with an idmapped lower rather than `buildah from` per job (a vfs copy of the
//! whole image per job, seconds for a Debian image) or a copy: preparing an image job costs
//! two `mkdir`s once the image is in the store, the lower is shared by every job of the image
//! and never written, and nothing of a job's exists outside its layer dir and its mount
//! namespace (which dies with the stage), so a crash leaves only a directory for gc.

pub mod config;
pub mod policy;
pub mod store;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::job::JobContext;
use crate::sandbox::image_root::{self, ImageRoot};
use crate::workspace::JobPaths;

/// Where the executor's own binaries appear inside an image.
pub const EXEC_DIR: &str = "/.p3-executor/bin";

/// PATH of an image job's script when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image a job runs in, resolved at prepare (`<workspace>/image.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobImage {
    /// The reference as the job gave it.
    pub name: String,
    /// Fully qualified.
    pub qualified: String,
    /// Manifest digest, resolved before the script starts.
    pub digest: String,
    /// Image id in the store.
    pub id: String,
    /// The read-only base directory (the lower layer).
    pub rootfs: PathBuf,
    /// The image's environment (`KEY=value`).
    pub env: Vec<String>,
    /// The pull policy applied.
    pub pull_policy: String,
}

/// Why an image job cannot start.
#[derive(Debug)]
pub enum ImageError {
    /// Policy refuses it: a build failure naming the rule.
    Denied(policy::Refusal),
    /// The job asked for something out of scope (`services:`): a build failure.
    Unsupported(String),
    /// The pull or the store failed: a system failure.
    Failed(String),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::Denied(r) => write!(f, "{}: {}", r.rule, r.reason),
            ImageError::Unsupported(m) | ImageError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<ImageError> for crate::error::Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Denied(r) => {
                crate::error::Error::Denied(format!("image denied: {}: {}", r.rule, r.reason))
            }
            ImageError::Unsupported(m) => crate::error::Error::Denied(m),
            ImageError::Failed(m) => crate::error::Error::Workspace(format!("image: {m}")),
        }
    }
}

/// The image the job asks for (payload `image:`, else `[images] default`) and its pull
/// policies.
pub fn requested(cfg: &Config, job: &JobContext) -> Option<(String, Vec<String>)> {
    let asked = job
        .payload
        .image
        .as_ref()
        .filter(|i| !i.name.trim().is_empty());
    match asked {
        Some(i) => Some((
            i.name.trim().to_string(),
            i.pull_policy.clone().unwrap_or_default(),
        )),
        None => cfg.images.default.clone().map(|d| (d, Vec::new())),
    }
}

fn image_file(paths: &JobPaths) -> PathBuf {
    paths.workspace.join("image.json")
}

/// The image resolved for this job at prepare, if any.
pub fn load(paths: &JobPaths) -> Option<JobImage> {
    let text = std::fs::read_to_string(image_file(paths)).ok()?;
    serde_json::from_str(&text).ok()
}

fn save(paths: &JobPaths, image: &JobImage) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(image).map_err(|e| e.to_string())?;
    crate::atomic_file::write(
        &image_file(paths),
        &text,
        crate::atomic_file::Options::PRIVATE,
    )
    .map_err(|e| format!("save {}: {e}", image_file(paths).display()))
}

/// The job's layer dir (`upper`, `work`): root-owned, `<state_root>/layers/<job id>`.
pub fn layer_dir(cfg: &Config, job_id: u64) -> PathBuf {
    cfg.state_root.join("layers").join(job_id.to_string())
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The credentials for one pull, as an `auth.json` in the job's root-only workspace: the
/// job's `CI_REGISTRY_USER`/`CI_REGISTRY_PASSWORD` for `CI_REGISTRY`, over `[images]
/// auth_file`'s entries. Never on a command line. None: no credentials at all.
fn auth_for_pull(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    registry: &str,
) -> Result<Option<PathBuf>, String> {
    let mut auths = serde_json::Map::new();
    if let Some(file) = &cfg.images.auth_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("[images] auth_file {}: {e}", file.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("[images] auth_file {}: not JSON: {e}", file.display()))?;
        if let Some(a) = v.get("auths").and_then(|a| a.as_object()) {
            auths.extend(a.clone());
        }
    }
    let var = |k: &str| job.variable(k).map(str::trim).filter(|v| !v.is_empty());
    if let (Some(reg), Some(user), Some(pass)) = (
        var("CI_REGISTRY"),
        var("CI_REGISTRY_USER"),
        job.variable("CI_REGISTRY_PASSWORD")
            .filter(|v| !v.is_empty()),
    ) {
        if reg == registry {
            auths.insert(
                reg.to_string(),
                serde_json::json!({ "auth": base64(format!("{user}:{pass}").as_bytes()) }),
            );
        }
    }
    if auths.is_empty() {
        return Ok(None);
    }
    let path = paths.workspace.join("registry-auth.json");
    let text = serde_json::to_vec(&serde_json::json!({ "auths": auths })).expect("json");
    crate::atomic_file::write(&path, &text, crate::atomic_file::Options::PRIVATE)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(Some(path))
}

/// prepare: the job's image, checked against the policy of `devstage`, pulled and its digest
/// resolved, and its layer dir made; None for a job without an image. Saved for `run`.
pub fn resolve(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    devstage: Option<&str>,
) -> Result<Option<JobImage>, ImageError> {
    if let Some(done) = load(paths) {
        return Ok(Some(done));
    }
    if job.payload.services.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ImageError::Unsupported(
            "services: are not supported by p3-executor (out of scope: a job's services would \
             need their own containers and network); start what the job needs from its script, \
             or run the job on a docker or Kubernetes runner"
                .into(),
        ));
    }
    let Some((name, asked)) = requested(cfg, job) else {
        return Ok(None);
    };
    policy::check(cfg, devstage, &name).map_err(ImageError::Denied)?;
    let pull_policy = policy::pull_policy(cfg, &asked).map_err(ImageError::Denied)?;
    let qualified = policy::qualify(&name);
    // A warm store answers if-not-present and never from what the last pull resolved.
    let known = (pull_policy != "always")
        .then(|| store::cached(cfg, &qualified))
        .flatten();
    let (pulled, rootfs) = match known {
        Some(known) => known,
        None => {
            let registry = policy::registry_of(&qualified).to_string();
            let auth = auth_for_pull(cfg, job, paths, &registry).map_err(ImageError::Failed)?;
            let insecure = cfg.images.insecure_registries.contains(&registry);
            let pulled = store::pull(cfg, &qualified, &pull_policy, auth.as_deref(), insecure);
            if let Some(a) = &auth {
                let _ = std::fs::remove_file(a);
            }
            let pulled = pulled.map_err(ImageError::Failed)?;
            let rootfs = store::base_rootfs(cfg, &pulled.id).map_err(ImageError::Failed)?;
            store::remember(cfg, &qualified, &pulled, &rootfs);
            (pulled, rootfs)
        }
    };
    make_layer(cfg, paths.job_id).map_err(ImageError::Failed)?;
    let image = JobImage {
        name,
        qualified,
        digest: pulled.digest,
        id: pulled.id,
        rootfs,
        env: pulled.env,
        pull_policy,
    };
    save(paths, &image).map_err(ImageError::Failed)?;
    Ok(Some(image))
}

fn make_layer(cfg: &Config, job_id: u64) -> Result<(), String> {
    let layers = cfg.state_root.join("layers");
    crate::workspace::ensure_dir(&layers, 0o700).map_err(|e| e.to_string())?;
    let dir = layer_dir(cfg, job_id);
    for d in [dir.clone(), dir.join("upper"), dir.join("work")] {
        match std::fs::create_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {}: {e}", d.display())),
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", d.display()))?;
    }
    Ok(())
}

/// teardown: remove the job's layer (everything it wrote in its image).
pub fn remove_layer(cfg: &Config, job_id: u64) -> crate::error::Result<()> {
    crate::workspace::remove_tree(&layer_dir(cfg, job_id))
}

/// gc: layers whose job this host no longer knows (a crash between prepare and cleanup);
/// returns the job ids removed.
pub fn sweep_orphans(cfg: &Config, known: &[u64]) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(cfg.state_root.join("layers")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|id| !known.contains(id))
        .filter(|id| remove_layer(cfg, *id).is_ok())
        .collect()
}

/// Does `stage` run the user's script (in the image)? The runner's own stages (sources,
/// cache, artifacts) stay on the host.
pub fn is_image_stage(stage: &str) -> bool {
    matches!(stage, "step_script" | "build_script" | "after_script") || stage.starts_with("step_")
}

/// The environment of an image stage: the image's own `Env` under the job's, PATH from the
/// image (or the usual one) with the executor's binaries last.
pub fn stage_env(image: &JobImage, env: &mut Vec<(std::ffi::OsString, std::ffi::OsString)>) {
    let mut path = DEFAULT_PATH.to_string();
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            if k == "PATH" {
                path = v.to_string();
            } else if !env.iter().any(|(ek, _)| ek == k) {
                env.push((k.into(), v.into()));
            }
        }
    }
    env.retain(|(k, _)| k != "PATH" && k != "SHELL");
    env.push(("PATH".into(), format!("{path}:{EXEC_DIR}").into()));
}

/// What the sandbox needs to run a stage in the job's image.
pub fn root_for_run(cfg: &Config, job_id: u64, image: &JobImage) -> ImageRoot {
    let exec_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/bin"));
    ImageRoot {
        lower: image.rootfs.clone(),
        layer: layer_dir(cfg, job_id),
        exec_dir,
        runtime: image_root::host_runtime(),
        ca_bundle: image_root::host_ca_bundle(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn user_stages_run_in_the_image_and_the_runners_stay_on_the_host() {
        for s in [
            "step_script",
            "build_script",
            "after_script",
            "step_release",
        ] {
            assert!(is_image_stage(s), "{s}");
        }
        for s in [
            "prepare_script",
            "get_sources",
            "restore_cache",
            "download_artifacts",
            "archive_cache",
            "upload_artifacts_on_success",
            "cleanup_file_variables",
        ] {
            assert!(!is_image_stage(s), "{s}");
        }
    }
}
