//! Per-job cgroups: memory, pids and CPU limits for every process of a job (work in progress).
