//! End-to-end: the attacks of issue 8, each played by a hostile job against the runner calls
//! (config → prepare → run stages → cleanup, through the runner stand-in), as root with
//! private job uids. Each must fail on the executor before the per-job sandbox and pass with it.
//!
//! Every host tree lives under TMPDIR (target/tmp, see .cargo/config.toml): the sandbox gives
//! each job a private `/tmp`, so nothing a job must reach can live there.

#[allow(unused_imports)]
use crate::common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{host as new_host, is_root};
use p3_testkit::driver::{Host, Job, uid_base};
use serde_json::json;

// Every host gets its own window of uids (`uid_base()`), and the tests that narrow the range
// take a fresh window too, so no two tests of the suite share a uid.

pub(crate) fn needs_root() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root for private job uids and the sandbox");
    }
    is_root()
}

/// The uid prepare leased to `job` (from its state.json; read while the job is prepared).
pub(crate) fn uid_of(host: &Host, job: u64) -> u32 {
    let text = fs::read_to_string(host.root().join(format!("state/jobs/{job}/state.json")))
        .expect("state.json: did prepare run?");
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["ids"]["uid"].as_u64().expect("ids.uid") as u32
}

/// A host whose `job_uid_range` is `[lo, hi]` instead of the stand-in's wide default.
pub(crate) fn host_with_uids(lo: u32, hi: u32) -> Host {
    host_with_uids_and(lo, hi, "")
}

/// As [`host_with_uids`], with `extra` in the config.
pub(crate) fn host_with_uids_and(lo: u32, hi: u32, extra: &str) -> Host {
    let host = new_host(extra);
    let text = fs::read_to_string(&host.config).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("job_uid_range") {
                format!("job_uid_range = [{lo}, {hi}]\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&host.config, text).unwrap();
    host
}

/// config and prepare, asserting both succeed; returns the job's uid when running as root.
pub(crate) fn prepared(host: &Host, id: u64) -> (Job, u32) {
    let mut job = host.job(id, "");
    assert_eq!(job.config(), 0, "config:\n{}", job.log);
    assert_eq!(job.prepare(), 0, "prepare:\n{}", job.log);
    let uid = uid_of(host, id);
    (job, uid)
}

fn record(job: &mut Job, stdout: &[u8], stderr: &[u8], status: ExitStatus) -> i32 {
    job.log.push_str(&String::from_utf8_lossy(stdout));
    job.log.push_str(&String::from_utf8_lossy(stderr));
    let code = status.code().unwrap_or(-1);
    job.calls.push(("build_script".into(), code));
    code
}

/// One `run` stage whose script is `body` (wrapped as the runner wraps a build_script). It
/// starts in the job's builds dir; the runner's wrapper sets errexit and pipefail.
pub(crate) fn run_body(job: &mut Job, body: &str) -> i32 {
    let script = job.write_script("build_script", body);
    let out = job
        .command(&["run", script.to_str().unwrap(), "build_script"])
        .output()
        .unwrap();
    record(job, &out.stdout, &out.stderr, out.status)
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
    /// Read the stage's output until `marker` appears.
    fn wait_for(&mut self, marker: &str) {
        let mut buf = [0u8; 1024];
        while !self.seen.contains(marker) {
            let n = self.stdout.read(&mut buf).unwrap();
            if n == 0 {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!(
                    "the stage ended before printing {marker:?}:\n{}{err}",
                    self.seen
                );
            }
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// Wait for the stage to end; its output goes to the job log. Returns its exit code.
    fn finish(mut self, job: &mut Job) -> i32 {
        let mut out = self.seen.into_bytes();
        self.stdout.read_to_end(&mut out).unwrap();
        let mut err = Vec::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        record(job, &out, &err, status)
    }

    /// SIGKILL the `run` process, as a runner that dies hard would. What the stage printed so
    /// far goes to the job log (the rest is not awaited: survivors could hold the pipes open).
    fn kill(mut self, job: &mut Job) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        job.log.push_str(&self.seen);
    }
}

/// Live processes holding `uid` in any field, as (pid, description).
fn processes_holding(uid: u32) -> Vec<(i32, String)> {
    p3_testkit::procs::holding(uid..=uid)
        .into_iter()
        .map(|p| (p.pid, p.to_string()))
        .collect()
}

fn describe(procs: &[(i32, String)]) -> Vec<&str> {
    procs.iter().map(|(_, d)| d.as_str()).collect()
}

/// Poll `f` every 50 ms until it returns `Some`, or give up after `limit` with its last `None`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SysV shared-memory segments in `table` (the text of `/proc/sysvipc/shm`) that `uid` owns
/// or created.
fn shm_segments_of(table: &str, uid: u32) -> Vec<String> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let owner_columns: Vec<usize> = ["uid", "cuid"]
        .iter()
        .filter_map(|name| columns.iter().position(|c| c == name))
        .collect();
    let uid = uid.to_string();
    lines
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            owner_columns
                .iter()
                .any(|&i| fields.get(i) == Some(&uid.as_str()))
        })
        .map(String::from)
        .collect()
}

