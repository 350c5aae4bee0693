//! How the log ends, read backwards from its end: a good last record, a torn append (only the
//! bytes after the last newline), or damage. Only the last two lines are read, so appends stay
//! cheap however long the log grows.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{AuditError, io};
use super::record::{GENESIS, Good, check_line};

/// Longest record line `append` will read back as the chain's tail.
pub(super) const MAX_RECORD: u64 = 1 << 20;

/// How the log ends, judged from its last two lines only.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tail {
    /// Empty, or the last line is a good record continuing the one before it.
    Good {
        /// Its `seq` (0 for an empty log).
        seq: u64,
        /// Its `hash` ([`GENESIS`] for an empty log).
        hash: String,
    },
    /// Bytes after the last newline, which ends a good record: an interrupted append.
    Torn(Torn),
    /// Not a torn append: damage that reaches a complete record.
    Damaged(String),
}

/// A torn tail: bytes `good_end..len` of the log are not a record.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Torn {
    /// Where the last good record ends (0 when there is none).
    pub(super) good_end: u64,
    /// The log's length.
    pub(super) len: u64,
    /// `seq` of the last good record (0 when there is none).
    pub(super) seq: u64,
    /// `hash` of the last good record ([`GENESIS`] when there is none).
    pub(super) hash: String,
    /// What the torn bytes are.
    pub(super) why: String,
}

/// How the log ends, reading only its last two lines (backwards, in small chunks), so appends
/// stay cheap however long the log grows.
///
/// Torn: only the bytes after the last newline (an append writes its line with its newline in
/// one write, so an interrupted one leaves no newline), after a last complete line that is a
/// record continuing the one before it. Damaged: a complete last line that is not a record (not
/// JSON, not matching its hash) or does not continue the one before it.
pub(super) fn inspect_tail(file: &File, path: &Path) -> Result<Tail, AuditError> {
    let len = file.metadata().map_err(io(path, "stat"))?.len();
    if len == 0 {
        return Ok(Tail::Good {
            seq: 0,
            hash: GENESIS.into(),
        });
    }
    let Some((after_newline, partial)) = line_ending_at(file, path, len)? else {
        return Ok(Tail::Damaged(
            "its last 1 MiB holds no line end, so it is not a torn append".into(),
        ));
    };
    let partial = (!partial.is_empty())
        .then(|| "an incomplete line (no newline): an append was interrupted".to_string());
    let torn = |good_end: u64, seq: u64, hash: String, why: String| {
        Tail::Torn(Torn {
            good_end,
            len,
            seq,
            hash,
            why,
        })
    };
    if after_newline == 0 {
        let why = partial.unwrap_or_default();
        return Ok(torn(0, 0, GENESIS.into(), why));
    }
    // The last complete line: `line_start..after_newline - 1`, then its newline.
    let Some((line_start, line)) = line_ending_at(file, path, after_newline - 1)? else {
        return Ok(Tail::Damaged("the last line is longer than 1 MiB".into()));
    };
    // The record before the last line (GENESIS, seq 0, when the last line is the first).
    let before = || -> Result<Result<Good, String>, AuditError> {
        if line_start == 0 {
            return Ok(Ok(Good {
                seq: 0,
                hash: GENESIS.into(),
                prev: String::new(),
            }));
        }
        Ok(match line_ending_at(file, path, line_start - 1)? {
            Some((_, bytes)) => check_line(&bytes),
            None => Err("is longer than 1 MiB".into()),
        })
    };
    match check_line(&line) {
        Ok(last) => {
            let prev = match before()? {
                Ok(prev) => prev,
                Err(why) => {
                    return Ok(Tail::Damaged(format!(
                        "the line before the last record {why}"
                    )));
                }
            };
            if prev.seq.checked_add(1) != Some(last.seq) || last.prev != prev.hash {
                return Ok(Tail::Damaged(format!(
                    "the last record (seq {}) does not continue the one before it (seq {}): records were removed, replaced or reordered",
                    last.seq, prev.seq
                )));
            }
            Ok(match partial {
                None => Tail::Good {
                    seq: last.seq,
                    hash: last.hash,
                },
                Some(why) => torn(after_newline, last.seq, last.hash, why),
            })
        }
        // A complete line (it ends in a newline) that is not a record is never a torn append:
        // an append writes its line and its newline in one write, so an interrupted one
        // leaves no newline. It was edited or corrupted: damage, never removed.
        Err(line_why) => Ok(Tail::Damaged(format!(
            "the last complete line {line_why}: an interrupted append leaves no newline, so this line was edited or corrupted"
        ))),
    }
}

/// The line that ends at offset `end` (exclusive: `end` is its newline, or the end of the
/// file): where it starts and its bytes, read backwards in small chunks. None when it is
/// longer than [`MAX_RECORD`].
pub(super) fn line_ending_at(
    file: &File,
    path: &Path,
    end: u64,
) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
    let mut start = end;
    // Read chunks, nearest to `end` first; none of them holds a newline.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let joined = |mut chunks: Vec<Vec<u8>>| {
        chunks.reverse();
        chunks.concat()
    };
    loop {
        if start == 0 {
            return Ok((end <= MAX_RECORD).then(|| (0, joined(chunks))));
        }
        if end - start > MAX_RECORD {
            return Ok(None);
        }
        let n = start.min(4096);
        start -= n;
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(io(path, "read"))?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            let line_start = start + i as u64 + 1;
            buf.drain(..=i);
            chunks.push(buf);
            return Ok((end - line_start <= MAX_RECORD).then(|| (line_start, joined(chunks))));
        }
        chunks.push(buf);
    }
}
