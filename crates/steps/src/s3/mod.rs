//! Built-in step `p3-executor s3`: `cp`, `sync`, `ls` and `rm` with the AWS CLI's syntax, using
//! the job's S3 credentials (the AWS files `prepare` wrote), built for throughput: parallel
//! multipart uploads and ranged downloads with bounded memory, many small files at once.
//!
//! Layout: [`uri`] and [`plan`] are pure (parsing, filters, what `sync` copies); [`upload`],
//! [`download`], [`copy`] and [`list`] (listing and delete) move bytes, sharing [`ctx`] (the
//! context, the memory budget, part tasks); [`local`] walks local trees and computes checksums;
//! [`ops`] turns subcommands into transfer jobs; [`client`] builds the SDK client;
//! [`progress`] reports; [`error`] names the object and the cause of every failure.

pub mod check;
pub mod client;
pub mod copy;
pub mod ctx;
pub mod download;
pub mod error;
pub mod list;
pub mod local;
mod md5;
pub mod ops;
pub mod plan;
pub mod progress;
mod range_hash;
pub mod stdio;
mod sync;
pub mod upload;
pub mod uri;

use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};

use error::S3Error;
use plan::{Compare, FilterKind, Filters, parse_size};
use uri::{Location, S3Uri};

use p3_contract::terminal::escape;

/// Exit code after Ctrl-C / SIGTERM (128 + SIGINT, as shells report it).
pub use p3_contract::exit::STEP_INTERRUPTED as EXIT_INTERRUPTED;
use p3_contract::exit::{STEP_FAILED, STEP_OK, STEP_USAGE};

/// Arguments of `p3-executor s3`.
#[derive(Debug, clap::Args)]
pub struct S3Args {
    /// Subcommand.
    #[command(subcommand)]
    pub command: S3Command,
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalOpts,
}

/// Options shared by every subcommand: where S3 is, how long to wait for it, how to talk.
#[derive(Debug, clap::Args)]
pub struct GlobalOpts {
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, then AWS).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Region (default: AWS_REGION / the profile's region, then us-east-1).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Path-style addressing (also P3_S3_PATH_STYLE=true; automatic for IP endpoints).
    #[arg(long, global = true)]
    pub path_style: bool,
    /// Attempts per request (retries back off exponentially on throttling, 5xx, timeouts
    /// and connection errors; each retry is logged).
    #[arg(long, global = true, default_value_t = 5, env = "P3_S3_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// Time to connect (TCP and TLS) before an attempt fails.
    #[arg(long, global = true, default_value = "10s", value_name = "DURATION", value_parser = parse_duration, env = "P3_S3_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,
    /// Time without a byte from the server (before the response starts, or within a body)
    /// before an attempt fails.
    #[arg(long, global = true, default_value = "30s", value_name = "DURATION", value_parser = parse_duration, env = "P3_S3_READ_TIMEOUT")]
    pub read_timeout: Duration,
    /// Deadline of the whole command (0: none). Default: 30m, or 3/4 of CI_JOB_TIMEOUT when
    /// that is shorter.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, env = "P3_S3_TIMEOUT")]
    pub timeout: Option<Duration>,
    /// PEM file of the CAs to trust instead of the system's (default: AWS_CA_BUNDLE, then
    /// the profile's ca_bundle; the system store honours SSL_CERT_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// No progress bar or progress lines.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Only print errors.
    #[arg(long, global = true, visible_alias = "only-show-errors")]
    pub quiet: bool,
}

/// Options of the commands that move data (`cp`, `sync`).
#[derive(Debug, Clone, clap::Args)]
pub struct TransferOpts {
    /// Files transferred at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Multipart part size, and the size above which uploads and downloads are split.
    #[arg(long, default_value = "16MiB", value_parser = parse_part_size)]
    pub part_size: u64,
    /// Upper bound on data buffered in memory at once.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    pub max_memory: u64,
    /// Objects above this size are copied S3→S3 in parts (UploadPartCopy); at most 5GiB.
    #[arg(long, default_value = "5GiB", value_parser = parse_size, hide = true)]
    pub copy_threshold: u64,
}

impl Default for TransferOpts {
    fn default() -> Self {
        Self {
            concurrency: 64,
            part_size: 16 << 20,
            max_memory: 128 << 20,
            copy_threshold: ctx::MAX_COPY_OBJECT,
        }
    }
}

