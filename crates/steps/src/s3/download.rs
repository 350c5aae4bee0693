//! Downloads of objects to local files: one GetObject checked against a plain ETag's MD5 up to
//! the part size, above it parallel ranged GETs pinned to one version with If-Match, each
//! streamed to its place; both into a temporary file renamed into place only when complete,
//! with the size checked.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::ctx::{Ctx, Parts, unquote_etag};
use super::error::S3Error;
use super::local::md5;
use super::plan::parse_etag;
use super::uri::S3Uri;

/// Bytes of a ranged download collected before they are written out.
const WRITE_BATCH: u64 = 4 * 1024 * 1024;

/// What is known about an object before downloading it.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// LastModified, seconds since the epoch.
    pub mtime: Option<i64>,
}

/// HeadObject.
pub async fn head(ctx: &Ctx, src: &S3Uri) -> Result<ObjectInfo, S3Error> {
    let out = ctx
        .client
        .head_object()
        .bucket(&src.bucket)
        .key(&src.key)
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
    Ok(ObjectInfo {
        size: out.content_length().unwrap_or(0).max(0) as u64,
        etag: unquote_etag(out.e_tag()),
        mtime: out.last_modified().map(|t| t.secs()),
    })
}

/// Download `src` to `dest` through a temporary file in the same directory, renamed into place
/// only when complete: `dest` is never a partial file.
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
    if info.size <= ctx.part_size {
        get_single(&ctx, &src, &info, file.clone(), &dest).await?;
    } else {
        file.set_len(info.size)
            .map_err(|e| S3Error::local(&dest, "cannot allocate space", e))?;
        get_ranges(&ctx, &src, &info, file.clone(), &dest).await?;
    }
    if let Some(secs) = info.mtime {
        // Like the AWS CLI: the local mtime is the object's LastModified, so `sync` from S3
        // sees an unchanged file as unchanged.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
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

/// The whole object in one GetObject, held in memory (it is at most one part) and checked.
async fn get_single(
    ctx: &Ctx,
    src: &S3Uri,
    info: &ObjectInfo,
    file: Arc<std::fs::File>,
    dest: &Path,
) -> Result<(), S3Error> {
    let _mem = ctx.reserve(info.size).await;
    let out = ctx
        .client
        .get_object()
        .bucket(&src.bucket)
        .key(&src.key)
        .send()
        .await
        .map_err(ctx.object_error("GetObject", src))?;
    let kms = out
        .server_side_encryption()
        .is_some_and(|s| s.as_str().starts_with("aws:kms"));
    let etag = unquote_etag(out.e_tag());
    let data = out
        .body
        .collect()
        .await
        .map_err(|e| interrupted(ctx, src, e))?
        .into_segments()
        .collect::<Vec<Bytes>>();
    // A plain (single-part, non-KMS) ETag is the MD5 of the content: check it.
    if let Some((md5_hex, None)) = etag.as_deref().and_then(parse_etag)
        && !kms
    {
        let got = hex::encode(md5(data.iter().map(|c| &c[..])));
        if got != md5_hex {
            return Err(S3Error::Integrity {
                uri: src.to_string(),
                detail: format!("MD5 {got} does not match ETag {md5_hex}"),
            });
        }
    }
    let len: u64 = data.iter().map(|c| c.len() as u64).sum();
    if len != info.size {
        return Err(S3Error::Integrity {
            uri: src.to_string(),
            detail: format!("received {len} bytes, expected {}", info.size),
        });
    }
    write_batch(file, dest, 0, data).await?;
    ctx.progress.add_bytes(len);
    Ok(())
}

/// The object in parallel ranges of one part size, each streamed to its place in `file`.
async fn get_ranges(
    ctx: &Arc<Ctx>,
    src: &S3Uri,
    info: &ObjectInfo,
    file: Arc<std::fs::File>,
    dest: &Path,
) -> Result<(), S3Error> {
    let part_size = ctx.part_size;
    let mut parts = Parts::new(ctx.part_parallelism);
    for index in 0..info.size.div_ceil(part_size) {
        parts.slot().await?;
        let start = index * part_size;
        let len = part_size.min(info.size - start);
        let permit = ctx.reserve(len).await;
        let (ctx, src, file, dest, etag) = (
            ctx.clone(),
            src.clone(),
            file.clone(),
            dest.to_path_buf(),
            info.etag.clone(),
        );
        parts.spawn(async move {
            // If-Match: every range comes from the same version of the object, or it fails.
            let out = ctx
                .client
                .get_object()
                .bucket(&src.bucket)
                .key(&src.key)
                .range(format!("bytes={}-{}", start, start + len - 1))
                .set_if_match(etag.map(|e| format!("\"{e}\"")))
                .send()
                .await
                .map_err(ctx.object_error("GetObject", &src))?;
            // Stream the range to its place in the file in bounded batches: the part is never
            // held in memory whole.
            let mut body = out.body;
            let mut batch: Vec<Bytes> = Vec::new();
            let (mut batch_len, mut written) = (0u64, 0u64);
            loop {
                let chunk = body
                    .try_next()
                    .await
                    .map_err(|e| interrupted(&ctx, &src, e))?;
                let last = chunk.is_none();
                if let Some(chunk) = chunk {
                    batch_len += chunk.len() as u64;
                    batch.push(chunk);
                }
                if batch_len >= WRITE_BATCH || (last && batch_len > 0) {
                    if written + batch_len > len {
                        break;
                    }
                    write_batch(
                        file.clone(),
                        &dest,
                        start + written,
                        std::mem::take(&mut batch),
                    )
                    .await?;
                    ctx.progress.add_bytes(batch_len);
                    written += batch_len;
                    batch_len = 0;
                }
                if last {
                    break;
                }
            }
            if written + batch_len != len {
                return Err(S3Error::Integrity {
                    uri: src.to_string(),
                    detail: format!(
                        "range at {start} returned {} bytes, expected {len}",
                        written + batch_len
                    ),
                });
            }
            drop(permit);
            Ok(())
        });
    }
    parts.finish().await?;
    Ok(())
}

/// The body of `src` broke off after the response began.
fn interrupted(ctx: &Ctx, src: &S3Uri, e: impl std::fmt::Display) -> S3Error {
    S3Error::Endpoint {
        uri: src.to_string(),
        endpoint: ctx.endpoint.clone(),
        detail: format!("download interrupted: {e}"),
    }
}

/// Write `chunks` contiguously at `offset`, off the async threads.
async fn write_batch(
    file: Arc<std::fs::File>,
    dest: &Path,
    offset: u64,
    chunks: Vec<Bytes>,
) -> Result<(), S3Error> {
    tokio::task::spawn_blocking(move || {
        let mut pos = offset;
        for c in &chunks {
            file.write_all_at(c, pos)?;
            pos += c.len() as u64;
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .expect("write task panicked")
    .map_err(|e| S3Error::local(dest, "cannot write", e))
}
