//! Downloads of objects to local files, checked as the bytes arrive.
//!
//! An object is fetched as one GetObject up to the part size, above it as parallel ranged GETs
//! pinned to one version with If-Match. Every range streams to its place in a temporary file
//! with positional writes, one batch written (and hashed) off the async threads while the next
//! arrives; the file is renamed into place only when complete and checked, so the destination
//! is never a partial or unverified file.
//!
//! What the bytes are checked against ([`Check`]) is chosen from what the server said about
//! the object, cheapest first: a full-object CRC32 (ranges CRC'd in parallel, combined); a
//! multipart ETag (ranges aligned with the upload's parts, an MD5 per part in parallel, the
//! MD5 of those); a plain ETag (the MD5 of the whole, which cannot be split: hashed in order
//! by one thread that follows the download through the page cache). A mismatch downloads the
//! object again, up to [`INTEGRITY_ATTEMPTS`] times.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use bytes::Bytes;
use md5::{Digest, Md5};

use super::ctx::{Ctx, Parts, unquote_etag};
use super::error::S3Error;
use super::local::{CRC32_METADATA, multipart_etag, parse_crc32_hex};
use super::plan::{parse_etag, part_size_candidates};
use super::uri::S3Uri;

/// Bytes gathered from the network before one positional write (and hash update).
const WRITE_BATCH: u64 = 1024 * 1024;

/// Downloads of one object whose bytes did not match its checksum, before giving up.
pub const INTEGRITY_ATTEMPTS: u32 = 3;

/// Ranges above the part size are never larger than this: smaller ranges balance the parallel
/// connections better at the end.
const MAX_RANGE: u64 = 64 * 1024 * 1024;

/// How far ahead of the in-order MD5 a download of an object with a plain ETag may run, over
/// all its connections: ranges are sized so that the front hashed in order trails the bytes
/// received by about this much, and the hash finishes soon after the last byte.
const MD5_LEAD: u64 = 64 * 1024 * 1024;

/// Which checks a download may use (`--verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Verify {
    /// The cheapest check the object allows: a full-object CRC32 (the server's or the one our
    /// upload recorded), else the ETag's MD5 (per part or whole), else the length.
    #[default]
    Auto,
    /// The ETag's MD5 (per part or whole) even when a CRC32 is known; else the length.
    Md5,
    /// A full-object CRC32 only; objects without one are checked by length only (no MD5).
    Crc,
    /// The length only.
    Size,
}

/// What is known about an object before downloading it.
#[derive(Debug, Clone, Default)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// LastModified, seconds since the epoch.
    pub mtime: Option<i64>,
    /// The sub-second part of LastModified (nanoseconds), when the server gives one.
    pub mtime_ns: u32,
    /// Full-object CRC32: `x-amz-checksum-crc32` without a part count, when the server keeps
    /// one (HeadObject with checksum mode), else the one p3-executor's upload recorded in the
    /// object's metadata ([`CRC32_METADATA`]). Listings carry neither.
    pub crc32: Option<u32>,
    /// Another full-object CRC the server keeps (`x-amz-checksum-crc64nvme`, the default of
    /// AWS SDKs and CLI v2 since 2025, or `x-amz-checksum-crc32c`), when there is no CRC32.
    pub other_crc: Option<(CrcKind, u64)>,
}

/// A CRC other than CRC32 that S3 keeps for a whole object, computed with `crc-fast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcKind {
    /// `x-amz-checksum-crc32c` (Castagnoli).
    Crc32c,
    /// `x-amz-checksum-crc64nvme`.
    Crc64Nvme,
}

impl CrcKind {
    fn algorithm(self) -> crc_fast::CrcAlgorithm {
        match self {
            CrcKind::Crc32c => crc_fast::CrcAlgorithm::Crc32Iscsi,
            CrcKind::Crc64Nvme => crc_fast::CrcAlgorithm::Crc64Nvme,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            CrcKind::Crc32c => "CRC32C",
            CrcKind::Crc64Nvme => "CRC64NVME",
        }
    }
}

