//! `p3-executor policy explain` gives the answer `prepare` gives: a table over the demo's (and
//! the example config's) policy where every rule fails alone, the policy grants, and a badly
//! signed token is refused. Each case runs both and compares.

use serde_json::Value;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::common::{host, is_root};
use p3_testkit::driver::Host;
use p3_testkit::kdc;

struct Fx {
    _kdc: kdc::Kdc,
    minter: TokenMinter,
    _jwks: JwksServer,
    host: Host,
}

fn fx() -> Fx {
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let config = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "");
    Fx {
        host: host(&config),
        _kdc: kdc,
        minter,
        _jwks: jwks,
    }
}

/// Claims of a job of `data-ml/forecast`, changed by `edit`.
fn claims(id: u64, git_ref: &str, ref_type: &str, protected: bool, edit: &str) -> Value {
    let mut c = gitlab_claims(
        ISSUER,
        "p3-executor",
        id,
        "data-ml/forecast",
        git_ref,
        ref_type,
        protected,
    );
    match edit {
        "" => {}
        "project" => c["project_path"] = "other/forecast".into(),
        "source" => c["pipeline_source"] = "merge_request_event".into(),
        other => panic!("unknown edit {other}"),
    }
    c
}

/// `policy explain --json` for one request: (exit code, decision JSON).
fn explain(fx: &Fx, claims: &Value, request: &str) -> (i32, Value) {
    let file = fx.host.root().join(format!("claims-{request}.json"));
    std::fs::write(&file, claims.to_string()).unwrap();
    let out = fx.host.exec(&[
        "policy",
        "explain",
        "--claims",
        file.to_str().unwrap(),
        "--request",
        request,
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("explain --json ({e}): {out:?}"));
    (out.status.code().unwrap(), v[0]["decision"].clone())
}

/// `prepare` with a token carrying `claims`: (exit code, log).
fn prepare(fx: &Fx, claims: &Value, request: &str) -> (i32, String) {
    let id: u64 = claims["job_id"].as_str().unwrap().parse().unwrap();
    let mut job = fx
        .host
        .job(id, "true")
        .var("P3_ID_TOKEN", &fx.minter.mint(claims.clone()))
        .var("P3_DEVSTAGE", request);
    job.config();
    let code = job.prepare();
    job.cleanup();
    (code, job.log)
}

#[test]
fn explain_answers_as_prepare_does_for_every_rule() {
    if !is_root() {
        eprintln!("skipped: prepare with a grant needs root");
        return;
    }
    let fx = fx();
    // (case, ref, ref type, protected, edit, request, the rule that denies or None)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        bool,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: &[Case] = &[
        (
            "dev from a branch",
            "feature/x",
            "branch",
            false,
            "",
            "client_dev",
            None,
        ),
        (
            "uat from protected main",
            "main",
            "branch",
            true,
            "",
            "client_uat",
            None,
        ),
        (
            "prod from a release tag",
            "v1.2.3",
            "tag",
            true,
            "",
            "client_prod",
            None,
        ),
        (
            "project outside the glob",
            "main",
            "branch",
            true,
            "project",
            "client_uat",
            Some("devstages.client_uat.projects"),
        ),
        (
            "uat from a tag",
            "v1.2.3",
            "tag",
            true,
            "",
            "client_uat",
            Some("devstages.client_uat.ref_types"),
        ),
        (
            "uat from unprotected main",
            "main",
            "branch",
            false,
            "",
            "client_uat",
            Some("devstages.client_uat.protected_ref"),
        ),
        (
            "uat from another protected branch",
            "release",
            "branch",
            true,
            "",
            "client_uat",
            Some("devstages.client_uat.branch_pattern"),
        ),
        (
            "prod from a non-release tag",
            "v1.2",
            "tag",
            true,
            "",
            "client_prod",
            Some("devstages.client_prod.tag_pattern"),
        ),
        (
            "uat from a merge request pipeline",
            "main",
            "branch",
            true,
            "source",
            "client_uat",
            Some("devstages.client_uat.pipeline_sources"),
        ),
        (
            "an unknown devstage",
            "main",
            "branch",
            true,
            "",
            "client_qa",
            Some("devstages"),
        ),
    ];
    for (i, (case, git_ref, ref_type, protected, edit, request, denied_by)) in
        cases.iter().enumerate()
    {
        let c = claims(8100 + i as u64, git_ref, ref_type, *protected, edit);
        let (code, decision) = explain(&fx, &c, request);
        let (prepared, log) = prepare(&fx, &c, request);
        match denied_by {
            None => {
                assert_eq!(
                    (code, decision["decision"].as_str()),
                    (0, Some("grant")),
                    "{case}"
                );
                assert_eq!(prepared, 0, "{case}: prepare disagrees:\n{log}");
            }
            Some(rule) => {
                assert_eq!(
                    (code, decision["decision"].as_str()),
                    (1, Some("deny")),
                    "{case}"
                );
                assert_eq!(decision["rule"], *rule, "{case}: {decision}");
                assert_eq!(prepared, 1, "{case}: prepare disagrees:\n{log}");
                assert!(
                    log.contains(rule),
                    "{case}: prepare denied otherwise:\n{log}"
                );
            }
        }
    }
}