fn host_shm_segments_of(uid: u32) -> Vec<String> {
    shm_segments_of(
        &fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default(),
        uid,
    )
}

/// What a job could leave on the host where the sandbox is missing (files in shared
/// directories, SysV segments, processes of its uid): removed when the test ends, pass or fail,
/// so a run against an executor without the sandbox does not litter the host.
struct Leftovers {
    files: Vec<PathBuf>,
    uid: u32,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        for segment in host_shm_segments_of(self.uid) {
            if let Some(id) = segment.split_whitespace().nth(1) {
                let _ = Command::new("ipcrm").args(["-m", id]).status();
            }
        }
        for (pid, _) in processes_holding(self.uid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Make `path` a setuid file of `owner` (chown clears the setuid bit, so chmod comes after).
fn make_setuid(path: &Path, owner: u32) {
    std::os::unix::fs::chown(path, Some(owner), Some(owner))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o4755)).unwrap();
}

/// Attack 1: a setuid file planted by a job, owned by another uid (as it would be when another
/// job's uid planted it), and a copy of `cat` with `cap_dac_read_search`, both run by the job.
/// The job's builds dir, its TMPDIR and `/tmp` are each tried.
#[test]
fn planted_setuid_and_setcap_binaries_are_inert() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let id = 801;
    let (mut job, uid) = prepared(&host, id);
    let other = uid + 1;
    let in_tmp = format!("/tmp/p3e-suid-{}-{id}", std::process::id());
    let _leftovers = Leftovers {
        files: vec![PathBuf::from(&in_tmp)],
        uid,
    };
    let mut stage = spawn_body(
        &mut job,
        &format!(
            r#"cp /usr/bin/id ./id-suid
cp /usr/bin/id "$TMPDIR/id-suid"
cp /usr/bin/id {in_tmp}
cp /bin/bash "$TMPDIR/bash-suid"
cp /bin/cat ./cat-cap
echo planted-marker
for i in $(seq 300); do [ -e "$TMPDIR/go" ] && break; sleep 0.1; done
for f in ./id-suid "$TMPDIR/id-suid" {in_tmp}; do echo "euid via $f: $($f -u)"; done
echo "euid via bash -p: $("$TMPDIR/bash-suid" -p -c 'id -u')"
if ./cat-cap /etc/shadow >/dev/null 2>&1; then echo "LEAK: read /etc/shadow"; else echo "shadow denied"; fi
"#
        ),
    );
    stage.wait_for("planted-marker");
    // As root on the host, between the job's copy and its use: hand the copies to another uid
    // with the setuid bit, and give the cat copy a file capability. The job's /tmp is reached
    // through its shell's root (the host's /tmp without a sandbox).
    let job_root = host.root().join(format!("builds/{id}"));
    let (shell, _) = processes_holding(uid)
        .into_iter()
        .filter(|(_, d)| d.contains("/dev/fd/3"))
        .min_by_key(|(pid, _)| *pid)
        .expect("the job's shell");
    for planted in [
        job_root.join("builds/id-suid"),
        job_root.join("tmp/id-suid"),
        job_root.join("tmp/bash-suid"),
        PathBuf::from(format!("/proc/{shell}/root{in_tmp}")),
    ] {
        make_setuid(&planted, other);
    }
    let setcap = Command::new("setcap")
        .arg("cap_dac_read_search+ep")
        .arg(job_root.join("builds/cat-cap"))
        .status();
    match setcap {
        Ok(s) => assert!(s.success(), "setcap failed: {s:?}"),
        Err(e) => eprintln!(
            "setcap unavailable ({e}; Debian libcap2-bin): only the setuid part is tested"
        ),
    }
    fs::write(job_root.join("tmp/go"), "").unwrap();
    assert_eq!(stage.finish(&mut job), 0, "{}", job.log);

    let euids: Vec<&str> = job
        .log
        .lines()
        .filter(|l| l.starts_with("euid via "))
        .collect();
    assert_eq!(euids.len(), 4, "{}", job.log);
    for line in euids {
        assert!(
            line.ends_with(&format!(": {uid}")),
            "a file setuid to uid {other} changed the euid of job uid {uid}: {line}\nlog:\n{}",
            job.log
        );
    }
    assert!(
        job.log.contains("shadow denied") && !job.log.contains("LEAK"),
        "a file capability worked inside the job:\n{}",
        job.log
    );
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert!(
        !Path::new(&in_tmp).exists(),
        "the job's /tmp file is in the host's /tmp"
    );
}

