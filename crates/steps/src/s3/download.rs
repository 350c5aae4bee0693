//! Downloads of objects to local files, checked as the bytes arrive.
//!
//! An object is fetched as one GetObject up to the part size, above it as parallel ranged GETs
//! pinned to one version with If-Match. Every range streams to its place in a temporary file
//! with positional writes, one batch written (and hashed, [`super::range_hash`]) off the async
//! threads while the next arrives; the file is renamed into place only when complete and
//! checked, so the destination is never a partial or unverified file.
//!
//! What the bytes are checked against ([`Check`], [`super::check`]) is chosen from what the
//! server said about the object, cheapest first: a full-object CRC (ranges CRC'd in parallel,
//! combined); a composite CRC or a multipart ETag (ranges aligned with the upload's parts, a
//! CRC or an MD5 per part in parallel, then the CRC or MD5 of those); a plain ETag (the MD5 of
//! the whole, which cannot be split: hashed in order by one thread that follows the download
//! through the page cache). A mismatch downloads the object again, up to
//! [`INTEGRITY_ATTEMPTS`] times.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::check::verdict;
pub use super::check::{Check, Composite, CrcKind, ObjectInfo, Verify, head};
use super::ctx::{Ctx, Parts};
use super::error::S3Error;
use super::plan::part_size_candidates;
use super::range_hash::{Hashed, RangeHash, Tracker, follow_md5};
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

/// Connections at once for an object checked by a plain ETag's MD5. The MD5 runs on one core
/// (~650 MB/s), which four connections fill even from real S3 (100-200 MB/s each); more only
/// make more, smaller requests, and a request costs the server CPU of its own (s3rver: ~4 ms,
/// on the core that serves the bytes).
const MD5_CONNECTIONS: usize = 4;

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

/// Fetch the whole object into `file` once and check it.
async fn fetch(
    ctx: &Arc<Ctx>,
    src: &S3Uri,
    info: &ObjectInfo,
    file: Arc<std::fs::File>,
    dest: &Path,
) -> Result<Verdict, S3Error> {
    let check = Check::choose_with(info, ctx.part_size, ctx.verify);
    let parallel = match &check {
        Check::Md5(_) => ctx.part_parallelism.min(MD5_CONNECTIONS),
        _ => ctx.part_parallelism,
    };
    let ranges = match &check {
        Check::Md5(_) => plan_ranges_in_order(info.size, ctx.part_size, parallel),
        _ => plan_ranges(
            info.size,
            ctx.part_size,
            ctx.part_parallelism,
            check.part_size(),
        ),
    };
    let tracker = Arc::new(Tracker::new(&ranges));
    let writing = Arc::new(Mutex::new(()));
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
        (&ranges, parallel),
        &check,
        (file.clone(), writing),
        dest,
        &tracker,
    )
    .await;
    tracker.stop();
    let md5_in_order = match follower {
        Some(f) => f.await.expect("hash task panicked"),
        None => None,
    };
    let (mut hashed, etag_not_md5) = fetched?;
    hashed.whole_md5 = md5_in_order.or(hashed.whole_md5);
    let mismatch = match verdict(&check, &hashed, etag_not_md5) {
        Ok(()) => return Ok(Verdict::Ok),
        Err(mismatch) => mismatch,
    };
    if other_part_size_matches(ctx, src, info, &check, &file, dest).await? {
        return Ok(Verdict::Ok);
    }
    // A composite CRC the ETag contradicts is the server's error, not the bytes' (moto
    // without its optional crc32c library computes CRC32C composites with CRC32): unless
    // --checksum crc ruled out the MD5, the ETag decides, read back once.
    if matches!(check, Check::PartCrcs { .. }) && ctx.verify == Verify::Auto {
        let md5 = Check::choose_with(info, ctx.part_size, Verify::Md5);
        if !matches!(md5, Check::Length)
            && verdict(
                &md5,
                &rehash(&file, info.size, &md5, dest).await?,
                etag_not_md5,
            )
            .is_ok()
        {
            ctx.progress.eprintln(&format!(
                "warning: {src}: {mismatch}, but its ETag matches: the server's checksum is wrong"
            ));
            return Ok(Verdict::Ok);
        }
    }
    Ok(Verdict::Mismatch(mismatch))
}

/// Hash the downloaded `file` again for `check`, off the async threads.
async fn rehash(
    file: &Arc<std::fs::File>,
    size: u64,
    check: &Check,
    dest: &Path,
) -> Result<Hashed, S3Error> {
    let (file, check) = (file.clone(), check.clone());
    tokio::task::spawn_blocking(move || read_back(&file, size, &check))
        .await
        .expect("hash task panicked")
        .map_err(|e| S3Error::local(dest, "cannot read back", e))
}

