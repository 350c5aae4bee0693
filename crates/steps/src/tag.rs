//! Image naming and labelling rules (pure): `<registry>/<image>:<version>-<devstage>`.
//!
//! `<version>` is the release tag in a release-tag pipeline, else the short commit SHA. The
//! devstage is part of the tag because one git tag yields one image per devstage. The prod
//! devstage only builds from a release tag: that is checked here, before anything is built.

use std::collections::BTreeMap;

/// Label key for the devstage an image was built for.
pub(crate) const LABEL_DEVSTAGE: &str = "org.p3-executor.devstage";
/// Label key for the pipeline that built the image.
pub(crate) const LABEL_PIPELINE_URL: &str = "org.p3-executor.pipeline.url";

/// Why no image reference could be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TagError {
    /// The prod devstage was requested outside a release-tag pipeline.
    #[error(
        "devstage {devstage} builds only from a release tag matching {pattern}; this pipeline {found}. \
         Build {devstage} from a protected release tag (e.g. v1.2.3), or pick another devstage"
    )]
    ProdNeedsReleaseTag {
        /// The prod devstage.
        devstage: String,
        /// The configured release tag pattern.
        pattern: String,
        /// What the pipeline has instead.
        found: String,
    },
    /// A required input is missing.
    #[error("{0}")]
    Missing(String),
    /// The release tag pattern is not a valid regex.
    #[error("invalid release_tag_pattern {pattern:?}: {message}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// Regex error.
        message: String,
    },
}

/// Inputs of the naming decision.
#[derive(Debug, Clone)]
pub(crate) struct TagInput<'a> {
    /// Image repository, e.g. `registry.example.com/group/project` (`CI_REGISTRY_IMAGE`).
    pub(crate) repository: &'a str,
    /// `CI_COMMIT_TAG`, if this is a tag pipeline.
    pub(crate) commit_tag: Option<&'a str>,
    /// `CI_COMMIT_SHORT_SHA`.
    pub(crate) short_sha: Option<&'a str>,
    /// Devstage the image is built for.
    pub(crate) devstage: &'a str,
    /// The devstage that needs a release tag.
    pub(crate) prod_devstage: &'a str,
    /// Regex a release tag matches.
    pub(crate) release_tag_pattern: &'a str,
}

/// The decided image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageName {
    /// Repository (lower-cased: OCI repository names cannot hold capitals).
    pub(crate) repository: String,
    /// Tag, e.g. `v1.2.3-client_prod`.
    pub(crate) tag: String,
    /// Version part of the tag (release tag or short SHA), unsanitised.
    pub(crate) version: String,
    /// Whether the version is a release tag.
    pub(crate) is_release: bool,
}

impl ImageName {
    /// `repository:tag`.
    pub(crate) fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// Whether `tag` is a release tag under `pattern`.
pub(crate) fn is_release_tag(tag: Option<&str>, pattern: &str) -> Result<bool, TagError> {
    let re = regex::Regex::new(pattern).map_err(|e| TagError::BadPattern {
        pattern: pattern.into(),
        message: e.to_string(),
    })?;
    Ok(tag.is_some_and(|t| re.is_match(t)))
}

/// Decide the image name. A tag pipeline whose tag does not match the release pattern is not
/// a release: it gets the short SHA like a branch pipeline, so only real releases carry a
/// version-looking tag.
pub(crate) fn decide(input: &TagInput<'_>) -> Result<ImageName, TagError> {
    if input.devstage.is_empty() {
        return Err(TagError::Missing(
            "no devstage: pass --devstage or set P3_DEVSTAGE in the job".into(),
        ));
    }
    let is_release = is_release_tag(input.commit_tag, input.release_tag_pattern)?;
    if input.devstage == input.prod_devstage && !is_release {
        let found = match input.commit_tag {
            Some(t) => format!("has tag {t:?}, which does not match"),
            None => "is not a tag pipeline".into(),
        };
        return Err(TagError::ProdNeedsReleaseTag {
            devstage: input.devstage.into(),
            pattern: input.release_tag_pattern.into(),
            found,
        });
    }
    let version = match (is_release, input.commit_tag, input.short_sha) {
        (true, Some(t), _) => t.to_string(),
        (_, _, Some(sha)) => sha.to_string(),
        _ => {
            return Err(TagError::Missing(
                "no version: CI_COMMIT_SHORT_SHA is not set and this is not a release-tag pipeline"
                    .into(),
            ));
        }
    };
    let repository = input.repository.trim_end_matches('/').to_ascii_lowercase();
    if repository.is_empty() {
        return Err(TagError::Missing(
            "no image repository: set CI_REGISTRY_IMAGE, steps.image.registry or --image-name"
                .into(),
        ));
    }
    Ok(ImageName {
        repository,
        tag: sanitize_tag(&format!("{version}-{}", input.devstage)),
        version,
        is_release,
    })
}

/// Make `raw` a valid OCI tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Invalid characters become
/// `-` (so `feature/x` stays readable as `feature-x`), a leading `.` or `-` gets a `_` prefix,
/// and the result is cut to 128 characters.
pub(crate) fn sanitize_tag(raw: &str) -> String {
    let mut tag: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if tag.is_empty() || tag.starts_with(['.', '-']) {
        tag.insert(0, '_');
    }
    tag.truncate(128);
    tag
}

/// Facts that go into the image's labels.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelInput<'a> {
    /// `CI_PROJECT_URL`.
    pub(crate) source: Option<&'a str>,
    /// `CI_COMMIT_SHA`.
    pub(crate) revision: Option<&'a str>,
    /// RFC 3339 build time.
    pub(crate) created: &'a str,
    /// Release tag or short SHA.
    pub(crate) version: &'a str,
    /// Devstage.
    pub(crate) devstage: &'a str,
    /// `CI_PIPELINE_URL`.
    pub(crate) pipeline_url: Option<&'a str>,
}

