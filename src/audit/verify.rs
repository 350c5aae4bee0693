//! Walking the whole chain: the first record that was edited, removed or reordered, the
//! recoveries of torn appends, and whether the log ends in a torn append.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use super::error::{AuditError, io};
use super::record::{AuditRecord, GENESIS, Recovery, record_hash};
use super::tail::{Tail, inspect_tail};

/// The first inconsistency `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number in the log.
    pub line: u64,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// What mismatched, and what that means.
    pub message: String,
}

/// A `recovered` record found by `verify`: an append removed a torn tail here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryNote {
    /// 1-based line number of the `recovered` record.
    pub line: u64,
    /// Its `seq`.
    pub seq: u64,
    /// When the torn tail was removed.
    pub time: DateTime<Utc>,
    /// What was removed.
    pub recovery: Recovery,
}

/// The log ends in a torn append: the next append removes it and records a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// 1-based line number where the torn bytes start.
    pub line: u64,
    /// Byte offset where they start.
    pub offset: u64,
    /// How many there are.
    pub bytes: u64,
    /// What they are.
    pub message: String,
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records read before the first break (all of them when the chain is intact).
    pub records: u64,
    /// Hash of the last good record ([`GENESIS`] for an empty log).
    pub head: String,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
    /// The `recovered` records among the good ones: torn appends that a later append removed.
    pub recoveries: Vec<RecoveryNote>,
    /// Set when the break is only a torn append at the end (everything before it verifies):
    /// the next append removes exactly those bytes and records it, so no operator action is
    /// needed.
    pub torn_tail: Option<TornTail>,
}

/// Walk the chain of the log at `path` (an empty or missing log is intact) and report the first
/// record that was edited, removed or reordered, and the recoveries of torn appends.
pub fn verify(path: &Path) -> Result<Verification, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verification {
                records: 0,
                head: GENESIS.into(),
                broken: None,
                recoveries: Vec::new(),
                torn_tail: None,
            });
        }
        Err(e) => return Err(io(path, "open")(e)),
    };
    // A shared lock: no append lands half-way through the walk.
    let locked = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, errno)| io(path, "lock")(std::io::Error::from(errno)))?;
    let Walk {
        mut verification,
        break_offset,
    } = walk(&locked, path)?;
    if let (Some(offset), Some(b)) = (break_offset, &verification.broken) {
        if let Tail::Torn(torn) = inspect_tail(&locked, path)? {
            if torn.good_end == offset && torn.seq == verification.records {
                verification.torn_tail = Some(TornTail {
                    line: b.line,
                    offset,
                    bytes: torn.len - torn.good_end,
                    message: torn.why,
                });
            }
        }
    }
    Ok(verification)
}

/// A walk over the chain, and where (byte offset) its first broken line starts.
pub(super) struct Walk {
    pub(super) verification: Verification,
    pub(super) break_offset: Option<u64>,
}

/// Reads a file from the start with `pread`, leaving its offset alone.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Walk the whole chain of an open (and locked) log.
pub(super) fn walk(file: &File, path: &Path) -> Result<Walk, AuditError> {
    let mut reader = BufReader::new(ReadAt { file, pos: 0 });
    let mut at = Position {
        line: 0,
        start: 0,
        seq: 1,
        prev: GENESIS.to_string(),
    };
    let mut offset = 0u64;
    let mut recoveries = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(io(path, "read"))?;
        if n == 0 {
            break;
        }
        at.line += 1;
        at.start = offset;
        offset += n as u64;
        match next_record(&buf, &at) {
            Ok((hash, recovery)) => {
                recoveries.extend(recovery);
                at.prev = hash;
                at.seq += 1;
            }
            Err((seq, message)) => {
                return Ok(Walk {
                    verification: Verification {
                        records: at.line - 1,
                        head: at.prev,
                        broken: Some(ChainBreak {
                            line: at.line,
                            seq,
                            message,
                        }),
                        recoveries,
                        torn_tail: None,
                    },
                    break_offset: Some(at.start),
                });
            }
        }
    }
    Ok(Walk {
        verification: Verification {
            records: at.line,
            head: at.prev,
            broken: None,
            recoveries,
            torn_tail: None,
        },
        break_offset: None,
    })
}

/// Where the walk is: the line being read and what it must continue.
struct Position {
    /// 1-based number of the line.
    line: u64,
    /// Its byte offset.
    start: u64,
    /// The `seq` it must have.
    seq: u64,
    /// The `prev` it must have: the hash of the record before it ([`GENESIS`] for the first).
    prev: String,
}

/// Judge one line of the log (with its newline) at `at`: its hash and, for a `recovered`
/// record, the recovery it notes; or the break (the record's `seq` when readable, and what is
/// wrong).
fn next_record(
    buf: &[u8],
    at: &Position,
) -> Result<(String, Option<RecoveryNote>), (Option<u64>, String)> {
    if buf.last() != Some(&b'\n') {
        return Err((
            None,
            "incomplete last line (no newline): an append was interrupted or the file was truncated".into(),
        ));
    }
    let v: Value = match serde_json::from_slice(buf) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err((None, "not a JSON object: the line was edited".into())),
        Err(e) => return Err((None, format!("not valid JSON ({e}): the line was edited"))),
    };
    let seq = v.get("seq").and_then(Value::as_u64);
    let stored = v.get("hash").and_then(Value::as_str).unwrap_or_default();
    let prev = v.get("prev").and_then(Value::as_str).unwrap_or_default();
    let actual = record_hash(&v);
    if stored != actual {
        return Err((
            seq,
            format!(
                "hash mismatch (stored {:.16}…, content hashes to {:.16}…): the record was edited",
                stored, actual
            ),
        ));
    }
    let expected_seq = at.seq;
    match seq {
        None => return Err((None, "no seq: the record was edited".into())),
        Some(s) if s > expected_seq => {
            return Err((
                seq,
                format!(
                    "seq {s} where {expected_seq} was expected: record(s) {expected_seq}..{} are missing here (removed, or moved later in the file)",
                    s - 1
                ),
            ));
        }
        Some(s) if s < expected_seq => {
            return Err((
                seq,
                format!(
                    "seq {s} appears after seq {}: records were reordered or duplicated",
                    expected_seq - 1
                ),
            ));
        }
        Some(_) => {}
    }
    if prev != at.prev {
        let why = if at.line == 1 {
            "the log does not start a chain (its beginning was removed)".to_string()
        } else {
            format!(
                "line {} was edited and re-hashed, or records were removed or reordered",
                at.line - 1
            )
        };
        return Err((
            seq,
            format!(
                "prev {:.16}… does not match the previous record's hash {:.16}…: {why}",
                prev, at.prev
            ),
        ));
    }
    if v.get("event").and_then(Value::as_str) != Some("recovered") {
        return Ok((actual, None));
    }
    // A recovery must say what it follows, and sit where the torn bytes were.
    match serde_json::from_value::<AuditRecord>(v).ok() {
        Some(AuditRecord {
            recovery: Some(r),
            time,
            ..
        }) if r.last_good_hash == at.prev
            && r.last_good_seq.checked_add(1) == Some(expected_seq)
            && r.offset == at.start =>
        {
            let note = RecoveryNote {
                line: at.line,
                seq: expected_seq,
                time,
                recovery: r,
            };
            Ok((actual, Some(note)))
        }
        _ => Err((
            seq,
            "a recovered record that does not describe its place in the log (last good record, offset): it was edited".into(),
        )),
    }
}
