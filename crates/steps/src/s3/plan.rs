//! What to transfer and delete, decided from listings alone (pure, no I/O).

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};

/// One file or object, named by its path relative to the transfer's root (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path (local) or key relative to the prefix (S3).
    pub rel: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (local) or LastModified (S3), whole seconds since the epoch.
    pub mtime: i64,
    /// The sub-second part of the modification time, in nanoseconds, at the precision the
    /// side keeps (a local file system: nanoseconds; S3: none or milliseconds).
    pub mtime_ns: u32,
    /// S3 ETag without quotes, or a local file's MD5 computed in the same format.
    pub etag: Option<String>,
}

/// Whether a filter rule includes or excludes what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// `--include`.
    Include,
    /// `--exclude`.
    Exclude,
}

/// `--include`/`--exclude` rules with the AWS CLI's semantics: everything is included until a
/// rule says otherwise, rules apply in command-line order, and the last matching rule wins.
/// Patterns match the path relative to the source root; `*` also matches `/`.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    rules: Vec<(FilterKind, GlobMatcher)>,
}

impl Filters {
    /// Compile rules given in command-line order.
    pub fn new(rules: &[(FilterKind, String)]) -> Result<Self, String> {
        let rules = rules
            .iter()
            .map(|(kind, pattern)| {
                Glob::new(pattern)
                    .map(|g| (*kind, g.compile_matcher()))
                    .map_err(|e| format!("invalid filter pattern {pattern:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Whether `rel` is selected.
    pub fn selects(&self, rel: &str) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|(_, m)| m.is_match(rel))
            .is_none_or(|(kind, _)| *kind == FilterKind::Include)
    }

    /// Keep only selected entries.
    pub fn apply(&self, entries: Vec<Entry>) -> Vec<Entry> {
        entries
            .into_iter()
            .filter(|e| self.selects(&e.rel))
            .collect()
    }
}

/// How `sync` decides that a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Different size, or the source is newer than the destination (the AWS CLI's rule),
    /// compared at the precision each side keeps: a local file edited within the second of
    /// its upload is newer than the object's whole-second LastModified, so it is copied.
    SizeAndTime,
    /// Different size, or different modification times (`--exact-timestamps`: only for S3 →
    /// local, where downloads set the local time to the object's exactly).
    ExactTimestamps,
    /// Different size only (`--size-only`).
    SizeOnly,
    /// Different size or different content hash (ETag / MD5).
    Checksum,
}

impl Entry {
    /// The modification time as (seconds, nanoseconds), for comparisons.
    pub fn time(&self) -> (i64, u32) {
        (self.mtime, self.mtime_ns)
    }
}

/// What `sync` will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Source entries to copy, in name order.
    pub copy: Vec<Entry>,
    /// Destination entries to delete (only with `--delete`), in name order.
    pub delete: Vec<Entry>,
}

/// Whether `src` must be copied over `dst`.
pub fn changed(src: &Entry, dst: &Entry, compare: Compare) -> bool {
    if src.size != dst.size {
        return true;
    }
    match compare {
        Compare::SizeAndTime => src.time() > dst.time(),
        Compare::ExactTimestamps => src.time() != dst.time(),
        Compare::SizeOnly => false,
        Compare::Checksum => match (&src.etag, &dst.etag) {
            (Some(a), Some(b)) => !a.eq_ignore_ascii_case(b),
            _ => true,
        },
    }
}

/// Plan a sync of already filtered listings.
pub fn plan_sync(src: &[Entry], dst: &[Entry], compare: Compare, delete: bool) -> SyncPlan {
    let dst_by_rel: BTreeMap<&str, &Entry> = dst.iter().map(|e| (e.rel.as_str(), e)).collect();
    let mut copy: Vec<Entry> = src
        .iter()
        .filter(|s| {
            dst_by_rel
                .get(s.rel.as_str())
                .is_none_or(|d| changed(s, d, compare))
        })
        .cloned()
        .collect();
    copy.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut to_delete = Vec::new();
    if delete {
        let src_rels: std::collections::BTreeSet<&str> =
            src.iter().map(|e| e.rel.as_str()).collect();
        to_delete = dst
            .iter()
            .filter(|d| !src_rels.contains(d.rel.as_str()))
            .cloned()
            .collect();
        to_delete.sort_by(|a, b| a.rel.cmp(&b.rel));
    }
    SyncPlan {
        copy,
        delete: to_delete,
    }
}

/// Part size a multipart ETag `<md5>-<parts>` of an object of `size` bytes was probably made
/// with: the tools' usual sizes first, then the smallest whole MiB that gives `parts` parts.
pub fn part_size_candidates(size: u64, parts: u64, ours: u64) -> Vec<u64> {
    const MIB: u64 = 1024 * 1024;
    let mut out = Vec::new();
    let mut push = |ps: u64| {
        if ps > 0 && size.div_ceil(ps) == parts && !out.contains(&ps) {
            out.push(ps);
        }
    };
    for ps in [ours, 8 * MIB, 16 * MIB, 5 * MIB, 50 * MIB, 64 * MIB] {
        push(ps);
    }
    if parts > 0 {
        push(size.div_ceil(parts).div_ceil(MIB) * MIB);
    }
    out
}

/// Split an ETag into its MD5 hex and multipart part count (`None` for a plain MD5).
pub fn parse_etag(etag: &str) -> Option<(String, Option<u64>)> {
    let etag = etag.trim_matches('"');
    let (hex, parts) = match etag.split_once('-') {
        Some((hex, n)) => (hex, Some(n.parse().ok()?)),
        None => (etag, None),
    };
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (hex.to_ascii_lowercase(), parts))
}

