//! `sync SRC DST`: plan what differs (`plan::plan_sync`), settle the same-second and
//! content comparisons, then copy and delete through the subcommands' shared jobs (`ops`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::ctx::Ctx;
use super::error::S3Error;
use super::local::{MTIME_METADATA, local_etag_async, mtime_value};
use super::ops::{Job, Listed, Stats, both_local, delete_s3, jobs_for, list_source, run_jobs};
use super::plan::{Compare, Entry, Filters, plan_sync};
use super::uri::{Location, S3Uri, join_key};

/// `sync SRC DST`.
pub async fn sync(
    ctx: &Arc<Ctx>,
    src: Location,
    dst: Location,
    filters: &Filters,
    compare: Compare,
    delete: bool,
    dryrun: bool,
) -> Result<Stats, S3Error> {
    if let (Location::Local(_), Location::Local(_)) = (&src, &dst) {
        return Err(both_local(&src, &dst));
    }
    if matches!(src, Location::Stdio) || matches!(dst, Location::Stdio) {
        return Err(S3Error::Usage(
            "sync works on directories and prefixes, not `-` (use cp for a stream)".into(),
        ));
    }
    // --exact-timestamps only changes downloads (as in the AWS CLI): their local times are
    // the objects' exactly, while an upload's LastModified is always later than the file.
    let compare = match (&src, &dst, compare) {
        (Location::S3(_), Location::Local(_), c) => c,
        (_, _, Compare::ExactTimestamps) => Compare::SizeAndTime,
        (_, _, c) => c,
    };
    // Both sides are listed at once: a sync with nothing to do costs one listing's time.
    let dst_listing = async {
        Ok::<_, S3Error>(match &dst {
            // A missing local directory is simply empty.
            Location::Local(dir) if !dir.exists() => None,
            Location::Stdio => None,
            Location::S3(_) | Location::Local(_) => Some(list_source(ctx, &dst, filters).await?),
        })
    };
    let (listed, dst_listed) = tokio::try_join!(list_source(ctx, &src, filters), dst_listing)?;
    let dst_entries: Vec<(Entry, Option<PathBuf>)> = match dst_listed {
        None => Vec::new(),
        Some(Listed::Local(files)) => files.into_iter().map(|(e, p)| (e, Some(p))).collect(),
        Some(Listed::S3 { entries, .. }) => entries.into_iter().map(|e| (e, None)).collect(),
    };
    let mut src_entries: Vec<Entry> = match &listed {
        Listed::Local(files) => files.iter().map(|(e, _)| e.clone()).collect(),
        Listed::S3 { entries, .. } => entries.clone(),
    };
    let mut dst_plain: Vec<Entry> = dst_entries.iter().map(|(e, _)| e.clone()).collect();
    if compare == Compare::Checksum {
        fill_local_etags(ctx, &listed, &mut src_entries, &dst_entries, &mut dst_plain).await?;
    }
    let mut plan = plan_sync(&src_entries, &dst_plain, compare, delete);
    if let (Compare::SizeAndTime, Location::Local(_), Location::S3(d)) = (compare, &src, &dst) {
        rule_out_same_second(ctx, d, &dst_plain, &mut plan.copy).await;
    }
    let mut stats = Stats::default();
    let mut jobs = jobs_for(ctx, &listed, Some(&plan.copy), &dst, &mut stats);
    let mut s3_deletes = Vec::new();
    let local_paths: std::collections::HashMap<&str, &PathBuf> = dst_entries
        .iter()
        .filter_map(|(e, p)| Some((e.rel.as_str(), p.as_ref()?)))
        .collect();
    for d in &plan.delete {
        match &dst {
            Location::Local(_) => {
                if let Some(p) = local_paths.get(d.rel.as_str()) {
                    jobs.push(Job::DeleteLocal((*p).clone()));
                }
            }
            Location::S3(uri) => s3_deletes.push(join_key(&uri.key, &d.rel)),
            Location::Stdio => {}
        }
    }
    let run = run_jobs(ctx, jobs, dryrun).await?;
    stats.failed += run.failed;
    if let Location::S3(uri) = &dst
        && !s3_deletes.is_empty()
    {
        stats.failed += delete_s3(ctx, &uri.bucket, s3_deletes, dryrun).await?;
    }
    Ok(stats)
}

/// Files newer than their object by less than a second (S3 keeps `LastModified` in whole
/// seconds, so a file written just before its upload looks newer than the object): copied
/// unless the object records, from p3-executor's upload, exactly this modification time
/// ([`MTIME_METADATA`], read with one HeadObject per such file). An edit made within the
/// second of the upload changes the time, so it is still copied.
async fn rule_out_same_second(
    ctx: &Arc<Ctx>,
    dst: &S3Uri,
    dst_entries: &[Entry],
    copy: &mut Vec<Entry>,
) {
    let by_rel: std::collections::HashMap<&str, &Entry> =
        dst_entries.iter().map(|e| (e.rel.as_str(), e)).collect();
    let ambiguous: Vec<(String, String)> = copy
        .iter()
        .filter_map(|s| {
            let d = by_rel.get(s.rel.as_str())?;
            let gap = i128::from(s.mtime - d.mtime) * 1_000_000_000 + i128::from(s.mtime_ns)
                - i128::from(d.mtime_ns);
            (s.size == d.size && gap > 0 && gap < 1_000_000_000)
                .then(|| (s.rel.clone(), mtime_value(s.mtime, s.mtime_ns)))
        })
        .collect();
    if ambiguous.is_empty() {
        return;
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(ctx.concurrency.clamp(1, 32)));
    let mut heads = JoinSet::new();
    for (rel, want) in ambiguous {
        let (ctx, limit, key) = (ctx.clone(), limit.clone(), join_key(&dst.key, &rel));
        let bucket = dst.bucket.clone();
        heads.spawn(async move {
            let _slot = limit.acquire_owned().await.ok()?;
            let out = ctx
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .ok()?;
            let recorded = out.metadata()?.get(MTIME_METADATA)?;
            (*recorded == want).then_some(rel)
        });
    }
    let mut unchanged = std::collections::HashSet::new();
    while let Some(done) = heads.join_next().await {
        if let Ok(Some(rel)) = done {
            unchanged.insert(rel);
        }
    }
    copy.retain(|e| !unchanged.contains(&e.rel));
}

/// For `--checksum`: give local entries an ETag in the format of their counterpart's.
async fn fill_local_etags(
    ctx: &Arc<Ctx>,
    listed: &Listed,
    src: &mut [Entry],
    dst_entries: &[(Entry, Option<PathBuf>)],
    dst: &mut [Entry],
) -> Result<(), S3Error> {
    let part = ctx.part_size;
    match listed {
        Listed::Local(files) => {
            for (entry, (_, path)) in src.iter_mut().zip(files) {
                let Some(remote) = dst
                    .iter()
                    .find(|d| d.rel == entry.rel && d.size == entry.size)
                else {
                    continue;
                };
                let etag = local_etag_async(path.clone(), entry.size, remote.etag.clone(), part);
                entry.etag = Some(etag.await?);
            }
        }
        Listed::S3 { .. } => {
            for (entry, (_, path)) in dst.iter_mut().zip(dst_entries) {
                let (Some(path), Some(remote)) = (
                    path,
                    src.iter()
                        .find(|s| s.rel == entry.rel && s.size == entry.size),
                ) else {
                    continue;
                };
                let etag = local_etag_async(path.clone(), entry.size, remote.etag.clone(), part);
                entry.etag = Some(etag.await?);
            }
        }
    }
    Ok(())
}