/// OCI annotation labels (`org.opencontainers.image.*`) plus the devstage and pipeline URL.
/// Unknown facts are left out rather than labelled empty.
pub(crate) fn labels(input: &LabelInput<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.insert(k.to_string(), v.to_string());
        }
    };
    put("org.opencontainers.image.source", input.source);
    put("org.opencontainers.image.revision", input.revision);
    put("org.opencontainers.image.created", Some(input.created));
    put("org.opencontainers.image.version", Some(input.version));
    put(LABEL_DEVSTAGE, Some(input.devstage));
    put(LABEL_PIPELINE_URL, input.pipeline_url);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAT: &str = r"^v\d+\.\d+\.\d+$";

    fn input<'a>(tag: Option<&'a str>, devstage: &'a str) -> TagInput<'a> {
        TagInput {
            repository: "registry.example.com/Data/Scoring",
            commit_tag: tag,
            short_sha: Some("abc1234"),
            devstage,
            prod_devstage: "client_prod",
            release_tag_pattern: PAT,
        }
    }

    #[test]
    fn tag_rules_table() {
        // (commit tag, devstage, expected tag or error fragment)
        let cases: &[(Option<&str>, &str, Result<&str, &str>)] = &[
            (None, "client_dev", Ok("abc1234-client_dev")),
            (None, "client_uat", Ok("abc1234-client_uat")),
            (Some("v1.2.3"), "client_dev", Ok("v1.2.3-client_dev")),
            (Some("v1.2.3"), "client_prod", Ok("v1.2.3-client_prod")),
            // A tag that is not a release tag is versioned like a branch.
            (Some("try-this"), "client_dev", Ok("abc1234-client_dev")),
            (None, "client_prod", Err("is not a tag pipeline")),
            (
                Some("v1.2"),
                "client_prod",
                Err("has tag \"v1.2\", which does not match"),
            ),
            (Some("v1.2.3"), "", Err("no devstage")),
        ];
        for (tag, devstage, want) in cases {
            let got = decide(&input(*tag, devstage));
            match (want, got) {
                (Ok(w), Ok(name)) => {
                    assert_eq!(name.tag, *w, "{tag:?}/{devstage}");
                    assert_eq!(name.repository, "registry.example.com/data/scoring");
                }
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{tag:?}/{devstage}: {e}"),
                (w, g) => panic!("{tag:?}/{devstage}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn prod_refusal_names_the_pattern_and_what_to_do() {
        let err = decide(&input(None, "client_prod")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(PAT) && msg.contains("protected release tag"),
            "{msg}"
        );
    }

    #[test]
    fn sanitize_table() {
        let cases = [
            ("v1.2.3-client_dev", "v1.2.3-client_dev"),
            ("feature/x y;z", "feature-x-y-z"),
            (".hidden", "_.hidden"),
            ("-dash", "_-dash"),
            ("", "_"),
            ("ünï", "_-n-"),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_tag(raw), want, "{raw:?}");
        }
        assert_eq!(sanitize_tag(&"a".repeat(300)).len(), 128);
    }

    #[test]
    fn labels_carry_oci_keys_and_skip_unknowns() {
        let l = labels(&LabelInput {
            source: Some("https://gitlab.example.com/data/scoring"),
            revision: Some("abc1234def"),
            created: "2026-11-26T12:00:00Z",
            version: "v1.2.3",
            devstage: "client_uat",
            pipeline_url: None,
        });
        assert_eq!(l["org.opencontainers.image.version"], "v1.2.3");
        assert_eq!(l["org.opencontainers.image.revision"], "abc1234def");
        assert_eq!(l[LABEL_DEVSTAGE], "client_uat");
        assert!(!l.contains_key(LABEL_PIPELINE_URL));
        assert_eq!(l.len(), 5);
    }
}