/// `10`, `10s`, `500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a duration"))
}

/// The whole command's deadline: `--timeout` (0: none), else 30 minutes, or 3/4 of the
/// job's timeout (`CI_JOB_TIMEOUT`, seconds) when that is shorter.
pub fn deadline(flag: Option<Duration>, ci_job_timeout: Option<&str>) -> Option<Duration> {
    match flag {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => {
            let default = Duration::from_secs(30 * 60);
            let job = ci_job_timeout
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s * 3 / 4));
            Some(job.map_or(default, |j| j.min(default)))
        }
    }
}

/// `1m30s`-style text for a duration.
pub fn show_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.0}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60)
    }
}

fn parse_part_size(text: &str) -> Result<u64, String> {
    let n = parse_size(text)?;
    // S3's limits: parts of 5 MiB to 5 GiB (only the last may be smaller).
    if !(5 << 20..=5 << 30).contains(&n) {
        return Err("part size must be between 5MiB and 5GiB".into());
    }
    Ok(n)
}

/// `p3-executor s3` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum S3Command {
    /// Copy a file or object (local→S3, S3→local, S3→S3); a whole tree with --recursive.
    Cp {
        /// Source: local path, s3://bucket/key, or `-` for stdin (a file named `-`: `./-`).
        src: String,
        /// Destination: local path, s3://bucket/key (a trailing `/` means "into"), or `-` for
        /// stdout.
        dst: String,
        /// Copy everything under SRC.
        #[arg(long, short = 'r')]
        recursive: bool,
        /// Show what would be done without doing it.
        #[arg(long)]
        dryrun: bool,
        /// Size of a stream from stdin, when larger than 10,000 parts of --part-size (sizes
        /// the parts).
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        expected_size: Option<u64>,
        /// Which checks downloads may use: auto (the cheapest the object allows), md5 (the
        /// ETag's), crc (a full-object CRC only, else the length), size (the length only).
        #[arg(
            long = "checksum",
            visible_alias = "verify",
            value_enum,
            default_value = "auto",
            env = "P3_S3_VERIFY",
            value_name = "CHECK"
        )]
        verify: download::Verify,
        /// Filters.
        #[command(flatten)]
        filters: FilterArgs,
        /// Transfer options.
        #[command(flatten)]
        transfer: TransferOpts,
    },
    /// Copy new and changed files from SRC to DST.
    Sync {
        /// Source directory or s3:// prefix.
        src: String,
        /// Destination directory or s3:// prefix.
        dst: String,
        /// Compare content hashes (ETag/MD5) instead of modification times.
        #[arg(long, conflicts_with_all = ["size_only", "exact_timestamps"])]
        checksum: bool,
        /// Copy only when the sizes differ (as the AWS CLI's --size-only).
        #[arg(long, conflicts_with = "exact_timestamps")]
        size_only: bool,
        /// From S3 to local: copy same-sized objects unless their times are exactly equal (as
        /// the AWS CLI's --exact-timestamps).
        #[arg(long)]
        exact_timestamps: bool,
        /// Which checks downloads may use, as `cp --checksum` (here `--checksum` chooses how
        /// files are compared).
        #[arg(
            long,
            value_enum,
            default_value = "auto",
            env = "P3_S3_VERIFY",
            value_name = "CHECK"
        )]
        verify: download::Verify,
        /// Delete files in DST that are not in SRC (filters apply).
        #[arg(long)]
        delete: bool,
        /// Show what would be done without doing it.
        #[arg(long)]
        dryrun: bool,
        /// Filters.
        #[command(flatten)]
        filters: FilterArgs,
        /// Transfer options.
        #[command(flatten)]
        transfer: TransferOpts,
    },
    /// List buckets, or objects and prefixes under s3://bucket[/prefix] (nothing under it:
    /// no output, exit 0).
    Ls {
        /// s3://bucket[/prefix]; none lists the buckets.
        path: Option<String>,
        /// List every object under the prefix.
        #[arg(long)]
        recursive: bool,
        /// Sizes in KiB/MiB/GiB.
        #[arg(long)]
        human_readable: bool,
        /// Print the number of objects and their total size.
        #[arg(long)]
        summarize: bool,
    },
    /// Delete an object, or everything under a prefix with --recursive.
    Rm {
        /// s3://bucket/key or prefix.
        path: String,
        /// Delete everything under the prefix.
        #[arg(long, short = 'r')]
        recursive: bool,
        /// Show what would be deleted.
        #[arg(long)]
        dryrun: bool,
        /// Filters.
        #[command(flatten)]
        filters: FilterArgs,
    },
}

