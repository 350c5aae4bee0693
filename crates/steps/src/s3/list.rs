//! Listing a prefix (all pages merged into entries) and deleting objects, one at a time or in
//! DeleteObjects batches.

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::ctx::{Ctx, unquote_etag};
use super::error::{S3Error, classify};
use super::plan::Entry;
use super::uri::S3Uri;

/// Most keys one DeleteObjects request takes.
const DELETE_BATCH: usize = 1000;

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
                mtime_ns: o.last_modified().map_or(0, |t| t.subsec_nanos()),
                etag: unquote_etag(o.e_tag()),
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
        .map_err(ctx.object_error("DeleteObject", uri))?;
    Ok(())
}
