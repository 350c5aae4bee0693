//! End-to-end: a cgroup per job, with limits (issue 18), through the runner calls as root on
//! the real kernel (this machine: cgroup v1 hybrid; a v2 host runs the same tests). Each test
//! fails on the executor before per-job cgroups: nothing bounded a job's pids or memory.
//!
//! Never an unbounded fork loop here: every loop stops at 5,000 children.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::common::{host, is_root, processes_of};
use p3_testkit::driver::{Host, Job};
use p3_testkit::kdc;
use serde_json::Value;

fn needs_root() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root for job cgroups");
    }
    is_root()
}

fn state_of(host: &Host, job: u64) -> Value {
    let text = fs::read_to_string(host.root().join(format!("state/jobs/{job}/state.json")))
        .expect("state.json: did prepare run?");
    serde_json::from_str(&text).unwrap()
}

/// The job's cgroup directories, from its state.json (v1: one per hierarchy; v2: one).
fn cgroup_dirs(host: &Host, job: u64) -> Vec<PathBuf> {
    let state = state_of(host, job);
    let placement = &state["cgroup"]["placement"];
    match placement["mode"].as_str() {
        Some("v2") => vec![PathBuf::from(placement["dir"].as_str().unwrap())],
        Some("v1") => placement["dirs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| PathBuf::from(d[1].as_str().unwrap()))
            .collect(),
        other => panic!("no job cgroup in state.json ({other:?}): {state:#}"),
    }
}

fn prepared(mut job: Job) -> Job {
    assert_eq!(job.config(), 0, "config:\n{}", job.log);
    assert_eq!(job.prepare(), 0, "prepare:\n{}", job.log);
    job
}

/// One `run` stage with `body` as its script; returns its exit code (output into the log).
fn run_body(job: &mut Job, body: &str) -> i32 {
    let script = job.write_script("build_script", body);
    let out = job
        .command(&["run", script.to_str().unwrap(), "build_script"])
        .output()
        .unwrap();
    job.log.push_str(&String::from_utf8_lossy(&out.stdout));
    job.log.push_str(&String::from_utf8_lossy(&out.stderr));
    out.status.code().unwrap_or(-1)
}

/// A `run` stage started without waiting for it.
struct Running {
    child: Child,
    stdout: ChildStdout,
    seen: String,
}

fn spawn_body(job: &mut Job, body: &str) -> Running {
    let script = job.write_script("build_script", body);
    let mut child = job
        .command(&["run", script.to_str().unwrap(), "build_script"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    Running {
        child,
        stdout,
        seen: String::new(),
    }
}

impl Running {
    fn wait_for(&mut self, marker: &str) {
        let mut buf = [0u8; 4096];
        while !self.seen.contains(marker) {
            let n = self.stdout.read(&mut buf).unwrap();
            if n == 0 {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("the stage ended before {marker:?}:\n{}{err}", self.seen);
            }
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    fn finish(mut self, job: &mut Job) -> i32 {
        let mut out = self.seen.into_bytes();
        self.stdout.read_to_end(&mut out).unwrap();
        let mut err = Vec::new();
        let _ = self.child.stderr.take().unwrap().read_to_end(&mut err);
        let status = self.child.wait().unwrap();
        job.log.push_str(&String::from_utf8_lossy(&out));
        job.log.push_str(&String::from_utf8_lossy(&err));
        status.code().unwrap_or(-1)
    }
}

/// A fork loop bounded to 5,000 children, each sleeping: prints how far it got, `FULL` when
/// it stops (at the first refused fork, or at 5,000), holds its children for `hold` seconds,
/// then fails.
fn fork_loop(hold: u32) -> String {
    format!(
        r#"perl -e '$| = 1; my $n = 0; for (1..5000) {{ my $p = fork; if (!defined $p) {{ print "fork refused after $n children: $!\n"; last }} if (!$p) {{ sleep 60; exit 0 }} $n++ }} print "FULL $n\n"; sleep {hold}; exit 1'"#
    )
}

fn uid_of(host: &Host, job: u64) -> u32 {
    state_of(host, job)["ids"]["uid"].as_u64().unwrap() as u32
}

#[test]
fn a_fork_loop_stops_at_pids_max_and_fails_naming_the_limit() {
    if !needs_root() {
        return;
    }
    let h = host("[limits]\npids = 64\n");
    let mut bomb = prepared(h.job(9101, ""));
    assert!(bomb.log.contains("pids 64"), "{}", bomb.log);
    let mut neighbour = prepared(h.job(9102, ""));
    let mut stage = spawn_body(&mut bomb, &fork_loop(5));
    stage.wait_for("FULL");
    assert!(
        stage.seen.contains("fork refused after"),
        "the loop was not stopped: {}",
        stage.seen
    );
    // While the job holds every pid it may have: another job runs, and a new job prepares.
    assert_eq!(
        run_body(&mut neighbour, "echo neighbour-ran; ls / >/dev/null"),
        0,
        "{}",
        neighbour.log
    );
    assert!(neighbour.log.contains("neighbour-ran"), "{}", neighbour.log);
    let mut next = prepared(h.job(9103, ""));
    assert_eq!(run_body(&mut next, "echo next-ran"), 0, "{}", next.log);
    let code = stage.finish(&mut bomb);
    assert_eq!(code, 1, "a build failure:\n{}", bomb.log);
    assert!(
        bomb.log
            .contains("the job reached its pids limit (64, [limits] pids)"),
        "{}",
        bomb.log
    );
    let uid = uid_of(&h, 9101);
    let dirs = cgroup_dirs(&h, 9101);
    assert_eq!(bomb.cleanup(), 0, "{}", bomb.log);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert_eq!(neighbour.cleanup(), 0);
    assert_eq!(next.cleanup(), 0);
}

#[test]
fn a_job_may_lower_its_limits_but_never_raise_them() {
    if !needs_root() {
        return;
    }
    let h = host("[limits]\npids = 64\nmemory = \"256m\"\n");
    let mut lower = prepared(h.job(9111, "").var("P3_LIMIT_PIDS", "16"));
    assert!(lower.log.contains("pids 16"), "{}", lower.log);
    assert_eq!(run_body(&mut lower, &fork_loop(0)), 1, "{}", lower.log);
    assert!(
        lower
            .log
            .contains("the job reached its pids limit (16, P3_LIMIT_PIDS)"),
        "{}",
        lower.log
    );
    assert_eq!(lower.cleanup(), 0);
    let mut higher = h.job(9112, "").var("P3_LIMIT_MEMORY", "1g");
    assert_eq!(higher.config(), 0);
    assert_eq!(higher.prepare(), 1, "a build failure:\n{}", higher.log);
    assert!(
        higher.log.contains(
            "P3_LIMIT_MEMORY = \"1g\" is above this runner's limit of 256 MiB ([limits] memory)"
        ),
        "{}",
        higher.log
    );
    assert_eq!(higher.cleanup(), 0);
}

#[test]
fn a_job_past_its_memory_limit_is_oom_killed_and_cleanup_leaves_nothing() {
    if !needs_root() {
        return;
    }
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let policy = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "");
    let h = host(&format!(
        "{policy}\n[devstages.client_dev.limits]\nmemory = \"64m\"\n"
    ));
    let claims = gitlab_claims(
        ISSUER,
        "p3-executor",
        9121,
        "data-ml/forecast",
        "feature/x",
        "branch",
        false,
    );
    let mut job = prepared(
        h.job(9121, "")
            .var("P3_ID_TOKEN", &minter.mint(claims))
            .var("P3_DEVSTAGE", "client_dev"),
    );
    assert!(job.log.contains("memory 64 MiB"), "{}", job.log);
    let uid = uid_of(&h, 9121);
    let dirs = cgroup_dirs(&h, 9121);
    // Leaves a background process behind too: cleanup must take it with the cgroup.
    let code = run_body(
        &mut job,
        "(sleep 300 &) ; echo allocating; perl -e '$x = \"a\" x (256 << 20); print \"survived\\n\"'",
    );
    assert_eq!(code, 1, "a build failure:\n{}", job.log);
    assert!(!job.log.lines().any(|l| l == "survived"), "{}", job.log);
    assert!(
        job.log.contains(
            "the job was killed by its memory limit (64 MiB, [devstages.client_dev.limits] memory)"
        ),
        "{}",
        job.log
    );
    // The next stage runs again under the same limit.
    assert_eq!(run_body(&mut job, "echo still-works"), 0, "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    // The cleanup record carries the limits in force, the peak memory and the CPU time.
    let audit = fs::read_to_string(h.root().join("audit/audit.jsonl")).unwrap();
    let cleanup: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"] == "cleanup" && r["job_id"] == 9121)
        .unwrap_or_else(|| panic!("no cleanup record:\n{audit}"));
    let extra = &cleanup["extra"];
    let limits = &extra["limits"];
    assert_eq!(limits["memory_bytes"], 64 << 20, "{cleanup:#}");
    assert_eq!(
        limits["memory_set_by"], "[devstages.client_dev.limits] memory",
        "{cleanup:#}"
    );
    assert!(limits["pids"].as_u64().is_some(), "{cleanup:#}");
    let peak = extra["peak_memory_bytes"].as_u64().expect("peak memory");
    assert!(peak > 32 << 20 && peak <= 64 << 20, "{cleanup:#}");
    assert!(extra["cpu_seconds"].as_f64().is_some(), "{cleanup:#}");
}

#[test]
fn two_configs_jobs_with_the_same_id_get_cgroups_of_their_own() {
    if !needs_root() {
        return;
    }
    // Runners of two GitLab instances, each with a config of its own (its own state root),
    // under the same parent cgroup: both send a job 551.
    let (a, b) = (host(""), host(""));
    let mut first = prepared(a.job(551, "true"));
    let mut second = prepared(b.job(551, "true"));
    let (dirs_a, dirs_b) = (cgroup_dirs(&a, 551), cgroup_dirs(&b, 551));
    for (da, db) in dirs_a.iter().zip(&dirs_b) {
        assert_ne!(da, db, "one cgroup for two jobs");
        assert_eq!(da.parent(), db.parent(), "the same parent");
    }
    // The first job runs; the second one's cleanup ends its own cgroup and leaves the first.
    let mut running = spawn_body(
        &mut first,
        "echo started-551
sleep 30
echo survived-551",
    );
    running.wait_for("started-551");
    assert_eq!(second.cleanup(), 0, "{}", second.log);
    assert!(dirs_b.iter().all(|d| !d.exists()), "{dirs_b:?}");
    assert!(dirs_a.iter().all(|d| d.exists()), "{dirs_a:?}");
    let uid = uid_of(&a, 551);
    assert!(
        !processes_of(uid).is_empty(),
        "the first job's stage was killed"
    );
    assert_eq!(first.cleanup(), 0, "{}", first.log);
    let _ = running.finish(&mut first);
    assert!(dirs_a.iter().all(|d| !d.exists()), "{dirs_a:?}");
}

#[test]
fn gc_ends_orphaned_job_cgroups() {
    if !needs_root() {
        return;
    }
    // A configured parent of its own, made on first use (v1).
    let parent = format!("/p3-test-gc-{}", std::process::id());
    let h = host(&format!("[limits]\ncgroup_parent = \"{parent}\"\n"));
    let mut job = prepared(h.job(9131, ""));
    let dirs = cgroup_dirs(&h, 9131);
    assert!(dirs.iter().all(|d| d.exists()));
    assert!(
        dirs.iter().all(|d| d.to_string_lossy().contains(&parent)),
        "{dirs:?}"
    );
    let marker = h.root().join("state/cgroups/9131");
    let placement = fs::read(&marker).expect("prepare lists the job cgroup for gc");
    assert_eq!(job.cleanup(), 0);
    assert!(!marker.exists(), "cleanup forgets a cgroup it removed");
    // As if cleanup could not remove it: the job is gone, its cgroup (with a process) is not.
    fs::write(&marker, placement).unwrap();
    let mut stray = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    for d in &dirs {
        fs::create_dir(d).unwrap();
        fs::write(d.join("cgroup.procs"), stray.id().to_string()).unwrap();
    }
    let out = h.exec(&["gc"]);
    assert!(out.status.success(), "{out:?}");
    let status = stray.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "gc kills what is left in an orphaned job cgroup"
    );
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(!marker.exists());
    // Tidy the test's own parents.
    for d in &dirs {
        let mut p = d.parent().map(Path::to_path_buf);
        while let Some(dir) = p {
            if !dir.to_string_lossy().contains(&parent) || fs::remove_dir(&dir).is_err() {
                break;
            }
            p = dir.parent().map(Path::to_path_buf);
        }
    }
}
