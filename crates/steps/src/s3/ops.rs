//! The subcommands: turn arguments and listings into transfer jobs and run them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Local, TimeZone};
use tokio::task::JoinSet;

use super::copy::copy;
use super::ctx::{Ctx, task_result};
use super::download::{ObjectInfo, download, head};
use super::error::{S3Error, classify};
use super::list::{delete_key, delete_keys, list};
use super::local::walk_local;
use super::plan::{Entry, Filters, human_size};
use super::upload::upload_file;
use super::uri::{Location, S3Uri, join_key, local_path_for};
use p3_contract::terminal::escape;

/// One unit of work.
#[derive(Debug, Clone)]
pub enum Job {
    /// Local file → object.
    Upload {
        /// Local file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Destination.
        dst: S3Uri,
    },
    /// Object → local file.
    Download {
        /// Object.
        src: S3Uri,
        /// What the listing said about it (None: ask with HeadObject).
        info: Option<ObjectInfo>,
        /// Destination file.
        dst: PathBuf,
    },
    /// Object → object, server side.
    Copy {
        /// Source object.
        src: S3Uri,
        /// Its size.
        size: u64,
        /// Destination.
        dst: S3Uri,
    },
    /// Remove a local file (`sync --delete` to a directory).
    DeleteLocal(PathBuf),
}

impl Job {
    fn describe(&self) -> String {
        match self {
            Job::Upload { path, dst, .. } => format!("upload: {} to {dst}", path.display()),
            Job::Download { src, dst, .. } => format!("download: {src} to {}", dst.display()),
            Job::Copy { src, dst, .. } => format!("copy: {src} to {dst}"),
            Job::DeleteLocal(p) => format!("delete: {}", p.display()),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Job::Upload { size, .. } | Job::Copy { size, .. } => *size,
            Job::Download { info, .. } => info.as_ref().map_or(0, |i| i.size),
            Job::DeleteLocal(_) => 0,
        }
    }

    async fn run(self, ctx: Arc<Ctx>) -> Result<(), S3Error> {
        match self {
            Job::Upload { path, size, dst } => upload_file(ctx, path, size, dst).await,
            Job::Download { src, info, dst } => {
                let info = match info {
                    Some(i) => i,
                    None => {
                        let i = head(&ctx, &src).await?;
                        ctx.progress.add_total(0, i.size);
                        i
                    }
                };
                download(ctx, src, info, dst).await
            }
            Job::Copy { src, size, dst } => copy(&ctx, &src, size, &dst).await,
            Job::DeleteLocal(p) => {
                std::fs::remove_file(&p).map_err(|e| S3Error::local(p, "cannot delete", e))
            }
        }
    }
}

/// Outcome of a batch: how many jobs failed (each already reported).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Jobs that failed.
    pub failed: u64,
}

/// Run `jobs` with bounded concurrency, printing one line per finished job. A fatal error
/// (missing bucket, rejected credentials, unreachable endpoint) stops everything; any other
/// failure is reported and the rest continue, like the AWS CLI.
pub async fn run_jobs(ctx: &Arc<Ctx>, jobs: Vec<Job>, dryrun: bool) -> Result<Stats, S3Error> {
    if dryrun {
        for job in &jobs {
            ctx.progress
                .println(&format!("(dryrun) {}", job.describe()));
        }
        return Ok(Stats::default());
    }
    ctx.progress
        .add_total(jobs.len() as u64, jobs.iter().map(Job::size).sum());
    let mut stats = Stats::default();
    let mut set: JoinSet<(String, Result<(), S3Error>)> = JoinSet::new();
    let mut jobs = jobs.into_iter();
    loop {
        while set.len() < ctx.concurrency {
            let Some(job) = jobs.next() else { break };
            let ctx = ctx.clone();
            set.spawn(async move {
                let line = job.describe();
                (line, job.run(ctx).await)
            });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (line, result) = task_result(joined)?;
        match result {
            Ok(()) => ctx.progress.file_done(&line),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                stats.failed += 1;
                ctx.progress.eprintln(&format!("failed: {line}: {e}"));
            }
        }
    }
    Ok(stats)
}

