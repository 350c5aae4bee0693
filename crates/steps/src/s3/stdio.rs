//! `cp - s3://...` and `cp s3://... -`: streams from stdin and to stdout, as `aws s3 cp` does.
//!
//! An upload from stdin reads part-sized chunks: a stream that ends within the first part is
//! one PutObject with Content-MD5 (and the CRC32 metadata), a longer one a multipart upload
//! whose parts carry CRC32 checksums, several in flight within `--max-memory`. The part size
//! grows to keep `--expected-size` within S3's 10,000 parts. A download to stdout is one
//! GetObject written in order, checked at the end like any download (the CRC32 the upload
//! recorded, a CRC the server keeps, the ETag's MD5 or its part MD5s): a mismatch cannot take the bytes back, so it
//! fails the step.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::check::{Check, head, verdict};
use super::ctx::{Ctx, Parts};
use super::error::S3Error;
use super::ops::Stats;
use super::plan::part_size_candidates;
use super::range_hash::RangeHash;
use super::upload::{MAX_PARTS, begin_multipart, finish_multipart, put_bytes, upload_part};
use super::uri::S3Uri;
use aws_sdk_s3::types::ChecksumAlgorithm;

fn stdin_error(e: std::io::Error) -> S3Error {
    S3Error::local("-", "cannot read standard input", e)
}