/// HeadObject (with checksum mode: servers that keep a full-object CRC32 report it).
pub async fn head(ctx: &Ctx, src: &S3Uri) -> Result<ObjectInfo, S3Error> {
    let out = ctx
        .client
        .head_object()
        .bucket(&src.bucket)
        .key(&src.key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .map_err(ctx.object_error("HeadObject", src));
    let out = match out {
        Ok(out) => out,
        // A HEAD 404 has no body to say whether the key or the bucket is missing: ask.
        Err(S3Error::NoSuchKey { uri }) => {
            return Err(
                match ctx.client.head_bucket().bucket(&src.bucket).send().await {
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                        S3Error::NoSuchBucket {
                            uri,
                            bucket: src.bucket.clone(),
                        }
                    }
                    _ => S3Error::NoSuchKey { uri },
                },
            );
        }
        Err(e) => return Err(e),
    };
    let etag = unquote_etag(out.e_tag());
    // Only a checksum of the whole content helps: a multipart object's is a checksum of its
    // parts' checksums (S3 marks it COMPOSITE; servers that predate the type leave it out).
    let multipart = etag
        .as_deref()
        .and_then(parse_etag)
        .is_some_and(|(_, parts)| parts.is_some());
    let whole = match out.checksum_type() {
        Some(ChecksumType::FullObject) => true,
        Some(_) => false,
        None => !multipart,
    };
    Ok(ObjectInfo {
        size: out.content_length().unwrap_or(0).max(0) as u64,
        etag,
        mtime: out.last_modified().map(|t| t.secs()),
        mtime_ns: out.last_modified().map_or(0, |t| t.subsec_nanos()),
        crc32: out
            .checksum_crc32()
            .filter(|_| whole)
            .and_then(parse_crc32)
            .or_else(|| {
                out.metadata()
                    .and_then(|m| m.get(CRC32_METADATA))
                    .and_then(|v| parse_crc32_hex(v))
            }),
        other_crc: out
            .checksum_crc64_nvme()
            .filter(|_| whole)
            .and_then(|t| parse_crc_bytes(t, 8))
            .map(|c| (CrcKind::Crc64Nvme, c))
            .or_else(|| {
                out.checksum_crc32_c()
                    .filter(|_| whole)
                    .and_then(|t| parse_crc_bytes(t, 4))
                    .map(|c| (CrcKind::Crc32c, c))
            }),
    })
}