pub(super) fn both_local(src: &Location, dst: &Location) -> S3Error {
    S3Error::Usage(format!(
        "{src} and {dst} are both local paths: at least one must be an s3:// URI"
    ))
}

/// A source listed for a recursive operation.
pub(super) enum Listed {
    Local(Vec<(Entry, PathBuf)>),
    S3 { base: S3Uri, entries: Vec<Entry> },
}

pub(super) async fn list_source(
    ctx: &Ctx,
    src: &Location,
    filters: &Filters,
) -> Result<Listed, S3Error> {
    match src {
        Location::Stdio => Err(S3Error::Usage(
            "`-` (stdin/stdout) works only with cp of one object".into(),
        )),
        Location::Local(dir) => {
            if !dir.is_dir() {
                let shown = escape(&dir.display().to_string()).into_owned();
                return Err(S3Error::Invalid(if dir.exists() {
                    format!(
                        "{shown} is a file, not a directory: sync and cp --recursive copy directories (use cp without --recursive for one file)"
                    )
                } else {
                    format!("{shown}: no such directory")
                }));
            }
            let dir = dir.clone();
            let files = tokio::task::spawn_blocking(move || walk_local(&dir))
                .await
                .expect("walk panicked")?;
            Ok(Listed::Local(
                files
                    .into_iter()
                    .filter(|(e, _)| filters.selects(&e.rel))
                    .collect(),
            ))
        }
        Location::S3(uri) => {
            let prefix = uri.dir_prefix();
            let listing = list(ctx, &uri.bucket, &prefix, None).await?;
            let entries = listing
                .objects
                .into_iter()
                .map(|mut e| {
                    e.rel = e.rel[prefix.len()..].to_string();
                    e
                })
                // Zero-byte "directory" markers are not files.
                .filter(|e| !e.rel.is_empty() && !e.rel.ends_with('/'))
                .filter(|e| filters.selects(&e.rel))
                .collect();
            Ok(Listed::S3 {
                base: uri.with_key(prefix),
                entries,
            })
        }
    }
}

pub(super) fn job_for(
    src_listed: &Listed,
    entry: &Entry,
    local_path: Option<&Path>,
    dst: &Location,
) -> Result<Job, String> {
    match (src_listed, dst) {
        (Listed::Local(_), Location::S3(d)) => Ok(Job::Upload {
            path: local_path
                .expect("local entries carry their path")
                .to_path_buf(),
            size: entry.size,
            dst: d.with_key(join_key(&d.key, &entry.rel)),
        }),
        (Listed::S3 { base, .. }, Location::Local(dir)) => Ok(Job::Download {
            src: base.with_key(format!("{}{}", base.key, entry.rel)),
            info: Some(ObjectInfo {
                size: entry.size,
                etag: entry.etag.clone(),
                mtime: Some(entry.mtime),
                mtime_ns: entry.mtime_ns,
                crc32: None,
                other_crc: None,
                composite: None,
            }),
            dst: local_path_for(dir, &entry.rel)?,
        }),
        (Listed::S3 { base, .. }, Location::S3(d)) => Ok(Job::Copy {
            src: base.with_key(format!("{}{}", base.key, entry.rel)),
            size: entry.size,
            dst: d.with_key(join_key(&d.key, &entry.rel)),
        }),
        (Listed::Local(_), Location::Local(_)) => Err("local to local".into()),
        (_, Location::Stdio) => Err("`-` works only with cp of one object".into()),
    }
}

