//! `p3-executor p3 deploy | remove | status` against a stand-in P3 client.
//!
//! The real P3 cannot run here. The stand-in is faithful to the template contract the steps
//! rely on: it receives one argv (never a shell line), records it NUL-separated (one record per
//! argument, so an argument holding spaces, `;` or a newline is still visibly one), records the
//! environment the client depends on and `klist` output for the ticket cache it was handed,
//! keeps deployed jobs as state per devstage (deploy is an upsert, remove/status of an unknown
//! job fail like a real client), and fails for the job named in `P3_STANDIN_FAIL`.

use crate::common::text;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_p3-executor");
const IMAGE: &str = "registry.example.com/data/scoring@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(crate) const STANDIN: &str = r#"#!/bin/bash
# Stand-in P3 client (see tests/p3.rs).
set -u
rec="$P3_STANDIN_DIR"
mkdir -p "$rec/calls"
n=$(find "$rec/calls" -mindepth 1 -maxdepth 1 | wc -l)
d="$rec/calls/$(printf %03d "$n")"
mkdir -p "$d"
printf '%s\0' "$@" > "$d/argv"
for v in KRB5CCNAME P3_DEVSTAGE P3_DEPLOY_STAGE; do printf '%s=%s\0' "$v" "${!v-}"; done > "$d/env"
if [ -n "${KRB5CCNAME-}" ]; then klist > "$d/klist" 2>&1; fi
action=$1; shift
as= devstage= job= image=
for a in "$@"; do
  case $a in
    --as=*) as=${a#--as=} ;;
    --devstage=*) devstage=${a#--devstage=} ;;
    --job=*) job=${a#--job=} ;;
    --image=*) image=${a#--image=} ;;
  esac
done
[ -n "$as" ] && [ -n "$devstage" ] && [ -n "$job" ] || { echo "p3: --as, --devstage and --job are required" >&2; exit 2; }
if [ "$job" = "${P3_STANDIN_FAIL-}" ]; then
  echo "p3: $action $job: quota exceeded in $devstage" >&2; exit 3
fi
state="$rec/state/$devstage/$job"
case $action in
  deploy) mkdir -p "${state%/*}"; printf '%s\n' "$image" > "$state"; echo "deployed $job" ;;
  remove) [ -e "$state" ] || { echo "p3: job $job not found in $devstage" >&2; exit 4; }; rm "$state"; echo "removed $job" ;;
  status) [ -e "$state" ] || { echo "p3: job $job not found in $devstage" >&2; exit 4; }; echo "$job running $(cat "$state")" ;;
  *) echo "p3: unknown action $action" >&2; exit 2 ;;
esac
"#;

const P3_TOML: &str = r#"
[defaults]
env = { LOG_LEVEL = "info" }

[[job]]
name = "ingest"
command = "python -m ingest --since '2 days'; echo done"
schedule = "0 1 * * *"
env = { SOURCE = "s3://raw/a b" }

[[job]]
name = "score"
command = "python -m score"
schedule = "0 2 * * *"
resources = { cpu = "2", memory = "4Gi" }
[job.overrides.client_prod]
schedule = "0 3 * * *"
resources = { memory = "8Gi" }

[[job]]
name = "backfill"
command = "python -m backfill"
devstages = ["client_dev"]
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

fn require(tool: &str, install: &str) {
    assert!(
        which::which(tool).is_ok(),
        "{tool} is not installed: run `{install}` (the project's .ci/run does)"
    );
}

impl Fixture {
    fn new() -> Self {
        require("klist", "apt-get install -y krb5-user");
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("p3");
        std::fs::write(&client, STANDIN).unwrap();
        std::fs::set_permissions(&client, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let c = client.display().to_string();
        let common = |action: &str| {
            serde_json::json!([
                c,
                action,
                "--as={deploy_stage}",
                "--devstage={devstage}",
                "--job={job}"
            ])
        };
        let mut deploy = common("deploy");
        deploy.as_array_mut().unwrap().extend(
            serde_json::json!([
                "--image={image}",
                "--command",
                "{command}",
                "--schedule={schedule}",
                "--cpu={cpu}",
                "--memory={memory}",
                "--env={env}"
            ])
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
        );
        let steps = serde_json::json!({
            "p3": { "deploy": deploy, "remove": common("remove"), "status": common("status"), "timeout_secs": 10 }
        });
        std::fs::write(dir.path().join("steps.json"), steps.to_string()).unwrap();
        std::fs::write(dir.path().join("p3.toml"), P3_TOML).unwrap();
        std::fs::create_dir_all(dir.path().join("rec")).unwrap();
        Self { dir }
    }

    fn rec(&self) -> PathBuf {
        self.dir.path().join("rec")
    }

    /// Run a step as a job of `devstage` holding `deploy_stage`'s credentials.
    fn p3(&self, devstage: &str, deploy_stage: &str, args: &[&str], fail: Option<&str>) -> Output {
        self.command(devstage, deploy_stage, args, fail)
            .output()
            .unwrap()
    }

    fn command(
        &self,
        devstage: &str,
        deploy_stage: &str,
        args: &[&str],
        fail: Option<&str>,
    ) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("P3_STEPS_CONFIG", self.dir.path().join("steps.json"))
            .env("P3_DEVSTAGE", devstage)
            .env("P3_DEPLOY_STAGE", deploy_stage)
            .env(
                "KRB5CCNAME",
                format!("FILE:{}/krb5cc_{deploy_stage}", self.dir.path().display()),
            )
            .env("P3_IMAGE", IMAGE)
            .env("P3_STANDIN_DIR", self.rec())
            .current_dir(self.dir.path())
            .arg("p3")
            .args(args);
        if let Some(job) = fail {
            cmd.env("P3_STANDIN_FAIL", job);
        }
        cmd
    }

