//! Configs side by side on one host (runners of several GitLab instances): each config keeps
//! its own jobs apart with pools of its own (uid leases, subordinate ranges, job roots), so two
//! configs that share an id or a directory ([`Claims`]) could give one job another's files,
//! processes and credentials.
//!
//! Every prepare (as root) records its config's claims in a host-wide registry,
//! `/run/p3-executor/configs/<tag>.json`, before anything of the job is taken, then refuses the
//! job, a system failure naming both config files and the fix, while a config in use shares
//! any of them. The entry is written before the others are read, so of two configs whose
//! first prepares race, at least one sees the other. An entry whose config file is gone is
//! removed; one that clashes is read again from its config file first, so a config its
//! operator has mended stops clashing at once. `check` reports the same clashes, and those of
//! the other `*.toml` configs beside its own, before any job runs.

mod claims;

pub(crate) use claims::Claims;

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};

/// The host-wide registry of configs in use since boot (root only).
pub const REGISTRY: &str = "/run/p3-executor/configs";

/// Another config in use that shares something with this one.
#[derive(Debug, Clone)]
pub struct Clash {
    /// The other config's file, when known.
    pub config: Option<PathBuf>,
    /// Its state root.
    pub state_root: PathBuf,
    /// Its registry entry (None: found beside this config's file by `check`).
    pub entry: Option<PathBuf>,
    /// What the two share, one phrase each.
    pub shared: Vec<String>,
}

impl Clash {
    /// One line: which config, and what it shares.
    pub fn describe(&self) -> String {
        format!(
            "{} (state_root {}) shares {}",
            self.config
                .as_deref()
                .map_or_else(|| "a config".into(), |p| p.display().to_string()),
            self.state_root.display(),
            self.shared.join(", ")
        )
    }

    /// How to end the clash.
    pub fn fix(&self) -> String {
        let gone = match (&self.config, &self.entry) {
            (Some(c), Some(e)) => format!(
                "; if {} is no longer used, delete it (or {})",
                c.display(),
                e.display()
            ),
            (None, Some(e)) => {
                format!("; if that config is no longer used, delete {}", e.display())
            }
            (Some(c), None) => format!("; if {} is no longer used, delete it", c.display()),
            (None, None) => String::new(),
        };
        format!(
            "give each config its own state_root and builds_root and disjoint job_uid_range \
             and job_subid_range (README: Register with GitLab Runner){gone}"
        )
    }
}

/// prepare: record this config in the registry, then refuse while a config in use clashes
/// with it (Error::Config, a system failure).
pub fn claim(cfg: &Config) -> Result<()> {
    claim_in(Path::new(REGISTRY), cfg)
}

fn claim_in(dir: &Path, cfg: &Config) -> Result<()> {
    let ours = Claims::of(cfg);
    let path = ours.config.clone().unwrap_or_default();
    let io = |what: &str, e| Error::io(format!("{what} (the registry of configs on this host)"), e);
    for d in [dir.parent().unwrap_or(dir), dir] {
        crate::workspace::ensure_dir(d, 0o700)?;
    }
    let name = entry_name(&ours.state_root);
    let entry = dir.join(&name);
    if read(&entry).as_ref() != Some(&ours) {
        write(&entry, &ours).map_err(|e| io(&format!("write {}", entry.display()), e))?;
    }
    let clashes = registered(dir, Some(&name), &ours, true);
    if clashes.is_empty() {
        return Ok(());
    }
    let mut message = String::from(
        "another config in use on this host shares ids or directories with this one:\n",
    );
    for c in &clashes {
        message.push_str(&format!("  - {}\n", c.describe()));
    }
    message.push_str(
        "A job of one could be given an id or a directory that a job of the other holds, and \
         with it that job's files, processes and credentials, so no job runs until they are \
         apart. Fix: ",
    );
    message.push_str(&clashes[0].fix());
    Err(Error::Config { path, message })
}

/// check: the configs in use (read only) and the other `*.toml` configs beside
/// `config_path` that clash with `cfg`, one [`Clash`] per config.
pub fn clashes(cfg: &Config, config_path: &Path) -> Vec<Clash> {
    clashes_in(Path::new(REGISTRY), cfg, config_path)
}

