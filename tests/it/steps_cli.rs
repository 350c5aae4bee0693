//! Issue 24 for `release`, `p3` and every step's help, on the host and as jobs through the
//! runner calls inside the sandbox: release errors name their cause (connection refused,
//! timeout, TLS, HTTP status with GitLab's message) and exit 1, its usage errors exit 2; a
//! private CA works through AWS_CA_BUNDLE; the p3 table stays one readable row per job and a
//! SIGTERM mid-deploy says what was applied, in flight and not started; help names
//! `p3-executor <step>`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::text;
use crate::isolation::needs_root;
use crate::steps_s3::{PrivateCa, Stall, TlsMoto, stalling_endpoint, steps_host};
use p3_testkit::driver::JobResult;

const BIN: &str = env!("CARGO_BIN_EXE_p3-executor");

/// A loopback "GitLab" answering every request with `status` and a JSON message.
fn answering(status: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v4", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 8192];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    url
}

fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v4", l.local_addr().unwrap());
    drop(l);
    url
}

/// Whether this machine refuses a connection to a closed loopback port (some sandboxes drop
/// the SYN instead, and then only the connect timeout can tell).
fn loopback_refuses() -> bool {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    if !refused {
        eprintln!("note: a closed loopback port is not refused here; checking the timeout instead");
    }
    refused
}

