//! Uploads of local files: one PutObject with Content-MD5 up to the part size, above it a
//! multipart upload of parallel parts with CRC32 checksums. Also the multipart lifecycle
//! (create and register, complete, or abort) that server-side copies share.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::ctx::{Ctx, Parts};
use super::error::S3Error;
use super::local::{
    CRC32_METADATA, MTIME_METADATA, combine_crc32, content_md5, crc32_base64, crc32_hex,
    file_crc32, mtime_value,
};
use super::uri::S3Uri;

/// S3 accepts at most this many parts per multipart upload.
pub(super) const MAX_PARTS: u64 = 10_000;

/// `wanted`, or the smallest whole MiB that keeps `size` within `MAX_PARTS` parts.
pub fn upload_part_size(size: u64, wanted: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    wanted.max(size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB)
}

/// Upload a local file of `size` bytes to `dst`.
pub async fn upload_file(
    ctx: Arc<Ctx>,
    path: PathBuf,
    size: u64,
    dst: S3Uri,
) -> Result<(), S3Error> {
    let file = std::fs::File::open(&path)
        .map_err(|e| S3Error::local(&path, "cannot open for reading", e))?;
    // Recorded with the object so that sync can tell an edit within LastModified's second.
    let mtime = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .map(|d| mtime_value(d.as_secs() as i64, d.subsec_nanos()));
    let file = Arc::new(file);
    if size <= ctx.part_size {
        put_single(&ctx, file, &path, size, &dst, mtime).await
    } else {
        put_multipart(ctx, file, path, size, dst, mtime).await
    }
}

async fn put_single(
    ctx: &Ctx,
    file: Arc<std::fs::File>,
    path: &Path,
    size: u64,
    dst: &S3Uri,
    mtime: Option<String>,
) -> Result<(), S3Error> {
    let _mem = ctx.reserve(size).await;
    let data = read_at(file, path, 0, size as usize).await?;
    put_bytes(ctx, data, dst, mtime).await?;
    ctx.progress.add_bytes(size);
    Ok(())
}

/// One PutObject of `data` with Content-MD5 and the CRC32 metadata.
pub(super) async fn put_bytes(
    ctx: &Ctx,
    data: Bytes,
    dst: &S3Uri,
    mtime: Option<String>,
) -> Result<(), S3Error> {
    let mut put = ctx.client.put_object();
    if let Some(m) = mtime {
        put = put.metadata(MTIME_METADATA, m);
    }
    put.bucket(&dst.bucket)
        .key(&dst.key)
        .content_length(data.len() as i64)
        // Content-MD5 makes the server verify the body (S3, MinIO, s3rver and moto all do).
        .content_md5(content_md5(&data))
        .metadata(CRC32_METADATA, crc32_hex(crc32fast::hash(&data)))
        .body(ByteStream::from(data))
        .customize()
        // The payload is already covered by Content-MD5; signing it too would hash it twice.
        .disable_payload_signing()
        .send()
        .await
        .map_err(ctx.object_error("PutObject", dst))?;
    Ok(())
}

async fn put_multipart(
    ctx: Arc<Ctx>,
    file: Arc<std::fs::File>,
    path: PathBuf,
    size: u64,
    dst: S3Uri,
    mtime: Option<String>,
) -> Result<(), S3Error> {
    // The whole file's CRC32 goes into the object's metadata, which CreateMultipartUpload
    // fixes before any part is read: one extra pass over the file (CRC32 runs at several
    // GB/s), checked at the end against the CRCs of the parts as they were sent.
    let crc = {
        let (file, path) = (file.clone(), path.clone());
        tokio::task::spawn_blocking(move || file_crc32(&file, size))
            .await
            .expect("CRC task panicked")
            .map_err(|e| S3Error::local(&path, "cannot read", e))?
    };
    let upload_id = begin_multipart(
        &ctx,
        &dst,
        Some(ChecksumAlgorithm::Crc32),
        Some(crc32_hex(crc)),
        mtime,
    )
    .await?;
    let part_size = upload_part_size(size, ctx.part_size);
    let parts = upload_parts(&ctx, file, &path, size, &dst, &upload_id)
        .await
        .and_then(|parts| {
            // A file that changed while it was read would otherwise leave an object whose
            // recorded CRC no later download could match.
            if sent_crc32(&parts, part_size, size) == Some(crc) {
                Ok(parts)
            } else {
                Err(S3Error::local(
                    &path,
                    "changed while it was uploaded (its parts do not add up to the CRC32 read first); upload it again",
                    std::io::Error::other("content changed"),
                ))
            }
        });
    finish_multipart(&ctx, &dst, &upload_id, parts).await
}

