//! `executor-config/example-project/`: the pipeline teams copy must be valid GitLab CI, have
//! the shape the runner needs (ID token, P3_DEVSTAGE, runner tag on every P3 job; prod only
//! from protected release tags; manual removes), call p3-executor with arguments its CLI
//! accepts, and ship a p3.toml the model accepts.
//!
//! Two views of the YAML: our own parse with `extends` resolved (always), and gitlab-ci-local
//! (GitLab's JSON schema, its own `extends`/rules evaluation) — required: it is installed by
//! the project's .ci/run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use p3_steps::cli::StepsCli as Cli;
use p3_steps::p3toml::P3File;
use serde_norway::{Mapping, Value};

pub(crate) fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("executor-config/example-project")
}

const DEVSTAGES: [&str; 3] = ["client_dev", "client_uat", "client_prod"];

/// Deep-merge `over` into `base` the way GitLab's `extends` does: hashes merge key by key,
/// everything else (arrays, scalars) is replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn resolve(doc: &Mapping, name: &str, depth: usize) -> Value {
    assert!(depth < 10, "extends loop at {name}");
    let job = doc
        .get(name)
        .unwrap_or_else(|| panic!("extends names missing {name}"));
    let parents: Vec<String> = match job.get("extends") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(seq)) => seq
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect(),
        Some(other) => panic!("{name}: bad extends {other:?}"),
    };
    let mut out = Value::Mapping(Mapping::new());
    for p in parents {
        merge(&mut out, &resolve(doc, &p, depth + 1));
    }
    let mut own = job.clone();
    own.as_mapping_mut().unwrap().remove("extends");
    merge(&mut out, &own);
    out
}

const RESERVED: [&str; 9] = [
    "stages",
    "workflow",
    "variables",
    "default",
    "include",
    "image",
    "services",
    "cache",
    "before_script",
];

/// Visible jobs with `extends` resolved.
pub(crate) fn jobs(doc: &Mapping) -> Vec<(String, Value)> {
    doc.keys()
        .filter_map(|k| k.as_str())
        .filter(|k| !k.starts_with('.') && !RESERVED.contains(k))
        .map(|k| (k.to_string(), resolve(doc, k, 0)))
        .collect()
}

/// A `needs` entry: `name` or `{ job: name, artifacts: ... }` (gitlab-ci-local's expansion).
fn need_name(v: &Value) -> &str {
    v.as_str()
        .or_else(|| v.get("job").and_then(Value::as_str))
        .unwrap_or_else(|| panic!("bad needs entry {v:?}"))
}

