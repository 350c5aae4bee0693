//! p3-executor's integration suite, one binary: each module drives the built binaries (and,
//! where a unit is worth testing against a real service, the library) against real components:
//! an MIT KDC, S3 servers, buildah, RS256 tokens. Stand-ins exist only for what cannot run
//! here (GitLab, P3) and follow the documented APIs. Fixtures come from `p3_testkit`.
//!
//! `cargo test` builds `p3-executor-steps`, `p3-executor-aws` and `p3-executor-demo` too (their
//! crates' own small tests need them), so `p3-executor <step>`, `p3-executor audit ship` and
//! `p3-executor demo` find their siblings.

mod common;

mod architecture;
mod audit;
mod cgroups;
mod containers;
mod crash;
mod credentials;
mod demo;
mod docs;
mod example_project;
mod explain;
mod fleet;
mod full_disk;
mod identity;
mod image;
mod images;
mod install;
mod isolation;
mod kerberos;
mod metrics;
mod network;
mod p3;
mod packaging;
mod parsers;
mod pipeline;
mod realms;
mod release;
mod rotation;
mod runner;
mod s3;
mod s3_integrity;
mod scrub;
mod seed_pipeline;
mod steps_cli;
mod steps_s3;
mod walls;
mod web_identity;