/// Human-readable size the way `aws s3 ls --human-readable` prints it.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} Bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parse a size such as `16MiB`, `8M`, `5242880`, `1GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rel: &str, size: u64, mtime: i64) -> Entry {
        Entry {
            rel: rel.into(),
            size,
            mtime,
            mtime_ns: 0,
            etag: None,
        }
    }

    fn filters(rules: &[(FilterKind, &str)]) -> Filters {
        Filters::new(
            &rules
                .iter()
                .map(|(k, p)| (*k, p.to_string()))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn later_filters_win() {
        use FilterKind::*;
        let f = filters(&[(Exclude, "*"), (Include, "*.txt")]);
        assert!(f.selects("a.txt"));
        assert!(f.selects("dir/sub/b.txt"), "* crosses /");
        assert!(!f.selects("a.bin"));
        // Reversed order: the exclude of everything comes last and wins.
        let f = filters(&[(Include, "*.txt"), (Exclude, "*")]);
        assert!(!f.selects("a.txt"));
        let f = filters(&[(Exclude, "logs/*")]);
        assert!(!f.selects("logs/x"));
        assert!(f.selects("data/logs.txt"));
        assert!(Filters::default().selects("anything"));
        assert!(Filters::new(&[(Include, "a[".into())]).is_err());
    }

    #[test]
    fn sync_copies_new_and_changed_only() {
        let src = vec![
            e("same", 1, 10),
            e("new", 1, 10),
            e("bigger", 2, 10),
            e("newer", 1, 20),
        ];
        let dst = vec![
            e("same", 1, 10),
            e("bigger", 1, 10),
            e("newer", 1, 10),
            e("extra", 1, 1),
        ];
        let plan = plan_sync(&src, &dst, Compare::SizeAndTime, false);
        let rels: Vec<_> = plan.copy.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["bigger", "new", "newer"]);
        assert!(plan.delete.is_empty());
        let plan = plan_sync(&src, &dst, Compare::SizeAndTime, true);
        assert_eq!(plan.delete, vec![e("extra", 1, 1)]);
        // An older source with the same size is not copied (the destination is newer).
        let plan = plan_sync(
            &[e("x", 1, 5)],
            &[e("x", 1, 9)],
            Compare::SizeAndTime,
            false,
        );
        assert!(plan.copy.is_empty());
    }

    #[test]
    fn an_edit_within_the_second_of_the_upload_is_copied() {
        // Uploaded at 12:00:00.7 (S3 keeps 12:00:00), edited at 12:00:00.9, same size.
        let mut local = e("x", 3, 1000);
        local.mtime_ns = 900_000_000;
        let remote = e("x", 3, 1000);
        assert!(changed(&local, &remote, Compare::SizeAndTime));
        // A download set the local time to the object's exactly: unchanged both ways.
        assert!(!changed(&remote, &remote.clone(), Compare::SizeAndTime));
        // --size-only ignores times; --exact-timestamps copies any difference.
        assert!(!changed(&local, &remote, Compare::SizeOnly));
        assert!(changed(&remote, &local, Compare::ExactTimestamps));
        assert!(!changed(&remote, &remote.clone(), Compare::ExactTimestamps));
        assert!(changed(&e("x", 4, 0), &remote, Compare::SizeOnly));
    }

    #[test]
    fn checksum_compare_ignores_times() {
        let mut a = e("x", 3, 100);
        let mut b = e("x", 3, 1);
        a.etag = Some("abc".into());
        b.etag = Some("ABC".into());
        assert!(!changed(&a, &b, Compare::Checksum));
        b.etag = Some("abd".into());
        assert!(changed(&a, &b, Compare::Checksum));
        b.etag = None;
        assert!(changed(&a, &b, Compare::Checksum));
    }

    #[test]
    fn etags_and_part_sizes() {
        let md5 = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            parse_etag(&format!("\"{md5}\"")),
            Some((md5.to_lowercase(), None))
        );
        assert_eq!(
            parse_etag(&format!("{md5}-3")),
            Some((md5.to_lowercase(), Some(3)))
        );
        assert_eq!(parse_etag("xyz"), None);
        const MIB: u64 = 1 << 20;
        let c = part_size_candidates(20 * MIB, 3, 16 * MIB);
        assert_eq!(c[0], 8 * MIB);
        assert!(c.iter().all(|ps| (20 * MIB).div_ceil(*ps) == 3));
        assert_eq!(part_size_candidates(20 * MIB, 2, 16 * MIB)[0], 16 * MIB);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5m").unwrap(), 5 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5XB").is_err());
        assert_eq!(human_size(10), "10 Bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