#[test]
fn explain_shows_every_rule_and_verifies_tokens_like_prepare() {
    let fx = fx();
    let c = claims(8201, "main", "branch", false, "");
    let file = fx.host.root().join("claims.json");
    std::fs::write(&file, c.to_string()).unwrap();
    let out = fx.host.exec(&[
        "policy",
        "explain",
        "--claims",
        file.to_str().unwrap(),
        "--request",
        "client_uat",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for rule in [
        "projects",
        "ref_types",
        "protected_ref",
        "branch_pattern",
        "pipeline_sources",
    ] {
        assert!(
            text.contains(&format!("devstages.client_uat.{rule}")),
            "{rule}: {text}"
        );
    }
    assert!(text.contains('✘') && text.contains('✔'), "{text}");
    assert!(
        text.contains("decision: DENIED — devstages.client_uat.protected_ref"),
        "{text}"
    );

    // --all is a report: every devstage, exit 0.
    let all = fx.host.exec(&[
        "policy",
        "explain",
        "--claims",
        file.to_str().unwrap(),
        "--all",
    ]);
    let text = String::from_utf8_lossy(&all.stdout);
    assert_eq!(all.status.code(), Some(0), "{text}");
    assert!(
        text.contains("devstage client_dev") && text.contains("devstage client_prod"),
        "{text}"
    );

    // A good token verifies exactly as in prepare; a token signed by another key is refused.
    let good = fx.minter.mint(claims(8202, "v1.2.3", "tag", true, ""));
    let out = fx.host.exec(&[
        "policy",
        "explain",
        "--token",
        &good,
        "--request",
        "client_prod",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // `--token -` reads it from standard input, off the process list.
    let mut child = fx
        .host
        .host_command(&[
            "policy",
            "explain",
            "--token",
            "-",
            "--request",
            "client_prod",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), good.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let forged = TokenMinter::new().mint(claims(8203, "v1.2.3", "tag", true, ""));
    let out = fx.host.exec(&[
        "policy",
        "explain",
        "--token",
        &forged,
        "--request",
        "client_prod",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{out:?}"
    );
    let mut job = fx
        .host
        .job(8203, "true")
        .var("P3_ID_TOKEN", &forged)
        .var("P3_DEVSTAGE", "client_prod");
    job.config();
    assert_eq!(
        job.prepare(),
        1,
        "prepare must refuse the same token: {}",
        job.log
    );
    job.cleanup();

    // --at moves the clock: a token checked a day after it expired is refused.
    let later = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let out = fx.host.exec(&[
        "policy",
        "explain",
        "--token",
        &good,
        "--at",
        &later,
        "--request",
        "client_prod",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );
}

#[test]
fn explain_with_an_image_names_the_image_rule_prepare_denies_with() {
    // client_prod may run only approved images, pinned by digest.
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let sub = crate::containers::subid_window();
    let config = format!(
        "job_subid_range = [{}, {}]\n{}images = [\"registry.example.com/approved/**\"]\nrequire_digest = true\n",
        sub[0],
        sub[1],
        p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), ""),
    );
    let fx = Fx {
        host: host(&config),
        _kdc: kdc,
        minter,
        _jwks: jwks,
    };
    let pinned = format!(
        "registry.example.com/approved/app@sha256:{}",
        "a".repeat(64)
    );
    let run = |c: &Value, request: &str, image: &str| {
        let file = fx.host.root().join("claims-image.json");
        std::fs::write(&file, c.to_string()).unwrap();
        let args = [
            "policy",
            "explain",
            "--claims",
            file.to_str().unwrap(),
            "--request",
            request,
            "--image",
            image,
        ];
        let json = fx.host.exec(&[args.as_slice(), &["--json"]].concat());
        let v: Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("explain --json ({e}): {json:?}"));
        let text = fx.host.exec(&args);
        assert_eq!(text.status.code(), json.status.code());
        (
            json.status.code().unwrap(),
            v[0].clone(),
            String::from_utf8_lossy(&text.stdout).into_owned(),
        )
    };
    let prod = claims(8301, "v1.2.3", "tag", true, "");
    // (image, the rule that denies or None)
    let cases: [(&str, Option<&str>); 3] = [
        (
            "registry.example.com/tools/app:1",
            Some("devstages.client_prod.images"),
        ),
        (
            "registry.example.com/approved/app:1",
            Some("devstages.client_prod.require_digest"),
        ),
        (pinned.as_str(), None),
    ];
    for (i, (image, denied_by)) in cases.iter().enumerate() {
        let (code, v, text) = run(&prod, "client_prod", image);
        let rules: Vec<(String, bool)> = v["image"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["rule"].as_str().unwrap().to_string(), r["ok"] == true))
            .collect();
        // Every image rule is listed, whichever fails.
        assert_eq!(
            rules.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            [
                "devstages.client_prod.images",
                "devstages.client_prod.require_digest"
            ],
            "{image}: {v}"
        );
        assert!(text.contains(&format!("image {image}:")), "{text}");
        match denied_by {
            None => {
                assert_eq!(code, 0, "{image}: {text}");
                assert_eq!(v["decision"]["decision"], "grant", "{v}");
                assert!(rules.iter().all(|r| r.1), "{v}");
                assert!(text.contains("decision: GRANTED"), "{text}");
            }
            Some(rule) => {
                assert_eq!(code, 1, "{image}: {text}");
                assert_eq!(v["decision"]["decision"], "deny", "{v}");
                assert_eq!(v["decision"]["rule"], *rule, "{v}");
                assert!(
                    text.contains(&format!("decision: DENIED — {rule}: image denied")),
                    "{text}"
                );
                if is_root() {
                    // prepare denies the same job with the same rule (before any pull).
                    let id = 8310 + i as u64;
                    let mut c = prod.clone();
                    c["job_id"] = id.to_string().into();
                    let mut job = fx
                        .host
                        .job(id, "true")
                        .var("P3_ID_TOKEN", &fx.minter.mint(c))
                        .var("P3_DEVSTAGE", "client_prod");
                    crate::images::set_image(&mut job, image, serde_json::json!({}));
                    job.config();
                    assert_eq!(job.prepare(), 1, "{image}: prepare disagrees:\n{}", job.log);
                    assert!(job.log.contains(rule), "{image}:\n{}", job.log);
                    job.cleanup();
                }
            }
        }
    }
    // A devstage without an images list takes any image.
    let dev = claims(8302, "feature/x", "branch", false, "");
    let (code, v, _) = run(&dev, "client_dev", "debian:12");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["image"]["qualified"], "docker.io/library/debian:12");
    assert_eq!(
        v["image"]["rules"][0]["rule"],
        "devstages.client_dev.images"
    );
    // A request the claims already deny stays denied by its claim rule, image rows shown.
    let unprotected = claims(8303, "v1.2.3", "tag", false, "");
    let (code, v, _) = run(&unprotected, "client_prod", &pinned);
    assert_eq!(code, 1);
    assert_eq!(
        v["decision"]["rule"], "devstages.client_prod.protected_ref",
        "{v}"
    );
    assert_eq!(v["image"]["rules"].as_array().unwrap().len(), 2, "{v}");
}