/// Read up to `len` bytes (fewer only at the end of the stream).
async fn read_chunk(input: &mut (impl AsyncRead + Unpin), len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = input.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// `cp - s3://bucket/key`.
pub async fn upload_stdin(
    ctx: &Arc<Ctx>,
    dst: S3Uri,
    expected_size: Option<u64>,
    dryrun: bool,
) -> Result<Stats, S3Error> {
    if dst.key.is_empty() || dst.key.ends_with('/') {
        return Err(S3Error::Usage(format!(
            "{dst} names a prefix: an upload from stdin needs the object's full key"
        )));
    }
    let line = format!("upload: - to {dst}");
    if dryrun {
        ctx.progress.println(&format!("(dryrun) {line}"));
        return Ok(Stats::default());
    }
    let part_size = super::upload::upload_part_size(expected_size.unwrap_or(0), ctx.part_size);
    ctx.progress.add_total(1, expected_size.unwrap_or(0));
    let mut input = tokio::io::stdin();
    let permit = ctx.reserve(part_size).await;
    let first = read_chunk(&mut input, part_size as usize)
        .await
        .map_err(stdin_error)?;
    if (first.len() as u64) < part_size {
        let n = first.len() as u64;
        put_bytes(ctx, first.into(), &dst, None).await?;
        drop(permit);
        ctx.progress.add_bytes(n);
        ctx.progress.file_done(&line);
        return Ok(Stats::default());
    }
    let upload_id = begin_multipart(ctx, &dst, Some(ChecksumAlgorithm::Crc32), None, None).await?;
    let parts = stream_parts(ctx, &mut input, first, permit, part_size, &dst, &upload_id).await;
    finish_multipart(ctx, &dst, &upload_id, parts).await?;
    ctx.progress.file_done(&line);
    Ok(Stats::default())
}

async fn stream_parts(
    ctx: &Arc<Ctx>,
    input: &mut (impl AsyncRead + Unpin),
    first: Vec<u8>,
    first_permit: tokio::sync::OwnedSemaphorePermit,
    part_size: u64,
    dst: &S3Uri,
    upload_id: &str,
) -> Result<Vec<aws_sdk_s3::types::CompletedPart>, S3Error> {
    let mut parts = Parts::new(ctx.part_parallelism);
    let mut next = Some((first, first_permit));
    let mut number: u64 = 0;
    while let Some((data, permit)) = next.take() {
        if data.is_empty() {
            break;
        }
        number += 1;
        if number > MAX_PARTS {
            return Err(S3Error::Usage(format!(
                "stdin is longer than {MAX_PARTS} parts of {part_size} bytes: pass --expected-size (or a larger --part-size)"
            )));
        }
        let full = data.len() as u64 == part_size;
        let (ctx2, dst2, id) = (ctx.clone(), dst.clone(), upload_id.to_string());
        parts.slot().await?;
        parts.spawn(async move {
            let len = data.len() as u64;
            let part = upload_part(&ctx2, &dst2, &id, number as i32, data.into()).await?;
            drop(permit);
            ctx2.progress.add_bytes(len);
            Ok(part)
        });
        if full {
            let permit = ctx.reserve(part_size).await;
            let data = read_chunk(input, part_size as usize)
                .await
                .map_err(stdin_error)?;
            next = Some((data, permit));
        }
    }
    parts.finish().await
}

/// `cp s3://bucket/key -`: the object's bytes on stdout and nothing else.
pub async fn download_stdout(ctx: &Arc<Ctx>, src: S3Uri, dryrun: bool) -> Result<Stats, S3Error> {
    if src.key.is_empty() || src.key.ends_with('/') {
        return Err(S3Error::Usage(format!(
            "{src} names a prefix, not an object: only one object can go to stdout"
        )));
    }
    let line = format!("download: {src} to -");
    if dryrun {
        ctx.progress.eprintln(&format!("(dryrun) {line}"));
        return Ok(Stats::default());
    }
    let info = head(ctx, &src).await?;
    ctx.progress.add_total(1, info.size);
    let check = Check::choose_with(&info, ctx.part_size, ctx.verify);
    // A multipart ETag's part size is inferred; the stream cannot be read twice, so every
    // candidate is hashed at once (usually one).
    let mut hashes: Vec<(Check, RangeHash)> = match (check.part_size(), check.parts()) {
        (Some(_), Some(parts)) => part_size_candidates(info.size, parts, ctx.part_size)
            .into_iter()
            .map(|ps| {
                let c = check.with_part_size(ps);
                let h = RangeHash::new(&c, true);
                (c, h)
            })
            .collect(),
        _ => vec![(check.clone(), RangeHash::new(&check, true))],
    };
    let out = ctx
        .client
        .get_object()
        .bucket(&src.bucket)
        .key(&src.key)
        .set_if_match(info.etag.as_ref().map(|e| format!("\"{e}\"")))
        .send()
        .await
        .map_err(ctx.object_error("GetObject", &src))?;
    let etag_not_md5 = out
        .server_side_encryption()
        .is_some_and(|s| s.as_str().starts_with("aws:kms"))
        || out.sse_customer_algorithm().is_some();
    let mut body: ByteStream = out.body;
    let mut stdout = tokio::io::stdout();
    let mut sent = 0u64;
    while let Some(chunk) = body.try_next().await.map_err(|e| S3Error::Endpoint {
        uri: src.to_string(),
        endpoint: ctx.endpoint.clone(),
        detail: format!("download interrupted: {e}"),
    })? {
        stdout
            .write_all(&chunk)
            .await
            .map_err(|e| S3Error::local("-", "cannot write to standard output", e))?;
        for (_, h) in &mut hashes {
            h.update(&chunk);
        }
        sent += chunk.len() as u64;
        ctx.progress.add_bytes(chunk.len() as u64);
    }
    stdout
        .flush()
        .await
        .map_err(|e| S3Error::local("-", "cannot write to standard output", e))?;
    if sent != info.size {
        return Err(S3Error::Integrity {
            uri: src.to_string(),
            detail: format!("received {sent} bytes, the object has {}", info.size),
        });
    }
    let verdicts: Vec<Result<(), String>> = hashes
        .into_iter()
        .map(|(c, h)| verdict(&c, &h.finish(), etag_not_md5))
        .collect();
    if let Some(Err(e)) = verdicts
        .iter()
        .find(|v| v.is_err())
        .filter(|_| verdicts.iter().all(Result::is_err))
    {
        return Err(S3Error::Integrity {
            uri: src.to_string(),
            detail: format!("{e} (the bytes already written to stdout are not the object's)"),
        });
    }
    ctx.progress.file_done_on_stderr(&line);
    Ok(Stats::default())
}
