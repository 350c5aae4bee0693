//! Transfer engines: uploads (single PUT or parallel multipart), downloads (single GET or
//! parallel ranged GETs into a temporary file), server-side copies, deletes and listings.
//!
//! Memory is bounded by one semaphore counting buffered KiB: every part or small object holds
//! permits for its buffer while it is in memory, so the peak is about `memory_budget` however
//! many files run at once. Buffers are `Bytes`, handed to the SDK without copying.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::error::{S3Error, Target, classify};
use super::plan::{Entry, parse_etag, part_size_candidates};
use super::progress::Progress;
use super::uri::S3Uri;

/// Bytes of a ranged download collected before they are written out.
const WRITE_BATCH: u64 = 4 * 1024 * 1024;

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

/// S3 accepts at most this many parts per multipart upload.
const MAX_PARTS: u64 = 10_000;

/// `wanted`, or the smallest whole MiB that keeps `size` within [`MAX_PARTS`] parts.
pub fn upload_part_size(size: u64, wanted: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    wanted.max(size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB)
}

/// Largest object CopyObject accepts.
const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;
/// Most keys one DeleteObjects request takes.
const DELETE_BATCH: usize = 1000;

/// Shared state of one step invocation.
pub struct Ctx {
    /// The S3 client (cheap to clone; shares one connection pool).
    pub client: Client,
    /// Endpoint in use, for error messages.
    pub endpoint: String,
    /// Part size for multipart uploads and ranged downloads; also the single-request threshold.
    pub part_size: u64,
    /// Files in flight at once.
    pub concurrency: usize,
    /// Parts of one file in flight at once.
    pub part_parallelism: usize,
    memory: Arc<Semaphore>,
    memory_kib: u32,
    /// Progress counters and output.
    pub progress: Arc<Progress>,
    /// Multipart uploads in progress (upload id → bucket, key), aborted on interruption.
    uploads: Mutex<HashMap<String, (String, String)>>,
    /// Mode of downloaded files (0666 minus the umask, like any new file; the temporary
    /// file they start as is 0600).
    pub file_mode: u32,
    /// Objects larger than this are copied with UploadPartCopy (at most CopyObject's 5 GiB).
    pub copy_threshold: u64,
}

impl Ctx {
    /// New context. `memory_budget` bounds the bytes buffered at once.
    pub fn new(
        client: Client,
        endpoint: String,
        part_size: u64,
        concurrency: usize,
        memory_budget: u64,
        progress: Arc<Progress>,
    ) -> Self {
        let budget = memory_budget.max(part_size);
        let memory_kib = u32::try_from(budget.div_ceil(1024)).unwrap_or(u32::MAX);
        let part_parallelism = ((budget / part_size.max(1)) as usize).clamp(1, concurrency.max(1));
        Self {
            client,
            endpoint,
            part_size,
            concurrency: concurrency.max(1),
            part_parallelism,
            memory: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_kib,
            progress,
            uploads: Mutex::new(HashMap::new()),
            file_mode: 0o644,
            copy_threshold: MAX_COPY_OBJECT,
        }
    }

    fn target<'a>(&'a self, op: &'static str, bucket: &'a str, key: Option<&'a str>) -> Target<'a> {
        Target {
            op,
            bucket,
            key,
            endpoint: &self.endpoint,
        }
    }

    /// Wait until `bytes` more may be buffered.
    async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.memory_kib);
        self.memory
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("semaphore never closed")
    }

    /// Abort every multipart upload still registered (after Ctrl-C / SIGTERM).
    pub async fn abort_all_uploads(&self) {
        let pending: Vec<_> = self.uploads.lock().expect("lock").drain().collect();
        for (id, (bucket, key)) in pending {
            let res = self
                .client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .send()
                .await;
            match res {
                Ok(_) => self
                    .progress
                    .eprintln(&format!("aborted multipart upload of s3://{bucket}/{key}")),
                Err(e) => self.progress.eprintln(&format!(
                    "warning: could not abort multipart upload of s3://{bucket}/{key}: {}",
                    classify(e, &self.target("AbortMultipartUpload", &bucket, Some(&key)))
                )),
            }
        }
    }
}