fn clashes_in(registry: &Path, cfg: &Config, config_path: &Path) -> Vec<Clash> {
    let ours = Claims::of(cfg);
    let mut found = registered(registry, None, &ours, false);
    let beside = config_path.parent().and_then(|d| fs::read_dir(d).ok());
    for e in beside.into_iter().flatten().flatten() {
        let path = e.path();
        let canonical = fs::canonicalize(&path).ok();
        let is_it = |p: &Path| fs::canonicalize(p).ok() == canonical;
        // Not this config, nor one the registry already named.
        if path.extension().is_none_or(|x| x != "toml")
            || is_it(config_path)
            || found.iter().any(|c| c.config.as_deref().is_some_and(is_it))
        {
            continue;
        }
        // Only files that are executor configs (the runner's config.toml is not).
        let Ok(other) = Config::load(&path) else {
            continue;
        };
        let theirs = Claims::of(&other);
        let shared = ours.shared_with(&theirs);
        if !shared.is_empty() {
            found.push(Clash {
                config: Some(path),
                state_root: theirs.state_root,
                entry: None,
                shared,
            });
        }
    }
    found
}

/// The registry's entries, but `ours`, that clash with `ours`; with `mend`, entries of
/// configs gone are removed and changed configs' entries rewritten.
fn registered(dir: &Path, ours_name: Option<&str>, ours: &Claims, mend: bool) -> Vec<Clash> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".json") || Some(&*name) == ours_name {
            continue;
        }
        let path = e.path();
        let current = read(&path).and_then(|recorded| {
            let now = current(recorded.clone(), ours)?;
            if mend && now != recorded {
                let _ = write(&path, &now);
            }
            Some(now)
        });
        let Some(theirs) = current else {
            if mend {
                let _ = fs::remove_file(&path);
            }
            continue;
        };
        let shared = ours.shared_with(&theirs);
        if !shared.is_empty() {
            found.push(Clash {
                config: theirs.config,
                state_root: theirs.state_root,
                entry: Some(path),
                shared,
            });
        }
    }
    found
}

/// What a recorded config claims now; None when it is gone (its file, or without one its
/// state root, no longer exists; or its file now names another state root). A config that
/// clashes with `ours` is read again, so one its operator has mended stops clashing.
fn current(recorded: Claims, ours: &Claims) -> Option<Claims> {
    let Some(file) = recorded.config.as_deref() else {
        return recorded.state_root.exists().then_some(recorded);
    };
    if !file.exists() {
        return None;
    }
    if ours.shared_with(&recorded).is_empty() {
        return Some(recorded);
    }
    match Config::load(file) {
        Ok(cfg) => {
            let now = Claims::of(&cfg);
            (now.state_root == recorded.state_root).then_some(now)
        }
        // Unreadable or invalid now: it cannot run jobs either, but may still have some.
        Err(_) => Some(recorded),
    }
}

/// The registry entry of the config whose state root is `state_root` (the test hosts remove
/// their own when dropped).
pub fn entry(state_root: &Path) -> PathBuf {
    Path::new(REGISTRY).join(entry_name(state_root))
}

/// The name of the entry of the config whose state root is `state_root`.
fn entry_name(state_root: &Path) -> String {
    format!(
        "{}.json",
        &crate::config::state_root_digest(state_root)[..16]
    )
}

