//! Tamper-evident audit log: one JSON record per line, hash-chained.
//!
//! Every grant, denial, renewal, cleanup and gc of credentials appends one [`AuditRecord`].
//! Each record carries `seq` (1, 2, ...), `prev` (the previous record's `hash`, or
//! [`GENESIS`] for the first) and `hash`: SHA-256 over the record's canonical JSON (keys sorted,
//! no whitespace) without the `hash` key. Editing a record breaks its hash; removing or
//! reordering records breaks `seq` and `prev`; `audit verify` names the first such line.
//!
//! Appends from concurrent executor processes are serialised by an exclusive `flock` on the log
//! itself: the last record is read, the new one written with a single `write` on an `O_APPEND`
//! descriptor and fsynced, all under the lock, so records never interleave and the chain never
//! forks.
//!
//! An append that finds a *torn tail* (bytes after the last good record that are not a record:
//! an earlier append was interrupted by a crash or a full disk) removes exactly those bytes and
//! appends a `recovered` record carrying their SHA-256 and length and the last good hash, then
//! its own record; it walks the whole chain first (only then) to make sure everything before
//! the torn bytes verifies. A complete record is never removed: damage that reaches one (a last
//! record that does not continue the one before it, two bad lines, a broken middle) fails
//! closed with the line and the fix. `audit verify` accepts and lists recovery records.
//!
//! The chain proves the log is internally consistent, not that nobody with root rewrote all of
//! it: `audit verify` prints the head hash, which operators can record elsewhere.
//!
//! This file is the module's public surface only. The parts, each depending only on those
//! above it:
//! - `record.rs`: [`AuditRecord`] and its kinds, the canonical hash, [`continues`] (pure);
//! - `error.rs`: [`AuditError`];
//! - `tail.rs`: how the log ends (a good record, a torn append, damage), read backwards;
//! - `verify.rs`: walking the whole chain ([`verify`](fn@verify));
//! - `syslog.rs`: the sink that sends every record to the local syslog socket;
//! - `append.rs`: [`append`](fn@append) (tail, recovery, write, fsync), then the sinks;
//! - `query.rs`: [`ShowFilter`] (the options) resolved into [`Filter`], [`parse_since`] and [`show`] (the table or the JSON lines);
//! - `cli.rs`: the `audit` subcommands ([`AuditCommand`]) and [`run`];
//! - `shipped.rs`: how far the log has been shipped to `[audit.s3]` (the watermark and the lag);
//!   the shipping itself is `p3-executor-aws` (crates/aws/src/fleet/);
//! - `shipper.rs`: runs that shipping, bounded.
//!
//! The metrics (`crate::metrics`) are the other reader: they depend on the record type, and
//! nothing here depends on them.

mod append;
mod cli;
mod error;
mod query;
mod record;
pub mod shipped;
pub mod shipper;
pub mod syslog;
mod tail;
mod verify;

pub use append::append;
pub use cli::{AuditCommand, run};
pub use error::AuditError;
pub use query::{Filter, ShowFilter, parse_since, print, show};
pub use record::{AuditEvent, AuditRecord, Decision, GENESIS, Recovery, continues, record_hash};
pub use verify::{ChainBreak, RecoveryNote, TornTail, Verification, verify};
