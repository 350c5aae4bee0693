//! Which image builder runs a build: the one named (a name or a path), else the first of
//! buildah, podman, docker and kaniko found on the runner, and its kind, which decides the argv
//! dialect.

use std::path::{Path, PathBuf};

use super::ImageError;

/// Kind of image builder; decides the argv dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuilderKind {
    /// buildah (`bud`-style build, `push --digestfile`).
    Buildah,
    /// podman (same dialect as buildah).
    Podman,
    /// docker CLI (needs a daemon).
    Docker,
    /// kaniko `executor` (builds and pushes in one call).
    Kaniko,
}

impl BuilderKind {
    /// Kind from a builder name or path (`/kaniko/executor` is kaniko).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        let base = Path::new(name).file_name()?.to_str()?;
        match base {
            "buildah" => Some(Self::Buildah),
            "podman" => Some(Self::Podman),
            "docker" => Some(Self::Docker),
            "kaniko" | "executor" => Some(Self::Kaniko),
            _ => None,
        }
    }
}

/// Find the builder: the named one (name or path), else the first of buildah, podman, docker,
/// kaniko's `/kaniko/executor`.
pub(crate) fn find_builder(named: Option<&str>) -> Result<(PathBuf, BuilderKind), ImageError> {
    if let Some(name) = named {
        let kind = BuilderKind::from_name(name).ok_or_else(|| {
            ImageError::Builder(format!(
                "unknown builder {name:?}: use buildah, podman, docker, kaniko or a path ending in one of them (or executor)"
            ))
        })?;
        let lookup = if name == "kaniko" { "executor" } else { name };
        let path = which::which(lookup)
            .or_else(|_| {
                if kind == BuilderKind::Kaniko {
                    which::which("/kaniko/executor")
                } else {
                    Err(which::Error::CannotFindBinaryPath)
                }
            })
            .map_err(|_| {
                ImageError::Builder(format!("builder {name:?} is not installed on this runner"))
            })?;
        return Ok((path, kind));
    }
    for (name, kind) in [
        ("buildah", BuilderKind::Buildah),
        ("podman", BuilderKind::Podman),
        ("docker", BuilderKind::Docker),
        ("/kaniko/executor", BuilderKind::Kaniko),
    ] {
        if let Ok(path) = which::which(name) {
            return Ok((path, kind));
        }
    }
    Err(ImageError::Builder(
        "no image builder on this runner: install buildah (apt-get install -y buildah), podman, docker or kaniko"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_kind_from_names() {
        assert_eq!(
            BuilderKind::from_name("/usr/bin/buildah"),
            Some(BuilderKind::Buildah)
        );
        assert_eq!(
            BuilderKind::from_name("/kaniko/executor"),
            Some(BuilderKind::Kaniko)
        );
        assert_eq!(BuilderKind::from_name("nerdctl"), None);
        assert!(find_builder(Some("nerdctl")).is_err());
    }
}
