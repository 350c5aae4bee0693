//! Which images a job may run in: pure, table-tested.
//!
//! A job's image reference is first made fully qualified the way the docker executor reads
//! it (`debian:12` is `docker.io/library/debian:12`), then matched against the globs of its
//! devstage (`[devstages.<n>] images`), or `[images] plain` for a job without one. In a glob
//! `*` matches within one path segment and `**` across segments (and the tag or digest).

use crate::config::Config;

/// The longest image reference a job may name, in bytes. A registry's repository names are at
/// most 255 characters and its tags 128 (a sha512 digest is 135), so no pullable reference
/// comes close; a longer one is refused before it is matched, and never copied into the job
/// log or the audit record.
pub const MAX_REFERENCE: usize = 1024;

/// A refused image: the rule that refused it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The config key, e.g. `devstages.client_prod.images`.
    pub rule: String,
    /// Why, naming the image.
    pub reason: String,
}

/// `reference` fully qualified: registry host, repository path, then `:tag` and/or `@digest`
/// (a reference with neither gets `:latest`).
pub fn qualify(reference: &str) -> String {
    let reference = reference.trim();
    let (first, rest) = match reference.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (reference, None),
    };
    let is_host = |s: &str| s.contains('.') || s.contains(':') || s == "localhost";
    let mut full = match rest {
        Some(rest) if is_host(first) => format!("{first}/{rest}"),
        Some(_) => format!("docker.io/{reference}"),
        None => format!("docker.io/library/{reference}"),
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// The registry host of a qualified reference.
pub fn registry_of(qualified: &str) -> &str {
    qualified.split('/').next().unwrap_or("")
}

/// Is `reference` pinned by digest (`name@sha256:<64 hex>`)?
pub fn has_digest(reference: &str) -> bool {
    reference
        .rsplit_once("@sha256:")
        .is_some_and(|(_, hex)| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Does `text` match `glob` (`*` within a `/` segment, `**` across)?
///
/// The reference is the job's, so it is matched by the NFA engines (`pattern_match`), in time
/// linear in its length: a backtracking match took time growing with the reference's length to
/// the power of the glob's stars (a 16,000-byte reference against a two-star glob, 0.4 s).
pub fn glob_match(glob: &str, text: &str) -> bool {
    // A glob too large to compile matches nothing: a refusal, never a grant.
    crate::pattern_match::full_regex(&glob_regex(glob), text).unwrap_or(false)
}

/// `glob` as a regex: `**` is any text, `*` any text without `/`, the rest literal.
fn glob_regex(glob: &str) -> String {
    glob.split("**")
        .map(|part| {
            part.split('*')
                .map(regex_syntax::escape)
                .collect::<Vec<_>>()
                .join("[^/]*")
        })
        .collect::<Vec<_>>()
        .join("(?s:.*)")
}

/// The globs and digest rule for a job of `devstage` (None: a plain job), with the rule's name.
fn rules<'a>(cfg: &'a Config, devstage: Option<&str>) -> (String, Option<&'a [String]>, bool) {
    match devstage.and_then(|d| cfg.devstages.get(d).map(|s| (d, s))) {
        Some((name, stage)) => (
            format!("devstages.{name}"),
            stage.images.as_deref(),
            stage.require_digest,
        ),
        None => ("images".into(), Some(cfg.images.plain.as_slice()), false),
    }
}

/// May a job of `devstage` run in `reference`? Every rule in order; the first refusal.
pub fn check(cfg: &Config, devstage: Option<&str>, reference: &str) -> Result<(), Refusal> {
    evaluate(cfg, devstage, reference)
        .into_iter()
        .find_map(|(rule, verdict)| verdict.err().map(|reason| Refusal { rule, reason }))
        .map_or(Ok(()), Err)
}

/// Every image rule for a job of `devstage` and its verdict (for `policy explain`).
pub fn evaluate(
    cfg: &Config,
    devstage: Option<&str>,
    reference: &str,
) -> Vec<(String, Result<String, String>)> {
    let qualified = qualify(reference);
    let (prefix, globs, require_digest) = rules(cfg, devstage);
    let mut out = Vec::new();
    if !cfg.images.enabled {
        out.push((
            "images.enabled".into(),
            Err(format!(
                "image {reference} requested, but this runner runs no images"
            )),
        ));
    }
    let key = if prefix == "images" {
        "images.plain".to_string()
    } else {
        format!("{prefix}.images")
    };
    if reference.len() > MAX_REFERENCE {
        out.push((
            key,
            Err(format!(
                "the image reference is {} bytes long; at most {MAX_REFERENCE} are accepted \
                 (a registry's repository names are at most 255 characters, its tags 128)",
                reference.len()
            )),
        ));
        return out;
    }
    match globs {
        None => out.push((key, Ok("any image (no images list)".into()))),
        Some(globs) => {
            let hit = globs.iter().find(|g| glob_match(g, &qualified));
            out.push((
                key,
                match hit {
                    Some(g) => Ok(format!("{qualified} matches {g:?}")),
                    None => Err(format!("image {qualified} matches none of {globs:?}")),
                },
            ));
        }
    }
    if require_digest {
        out.push((
            format!("{prefix}.require_digest"),
            if has_digest(reference) {
                Ok("pinned by digest".into())
            } else {
                Err(format!(
                    "image {reference} is not pinned by digest (name@sha256:...)"
                ))
            },
        ));
    }
    out
}

/// The pull policy a job gets: the first it asks for that `[images] allowed_pull_policies`
/// allows (GitLab sends a list), or `[images] pull_policy` when it asks for none.
pub fn pull_policy(cfg: &Config, asked: &[String]) -> Result<String, Refusal> {
    if asked.is_empty() {
        return Ok(cfg.images.pull_policy.clone());
    }
    asked
        .iter()
        .find(|p| cfg.images.allowed_pull_policies.contains(p))
        .cloned()
        .ok_or_else(|| Refusal {
            rule: "images.allowed_pull_policies".into(),
            reason: format!(
                "pull_policy {asked:?} is not allowed here (allowed: {:?})",
                cfg.images.allowed_pull_policies
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_qualified_like_the_docker_executor() {
        for (given, want) in [
            ("debian", "docker.io/library/debian:latest"),
            ("debian:12", "docker.io/library/debian:12"),
            ("python:3.12", "docker.io/library/python:3.12"),
            ("group/app", "docker.io/group/app:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000/a/b:1"),
            (
                "registry.example.com/data-ml/x@sha256:00",
                "registry.example.com/data-ml/x@sha256:00",
            ),
        ] {
            assert_eq!(qualify(given), want, "{given}");
        }
    }

    #[test]
    fn globs_cross_segments_only_with_two_stars() {
        let cases = [
            (
                "registry.example.com/data-ml/**",
                "registry.example.com/data-ml/a/b:1",
                true,
            ),
            (
                "registry.example.com/data-ml/**",
                "registry.example.com/data-mlx/a:1",
                false,
            ),
            (
                "registry.example.com/data-ml/*",
                "registry.example.com/data-ml/a:1",
                true,
            ),
            (
                "registry.example.com/data-ml/*",
                "registry.example.com/data-ml/a/b:1",
                false,
            ),
            (
                "docker.io/library/debian:*",
                "docker.io/library/debian:12",
                true,
            ),
            ("**", "anything/at/all:1", true),
            (
                "registry.example.com/**",
                "evil.com/registry.example.com/x:1",
                false,
            ),
            // `**` crosses segments wherever it stands; three stars are `**` then `*`.
            (
                "registry.example.com/team**",
                "registry.example.com/team/a/b:1",
                true,
            ),
            (
                "registry.example.com/***",
                "registry.example.com/a/b:1",
                true,
            ),
            ("r.io/**/app:*", "r.io/a/b/app:1", true),
            ("r.io/**/app:*", "r.io/app:1", false),
            ("r.io/*/app:v*", "r.io/a/app:v2", true),
            ("r.io/*/app:v*", "r.io/a/app:2", false),
            // Everything but the stars is literal, regex characters included.
            ("r.io/a.b:1", "r.io/axb:1", false),
            ("r.io/a+b:(1)", "r.io/a+b:(1)", true),
            ("r.io/x@sha256:*", "r.io/x@sha256:abc", true),
            ("", "", true),
            ("", "r.io/x:1", false),
        ];
        for (g, t, want) in cases {
            assert_eq!(glob_match(g, t), want, "{g} vs {t}");
            assert_eq!(
                backtracking(g, t),
                want,
                "the matcher this replaced: {g} vs {t}"
            );
        }
    }

    /// The backtracking matcher `glob_match` replaced, kept as the oracle of what the dialect
    /// means.
    fn backtracking(glob: &str, text: &str) -> bool {
        fn go(g: &[u8], t: &[u8]) -> bool {
            match g.first() {
                None => t.is_empty(),
                Some(b'*') if g.get(1) == Some(&b'*') => {
                    (0..=t.len()).any(|i| go(&g[2..], &t[i..]))
                }
                Some(b'*') => {
                    for i in 0..=t.len() {
                        if go(&g[1..], &t[i..]) {
                            return true;
                        }
                        if t.get(i) == Some(&b'/') {
                            break;
                        }
                    }
                    false
                }
                Some(c) => t.first() == Some(c) && go(&g[1..], &t[1..]),
            }
        }
        go(glob.as_bytes(), text.as_bytes())
    }

    #[test]
    fn every_glob_of_stars_and_slashes_means_what_it_meant() {
        // Every glob and text of up to 4 symbols from the characters that matter (`:` and `@`
        // are literals like `a`).
        fn all(alphabet: &[char], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let globs = all(&['*', '/', 'a'], 4);
        let texts = all(&['/', 'a', 'b'], 4);
        for g in &globs {
            for t in &texts {
                assert_eq!(glob_match(g, t), backtracking(g, t), "{g:?} vs {t:?}");
            }
        }
    }

    #[test]
    fn an_overlong_reference_is_refused_by_length_without_being_quoted() {
        let cfg = Config::parse("[images]\nplain = [\"r.io/**\"]\n").unwrap();
        let at_most = format!("r.io/{}:1", "a".repeat(MAX_REFERENCE - 7));
        assert_eq!(at_most.len(), MAX_REFERENCE);
        check(&cfg, None, &at_most).unwrap();
        let over = format!("r.io/{}:1", "a".repeat(MAX_REFERENCE - 6));
        let refusal = check(&cfg, None, &over).unwrap_err();
        assert_eq!(refusal.rule, "images.plain");
        assert!(
            refusal.reason.contains("is 1025 bytes long; at most 1024"),
            "{refusal:?}"
        );
        assert!(!refusal.reason.contains("aaaa"), "{refusal:?}");
    }

    #[test]
    fn a_huge_reference_against_a_many_star_glob_is_answered() {
        // Backtracking took hours here (length to the power of the stars); the NFA is linear.
        let reference = format!("r.io/{}", ":".repeat(1 << 20));
        assert!(!glob_match("r.io/*:*:*:*:x", &reference));
        let deep = format!("r.io/{}", "a/".repeat(1 << 19));
        assert!(!glob_match("r.io/**/**/**/*:v*", &deep));
    }

    #[test]
    fn digests_are_64_hex() {
        let hex = "a".repeat(64);
        assert!(has_digest(&format!("r/x@sha256:{hex}")));
        assert!(!has_digest("r/x:1"));
        assert!(!has_digest("r/x@sha256:abc"));
    }
}
