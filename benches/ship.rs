//! What the audit trail in S3 costs (issue 12), against a local moto server with Object Lock:
//! a full ship of a long log, the incremental ship a `cleanup` does, `audit verify --s3` over
//! it, and a whole job with `[audit.s3]` next to the same job without it, interleaved.
//!
//! ```text
//! cargo bench --bench ship --profile dev      # debug build: no 10-minute release build
//! P3_BENCH_RECORDS=50000 cargo bench --bench ship
//! ```
//!
//! Needs `moto_server` (pip install 'moto[server]') and the AWS CLI (to create the bucket).
//! moto is a single-threaded Python server: the figures bound what the shipper costs from
//! above; a real S3 answers faster.

use std::process::Stdio;
use std::time::{Duration, Instant};

use p3_testkit::driver::{Host, executor_exe};
use p3_testkit::fleet::{append_records, ship_to};
use p3_testkit::s3::S3Server;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn timed(h: &Host, args: &[&str]) -> (Duration, String) {
    let start = Instant::now();
    let out = h
        .host_command(args)
        .stdin(Stdio::null())
        .output()
        .expect("run p3-executor");
    let took = start.elapsed();
    assert!(out.status.success(), "{args:?}: {out:?}");
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let records: u64 = std::env::var("P3_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let s3 = S3Server::start_moto();
    s3.aws_ok(&[
        "s3api",
        "create-bucket",
        "--bucket",
        "bench",
        "--object-lock-enabled-for-bucket",
    ]);
    let exe = executor_exe();

    // A long log shipped at once (a host that was offline, or the first ship).
    let h = Host::new(exe.clone(), "");
    ship_to(&h, &s3, "bench", "full", "");
    let start = Instant::now();
    append_records(&h, records);
    let appended = start.elapsed();
    let (full, out) = timed(&h, &["audit", "ship"]);
    println!(
        "append {records} records: {} ({:.0} records/s, each fsynced)",
        ms(appended),
        records as f64 / appended.as_secs_f64()
    );
    println!(
        "ship {records} records (batches of 1000): {} ({:.0} records/s): {}",
        ms(full),
        records as f64 / full.as_secs_f64(),
        out.trim()
    );

    // The incremental ship every cleanup does: a few new records each time.
    let mut incremental = Vec::new();
    for _ in 0..20 {
        append_records(&h, 3);
        incremental.push(timed(&h, &["audit", "ship", "--max-secs", "1"]).0);
    }
    println!(
        "incremental ship of 3 new records (one object), median of 20: {}",
        ms(median(incremental))
    );
    let (verify, out) = timed(&h, &["audit", "verify", "--s3", "s3://bench/full"]);
    println!(
        "audit verify --s3 over {} records: {}: {}",
        records + 60,
        ms(verify),
        out.trim()
    );

    // A whole job (config, prepare, two stages, cleanup) with and without shipping at its
    // cleanup, interleaved so both see the same load.
    let plain = Host::new(exe.clone(), "");
    let shipping = Host::new(exe, "");
    ship_to(&shipping, &s3, "bench", "jobs", "");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..15u64 {
        for (h, into) in [(&plain, &mut without), (&shipping, &mut with)] {
            append_records(h, 2); // what a grant and its cleanup record add
            let mut job = h.job(500 + i, "true");
            let start = Instant::now();
            let result = job.run_all();
            into.push(start.elapsed());
            assert_eq!(
                result,
                p3_testkit::driver::JobResult::Success,
                "{}",
                job.log
            );
        }
    }
    let (a, b) = (median(without), median(with));
    println!(
        "whole job, median of 15: {} without [audit.s3], {} with it ({} for the ship at cleanup)",
        ms(a),
        ms(b),
        ms(b.saturating_sub(a))
    );
}