/// A 200 response to CompleteMultipartUpload that the SDK could not parse but that is not an
/// `<Error>` document: the upload did complete. (moto names the result element
/// `CompleteMultipartUploadResponse`; S3 reports late failures as a 200 with `<Error>`.)
fn completed_anyway<E>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    let Some(raw) = err.raw_response() else {
        return false;
    };
    let body = raw.body().bytes().unwrap_or_default();
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    raw.status().as_u16() == 200 && !has(b"<Error>") && has(b"<ETag>")
}

fn b64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
}

/// Read `len` bytes at `offset` off the async threads.
async fn read_at(
    file: Arc<std::fs::File>,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Bytes, S3Error> {
    let buf = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map(|()| buf)
    })
    .await
    .expect("read task panicked")
    .map_err(|e| {
        S3Error::local(
            path,
            "cannot read (did the file change during the upload?)",
            e,
        )
    })?;
    Ok(Bytes::from(buf))
}

fn open_for_read(path: &Path) -> Result<std::fs::File, S3Error> {
    std::fs::File::open(path).map_err(|e| S3Error::local(path, "cannot open for reading", e))
}

/// Upload a local file of `size` bytes to `dst`.
pub async fn upload_file(
    ctx: Arc<Ctx>,
    path: PathBuf,
    size: u64,
    dst: S3Uri,
) -> Result<(), S3Error> {
    let file = Arc::new(open_for_read(&path)?);
    if size <= ctx.part_size {
        put_single(&ctx, file, &path, size, &dst).await
    } else {
        put_multipart(ctx, file, path, size, dst).await
    }
}

async fn put_single(
    ctx: &Ctx,
    file: Arc<std::fs::File>,
    path: &Path,
    size: u64,
    dst: &S3Uri,
) -> Result<(), S3Error> {
    let _mem = ctx.reserve(size).await;
    let data = read_at(file, path, 0, size as usize).await?;
    // Content-MD5 makes the server verify the body (S3, MinIO, s3rver and moto all do).
    let md5 = b64(&Md5::digest(&data));
    ctx.client
        .put_object()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .content_length(size as i64)
        .content_md5(md5)
        .body(ByteStream::from(data))
        .customize()
        // The payload is already covered by Content-MD5; signing it too would hash it twice.
        .disable_payload_signing()
        .send()
        .await
        .map_err(|e| classify(e, &ctx.target("PutObject", &dst.bucket, Some(&dst.key))))?;
    ctx.progress.add_bytes(size);
    Ok(())
}

async fn put_multipart(
    ctx: Arc<Ctx>,
    file: Arc<std::fs::File>,
    path: PathBuf,
    size: u64,
    dst: S3Uri,
) -> Result<(), S3Error> {
    let target = ctx.target("CreateMultipartUpload", &dst.bucket, Some(&dst.key));
    let created = ctx
        .client
        .create_multipart_upload()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .map_err(|e| classify(e, &target))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| S3Error::Service {
            uri: dst.to_string(),
            op: "CreateMultipartUpload",
            code: "NoUploadId".into(),
            message: "the server returned no upload id".into(),
        })?
        .to_string();
    // Registered before the first part: an interruption from here on aborts the upload.
    ctx.uploads
        .lock()
        .expect("lock")
        .insert(upload_id.clone(), (dst.bucket.clone(), dst.key.clone()));

    let parts = upload_parts(&ctx, file, &path, size, &dst, &upload_id).await;
    finish_multipart(&ctx, &dst, &upload_id, parts).await
}

