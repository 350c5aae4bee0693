//! The user namespace wall: a container job's script runs in its own user namespace, created
//! by its shell and mapped by the sandbox's init (root in the host's namespace, so no setuid
//! `newuidmap` is needed, and `no_new_privs` stays on).
//!
//! # The mapping
//! ```text
//! inside 0            → the job's private uid (and job_user's gid)
//! inside 1 ..= 65536  → the job's private subordinate range (subid_pool.rs), uids and gids
//! ```
//! This is the mapping rootless podman and buildah make for themselves (`podman unshare`), so
//! they behave as they do there, with nothing to set up: the job is root *in its namespace*,
//! buildah takes its root path (no re-exec, no `newuidmap`), image layers keep their owners
//! (mapped into the range), and a `RUN` step as any image user works. On the host every file
//! the job writes is still owned by its private uid, and everything its containers write by
//! ids of a range no other job holds. The job's capabilities exist only in its own namespace:
//! the mounts the sandbox made are locked under it (they cannot be undone to reveal what they
//! cover), host files show as `nobody`, and the host's namespaces (network, UTS, the PID
//! namespace's owner) stay out of reach. The other choice, the job's uid mapped 1:1 with the
//! range beside it, leaves the job unprivileged inside, so buildah would need `newuidmap`
//! (setuid, disabled by `no_new_privs`) to use the range at all.
//!
//! The shell also gets a mount namespace owned by its user namespace, so buildah's own
//! mounts (chroot isolation binds, and overlay where the kernel allows it in a user namespace)
//! are the job's own. Storage (vfs) lives under the job's tree and goes with it at cleanup.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::subid_pool::{self, RANGE_SIZE, SubidRange};
use crate::workspace::{JobPaths, JobState};

/// The job's own containers configuration directory, under its job root.
const CONF_DIR: &str = "containers";

/// Does policy let this job run containers? A devstage's `containers`, or `[sandbox]
/// containers` for a job without one.
pub fn allowed(cfg: &Config, devstage: Option<&str>) -> bool {
    match devstage {
        Some(d) => cfg.devstages.get(d).is_some_and(|d| d.containers),
        None => cfg.sandbox.containers,
    }
}

/// Can this job get a user namespace at all: root, private uid, the sandbox on.
fn possible(cfg: &Config, state: &JobState) -> bool {
    state.ids.switch_user && state.ids.private_uid && cfg.sandbox.enabled
}

/// The `uid_map` (or `gid_map`) of a job whose host id is `host` (see the module docs).
pub(crate) fn map_text(host: u32, range: SubidRange) -> String {
    format!("0 {host} 1\n1 {} {RANGE_SIZE}\n", range.first)
}

/// Where the job's containers storage and configuration live.
fn conf_dir(paths: &JobPaths) -> PathBuf {
    paths.job_root.join(CONF_DIR)
}

/// `storage.conf` for the job: vfs under its own tree. vfs because it needs no mount at all;
/// overlay in a user namespace works on newer kernels only and is a per-site choice (a job may
/// point `CONTAINERS_STORAGE_CONF` elsewhere: its storage is its own either way).
fn storage_conf(dir: &Path) -> String {
    format!(
        "# Written by p3-executor for this job: storage in the job's tree, removed with it.\n\
         [storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
        dir.join("storage").display(),
        dir.join("run").display()
    )
}

/// `containers.conf`: no cgroups (the job's cgroup is the executor's), chroot isolation for
/// buildah (`RUN` without an OCI runtime, which would need cgroups), host network.
const CONTAINERS_CONF: &str = "# Written by p3-executor for this job.\n\
[containers]\ncgroups = \"disabled\"\nnetns = \"host\"\n\n\
[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";

/// Where containers/image looks for registry settings (signature lookaside, sigstore
/// attachments) on the host.
const HOST_REGISTRIES_D: &str = "/etc/containers/registries.d";

/// The host's registries.d files (`*.yaml`, readable), by name.
fn host_registries_d() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(HOST_REGISTRIES_D) else {
        return Vec::new();
    };
    let mut files: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            name.ends_with(".yaml").then_some((name, text))
        })
        .collect();
    files.sort();
    files
}

