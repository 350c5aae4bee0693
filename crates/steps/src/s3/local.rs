//! The local side, without the network: walking local trees into entries, and every checksum
//! this step computes (MD5 for Content-MD5 and ETags, CRC32 for multipart parts, the ETag a
//! local file would have for `sync --checksum`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use md5::{Digest, Md5};

use super::error::S3Error;
use super::plan::{Entry, parse_etag, part_size_candidates};

/// Every regular file under `root` (following symlinks, never looping), relative paths with
/// `/` separators, sorted.
pub fn walk_local(root: &Path) -> Result<Vec<(Entry, PathBuf)>, S3Error> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let meta = std::fs::metadata(&dir)
            .map_err(|e| S3Error::local(&dir, "cannot read directory", e))?;
        use std::os::unix::fs::MetadataExt;
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| S3Error::local(&dir, "cannot read directory", e))?;
        for item in rd {
            let item = item.map_err(|e| S3Error::local(&dir, "cannot read directory", e))?;
            let path = item.path();
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                return Err(S3Error::local(
                    &path,
                    "file name is not UTF-8 and cannot be an S3 key",
                    std::io::Error::from(std::io::ErrorKind::InvalidData),
                ));
            };
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(m) = std::fs::metadata(&path) else {
                continue; // dangling symlink
            };
            if m.is_dir() {
                stack.push((path, child_rel));
            } else if m.is_file() {
                let since = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .unwrap_or_default();
                out.push((
                    Entry {
                        rel: child_rel,
                        size: m.len(),
                        mtime: since.as_secs() as i64,
                        mtime_ns: since.subsec_nanos(),
                        etag: None,
                    },
                    path,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.rel.cmp(&b.0.rel));
    Ok(out)
}

/// A local file's ETag in the format of `remote_etag` (plain MD5, or multipart MD5-of-MD5s
/// with the part size that reproduces the part count), for `sync --checksum`.
pub fn local_etag(
    path: &Path,
    size: u64,
    remote_etag: Option<&str>,
    our_part_size: u64,
) -> Result<String, S3Error> {
    let read_err = |e| S3Error::local(path, "cannot read", e);
    let file = std::fs::File::open(path).map_err(read_err)?;
    let Some((remote_hex, Some(parts))) = remote_etag.and_then(parse_etag) else {
        return md5_range(&file, 0, size).map(hex::encode).map_err(read_err);
    };
    let mut first = None;
    for ps in part_size_candidates(size, parts, our_part_size) {
        let etag = multipart_etag(&file, size, ps).map_err(read_err)?;
        if etag.split('-').next() == Some(remote_hex.as_str()) {
            return Ok(etag);
        }
        first.get_or_insert(etag);
    }
    Ok(first.unwrap_or_default())
}

/// The multipart ETag (`<md5 of part MD5s>-<parts>`) of the first `size` bytes of `file`
/// uploaded in parts of `part_size`.
pub fn multipart_etag(file: &std::fs::File, size: u64, part_size: u64) -> std::io::Result<String> {
    let mut part_md5s = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = part_size.min(size - offset);
        part_md5s.push(md5_range(file, offset, len)?);
        offset += len;
    }
    let hex = hex::encode(md5(part_md5s.iter().map(|m| &m[..])));
    Ok(format!("{hex}-{}", part_md5s.len()))
}

/// [`local_etag`] off the async threads.
pub async fn local_etag_async(
    path: PathBuf,
    size: u64,
    remote_etag: Option<String>,
    our_part_size: u64,
) -> Result<String, S3Error> {
    tokio::task::spawn_blocking(move || {
        local_etag(&path, size, remote_etag.as_deref(), our_part_size)
    })
    .await
    .expect("hash panicked")
}

/// MD5 of `len` bytes of `file` at `offset`, read in 1 MiB pieces.
fn md5_range(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<[u8; 16]> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(h.finalize().into())
}

/// MD5 of `chunks` taken as one stream.
pub fn md5<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> [u8; 16] {
    let mut h = Md5::new();
    chunks.into_iter().for_each(|c| h.update(c));
    h.finalize().into()
}

/// The value of a Content-MD5 header for `data`: its MD5 in base64.
pub fn content_md5(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(md5([data]))
}

/// User metadata (`x-amz-meta-p3-crc32`) in which p3-executor's uploads record the CRC32 of
/// the whole content as read from the source (8 hex digits): a later download checks it at
/// CRC speed, in parallel ranges, on any S3-compatible server (servers that keep full-object
/// checksums are rare), where the ETag's MD5 costs ~1.7 s of CPU per GiB on one core.
pub const CRC32_METADATA: &str = "p3-crc32";