/// Attack 6: a job process that left the process group (and tried to change uid through a
/// planted setuid file) survives a SIGKILLed `run`. With the sandbox it dies with `run`; and
/// cleanup kills by any uid field in any case.
#[test]
fn job_processes_die_with_a_sigkilled_run_and_none_survive_cleanup() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let id = 811;
    let (mut job, uid) = prepared(&host, id);
    let _leftovers = Leftovers {
        files: Vec::new(),
        uid,
    };
    assert_eq!(
        run_body(&mut job, "cp /bin/sleep ./sleep-suid"),
        0,
        "{}",
        job.log
    );
    // Another uid's setuid file: without no_new_privs, running it changes the euid.
    make_setuid(
        &host.root().join(format!("builds/{id}/builds/sleep-suid")),
        uid + 1,
    );
    let mut stage = spawn_body(
        &mut job,
        "setsid ./sleep-suid 1000 &\nsetsid sleep 1001 &\n(trap '' TERM HUP; exec sleep 1002) &\necho started-marker\nsleep 1003\n",
    );
    stage.wait_for("started-marker");
    let started = poll(Duration::from_secs(5), || {
        let procs = processes_holding(uid);
        ["1000", "1001", "1002", "1003"]
            .iter()
            .all(|n| procs.iter().any(|(_, d)| d.ends_with(&format!(" {n}"))))
            .then_some(procs)
    });
    assert!(
        started.is_some(),
        "the job's processes did not start: {:?}",
        describe(&processes_holding(uid))
    );

    stage.kill(&mut job);
    let after_kill = poll(Duration::from_secs(3), || {
        processes_holding(uid).is_empty().then_some(())
    })
    .map_or_else(|| processes_holding(uid), |()| Vec::new());
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    let after_cleanup = processes_holding(uid);
    assert!(
        after_kill.is_empty(),
        "processes the job started outlived its SIGKILLed `run`: {:?}\nlog:\n{}",
        describe(&after_kill),
        job.log
    );
    assert!(
        after_cleanup.is_empty(),
        "processes of job uid {uid} (in any uid field) survived cleanup: {:?}\nlog:\n{}",
        describe(&after_cleanup),
        job.log
    );
}

