//! The `p3-executor audit` subcommands: the clap definitions of `show` and `verify`, and
//! [`run`], which parses their options and prints the result.

use super::query::{Filter, ShowFilter, show};
use super::verify::verify;
use crate::config::Config;
use crate::terminal::escape;

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print audit records: who got which credential for which job, and why.
    Show {
        /// Which records (every filter given must match).
        #[command(flatten)]
        filter: Box<ShowFilter>,
        /// Print the stored JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Query every host's shipped records in `s3://bucket/prefix` instead of the local
        /// log (a HOST column is added).
        #[arg(long, value_name = "S3_URI")]
        s3: Option<String>,
        /// With `--s3`: only this host id.
        #[arg(long, requires = "s3")]
        host: Option<String>,
    },
    /// Check the hash chain; report the first record that was edited, removed or reordered
    /// (exit 1; also when the log does not exist, or ends in a torn append), and list the
    /// recovery records (torn appends a later append removed).
    ///
    /// With `--s3 s3://bucket/prefix`: verify every host's chain across its shipped objects
    /// (continuity, no gap, no overwritten object) and, on a host that shipped, that the local
    /// log agrees with what it shipped.
    Verify {
        /// The shipped trail to verify (`[audit.s3]`'s bucket and prefix).
        #[arg(long, value_name = "S3_URI")]
        s3: Option<String>,
        /// With `--s3`: only this host id.
        #[arg(long, requires = "s3")]
        host: Option<String>,
    },
    /// Copy every record not yet shipped to `[audit.s3]` as immutable batches (safe to run at
    /// any time, concurrently, and after a crash); the gc timer runs it.
    Ship {
        /// Stop starting new uploads after this many seconds (the end of `cleanup` uses a
        /// short bound); the rest is shipped by the next run.
        #[arg(long, value_name = "SECS")]
        max_secs: Option<f64>,
        /// Exit 0 without doing anything when the config has no `[audit.s3]` (for the timer
        /// unit, installed on every host).
        #[arg(long)]
        if_configured: bool,
    },
}

impl AuditCommand {
    /// Whether the command talks to S3, which `p3-executor-aws` does (the runner binary
    /// carries no AWS SDK).
    pub fn needs_s3(&self) -> bool {
        matches!(
            self,
            AuditCommand::Ship { .. }
                | AuditCommand::Show { s3: Some(_), .. }
                | AuditCommand::Verify { s3: Some(_), .. }
        )
    }
}

/// Run an audit subcommand; returns the exit code (`verify`: 1 when the chain is broken).
pub fn run(cfg: &Config, cmd: AuditCommand) -> anyhow::Result<i32> {
    let path = &cfg.audit.path;
    match cmd {
        AuditCommand::Ship { .. }
        | AuditCommand::Show { s3: Some(_), .. }
        | AuditCommand::Verify { s3: Some(_), .. } => Err(crate::error::Error::Usage(
            "this audit command runs in p3-executor-aws (`p3-executor audit` execs it)".into(),
        )
        .into()),
        AuditCommand::Show { filter, json, .. } => {
            let filter = Filter::resolve(&filter)?;
            let stdout = std::io::stdout();
            let n = show(path, &filter, json, &mut stdout.lock())?;
            if !json {
                eprintln!("{n} record(s) from {}", path.display());
            }
            Ok(0)
        }
        AuditCommand::Verify { s3: None, .. } => {
            if !path.exists() {
                // Absent evidence is not verified evidence: the log may have been deleted.
                println!(
                    "audit log {} does not exist: nothing recorded yet, or it was removed",
                    path.display()
                );
                return Ok(1);
            }
            let v = verify(path)?;
            let recoveries = match v.recoveries.len() {
                0 => String::new(),
                n => format!(", {n} recovery record(s)"),
            };
            let code = match &v.broken {
                None => {
                    println!(
                        "audit log {} OK: {} record(s){recoveries}, head {}",
                        path.display(),
                        v.records,
                        v.head
                    );
                    0
                }
                Some(b) => {
                    println!(
                        "audit log {} BROKEN at line {}{}: {}\n{} record(s) before it verify{recoveries} (head {})",
                        path.display(),
                        b.line,
                        b.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
                        escape(&b.message),
                        v.records,
                        v.head
                    );
                    match &v.torn_tail {
                        Some(t) => println!(
                            "this is a torn append, not damage: {} byte(s) from offset {} ({}); the next append removes exactly those bytes and records a `recovered` record",
                            t.bytes,
                            t.offset,
                            escape(&t.message)
                        ),
                        None => println!(
                            "fix: keep the log as evidence: move it aside (mv {0} {0}.damaged-$(date +%Y%m%dT%H%M%S)); the next record starts a new chain",
                            path.display()
                        ),
                    }
                    1
                }
            };
            for r in &v.recoveries {
                let rec = &r.recovery;
                println!(
                    "recovery at line {} (seq {}, {}): removed a torn append of {} byte(s) at offset {} (sha256 {}) after seq {}",
                    r.line,
                    r.seq,
                    r.time.format("%Y-%m-%d %H:%M:%S UTC"),
                    rec.removed_bytes,
                    rec.offset,
                    escape(&rec.removed_sha256),
                    rec.last_good_seq
                );
            }
            Ok(code)
        }
    }
}