/// `--include` / `--exclude` in command-line order (the AWS CLI applies them in order and the
/// last match wins, so their interleaving matters: clap's derive would split them apart).
#[derive(Debug, Clone, Default)]
pub struct FilterArgs {
    /// Rules in the order given.
    pub rules: Vec<(FilterKind, String)>,
}

impl clap::FromArgMatches for FilterArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut rules = Vec::new();
        for (id, kind) in [
            ("include", FilterKind::Include),
            ("exclude", FilterKind::Exclude),
        ] {
            if let (Some(values), Some(indices)) = (m.get_many::<String>(id), m.indices_of(id)) {
                rules.extend(indices.zip(values).map(|(i, v)| (i, kind, v.clone())));
            }
        }
        rules.sort_by_key(|r| r.0);
        Ok(Self {
            rules: rules.into_iter().map(|(_, k, v)| (k, v)).collect(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for FilterArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new("include")
                .long("include")
                .value_name("GLOB")
                .action(ArgAction::Append)
                .help("Include paths matching GLOB (relative to SRC; later filters win)"),
        )
        .arg(
            Arg::new("exclude")
                .long("exclude")
                .value_name("GLOB")
                .action(ArgAction::Append)
                .help("Exclude paths matching GLOB (relative to SRC; later filters win)"),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Run the step; returns the process exit code: 0 success, 1 something failed (each failure
/// printed with the object and the cause), 2 bad usage, 130 interrupted.
pub fn run(args: S3Args) -> anyhow::Result<i32> {
    // Transfers wait on the network and the disk, not the CPU: a few workers suffice, and
    // more would only compete with the job on a shared runner.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    bound_heap_growth();
    // Reading the umask means setting it; do it before any other thread exists.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(umask);
    let file_mode = 0o666 & !umask.bits();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    let code = rt.block_on(execute(args, file_mode));
    // Dropping in-flight tasks removes their temporary files; do not wait for stuck reads.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(code)
}

/// Part buffers are large (16 MiB by default). glibc raises its mmap threshold to the size of
/// freed mmapped blocks, after which such buffers come from the heap arenas and freed ones are
/// kept, so RSS drifts well above `--max-memory`. A fixed 1 MiB threshold keeps every part
/// buffer a fresh mmap that is returned to the kernel when the part is done.
fn bound_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

async fn execute(args: S3Args, file_mode: u32) -> i32 {
    let g = &args.global;
    let progress = progress::Progress::start(progress::Mode::detect(g.no_progress), g.quiet);
    let built = client::build(
        &client::ClientOptions {
            endpoint_url: g.endpoint_url.clone(),
            region: g.region.clone(),
            path_style: g.path_style,
            max_attempts: g.max_attempts,
            connect_timeout: g.connect_timeout,
            read_timeout: g.read_timeout,
            ca_bundle: crate::tls::resolve(g.ca_bundle.as_deref(), crate::tls::For::S3),
        },
        progress.clone(),
    )
    .await;
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            eprintln!("p3-executor s3: error: {}", escape(&e));
            return STEP_FAILED;
        }
    };
    let (transfer, verify) = match &args.command {
        S3Command::Cp {
            transfer, verify, ..
        }
        | S3Command::Sync {
            transfer, verify, ..
        } => (transfer.clone(), *verify),
        S3Command::Ls { .. } | S3Command::Rm { .. } => {
            (TransferOpts::default(), download::Verify::Auto)
        }
    };
    let mut ctx = ctx::Ctx::new(
        built.client,
        built.endpoint,
        transfer.part_size,
        transfer.concurrency,
        transfer.max_memory,
        progress.clone(),
    );
    ctx.trust = built.trust;
    ctx.file_mode = file_mode;
    ctx.copy_threshold = transfer.copy_threshold;
    ctx.max_attempts = g.max_attempts.max(1);
    ctx.verify = verify;
    let ctx = Arc::new(ctx);
    let limit = deadline(g.timeout, std::env::var("CI_JOB_TIMEOUT").ok().as_deref());
    let work = dispatch(ctx.clone(), args.command);
    let expired = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = work => r,
        () = shutdown_signal() => Err(S3Error::Interrupted),
        () = expired => Err(S3Error::Deadline(format!(
            "stopped after {} (--timeout, P3_S3_TIMEOUT; default 30m or 3/4 of the job's timeout)",
            show_duration(limit.unwrap_or_default())
        ))),
    };
    progress.finish();
    match result {
        Ok(stats) if stats.failed == 0 => STEP_OK,
        Ok(stats) => {
            eprintln!("p3-executor s3: {} operation(s) failed", stats.failed);
            STEP_FAILED
        }
        Err(S3Error::Interrupted) => {
            // The work future is gone (its tasks cancelled); now clean up on the server.
            ctx.abort_all_uploads().await;
            eprintln!("p3-executor s3: interrupted");
            EXIT_INTERRUPTED
        }
        Err(e @ S3Error::Deadline(_)) => {
            ctx.abort_all_uploads().await;
            eprintln!("p3-executor s3: error: {}", escape(&e.to_string()));
            STEP_FAILED
        }
        // Errors name keys and paths: escaped so each stays one visible line.
        Err(e @ S3Error::Usage(_)) => {
            eprintln!("p3-executor s3: error: {}", escape(&e.to_string()));
            STEP_USAGE
        }
        Err(e) => {
            eprintln!("p3-executor s3: error: {}", escape(&e.to_string()));
            STEP_FAILED
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without signal handlers the default action (exit) still applies.
        _ => std::future::pending().await,
    }
}

fn location(text: &str) -> Result<Location, S3Error> {
    Location::parse(text).map_err(S3Error::Usage)
}

fn s3_uri(text: &str) -> Result<S3Uri, S3Error> {
    S3Uri::parse(text).map_err(S3Error::Usage)
}

fn filters(args: &FilterArgs) -> Result<Filters, S3Error> {
    Filters::new(&args.rules).map_err(S3Error::Usage)
}

async fn dispatch(ctx: Arc<ctx::Ctx>, command: S3Command) -> Result<ops::Stats, S3Error> {
    match command {
        S3Command::Cp {
            src,
            dst,
            recursive,
            dryrun,
            expected_size,
            filters: f,
            transfer: _,
            verify: _,
        } => {
            let (src, dst) = (location(&src)?, location(&dst)?);
            if matches!(src, Location::Stdio) || matches!(dst, Location::Stdio) {
                if recursive || !f.rules.is_empty() {
                    return Err(S3Error::Usage(
                        "`-` (stdin/stdout) copies one object: no --recursive, --include or --exclude".into(),
                    ));
                }
                return match (src, dst) {
                    (Location::Stdio, Location::S3(d)) => {
                        stdio::upload_stdin(&ctx, d, expected_size, dryrun).await
                    }
                    (Location::S3(s), Location::Stdio) => {
                        stdio::download_stdout(&ctx, s, dryrun).await
                    }
                    (s, d) => Err(S3Error::Usage(format!(
                        "cannot copy {s} to {d}: `-` pairs with an s3:// URI (cp - s3://b/k, cp s3://b/k -)"
                    ))),
                };
            }
            ops::cp(&ctx, src, dst, recursive, &filters(&f)?, dryrun).await
        }
        S3Command::Sync {
            src,
            dst,
            checksum,
            size_only,
            exact_timestamps,
            verify: _,
            delete,
            dryrun,
            filters: f,
            transfer: _,
        } => {
            let compare = if checksum {
                Compare::Checksum
            } else if size_only {
                Compare::SizeOnly
            } else if exact_timestamps {
                Compare::ExactTimestamps
            } else {
                Compare::SizeAndTime
            };
            sync::sync(
                &ctx,
                location(&src)?,
                location(&dst)?,
                &filters(&f)?,
                compare,
                delete,
                dryrun,
            )
            .await
        }
        S3Command::Ls {
            path,
            recursive,
            human_readable,
            summarize,
        } => {
            let uri = path.as_deref().map(s3_uri).transpose()?;
            ops::ls(&ctx, uri, recursive, human_readable, summarize).await
        }
        S3Command::Rm {
            path,
            recursive,
            dryrun,
            filters: f,
        } => ops::rm(&ctx, s3_uri(&path)?, recursive, &filters(&f)?, dryrun).await,
    }
}