/// Attack 7: a job `stat`s another job's credentials dir and ticket cache path, and lists the
/// state root and the builds root, while that other job is prepared.
#[test]
fn job_cannot_reach_another_jobs_credentials_or_list_the_roots() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let (mut a, a_uid) = prepared(&host, 821);
    // Where a granted job's ticket cache lives (no KDC here: a stand-in file, as kinit leaves it).
    let state = host.root().join("state");
    let builds = host.root().join("builds");
    let creds = state.join("creds/821");
    let ccache = creds.join("krb5cc");
    fs::write(&ccache, "a ticket cache").unwrap();
    std::os::unix::fs::chown(&ccache, Some(a_uid), None).unwrap();
    fs::set_permissions(&ccache, fs::Permissions::from_mode(0o600)).unwrap();

    let (mut b, _) = prepared(&host, 822);
    let probe = format!(
        r#"for p in {creds} {ccache} {builds}/821 {builds}/821/builds; do
  if stat "$p" >/dev/null 2>&1; then echo "LEAK: stat $p"; else echo "denied: stat $p"; fi
done
for d in {state} {state}/creds {state}/jobs {builds}; do
  ls -A "$d" 2>/dev/null | sed "s|^|entry of $d: |" || true
done
echo probe-done
"#,
        creds = creds.display(),
        ccache = ccache.display(),
        builds = builds.display(),
        state = state.display(),
    );
    assert_eq!(run_body(&mut b, &probe), 0, "{}", b.log);
    assert!(b.log.contains("probe-done"), "{}", b.log);
    assert!(
        !b.log.contains("LEAK:"),
        "job 822 reached job 821's credentials or tree:\n{}",
        b.log
    );
    assert_eq!(b.log.matches("denied: stat").count(), 4, "{}", b.log);
    let listed: Vec<&str> = b
        .log
        .lines()
        .filter(|l| l.starts_with("entry of ") && l.ends_with(": 821"))
        .collect();
    assert!(
        listed.is_empty(),
        "job 822 sees job 821 in a listing: {listed:?}\nlog:\n{}",
        b.log
    );
    assert_eq!(b.cleanup(), 0, "{}", b.log);
    assert_eq!(a.cleanup(), 0, "{}", a.log);
}

/// Attacks 1, 4 and 5: files in /tmp, /var/tmp and /dev/shm and a SysV shared-memory segment
/// left by a job are invisible to the host while it runs, gone after its cleanup, and never
/// seen by the next job leasing the same uid.
#[test]
fn tmp_files_and_shared_memory_never_outlive_the_job_or_reach_the_uids_next_job() {
    if !needs_root() {
        return;
    }
    let uid = uid_base() + 990;
    let host = host_with_uids(uid, uid);
    let name = format!("p3e-left-{}-831", std::process::id());
    let host_files: Vec<PathBuf> = ["/tmp", "/var/tmp", "/dev/shm"]
        .iter()
        .map(|d| Path::new(d).join(&name))
        .collect();
    let _leftovers = Leftovers {
        files: host_files.clone(),
        uid,
    };
    let traces = || {
        let mut found: Vec<String> = host_files
            .iter()
            .filter(|f| f.exists())
            .map(|f| f.display().to_string())
            .collect();
        found.extend(
            host_shm_segments_of(uid)
                .into_iter()
                .map(|s| format!("SysV segment: {s}")),
        );
        found
    };

    let (mut a, a_uid) = prepared(&host, 831);
    assert_eq!(a_uid, uid);
    let plant = format!(
        "for d in /tmp /var/tmp /dev/shm; do echo secret-of-job-831 > $d/{name}; done\nipcmk -M 4096\nls -A /tmp /var/tmp /dev/shm\n"
    );
    assert_eq!(run_body(&mut a, &plant), 0, "{}", a.log);
    assert!(a.log.contains("Shared memory id"), "{}", a.log);
    let meanwhile = traces();
    assert!(
        meanwhile.is_empty(),
        "the host sees what job 831 left while it is still prepared: {meanwhile:?}\nlog:\n{}",
        a.log
    );
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    let after = traces();
    assert!(
        after.is_empty(),
        "job 831's leftovers survived its cleanup: {after:?}\nlog:\n{}",
        a.log
    );

    let (mut b, b_uid) = prepared(&host, 832);
    assert_eq!(b_uid, uid, "the range has one uid: job 831's");
    let probe = format!(
        r#"for d in /tmp /var/tmp /dev/shm; do ls -A $d | sed "s|^|entry of $d: |"; done
sed 's/^/sysvipc: /' /proc/sysvipc/shm
ipcs -m
cat /tmp/{name} /var/tmp/{name} /dev/shm/{name} 2>&1 || true
echo probe-done
"#
    );
    assert_eq!(run_body(&mut b, &probe), 0, "{}", b.log);
    assert!(b.log.contains("probe-done"), "{}", b.log);
    assert!(
        !b.log.contains("secret-of-job-831") && !b.log.contains(&format!(": {name}")),
        "job 832 (same uid) found job 831's files:\n{}",
        b.log
    );
    let table: Vec<&str> = b
        .log
        .lines()
        .filter_map(|l| l.strip_prefix("sysvipc: "))
        .collect();
    assert!(
        table.first().is_some_and(|h| h.contains("shmid")),
        "{}",
        b.log
    );
    let segments = shm_segments_of(&table.join("\n"), uid);
    assert!(
        segments.is_empty(),
        "job 832 (same uid) sees job 831's SysV segment: {segments:?}\nlog:\n{}",
        b.log
    );
    assert_eq!(b.cleanup(), 0, "{}", b.log);
}