/// The job's own registries.d: the host's files, plus a `default-docker` lookaside in the
/// job's storage when none of them sets one. Buildah in a container job is root in its
/// namespace, so without one it reads and writes signatures under root's
/// `/var/lib/containers/sigstore`: 0700 on any host where root has used buildah or podman,
/// so every pull of a `FROM` image failed with EACCES.
fn registries_d(host: &[(String, String)], lookaside: &Path) -> Vec<(String, String)> {
    let mut files = host.to_vec();
    let has_default = host
        .iter()
        .any(|(_, text)| text.lines().any(|l| l.starts_with("default-docker:")));
    if !has_default {
        files.push((
            "zz-p3-executor.yaml".into(),
            format!(
                "# Written by p3-executor for this job: signatures in the job's own storage.\n\
                 default-docker:\n  lookaside: file://{}\n",
                lookaside.display()
            ),
        ));
    }
    files
}

/// prepare: for a container job, lease its subordinate range and write its containers
/// configuration into its tree; the environment points buildah and podman at it. An `image:`
/// job gets a range too (its image's uids map into it), but no containers configuration
/// unless policy lets it run containers.
pub fn prepare(cfg: &Config, paths: &JobPaths, state: &mut JobState) -> Result<()> {
    let devstage = state.grant.as_ref().map(|g| g.devstage.as_str());
    let image = crate::images::load(paths).is_some();
    if image && !possible(cfg, state) {
        return Err(Error::Workspace(
            "an image: job needs the executor as root with private uids and the sandbox on \
             ([sandbox] enabled)"
                .into(),
        ));
    }
    if !(allowed(cfg, devstage) || image) || !possible(cfg, state) {
        return Ok(());
    }
    subid_pool::lease(cfg, state.job_id)?;
    if !allowed(cfg, devstage) {
        return Ok(());
    }
    let dir = conf_dir(paths);
    // The job root was just created by this prepare and nothing of the job has run yet, so
    // nothing in it can be a link the job planted.
    let uid = Some(nix::unistd::Uid::from_raw(state.ids.uid));
    let gid = Some(nix::unistd::Gid::from_raw(state.ids.gid));
    let mk = |path: &Path, content: Option<&str>| -> Result<()> {
        match content {
            None => std::fs::create_dir(path),
            Some(text) => std::fs::write(path, text),
        }
        .and_then(|()| {
            let mode = if content.is_none() { 0o700 } else { 0o600 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        })
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        nix::unistd::chown(path, uid, gid)
            .map_err(|e| Error::io(format!("chown {}", path.display()), e.into()))
    };
    if !dir.exists() {
        mk(&dir, None)?;
    }
    mk(&dir.join("storage.conf"), Some(&storage_conf(&dir)))?;
    mk(&dir.join("containers.conf"), Some(CONTAINERS_CONF))?;
    // containers/image reads `$HOME/.config/containers/registries.d` instead of the host's
    // when it exists; the job's HOME is its own tree, created just above by this prepare.
    let mut conf = paths.home.clone();
    for part in [".config", "containers", "registries.d"] {
        conf.push(part);
        if !conf.exists() {
            mk(&conf, None)?;
        }
    }
    for (name, text) in registries_d(&host_registries_d(), &dir.join("sigstore")) {
        mk(&conf.join(name), Some(&text))?;
    }
    for (k, v) in [
        ("CONTAINERS_STORAGE_CONF", dir.join("storage.conf")),
        ("CONTAINERS_CONF", dir.join("containers.conf")),
    ] {
        state.env.insert(k.into(), v.display().to_string());
    }
    state
        .env
        .insert("BUILDAH_ISOLATION".into(), "chroot".into());
    Ok(())
}

/// What the sandbox needs to put a job's shell in its own user namespace.
#[derive(Debug)]
pub struct JobUserns {
    /// `uid_map` text.
    pub(crate) uid_map: CString,
    /// `gid_map` text.
    pub(crate) gid_map: CString,
    /// Files bound read-only over host files (`/etc/passwd`, ...): target and content.
    pub(crate) files: Vec<(PathBuf, Vec<u8>)>,
}

/// run: the user namespace of this job's stages, or None for a job without containers.
pub fn for_run(cfg: &Config, paths: &JobPaths, state: &JobState) -> Result<Option<JobUserns>> {
    if !possible(cfg, state) {
        return Ok(None);
    }
    let Some(range) = subid_pool::leased(cfg, state.job_id) else {
        return Ok(None);
    };
    let (uid, gid) = (state.ids.uid, state.ids.gid);
    let home = paths.home.display();
    // The job's own entries: it is root in its namespace (uid and gid 0, which are its host
    // uid and job_user's gid), with its usual home; `nobody` is how host ids it cannot map
    // appear. subuid/subgid list the inside range, for tools that read them.
    let passwd = format!(
        "root:x:0:0:p3-executor job {} (host uid {uid}):{home}:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        state.job_id
    );
    let group = "root:x:0:\nnogroup:x:65534:\n".to_string();
    let sub = format!("root:1:{RANGE_SIZE}\n");
    let mut files = Vec::new();
    for (target, text) in [
        ("/etc/passwd", passwd),
        ("/etc/group", group),
        ("/etc/subuid", sub.clone()),
        ("/etc/subgid", sub),
    ] {
        // A bind mount needs an existing target; the host's file is never created.
        if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_file()) {
            files.push((PathBuf::from(target), text.into_bytes()));
        }
    }
    let cstr = |s: String| CString::new(s).expect("numbers and newlines only");
    Ok(Some(JobUserns {
        uid_map: cstr(map_text(uid, range)),
        gid_map: cstr(map_text(gid, range)),
        files,
    }))
}