fn release(api: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", dir.path())
        .env("CI_API_V4_URL", api)
        .env("CI_PROJECT_ID", "42")
        .env("CI_JOB_TOKEN", "job-token-secret")
        .env("CI_COMMIT_TAG", "v1.2.3")
        .current_dir(dir.path())
        .arg("release")
        .args(["--image", "client_dev=reg/app@sha256:aa"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (out, start.elapsed())
}

#[test]
fn release_errors_name_the_cause_and_exit_1_and_usage_errors_exit_2() {
    let (out, _) = release(&closed_port_url(), &["--connect-timeout", "2"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    if loopback_refuses() {
        assert!(
            err.contains("connection refused by http://127.0.0.1:"),
            "{err}"
        );
    } else {
        assert!(err.contains("within the connect timeout 2s"), "{err}");
    }

    let hung = stalling_endpoint(Stall::Silent);
    let (out, took) = release(&format!("{hung}/api/v4"), &["--timeout", "2"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(err.contains("no answer from http://127.0.0.1:"), "{err}");
    assert!(err.contains("within the timeout 2s"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    let api = answering("401 Unauthorized", r#"{"message":"401 Unauthorized"}"#);
    let (out, _) = release(&api, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains(
            "the job token was rejected (GET /api/v4/job: HTTP 401 Unauthorized: 401 Unauthorized)"
        ),
        "{err}"
    );
    assert!(!err.contains("job-token-secret"), "{err}");

    let api = answering("503 Service Unavailable", r#"{"message":"maintenance"}"#);
    let (out, _) = release(&api, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 503 Service Unavailable: maintenance"),
        "{err}"
    );

    // Bad usage: 2, before any request.
    let (out, _) = release(&closed_port_url(), &["--image", "no-equals-sign"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let (out, _) = release(&closed_port_url(), &["--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn release_trusts_a_private_ca_through_aws_ca_bundle_and_names_it_otherwise() {
    let ca = PrivateCa::new();
    let moto = TlsMoto::start(&ca);
    let api = format!("{}/api/v4", moto.url);
    let (out, _) = release(&api, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains(&format!("TLS with {} failed", moto.url))
            && err.contains("not trusted by the system's CAs"),
        "{err}"
    );
    // With the CA the TLS handshake succeeds: what remains is the (non-GitLab) server's HTTP
    // answer to the token check.
    let ca_path = ca.ca().display().to_string();
    for env in [
        vec![("AWS_CA_BUNDLE", ca_path.as_str())],
        vec![("CI_SERVER_TLS_CA_FILE", ca_path.as_str())],
        vec![("SSL_CERT_FILE", ca_path.as_str())],
    ] {
        let (out, _) = release(&api, &[], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("TLS"), "{env:?}: {err}");
        assert!(err.contains("(GET /api/v4/job: HTTP "), "{env:?}: {err}");
    }
}

const STEPS: [&str; 12] = [
    "s3",
    "s3 cp",
    "s3 sync",
    "s3 ls",
    "s3 rm",
    "image",
    "image build",
    "p3",
    "p3 deploy",
    "p3 remove",
    "p3 status",
    "release",
];

#[test]
fn every_steps_help_starts_with_what_users_type() {
    for step in STEPS {
        let out = Command::new(BIN)
            .args(step.split(' '))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{step}: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.starts_with(&format!("p3-executor {step} — ")),
            "{step}: {help}"
        );
        assert!(
            help.contains(&format!("Usage: p3-executor {step}")),
            "{help}"
        );
        assert!(!help.contains("p3-executor-steps"), "{help}");
    }
    let ls = Command::new(BIN)
        .args(["s3", "ls", "--help"])
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    for transfer_only in ["--concurrency", "--part-size", "--max-memory"] {
        assert!(!ls.contains(transfer_only), "{ls}");
    }
    let usage = Command::new(BIN).args(["s3", "cp", "x"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&usage.stderr).contains("Usage: p3-executor s3 cp <SRC> <DST>"),
        "{}",
        text(&usage)
    );
}

#[test]
fn in_a_job_help_release_errors_and_exit_codes() {
    if !needs_root() {
        return;
    }
    let host = steps_host();
    let refused = closed_port_url();
    let rejected = answering("401 Unauthorized", r#"{"message":"401 Unauthorized"}"#);
    let ca = PrivateCa::new();
    let moto = TlsMoto::start(&ca);
    let pem = std::fs::read_to_string(ca.ca()).unwrap();
    let mut script = String::new();
    for step in STEPS {
        script.push_str(&format!(
            "echo \"HELP $(p3-executor {step} --help | head -1)\"\n"
        ));
    }
    script.push_str(&format!(
        "cat > ca.pem <<'PEM'\n{pem}PEM\n\
         r() {{ rc=0; p3-executor release --image client_dev=r@sha256:aa \"$@\" 2>err.txt || rc=$?; echo \"RELEASE rc=$rc $(tr '\\n' ' ' < err.txt)\"; }}\n\
         CI_API_V4_URL={refused} r --connect-timeout 2\n\
         CI_API_V4_URL={rejected} r\n\
         CI_API_V4_URL={tls}/api/v4 r\n\
         CI_API_V4_URL={tls}/api/v4 AWS_CA_BUNDLE=$PWD/ca.pem r\n\
         CI_API_V4_URL={refused} r --image broken\n\
         echo x > f.txt; (p3-executor s3 sync f.txt s3://some-bkt/p 2>&1 || true) | sed 's/^/WORDING /'\n\
         (p3-executor s3 sync missingdir s3://some-bkt/p 2>&1 || true) | sed 's/^/WORDING /'\n",
        tls = moto.url
    ));
    let mut job = host
        .job(24_201, &script)
        .var("CI_COMMIT_TAG", "v1.2.3")
        .var("CI_PROJECT_ID", "42")
        .var("CI_JOB_TOKEN", "job-token-secret");
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    for step in STEPS {
        assert!(
            job.log.contains(&format!("HELP p3-executor {step} — ")),
            "{step}: {}",
            job.log
        );
    }
    let releases: Vec<&str> = job
        .log
        .lines()
        .filter(|l| l.starts_with("RELEASE "))
        .collect();
    assert_eq!(releases.len(), 5, "{}", job.log);
    let cause = if loopback_refuses() {
        "connection refused by"
    } else {
        "within the connect timeout 2s"
    };
    assert!(
        releases[0].starts_with("RELEASE rc=1 ") && releases[0].contains(cause),
        "{}",
        releases[0]
    );
    assert!(
        releases[1].starts_with("RELEASE rc=1 ")
            && releases[1].contains("the job token was rejected"),
        "{}",
        releases[1]
    );
    assert!(
        releases[2].contains("TLS with ")
            && releases[2].contains("not trusted by the system's CAs"),
        "{}",
        releases[2]
    );
    assert!(
        !releases[3].contains("TLS") && releases[3].contains("HTTP "),
        "{}",
        releases[3]
    );
    assert!(releases[4].starts_with("RELEASE rc=2 "), "{}", releases[4]);
    assert!(!job.log.contains("job-token-secret"), "{}", job.log);
    assert!(
        job.log
            .contains("WORDING p3-executor s3: error: f.txt is a file, not a directory"),
        "{}",
        job.log
    );
    assert!(
        job.log
            .contains("WORDING p3-executor s3: error: missingdir: no such directory"),
        "{}",
        job.log
    );
    assert!(!job.log.contains("entity not found"), "{}", job.log);
}

/// A P3 client stand-in: `noisy` fails with 20 KB of coloured stderr, `slow` runs until it
/// is stopped (and says so), anything else is applied.
const CLIENT: &str = r#"#!/bin/bash
job=$1
case $job in
  noisy)
    for i in $(seq 1 300); do printf '\033[1;31mERROR\033[0m: quota exceeded in client_dev, line %d of a long report\n' "$i" >&2; done
    exit 3 ;;
  slow)
    trap 'echo "slow: stopped" >> calls.log; exit 143' TERM
    echo started > slow.started
    sleep 60 & wait ;;
  *) echo "$job" >> calls.log; echo "applied $job" ;;
esac
"#;

const STEPS_JSON: &str = r#"{"p3": {"deploy": ["./p3-client", "{job}"], "remove": ["./p3-client", "{job}"], "status": ["./p3-client", "{job}"], "timeout_secs": 120}}"#;

fn p3_toml(jobs: &[&str]) -> String {
    jobs.iter()
        .map(|j| format!("[[job]]\nname = \"{j}\"\ncommand = \"run {j}\"\n\n"))
        .collect()
}

fn p3_fixture(jobs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("p3-client");
    std::fs::write(&client, CLIENT).unwrap();
    std::fs::set_permissions(&client, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("steps.json"), STEPS_JSON).unwrap();
    std::fs::write(dir.path().join("p3.toml"), p3_toml(jobs)).unwrap();
    dir
}

fn deploy_cmd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .current_dir(dir)
        .args([
            "p3",
            "deploy",
            "--steps-config",
            "steps.json",
            "--devstage",
            "client_dev",
            "--deploy-stage",
            "client_dev",
            "--image",
            "reg/app@sha256:aa",
            "--report",
            "report.json",
        ]);
    cmd
}

/// The result table's rows (stdout up to the first line that is not a row).
fn table_rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("JOB "))
        .skip(1)
        .take_while(|l| !l.starts_with("---"))
        .collect()
}

#[test]
fn the_p3_table_stays_readable_with_20_kb_of_coloured_stderr() {
    let dir = p3_fixture(&["alpha", "noisy", "omega"]);
    let out = deploy_cmd(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 3, "{stdout}");
    let noisy = rows.iter().find(|r| r.starts_with("noisy ")).unwrap();
    assert!(
        noisy.ends_with(
            "exit status: 3: ERROR: quota exceeded in client_dev, line 1 of a long report …"
        ),
        "{noisy}"
    );
    assert!(noisy.chars().count() < 300, "{noisy}");
    assert!(!stdout.contains("\\x1b"), "colour codes shown literally");
    // The whole stderr follows the table and is in the report.
    assert!(
        stdout.contains("--- noisy deploy: the client's error output ---"),
        "{stdout}"
    );
    assert!(stdout.contains("ERROR: quota exceeded in client_dev, line 300 of a long report"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let error = report["jobs"][1]["error"].as_str().unwrap();
    assert!(error.contains("line 300 of"), "{error:.200}");
    assert!(!error.contains('\x1b'));
}

#[test]
fn a_sigterm_mid_deploy_says_what_was_applied_in_flight_and_not_started() {
    let dir = p3_fixture(&["first", "slow", "last"]);
    let child = deploy_cmd(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !dir.path().join("slow.started").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "slow never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p3 deploy stopped by a signal:"), "{err}");
    assert!(err.contains("  applied: first\n"), "{err}");
    assert!(err.contains("): slow\n"), "in flight: {err}");
    assert!(err.contains("  not started: last\n"), "{err}");
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    assert_eq!(
        calls, "first\nslow: stopped\n",
        "the client in flight got SIGTERM"
    );
}

#[test]
fn in_a_job_the_p3_table_is_readable_and_a_sigterm_prints_the_summary() {
    if !needs_root() {
        return;
    }
    let host = steps_host();
    let script = format!(
        "cat > p3-client <<'SH'\n{CLIENT}SH\nchmod +x p3-client\n\
         cat > steps.json <<'JSON'\n{STEPS_JSON}\nJSON\n\
         d() {{ p3-executor p3 deploy --steps-config steps.json --devstage client_dev --deploy-stage client_dev --image reg/app@sha256:aa \"$@\"; }}\n\
         printf '%s' '{noisy}' > p3.toml\n\
         rc=0; d > table.txt 2>&1 || rc=$?\n\
         echo \"TABLE rc=$rc\"; grep '^noisy ' table.txt | sed 's/^/ROW /'\n\
         echo \"ROWLEN $(grep '^noisy ' table.txt | wc -c)\"\n\
         printf '%s' '{slow}' > p3.toml\n\
         p3-executor p3 deploy --steps-config steps.json --devstage client_dev --deploy-stage client_dev --image reg/app@sha256:aa > stop.txt 2>&1 & pid=$!\n\
         while [ ! -e slow.started ]; do sleep 0.1; done\n\
         kill -TERM $pid; rc=0; wait $pid || rc=$?\n\
         echo \"STOPPED rc=$rc\"; sed 's/^/SUMMARY /' stop.txt\n",
        noisy = p3_toml(&["alpha", "noisy", "omega"]),
        slow = p3_toml(&["first", "slow", "last"]),
    );
    let mut job = host.job(24_202, &script);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(job.log.contains("TABLE rc=1"), "{}", job.log);
    assert!(
        job.log
            .contains("ERROR: quota exceeded in client_dev, line 1 of a long report …"),
        "{}",
        job.log
    );
    let len: usize = job
        .log
        .lines()
        .find_map(|l| l.strip_prefix("ROWLEN "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(len < 300, "{len}");
    assert!(job.log.contains("STOPPED rc=130"), "{}", job.log);
    assert!(job.log.contains("SUMMARY   applied: first"), "{}", job.log);
    assert!(job.log.contains("): slow"), "{}", job.log);
    assert!(
        job.log.contains("SUMMARY   not started: last"),
        "{}",
        job.log
    );
}

const WORDING_STEPS_JSON: &str = r#"{"p3": {"deploy": ["p3", "apply", "--name={job}", "--command={command}"], "remove": ["p3", "rm", "{job}"], "status": ["p3", "show", "{job}"]}}"#;

/// The wording items of issue 24: say what is wrong, once, without error-kind suffixes.
#[test]
fn errors_say_what_is_wrong_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "x").unwrap();
    let s3 = |args: &[&str]| {
        Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "y")
            .current_dir(dir.path())
            .args(["s3", "sync"])
            .args(args)
            .args(["s3://some-bkt/p", "--endpoint-url", "http://127.0.0.1:9"])
            .output()
            .unwrap()
    };
    let out = s3(&["f.txt"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(err.contains("f.txt is a file, not a directory"), "{err}");
    assert!(!err.contains("entity not found"), "{err}");
    let out = s3(&["missingdir"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missingdir: no such directory"), "{err}");
    assert!(
        !err.contains("entity not found") && !err.contains("does not exist"),
        "{err}"
    );

    std::fs::write(dir.path().join("steps.json"), WORDING_STEPS_JSON).unwrap();
    std::fs::write(
        dir.path().join("p3.toml"),
        "[[job]]\nname = \"two-lines\"\ncommand = \"echo one\\necho two\"\n",
    )
    .unwrap();
    let p3 = |config: &str| {
        Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .current_dir(dir.path())
            .args(["p3", "deploy", "--dry-run", "--steps-config", config])
            .args([
                "--devstage",
                "client_dev",
                "--deploy-stage",
                "client_dev",
                "--image",
                "i",
            ])
            .output()
            .unwrap()
    };
    let out = p3("steps.json");
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(r"$'--command=echo one\necho two'"),
        "a copy-paste must pass a newline: {shown}"
    );
    let out = p3("/dev/null");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/dev/null is not a steps settings file"),
        "{err}"
    );
    assert!(!err.contains("invalid executor config"), "{err}");
}
