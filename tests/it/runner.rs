//! End-to-end: p3-executor driven exactly as GitLab Runner drives a custom executor.

use crate::common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{JobResult, host as new_host, is_root, processes_of};
use p3_testkit::driver::Host;

fn state_of(host: &Host, job: u64) -> serde_json::Value {
    let text = std::fs::read_to_string(host.root().join(format!("state/jobs/{job}/state.json")))
        .expect("state.json");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn passing_job_clones_builds_and_cleans_up() {
    let host = new_host("");
    let mut job = host
        .job(
            101,
            "cat README\necho \"whoami: $(id -u)\"\necho \"pwd: $PWD\"",
        )
        .after("echo after-script-ran");
    let result = job.run_all();
    assert_eq!(result, JobResult::Success, "log:\n{}", job.log);
    assert!(job.log.contains("hello from the repository"), "{}", job.log);
    assert!(job.log.contains("after-script-ran"), "{}", job.log);
    // prepare's banner: version, host and who the job runs as.
    assert!(
        job.log
            .contains(&format!("p3-executor {} on ", env!("CARGO_PKG_VERSION")))
            && job.log.contains(": job 101 runs as "),
        "banner: {}",
        job.log
    );
    assert!(
        job.log.contains(&format!("pwd: {}", job.project_dir())),
        "{}",
        job.log
    );
    if is_root() {
        assert!(
            !job.log.contains("whoami: 0"),
            "job ran as root: {}",
            job.log
        );
    }
    assert!(!host.root().join("state/jobs/101").exists());
    assert!(!host.root().join("builds/101").exists());
    assert!(!host.root().join("state/creds/101").exists());
}

#[test]
fn config_prints_only_json_with_private_dirs() {
    let host = new_host("");
    let mut a = host.job(201, "true");
    let mut b = host.job(202, "true");
    let out = a.command(&["config"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pure JSON on stdout");
    assert_eq!(v["builds_dir_is_shared"], false);
    assert_eq!(v["driver"]["name"], "p3-executor");
    assert!(v["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    a.config();
    b.config();
    assert_ne!(a.builds_dir, b.builds_dir);
}

#[test]
fn failing_script_is_a_build_failure_with_the_real_exit_code() {
    let host = new_host("");
    let mut job = host
        .job(102, "echo before\nexit 42\necho never")
        .after("echo after-ran");
    let result = job.run_all();
    assert_eq!(result, JobResult::BuildFailure(Some(42)), "{}", job.log);
    assert!(job.log.contains("before"));
    assert!(!job.log.contains("never"));
    assert!(
        job.log.contains("after-ran"),
        "after_script runs after a failure"
    );
    assert!(!host.root().join("builds/102").exists());
}

#[test]
fn job_variables_cannot_redirect_paths_or_identity() {
    let host = new_host("");
    let victim = host.root().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "x").unwrap();
    let mut job = host
        .job(103, "true")
        .var("CI_BUILDS_DIR", victim.to_str().unwrap())
        .var("CI_PROJECT_DIR", victim.to_str().unwrap())
        .var("CI_JOB_ID", "999");
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(
        victim.join("keep").exists(),
        "cleanup trusted a job variable"
    );
    assert!(!job.log.contains("999"), "{}", job.log);
}

#[test]
fn executor_fault_is_a_system_failure() {
    let host = new_host("shell = \"/nonexistent/bash\"\n");
    let mut job = host.job(104, "true");
    assert_eq!(job.config(), 0);
    assert_eq!(job.prepare(), 0);
    let code = job.run_stage("prepare_script");
    assert_eq!(code, 2, "{}", job.log);
    assert!(job.log.contains("/nonexistent/bash"), "{}", job.log);
    assert_eq!(job.cleanup(), 0);
}

#[test]
fn run_without_prepare_is_a_system_failure() {
    let host = new_host("");
    let mut job = host.job(105, "true");
    job.config();
    let code = job.run_stage("prepare_script");
    assert_eq!(code, 2, "{}", job.log);
    assert!(job.log.contains("did prepare run"), "{}", job.log);
}

#[test]
fn invalid_or_missing_payload_is_a_clear_system_failure() {
    let host = new_host("");
    let mut job = host.job(106, "true");
    job.raw_payload = Some("{\"id\": \"glcbt-not-a-number\"}".into());
    assert_eq!(job.prepare(), 2);
    assert!(job.log.contains("not a valid job payload"), "{}", job.log);
    assert!(
        !job.log.contains("glcbt-not-a-number"),
        "value leaked: {}",
        job.log
    );

    let out = job
        .command(&["prepare"])
        .env_remove("JOB_RESPONSE_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JOB_RESPONSE_FILE"));
}

#[test]
fn invalid_config_names_the_key_and_line() {
    let host = new_host("grace_period = 3\n");
    let mut job = host.job(107, "true");
    assert_eq!(job.config(), 2);
    assert!(job.log.contains("grace_period"), "{}", job.log);
    assert!(job.log.contains("line"), "{}", job.log);
    // cleanup still ends with a message, and the job status does not depend on it.
    job.cleanup();
}

#[test]
fn a_config_with_several_mistakes_names_them_all_with_their_lines() {
    // The host's own keys set job_uid_range, so shared_job_uid contradicts it.
    let host = new_host(
        "shared_job_uid = true\n[sandbox]\ntmp_size = \"lots\"\n[accounts.a]\nprincipal = \"p\"\nkeytab = \"k\"\n",
    );
    let text = std::fs::read_to_string(&host.config).unwrap();
    let line_of = |start: &str| 1 + text.lines().position(|l| l.starts_with(start)).unwrap();
    let mut job = host.job(122, "true");
    assert_eq!(
        job.config(),
        2,
        "a bad config stays a system failure: {}",
        job.log
    );
    let file = host.config.display();
    for (key, line) in [
        ("job_uid_range", line_of("job_uid_range")),
        ("sandbox.tmp_size", line_of("tmp_size")),
        ("accounts.a.keytab", line_of("keytab")),
    ] {
        let want = format!("{file}:{line}: {key}: ");
        assert!(job.log.contains(&want), "{want}\nin\n{}", job.log);
    }
}

#[test]
fn cleanup_is_idempotent_and_works_without_prepare() {
    let host = new_host("");
    let mut job = host.job(108, "true");
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    job.config();
    assert_eq!(job.prepare(), 0);
    assert_eq!(job.cleanup(), 0);
    assert_eq!(job.cleanup(), 0);
    assert!(!host.root().join("state/jobs/108").exists());
}

#[test]
fn prepare_retry_starts_from_a_fresh_job_root() {
    let host = new_host("");
    let mut job = host.job(109, "true");
    job.config();
    assert_eq!(job.prepare(), 0);
    assert_eq!(
        job.prepare(),
        0,
        "a retried prepare must succeed: {}",
        job.log
    );
    assert_eq!(job.run_stage("prepare_script"), 0);
    job.cleanup();
}

#[test]
fn a_job_with_the_same_id_from_another_gitlab_is_refused_and_leaves_the_first_alone() {
    let host = new_host("");
    let mut first = host.job(131, "echo first-ran");
    first.config();
    assert_eq!(first.prepare(), 0, "{}", first.log);
    assert_eq!(first.run_stage("get_sources"), 0, "{}", first.log);
    let state = state_of(&host, 131);
    let marker = host.root().join("builds/131/home/marker");
    std::fs::write(&marker, "the first job's").unwrap();
    // Another GitLab instance's job 131: another job token, the same id.
    let mut other = host
        .job(131, "echo other-ran")
        .token("glcbt-another-instance-token");
    assert_eq!(other.config(), 0, "{}", other.log);
    assert_eq!(other.prepare(), 2, "a system failure: {}", other.log);
    assert!(
        other
            .log
            .contains("job id 131 is in use on this host by another job"),
        "{}",
        other.log
    );
    assert!(
        !other.log.contains("glcbt-"),
        "a token in the log: {}",
        other.log
    );
    assert_eq!(other.run_stage("get_sources"), 2, "{}", other.log);
    assert_eq!(other.cleanup(), 0, "{}", other.log);
    // The first job's state (its uid, its walls), its files and its run are untouched.
    assert_eq!(state_of(&host, 131), state);
    assert!(
        marker.exists(),
        "the other job's calls removed the first's root"
    );
    assert_eq!(first.run_stage("build_script"), 0, "{}", first.log);
    assert!(first.log.contains("first-ran") && !first.log.contains("other-ran"));
    assert_eq!(first.cleanup(), 0, "{}", first.log);
    assert!(!host.root().join("state/jobs/131").exists());
    assert!(!host.root().join("builds/131").exists());
    // Once the first job is gone, the id is free for the other.
    other.log.clear();
    assert_eq!(other.prepare(), 0, "{}", other.log);
    assert_eq!(other.cleanup(), 0, "{}", other.log);
}

/// Configs side by side (runners of two GitLab instances) whose job uids overlap: the second
/// config's job is refused before anything is taken, the first config's running job runs on,
/// and neither config starts a job until the two are apart.
#[test]
fn a_second_config_sharing_job_uids_is_refused_until_the_two_are_apart() {
    if !is_root() {
        eprintln!("skipped: needs root for private job uids");
        return;
    }
    let lo = p3_testkit::driver::uid_base();
    let first_host = crate::isolation::host_with_uids(lo, lo + 9);
    let mut first = first_host.job(141, "echo first-ran");
    first.config();
    assert_eq!(first.prepare(), 0, "{}", first.log);
    assert_eq!(first.run_stage("get_sources"), 0, "{}", first.log);
    // Another instance's config, copied with the same job uids.
    let second_host = crate::isolation::host_with_uids(lo, lo + 9);
    let mut other = second_host.job(142, "echo other-ran");
    other.config();
    assert_eq!(other.prepare(), 2, "a system failure: {}", other.log);
    let shared = format!("ids {lo}-{} (job_uid_range of both)", lo + 9);
    assert!(
        other.log.contains(&first_host.config.display().to_string()) && other.log.contains(&shared),
        "{}",
        other.log
    );
    // Nothing was taken for it: no workspace, no uid.
    let leases = second_host.root().join("state/uids");
    assert!(!second_host.root().join("state/jobs/142").exists());
    assert!(std::fs::read_dir(&leases).map_or(true, |d| d.count() == 0));
    assert_ne!(other.run_stage("build_script"), 0, "{}", other.log);
    assert!(!other.log.contains("other-ran"), "{}", other.log);
    assert_eq!(other.cleanup(), 0, "{}", other.log);
    // The first config's running job runs on.
    assert_eq!(first.run_stage("build_script"), 0, "{}", first.log);
    assert!(first.log.contains("first-ran"), "{}", first.log);
    // Its next job is refused too: the configs must be apart before either runs one.
    let mut next = first_host.job(143, "echo next-ran");
    next.config();
    assert_eq!(next.prepare(), 2, "{}", next.log);
    assert!(
        next.log.contains(&second_host.config.display().to_string()),
        "{}",
        next.log
    );
    // `check` names the clash and its fix.
    let check = crate::common::text(&second_host.exec(&["check"]));
    assert!(
        check.contains("error: another executor config in use on this host: ")
            && check.contains(&first_host.config.display().to_string())
            && check.contains("disjoint job_uid_range"),
        "{check}"
    );
    // The second config's operator gives it uids of its own: both run jobs again.
    let apart = p3_testkit::driver::uid_base();
    let text = std::fs::read_to_string(&second_host.config)
        .unwrap()
        .replace(
            &format!("job_uid_range = [{lo}, {}]", lo + 9),
            &format!("job_uid_range = [{apart}, {}]", apart + 9),
        );
    std::fs::write(&second_host.config, text).unwrap();
    next.log.clear();
    assert_eq!(next.run_all(), JobResult::Success, "{}", next.log);
    assert!(next.log.contains("next-ran"), "{}", next.log);
    other.log.clear();
    assert_eq!(other.run_all(), JobResult::Success, "{}", other.log);
    assert!(other.log.contains("other-ran"), "{}", other.log);
    assert_eq!(first.cleanup(), 0, "{}", first.log);
}

#[test]
fn cancelled_job_leaves_no_process_behind() {
    if !is_root() {
        eprintln!("skipped: needs root for a private job uid");
        return;
    }
    let host = new_host("");
    // A background process, one that leaves the process group, and a foreground sleep.
    let mut job = host.job(
        110,
        "sleep 1000 &\nsetsid sleep 1001 &\n(trap '' TERM; sleep 1002) &\necho started-marker\nsleep 1003",
    );
    job.config();
    assert_eq!(job.prepare(), 0, "{}", job.log);
    assert_eq!(job.run_stage("get_sources"), 0, "{}", job.log);
    let uid = state_of(&host, 110)["ids"]["uid"].as_u64().unwrap() as u32;
    let mut child = job.spawn_stage("build_script");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("started-marker") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "script ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(processes_of(uid).len() >= 4, "{:?}", processes_of(uid));
    let start = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let took = start.elapsed();
    // The runner reads a cancelled stage as a failure; our code must be a protocol code.
    assert_eq!(status.code(), Some(1), "{status:?}");
    // grace_period_secs = 3 in the test config: the TERM-ignoring process forces SIGKILL.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        processes_of(uid).is_empty(),
        "survivors: {:?}",
        processes_of(uid)
    );
    assert_eq!(job.cleanup(), 0);
    assert!(!host.root().join("builds/110").exists());
}

#[test]
fn background_process_does_not_outlive_its_stage() {
    if !is_root() {
        eprintln!("skipped: needs root for a private job uid");
        return;
    }
    let host = new_host("");
    let mut job = host.job(111, "sleep 1000 &\necho done");
    job.config();
    job.prepare();
    job.run_stage("get_sources");
    let uid = state_of(&host, 111)["ids"]["uid"].as_u64().unwrap() as u32;
    let start = Instant::now();
    assert_eq!(job.run_stage("build_script"), 0, "{}", job.log);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    job.cleanup();
}

#[test]
fn sigkilled_job_is_swept_by_gc() {
    if !is_root() {
        eprintln!("skipped: needs root for a private job uid");
        return;
    }
    let host = new_host("");
    let mut job = host.job(112, "sleep 1000 &\necho started-marker\nsleep 1001");
    job.config();
    job.prepare();
    job.run_stage("get_sources");
    let uid = state_of(&host, 112)["ids"]["uid"].as_u64().unwrap() as u32;
    let mut child = job.spawn_stage("build_script");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 256];
    let mut seen = String::new();
    while !seen.contains("started-marker") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // While run supervises the job, gc must leave it alone even with max age 0.
    let out = host.exec(&["gc", "--max-age-secs", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        host.root().join("state/jobs/112").exists(),
        "gc swept an active job"
    );
    // The runner dies hard: no cleanup will ever run for this job.
    child.kill().unwrap();
    child.wait().unwrap();
    let dry = host.exec(&["gc", "--max-age-secs", "0", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would remove job 112"));
    assert!(
        host.root().join("state/jobs/112").exists(),
        "dry run removed"
    );
    let out = host.exec(&["gc", "--max-age-secs", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed job 112"));
    assert!(!host.root().join("state/jobs/112").exists());
    assert!(!host.root().join("builds/112").exists());
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    // A young job is kept by the default max age.
    let mut young = host.job(113, "true");
    young.config();
    young.prepare();
    host.exec(&["gc"]);
    assert!(host.root().join("state/jobs/113").exists());
    young.cleanup();
}

#[test]
fn concurrent_jobs_share_nothing() {
    let host = new_host("");
    let builds = host.root().join("builds");
    let script = |other: u64| {
        format!(
            "echo mine > mine.txt\nsleep 0.5\nif cat {}/{other}/builds/group/project/mine.txt 2>/dev/null; then echo READ-OTHER; fi\nif ls {}/jobs 2>/dev/null; then echo LISTED-STATE; fi\ncat mine.txt",
            builds.display(),
            host.root().join("state").display()
        )
    };
    let mut a = host.job(114, &script(115));
    let mut b = host.job(115, &script(114));
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.run_all());
        let tb = s.spawn(|| b.run_all());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(ra, JobResult::Success, "{}", a.log);
    assert_eq!(rb, JobResult::Success, "{}", b.log);
    assert_ne!(a.builds_dir, b.builds_dir);
    if is_root() {
        for log in [&a.log, &b.log] {
            assert!(!log.contains("READ-OTHER"), "{log}");
            assert!(!log.contains("LISTED-STATE"), "{log}");
        }
    }
}

#[test]
fn job_user_cannot_read_config_state_or_other_jobs() {
    if !is_root() {
        eprintln!("skipped: needs root for a job user");
        return;
    }
    let host = new_host("");
    let mut other = host.job(116, "true");
    other.config();
    other.prepare();
    let probe = format!(
        "for f in {config} {state}/jobs/116/state.json; do if cat $f >/dev/null 2>&1; then echo LEAK:$f; else echo denied:$f; fi; done\nfor d in {state}/jobs {state} {builds}/116/builds; do if ls $d >/dev/null 2>&1; then echo LEAK:$d; else echo denied:$d; fi; done\nid -u",
        config = host.config.display(),
        state = host.root().join("state").display(),
        builds = host.root().join("builds").display(),
    );
    let mut job = host.job(117, &probe);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(!job.log.contains("LEAK:"), "{}", job.log);
    assert_eq!(job.log.matches("denied:").count(), 5, "{}", job.log);
    other.cleanup();
}

#[test]
fn check_reports_problems_with_fixes() {
    let host = new_host("");
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace("\"nobody\"", "\"no-such-user-p3\""),
    )
    .unwrap();
    let out = host.exec(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("state_root"), "{text}");
    assert!(text.contains("fix:"), "{text}");
    assert!(
        !text.contains("audit log /"),
        "no log yet, nothing to say: {text}"
    );
    // A tampered audit log is reported.
    let audit = host.root().join("audit/audit.jsonl");
    std::fs::create_dir_all(audit.parent().unwrap()).unwrap();
    std::fs::write(&audit, "{\"seq\": 1, \"prev\": \"x\", \"hash\": \"y\"}\n").unwrap();
    let text = String::from_utf8_lossy(&host.exec(&["check"]).stdout).to_string();
    assert!(
        text.contains("audit log /") && text.contains("line 1"),
        "{text}"
    );
    if is_root() {
        assert!(text.contains("no-such-user-p3"), "{text}");
    }
}

#[test]
fn devstage_request_on_a_runner_without_devstages_is_a_clear_build_failure() {
    let host = new_host("");
    let mut job = host.job(118, "true").var("P3_DEVSTAGE", "client_dev");
    assert_eq!(
        job.run_all(),
        JobResult::BuildFailure(Some(1)),
        "{}",
        job.log
    );
    assert!(job.log.contains("grants no devstages"), "{}", job.log);
    let audit = std::fs::read_to_string(host.root().join("audit/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"deny\"") && audit.contains("\"job_id\":118"),
        "{audit}"
    );
}

#[test]
fn a_workspace_moved_between_calls_is_a_system_failure() {
    let host = new_host("");
    let mut job = host.job(119, "true");
    job.config();
    assert_eq!(job.prepare(), 0, "{}", job.log);
    // As if state_root had been edited after config_exec ran.
    job.job_env
        .insert("P3_EXECUTOR_WORKSPACE".into(), "/elsewhere/jobs/119".into());
    assert_eq!(job.run_stage("prepare_script"), 2, "{}", job.log);
    assert!(job.log.contains("was state_root changed"), "{}", job.log);
    job.cleanup();
    assert!(!host.root().join("state/jobs/119").exists());
}

#[test]
fn check_warns_that_isolation_is_off_when_not_root() {
    if !is_root() {
        eprintln!("skipped: needs root to drop to another user");
        return;
    }
    let host = new_host("");
    // A copy of the config the unprivileged user can read.
    let config = host.root().join("user-config.toml");
    std::fs::copy(&host.config, &config).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::exe())
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("isolation is off"), "{text}");
}

#[test]
fn a_directory_given_as_script_is_named_as_such() {
    let host = new_host("");
    let mut job = host.job(120, "true");
    job.config();
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let dir = job.tmp.path().join("not-a-script");
    std::fs::create_dir_all(&dir).unwrap();
    let out = job
        .command(&["run", dir.to_str().unwrap(), "build_script"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a regular file"), "{err}");
    assert!(!err.contains("does not exist"), "{err}");
    job.cleanup();
}

#[test]
fn an_empty_config_file_is_a_system_failure_not_the_defaults() {
    let host = new_host("");
    std::fs::write(&host.config, "\n  \n").unwrap();
    let mut job = host.job(121, "true");
    assert_eq!(job.config(), 2, "{}", job.log);
    assert!(job.log.contains("the file is empty"), "{}", job.log);
}
