//! Fixtures for p3-executor's test suite and its demo, on real components wherever one can
//! run here: a throwaway MIT Kerberos realm ([`realm`], [`kdc`]), RS256 ID tokens and a JWKS
//! ([`tokens`]), loopback HTTP stand-ins for GitLab ([`http_stub`]), S3 servers ([`s3`]), and
//! a GitLab Runner stand-in that drives the four runner calls ([`driver`]). [`demo`] tells
//! the product's story with them (`p3-executor demo`).
//!
//! Never linked into the runner binary: `p3-executor demo` execs `p3-executor-demo`.

#![warn(missing_docs)]

pub mod corrupting_proxy;
pub mod demo;
pub mod driver;
pub mod fleet;
pub mod http_stub;
pub mod kdc;
pub mod procs;
pub mod realm;
pub mod s3;
pub mod tokens;
