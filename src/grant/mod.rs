//! Credential grants for one job, as a pipeline of stages with one job each:
//!
//! - `decide.rs` (pure): what the job asked for and its verified identity in, the devstage and
//!   account granted or a denial (with its record's outcome and the job's error) out;
//! - `obtain/`: one [`Credential`](obtain::Credential) implementation per kind (the Kerberos
//!   ticket, the S3 credentials): obtain, refresh, revoke, describe for the audit log;
//! - `record.rs`: the audit records (the deny record built in one place);
//! - `inject.rs`: the job's environment and files (the steps' settings, the AWS files);
//! - `lifetime.rs` (pure): how long credentials may and must live, from the job's deadline.
//!
//! `prepare.rs`, `refresh.rs` (before a stage) and `revoke.rs` (cleanup, gc) compose them.
//! Every decision and every credential event becomes one audit record; a grant whose record
//! cannot be written is withdrawn (fail closed).

mod decide;
mod inject;
mod lifetime;
mod obtain;
mod prepare;
mod record;
mod refresh;
mod revoke;

pub use prepare::prepare;
pub use refresh::refresh;
pub use revoke::{Ending, revoke};
