//! One match of a config pattern against one value: a project glob or an anchored ref regex.
//!
//! Policy matches each pattern once per process (`prepare` decides one job), so building the
//! matcher is the whole cost. `regex::Regex::new` and `globset`'s `compile_matcher` both
//! build a full DFA up front, which pays off over many matches and is most of a one-off
//! match's time (about 50 µs of a glob, 110 µs of a `\d` tag pattern). These build only the
//! NFA and match with the bounded backtracker or the PikeVM: the same regex-automata engine and
//! syntax, so the same answers, at a fifth to a half of the cost.

use regex_automata::meta::{BuildError, Config, Regex};
use regex_automata::util::syntax;

/// The regex engines' size limit, as `regex` and `globset` set it.
const NFA_SIZE_LIMIT: usize = 10 << 20;

/// The engines that need no up-front DFA: the bounded backtracker for short values, the
/// PikeVM otherwise.
fn one_shot() -> Config {
    Regex::config()
        .nfa_size_limit(Some(NFA_SIZE_LIMIT))
        .dfa(false)
        .onepass(false)
        .hybrid(false)
}

/// Whether `text` matches the glob `pattern`, where `*` and `?` never cross a `/`
/// (`client/*` does not admit `client/forks/evil`; `**` does cross).
pub(crate) fn glob(pattern: &str, text: &str) -> Result<bool, String> {
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| e.to_string())?;
    // The syntax and matching options `globset` compiles its regex with.
    let regex = Regex::builder()
        .syntax(syntax::Config::new().utf8(false).dot_matches_new_line(true))
        .configure(one_shot().utf8_empty(false))
        .build(glob.regex())
        .map_err(|e| describe(&e))?;
    Ok(regex.is_match(text))
}

/// Whether the whole of `text` matches the regex `pattern`, even if the pattern forgets
/// `^`/`$`: a prod tag pattern `v\d+` must not admit `not-v1`. Syntax as `regex::Regex`.
pub(crate) fn full_regex(pattern: &str, text: &str) -> Result<bool, String> {
    let regex = Regex::builder()
        .configure(one_shot())
        .build(&format!("^(?:{pattern})$"))
        .map_err(|e| describe(&e))?;
    Ok(regex.is_match(text))
}

/// A build error as `regex` words it: the syntax error itself when there is one (the meta
/// engine's own text only names the pattern's index).
fn describe(e: &BuildError) -> String {
    match e.syntax_error() {
        Some(syntax) => syntax.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern, value, match?) for globs, each also checked against `globset` itself.
    const GLOBS: &[(&str, &str, bool)] = &[
        ("data-ml/*", "data-ml/bench", true),
        ("data-ml/*", "data-ml/forks/evil", false),
        ("data-ml/*", "data-ml/", true),
        ("data-ml/*", "other/bench", false),
        ("client/**", "client/forks/evil", true),
        ("client/**/x", "client/a/b/x", true),
        ("*/models", "team/models", true),
        ("*/models", "team/sub/models", false),
        ("team/model-?", "team/model-a", true),
        ("team/model-?", "team/model-/", false),
        ("team/{a,b}", "team/b", true),
        ("team/{a,b}", "team/c", false),
        ("team/[ab]x", "team/bx", true),
        ("team/[!ab]x", "team/bx", false),
        ("Team/X", "team/x", false),
        ("exact/path", "exact/path", true),
        ("exact/path", "exact/path/more", false),
        ("", "", true),
        ("ünï/*", "ünï/cödé", true),
    ];

    #[test]
    fn globs_match_as_globset_matches_them() {
        for &(pattern, text, want) in GLOBS {
            let globset = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .unwrap()
                .compile_matcher()
                .is_match(text);
            assert_eq!(globset, want, "the table is wrong: {pattern:?} {text:?}");
            assert_eq!(glob(pattern, text), Ok(want), "{pattern:?} {text:?}");
        }
    }

    /// (pattern, value, whole match?), each also checked against `regex` itself.
    const REGEXES: &[(&str, &str, bool)] = &[
        (r"v\d+", "v1", true),
        (r"v\d+", "not-v1", false),
        (r"v\d+", "v1-rc", false),
        (r"v\d+\.\d+\.\d+", "v1.2.3", true),
        (r"v\d+\.\d+\.\d+", "v1.2.3.4", false),
        (r"^v\d+$", "v12", true),
        (r"release/.*|main", "main", true),
        (r"release/.*|main", "mainline", false),
        (r"release/.*|main", "release/2026-12", true),
        (r"(?i)main", "MAIN", true),
        (r"\w+", "ünïcödé", true),
        (r"v\d+", "v١٢", true),
        (r"[a-z]+", "", false),
        (r"a*", "", true),
    ];

    #[test]
    fn ref_patterns_match_whole_names_as_regex_does() {
        for &(pattern, text, want) in REGEXES {
            let anchored = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
            assert_eq!(
                anchored.is_match(text),
                want,
                "the table is wrong: {pattern:?}"
            );
            assert_eq!(
                full_regex(pattern, text).unwrap(),
                want,
                "{pattern:?} {text:?}"
            );
        }
    }

    #[test]
    fn invalid_patterns_are_errors_not_matches() {
        assert!(glob("team/[a", "team/a").is_err());
        let err = full_regex(r"v(\d+", "v1").unwrap_err();
        assert!(err.contains("unclosed group"), "{err}");
    }
}