fn read(path: &Path) -> Option<Claims> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn write(path: &Path, claims: &Claims) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(claims).map_err(std::io::Error::other)?;
    crate::atomic_file::write(path, &json, crate::atomic_file::Options::PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file under `root` with its own state root `name` (and builds root in it,
    /// unless `extra` names one) and `extra` settings, without `image:` jobs (so without
    /// subordinate ids) unless `extra` is empty.
    fn config(root: &Path, name: &str, extra: &str) -> Config {
        let file = root.join(format!("{name}.toml"));
        let state = root.join(name);
        fs::create_dir_all(&state).unwrap();
        let mut text = format!("state_root = \"{}\"\n{extra}", state.display());
        if !extra.contains("builds_root") {
            text.insert_str(
                0,
                &format!("builds_root = \"{}/builds\"\n", state.display()),
            );
        }
        if !extra.is_empty() {
            text.push_str("\n[images]\nenabled = false\n");
        }
        fs::write(&file, text).unwrap();
        Config::load(&file).unwrap()
    }

    #[test]
    fn a_config_in_use_that_shares_ids_refuses_both_until_one_is_mended_or_gone() {
        let root = tempfile::tempdir().unwrap();
        let registry = root.path().join("run/configs");
        // Sharing a table is fine (its chains are per uid).
        let same_table = "\n[network]\ntable = \"t\"\n";
        let a = config(
            root.path(),
            "a",
            &format!("job_uid_range = [300000, 300999]{same_table}"),
        );
        claim_in(&registry, &a).unwrap();
        claim_in(&registry, &a).expect("a config never clashes with itself");

        let b_extra = format!("job_uid_range = [300500, 301499]{same_table}");
        let b = config(root.path(), "b", &b_extra);
        let err = claim_in(&registry, &b).unwrap_err().to_string();
        assert!(err.contains("a.toml (state_root"), "{err}");
        assert!(
            err.contains("ids 300500-300999 (job_uid_range of both)"),
            "{err}"
        );
        assert!(
            err.contains("if ") && err.contains("a.toml is no longer used"),
            "{err}"
        );
        assert!(matches!(claim_in(&registry, &b), Err(Error::Config { .. })));
        // The refused config stays recorded, so the one that was first is refused too.
        let err = claim_in(&registry, &a).unwrap_err().to_string();
        assert!(err.contains("b.toml"), "{err}");

        // b's operator mends its range: a's next prepare reads b's file again.
        let b_file = root.path().join("b.toml");
        let mended = fs::read_to_string(&b_file)
            .unwrap()
            .replace("300500, 301499", "301000, 301999");
        fs::write(&b_file, mended).unwrap();
        claim_in(&registry, &a).unwrap();
        let b = Config::load(&b_file).unwrap();
        claim_in(&registry, &b).unwrap();

        // A config sharing a's builds_root; then its file goes: its entry goes with it.
        let builds = format!("builds_root = \"{}/a/builds\"\n", root.path().display());
        let c = config(
            root.path(),
            "c",
            &format!("job_uid_range = [400000, 400999]\n{builds}"),
        );
        let err = claim_in(&registry, &c).unwrap_err().to_string();
        assert!(err.contains("shares builds_root"), "{err}");
        assert!(claim_in(&registry, &a).is_err());
        fs::remove_file(root.path().join("c.toml")).unwrap();
        claim_in(&registry, &a).unwrap();
        assert_eq!(
            fs::read_dir(&registry).unwrap().count(),
            2,
            "c's entry is removed"
        );
    }

    #[test]
    fn check_finds_clashing_configs_beside_its_own_before_any_job() {
        let root = tempfile::tempdir().unwrap();
        let a = config(root.path(), "a", "");
        config(root.path(), "b", "");
        // Not an executor config: skipped.
        fs::write(
            root.path().join("runner.toml"),
            "concurrent = 4\n[[runners]]\nname = \"x\"\n",
        )
        .unwrap();
        let registry = root.path().join("run/configs");
        let found = clashes_in(&registry, &a, &root.path().join("a.toml"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].entry.is_none());
        assert!(found[0].config.as_deref().unwrap().ends_with("b.toml"));
        let shared = found[0].shared.join(", ");
        assert!(
            shared.contains("job_uid_range of both") && shared.contains("job_subid_range of both"),
            "{shared}"
        );
        assert!(found[0].fix().contains("delete it"));
        // Once b is in use, the registry names it, and only once.
        let b = Config::load(&root.path().join("b.toml")).unwrap();
        assert!(
            claim_in(&registry, &b).is_ok(),
            "b's first prepare sees no entry of a"
        );
        let found = clashes_in(&registry, &a, &root.path().join("a.toml"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].entry.is_some(), "{found:?}");
    }
}
