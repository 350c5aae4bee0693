//! Server-side copies, object to object with no data through this host: CopyObject, or above
//! the copy threshold (at most CopyObject's 5 GiB) a multipart upload of UploadPartCopy parts.

use std::sync::Arc;

use aws_sdk_s3::types::CompletedPart;

use super::ctx::{Ctx, MAX_COPY_OBJECT, Parts};
use super::error::S3Error;
use super::upload::{begin_multipart, finish_multipart, upload_part_size};
use super::uri::S3Uri;

/// Everything but unreserved characters and `/` is encoded in a CopySource.
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

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
        let upload_id = begin_multipart(ctx, dst, None, None, None).await?;
        let parts = copy_parts(ctx, &source, src, size, dst, &upload_id).await;
        return finish_multipart(ctx, dst, &upload_id, parts).await;
    }
    ctx.client
        .copy_object()
        .bucket(&dst.bucket)
        .key(&dst.key)
        .copy_source(source)
        .send()
        .await
        .map_err(ctx.object_error("CopyObject", src))?;
    ctx.progress.add_bytes(size);
    Ok(())
}

/// The parts of a multipart copy of `src` (CopySource `source`, `size` bytes) into the upload
/// `upload_id` to `dst`.
async fn copy_parts(
    ctx: &Arc<Ctx>,
    source: &str,
    src: &S3Uri,
    size: u64,
    dst: &S3Uri,
    upload_id: &str,
) -> Result<Vec<CompletedPart>, S3Error> {
    // Parts are copied by the server, so they can be large (a tenth of the threshold, 512 MiB
    // by default): few requests, no local memory.
    let part_size = upload_part_size(size, ctx.part_size.max(ctx.copy_threshold / 10));
    let mut parts = Parts::new(ctx.part_parallelism.max(4));
    for index in 0..size.div_ceil(part_size) {
        parts.slot().await?;
        let start = index * part_size;
        let end = (start + part_size).min(size) - 1;
        let (ctx, source, src, dst, upload_id) = (
            ctx.clone(),
            source.to_string(),
            src.clone(),
            dst.clone(),
            upload_id.to_string(),
        );
        parts.spawn(async move {
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
                .map_err(ctx.object_error("UploadPartCopy", &src))?;
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
    parts.finish().await
}
