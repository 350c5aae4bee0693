//! The walls between a job and the host (and between jobs) that namespaces do not give:
//! per-job cgroup limits, kernel keyrings, and the seccomp filter. Each wall has the same
//! shape: `setup` in prepare, `enter` in the job's process before exec, `teardown` when the
//! job ends, and a `check` for `p3-executor check`. The order of teardown lives in
//! `crate::teardown`.

pub mod cgroup;
pub mod keyring;
pub mod network;
pub mod seccomp;
pub mod userns;