/// Attack (issue: "a job can no longer see or signal anyone else's processes"): job 842 looks
/// for a concurrent job's `sleep 3117` with `ps` and `/proc`, and probes its host pids with
/// `kill -0` (EPERM would still tell it they exist; only ESRCH hides them).
#[test]
fn job_cannot_see_or_signal_a_concurrent_jobs_processes() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let (mut a, a_uid) = prepared(&host, 841);
    let _leftovers = Leftovers {
        files: Vec::new(),
        uid: a_uid,
    };
    let mut stage = spawn_body(
        &mut a,
        "sleep 3117 &\necho a-started\nfor i in $(seq 300); do [ -e \"$TMPDIR/done\" ] && break; sleep 0.1; done\n",
    );
    stage.wait_for("a-started");
    let a_pids: Vec<i32> = poll(Duration::from_secs(5), || {
        let procs = processes_holding(a_uid);
        procs
            .iter()
            .any(|(_, d)| d.ends_with("sleep 3117"))
            .then(|| procs.iter().map(|(p, _)| *p).collect())
    })
    .expect("job 841's sleep 3117 did not start");

    let (mut b, _) = prepared(&host, 842);
    let pids: Vec<String> = a_pids.iter().map(|p| p.to_string()).collect();
    let probe = format!(
        r#"echo "pids visible: $(ls /proc | grep -c '^[0-9]')"
ps -e -o pid=,args= | sed 's/^/ps: /'
for p in {}; do echo "kill -0 $p: $(kill -0 $p 2>&1 && echo delivered)"; done
echo probe-done
"#,
        pids.join(" ")
    );
    let code = run_body(&mut b, &probe);
    fs::write(host.root().join("builds/841/tmp/done"), "").unwrap();
    assert_eq!(stage.finish(&mut a), 0, "{}", a.log);
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    assert_eq!(b.cleanup(), 0, "{}", b.log);

    assert_eq!(code, 0, "{}", b.log);
    assert!(b.log.contains("probe-done"), "{}", b.log);
    let seen: Vec<&str> = b
        .log
        .lines()
        .filter(|l| l.starts_with("ps: ") && l.contains("sleep 3117"))
        .collect();
    assert!(
        seen.is_empty(),
        "job 842 lists job 841's process: {seen:?}\nlog:\n{}",
        b.log
    );
    let probes: Vec<&str> = b
        .log
        .lines()
        .filter(|l| l.starts_with("kill -0 "))
        .collect();
    assert_eq!(probes.len(), a_pids.len(), "{}", b.log);
    for line in probes {
        assert!(
            line.contains("No such process"),
            "job 842 can tell job 841's process exists: {line}\nlog:\n{}",
            b.log
        );
    }
    let visible: usize = b
        .log
        .lines()
        .find_map(|l| l.strip_prefix("pids visible: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("pids visible");
    assert!(
        visible <= 10,
        "job 842 sees {visible} processes, not just its own:\n{}",
        b.log
    );
}

/// Attack 2: a job turns its `builds` (the directory `run` starts the shell in), `cache` and
/// `home` into symlinks to a directory the test made readable to it. The next stage must not
/// start there, and cleanup must not delete through any of them.
#[test]
fn symlinked_builds_cache_and_home_are_never_entered_or_deleted_through() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let victim = host.root().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(victim.join("victim-keep-file"), "keep").unwrap();
    fs::set_permissions(
        victim.join("victim-keep-file"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (mut job, _) = prepared(&host, 851);
    let relink = format!(
        "cd ..\nmv builds builds.moved\nrmdir cache home\nfor d in builds cache home; do ln -s {} $d; done\nls -l\n",
        victim.display()
    );
    assert_eq!(run_body(&mut job, &relink), 0, "{}", job.log);

    let code = run_body(
        &mut job,
        "echo \"pwd: $(pwd -P)\"\nls -A | sed 's/^/entry: /'\n",
    );
    assert!(
        !job.log.contains(&format!("pwd: {}", victim.display()))
            && !job.log.contains("entry: victim-keep-file"),
        "the stage started in the builds dir symlink's target:\n{}",
        job.log
    );
    assert_eq!(
        code, 1,
        "a job that symlinked its own builds dir fails as a build failure:\n{}",
        job.log
    );
    assert!(
        job.log.contains("builds") && job.log.contains("symlink"),
        "the error should say the builds dir is a symlink:\n{}",
        job.log
    );
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert!(
        victim.join("victim-keep-file").exists(),
        "cleanup deleted through a symlink:\n{}",
        job.log
    );
    assert!(!host.root().join("builds/851").exists(), "{}", job.log);
}

/// Attack 2, against another job: a job points its `builds` at a concurrent job's builds tree
/// (which root can enter and the job cannot).
#[test]
fn builds_dir_linked_to_another_jobs_tree_is_not_entered() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let (mut other, _) = prepared(&host, 853);
    assert_eq!(
        run_body(&mut other, "echo other-jobs-secret > secret.txt"),
        0,
        "{}",
        other.log
    );
    let other_builds = host.root().join("builds/853/builds");
    let (mut job, _) = prepared(&host, 854);
    let relink = format!(
        "cd ..\nmv builds builds.moved\nln -s {} builds\n",
        other_builds.display()
    );
    assert_eq!(run_body(&mut job, &relink), 0, "{}", job.log);

    let code = run_body(
        &mut job,
        "echo \"pwd: $(pwd -P)\"\ncat secret.txt 2>&1 || true\n",
    );
    assert!(
        !job.log
            .contains(&format!("pwd: {}", other_builds.display()))
            && !job.log.contains("other-jobs-secret"),
        "job 854's stage started in job 853's builds dir:\n{}",
        job.log
    );
    assert_eq!(code, 1, "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert!(
        other_builds.join("secret.txt").exists(),
        "job 854's cleanup deleted job 853's files"
    );
    assert_eq!(other.cleanup(), 0, "{}", other.log);
}

/// Attack 3: a job dates its own directories into 2099, then its runner dies. By every
/// root-owned clock (workspace, state, active lock, credentials dir, uid lease) it has been
/// idle for decades, so gc must sweep it whatever the job's own mtimes say.
#[test]
fn future_timestamps_on_the_jobs_own_dirs_do_not_stop_gc() {
    let host = new_host("");
    let id = 861;
    let mut job = host.job(id, "");
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let touch = "cd ..\ntouch -d 2099-01-01 . builds cache home tmp\nls -ld --time-style=+%Y . builds cache home tmp\n";
    assert_eq!(run_body(&mut job, touch), 0, "{}", job.log);
    assert!(job.log.contains(" 2099 "), "{}", job.log);
    // The runner dies here: no cleanup. Everything under the state root is root's.
    age_state(&host);

    let out = host.exec(&["gc", "--max-age-secs", "3600"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("removed job {id}")),
        "gc kept a job idle since 2000 by root's clocks because its own dirs say 2099:\n{text}\njob log:\n{}",
        job.log
    );
    assert!(!host.root().join(format!("state/jobs/{id}")).exists());
    assert!(!host.root().join(format!("builds/{id}")).exists());
}

/// Date everything under the host's state root (root's clocks of its jobs) back to 2000.
fn age_state(host: &Host) {
    let aged = Command::new("find")
        .arg(host.root().join("state"))
        .args(["-exec", "touch", "-h", "-d", "2000-01-01", "{}", "+"])
        .status()
        .unwrap();
    assert!(aged.success());
}

/// A line this test adds to a host file (`/etc/subuid`), taken out again when dropped (also on
/// a panic); the file is removed if the test made it.
struct HostLine {
    file: &'static str,
    line: String,
    made: bool,
}

impl HostLine {
    fn add(file: &'static str, line: String) -> HostLine {
        let made = !Path::new(file).exists();
        let mut text = fs::read_to_string(file).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{line}\n"));
        fs::write(file, text).unwrap();
        HostLine { file, line, made }
    }
}

impl Drop for HostLine {
    fn drop(&mut self) {
        let text = fs::read_to_string(self.file).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| *l != self.line)
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.is_empty() && self.made {
            let _ = fs::remove_file(self.file);
        } else {
            let _ = fs::write(self.file, kept);
        }
    }
}