/// Write the maps of `pid` (the job's shell, just unshared). Runs in the sandbox's init,
/// after fork: no allocation beyond the path.
pub(crate) fn write_maps(pid: i32, u: &JobUserns) -> std::result::Result<(), String> {
    for (name, text) in [("gid_map", &u.gid_map), ("uid_map", &u.uid_map)] {
        let path = format!("/proc/{pid}/{name}");
        let bytes = text.as_bytes();
        // One write(2): the kernel takes a map only whole.
        let res = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write(&mut f, bytes));
        match res {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => return Err(format!("sandbox: short write of {path} ({n} bytes)")),
            Err(e) => return Err(format!("sandbox: write {path}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_root_inside_and_its_range_follows() {
        let r = SubidRange { first: 1 << 30 };
        assert_eq!(map_text(916_005, r), "0 916005 1\n1 1073741824 65536\n");
    }

    #[test]
    fn policy_decides_per_devstage_and_for_plain_jobs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().display();
        let mut cfg = Config::parse(&format!(
            "state_root = \"{root}/s\"\nbuilds_root = \"{root}/b\"\n"
        ))
        .unwrap();
        let stage = |containers: bool| -> crate::config::Devstage {
            toml::from_str(&format!(
                "deploy_account = \"a\"\nprojects = [\"*\"]\ncontainers = {containers}\n"
            ))
            .unwrap()
        };
        cfg.devstages.insert("build".into(), stage(true));
        cfg.devstages.insert("deploy".into(), stage(false));
        assert!(allowed(&cfg, Some("build")));
        assert!(!allowed(&cfg, Some("deploy")));
        assert!(!allowed(&cfg, Some("unknown")));
        assert!(!allowed(&cfg, None), "plain jobs: off by default");
        cfg.sandbox.containers = true;
        assert!(allowed(&cfg, None));
    }

    #[test]
    fn signatures_go_to_the_jobs_storage_unless_the_host_sets_a_default() {
        let lookaside = Path::new("/b/7/containers/sigstore");
        let site = (
            "site.yaml".to_string(),
            "docker:\n  r.example:\n    use-sigstore-attachments: true\n".to_string(),
        );
        // (host files, files the job gets, ours among them)
        type Case<'a> = (&'a [(String, String)], usize, bool);
        let cases: [Case; 3] = [
            (&[], 1, true),
            (std::slice::from_ref(&site), 2, true),
            (
                &[(
                    "default.yaml".into(),
                    "default-docker:\n  lookaside: https://s.example\n".into(),
                )],
                1,
                false,
            ),
        ];
        for (host, count, ours) in cases {
            let files = registries_d(host, lookaside);
            assert_eq!(files.len(), count, "{host:?}");
            assert_eq!(
                &files[..host.len()],
                host,
                "the host's files are kept as they are"
            );
            let added = files.iter().find(|(n, _)| n == "zz-p3-executor.yaml");
            assert_eq!(added.is_some(), ours, "{host:?}");
            if let Some((_, text)) = added {
                assert!(
                    text.contains("lookaside: file:///b/7/containers/sigstore\n"),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn storage_stays_in_the_jobs_tree() {
        let text = storage_conf(Path::new("/b/7/containers"));
        assert!(
            text.contains("graphroot = \"/b/7/containers/storage\""),
            "{text}"
        );
        assert!(text.contains("driver = \"vfs\""), "{text}");
    }
}
