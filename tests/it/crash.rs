//! Crash consistency: the runner (or the host) SIGKILLs `prepare`, `run` and `cleanup` at random
//! moments, with and without a devstage grant against the real KDC. Whatever moment it hits,
//! a `cleanup` then a `gc` must leave no job dir, credentials dir, uid lease or process of the
//! job's uid; the audit chain must verify; and a later job on the same host must succeed.
//!
//! The moments come from a small generator seeded per run; the seed is printed, and
//! `P3_CRASH_SEED=<n>` replays a run.

use std::path::Path;
use std::time::Duration;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::common::{JobResult, is_root};
use p3_testkit::driver::{Host, Job};
use p3_testkit::kdc;

const TRIALS: u64 = 100;

/// xorshift64*: reproducible without a dependency.
struct Moments(u64);

impl Moments {
    fn next(&mut self, below_ms: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        Duration::from_millis(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below_ms.max(1))
    }
}

struct Fixture {
    _kdc: kdc::Kdc,
    minter: TokenMinter,
    _jwks: JwksServer,
    host: Host,
}

impl Fixture {
    fn job(&self, id: u64, granted: bool, script: &str) -> Job {
        let job = self.host.job(id, script);
        if !granted {
            return job;
        }
        let claims = gitlab_claims(
            ISSUER,
            "p3-executor",
            id,
            "data-ml/forecast",
            "main",
            "branch",
            false,
        );
        job.var("P3_ID_TOKEN", &self.minter.mint(claims))
            .var("P3_DEVSTAGE", "client_dev")
    }
}

/// Start one runner call, let it run for `after`, then SIGKILL it (if it is still running).
fn kill_during(job: &mut Job, call: &[&str], after: Duration) {
    let mut child = job
        .command(call)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

/// Everything of job `id` that must be gone after cleanup and gc.
fn leftovers(host: &Host, id: u64, uid_range: [u32; 2]) -> Vec<String> {
    let root = host.root();
    let mut left: Vec<String> = [
        root.join(format!("state/jobs/{id}")),
        root.join(format!("state/creds/{id}")),
        root.join(format!("builds/{id}")),
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok())
    .map(|p| p.display().to_string())
    .collect();
    if let Ok(entries) = std::fs::read_dir(root.join("state/uids")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.trim() == id.to_string() || text.starts_with("quarantine") {
                left.push(format!("lease {}: {text}", e.path().display()));
            }
        }
    }
    for p in p3_testkit::procs::holding(uid_range[0]..=uid_range[1]) {
        left.push(format!("process {p}"));
    }
    left
}

fn uid_range(config: &Path) -> [u32; 2] {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("job_uid_range"))
        .expect("the test host sets a range");
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    [nums[0], nums[1]]
}

#[test]
fn sigkill_at_any_moment_leaves_nothing_after_cleanup_and_gc() {
    if !is_root() {
        eprintln!("skipped: needs root for private job uids");
        return;
    }
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let config = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "");
    let fx = Fixture {
        host: crate::common::host(&config),
        _kdc: kdc,
        minter,
        _jwks: jwks,
    };
    let range = uid_range(&fx.host.config);
    let seed = std::env::var("P3_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (u64::from(std::process::id()) * 0x9e37_79b9) | 1);
    println!("crash trials: seed {seed} (replay with P3_CRASH_SEED={seed})");
    let mut moments = Moments(seed);
    let body = "sleep 30 &\nsetsid sleep 31 &\necho started\nsleep 32";
    for trial in 0..TRIALS {
        let id = 9000 + trial;
        let granted = trial % 2 == 0;
        let mut job = fx.job(id, granted, body);
        assert_eq!(job.config(), 0, "{}", job.log);
        let victim = match trial % 3 {
            0 => "prepare",
            1 => "run",
            _ => "cleanup",
        };
        match victim {
            "prepare" => kill_during(&mut job, &["prepare"], moments.next(60)),
            "run" => {
                assert_eq!(job.prepare(), 0, "trial {trial}: {}", job.log);
                let script = job.tmp.path().join("build_script");
                std::fs::write(&script, body).unwrap();
                let script = script.display().to_string();
                kill_during(
                    &mut job,
                    &["run", &script, "build_script"],
                    moments.next(120),
                );
            }
            _ => {
                assert_eq!(job.prepare(), 0, "trial {trial}: {}", job.log);
                kill_during(&mut job, &["cleanup"], moments.next(30));
            }
        }
        // The runner always calls cleanup; a runner that died too is swept by gc.
        let code = job.cleanup();
        assert_eq!(
            code, 0,
            "trial {trial} ({victim}): cleanup failed:\n{}",
            job.log
        );
        let gc = fx.host.exec(&["gc", "--max-age-secs", "0"]);
        assert!(gc.status.success(), "trial {trial}: gc: {gc:?}");
        let left = leftovers(&fx.host, id, range);
        assert!(
            left.is_empty(),
            "trial {trial} (seed {seed}, {victim} killed, granted: {granted}) left: {left:#?}\n{}",
            job.log
        );
    }
    let verify = fx.host.exec(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "audit chain after {TRIALS} crashes: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // The host still works: a granted job from start to end.
    let mut later = fx.job(9999, true, "klist -s && echo ticket-ok");
    assert_eq!(later.run_all(), JobResult::Success, "{}", later.log);
    assert!(later.log.contains("ticket-ok"), "{}", later.log);
}