/// A uid that /etc/subuid gives a host user is never a job's: that user's rootless container
/// could otherwise run as the job's uid and read its files and tickets. The rest of the range
/// is leased as usual, and `check` says how much of it is left.
#[test]
fn uids_in_a_host_users_subordinate_range_are_never_leased() {
    if !is_root() {
        eprintln!("skipped: needs root for private job uids");
        return;
    }
    let lo = uid_base();
    let host = host_with_uids(lo, lo + 2);
    let line = format!("p3-test-{}:{lo}:2", std::process::id());
    let _held = HostLine::add("/etc/subuid", line.clone());
    let (mut job, uid) = prepared(&host, 1711);
    assert_eq!(uid, lo + 2, "{}", job.log);
    let mut next = host.job(1712, "true");
    next.config();
    assert_eq!(next.prepare(), 2, "{}", next.log);
    assert!(
        next.log.contains(&format!(
            "or held by the host (/etc/subuid: {line}: never leased"
        )),
        "{}",
        next.log
    );
    let check = common::text(&host.exec(&["check"]));
    assert!(
        check.contains(&format!(
            "warning: job_uid_range [{lo}, {}] holds ids the host gives others: /etc/subuid: {line}; "
        , lo + 2)) && check.contains("(1 ids left)"),
        "{check}"
    );
    assert_eq!(next.cleanup(), 0, "{}", next.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

/// The last free uid held by a job whose runner died: the next prepare finds no free uid,
/// sweeps the stale job (as gc would) and leases the uid it freed; while that job is not yet
/// stale, the next prepare is refused, naming the range.
#[test]
fn prepare_sweeps_a_stale_job_holding_the_last_uid_and_leases_it() {
    if !needs_root() {
        return;
    }
    let uid = uid_base();
    let host = host_with_uids(uid, uid);
    let (_dead, dead_uid) = prepared(&host, 863);
    assert_eq!(dead_uid, uid);
    // Its runner dies here: no cleanup. Not stale yet, so the next job gets no uid.
    let mut early = host.job(864, "");
    assert_eq!(early.config(), 0, "{}", early.log);
    assert_eq!(early.prepare(), 2, "{}", early.log);
    assert!(
        early.log.contains("every uid in job_uid_range"),
        "{}",
        early.log
    );
    assert_eq!(early.cleanup(), 0, "{}", early.log);
    // A day later by every root-owned clock.
    age_state(&host);
    let (mut next, next_uid) = prepared(&host, 865);
    assert_eq!(next_uid, uid, "{}", next.log);
    assert!(
        !host.root().join("state/jobs/863").exists(),
        "the stale job was not swept"
    );
    assert_eq!(run_body(&mut next, "id -u"), 0, "{}", next.log);
    assert!(next.log.contains(&uid.to_string()), "{}", next.log);
    assert_eq!(next.cleanup(), 0, "{}", next.log);
}

/// With `gc_max_age_secs = 0` every job reads as idle at once: prepare's sweep then tears
/// down a job whose runner died, and never the job it is preparing.
#[test]
fn prepare_never_sweeps_its_own_job_however_short_the_gc_age() {
    if !needs_root() {
        return;
    }
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo + 1, "gc_max_age_secs = 0\n");
    let (_dead, _) = prepared(&host, 866);
    // Its runner dies here: no cleanup.
    let (mut next, _) = prepared(&host, 867);
    assert!(
        !host.root().join("state/jobs/866").exists(),
        "the dead job was not swept"
    );
    assert!(host.root().join("state/jobs/867").exists(), "{}", next.log);
    assert_eq!(run_body(&mut next, "id -u"), 0, "{}", next.log);
    assert_eq!(next.cleanup(), 0, "{}", next.log);
}

/// Attack 9: a 20 MiB JOB_RESPONSE_FILE (a valid payload with one huge variable) is refused
/// as a system failure naming the file and the limit, before anything is created.
#[test]
fn oversized_job_payload_is_refused_as_a_system_failure() {
    let host = new_host("");
    let id = 862;
    let mut job = host.job(id, "true");
    let mut variables: Vec<serde_json::Value> = job
        .variables
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v, "public": true, "masked": false}))
        .collect();
    variables.push(
        json!({"key": "PADDING", "value": "x".repeat(20 << 20), "public": true, "masked": false}),
    );
    let payload = json!({
        "id": id,
        "token": format!("glcbt-secret-token-{id}"),
        "job_info": {"name": "job", "stage": "test", "project_id": 7, "project_name": "project"},
        "git_info": {"repo_url": format!("file://{}", job.repo.display()), "ref": "main",
                     "sha": job.sha, "ref_type": "branch"},
        "variables": variables,
        "runner_info": {"timeout": 3600}
    })
    .to_string();
    assert!(payload.len() > 20 << 20);
    job.raw_payload = Some(payload);
    let path = job.payload_path().display().to_string();
    for call in ["config", "prepare"] {
        let code = if call == "config" {
            job.config()
        } else {
            job.prepare()
        };
        assert_eq!(code, 2, "{call} must be a system failure:\n{}", job.log);
    }
    assert!(
        job.log.contains(&path) && job.log.contains("16777216-byte limit"),
        "the error should name {path} and the 16777216-byte limit:\n{}",
        job.log
    );
    assert!(!job.log.contains("panicked"), "{}", job.log);
    assert!(
        !host.root().join(format!("builds/{id}")).exists(),
        "prepare created the job's tree"
    );
}