/// Complete a multipart upload with its parts, or abort it when the parts (or the completion)
/// failed: never leave an invisible, billed, half-uploaded object behind. Deregisters the
/// upload from the interruption handler either way.
async fn finish_multipart(
    ctx: &Ctx,
    dst: &S3Uri,
    upload_id: &str,
    parts: Result<Vec<CompletedPart>, S3Error>,
) -> Result<(), S3Error> {
    let result = match parts {
        Ok(mut parts) => {
            parts.sort_by_key(|p| p.part_number());
            let done = ctx
                .client
                .complete_multipart_upload()
                .bucket(&dst.bucket)
                .key(&dst.key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match done {
                Ok(_) => Ok(()),
                Err(e) if completed_anyway(&e) => Ok(()),
                Err(e) => Err(classify(
                    e,
                    &ctx.target("CompleteMultipartUpload", &dst.bucket, Some(&dst.key)),
                )),
            }
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = ctx
            .client
            .abort_multipart_upload()
            .bucket(&dst.bucket)
            .key(&dst.key)
            .upload_id(upload_id)
            .send()
            .await;
    }
    ctx.uploads.lock().expect("lock").remove(upload_id);
    result
}

async fn upload_parts(
    ctx: &Arc<Ctx>,
    file: Arc<std::fs::File>,
    path: &Path,
    size: u64,
    dst: &S3Uri,
    upload_id: &str,
) -> Result<Vec<CompletedPart>, S3Error> {
    let part_size = upload_part_size(size, ctx.part_size);
    let count = size.div_ceil(part_size);
    let mut parts = Vec::with_capacity(count as usize);
    // Dropping the set (on error or interruption) cancels the parts still in flight.
    let mut set = JoinSet::new();
    for index in 0..count {
        while set.len() >= ctx.part_parallelism {
            parts.push(join_one(&mut set).await?);
        }
        let offset = index * part_size;
        let len = part_size.min(size - offset);
        let permit = ctx.reserve(len).await;
        let (ctx, file, path, dst, upload_id) = (
            ctx.clone(),
            file.clone(),
            path.to_path_buf(),
            dst.clone(),
            upload_id.to_string(),
        );
        set.spawn(async move {
            let data = read_at(file, &path, offset, len as usize).await?;
            let crc = b64(&crc32fast::hash(&data).to_be_bytes());
            let number = (index + 1) as i32;
            let out = ctx
                .client
                .upload_part()
                .bucket(&dst.bucket)
                .key(&dst.key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(len as i64)
                .checksum_crc32(&crc)
                .body(ByteStream::from(data))
                .customize()
                // The part is covered by its CRC32 checksum header.
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify(e, &ctx.target("UploadPart", &dst.bucket, Some(&dst.key))))?;
            drop(permit);
            ctx.progress.add_bytes(len);
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_crc32(out.checksum_crc32().unwrap_or(&crc))
                .build())
        });
    }
    while !set.is_empty() {
        parts.push(join_one(&mut set).await?);
    }
    parts.sort_by_key(|p| p.part_number());
    Ok(parts)
}

async fn join_one<T: 'static>(set: &mut JoinSet<Result<T, S3Error>>) -> Result<T, S3Error> {
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) if e.is_cancelled() => Err(S3Error::Interrupted),
        Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        None => unreachable!("join_one on an empty set"),
    }
}

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
        .map_err(|e| classify(e, &ctx.target("HeadObject", &src.bucket, Some(&src.key))));
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
        etag: out.e_tag().map(|e| e.trim_matches('"').to_string()),
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

