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
