//! Names of shipped objects: `<prefix>/<host-id>/<chain>/<first_seq>-<last_seq>.jsonl`.
//!
//! Sequence numbers are zero-padded to 12 digits, so a listing (which S3 returns in key order)
//! is also seq order, and `start-after` the last key shipped lists exactly what came after it.

/// Where one batch of records lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchKey {
    /// The host's stable id (`<state_root>/host-id`).
    pub host_id: String,
    /// The chain: the first 16 hex digits of its first record's hash.
    pub chain: String,
    /// `seq` of the batch's first record.
    pub first: u64,
    /// `seq` of its last record.
    pub last: u64,
}

/// `prefix` without surrounding slashes, followed by one slash (empty for an empty prefix).
pub fn dir(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// The key prefix of one host's objects.
pub fn host_dir(prefix: &str, host_id: &str) -> String {
    format!("{}{host_id}/", dir(prefix))
}

/// The key prefix of one chain of one host.
pub fn chain_dir(prefix: &str, host_id: &str, chain: &str) -> String {
    format!("{}{chain}/", host_dir(prefix, host_id))
}

impl BatchKey {
    /// The object key under `prefix`.
    pub fn render(&self, prefix: &str) -> String {
        format!(
            "{}{:012}-{:012}.jsonl",
            chain_dir(prefix, &self.host_id, &self.chain),
            self.first,
            self.last
        )
    }

    /// Read a key under `prefix` back; None for anything that is not a batch (an operator's
    /// note, a foreign object), which verify reports rather than guesses at.
    pub fn parse(prefix: &str, key: &str) -> Option<BatchKey> {
        let rest = key.strip_prefix(&dir(prefix))?;
        let mut parts = rest.split('/');
        let (host_id, chain, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || host_id.is_empty() || chain.is_empty() {
            return None;
        }
        let (first, last) = name.strip_suffix(".jsonl")?.split_once('-')?;
        let digits = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(first) || !digits(last) {
            return None;
        }
        let (first, last) = (first.parse().ok()?, last.parse().ok()?);
        (1 <= first && first <= last).then(|| BatchKey {
            host_id: host_id.into(),
            chain: chain.into(),
            first,
            last,
        })
    }
}

/// `s3://bucket/prefix` → (bucket, prefix).
pub fn parse_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{uri:?} is not an s3://bucket/prefix URI"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{uri:?} names no bucket (s3://bucket/prefix)"));
    }
    Ok((bucket.into(), prefix.trim_matches('/').into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_in_seq_order() {
        let k = |first, last| BatchKey {
            host_id: "h1".into(),
            chain: "0123456789abcdef".into(),
            first,
            last,
        };
        for prefix in ["audit", "/audit/", "a/b", ""] {
            for key in [k(1, 1), k(2, 1000), k(999_999_999_999, 999_999_999_999)] {
                assert_eq!(BatchKey::parse(prefix, &key.render(prefix)), Some(key));
            }
        }
        assert_eq!(
            k(1, 9).render("audit"),
            "audit/h1/0123456789abcdef/000000000001-000000000009.jsonl"
        );
        assert!(k(9, 9).render("p") < k(10, 12).render("p"));
    }

    #[test]
    fn anything_else_is_not_a_batch() {
        for key in [
            "audit/h1/c/000000000001-000000000009.json",
            "audit/h1/c/1-9.jsonl",
            "audit/h1/c/000000000009-000000000001.jsonl",
            "audit/h1/c/000000000000-000000000001.jsonl",
            "audit/h1/000000000001-000000000009.jsonl",
            "audit/h1/c/x/000000000001-000000000009.jsonl",
            "other/h1/c/000000000001-000000000009.jsonl",
            "audit/README",
        ] {
            assert_eq!(BatchKey::parse("audit", key), None, "{key}");
        }
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("s3://b/p/q/").unwrap(),
            ("b".into(), "p/q".into())
        );
        assert_eq!(parse_uri("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_uri("b/p").is_err());
        assert!(parse_uri("s3:///p").is_err());
    }
}