async fn get_single(
    ctx: &Ctx,
    src: &S3Uri,
    info: &ObjectInfo,
    file: Arc<std::fs::File>,
    dest: &Path,
) -> Result<(), S3Error> {
    let _mem = ctx.reserve(info.size).await;
    let target = ctx.target("GetObject", &src.bucket, Some(&src.key));
    let out = ctx
        .client
        .get_object()
        .bucket(&src.bucket)
        .key(&src.key)
        .send()
        .await
        .map_err(|e| classify(e, &target))?;
    let kms = out
        .server_side_encryption()
        .is_some_and(|s| s.as_str().starts_with("aws:kms"));
    let etag = out.e_tag().map(|e| e.trim_matches('"').to_string());
    let data = out
        .body
        .collect()
        .await
        .map_err(|e| S3Error::Endpoint {
            uri: src.to_string(),
            endpoint: ctx.endpoint.clone(),
            detail: format!("download interrupted: {e}"),
        })?
        .into_segments()
        .collect::<Vec<Bytes>>();
    // A plain (single-part, non-KMS) ETag is the MD5 of the content: check it.
    if let Some((md5_hex, None)) = etag.as_deref().and_then(parse_etag)
        && !kms
    {
        let mut h = Md5::new();
        data.iter().for_each(|c| h.update(c));
        let got = hex::encode(h.finalize());
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

async fn get_ranges(
    ctx: &Arc<Ctx>,
    src: &S3Uri,
    info: &ObjectInfo,
    file: Arc<std::fs::File>,
    dest: &Path,
) -> Result<(), S3Error> {
    let part_size = ctx.part_size;
    let count = info.size.div_ceil(part_size);
    let mut set = JoinSet::new();
    for index in 0..count {
        while set.len() >= ctx.part_parallelism {
            join_one(&mut set).await?;
        }
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
        set.spawn(async move {
            let target = ctx.target("GetObject", &src.bucket, Some(&src.key));
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
                .map_err(|e| classify(e, &target))?;
            // Stream the range to its place in the file in bounded batches: the part is never
            // held in memory whole.
            let mut body = out.body;
            let mut batch: Vec<Bytes> = Vec::new();
            let (mut batch_len, mut written) = (0u64, 0u64);
            loop {
                let chunk = body.try_next().await.map_err(|e| S3Error::Endpoint {
                    uri: src.to_string(),
                    endpoint: ctx.endpoint.clone(),
                    detail: format!("download interrupted: {e}"),
                })?;
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
    while !set.is_empty() {
        join_one(&mut set).await?;
    }
    Ok(())
}

/// Server-side copy (no data through this host): CopyObject, or a parallel multipart copy
/// (UploadPartCopy) above CopyObject's 5 GiB limit.
pub async fn copy(ctx: &Arc<Ctx>, src: &S3Uri, size: u64, dst: &S3Uri) -> Result<(), S3Error> {
    // CopySource is `bucket/key`, URL-encoded (keys may hold spaces, `+`, `%`, unicode).
    let source = format!(
        "{}/{}",
        src.bucket,
        percent_encoding::utf8_percent_encode(&src.key, KEY_ENCODE)
    );
    if size > ctx.copy_threshold.min(MAX_COPY_OBJECT) {
        return copy_multipart(ctx, source, src, size, dst).await;
    }
    ctx.client
        .copy_object()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .copy_source(source)
        .send()
        .await
        .map_err(|e| classify(e, &ctx.target("CopyObject", &src.bucket, Some(&src.key))))?;
    ctx.progress.add_bytes(size);
    Ok(())
}

async fn copy_multipart(
    ctx: &Arc<Ctx>,
    source: String,
    src: &S3Uri,
    size: u64,
    dst: &S3Uri,
) -> Result<(), S3Error> {
    // Parts are copied by the server, so they can be large (a tenth of the threshold, 512 MiB
    // by default): few requests, no local memory.
    let part_size = upload_part_size(size, ctx.part_size.max(ctx.copy_threshold / 10));
    let created = ctx
        .client
        .create_multipart_upload()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .send()
        .await
        .map_err(|e| {
            classify(
                e,
                &ctx.target("CreateMultipartUpload", &dst.bucket, Some(&dst.key)),
            )
        })?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    ctx.uploads
        .lock()
        .expect("lock")
        .insert(upload_id.clone(), (dst.bucket.clone(), dst.key.clone()));
    let mut set = JoinSet::new();
    let mut parts = Vec::new();
    let mut result = Ok(());
    for index in 0..size.div_ceil(part_size) {
        while set.len() >= ctx.part_parallelism.max(4) {
            match join_one(&mut set).await {
                Ok(p) => parts.push(p),
                Err(e) => result = Err(e),
            }
        }
        if result.is_err() {
            break;
        }
        let start = index * part_size;
        let end = (start + part_size).min(size) - 1;
        let (ctx, source, src, dst, upload_id) = (
            ctx.clone(),
            source.clone(),
            src.clone(),
            dst.clone(),
            upload_id.clone(),
        );
        set.spawn(async move {
            let number = (index + 1) as i32;
            let out = ctx
                .client
                .upload_part_copy()
                .bucket(&dst.bucket)
                .key(&dst.key)
                .upload_id(&upload_id)
                .part_number(number)
                .copy_source(source)
                .copy_source_range(format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        &ctx.target("UploadPartCopy", &src.bucket, Some(&src.key)),
                    )
                })?;
            ctx.progress.add_bytes(end + 1 - start);
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(
                    out.copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_string),
                )
                .build())
        });
    }
    while result.is_ok() && !set.is_empty() {
        match join_one(&mut set).await {
            Ok(p) => parts.push(p),
            Err(e) => result = Err(e),
        }
    }
    drop(set);
    finish_multipart(ctx, dst, &upload_id, result.map(|()| parts)).await
}

/// Everything but unreserved characters and `/` is encoded in a CopySource.
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Delete keys in batches; returns the keys that failed with their errors.
pub async fn delete_keys(
    ctx: &Ctx,
    bucket: &str,
    keys: &[String],
) -> Result<Vec<(String, String)>, S3Error> {
    let mut failed = Vec::new();
    for chunk in keys.chunks(DELETE_BATCH) {
        let objects = chunk
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| S3Error::Usage(e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| S3Error::Usage(e.to_string()))?;
        let out = ctx
            .client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify(e, &ctx.target("DeleteObjects", bucket, None)))?;
        for err in out.errors() {
            failed.push((
                err.key().unwrap_or("").to_string(),
                format!(
                    "{}: {}",
                    err.code().unwrap_or("error"),
                    err.message().unwrap_or("")
                ),
            ));
        }
    }
    Ok(failed)
}

/// Delete one key.
pub async fn delete_key(ctx: &Ctx, uri: &S3Uri) -> Result<(), S3Error> {
    ctx.client
        .delete_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| classify(e, &ctx.target("DeleteObject", &uri.bucket, Some(&uri.key))))?;
    Ok(())
}

