//! Built-in steps that jobs call from `.gitlab-ci.yml`. They run inside the job, as the job
//! user, with the job's credentials: they enforce nothing the executor's policy does not.
//!
//! Decisions are pure and live in their own small modules (`tag`, [`p3toml`], and the argv
//! templates in `p3_contract::template`, which config validation shares);
//! the step modules ([`image`], [`p3`], [`release`]) do the I/O around them.
//!
//! What other crates use is `pub`: the command line ([`cli`]), each step's `run`, and what the
//! test suite parses ([`p3toml::P3File`], [`context::load_steps_config`], [`s3`]'s URIs); the
//! rest is `pub(crate)`. [`tls::CaBundle`] is `pub` only because `s3`'s public structs hold one.

#![warn(missing_docs)]
// Module docs are a maintainers' map and link the internals they describe: read them with
// `cargo doc --document-private-items`, where every such link resolves.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod context;
pub mod image;
pub mod p3;
pub mod p3toml;
pub mod release;
pub mod s3;
mod stream;
mod tag;
pub mod tls;