    /// Every recorded call's arguments (after the program name), in order.
    fn calls(&self) -> Vec<Vec<String>> {
        let dir = self.rec().join("calls");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        names.sort();
        names.iter().map(|d| nul_records(&d.join("argv"))).collect()
    }

    fn deployed(&self, devstage: &str) -> BTreeSet<String> {
        match std::fs::read_dir(self.rec().join("state").join(devstage)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_dir_all(self.rec().join("calls"));
    }
}

fn nul_records(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut v: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    assert_eq!(v.pop().as_deref(), Some(""), "records end with NUL");
    v
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn expected_deploy(deploy_stage: &str, devstage: &str, job: &str, rest: &[&str]) -> Vec<String> {
    let mut v = s(&[
        "deploy",
        &format!("--as={deploy_stage}"),
        &format!("--devstage={devstage}"),
        &format!("--job={job}"),
        &format!("--image={IMAGE}"),
    ]);
    v.extend(s(rest));
    v
}

#[test]
fn deploy_argv_for_dev_uat_and_prod() {
    let f = Fixture::new();
    let ingest_rest = [
        "--command",
        "python -m ingest --since '2 days'; echo done",
        "--schedule=0 1 * * *",
        "--env=LOG_LEVEL=info",
        "--env=SOURCE=s3://raw/a b",
    ];
    for (devstage, deploy_stage, score_rest, jobs) in [
        (
            "client_dev",
            "client_dev",
            vec![
                "--command",
                "python -m score",
                "--schedule=0 2 * * *",
                "--cpu=2",
                "--memory=4Gi",
                "--env=LOG_LEVEL=info",
            ],
            vec!["ingest", "score", "backfill"],
        ),
        (
            "client_uat",
            "client_uat",
            vec![
                "--command",
                "python -m score",
                "--schedule=0 2 * * *",
                "--cpu=2",
                "--memory=4Gi",
                "--env=LOG_LEVEL=info",
            ],
            vec!["ingest", "score"],
        ),
        // Prod: authenticate as client_uat, run the jobs as client_prod, with prod overrides.
        (
            "client_prod",
            "client_uat",
            vec![
                "--command",
                "python -m score",
                "--schedule=0 3 * * *",
                "--cpu=2",
                "--memory=8Gi",
                "--env=LOG_LEVEL=info",
            ],
            vec!["ingest", "score"],
        ),
    ] {
        f.clear_calls();
        let out = f.p3(devstage, deploy_stage, &["deploy"], None);
        assert!(out.status.success(), "{devstage}: {}", text(&out));
        let calls = f.calls();
        let names: Vec<String> = calls
            .iter()
            .map(|c| {
                c.iter()
                    .find_map(|a| a.strip_prefix("--job="))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, jobs, "{devstage}");
        // One argument per value: the command with spaces, quotes and `;` is a single record.
        assert_eq!(
            calls[0],
            expected_deploy(deploy_stage, devstage, "ingest", &ingest_rest),
            "{devstage}"
        );
        assert_eq!(
            calls[1],
            expected_deploy(deploy_stage, devstage, "score", &score_rest),
            "{devstage}"
        );
        if devstage == "client_dev" {
            assert_eq!(
                calls[2],
                expected_deploy(
                    deploy_stage,
                    devstage,
                    "backfill",
                    &["--command", "python -m backfill", "--env=LOG_LEVEL=info"]
                )
            );
        }
        // The client got the job's credentials and the devstage split in its environment.
        let call0 = f.rec().join("calls/000");
        let env = nul_records(&call0.join("env"));
        let cache = format!("{}/krb5cc_{deploy_stage}", f.dir.path().display());
        assert_eq!(
            env,
            [
                format!("KRB5CCNAME=FILE:{cache}"),
                format!("P3_DEVSTAGE={devstage}"),
                format!("P3_DEPLOY_STAGE={deploy_stage}")
            ]
        );
        let klist = std::fs::read_to_string(call0.join("klist")).unwrap();
        assert!(
            klist.contains(&cache),
            "klist did not look at the job's cache: {klist}"
        );
    }
    assert_eq!(
        f.deployed("client_prod"),
        BTreeSet::from(["ingest".into(), "score".into()])
    );
}

#[test]
fn one_failure_among_three_others_still_deployed_and_reported() {
    let f = Fixture::new();
    let out = f.p3(
        "client_dev",
        "client_dev",
        &["deploy", "--report=report.json"],
        Some("score"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(f.calls().len(), 3, "the step stopped after the failure");
    assert_eq!(
        f.deployed("client_dev"),
        BTreeSet::from(["ingest".into(), "backfill".into()])
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = |job: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{job} ")))
            .unwrap_or_else(|| panic!("no row for {job}:\n{stdout}"))
            .to_string()
    };
    assert!(
        stdout.lines().next().unwrap().starts_with("JOB"),
        "{stdout}"
    );
    assert!(row("ingest").contains(" ok "), "{stdout}");
    assert!(row("backfill").contains(" ok "), "{stdout}");
    let failed = row("score");
    assert!(
        failed.contains("FAILED") && failed.contains("quota exceeded in client_dev"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.dir.path().join("report.json")).unwrap()).unwrap();
    // A failed job's report carries the client's whole error (issue 24).
    assert_eq!(
        report["jobs"][1],
        serde_json::json!({"job": "score", "ok": false,
            "error": "exit status: 3: p3: deploy score: quota exceeded in client_dev"})
    );
    assert_eq!(report["image"], IMAGE);
}

#[test]
fn deploy_is_idempotent_and_remove_touches_exactly_the_declared_set() {
    let f = Fixture::new();
    for _ in 0..2 {
        let out = f.p3("client_dev", "client_dev", &["deploy"], None);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        f.deployed("client_dev"),
        BTreeSet::from(["ingest".into(), "score".into(), "backfill".into()])
    );
    // A job someone else deployed in the same devstage must survive our remove.
    std::fs::write(f.rec().join("state/client_dev/other-team"), "x").unwrap();

    f.clear_calls();
    let out = f.p3("client_dev", "client_dev", &["remove", "--job=score"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.calls().len(), 1);
    assert_eq!(
        f.deployed("client_dev"),
        BTreeSet::from(["ingest".into(), "backfill".into(), "other-team".into()])
    );

    let out = f.p3("client_dev", "client_dev", &["status"], None);
    assert_eq!(out.status.code(), Some(1), "score is gone: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("ingest running {IMAGE}")));

    f.clear_calls();
    let out = f.p3(
        "client_dev",
        "client_dev",
        &["remove", "--job=ingest", "--job=backfill"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let removed: Vec<Vec<String>> = f.calls();
    assert_eq!(
        removed[0],
        s(&[
            "remove",
            "--as=client_dev",
            "--devstage=client_dev",
            "--job=ingest"
        ])
    );
    assert_eq!(
        f.deployed("client_dev"),
        BTreeSet::from(["other-team".into()])
    );

    // In uat, remove runs for exactly the two jobs declared there, never `backfill`.
    f.p3("client_uat", "client_uat", &["deploy"], None);
    f.clear_calls();
    let out = f.p3("client_uat", "client_uat", &["remove"], None);
    assert!(out.status.success(), "{}", text(&out));
    let jobs: Vec<String> = f.calls().iter().map(|c| c[3].clone()).collect();
    assert_eq!(jobs, ["--job=ingest", "--job=score"]);
    assert!(f.deployed("client_uat").is_empty());
}

#[test]
fn dry_run_prints_quoted_argv_and_runs_nothing() {
    let f = Fixture::new();
    let out = f.p3("client_prod", "client_uat", &["deploy", "--dry-run"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(f.calls().is_empty(), "dry run ran the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("would run for job ingest: ")
            && lines[0].contains(" --as=client_uat --devstage=client_prod --job=ingest ")
            && lines[0]
                .contains(r#" --command 'python -m ingest --since '\''2 days'\''; echo done' "#)
            && lines[0].ends_with(
                " '--schedule=0 1 * * *' --env=LOG_LEVEL=info '--env=SOURCE=s3://raw/a b'"
            ),
        "{stdout}"
    );
}

#[test]
fn bad_input_fails_before_any_call() {
    let f = Fixture::new();
    let out = f.p3(
        "client_prod",
        "client_uat",
        &["deploy", "--job=backfill"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no job \"backfill\" for devstage client_prod"),
        "{}",
        text(&out)
    );
    let out = f.p3("client_dev", "client_dev", &["deploy", "--image="], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deploy needs an image"),
        "{}",
        text(&out)
    );
    assert!(f.calls().is_empty());
}

/// Exit codes a runner might ask for, distinct from the steps' own 1 and 2, so a test sees
/// which kind of failure a step reported.
const BUILD_FAILURE: i32 = 17;
const SYSTEM_FAILURE: i32 = 18;

impl Fixture {
    /// Like [`Fixture::p3`], with the runner's failure exit codes set.
    fn p3_coded(&self, devstage: &str, args: &[&str]) -> Output {
        self.command(devstage, devstage, args, None)
            .env("BUILD_FAILURE_EXIT_CODE", BUILD_FAILURE.to_string())
            .env("SYSTEM_FAILURE_EXIT_CODE", SYSTEM_FAILURE.to_string())
            .output()
            .unwrap()
    }
}

#[test]
fn a_p3_toml_without_jobs_fails_deploy_remove_and_status() {
    let f = Fixture::new();
    for (name, content) in [
        ("empty.toml", ""),
        ("blank.toml", "\n  \n# all jobs moved elsewhere\n"),
        (
            "defaults-only.toml",
            "[defaults]\nenv = { LOG_LEVEL = \"info\" }\n",
        ),
    ] {
        std::fs::write(f.dir.path().join(name), content).unwrap();
        let file = format!("--file={name}");
        for action in ["deploy", "remove", "status"] {
            for extra in [None, Some("--allow-empty"), Some("--dry-run")] {
                if action == "status" && extra == Some("--allow-empty") {
                    continue;
                }
                let mut args = vec![action, file.as_str()];
                args.extend(extra);
                let out = f.p3_coded("client_dev", &args);
                assert_eq!(
                    out.status.code(),
                    Some(BUILD_FAILURE),
                    "{args:?}: {}",
                    text(&out)
                );
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains(&format!(
                        "{name} declares no [[job]], so p3 {action} would do nothing. Declare"
                    )),
                    "{args:?}: {}",
                    text(&out)
                );
            }
        }
    }
    assert!(f.calls().is_empty());
}

#[test]
fn a_devstage_without_jobs_fails_unless_allow_empty() {
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join("dev-only.toml"),
        "[[job]]\nname = \"backfill\"\ncommand = \"python -m backfill\"\ndevstages = [\"client_dev\"]\n\
         [[job]]\nname = \"ingest\"\ncommand = \"python -m ingest\"\ndevstages = [\"client_dev\", \"client_uat\"]\n",
    )
    .unwrap();
    for action in ["deploy", "remove"] {
        let out = f.p3_coded("client_prod", &[action, "--file=dev-only.toml"]);
        assert_eq!(out.status.code(), Some(BUILD_FAILURE), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "dev-only.toml declares no job for devstage client_prod (it declares jobs for: \
                 client_dev (backfill, ingest); client_uat (ingest)), so p3 {action} would do nothing."
            )) && stderr.contains("pass --allow-empty"),
            "{}",
            text(&out)
        );

        let report = format!("report-{action}.json");
        let out = f.p3_coded(
            "client_prod",
            &[
                action,
                "--file=dev-only.toml",
                "--allow-empty",
                "--report",
                &report,
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(
                "declares no job for devstage client_prod; nothing to do (--allow-empty)"
            ),
            "{}",
            text(&out)
        );
        // The release step still finds a report: it lists no jobs.
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.dir.path().join(&report)).unwrap()).unwrap();
        assert_eq!(report["devstage"], "client_prod");
        assert_eq!(report["jobs"], serde_json::json!([]));
    }
    // status of such a devstage only says so.
    let out = f.p3_coded("client_prod", &["status", "--file=dev-only.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // status does not take --allow-empty: it never fails for an empty devstage.
    let out = f.p3_coded(
        "client_prod",
        &["status", "--file=dev-only.toml", "--allow-empty"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(f.calls().is_empty());
    // Where the devstage has jobs, nothing changes.
    let out = f.p3_coded("client_uat", &["deploy", "--file=dev-only.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.deployed("client_uat"), BTreeSet::from(["ingest".into()]));
}

#[test]
fn a_type_error_in_a_job_names_the_key_and_its_line() {
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join("typo.toml"),
        "[[job]]\nname = \"ingest\"\n\ncommand = 5\n",
    )
    .unwrap();
    let out = f.p3_coded("client_dev", &["deploy", "--file=typo.toml"]);
    assert_eq!(out.status.code(), Some(BUILD_FAILURE), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "typo.toml: line 4, column 11: job \"ingest\": key command: invalid type: integer `5`, expected a string"
        ),
        "{}",
        text(&out)
    );
    assert!(f.calls().is_empty());
}