/// The CRC32 of the whole object from the CRC32s of its parts as sent (None when a part has
/// none, or a malformed one).
fn sent_crc32(parts: &[CompletedPart], part_size: u64, size: u64) -> Option<u32> {
    let mut sorted: Vec<&CompletedPart> = parts.iter().collect();
    sorted.sort_by_key(|p| p.part_number());
    let mut pieces = Vec::with_capacity(sorted.len());
    for (i, p) in sorted.iter().enumerate() {
        let raw = aws_smithy_types::base64::decode(p.checksum_crc32()?).ok()?;
        let crc = u32::from_be_bytes(raw.try_into().ok()?);
        let offset = i as u64 * part_size;
        pieces.push((crc, part_size.min(size.checked_sub(offset)?)));
    }
    Some(combine_crc32(pieces))
}

/// CreateMultipartUpload to `dst` (its parts carrying `checksum`, if any; `crc32`: the whole
/// content's, for [`CRC32_METADATA`]), registered before the first part so that an
/// interruption from here on aborts it. Returns the upload id.
pub(super) async fn begin_multipart(
    ctx: &Ctx,
    dst: &S3Uri,
    checksum: Option<ChecksumAlgorithm>,
    crc32: Option<String>,
    mtime: Option<String>,
) -> Result<String, S3Error> {
    let mut create = ctx
        .client
        .create_multipart_upload()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .set_checksum_algorithm(checksum);
    if let Some(crc) = crc32 {
        create = create.metadata(CRC32_METADATA, crc);
    }
    if let Some(m) = mtime {
        create = create.metadata(MTIME_METADATA, m);
    }
    let created = create
        .send()
        .await
        .map_err(ctx.object_error("CreateMultipartUpload", dst))?;
    let upload_id = created.upload_id().ok_or_else(|| S3Error::Service {
        uri: dst.to_string(),
        op: "CreateMultipartUpload",
        code: "NoUploadId".into(),
        message: "the server returned no upload id".into(),
    })?;
    ctx.register_upload(upload_id, dst);
    Ok(upload_id.to_string())
}

/// Complete a multipart upload with its parts, or abort it when the parts (or the completion)
/// failed: never leave an invisible, billed, half-uploaded object behind. Deregisters the
/// upload from the interruption handler either way.
pub(super) async fn finish_multipart(
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
                Err(e) => Err(ctx.object_error("CompleteMultipartUpload", dst)(e)),
            }
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Best effort: the failure that matters is the one already in `result`.
        let _ = ctx.abort_upload(&dst.bucket, &dst.key, upload_id).await;
    }
    ctx.forget_upload(upload_id);
    result
}

/// A 200 response to CompleteMultipartUpload that the SDK could not parse but that is not an
/// `<Error>` document: the upload did complete. (moto names the result element
/// `CompleteMultipartUploadResponse`; S3 reports late failures as a 200 with `<Error>`.)
fn completed_anyway<E>(err: &SdkError<E, HttpResponse>) -> bool {
    let Some(raw) = err.raw_response() else {
        return false;
    };
    let body = raw.body().bytes().unwrap_or_default();
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    raw.status().as_u16() == 200 && !has(b"<Error>") && has(b"<ETag>")
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
    let mut parts = Parts::new(ctx.part_parallelism);
    for index in 0..size.div_ceil(part_size) {
        parts.slot().await?;
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
        parts.spawn(async move {
            let data = read_at(file, &path, offset, len as usize).await?;
            let part = upload_part(&ctx, &dst, &upload_id, (index + 1) as i32, data).await?;
            drop(permit);
            ctx.progress.add_bytes(len);
            Ok(part)
        });
    }
    parts.finish().await
}

/// UploadPart of `data` as part `number`, with its CRC32 checksum.
pub(super) async fn upload_part(
    ctx: &Ctx,
    dst: &S3Uri,
    upload_id: &str,
    number: i32,
    data: Bytes,
) -> Result<CompletedPart, S3Error> {
    let crc = crc32_base64(&data);
    let out = ctx
        .client
        .upload_part()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .upload_id(upload_id)
        .part_number(number)
        .content_length(data.len() as i64)
        .checksum_crc32(&crc)
        .body(ByteStream::from(data))
        .customize()
        // The part is covered by its CRC32 checksum header.
        .disable_payload_signing()
        .send()
        .await
        .map_err(ctx.object_error("UploadPart", dst))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .checksum_crc32(out.checksum_crc32().unwrap_or(&crc))
        .build())
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
