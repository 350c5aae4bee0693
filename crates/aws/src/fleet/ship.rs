//! `audit ship`: copy every record of this host's log not yet in `[audit.s3]` there, as
//! immutable batches.
//!
//! Safe at any time, concurrently and after a crash:
//! - one shipper per host at a time (`flock` on `<state_root>/audit-ship/lock`);
//! - each object is put with `If-None-Match: *`, so no shipper ever overwrites one;
//! - the watermark (`p3_executor::audit::shipped`) is saved after every put, and a run first
//!   lists the bucket after the last key it knows: an object a crashed run put but did not
//!   record is compared with the local log and adopted, never shipped again under another key;
//! - a put is atomic in S3, so a shipper killed mid-upload leaves no object, and the next run
//!   puts the same batch under the same key.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};

use p3_executor::audit::shipped::{self, ShipState};
use p3_executor::config::{AuditS3Config, Config};

use super::key::{BatchKey, chain_dir};
use super::local::{Line, read_chain};
use super::store::{Put, Store};

/// Largest object body: batches end earlier than `batch_records` when they reach it.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// What a ship did.
#[derive(Debug, Default)]
pub struct Shipped {
    /// Records put in new objects.
    pub records: u64,
    /// Objects put.
    pub objects: u64,
    /// Objects found in the bucket that a crashed run had put, checked and adopted.
    pub adopted: u64,
    /// The last seq now in the bucket.
    pub up_to: u64,
    /// Records still waiting (the deadline came first).
    pub waiting: u64,
    /// Where this host's current chain goes.
    pub dir: String,
    /// Another shipper held the lock until the deadline.
    pub busy: bool,
}

/// Ship what is new, starting no upload after `deadline` (None: ship everything).
pub async fn ship(cfg: &Config, deadline: Option<Instant>) -> Result<Shipped> {
    let s3 = cfg.audit.s3.as_ref().ok_or_else(|| {
        p3_executor::error::Error::Usage(
            "no [audit.s3] in the config: say where to ship (bucket, prefix, credentials)".into(),
        )
    })?;
    let host_id = p3_executor::config::host_id(&cfg.state_root).ok_or_else(|| {
        anyhow!(
            "no host id in {}: run as root once the state root exists",
            cfg.state_root.display()
        )
    })?;
    let dir = shipped::dir(&cfg.state_root);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let Some(_lock) = lock(&shipped::lock_file(&cfg.state_root), deadline)? else {
        return Ok(Shipped {
            busy: true,
            ..Shipped::default()
        });
    };
    let result = ship_locked(cfg, s3, &host_id, deadline).await;
    // Remember why a ship stopped short (check shows it), and forget it once one succeeds.
    if let Some(mut state) = shipped::load(&cfg.state_root) {
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        if state.last_error != error {
            state.last_error = error;
            let _ = shipped::save(&cfg.state_root, &state);
        }
    }
    result
}