/// The structural rules, checked on any fully resolved job list.
fn check_structure(jobs: &[(String, Value)]) {
    let names: BTreeSet<&str> = jobs.iter().map(|(n, _)| n.as_str()).collect();
    for d in ["dev", "uat", "prod"] {
        for kind in ["build", "deploy", "remove"] {
            assert!(
                names.contains(format!("{kind}:{d}").as_str()),
                "no {kind}:{d} in {names:?}"
            );
        }
    }
    assert!(
        names.contains("test") && names.contains("release"),
        "{names:?}"
    );
    for (name, job) in jobs {
        assert_eq!(
            job["tags"],
            serde_norway::from_str::<Value>("[p3-executor]").unwrap(),
            "{name}: must select the p3-executor runner"
        );
        if ["build:", "deploy:", "remove:"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            assert_eq!(
                job["id_tokens"]["P3_ID_TOKEN"]["aud"], "p3-executor",
                "{name}: id_tokens"
            );
            let devstage = job["variables"]["P3_DEVSTAGE"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: P3_DEVSTAGE"));
            let suffix = name.split(':').nth(1).unwrap();
            assert_eq!(devstage, format!("client_{suffix}"), "{name}");
            assert!(DEVSTAGES.contains(&devstage));
            let rules = job["rules"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{name}: rules"));
            for rule in rules {
                let cond = rule["if"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: rule without if"));
                if devstage == "client_prod" {
                    assert!(
                        cond.contains("$CI_COMMIT_TAG =~")
                            && cond.contains("$CI_COMMIT_REF_PROTECTED == \"true\"")
                            && !cond.contains("||"),
                        "{name}: prod must require a protected release tag: {cond}"
                    );
                }
                if name.starts_with("remove:") {
                    assert_eq!(rule["when"], "manual", "{name}: removes are manual");
                } else {
                    assert!(
                        rule.get("when").is_none() || rule["when"] == "on_success",
                        "{name}"
                    );
                }
            }
        }
        if let Some(needs) = job.get("needs").and_then(Value::as_sequence) {
            for n in needs {
                let n = need_name(n);
                assert!(names.contains(n), "{name} needs unknown job {n}");
            }
        }
        if let Some(deploy) = name.strip_prefix("deploy:") {
            let needs = job["needs"].as_sequence().unwrap();
            assert!(
                needs
                    .iter()
                    .any(|n| need_name(n) == format!("build:{deploy}")),
                "{name}: gets the image via build:{deploy}'s dotenv"
            );
        }
    }
    let build = &jobs.iter().find(|(n, _)| n == "build:uat").unwrap().1;
    assert_eq!(
        build["artifacts"]["reports"]["dotenv"],
        "image-${P3_DEVSTAGE}.env"
    );
    assert!(
        build["script"][0]
            .as_str()
            .unwrap()
            .contains("--dotenv \"image-${P3_DEVSTAGE}.env\"")
    );
}

/// Every `p3-executor ...` script line parses with the real CLI.
fn check_scripts(jobs: &[(String, Value)]) {
    let mut seen = BTreeSet::new();
    for (name, job) in jobs {
        for line in job["script"].as_sequence().unwrap() {
            let line = line.as_str().unwrap();
            if !line.starts_with("p3-executor ") {
                continue;
            }
            let argv: Vec<String> = line
                .split_whitespace()
                .map(|w| w.replace('"', ""))
                .collect();
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("{name}: {line:?} does not parse: {e}");
            }
            seen.insert(argv[1].clone());
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["image".into(), "p3".into(), "release".into()])
    );
}

#[test]
fn yaml_structure_with_extends_resolved() {
    let text = std::fs::read_to_string(project().join(".gitlab-ci.yml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let jobs = jobs(doc.as_mapping().unwrap());
    check_structure(&jobs);
    check_scripts(&jobs);
}

#[test]
fn p3_toml_parses_with_the_model() {
    let text = std::fs::read_to_string(project().join("p3.toml")).unwrap();
    let file = P3File::parse(&text).unwrap();
    let names = |d: &str| {
        file.jobs_for(d)
            .into_iter()
            .map(|j| j.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("client_dev"), ["scoring-nightly", "scoring-backfill"]);
    assert_eq!(names("client_prod"), ["scoring-nightly"]);
    let prod = &file.jobs_for("client_prod")[0];
    assert_eq!(prod.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(prod.resources.memory.as_deref(), Some("8Gi"));
    let dockerfile = std::fs::read_to_string(project().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY scoring/"),
        "Dockerfile copies the job code"
    );
}

/// A throwaway git checkout of the example (gitlab-ci-local reads refs from git and writes
/// its state next to the YAML).
fn checkout() -> tempfile::TempDir {
    assert!(
        which::which("gitlab-ci-local").is_ok(),
        "gitlab-ci-local is not installed: run `npm i -g gitlab-ci-local@4.73.0 && apt-get install -y rsync` (the project's .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .args(["-r", &format!("{}/.", project().display())])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.email=ci@example.com", "-c", "user.name=ci"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "example"]);
    dir
}

fn glcl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("gitlab-ci-local")
        .args(args)
        .args([
            "--ignore-predefined-vars",
            "CI_COMMIT_BRANCH,CI_COMMIT_TAG,CI_COMMIT_REF_PROTECTED,CI_DEFAULT_BRANCH",
        ])
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "gitlab-ci-local {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Job names gitlab-ci-local would run (`--list` table), with their `when`.
fn listed(dir: &Path, vars: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["--list"];
    args.extend(vars);
    let out = glcl(dir, &args);
    let mut lines = out.lines().skip_while(|l| !l.starts_with("name "));
    lines.next().expect("a --list table");
    lines
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{}/{}", cols.first()?, cols.get(2)?))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn gitlab_ci_local_validates_and_selects_jobs_per_ref() {
    let dir = checkout();
    let d = dir.path();
    // Expanded by gitlab-ci-local's own `extends`: the same structure must hold.
    let preview: Value = serde_norway::from_str(&glcl(d, &["--preview"])).unwrap();
    let expanded: Vec<(String, Value)> = preview
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .filter(|(k, _)| !k.starts_with('.') && !RESERVED.contains(&k.as_str()))
        .collect();
    check_structure(&expanded);

    let default_branch = ["--variable", "CI_DEFAULT_BRANCH=main"];
    let on_main = listed(d, &default_branch);
    assert_eq!(
        on_main,
        set(&[
            "test/on_success",
            "build:dev/on_success",
            "deploy:dev/on_success",
            "remove:dev/manual",
            "build:uat/on_success",
            "deploy:uat/on_success",
            "remove:uat/manual"
        ])
    );
    let branch = [
        &default_branch[..],
        &["--variable", "CI_COMMIT_BRANCH=feature/x"],
    ]
    .concat();
    assert_eq!(
        listed(d, &branch),
        set(&[
            "test/on_success",
            "build:dev/on_success",
            "deploy:dev/on_success",
            "remove:dev/manual"
        ])
    );
    let tag = |protected: &'static str| {
        [
            &default_branch[..],
            &[
                "--unset-variable",
                "CI_COMMIT_BRANCH",
                "--variable",
                "CI_COMMIT_TAG=v1.2.3",
                "--variable",
            ],
            &[protected],
        ]
        .concat()
    };
    assert_eq!(
        listed(d, &tag("CI_COMMIT_REF_PROTECTED=true")),
        set(&[
            "test/on_success",
            "build:prod/on_success",
            "deploy:prod/on_success",
            "remove:prod/manual",
            "release/on_success"
        ])
    );
    // An unprotected tag never gets prod (nor the release that needs it).
    let unprotected = listed(d, &tag("CI_COMMIT_REF_PROTECTED=false"));
    assert!(
        !unprotected
            .iter()
            .any(|j| j.contains("prod") || j.starts_with("release")),
        "{unprotected:?}"
    );
    // Every `needs` of an active job is itself active, in each kind of pipeline.
    let mut protected_tag = tag("CI_COMMIT_REF_PROTECTED=true");
    protected_tag.push("--validate-dependency-chain");
    glcl(d, &protected_tag);
    glcl(
        d,
        &[&default_branch[..], &["--validate-dependency-chain"]].concat(),
    );
}

/// The example pipeline and the example runner policy agree: every devstage the pipeline
/// requests on a ref is one `executor-config/config.toml` grants there (and prod is refused on
/// the refs where the pipeline does not offer it).
#[test]
fn example_pipeline_requests_only_what_the_example_policy_grants() {
    use p3_executor::config::{Config, RefType};
    use p3_executor::identity::{Identity, IdentitySource};
    use p3_executor::policy::decide;

    let cfg = Config::parse(include_str!("../../executor-config/config.toml")).unwrap();
    let id = |ref_name: &str, ref_type: RefType, protected: bool| Identity {
        project_path: "data-ml/forecast".into(),
        project_id: 12,
        namespace_path: "data-ml".into(),
        ref_name: ref_name.into(),
        ref_type,
        ref_protected: protected,
        ref_path: String::new(),
        environment: None,
        environment_protected: false,
        pipeline_source: "push".into(),
        pipeline_id: 1,
        user_login: "alice".into(),
        job_id: 1,
        jti: "j".into(),
        sha: "abc".into(),
        source: IdentitySource::IdToken,
    };
    // (ref, the devstages the example pipeline requests there — see the gitlab-ci-local test;
    // the test job asks for client_dev on every ref)
    let cases = [
        (
            id("feature/x", RefType::Branch, false),
            vec!["client_dev"],
            vec!["client_uat", "client_prod"],
        ),
        (
            id("main", RefType::Branch, true),
            vec!["client_dev", "client_uat"],
            vec!["client_prod"],
        ),
        (
            id("v1.2.3", RefType::Tag, true),
            vec!["client_dev", "client_prod"],
            vec![],
        ),
        (
            id("v1.2.3", RefType::Tag, false),
            vec!["client_dev"],
            vec!["client_prod"],
        ),
    ];
    // The test job runs in an image the example policy lets its devstage run.
    let text = std::fs::read_to_string(project().join(".gitlab-ci.yml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let (_, test) = jobs(doc.as_mapping().unwrap())
        .into_iter()
        .find(|(n, _)| n == "test")
        .unwrap();
    let image = test["image"]
        .as_str()
        .expect("the test job runs in an image");
    let devstage = test["variables"]["P3_DEVSTAGE"].as_str().unwrap();
    if let Err(refused) = p3_executor::images::policy::check(&cfg, Some(devstage), image) {
        panic!("the test job's {image} in {devstage}: {refused:?}");
    }
    for (identity, requested, refused) in cases {
        for devstage in requested {
            let d = decide(&identity, devstage, &cfg);
            assert!(d.is_grant(), "{devstage} on {}: {d}", identity.ref_name);
        }
        for devstage in refused {
            let d = decide(&identity, devstage, &cfg);
            assert!(
                !d.is_grant(),
                "{devstage} on {}: granted",
                identity.ref_name
            );
        }
    }
}