/// Object metadata key holding the source file's modification time when p3-executor uploaded
/// it (`<seconds>.<nanoseconds>`): lets `sync` rule out a change that S3's whole-second
/// `LastModified` cannot.
pub const MTIME_METADATA: &str = "p3-mtime";

/// [`MTIME_METADATA`]'s value for a modification time.
pub fn mtime_value(secs: i64, nanos: u32) -> String {
    format!("{secs}.{nanos:09}")
}

/// [`CRC32_METADATA`]'s value for `crc`.
pub fn crc32_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// A [`CRC32_METADATA`] value back; None for anything else.
pub fn parse_crc32_hex(text: &str) -> Option<u32> {
    (text.len() == 8)
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

/// The CRC32 of a whole file of `size` bytes: contiguous ranges, one per core (each at least
/// [`CRC_RANGE_MIN`]), read with `pread` in pieces small enough to stay in the CPU's cache and
/// CRC'd in parallel, then combined. An upload's pass before its first part costs the time of
/// one range instead of the whole file.
pub fn file_crc32(file: &std::fs::File, size: u64) -> std::io::Result<u32> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let ranges = size.div_ceil(CRC_RANGE_MIN).clamp(1, cores);
    let range = size.div_ceil(ranges).max(1);
    let crcs = std::thread::scope(|scope| {
        let tasks: Vec<_> = (0..size.div_ceil(range))
            .map(|i| {
                let (start, len) = (i * range, range.min(size - i * range));
                scope.spawn(move || range_crc32(file, start, len).map(|crc| (crc, len)))
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| t.join().expect("CRC thread panicked"))
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    Ok(combine_crc32(crcs))
}

/// Files smaller than this are CRC'd on one thread.
const CRC_RANGE_MIN: u64 = 8 << 20;

/// The CRC32 of `len` bytes of `file` from `start`, read in 256 KiB pieces.
fn range_crc32(file: &std::fs::File, start: u64, len: u64) -> std::io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], start + offset)?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher.finalize())
}

/// The CRC32 of a whole object from its parts' CRC32s (`(crc, len)` in part order).
pub fn combine_crc32(parts: impl IntoIterator<Item = (u32, u64)>) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    for (crc, len) in parts {
        whole.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
    }
    whole.finalize()
}

/// The value of an `x-amz-checksum-crc32` header for `data`: its big-endian CRC32 in base64.
pub fn crc32_base64(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32fast::hash(data).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_crcs_combine_into_the_whole_files() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = crc32fast::hash(&data);
        for part in [1usize, 1000, 33_333, 100_003] {
            let parts = data
                .chunks(part)
                .map(|c| (crc32fast::hash(c), c.len() as u64));
            assert_eq!(combine_crc32(parts), whole, "parts of {part}");
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &data).unwrap();
        assert_eq!(file_crc32(f.as_file(), data.len() as u64).unwrap(), whole);
        assert_eq!(parse_crc32_hex(&crc32_hex(whole)), Some(whole));
        assert_eq!(parse_crc32_hex("xyz"), None);
        // Large enough for ranges in parallel (a short last one), and empty.
        let big: Vec<u8> = (0..(2 * CRC_RANGE_MIN as u32 + 12_345))
            .map(|i| (i ^ (i >> 11)) as u8)
            .collect();
        std::fs::write(f.path(), &big).unwrap();
        let want = crc32fast::hash(&big);
        assert_eq!(file_crc32(f.as_file(), big.len() as u64).unwrap(), want);
        assert_eq!(file_crc32(f.as_file(), 0).unwrap(), crc32fast::hash(&[]));
    }

    #[test]
    fn etags_of_a_local_file_match_the_remote_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10u32).flat_map(|i| [i as u8; 100]).collect();
        std::fs::write(&path, &data).unwrap();
        let size = data.len() as u64;

        let plain = hex::encode(md5([&data[..]]));
        assert_eq!(local_etag(&path, size, None, 300).unwrap(), plain);
        assert_eq!(local_etag(&path, size, Some(&plain), 300).unwrap(), plain);

        // Four parts of 300 bytes: the MD5 of the parts' MD5s, then the part count.
        let parts: Vec<[u8; 16]> = data.chunks(300).map(|c| md5([c])).collect();
        let multi = hex::encode(md5(parts.iter().map(|m| &m[..])));
        let remote = format!("\"{multi}-4\"");
        assert_eq!(
            local_etag(&path, size, Some(&remote), 300).unwrap(),
            format!("{multi}-4")
        );
    }

    #[test]
    fn header_checksums_are_base64() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(crc32_base64(b"123456789"), "y/Q5Jg==");
    }
}