/// The hashes of `size` bytes of `file` for `check`, read in order.
fn read_back(file: &std::fs::File, size: u64, check: &Check) -> std::io::Result<Hashed> {
    let mut hash = RangeHash::new(check, true);
    let mut buf = vec![0u8; WRITE_BATCH as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(WRITE_BATCH) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        hash.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hash.finish())
}

/// When a check by parts (part MD5s, part CRCs) did not match with the inferred part size,
/// whether the part size the server reports (HeadObject of part 1, where supported) or
/// another size the tools use reproduces it: the file is read back once per size (rare).
async fn other_part_size_matches(
    ctx: &Ctx,
    src: &S3Uri,
    info: &ObjectInfo,
    check: &Check,
    file: &Arc<std::fs::File>,
    dest: &Path,
) -> Result<bool, S3Error> {
    let (Some(tried), Some(parts)) = (check.part_size(), check.parts()) else {
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
    let mut others: Vec<u64> = Vec::new();
    for ps in reported
        .into_iter()
        .chain(part_size_candidates(info.size, parts, ctx.part_size))
    {
        if ps != tried && ps > 0 && !others.contains(&ps) {
            others.push(ps);
        }
    }
    let (file, size, check) = (file.clone(), info.size, check.clone());
    tokio::task::spawn_blocking(move || {
        for ps in others {
            let check = check.with_part_size(ps);
            if verdict(&check, &read_back(&file, size, &check)?, false).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .expect("hash task panicked")
    .map_err(|e| S3Error::local(dest, "cannot read back", e))
}

/// Fetch `ranges` in parallel (`parallel` at once), each streamed to its place
/// in `file` (written under its lock, see [`stream_range`]) and hashed for `check` as it
/// arrives. Returns the ranges' hashes combined in
/// order, and whether a response said SSE-KMS or SSE-C (the ETag is then no MD5).
#[allow(clippy::too_many_arguments)]
async fn get_ranges(
    ctx: &Arc<Ctx>,
    src: &S3Uri,
    info: &ObjectInfo,
    (ranges, parallel): (&[(u64, u64)], usize),
    check: &Check,
    (file, writing): (Arc<std::fs::File>, Arc<Mutex<()>>),
    dest: &Path,
    tracker: &Arc<Tracker>,
) -> Result<(Hashed, bool), S3Error> {
    let whole = ranges.len() == 1;
    let mut parts = Parts::new(parallel);
    for (index, &(start, len)) in ranges.iter().enumerate() {
        parts.slot().await?;
        // Two batches per range are in memory at most: one being written, one arriving.
        let permit = ctx.reserve((2 * WRITE_BATCH).min(len.max(1))).await;
        let (ctx, src, file, dest, etag, tracker) = (
            ctx.clone(),
            src.clone(),
            (file.clone(), writing.clone()),
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
    let mut hashed = Hashed::default();
    let mut etag_not_md5 = false;
    for (_, hash, not_md5) in done {
        hashed.append(hash.finish());
        etag_not_md5 |= not_md5;
    }
    Ok((hashed, etag_not_md5))
}

/// Stream one response body of `len` bytes to `start` in `file`: chunks are gathered into
/// batches of [`WRITE_BATCH`], each written and hashed on a blocking thread while the next
/// batch arrives. `written` is told the range's contiguous length after each batch.
///
/// The ranges of a file take turns to write (`writing`), hashing outside the lock: the kernel
/// writes one file's ranges one at a time anyway (its inode lock), and its waiters spin on
/// the CPU while the holder copies (perf: `rwsem_spin_on_owner`, ~25% more system time with
/// 8 writers than with one), where a waiter on our lock sleeps.
#[allow(clippy::too_many_arguments)]
async fn stream_range(
    ctx: &Ctx,
    src: &S3Uri,
    mut body: aws_sdk_s3::primitives::ByteStream,
    start: u64,
    len: u64,
    hash: RangeHash,
    (file, writing): &(Arc<std::fs::File>, Arc<Mutex<()>>),
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
        let (file, writing) = (file.clone(), writing.clone());
        let (chunks, offset) = (std::mem::take(&mut batch), start + sent);
        let mut h = hash.take().expect("hash returned by the previous write");
        let n = batch_len;
        pending = Some(tokio::task::spawn_blocking(move || {
            {
                let _turn = writing.lock().unwrap_or_else(|e| e.into_inner());
                let mut pos = offset;
                for c in &chunks {
                    file.write_all_at(c, pos)?;
                    pos += c.len() as u64;
                }
            }
            chunks.iter().for_each(|c| h.update(c));
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
        // Four connections (MD5_CONNECTIONS): 16 MiB ranges, 64 requests for 1 GiB.
        assert_eq!(plan_ranges_in_order(1024 * MIB, 16 * MIB, 4).len(), 64);
        assert_eq!(plan_ranges_in_order(16 * MIB, 16 * MIB, 8).len(), 1);
    }
}
