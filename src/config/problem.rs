//! One thing wrong with a config: the dotted key it is about, and what is wrong and how to fix it.

use std::fmt;

/// A problem found while resolving the config. `key` is the dotted path of the setting
/// (`accounts.corp.kerberos.kdcs`), or of the nearest table when the setting is missing; the
/// loader turns it into a line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `audit.s3.bucket`.
    pub key: String,
    /// What is wrong and how to fix it, without the key.
    pub message: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Problem {
    /// A problem reported as text by a section validated in its own module (the walls,
    /// `[images]`, `[steps]`), whose messages start with their dotted key
    /// (`network.table = "x" is not ...`, `steps.p3.deploy: ...`): the key is split off when the
    /// text starts with one under `section`, else the problem is about `section` as a whole.
    pub(crate) fn from_text(section: &str, text: &str) -> Self {
        let end = text.find([' ', ':', '=']).unwrap_or(text.len());
        let (head, rest) = text.split_at(end);
        let is_key = head.starts_with(section)
            && head
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !is_key {
            return Self::new(section, text);
        }
        let rest = rest
            .strip_prefix(": ")
            .or_else(|| rest.strip_prefix(" = "))
            .or_else(|| rest.strip_prefix(' '))
            .unwrap_or(rest);
        Self::new(head, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_problem_is_split_at_its_key() {
        // (section, text, key, message)
        let cases = [
            (
                "network",
                "network.table = \"1\" is not a name",
                "network.table",
                "\"1\" is not a name",
            ),
            (
                "network",
                "network.resolvers: x is not an address",
                "network.resolvers",
                "x is not an address",
            ),
            (
                "network",
                "network.nft is empty: name it",
                "network.nft",
                "is empty: name it",
            ),
            (
                "steps",
                "steps.p3.deploy: unknown placeholder",
                "steps.p3.deploy",
                "unknown placeholder",
            ),
            (
                "job_subid_range",
                "job_subid_range [1, 2] must be",
                "job_subid_range",
                "[1, 2] must be",
            ),
            (
                "devstages.d.limits",
                "devstages.d.limits.cpu = -1 must be",
                "devstages.d.limits.cpu",
                "-1 must be",
            ),
            (
                "images",
                "[images] pull policy \"x\" is not one",
                "images",
                "[images] pull policy \"x\" is not one",
            ),
            (
                "limits",
                "something else entirely",
                "limits",
                "something else entirely",
            ),
        ];
        for (section, text, key, message) in cases {
            assert_eq!(
                Problem::from_text(section, text),
                Problem::new(key, message),
                "{text}"
            );
        }
    }
}
