//! p3-executor: a GitLab Runner custom executor that verifies who a job is, grants it the
//! Kerberos and S3 credentials its devstage policy allows, audits every decision, and removes
//! every credential when the job ends. See ARCHITECTURE.md for how one job flows through it.

#![warn(missing_docs)]
// The module docs are a map for maintainers and link the internals they describe (the walls'
// `Wall` and `WALLS`, `teardown`, private check modules): read them with
// `cargo doc --document-private-items`, where every such link resolves.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod atomic_file;
pub mod audit;
pub mod check;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
pub mod explain;
pub mod gc;
pub(crate) mod grant;
pub(crate) mod host_ids;
pub mod identity;
pub mod images;
pub mod job;
pub(crate) mod job_owner;
pub(crate) mod limits;
pub mod metrics;
pub(crate) mod pattern_match;
pub mod policy;
pub(crate) mod process;
pub(crate) mod residue;
pub mod runner;
pub mod sandbox;
pub mod siblings;
pub mod side_by_side;
pub(crate) mod subid_pool;
pub(crate) mod teardown;
pub(crate) mod uid_pool;
pub mod walls;
pub(crate) mod workspace;

// Shared with the built-in steps through the contract crate.
pub use p3_contract::logging;
pub(crate) use p3_contract::{command, terminal};
