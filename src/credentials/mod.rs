//! Credentials the executor obtains on the host and hands to a job.

pub mod aws;
