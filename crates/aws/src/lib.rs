//! p3-executor's host-side AWS calls, as a binary of their own (`p3-executor-aws`), so the
//! AWS SDK stays out of the binary the runner starts for every stage of every job:
//!
//! - `fleet/`: the audit trail beyond one host. `audit ship` copies the local hash chain to
//!   `[audit.s3]` as immutable, Object-Locked batches; `audit verify --s3` and
//!   `audit show --s3` read every host's shipped batches back.
//! - `sts`: the web-identity S3 credential source (STS `AssumeRoleWithWebIdentity` with the
//!   job's verified ID token), run by `prepare` as a built-in credential process.
//!
//! It depends on the executor's library (config, the audit chain and its queries); nothing
//! depends on it.

pub mod cli;
pub mod fleet;
pub mod sts;