/// One page-merged listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects, with `rel` = the full key.
    pub objects: Vec<Entry>,
    /// Common prefixes (only with a delimiter).
    pub prefixes: Vec<String>,
}

/// List `prefix` in `bucket` (recursively without `delimiter`).
pub async fn list(
    ctx: &Ctx,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
) -> Result<Listing, S3Error> {
    let mut pages = ctx
        .client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .set_delimiter(delimiter.map(str::to_string))
        .into_paginator()
        .send();
    let mut listing = Listing::default();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(e, &ctx.target("ListObjectsV2", bucket, None)))?;
        for o in page.contents() {
            listing.objects.push(Entry {
                rel: o.key().unwrap_or("").to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                mtime: o.last_modified().map_or(0, |t| t.secs()),
                etag: o.e_tag().map(|e| e.trim_matches('"').to_string()),
            });
        }
        for p in page.common_prefixes() {
            if let Some(p) = p.prefix() {
                listing.prefixes.push(p.to_string());
            }
        }
    }
    Ok(listing)
}

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
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                out.push((
                    Entry {
                        rel: child_rel,
                        size: m.len(),
                        mtime,
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
    let parts = remote_etag.and_then(parse_etag).and_then(|(_, p)| p);
    let Some(parts) = parts else {
        return md5_range(&file, 0, size).map(hex::encode).map_err(read_err);
    };
    let remote_hex = remote_etag
        .and_then(parse_etag)
        .map(|(h, _)| h)
        .unwrap_or_default();
    let mut first = None;
    for ps in part_size_candidates(size, parts, our_part_size) {
        let mut outer = Md5::new();
        let mut offset = 0;
        while offset < size {
            let len = ps.min(size - offset);
            outer.update(md5_range(&file, offset, len).map_err(read_err)?);
            offset += len;
        }
        let hex = hex::encode(outer.finalize());
        if hex == remote_hex {
            return Ok(format!("{hex}-{parts}"));
        }
        first.get_or_insert(format!("{hex}-{parts}"));
    }
    Ok(first.unwrap_or_default())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_stay_within_10000_parts() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(upload_part_size(100 * MIB, 16 * MIB), 16 * MIB);
        let huge = 1024 * 1024 * MIB; // 1 TiB
        let ps = upload_part_size(huge, 16 * MIB);
        assert!(huge.div_ceil(ps) <= MAX_PARTS);
        assert_eq!(ps % MIB, 0);
    }
}