/// A uid released by one job is leased last: the next job gets the uid that has been free
/// longest. Job ids of one parity, so a lease that starts at `job id mod range` would hand out
/// the same uid every time.
#[test]
fn released_uids_are_leased_again_least_recently_released_last() {
    if !needs_root() {
        return;
    }
    let lo = uid_base() + 980;
    let host = host_with_uids(lo, lo + 1);
    let run = |id: u64| -> u32 {
        let (mut job, uid) = prepared(&host, id);
        assert_eq!(run_body(&mut job, "id -u"), 0, "{}", job.log);
        assert_eq!(job.cleanup(), 0, "{}", job.log);
        uid
    };
    let a = run(870);
    let b = run(872);
    let never_used = if a == lo { lo + 1 } else { lo };
    assert_eq!(
        b, never_used,
        "job 872 got uid {b}, released a moment ago by job 870, while uid {never_used} was never used"
    );
    let c = run(874);
    assert_eq!(
        c, a,
        "job 874 should get uid {a} (released before job 872 released {b})"
    );
}

#[test]
fn the_sandbox_hides_its_init_and_check_reports_the_hosts_support() {
    if !needs_root() {
        return;
    }
    let host = new_host("");
    let mut job = host.job(
        881,
        "if cat /proc/1/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q .; then echo LEAK-INIT; fi\n\
         echo \"procs: $(ls /proc | grep -c '^[0-9]')\"\n\
         echo \"tmp-mode: $(stat -c %a /tmp)\"",
    );
    assert_eq!(job.run_all(), common::JobResult::Success, "{}", job.log);
    assert!(!job.log.contains("LEAK-INIT"), "{}", job.log);
    assert!(job.log.contains("tmp-mode: 1777"), "{}", job.log);
    assert!(
        job.log.contains("runs as user nobody, private uid"),
        "{}",
        job.log
    );
    assert!(job.log.contains("sandboxed"), "banner: {}", job.log);
    let out = host.exec(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok: job sandbox: mount, PID and IPC namespaces are available"),
        "{text}"
    );
    // Turning it off is explicit, and check says what is lost.
    let cfg = fs::read_to_string(&host.config).unwrap();
    fs::write(&host.config, format!("{cfg}\n[sandbox]\nenabled = false\n")).unwrap();
    let text = String::from_utf8_lossy(&host.exec(&["check"]).stdout).to_string();
    assert!(
        text.contains("warning: [sandbox] enabled = false"),
        "{text}"
    );
}
