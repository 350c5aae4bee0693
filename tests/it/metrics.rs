//! Metrics after a known mix of 50 concurrent jobs against the real KDC: the exposition parses
//! (strictly here, and with `promtool check metrics` when Debian's prometheus is installed) and
//! every counter is exact, however the jobs' runner calls interleaved.

use std::collections::BTreeMap;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::common::{JobResult, host, is_root};
use p3_testkit::kdc;

/// `name{labels} value` lines as a map; panics on a line that is not valid exposition text.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        // `name` or `name{label="value",...}`: a metric name, then only well-formed labels.
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        assert!(
            name.starts_with("p3_executor_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad metric name in {line:?}"
        );
        let labels = labels
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
            assert!(
                key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line:?}"
            );
            assert!(!value.contains('\n'), "{line:?}");
        }
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "duplicate {series}"
        );
    }
    out
}

#[test]
fn counters_are_exact_after_fifty_concurrent_jobs() {
    if !is_root() {
        eprintln!("skipped: grants need root");
        return;
    }
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let config = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "");
    let h = host(&config);
    let textfile = h.root().join("p3_executor.prom");
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        format!("{text}\n[metrics]\ntextfile = \"{}\"\n", textfile.display()),
    )
    .unwrap();
    // (how many, ref, protected, request): 20 grants, 15 denied by protected_ref,
    // 10 unknown devstages, 5 jobs that ask for nothing.
    let mix: [(u64, &str, bool, Option<&str>); 4] = [
        (20, "feature/x", false, Some("client_dev")),
        (15, "main", false, Some("client_uat")),
        (10, "main", true, Some("client_qa")),
        (5, "main", true, None),
    ];
    let mut jobs = Vec::new();
    let mut id = 7200;
    for (n, git_ref, protected, request) in mix {
        for _ in 0..n {
            id += 1;
            let mut job = h.job(id, "true");
            if let Some(request) = request {
                let claims = gitlab_claims(
                    ISSUER,
                    "p3-executor",
                    id,
                    "data-ml/forecast",
                    git_ref,
                    "branch",
                    protected,
                );
                job = job
                    .var("P3_ID_TOKEN", &minter.mint(claims))
                    .var("P3_DEVSTAGE", request);
            }
            jobs.push((
                request.is_some_and(|r| r == "client_dev") || request.is_none(),
                job,
            ));
        }
    }
    std::thread::scope(|s| {
        for (ok, job) in jobs.iter_mut() {
            s.spawn(move || {
                let result = job.run_all();
                if *ok {
                    assert_eq!(result, JobResult::Success, "{}", job.log);
                } else {
                    assert_eq!(result, JobResult::BuildFailure(Some(1)), "{}", job.log);
                }
            });
        }
    });
    let out = h.exec(&["metrics"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
    assert_eq!(
        get(r#"p3_executor_grants_total{devstage="client_dev",deploy_account="client_dev"}"#),
        20.0
    );
    assert_eq!(
        get(
            r#"p3_executor_denials_total{devstage="client_uat",rule="devstages.client_uat.protected_ref"}"#
        ),
        15.0
    );
    assert_eq!(
        get(r#"p3_executor_denials_total{devstage="(other)",rule="devstages"}"#),
        10.0
    );
    assert_eq!(
        get(r#"p3_executor_events_total{event="cleanup",outcome="succeeded"}"#),
        20.0
    );
    assert_eq!(get("p3_executor_audit_records_total"), 65.0, "{text}");
    assert_eq!(get("p3_executor_jobs_active"), 0.0);
    assert_eq!(get("p3_executor_uids_leased"), 0.0);
    assert_eq!(get("p3_executor_kinit_duration_seconds_count"), 20.0);
    // The textfile written at each cleanup holds the same counters (the last cleanup wrote it).
    let file = parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_eq!(
        file[r#"p3_executor_grants_total{devstage="client_dev",deploy_account="client_dev"}"#],
        20.0
    );
    if let Ok(promtool) = which::which("promtool") {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(&text);
        assert!(child.status.success(), "promtool: {child:?}");
        let _ = &mut child;
    }
}

/// Feed `input` to a command's stdin and collect its output.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }
}
