//! Reading a chain of records, from the local log or from shipped objects: each line must be a
//! record whose `hash` is its content's hash and that continues the one before it.

use serde_json::Value;

use p3_executor::audit::record_hash;

/// One verified record line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its `seq`.
    pub seq: u64,
    /// Its `hash`.
    pub hash: String,
    /// The line's bytes, with its newline.
    pub bytes: Vec<u8>,
    /// Byte offset just after it in the text read (relative to where reading started).
    pub end: u64,
}

/// Records read from a text, and why reading stopped early (None: the text ended cleanly, or
/// in an incomplete last line, which a later append repairs).
#[derive(Debug, Default)]
pub struct Lines {
    /// The records that continue the chain, in order.
    pub lines: Vec<Line>,
    /// The first line that does not.
    pub stop: Option<String>,
}

/// Read complete record lines from `text`, which continues the chain after (`seq`, `hash`).
pub fn read_chain(text: &[u8], mut seq: u64, mut hash: String) -> Lines {
    let mut out = Lines::default();
    let mut at = 0usize;
    while at < text.len() {
        let Some(nl) = text[at..].iter().position(|&b| b == b'\n') else {
            break; // an append in flight, or a torn tail the next append repairs
        };
        let bytes = &text[at..at + nl + 1];
        match check(bytes, seq, &hash) {
            Ok(h) => {
                seq += 1;
                hash = h;
                out.lines.push(Line {
                    seq,
                    hash: hash.clone(),
                    bytes: bytes.to_vec(),
                    end: (at + nl + 1) as u64,
                });
            }
            Err(why) => {
                out.stop = Some(why);
                break;
            }
        }
        at += nl + 1;
    }
    out
}

/// Whether `line` is the record after (`seq`, `prev`); returns its hash.
pub fn check(line: &[u8], seq: u64, prev: &str) -> Result<String, String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(format!("the record after seq {seq} is not a JSON record")),
    };
    let stored = v.get("hash").and_then(Value::as_str).unwrap_or_default();
    let actual = record_hash(&v);
    let got_seq = v.get("seq").and_then(Value::as_u64);
    if stored != actual {
        return Err(format!(
            "record seq {} does not match its hash: it was edited",
            got_seq.map_or("?".into(), |s| s.to_string())
        ));
    }
    if got_seq != Some(seq + 1) {
        return Err(format!(
            "seq {} follows seq {seq}: records are missing, duplicated or reordered",
            got_seq.map_or("?".into(), |s| s.to_string())
        ));
    }
    if v.get("prev").and_then(Value::as_str) != Some(prev) {
        return Err(format!(
            "record seq {} does not continue seq {seq} (prev {:.16}… ≠ {:.16}…)",
            seq + 1,
            v.get("prev").and_then(Value::as_str).unwrap_or_default(),
            prev
        ));
    }
    Ok(actual)
}
