//! Where in `p3.toml` something is: a path of keys and array items, found from a byte offset
//! (a serde error's span) or leading to a span (a consistency problem's key), and shown as a
//! person reads it (`job "score": key resources.cpu`, line and column), through a second,
//! schema-free parse of the same text.

use super::valid_name;

/// One step of a path into the document: a key, or an item of an array (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// 1-based line and column (in characters) of byte offset `pos`.
pub(super) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// A key as TOML would spell it in a dotted path: bare when it can be, quoted otherwise.
pub(super) fn shown_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// The path a person reads: `job "score": key overrides.client_prod.schedule`, or
/// `key defaults.env` outside the jobs. A job is named by its `name` when it has a valid one
/// (`doc` is the parsed document), else by its position (`[[job]] #2`).
pub(super) fn shown_path(doc: Option<&toml::de::DeTable<'_>>, path: &[Seg]) -> String {
    let dotted = |segs: &[Seg]| {
        let mut s = String::new();
        for seg in segs {
            match seg {
                Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(&shown_key(k));
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    };
    match path {
        [Seg::Key(j), Seg::Index(i), rest @ ..] if j == "job" => {
            let name = doc
                .and_then(|d| entry(d, "job"))
                .and_then(|v| v.get_ref().as_array())
                .and_then(|a| a.get(*i))
                .and_then(|t| t.get_ref().as_table())
                .and_then(|t| entry(t, "name"))
                .and_then(|n| n.get_ref().as_str())
                .filter(|n| valid_name(n));
            let job = match name {
                Some(n) => format!("job {n:?}"),
                None => format!("[[job]] #{}", i + 1),
            };
            if rest.is_empty() {
                job
            } else {
                format!("{job}: key {}", dotted(rest))
            }
        }
        [] => String::new(),
        _ => format!("key {}", dotted(path)),
    }
}

pub(super) fn entry<'a, 'i>(
    table: &'a toml::de::DeTable<'i>,
    name: &str,
) -> Option<&'a toml::Spanned<toml::de::DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == name)
        .map(|(_, v)| v)
}

/// The deepest path whose key or value covers byte `pos`; false if none does.
pub(super) fn path_at_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    pos: usize,
    path: &mut Vec<Seg>,
) -> bool {
    use toml::de::DeValue;
    match value.get_ref() {
        DeValue::Table(t) if path_at_table(t, pos, path) => return true,
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                if path_at_value(item, pos, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    value.span().contains(&pos)
}

pub(super) fn path_at_table(
    table: &toml::de::DeTable<'_>,
    pos: usize,
    path: &mut Vec<Seg>,
) -> bool {
    for (k, v) in table {
        path.push(key(k.get_ref()));
        if k.span().contains(&pos) || path_at_value(v, pos, path) {
            return true;
        }
        path.pop();
    }
    false
}

/// Where `path` is written: the span of its last key (or of the array item).
pub(super) fn span_of(doc: &toml::de::DeTable<'_>, path: &[Seg]) -> Option<std::ops::Range<usize>> {
    let mut table = doc;
    let mut value: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
    let mut span = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if let Some(v) = value {
                    table = v.get_ref().as_table()?;
                }
                let (kspan, v) = table
                    .iter()
                    .find(|(name, _)| name.get_ref() == k)
                    .map(|(name, v)| (name.span(), v))?;
                span = Some(kspan);
                value = Some(v);
            }
            Seg::Index(i) => {
                let item = value?.get_ref().as_array()?.get(*i)?;
                span = Some(item.span());
                value = Some(item);
            }
        }
    }
    span
}
