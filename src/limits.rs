//! Bounded reads: every file the executor reads on a job's behalf has a size limit, so a
//! job (or a runner fed a hostile payload) cannot make root allocate without bound.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest JOB_RESPONSE_FILE accepted (GitLab's payloads are a few hundred KiB).
pub const MAX_PAYLOAD_BYTES: u64 = 16 << 20;

/// Read `path` whole, refusing one larger than `limit` bytes without reading past the limit.
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("{what} {} cannot be read", path.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("{what} {} cannot be read", path.display()), e))?;
    if meta.is_dir() {
        return Err(Error::io(
            format!("{what} {} is a directory, not a file", path.display()),
            std::io::Error::from(std::io::ErrorKind::IsADirectory),
        ));
    }
    let too_large = || Error::TooLarge {
        what: what.to_string(),
        path: path.to_path_buf(),
        limit,
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    // The size can change under us (a pipe, a growing file): stop at limit + 1 either way.
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(format!("read {what} {}", path.display()), e))?;
    if out.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_refuses_beyond() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&f, 100, "test file").unwrap().len(), 100);
        let err = read_bounded(&f, 99, "test file").unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 99, .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("99-byte limit") && msg.contains("test file"),
            "{msg}"
        );
        assert_eq!(err.kind(), crate::error::FailureKind::System);
    }

    #[test]
    fn a_directory_or_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let msg = read_bounded(dir.path(), 10, "job script")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is a directory"), "{msg}");
        let msg = read_bounded(&dir.path().join("nope"), 10, "job script")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot be read"), "{msg}");
    }
}
