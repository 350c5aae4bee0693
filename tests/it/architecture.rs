//! No file-level module cycle in the executor's `src/` (issue 20): if a module uses another
//! through `crate::…` or `super::…`, the other does not use it back, directly or round about.
//! A type both sides need lives in a leaf file of its own, imported by its defining path.
//!
//! A heuristic over the text, not the compiler's view: production code only (each file up to
//! its first `#[cfg(test)]`), comments dropped, `lib.rs`, `main.rs` and `bin/` left out. A path
//! names the longest module file it starts with; a name a module re-exports (`pub use`) is
//! followed to the file that defines it, so a re-export kept for other users is no edge. A
//! parent's use of its own children by their short names is the module tree, not an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`walls::cgroup`) to its production text, for every file under `src`.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts.join("::"), production(&text));
        }
    }
    out
}

/// The text up to the first `#[cfg(test)]`, without `//` comments.
fn production(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths of the use tree at the start of `s` (`a::b`, `a::{b, c::{d, e}}`), each with
/// `prefix` in front; `self` in a group names the group's base.
fn use_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut i = 0;
    loop {
        let rest = &s[i..];
        let word = rest.len() - rest.trim_start_matches(is_ident).len();
        if word > 0 {
            let w = &rest[..word];
            if w != "self" {
                path.push(w.to_string());
            }
            i += word;
        }
        let rest = &s[i..];
        if let Some(after) = rest.strip_prefix("::") {
            i += 2;
            if after.starts_with('{') {
                i += 1;
                loop {
                    i += s[i..].len() - s[i..].trim_start().len();
                    if s[i..].starts_with('}') {
                        return i + 1;
                    }
                    if s[i..].is_empty() {
                        return i;
                    }
                    let used = use_tree(&s[i..], &path, out);
                    // Something no path starts with (`*`): step over it.
                    if used == 0 && !s[i..].starts_with(',') {
                        i += s[i..].chars().next().map_or(0, char::len_utf8);
                    }
                    i += used;
                    i += s[i..].len() - s[i..].trim_start().len();
                    if s[i..].starts_with(',') {
                        i += 1;
                    }
                }
            }
            continue;
        }
        // ` as alias`, `*` and anything else end the path.
        let rest_trim = rest.trim_start();
        if let Some(alias) = rest_trim.strip_prefix("as ") {
            let a = alias.trim_start();
            i += rest.len() - a.len();
            i += a.len() - a.trim_start_matches(is_ident).len();
        }
        out.push(path);
        return i;
    }
}

/// Every path of `module`'s text that starts with `crate::` or `super::`, absolute.
fn references(module: &str, text: &str) -> Vec<Vec<String>> {
    let own: Vec<String> = module.split("::").map(String::from).collect();
    let mut out = Vec::new();
    let mut from = 0;
    while from < text.len() {
        let rest = &text[from..];
        let (Some(i), kind) = [rest.find("crate::"), rest.find("super::")]
            .into_iter()
            .enumerate()
            .filter_map(|(k, i)| i.map(|i| (i, k)))
            .min()
            .map_or((None, 0), |(i, k)| (Some(i), k))
        else {
            break;
        };
        let at = from + i;
        // A word of its own: not `$crate::` or `my_crate::`.
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == '$' || (kind == 1 && c == ':')) {
            from = at + 7;
            continue;
        }
        let (base, start) = if kind == 0 {
            (Vec::new(), at + "crate::".len())
        } else {
            let mut n = 0;
            let mut j = at;
            while text[j..].starts_with("super::") {
                n += 1;
                j += "super::".len();
            }
            (own[..own.len().saturating_sub(n)].to_vec(), j)
        };
        let used = use_tree(&text[start..], &base, &mut out);
        from = start + used.max(1);
    }
    out
}

/// What each module re-exports: name to the absolute path it stands for.
fn reexports(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut all = BTreeMap::new();
    for (module, text) in mods {
        let own: Vec<String> = module.split("::").map(String::from).collect();
        let mut names = BTreeMap::new();
        for stmt in text.split(';') {
            let stmt = stmt.trim();
            let Some(tree) = ["pub use ", "pub(crate) use "]
                .iter()
                .find_map(|p| stmt.strip_prefix(p))
            else {
                continue;
            };
            let tree = tree.trim();
            let mut paths = Vec::new();
            if let Some(t) = tree.strip_prefix("crate::") {
                use_tree(t, &[], &mut paths);
            } else if tree.starts_with("super::") {
                paths = references(module, tree);
            } else {
                // Relative to the module: one of its children.
                use_tree(tree, &own, &mut paths);
            }
            for p in paths {
                if let Some(name) = p.last() {
                    names.insert(name.clone(), p);
                }
            }
        }
        all.insert(module.clone(), names);
    }
    all
}

