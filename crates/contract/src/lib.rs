//! The contract between p3-executor's runner binary and its built-in steps, and the small
//! mechanisms both use. Nothing here knows about grants, policy or AWS.
//!
//! - [`env`](mod@env): the job-environment names the executor writes and the steps read;
//! - [`steps_config`]: the `[steps]` settings, validated by their owner;
//! - [`exit`]: failure kinds and every exit code, in one table;
//! - [`command`]: host tools run with an argv, a timeout and captured output;
//! - [`procs`]: the one reader of `/proc` (processes, their parents, states and ids);
//! - [`pidfd`]: process handles that survive pid reuse;
//! - [`template`]: argv templates (pure; config validation and the P3 step share them);
//! - [`terminal`]: job-supplied strings made safe for a terminal;
//! - [`logging`]: diagnostics to stderr, for both binaries.

#![warn(missing_docs)]
// Module docs are a maintainers' map and link the internals they describe: read them with
// `cargo doc --document-private-items`, where every such link resolves.
#![allow(rustdoc::private_intra_doc_links)]

pub mod command;
pub mod env;
pub mod exit;
pub mod logging;
pub mod pidfd;
pub mod procs;
pub mod steps_config;
pub mod template;
pub mod terminal;
