//! Reading a chain of records, from the local log or from shipped objects: each line must be a
//! record whose `hash` is its content's hash and that continues the one before it.

use p3_executor::audit::continues;

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
        // Without its newline, as the log's own reader checks it.
        match continues(&bytes[..bytes.len() - 1], seq, &hash) {
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