async fn ship_locked(
    cfg: &Config,
    s3: &AuditS3Config,
    host_id: &str,
    deadline: Option<Instant>,
) -> Result<Shipped> {
    let log = &cfg.audit.path;
    let mut file = match File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Shipped::default()),
        Err(e) => return Err(e).with_context(|| format!("open {}", log.display())),
    };
    let read_err = || format!("read {}", log.display());
    let len = file.metadata().with_context(read_err)?.len();
    // Only the first line names the chain (a record is far below 1 MiB).
    let mut head = Vec::new();
    (&mut file)
        .take(1 << 20)
        .read_to_end(&mut head)
        .with_context(read_err)?;
    let first_end = head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let first = read_chain(&head[..first_end], 0, p3_executor::audit::GENESIS.into());
    let Some(genesis) = first.lines.first() else {
        return Ok(Shipped::default()); // empty, or not even one good record yet
    };
    let chain = shipped::chain_id(&genesis.hash);
    let mut state = shipped::load(&cfg.state_root)
        .filter(|s| s.chain == chain && s.offset <= len)
        .unwrap_or_else(|| ShipState::start(&chain));
    // Everything after the watermark that continues it: only that is read (this runs at the
    // end of every cleanup, and the log only grows).
    let base = state.offset;
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(base)).with_context(read_err)?;
    file.read_to_end(&mut text).with_context(read_err)?;
    let after = read_chain(&text, state.last_seq, state.last_hash.clone());
    if after.lines.is_empty()
        && let Some(why) = &after.stop
    {
        bail!(
            "the local log {} does not continue what this host shipped (seq {}): {why}; see `p3-executor audit verify`",
            log.display(),
            state.last_seq
        );
    }
    let mut pending: &[Line] = &after.lines;
    let store = Store::connect(s3).await?;
    let dir = chain_dir(&s3.prefix, host_id, &chain);
    let mut done = Shipped {
        dir: format!("s3://{}/{dir}", s3.bucket),
        up_to: state.last_seq,
        ..Shipped::default()
    };
    let advance = |state: &mut ShipState, line: &Line, key: String| -> Result<()> {
        state.last_seq = line.seq;
        state.last_hash = line.hash.clone();
        state.offset = base + line.end;
        state.last_key = Some(key);
        state.updated = chrono::Utc::now();
        shipped::save(&cfg.state_root, state).context("save the shipping watermark")
    };

    // Objects put by a run that crashed before saving the watermark (or by a lost state).
    for key in store.list(&dir, state.last_key.as_deref()).await? {
        let Some(batch) = BatchKey::parse(&s3.prefix, &key) else {
            continue;
        };
        if batch.last <= state.last_seq {
            continue;
        }
        if batch.first != state.last_seq + 1 {
            bail!(
                "s3://{}/{key} does not follow seq {} shipped from this host: the bucket holds a foreign or overlapping object; see `p3-executor audit verify --s3`",
                s3.bucket,
                state.last_seq
            );
        }
        let n = (batch.last - batch.first + 1) as usize;
        if pending.len() < n {
            bail!(
                "s3://{}/{key} holds records up to seq {} from this host, but the local log ends at seq {}: its tail was cut after shipping",
                s3.bucket,
                batch.last,
                state.last_seq + pending.len() as u64
            );
        }
        let (batch_lines, rest) = pending.split_at(n);
        if store.get(&key).await? != body(batch_lines) {
            bail!(
                "s3://{}/{key} differs from the local log's records {}..{}: the local log was rewritten after shipping, or the object was replaced; see `p3-executor audit verify --s3`",
                s3.bucket,
                batch.first,
                batch.last
            );
        }
        advance(&mut state, &batch_lines[n - 1], key)?;
        pending = rest;
        done.adopted += 1;
    }

    while !pending.is_empty() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut n = 0;
        let mut bytes = 0;
        while n < pending.len()
            && (n as u64) < s3.batch_records
            && (n == 0 || bytes + pending[n].bytes.len() <= MAX_BATCH_BYTES)
        {
            bytes += pending[n].bytes.len();
            n += 1;
        }
        let (batch_lines, rest) = pending.split_at(n);
        let batch = BatchKey {
            host_id: host_id.into(),
            chain: chain.clone(),
            first: batch_lines[0].seq,
            last: batch_lines[n - 1].seq,
        };
        let key = batch.render(&s3.prefix);
        let content = body(batch_lines);
        match store
            .put_new(&key, content.clone(), s3.object_lock.as_ref())
            .await?
        {
            Put::Created => {
                done.objects += 1;
                done.records += n as u64;
            }
            // A shipper that crashed after this put but before its listing was saved.
            Put::Exists if store.get(&key).await? == content => done.adopted += 1,
            Put::Exists => bail!(
                "s3://{}/{key} already exists with other content than the local records {}..{}: refusing to ship over it; see `p3-executor audit verify --s3`",
                s3.bucket,
                batch.first,
                batch.last
            ),
        }
        advance(&mut state, &batch_lines[n - 1], key)?;
        pending = rest;
    }
    done.up_to = state.last_seq;
    done.waiting = pending.len() as u64;
    if let Some(why) = after.stop {
        bail!(
            "shipped up to seq {}, then stopped: in the local log {}, {why}; see `p3-executor audit verify`",
            state.last_seq,
            log.display()
        );
    }
    Ok(done)
}

/// The object body of a batch: its lines exactly as in the local log.
fn body(lines: &[Line]) -> Vec<u8> {
    lines.iter().flat_map(|l| l.bytes.iter().copied()).collect()
}

/// The shipper's lock. A bounded ship (`deadline`: the end of a cleanup) does not wait: None
/// when another shipper holds it, which ships what is there; an unbounded one waits its turn.
fn lock(path: &std::path::Path, deadline: Option<Instant>) -> Result<Option<Flock<File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let how = match deadline {
        Some(_) => FlockArg::LockExclusiveNonblock,
        None => FlockArg::LockExclusive,
    };
    match Flock::lock(file, how) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => bail!("lock {}: {e}", path.display()),
    }
}