/// A full-object checksum header of `width` bytes (base64, big-endian); `None` for a composite
/// (`...-N`) or anything malformed.
fn parse_crc_bytes(text: &str, width: usize) -> Option<u64> {
    let raw = aws_smithy_types::base64::decode(text).ok()?;
    (raw.len() == width).then(|| raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// A full-object `x-amz-checksum-crc32` (base64 of the big-endian CRC); `None` for a
/// composite multipart checksum (`...-N`) or anything malformed.
fn parse_crc32(text: &str) -> Option<u32> {
    let raw = aws_smithy_types::base64::decode(text).ok()?;
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

/// What a download is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The full-object CRC32: each range CRC'd in parallel, the CRCs combined in order.
    Crc32(u32),
    /// Another full-object CRC the server keeps, computed the same way.
    Crc(CrcKind, u64),
    /// A multipart ETag `<md5>-<parts>`: ranges hold whole parts of `part_size` (inferred
    /// from the size and the part count), each part's MD5 computed in parallel, then the MD5
    /// of the part MD5s.
    PartMd5s {
        /// The ETag's MD5 (hex).
        md5: String,
        /// Part count.
        parts: u64,
        /// Part size the ranges are aligned to.
        part_size: u64,
    },
    /// A plain ETag, the MD5 of the whole object: hashed in order, behind the download.
    Md5(String),
    /// Nothing to check against (no ETag, or one that is not an MD5): the length only.
    Length,
}

impl Check {
    /// The cheapest check the object's metadata allows.
    pub fn choose(info: &ObjectInfo, our_part_size: u64) -> Check {
        Check::choose_with(info, our_part_size, Verify::Auto)
    }

    /// The cheapest check the object's metadata allows among those `verify` permits.
    pub fn choose_with(info: &ObjectInfo, our_part_size: u64, verify: Verify) -> Check {
        match (verify, info.crc32) {
            (Verify::Size, _) => return Check::Length,
            (Verify::Auto | Verify::Crc, Some(crc)) => return Check::Crc32(crc),
            (Verify::Auto | Verify::Md5 | Verify::Crc, _) => {}
        }
        if let (Verify::Auto | Verify::Crc, Some((kind, crc))) = (verify, info.other_crc) {
            return Check::Crc(kind, crc);
        }
        if verify == Verify::Crc {
            return Check::Length;
        }
        match info.etag.as_deref().and_then(parse_etag) {
            Some((md5, None)) => Check::Md5(md5),
            Some((md5, Some(parts))) if parts >= 1 => {
                match part_size_candidates(info.size, parts, our_part_size).first() {
                    Some(&part_size) => Check::PartMd5s {
                        md5,
                        parts,
                        part_size,
                    },
                    // No part size gives that many parts: the ETag is not an MD5 of parts.
                    None => Check::Length,
                }
            }
            _ => Check::Length,
        }
    }
}

/// The byte ranges `(start, len)` an object of `size` bytes is fetched in: one request up to
/// `part_size`; above it ranges sized so that `parallel` connections each get about two
/// (at least the part size, at most [`MAX_RANGE`]), holding whole parts of `align` bytes when
/// part MD5s are checked.
pub fn plan_ranges(
    size: u64,
    part_size: u64,
    parallel: usize,
    align: Option<u64>,
) -> Vec<(u64, u64)> {
    if size <= part_size {
        return vec![(0, size)];
    }
    let mut range =
        (size / (2 * parallel.max(1) as u64)).clamp(part_size, MAX_RANGE.max(part_size));
    if let Some(unit) = align.filter(|u| *u > 0) {
        range = (range / unit).max(1) * unit;
    }
    (0..size.div_ceil(range))
        .map(|i| (i * range, range.min(size - i * range)))
        .collect()
}

/// The ranges of an object checked by a plain ETag's MD5, which one thread hashes in order as
/// the ranges are written: small enough that `parallel` connections keep the in-order front
/// within [`MD5_LEAD`] of the bytes received (with 64 MiB ranges, most of the object could
/// only be hashed after the last byte arrived).
pub fn plan_ranges_in_order(size: u64, part_size: u64, parallel: usize) -> Vec<(u64, u64)> {
    if size <= part_size {
        return vec![(0, size)];
    }
    let range =
        (MD5_LEAD / parallel.max(1) as u64).clamp(2 * WRITE_BATCH, part_size.max(2 * WRITE_BATCH));
    (0..size.div_ceil(range))
        .map(|i| (i * range, range.min(size - i * range)))
        .collect()
}

/// Download `src` to `dest` through a temporary file in the same directory, renamed into place
/// only when complete and checked: `dest` is never a partial file. A checksum mismatch
/// downloads again (a fresh temporary file each time).
pub async fn download(
    ctx: Arc<Ctx>,
    src: S3Uri,
    info: ObjectInfo,
    dest: PathBuf,
) -> Result<(), S3Error> {
    if dest.is_dir() {
        return Err(S3Error::local(
            &dest,
            "cannot download over a directory",
            std::io::Error::from(std::io::ErrorKind::IsADirectory),
        ));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| S3Error::local(&parent, "cannot create directory", e))?;
    let mut attempt = 1;
    // A body that stalls or breaks mid-way is not retried by the SDK (its response had
    // arrived): fetch again, from a fresh temporary file, up to --max-attempts times.
    let mut transfer_attempt = 1;
    let started = std::time::Instant::now();
    let tmp = loop {
        let tmp = tempfile::Builder::new()
            .prefix(".p3-s3-")
            .suffix(".part")
            .tempfile_in(&parent)
            .map_err(|e| S3Error::local(&parent, "cannot write to directory", e))?;
        let file = Arc::new(
            tmp.as_file()
                .try_clone()
                .map_err(|e| S3Error::local(&parent, "cannot write to directory", e))?,
        );
        let mismatch = match fetch(&ctx, &src, &info, file, &dest).await {
            Ok(Verdict::Ok) => break tmp,
            Ok(Verdict::Mismatch(detail)) => detail,
            Err(S3Error::Endpoint {
                uri,
                endpoint,
                detail,
            }) if detail.starts_with(INTERRUPTED) => {
                drop(tmp);
                if transfer_attempt >= ctx.max_attempts {
                    return Err(S3Error::Endpoint {
                        uri,
                        endpoint,
                        detail: format!(
                            "gave up after {transfer_attempt} attempts in {:.1} s, the last: {detail}",
                            started.elapsed().as_secs_f64()
                        ),
                    });
                }
                transfer_attempt += 1;
                ctx.progress.eprintln(&format!(
                    "retry: attempt {transfer_attempt}/{} of GET {src} after: {}",
                    ctx.max_attempts,
                    super::client::short_cause(&detail)
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        // Dropping `tmp` removes the bad copy.
        drop(tmp);
        if attempt >= INTEGRITY_ATTEMPTS {
            return Err(S3Error::Integrity {
                uri: src.to_string(),
                detail: format!("{mismatch} (after {attempt} downloads)"),
            });
        }
        ctx.progress
            .eprintln(&format!("warning: {src}: {mismatch}; downloading again"));
        attempt += 1;
    };
    let file = tmp.as_file();
    if let Some(secs) = info.mtime {
        // Like the AWS CLI: the local mtime is the object's LastModified, so `sync` from S3
        // sees an unchanged file as unchanged.
        let t = SystemTime::UNIX_EPOCH
            + Duration::new(secs.max(0) as u64, info.mtime_ns.min(999_999_999));
        let _ = file.set_modified(t);
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(ctx.file_mode));
    tmp.persist(&dest).map_err(|e| {
        S3Error::local(
            &dest,
            "cannot rename the downloaded file into place",
            e.error,
        )
    })?;
    Ok(())
}

/// The outcome of one download attempt whose bytes all arrived.
enum Verdict {
    /// The bytes match the check.
    Ok,
    /// They do not: what differs.
    Mismatch(String),
}

/// Hash state of one range, moved to the thread that writes each batch and back.
pub(super) struct RangeHash {
    crc: Option<crc32fast::Hasher>,
    /// A CRC32C or CRC64NVME.
    fast: Option<crc_fast::Digest>,
    /// The whole object's MD5, when one range is the whole object.
    whole: Option<Md5>,
    /// Part MD5s: the part being hashed, its bytes so far, the part size, finished parts.
    parts: Option<(Md5, u64, u64, Vec<[u8; 16]>)>,
}

impl RangeHash {
    pub(super) fn new(check: &Check, whole: bool) -> Self {
        RangeHash {
            crc: matches!(check, Check::Crc32(_)).then(crc32fast::Hasher::new),
            fast: match check {
                Check::Crc(kind, _) => Some(crc_fast::Digest::new(kind.algorithm())),
                _ => None,
            },
            whole: (whole && matches!(check, Check::Md5(_))).then(Md5::new),
            parts: match check {
                Check::PartMd5s { part_size, .. } => Some((Md5::new(), 0, *part_size, Vec::new())),
                _ => None,
            },
        }
    }

    pub(super) fn update(&mut self, mut data: &[u8]) {
        if let Some(crc) = &mut self.crc {
            crc.update(data);
        }
        if let Some(crc) = &mut self.fast {
            crc.update(data);
        }
        if let Some(md5) = &mut self.whole {
            md5.update(data);
        }
        if let Some((md5, done, part_size, finished)) = &mut self.parts {
            // Ranges start on part boundaries; a part ends inside the data: split there.
            while !data.is_empty() {
                let take = ((*part_size - *done) as usize).min(data.len());
                md5.update(&data[..take]);
                *done += take as u64;
                data = &data[take..];
                if *done == *part_size {
                    finished.push(std::mem::take(md5).finalize().into());
                    *done = 0;
                }
            }
        }
    }

    /// The CRC32C or CRC64NVME state, taken out before [`RangeHash::finish`].
    pub(super) fn take_fast(&mut self) -> Option<crc_fast::Digest> {
        self.fast.take()
    }

    /// The CRC, the part MD5s (the last part may be short) and the whole object's MD5.
    pub(super) fn finish(self) -> (Option<crc32fast::Hasher>, Vec<[u8; 16]>, Option<[u8; 16]>) {
        let parts = self
            .parts
            .map_or_else(Vec::new, |(md5, done, _, mut finished)| {
                if done > 0 {
                    finished.push(md5.finalize().into());
                }
                finished
            });
        (self.crc, parts, self.whole.map(|m| m.finalize().into()))
    }
}

/// Fetch the whole object into `file` once and check it.
async fn fetch(
    ctx: &Arc<Ctx>,
    src: &S3Uri,
    info: &ObjectInfo,
    file: Arc<std::fs::File>,
    dest: &Path,
) -> Result<Verdict, S3Error> {
    let mut check = Check::choose_with(info, ctx.part_size, ctx.verify);
    let ranges = match &check {
        Check::PartMd5s { part_size, .. } => plan_ranges(
            info.size,
            ctx.part_size,
            ctx.part_parallelism,
            Some(*part_size),
        ),
        Check::Md5(_) => plan_ranges_in_order(info.size, ctx.part_size, ctx.part_parallelism),
        _ => plan_ranges(info.size, ctx.part_size, ctx.part_parallelism, None),
    };
    let tracker = Arc::new(Tracker::new(&ranges));
    // The plain MD5 cannot be split: over several ranges, one thread hashes the file in order,
    // reading each byte back from the page cache as soon as its range has written it.
    let follower = match &check {
        Check::Md5(_) if ranges.len() > 1 => {
            let (file, tracker) = (file.clone(), tracker.clone());
            Some(tokio::task::spawn_blocking(move || {
                follow_md5(&file, &tracker)
            }))
        }
        _ => None,
    };
    let fetched = get_ranges(
        ctx,
        src,
        info,
        &ranges,
        &check,
        file.clone(),
        dest,
        &tracker,
    )
    .await;
    tracker.stop();
    let md5_in_order = match follower {
        Some(f) => f.await.expect("hash task panicked"),
        None => None,
    };
    let fetched = fetched?;
    let md5_in_order = md5_in_order.or(fetched.whole_md5);
    // An ETag under SSE-KMS or SSE-C is not the MD5 of the content.
    if fetched.etag_not_md5 && matches!(check, Check::Md5(_) | Check::PartMd5s { .. }) {
        check = Check::Length;
    }
    Ok(match check {
        Check::Length => Verdict::Ok,
        Check::Crc32(want) => {
            let mut crc = crc32fast::Hasher::new();
            for h in fetched.crcs {
                crc.combine(&h);
            }
            let got = crc.finalize();
            if got == want {
                Verdict::Ok
            } else {
                Verdict::Mismatch(format!(
                    "CRC32 {got:08x} does not match the object's {want:08x}"
                ))
            }
        }
        Check::Crc(kind, want) => {
            let mut ranges = fetched.fast.into_iter();
            let got = ranges.next().map_or(0, |mut crc| {
                ranges.for_each(|r| crc.combine(&r));
                crc.finalize()
            });
            if got == want {
                Verdict::Ok
            } else {
                Verdict::Mismatch(format!(
                    "{} {got:x} does not match the object's {want:x}",
                    kind.name()
                ))
            }
        }
        Check::Md5(want) => {
            let got = md5_in_order.map(hex::encode).unwrap_or_default();
            if got == want {
                Verdict::Ok
            } else {
                Verdict::Mismatch(format!("MD5 {got} does not match ETag {want}"))
            }
        }
        Check::PartMd5s {
            md5: want,
            parts,
            part_size,
        } => {
            let mut all = Md5::new();
            fetched.part_md5s.iter().for_each(|m| all.update(m));
            let got = hex::encode(all.finalize());
            let matches = got == want && fetched.part_md5s.len() as u64 == parts;
            if matches || other_part_size_matches(ctx, src, info, part_size, &file, dest).await? {
                Verdict::Ok
            } else {
                Verdict::Mismatch(format!(
                    "MD5 of {} part MD5s ({} bytes each) {got} does not match ETag {want}-{parts}",
                    fetched.part_md5s.len(),
                    part_size
                ))
            }
        }
    })
}

/// When a multipart ETag did not match with the inferred part size, whether the part size the
/// server reports (HeadObject of part 1, where supported) or another size the tools use
/// reproduces it: the file is read back once per size (rare).
async fn other_part_size_matches(
    ctx: &Ctx,
    src: &S3Uri,
    info: &ObjectInfo,
    tried: u64,
    file: &Arc<std::fs::File>,
    dest: &Path,
) -> Result<bool, S3Error> {
    let Some(etag) = info.etag.clone() else {
        return Ok(false);
    };
    let Some((_, Some(parts))) = parse_etag(&etag) else {
        return Ok(false);
    };
    let reported = ctx
        .client
        .head_object()
        .bucket(&src.bucket)
        .key(&src.key)
        .part_number(1)
        .send()
        .await
        .ok()
        // A server without part lookups answers for the whole object, without a part count.
        .filter(|h| h.parts_count().is_some())
        .and_then(|h| h.content_length())
        .map(|n| n.max(0) as u64);
    let others: Vec<u64> = reported
        .into_iter()
        .chain(part_size_candidates(info.size, parts, ctx.part_size))
        .filter(|ps| *ps != tried && *ps > 0)
        .collect();
    if others.is_empty() {
        return Ok(false);
    }
    let (file, size) = (file.clone(), info.size);
    let want = etag.to_ascii_lowercase();
    tokio::task::spawn_blocking(move || {
        for ps in others {
            if multipart_etag(&file, size, ps)? == want {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .expect("hash task panicked")
    .map_err(|e| S3Error::local(dest, "cannot read back", e))
}

/// What the ranges of one attempt produced.
struct Fetched {
    /// Per-range CRC32 states, in range order.
    crcs: Vec<crc32fast::Hasher>,
    /// Per-range CRC32C or CRC64NVME states, in range order.
    fast: Vec<crc_fast::Digest>,
    /// Part MD5s of the whole object, in order.
    part_md5s: Vec<[u8; 16]>,
    /// A response said SSE-KMS or SSE-C: the ETag is not the content's MD5.
    etag_not_md5: bool,
    /// The MD5 of a single-range download, hashed as it arrived.
    whole_md5: Option<[u8; 16]>,
}

/// How far each range has been written contiguously, for the in-order MD5 that follows.
struct Tracker {
    starts: Vec<u64>,
    end: u64,
    state: Mutex<(Vec<u64>, bool)>,
    changed: Condvar,
}

impl Tracker {
    fn new(ranges: &[(u64, u64)]) -> Self {
        Tracker {
            starts: ranges.iter().map(|r| r.0).collect(),
            end: ranges.last().map_or(0, |r| r.0 + r.1),
            state: Mutex::new((vec![0; ranges.len()], false)),
            changed: Condvar::new(),
        }
    }

    fn advance(&self, range: usize, written: u64) {
        self.state.lock().expect("lock").0[range] = written;
        self.changed.notify_all();
    }

    /// No more writes will come (done or failed).
    fn stop(&self) {
        self.state.lock().expect("lock").1 = true;
        self.changed.notify_all();
    }

    /// Bytes available from `pos` on within its range, waiting for some; 0 when stopped first.
    fn available(&self, pos: u64) -> u64 {
        let range = self.starts.partition_point(|s| *s <= pos) - 1;
        let offset = pos - self.starts[range];
        let mut state = self.state.lock().expect("lock");
        loop {
            if state.0[range] > offset {
                return state.0[range] - offset;
            }
            if state.1 {
                return 0;
            }
            state = self.changed.wait(state).expect("lock");
        }
    }
}

/// MD5 of the file in order, each piece read back (from the page cache) once written; `None`
/// when the download stopped before the end.
fn follow_md5(file: &std::fs::File, tracker: &Tracker) -> Option<[u8; 16]> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; WRITE_BATCH as usize];
    let mut pos = 0u64;
    let end = tracker.end;
    while pos < end {
        let n = tracker.available(pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return None;
        }
        file.read_exact_at(&mut buf[..n], pos).ok()?;
        md5.update(&buf[..n]);
        pos += n as u64;
    }
    Some(md5.finalize().into())
}

/// Fetch `ranges` in parallel (at most `part_parallelism` at once), each streamed to its place
/// in `file` and hashed for `check` as it arrives.
#[allow(clippy::too_many_arguments)]
async fn get_ranges(
    ctx: &Arc<Ctx>,
    src: &S3Uri,
    info: &ObjectInfo,
    ranges: &[(u64, u64)],
    check: &Check,
    file: Arc<std::fs::File>,
    dest: &Path,
    tracker: &Arc<Tracker>,
) -> Result<Fetched, S3Error> {
    let whole = ranges.len() == 1;
    let mut parts = Parts::new(ctx.part_parallelism);
    for (index, &(start, len)) in ranges.iter().enumerate() {
        parts.slot().await?;
        // Two batches per range are in memory at most: one being written, one arriving.
        let permit = ctx.reserve((2 * WRITE_BATCH).min(len.max(1))).await;
        let (ctx, src, file, dest, etag, tracker) = (
            ctx.clone(),
            src.clone(),
            file.clone(),
            dest.to_path_buf(),
            info.etag.clone(),
            tracker.clone(),
        );
        let hash = RangeHash::new(check, whole);
        parts.spawn(async move {
            let mut req = ctx.client.get_object().bucket(&src.bucket).key(&src.key);
            if !whole {
                // If-Match: every range comes from the same version of the object, or fails.
                req = req
                    .range(format!("bytes={}-{}", start, start + len - 1))
                    .set_if_match(etag.map(|e| format!("\"{e}\"")));
            }
            let out = req
                .send()
                .await
                .map_err(ctx.object_error("GetObject", &src))?;
            let etag_not_md5 = out
                .server_side_encryption()
                .is_some_and(|s| s.as_str().starts_with("aws:kms"))
                || out.sse_customer_algorithm().is_some();
            let hash = stream_range(&ctx, &src, out.body, start, len, hash, &file, &dest, |w| {
                tracker.advance(index, w)
            })
            .await?;
            drop(permit);
            Ok((index, hash, etag_not_md5))
        });
    }
    let mut done = parts.finish().await?;
    done.sort_by_key(|d| d.0);
    let mut fetched = Fetched {
        crcs: Vec::new(),
        fast: Vec::new(),
        part_md5s: Vec::new(),
        etag_not_md5: false,
        whole_md5: None,
    };
    for (_, mut hash, not_md5) in done {
        fetched.fast.extend(hash.take_fast());
        let (crc, md5s, whole) = hash.finish();
        fetched.crcs.extend(crc);
        fetched.whole_md5 = fetched.whole_md5.or(whole);
        fetched.part_md5s.extend(md5s);
        fetched.etag_not_md5 |= not_md5;
    }
    Ok(fetched)
}

/// Stream one response body of `len` bytes to `start` in `file`: chunks are gathered into
/// batches of [`WRITE_BATCH`], each written and hashed on a blocking thread while the next
/// batch arrives. `written` is told the range's contiguous length after each batch.
#[allow(clippy::too_many_arguments)]
async fn stream_range(
    ctx: &Ctx,
    src: &S3Uri,
    mut body: aws_sdk_s3::primitives::ByteStream,
    start: u64,
    len: u64,
    hash: RangeHash,
    file: &Arc<std::fs::File>,
    dest: &Path,
    written: impl Fn(u64),
) -> Result<RangeHash, S3Error> {
    let mut batch: Vec<Bytes> = Vec::new();
    let (mut batch_len, mut sent) = (0u64, 0u64);
    let mut hash = Some(hash);
    let mut pending: Option<tokio::task::JoinHandle<std::io::Result<(RangeHash, u64)>>> = None;
    loop {
        let chunk = body
            .try_next()
            .await
            .map_err(|e| interrupted(ctx, src, &e))?;
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            batch_len += chunk.len() as u64;
            batch.push(chunk);
        }
        if batch_len < WRITE_BATCH && !(last && batch_len > 0) {
            if last {
                break;
            }
            continue;
        }
        if sent + batch_len > len {
            return Err(S3Error::Integrity {
                uri: src.to_string(),
                detail: format!("range at {start} returned more than the {len} bytes asked for"),
            });
        }
        // Wait for the previous batch: at most one write per range in flight.
        if let Some(p) = pending.take() {
            let (h, n) = finish_write(p, dest).await?;
            hash = Some(h);
            ctx.progress.add_bytes(n);
            written(sent);
        }
        let (file, chunks, offset) = (file.clone(), std::mem::take(&mut batch), start + sent);
        let mut h = hash.take().expect("hash returned by the previous write");
        let n = batch_len;
        pending = Some(tokio::task::spawn_blocking(move || {
            let mut pos = offset;
            for c in &chunks {
                file.write_all_at(c, pos)?;
                h.update(c);
                pos += c.len() as u64;
            }
            Ok((h, n))
        }));
        sent += batch_len;
        batch_len = 0;
        if last {
            break;
        }
    }
    if let Some(p) = pending.take() {
        let (h, n) = finish_write(p, dest).await?;
        hash = Some(h);
        ctx.progress.add_bytes(n);
        written(sent);
    }
    if sent != len {
        return Err(S3Error::Integrity {
            uri: src.to_string(),
            detail: format!("range at {start} returned {sent} bytes, expected {len}"),
        });
    }
    Ok(hash.expect("hash returned by the last write"))
}

async fn finish_write(
    job: tokio::task::JoinHandle<std::io::Result<(RangeHash, u64)>>,
    dest: &Path,
) -> Result<(RangeHash, u64), S3Error> {
    job.await
        .expect("write task panicked")
        .map_err(|e| S3Error::local(dest, "cannot write", e))
}

/// The body of `src` broke off after the response began.
/// How the detail of a broken or stalled download body starts.
const INTERRUPTED: &str = "download interrupted";

fn interrupted(ctx: &Ctx, src: &S3Uri, e: &(dyn std::error::Error + 'static)) -> S3Error {
    // The SDK's stalled-stream error is the body error's source: keep the whole chain.
    let mut detail = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail = format!("{detail}: {text}");
        }
        next = cause.source();
    }
    S3Error::Endpoint {
        uri: src.to_string(),
        endpoint: ctx.endpoint.clone(),
        detail: format!("{INTERRUPTED}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn info(size: u64, etag: Option<&str>) -> ObjectInfo {
        ObjectInfo {
            size,
            etag: etag.map(str::to_string),
            ..ObjectInfo::default()
        }
    }

    #[test]
    fn ranges_cover_the_object_and_hold_whole_parts() {
        for size in [0, 1, 16 * MIB, 16 * MIB + 1, 100 * MIB + 7, 1024 * MIB] {
            for align in [None, Some(5 * MIB), Some(16 * MIB), Some(50 * MIB)] {
                let ranges = plan_ranges(size, 16 * MIB, 8, align);
                let mut next = 0;
                for &(start, len) in &ranges {
                    assert_eq!(start, next, "{size} {align:?}");
                    next += len;
                    if let (Some(a), true) = (align, start + len < size) {
                        assert_eq!(len % a, 0, "{size} {align:?}: a range splits a part");
                    }
                }
                assert_eq!(next, size);
            }
        }
        assert_eq!(
            plan_ranges(16 * MIB, 16 * MIB, 8, None),
            vec![(0, 16 * MIB)]
        );
        assert_eq!(plan_ranges(16 * MIB + 1, 16 * MIB, 8, None).len(), 2);
        assert_eq!(plan_ranges(23 * MIB, 5 * MIB, 8, None).len(), 5);
        // 1 GiB over 8 connections: 64 MiB ranges, two per connection.
        assert_eq!(plan_ranges(1024 * MIB, 16 * MIB, 8, None).len(), 16);
        // Hashed in order: 8 MiB ranges over 8 connections, 64 MiB ahead of the hash at most.
        for size in [0, 1, 16 * MIB, 16 * MIB + 1, 100 * MIB + 7, 1024 * MIB] {
            let ranges = plan_ranges_in_order(size, 16 * MIB, 8);
            let mut next = 0;
            for &(start, len) in &ranges {
                assert_eq!(start, next);
                next += len;
            }
            assert_eq!(next, size);
        }
        assert_eq!(plan_ranges_in_order(1024 * MIB, 16 * MIB, 8).len(), 128);
        assert_eq!(plan_ranges_in_order(16 * MIB, 16 * MIB, 8).len(), 1);
    }

    #[test]
    fn the_cheapest_check_the_metadata_allows() {
        let md5 = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            Check::choose(&info(10, Some(md5)), 16 * MIB),
            Check::Md5(md5.into())
        );
        assert_eq!(
            Check::choose(&info(20 * MIB, Some(&format!("{md5}-3"))), 16 * MIB),
            Check::PartMd5s {
                md5: md5.into(),
                parts: 3,
                part_size: 8 * MIB
            }
        );
        let mut with_crc = info(10, Some(md5));
        with_crc.crc32 = Some(7);
        assert_eq!(Check::choose(&with_crc, 16 * MIB), Check::Crc32(7));
        assert_eq!(Check::choose(&info(10, None), 16 * MIB), Check::Length);
        assert_eq!(
            Check::choose(&info(10, Some("not-an-md5")), 16 * MIB),
            Check::Length
        );
        // Two parts cannot make 10 bytes with any usual part size.
        assert_eq!(
            Check::choose(&info(10, Some(&format!("{md5}-2"))), 16 * MIB),
            Check::Length
        );
        // --verify narrows the choice.
        let multi = info(20 * MIB, Some(&format!("{md5}-3")));
        assert_eq!(
            Check::choose_with(&with_crc, 16 * MIB, Verify::Md5),
            Check::Md5(md5.into())
        );
        assert_eq!(
            Check::choose_with(&with_crc, 16 * MIB, Verify::Crc),
            Check::Crc32(7)
        );
        assert_eq!(
            Check::choose_with(&with_crc, 16 * MIB, Verify::Size),
            Check::Length
        );
        assert_eq!(
            Check::choose_with(&multi, 16 * MIB, Verify::Crc),
            Check::Length
        );
        assert!(matches!(
            Check::choose_with(&multi, 16 * MIB, Verify::Md5),
            Check::PartMd5s { .. }
        ));
        let mut with_other = info(20 * MIB, Some(&format!("{md5}-3")));
        with_other.other_crc = Some((CrcKind::Crc64Nvme, 9));
        assert_eq!(
            Check::choose(&with_other, 16 * MIB),
            Check::Crc(CrcKind::Crc64Nvme, 9)
        );
        assert_eq!(
            Check::choose_with(&with_other, 16 * MIB, Verify::Crc),
            Check::Crc(CrcKind::Crc64Nvme, 9)
        );
        assert!(matches!(
            Check::choose_with(&with_other, 16 * MIB, Verify::Md5),
            Check::PartMd5s { .. }
        ));
        assert_eq!(parse_crc_bytes("AAAAAAAAAAk=", 8), Some(9));
        assert_eq!(parse_crc_bytes("y/Q5Jg==", 8), None);
        assert_eq!(parse_crc32("y/Q5Jg=="), Some(0xcbf4_3926));
        assert_eq!(parse_crc32("y/Q5Jg==-3"), None);
    }

    #[test]
    fn range_hashes_split_at_part_boundaries() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let check = Check::PartMd5s {
            md5: String::new(),
            parts: 4,
            part_size: 300,
        };
        let mut h = RangeHash::new(&check, false);
        // Arbitrary chunk sizes, as the network delivers them.
        for c in data.chunks(77) {
            h.update(c);
        }
        let (_, parts, none) = h.finish();
        assert!(none.is_none());
        let want: Vec<[u8; 16]> = data.chunks(300).map(|c| Md5::digest(c).into()).collect();
        assert_eq!(parts, want);

        let mut whole = RangeHash::new(&Check::Md5(String::new()), true);
        data.chunks(333).for_each(|c| whole.update(c));
        assert_eq!(whole.finish().2, Some(Md5::digest(&data).into()));

        let mut a = RangeHash::new(&Check::Crc32(0), false);
        a.update(&data[..600]);
        let mut b = RangeHash::new(&Check::Crc32(0), false);
        b.update(&data[600..]);
        let (mut ca, cb) = (a.finish().0.unwrap(), b.finish().0.unwrap());
        ca.combine(&cb);
        assert_eq!(ca.finalize(), crc32fast::hash(&data));

        for kind in [CrcKind::Crc32c, CrcKind::Crc64Nvme] {
            let check = Check::Crc(kind, 0);
            let (mut a, mut b) = (RangeHash::new(&check, false), RangeHash::new(&check, false));
            data[..600].chunks(77).for_each(|c| a.update(c));
            data[600..].chunks(77).for_each(|c| b.update(c));
            let mut crc = a.take_fast().unwrap();
            crc.combine(&b.take_fast().unwrap());
            assert_eq!(crc.finalize(), crc_fast::checksum(kind.algorithm(), &data));
        }
    }
}
