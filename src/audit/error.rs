//! Why the audit log could not be written or read.

use std::path::{Path, PathBuf};

/// Why the audit log could not be written or read. A failed append is a host-side (system)
/// failure: no credential is handed out without its record.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {context}: {source}")]
    Io {
        /// The log or its directory.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log is damaged beyond a torn last append: complete records are affected, and those
    /// are never removed, so the chain cannot be continued (fail closed).
    #[error(
        "audit log {path} is damaged: {message}\n  nothing was removed, and no record can be appended to it\n  fix: inspect it with `p3-executor audit verify`, then move it aside and keep it as evidence (mv {path} {path}.damaged-$(date +%Y%m%dT%H%M%S)); the next record starts a new chain"
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// Where it is damaged (the line, when known) and how.
        message: String,
    },
}

impl From<AuditError> for crate::error::Error {
    /// Audit failures are the host's: a system failure.
    fn from(e: AuditError) -> Self {
        let msg = e.to_string();
        let source = match e {
            AuditError::Io { source, .. } => source,
            AuditError::Damaged { .. } => std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        };
        crate::error::Error::io("cannot write the audit record", source)
    }
}

/// Map an I/O error on the log at `path` while doing `context` to an [`AuditError`].
pub(crate) fn io(path: &Path, context: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io {
        path,
        context,
        source,
    }
}