/// The module file that defines what `path` names (through re-exports), if one of ours.
fn resolve(
    path: &[String],
    mods: &BTreeMap<String, String>,
    reexp: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    depth: usize,
) -> Option<String> {
    let k = (1..=path.len())
        .rev()
        .find(|k| mods.contains_key(&path[..*k].join("::")))?;
    let module = path[..k].join("::");
    if depth < 8
        && let Some(name) = path.get(k)
        && let Some(target) = reexp.get(&module).and_then(|r| r.get(name))
        && target.as_slice() != path
    {
        let mut next = target.clone();
        next.extend_from_slice(&path[k + 1..]);
        return resolve(&next, mods, reexp, depth + 1).or(Some(module));
    }
    Some(module)
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph(mods: &BTreeMap<String, String>) -> Graph {
    let reexp = reexports(mods);
    let mut g = Graph::new();
    for (module, text) in mods {
        let edges = g.entry(module.clone()).or_default();
        for path in references(module, text) {
            if let Some(t) = resolve(&path, mods, &reexp, 0).filter(|t| t != module) {
                edges.insert(t);
            }
        }
    }
    g
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on.insert(v);
        let g = w.g;
        for t in g.get(v).into_iter().flatten() {
            let t = t.as_str();
            if !w.index.contains_key(t) {
                visit(w, t);
                let l = w.low[v].min(w.low[t]);
                w.low.insert(v, l);
            } else if w.on.contains(t) {
                let l = w.low[v].min(w.index[t]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut comp = Vec::new();
            while let Some(x) = w.stack.pop() {
                w.on.remove(x);
                comp.push(x.to_string());
                if x == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                w.out.push(comp);
            }
        }
    }
    let mut w = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.out
}

fn cycles_of(files: &[(&str, &str)]) -> Vec<Vec<String>> {
    let mods = files
        .iter()
        .map(|(m, t)| (m.to_string(), production(t)))
        .collect();
    cycles(&graph(&mods))
}

#[test]
fn the_check_finds_a_cycle_and_follows_reexports() {
    // error names a type of the wall, whose mod.rs uses error: a cycle.
    let knot = [
        ("error", "use crate::walls::{cgroup::CgroupError, other};"),
        ("walls", "pub mod cgroup;"),
        ("walls::cgroup", "use crate::error::Result;"),
    ];
    assert_eq!(cycles_of(&knot), [["error", "walls::cgroup"]]);
    // The type in a leaf, re-exported by the wall for other users: no cycle, even when error
    // names it through the re-export.
    let leaf = [
        ("error", "use crate::walls::cgroup::CgroupError;"),
        (
            "walls::cgroup",
            "pub use error::CgroupError;\nuse crate::error::Result;",
        ),
        ("walls::cgroup::error", "pub enum CgroupError {}"),
        (
            "walls::cgroup::v1",
            "use super::{error::CgroupError, Usage};",
        ),
    ];
    assert!(cycles_of(&leaf).is_empty(), "{:?}", cycles_of(&leaf));
    // super:: paths count, a test module and comments do not.
    let sup = [
        (
            "a",
            "use crate::a::b::X; // crate::c\n#[cfg(test)]\nuse crate::c::Y;",
        ),
        ("a::b", "fn f() -> super::super::c::Z {}"),
        ("c", "use crate::a::Q;"),
    ];
    assert_eq!(cycles_of(&sup), [["a", "a::b", "c"]]);
}

#[test]
fn no_production_module_cycle_in_the_executor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&modules(&src));
    let found = cycles(&g);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .map(|m| {
                    let to: Vec<&String> = g[m].iter().filter(|t| c.contains(t)).collect();
                    format!("  {m} -> {to:?}")
                })
                .collect();
            format!("{} modules:\n{}", c.len(), edges.join("\n"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "file-level module cycles in src/ (move what both sides need to a leaf file and import it by its defining path):\n{}",
        shown.join("\n")
    );
}
