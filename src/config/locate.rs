//! Where in the file a dotted key is, and which key an offset falls in: for the lines of
//! problem reports. Only used when there are problems, so loading a good config pays nothing.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The file's tables with their spans.
pub(crate) struct Locator<'i> {
    text: &'i str,
    root: Option<Spanned<DeTable<'i>>>,
}

impl<'i> Locator<'i> {
    /// Parse `text` once for any number of look-ups (no look-up succeeds if it does not parse).
    pub(crate) fn new(text: &'i str) -> Self {
        Self {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line of `key` (`accounts.corp.kerberos.kdcs`, array elements by index), or
    /// of the deepest table on its path that the file writes; None when not even its first
    /// table is in the file.
    pub(crate) fn line_of(&self, key: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        // None: the root table.
        let mut here: Option<&DeValue<'_>> = None;
        let mut found: Option<usize> = None;
        for segment in key.split('.') {
            let next = match here {
                None => key_value(root.get_ref(), segment),
                Some(DeValue::Table(t)) => key_value(t, segment),
                Some(DeValue::Array(items)) => segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (v.span().start, v.get_ref())),
                Some(_) => None,
            };
            let Some((offset, next)) = next else { break };
            found = Some(offset);
            here = Some(next);
        }
        self.line_at(found?)
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line_at(&self, offset: usize) -> Option<usize> {
        Some(self.text.get(..offset)?.matches('\n').count() + 1)
    }

    /// The dotted key whose key or value holds byte `offset` (the deepest one).
    pub(crate) fn key_at(&self, offset: usize) -> Option<String> {
        let root = self.root.as_ref()?;
        let mut path = Vec::new();
        in_table(root.get_ref(), offset, &mut path).then(|| path.join("."))
    }
}

/// The offset of `segment`'s key in `table`, and its value.
fn key_value<'t, 'i>(table: &'t DeTable<'i>, segment: &str) -> Option<(usize, &'t DeValue<'i>)> {
    table
        .get_key_value(segment)
        .map(|(k, v)| (k.span().start, v.get_ref()))
}

/// Whether `offset` is in an entry of `table`, pushing its path onto `path`.
fn in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        if in_value(v, offset, path) || k.span().contains(&offset) {
            return true;
        }
        path.pop();
    }
    false
}

/// Whether `offset` is in `value` (tables made by a header do not span their keys, so their
/// entries are searched whatever the span).
fn in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => in_table(t, offset, path) || value.span().contains(&offset),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                if in_value(item, offset, path) {
                    return true;
                }
                path.pop();
            }
            value.span().contains(&offset)
        }
        _ => value.span().contains(&offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "shell = \"bash\"\n\n[accounts.corp]\nprincipal = \"p\"\nkeytab = \"k\"\n\
                        [accounts.corp.kerberos]\nrealm = \"R\"\nkdcs = [\n  \"dc1\",\n  \"dc2:0\",\n]\n\
                        [network]\nallow = [{ host = \"x\" }]\n";

    #[test]
    fn keys_map_to_their_line_or_their_nearest_table() {
        let at = Locator::new(TEXT);
        // (key, line)
        let cases = [
            ("shell", Some(1)),
            ("accounts", Some(3)),
            ("accounts.corp", Some(3)),
            ("accounts.corp.keytab", Some(5)),
            ("accounts.corp.kerberos", Some(6)),
            ("accounts.corp.kerberos.realm", Some(7)),
            ("accounts.corp.kerberos.kdcs", Some(8)),
            ("accounts.corp.kerberos.kdcs.1", Some(10)),
            ("accounts.corp.kerberos.kdcs.7", Some(8)),
            // Not written: the nearest table that is.
            ("accounts.corp.kerberos.timeout_secs", Some(6)),
            ("accounts.corp.s3.profile", Some(3)),
            ("network.allow.0.host", Some(13)),
            ("identity.gitlab_url", None),
            ("", None),
        ];
        for (key, line) in cases {
            assert_eq!(at.line_of(key), line, "{key}");
        }
        assert_eq!(Locator::new("not = [toml").line_of("not"), None);
    }

    #[test]
    fn an_offset_maps_to_its_key() {
        let at = Locator::new(TEXT);
        let offset = |needle: &str| TEXT.find(needle).unwrap();
        // (where, key)
        let cases = [
            (offset("bash"), Some("shell")),
            (offset("keytab"), Some("accounts.corp.keytab")),
            (offset("dc2"), Some("accounts.corp.kerberos.kdcs.1")),
            (offset("host"), Some("network.allow.0.host")),
            (offset("\"x\""), Some("network.allow.0.host")),
        ];
        for (offset, key) in cases {
            assert_eq!(at.key_at(offset).as_deref(), key, "{offset}");
        }
    }
}