/// Jobs for every listed entry; entries that cannot be stored locally are reported and
/// counted as failures.
pub(super) fn jobs_for(
    ctx: &Ctx,
    listed: &Listed,
    only: Option<&[Entry]>,
    dst: &Location,
    stats: &mut Stats,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    let only: Option<std::collections::HashSet<&str>> =
        only.map(|o| o.iter().map(|e| e.rel.as_str()).collect());
    let wanted = |rel: &str| only.as_ref().is_none_or(|o| o.contains(rel));
    let mut push = |entry: &Entry, path: Option<&Path>, src_name: String| {
        if !wanted(&entry.rel) {
            return;
        }
        match job_for(listed, entry, path, dst) {
            Ok(job) => jobs.push(job),
            Err(why) => {
                stats.failed += 1;
                ctx.progress
                    .eprintln(&format!("skipped: {src_name}: {why}"));
            }
        }
    };
    match listed {
        Listed::Local(files) => {
            for (e, p) in files {
                push(e, Some(p), p.display().to_string());
            }
        }
        Listed::S3 { base, entries } => {
            for e in entries {
                push(
                    e,
                    None,
                    format!("s3://{}/{}{}", base.bucket, base.key, e.rel),
                );
            }
        }
    }
    jobs
}

/// `cp SRC DST [--recursive]`.
pub async fn cp(
    ctx: &Arc<Ctx>,
    src: Location,
    dst: Location,
    recursive: bool,
    filters: &Filters,
    dryrun: bool,
) -> Result<Stats, S3Error> {
    if let (Location::Local(_), Location::Local(_)) = (&src, &dst) {
        return Err(both_local(&src, &dst));
    }
    if recursive {
        let listed = list_source(ctx, &src, filters).await?;
        let mut stats = Stats::default();
        let jobs = jobs_for(ctx, &listed, None, &dst, &mut stats);
        let run = run_jobs(ctx, jobs, dryrun).await?;
        stats.failed += run.failed;
        return Ok(stats);
    }
    let job = match (&src, &dst) {
        (Location::Local(path), Location::S3(d)) => {
            let meta =
                std::fs::metadata(path).map_err(|e| S3Error::local(path, "cannot read", e))?;
            if meta.is_dir() {
                return Err(S3Error::Usage(format!(
                    "{} is a directory: use --recursive",
                    path.display()
                )));
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let key = if d.key.is_empty() || d.key.ends_with('/') {
                format!("{}{name}", d.key)
            } else {
                d.key.clone()
            };
            Job::Upload {
                path: path.clone(),
                size: meta.len(),
                dst: d.with_key(key),
            }
        }
        (Location::S3(s), Location::Local(path)) => {
            check_object_key(s)?;
            let into_dir = path.is_dir() || path.to_string_lossy().ends_with('/');
            let dst = if into_dir {
                path.join(s.basename())
            } else {
                path.clone()
            };
            Job::Download {
                src: s.clone(),
                info: None,
                dst,
            }
        }
        (Location::S3(s), Location::S3(d)) => {
            check_object_key(s)?;
            let size = if dryrun { 0 } else { head(ctx, s).await?.size };
            let key = if d.key.is_empty() || d.key.ends_with('/') {
                format!("{}{}", d.key, s.basename())
            } else {
                d.key.clone()
            };
            Job::Copy {
                src: s.clone(),
                size,
                dst: d.with_key(key),
            }
        }
        (Location::Local(_), Location::Local(_)) => unreachable!("checked above"),
        (Location::Stdio, _) | (_, Location::Stdio) => {
            return Err(S3Error::Usage(
                "`-` (stdin/stdout) pairs with an s3:// URI".into(),
            ));
        }
    };
    run_jobs(ctx, vec![job], dryrun).await
}

pub(super) fn check_object_key(uri: &S3Uri) -> Result<(), S3Error> {
    if uri.key.is_empty() || uri.key.ends_with('/') {
        return Err(S3Error::Usage(format!(
            "{uri} names a prefix, not an object: use --recursive"
        )));
    }
    Ok(())
}

pub(super) async fn delete_s3(
    ctx: &Ctx,
    bucket: &str,
    keys: Vec<String>,
    dryrun: bool,
) -> Result<u64, S3Error> {
    if dryrun {
        for k in &keys {
            ctx.progress
                .println(&format!("(dryrun) delete: s3://{bucket}/{k}"));
        }
        return Ok(0);
    }
    let failed = delete_keys(ctx, bucket, &keys).await?;
    for k in &keys {
        if !failed.iter().any(|(f, _)| f == k) {
            ctx.progress.println(&format!("delete: s3://{bucket}/{k}"));
        }
    }
    for (k, why) in &failed {
        ctx.progress
            .eprintln(&format!("failed: delete: s3://{bucket}/{k}: {why}"));
    }
    Ok(failed.len() as u64)
}

/// `rm s3://... [--recursive]`.
pub async fn rm(
    ctx: &Arc<Ctx>,
    uri: S3Uri,
    recursive: bool,
    filters: &Filters,
    dryrun: bool,
) -> Result<Stats, S3Error> {
    if !recursive {
        check_object_key(&uri)?;
        if dryrun {
            ctx.progress.println(&format!("(dryrun) delete: {uri}"));
        } else {
            delete_key(ctx, &uri).await?;
            ctx.progress.println(&format!("delete: {uri}"));
        }
        return Ok(Stats::default());
    }
    let Listed::S3 { base, entries } =
        list_source(ctx, &Location::S3(uri.clone()), filters).await?
    else {
        unreachable!("S3 source lists as S3")
    };
    let keys = entries
        .iter()
        .map(|e| format!("{}{}", base.key, e.rel))
        .collect();
    let failed = delete_s3(ctx, &uri.bucket, keys, dryrun).await?;
    Ok(Stats { failed })
}

/// `ls [s3://bucket[/prefix]]`. Bucket names, prefixes and keys are [`escape`]d: one line each.
pub async fn ls(
    ctx: &Arc<Ctx>,
    uri: Option<S3Uri>,
    recursive: bool,
    human: bool,
    summarize: bool,
) -> Result<Stats, S3Error> {
    let size_text = |n: u64| if human { human_size(n) } else { n.to_string() };
    let Some(uri) = uri else {
        let out = ctx
            .client
            .list_buckets()
            .send()
            .await
            .map_err(|e| classify(e, &ctx.target("ListBuckets", "", None)))?;
        for b in out.buckets() {
            let date = b
                .creation_date()
                .map_or(String::new(), |d| local_time(d.secs()));
            println!("{date} {}", escape(b.name().unwrap_or("")));
        }
        return Ok(Stats::default());
    };
    let listing = list(ctx, &uri.bucket, &uri.key, (!recursive).then_some("/")).await?;
    // Non-recursive listings show names relative to the "directory" the prefix points into.
    let shown_from = if recursive {
        0
    } else {
        uri.key.rfind('/').map_or(0, |i| i + 1)
    };
    let mut total = 0u64;
    for p in &listing.prefixes {
        println!("{:>30} {}", "PRE", escape(&p[shown_from.min(p.len())..]));
    }
    for o in &listing.objects {
        total += o.size;
        println!(
            "{} {:>10} {}",
            local_time(o.mtime),
            size_text(o.size),
            escape(&o.rel[shown_from.min(o.rel.len())..])
        );
    }
    if summarize {
        println!(
            "\nTotal Objects: {}\n   Total Size: {}",
            listing.objects.len(),
            size_text(total)
        );
    }
    // Nothing under the prefix is an empty answer, not a failure (unlike `aws s3 ls`, which
    // exits 1): the step exits 0 and prints nothing (with --summarize, the zero totals).
    Ok(Stats::default())
}

fn local_time(secs: i64) -> String {
    Local.timestamp_opt(secs, 0).single().map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}
