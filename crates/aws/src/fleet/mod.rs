//! The audit trail beyond one host: `audit ship` puts this host's records into `[audit.s3]`
//! as immutable batches; `audit verify --s3` and `audit show --s3` read every host's batches
//! back.
//!
//! - `key.rs`: object names (`<prefix>/<host-id>/<chain>/<first>-<last>.jsonl`) and URIs;
//! - `local.rs`: reading record lines that verify and continue a chain;
//! - `store.rs`: the S3 calls (list, list versions, get, put-if-absent with Object Lock);
//! - `ship.rs`: shipping, crash-safe and concurrent-safe;
//! - `verify.rs`: the chain rules across objects and against the local log;
//! - `show.rs`: the queries with a HOST column.

pub mod key;
pub mod local;
pub mod ship;
pub mod show;
pub mod store;
pub mod verify;

use std::time::{Duration, Instant};

use p3_executor::audit::{AuditCommand, Filter};
use p3_executor::config::Config;

/// Run an S3 `audit` subcommand; returns the exit code.
pub fn run(cfg: &Config, cmd: AuditCommand) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cmd {
        AuditCommand::Ship { if_configured, .. } if if_configured && cfg.audit.s3.is_none() => {
            println!("no [audit.s3] in the config: nothing is shipped");
            Ok(0)
        }
        AuditCommand::Ship { max_secs, .. } => {
            let deadline = max_secs
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Instant::now() + Duration::from_secs_f64(s));
            let done = rt.block_on(ship::ship(cfg, deadline))?;
            if done.busy {
                println!("another `audit ship` is running on this host; it ships the rest");
            } else if done.dir.is_empty() {
                println!("nothing to ship: the audit log holds no record yet");
            } else {
                println!(
                    "shipped {} record(s) in {} object(s) to {}{}; the bucket holds seq 1..{}{}",
                    done.records,
                    done.objects,
                    done.dir,
                    match done.adopted {
                        0 => String::new(),
                        n => format!(" (adopted {n} object(s) an interrupted ship had put)"),
                    },
                    done.up_to,
                    match done.waiting {
                        0 => String::new(),
                        n => format!("; {n} record(s) wait for the next run (time bound)"),
                    }
                );
            }
            Ok(0)
        }
        AuditCommand::Verify {
            s3: Some(uri),
            host,
        } => rt.block_on(verify::verify(cfg, &uri, host.as_deref())),
        AuditCommand::Show {
            filter,
            json,
            s3: Some(uri),
            host,
        } => {
            let filter = Filter::resolve(&filter)?;
            let stdout = std::io::stdout();
            let n = rt.block_on(show::show(
                cfg,
                &uri,
                host.as_deref(),
                &filter,
                json,
                &mut stdout.lock(),
            ))?;
            if !json {
                eprintln!("{n} record(s) from {uri}");
            }
            Ok(0)
        }
        other => Ok(p3_executor::audit::run(cfg, other)?),
    }
}
