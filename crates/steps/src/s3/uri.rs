//! `s3://bucket/key` locations and how keys map to local paths (pure).

use std::fmt;
use std::path::{Path, PathBuf};

/// An S3 location: a bucket and a key (possibly empty, possibly a prefix ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// Bucket name.
    pub bucket: String,
    /// Key or prefix, without the leading `/`.
    pub key: String,
}

impl S3Uri {
    /// Parse `s3://bucket[/key]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{text:?} is not an s3:// URI"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{text:?} has no bucket name"));
        }
        if !(3..=63).contains(&bucket.len())
            || !bucket.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            })
        {
            return Err(format!(
                "{bucket:?} is not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')"
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The same bucket with another key.
    pub fn with_key(&self, key: impl Into<String>) -> Self {
        Self {
            bucket: self.bucket.clone(),
            key: key.into(),
        }
    }

    /// Prefix to list for a recursive operation: the key as a "directory" (`a/b` → `a/b/`).
    pub fn dir_prefix(&self) -> String {
        dir_prefix(&self.key)
    }

    /// Last path segment of the key (`a/b/c.txt` → `c.txt`).
    pub fn basename(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or("")
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// `a/b` → `a/b/`; empty and `x/` stay as they are.
pub fn dir_prefix(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_string()
    } else {
        format!("{key}/")
    }
}

/// One side of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file or directory.
    Local(PathBuf),
    /// An S3 object or prefix.
    S3(S3Uri),
    /// `-`: standard input (as a source) or standard output (as a destination), as in
    /// `aws s3 cp`. A local file named `-` is written `./-`.
    Stdio,
}

impl Location {
    /// `s3://...` is S3, `-` stdin/stdout, anything else a local path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "-" {
            Ok(Location::Stdio)
        } else if text.starts_with("s3://") {
            S3Uri::parse(text).map(Location::S3)
        } else if text.is_empty() {
            Err("empty path".into())
        } else {
            Ok(Location::Local(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => u.fmt(f),
            Location::Stdio => f.write_str("-"),
        }
    }
}

/// Key for `rel` (a `/`-separated relative path) under `prefix` used as a directory.
pub fn join_key(prefix: &str, rel: &str) -> String {
    format!("{}{rel}", dir_prefix(prefix))
}

/// Local path for the relative key `rel` under `dir`, refusing anything that would land
/// outside `dir` (`..`, absolute paths) or cannot be a file name (empty segments, a trailing
/// `/`: "directory" marker objects).
pub fn local_path_for(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() || rel.ends_with('/') {
        return Err("is a directory marker, not a file".into());
    }
    let mut path = dir.to_path_buf();
    for seg in rel.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains('\0') {
            return Err(format!(
                "cannot be stored locally: path segment {seg:?} would escape or be empty"
            ));
        }
        path.push(seg);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        let u = S3Uri::parse("s3://my-bucket/a/b c+%/ü.txt").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.key, "a/b c+%/ü.txt");
        assert_eq!(u.basename(), "ü.txt");
        assert_eq!(u.to_string(), "s3://my-bucket/a/b c+%/ü.txt");
        assert_eq!(S3Uri::parse("s3://bkt").unwrap().key, "");
        assert_eq!(S3Uri::parse("s3://bkt/").unwrap().key, "");
        assert!(S3Uri::parse("s3://").is_err());
        assert!(S3Uri::parse("s3:///key").is_err());
        assert!(S3Uri::parse("s3://ab/key").is_err());
        assert!(S3Uri::parse("s3://Upper/key").is_err());
        assert!(S3Uri::parse("http://bkt/key").is_err());
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("./x").unwrap(),
            Location::Local(PathBuf::from("./x"))
        );
        assert!(matches!(
            Location::parse("s3://bkt/k").unwrap(),
            Location::S3(_)
        ));
        assert!(Location::parse("").is_err());
        assert_eq!(Location::parse("-").unwrap(), Location::Stdio);
        assert_eq!(
            Location::parse("./-").unwrap(),
            Location::Local(PathBuf::from("./-"))
        );
    }

    #[test]
    fn prefixes_and_keys() {
        assert_eq!(dir_prefix(""), "");
        assert_eq!(dir_prefix("a"), "a/");
        assert_eq!(dir_prefix("a/"), "a/");
        assert_eq!(join_key("", "x/y"), "x/y");
        assert_eq!(join_key("p", "x"), "p/x");
        assert_eq!(join_key("p/", "x"), "p/x");
    }

    #[test]
    fn local_paths_stay_inside_the_destination() {
        let d = Path::new("/dst");
        assert_eq!(local_path_for(d, "a/b c").unwrap(), Path::new("/dst/a/b c"));
        for bad in ["", "dir/", "../x", "a/../../x", "a//b", "/abs", "./x"] {
            assert!(local_path_for(d, bad).is_err(), "{bad}");
        }
    }
}
