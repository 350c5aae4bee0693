//! `demo`: the product's point, end to end, on this machine and without GitLab.
//!
//! With MIT Kerberos installed, the demo starts a throwaway realm ([`realm`]) holding two system
//! accounts, makes an RSA key standing in for GitLab's instance key ([`tokens`](crate::tokens), published as a
//! JWKS *file*), writes an embedded config (the example config's policy), and drives three jobs
//! through the local runner stand-in ([`driver`](crate::driver)): a release tag granted `client_prod`, a feature
//! branch forging protected-tag variables (denied before any stage runs), and a plain job. It then
//! shows the audit log and verifies its hash chain. Without the KDC tools it runs the plain job
//! only and says how to get the rest.
//!
//! The demo and the test suite share one implementation of these fixtures.

use std::path::PathBuf;

use anyhow::Context;
use p3_contract::env;

use crate::driver::{Host, Job, JobResult, paint};
use crate::realm::{self, Realm};
use crate::tokens::{ISSUER, TokenMinter, gitlab_claims};

/// Demo options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the demo's temp trees (config, audit log, realm) and print their paths.
    #[arg(long)]
    pub keep: bool,
}

/// The project every demo job belongs to (matches the policy's `data-ml/*`).
const PROJECT: &str = "data-ml/forecast";

/// The system accounts of the demo realm.
const DEV: &str = "svc_client_dev";
const UAT: &str = "svc_client_uat";

/// Run the demo; returns the exit code (0: every job ended as expected).
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    // This is p3-executor-demo; the executor under demonstration is its sibling.
    let exe = std::env::current_exe()
        .context("locate the p3-executor binary")?
        .with_file_name("p3-executor");
    let mut missing = realm::missing_tools();
    if which::which("openssl").is_err() {
        missing.push("openssl");
    }
    if missing.is_empty() {
        full_demo(exe, args.keep)
    } else {
        plain_demo(exe, args.keep, &missing)
    }
}

/// Checks on a finished job: one message per thing that did not happen as expected.
type Check<'a> = Box<dyn Fn(&JobResult, &Job) -> Vec<String> + 'a>;

/// One job of the story and what must have happened to it.
struct Scene<'a> {
    title: &'a str,
    expect: &'a str,
    job: Job,
    check: Check<'a>,
}

fn header(n: usize, total: usize, title: &str, expect: &str) {
    let rule = "═".repeat(78);
    println!("\n{}", paint("1", &rule));
    println!("{}", paint("1", &format!(" {n}/{total}  {title}")));
    println!("      expected: {expect}");
    println!("{}", paint("1", &rule));
}

fn verdict(failures: &[String]) -> bool {
    if failures.is_empty() {
        println!("{}", paint("1;32", "✔ as expected"));
        true
    } else {
        for f in failures {
            println!("{}", paint("1;31", &format!("✘ {f}")));
        }
        false
    }
}

fn full_demo(exe: PathBuf, keep: bool) -> anyhow::Result<i32> {
    let root = nix::unistd::geteuid().is_root();
    println!("{}", paint("1", "p3-executor demo"));
    println!(
        "A local stand-in for GitLab Runner calls config → prepare → run (every stage) → cleanup,\n\
         as the runner would, against a real MIT KDC and real RS256 ID tokens. No GitLab needed.\n"
    );

    let realm = Realm::start(&[DEV, UAT]).context("set up the demo's Kerberos realm")?;
    let minter = TokenMinter::generate("demo-gitlab-key")
        .context("make the demo's stand-in GitLab signing key")?;
    // The public half goes where an air-gapped runner host would keep GitLab's keys.
    let jwks_file = realm.dir().join("gitlab-jwks.json");
    std::fs::write(&jwks_file, minter.jwks_json()).context("write the demo's JWKS file")?;
    let host = Host::new(
        exe.clone(),
        &policy_config(&realm, &format!("jwks_file = {jwks_file:?}"), ""),
    );
    let uat_keytab = realm.keytab(UAT);

    println!("Set up:");
    println!(
        "  • Kerberos realm {} (krb5kdc on 127.0.0.1:{}) with system accounts\n    {} and {}; keytabs root-only (0600) in {}",
        realm.realm(),
        realm.port(),
        realm.principal(DEV),
        realm.principal(UAT),
        realm.dir().display()
    );
    println!(
        "  • an RSA key standing in for GitLab's ID-token key; its JWKS in {}",
        jwks_file.display()
    );
    println!(
        "  • executor config {}:\n    client_dev from any branch, client_uat from protected main,\n    client_prod from protected release tags via the client_uat account",
        host.config.display()
    );
    if root {
        println!("  • running as root: each job gets a private uid from job_uid_range");
    } else {
        println!(
            "  • not root: jobs run as you (isolation off); run as root to see private job uids"
        );
    }

    let token = |id: u64, git_ref: &str, ref_type: &str, protected: bool| {
        minter.mint(gitlab_claims(
            ISSUER,
            "p3-executor",
            id,
            PROJECT,
            git_ref,
            ref_type,
            protected,
        ))
    };
    let uat_principal = realm.principal(UAT);
    // Where prepare puts the grant's ticket cache: it must be gone once cleanup ran.
    let creds = host.root().join("state/creds/2001");

    let release_script = format!(
        r#"echo "job runs as uid $(id -u), gid $(id -g)"
echo "P3_DEVSTAGE=$P3_DEVSTAGE P3_DEPLOY_STAGE=$P3_DEPLOY_STAGE P3_SYSTEM_ACCOUNT=$P3_SYSTEM_ACCOUNT"
klist
echo "trying to read the host's keytab:"
if cat {kt} 2>&1 >/dev/null; then echo "keytab READABLE (isolation off)"; else echo "→ keytab not readable by the job"; fi"#,
        kt = crate::driver::shell_quote(&uat_keytab.display().to_string()),
    );
    let release = host
        .job(2001, &release_script)
        .var("P3_ID_TOKEN", &token(2001, "v1.2.3", "tag", true))
        .var(env::DEVSTAGE, "client_prod")
        .var("CI_PROJECT_PATH", PROJECT)
        .var("CI_COMMIT_REF_NAME", "v1.2.3")
        .var("CI_COMMIT_TAG", "v1.2.3")
        .var("CI_COMMIT_REF_PROTECTED", "true");
    let forged = host
        .job(2002, "echo 'this must never run'")
        .var(
            "P3_ID_TOKEN",
            &token(2002, "feature/login", "branch", false),
        )
        .var(env::DEVSTAGE, "client_prod")
        .var("CI_PROJECT_PATH", PROJECT)
        .var("CI_COMMIT_REF_NAME", "v9.9.9")
        .var("CI_COMMIT_TAG", "v9.9.9")
        .var("CI_COMMIT_REF_PROTECTED", "true");
    let plain = host
        .job(
            2003,
            r#"echo "KRB5CCNAME=${KRB5CCNAME:-<none>} P3_DEVSTAGE=${P3_DEVSTAGE:-<none>}"
klist 2>&1 || echo "no Kerberos ticket: a plain job gets no credentials""#,
        )
        .var("CI_PROJECT_PATH", PROJECT);

    let scenes = vec![
        Scene {
            title: "Release v1.2.3 (protected tag) requests P3_DEVSTAGE=client_prod",
            expect: "granted via deploy stage client_uat; klist shows the client_uat principal",
            job: release,
            check: Box::new(move |result, job| {
                let mut f = Vec::new();
                if *result != JobResult::Success {
                    f.push(format!("job ended with {result:?}, not success"));
                }
                if !job
                    .log
                    .contains(&format!("Default principal: {uat_principal}"))
                {
                    f.push(format!("klist did not show {uat_principal}"));
                }
                if !job
                    .log
                    .contains("P3_DEVSTAGE=client_prod P3_DEPLOY_STAGE=client_uat")
                {
                    f.push("P3_DEVSTAGE / P3_DEPLOY_STAGE not injected".into());
                }
                if root && !job.log.contains("keytab not readable by the job") {
                    f.push("the job could read the keytab".into());
                }
                if creds.exists() {
                    f.push(format!("{} outlived the job", creds.display()));
                }
                f
            }),
        },
        Scene {
            title: "Feature branch forges CI_COMMIT_REF_PROTECTED=true, CI_COMMIT_TAG=v9.9.9, requests client_prod",
            expect: "denied by the verified ID token's claims, before any stage runs",
            job: forged,
            check: Box::new(|result, job| {
                let mut f = Vec::new();
                if *result != JobResult::BuildFailure(Some(1)) {
                    f.push(format!("job ended with {result:?}, not a denial"));
                }
                if !job.log.contains("devstages.client_prod.") {
                    f.push("the denial does not name a devstages.client_prod rule".into());
                }
                if job.calls.iter().any(|(c, _)| c == "build_script") {
                    f.push("the job's script ran".into());
                }
                f
            }),
        },
        Scene {
            title: "A plain job without P3_DEVSTAGE",
            expect: "runs, with no credentials",
            job: plain,
            check: Box::new(|result, job| {
                let mut f = Vec::new();
                if *result != JobResult::Success {
                    f.push(format!("job ended with {result:?}, not success"));
                }
                if !job.log.contains("KRB5CCNAME=<none>") {
                    f.push("the plain job got a ticket cache".into());
                }
                f
            }),
        },
    ];

    let total = scenes.len();
    let mut ok = true;
    for (i, mut scene) in scenes.into_iter().enumerate() {
        header(i + 1, total, scene.title, scene.expect);
        scene.job.echo = true;
        let result = scene.job.run_all();
        ok &= verdict(&(scene.check)(&result, &scene.job));
    }

    ok &= show_audit(&host);

    println!("\n{}", paint("1", "Summary"));
    println!(
        "{}",
        wrap(
            &format!(
                "Only the signature-verified ID token decided. The protected release tag got devstage \
                 client_prod with a ticket for {} (deploy stage client_uat), injected into that job \
                 alone{}. The feature branch that forged CI_COMMIT_REF_PROTECTED and CI_COMMIT_TAG was \
                 denied before its script ran, with the rule that denied it. The plain job ran without \
                 credentials. Every decision is a hash-chained audit record, and cleanup removed every \
                 credential.",
                realm.principal(UAT),
                if root {
                    ", under a private uid that cannot read the keytab"
                } else {
                    ""
                },
            ),
            90
        )
    );
    finish(ok, keep, host, Some(realm))
}

/// The executor config of the demo (and of the end-to-end tests): the team's three devstages
/// as in `executor-config/config.toml` (client_dev from any ref, client_uat from protected
/// `main`, client_prod from protected release tags via the client_uat account), two accounts
/// in `realm`, the JWKS source line `jwks` (`jwks_file = ...` or `jwks_url = ...`) and extra
/// `[kerberos]` lines.
pub fn policy_config(realm: &Realm, jwks: &str, kerberos_extra: &str) -> String {
    format!(
        r#"
[identity]
gitlab_url = "{ISSUER}"
audience = "p3-executor"
{jwks}

[kerberos]
krb5_config = "{krb5}"
timeout_secs = 10
{kerberos_extra}

[accounts.client_dev]
principal = "{dev}"
keytab = "{dev_kt}"

[accounts.client_uat]
principal = "{uat}"
keytab = "{uat_kt}"

[devstages.client_dev]
deploy_account = "client_dev"
projects = ["data-ml/*"]
ref_types = ["branch", "tag"]
protected_ref = false

[devstages.client_uat]
deploy_account = "client_uat"
projects = ["data-ml/*"]
ref_types = ["branch"]
protected_ref = true
branch_pattern = '^main$'
pipeline_sources = ["push", "web", "schedule"]

[devstages.client_prod]
deploy_account = "client_uat"
projects = ["data-ml/*"]
ref_types = ["tag"]
protected_ref = true
tag_pattern = '^v\d+\.\d+\.\d+$'
pipeline_sources = ["push", "web"]
"#,
        krb5 = realm.krb5_conf().display(),
        dev = realm.principal(DEV),
        dev_kt = realm.keytab(DEV).display(),
        uat = realm.principal(UAT),
        uat_kt = realm.keytab(UAT).display(),
    )
}

/// Print `audit show` and `audit verify` for the demo's log; true when the chain verifies.
fn show_audit(host: &Host) -> bool {
    println!("\n{}", paint("1", &"═".repeat(78)));
    println!("{}", paint("1", " The audit log: p3-executor audit show"));
    println!("{}", paint("1", &"═".repeat(78)));
    let show = host.exec(&["audit", "show"]);
    print!("{}", String::from_utf8_lossy(&show.stdout));
    // The record count goes to stderr; keep it in order with the table.
    print!("{}", String::from_utf8_lossy(&show.stderr));
    println!("\n{}", paint("1", "$ p3-executor audit verify"));
    let verify = host.exec(&["audit", "verify"]);
    print!("{}", String::from_utf8_lossy(&verify.stdout));
    print!("{}", String::from_utf8_lossy(&verify.stderr));
    let ok = show.status.success() && verify.status.success();
    verdict(&if ok {
        Vec::new()
    } else {
        vec!["audit show/verify failed".to_string()]
    })
}

/// Without the KDC tools: the plain job only, and how to get the full demo.
fn plain_demo(exe: PathBuf, keep: bool, missing: &[&str]) -> anyhow::Result<i32> {
    let host = Host::new(exe, "");
    println!("{}", paint("1", "p3-executor demo (plain job only)"));
    println!(
        "A local stand-in for GitLab Runner calls config → prepare → run (every stage) → cleanup\n\
         on an embedded config under {}.\n",
        host.root().display()
    );
    println!(
        "{}",
        paint(
            "33",
            &format!(
                "Not found: {}. For the full demo (Kerberos grant, forged-variable denial, audit):\n  \
                 apt-get install -y krb5-kdc krb5-user krb5-admin-server openssl   (or scripts/demo.sh)",
                missing.join(", ")
            )
        )
    );
    let script = r#"echo "job $CI_JOB_ID runs as uid $(id -u), in $PWD"
cat README
echo "HOME=$HOME TMPDIR=$TMPDIR"
if cat "$P3_EXECUTOR_CONFIG_PROBE" >/dev/null 2>&1; then echo "config readable (isolation off)"; else echo "executor config: not readable by the job"; fi"#;
    let mut job = host
        .job(1001, script)
        .var(
            "P3_EXECUTOR_CONFIG_PROBE",
            &host.config.display().to_string(),
        )
        .after("echo after_script: done");
    header(
        1,
        1,
        "A plain job",
        "runs; its workspace is gone afterwards",
    );
    job.echo = true;
    let result = job.run_all();
    let mut failures = Vec::new();
    if result != JobResult::Success {
        failures.push(format!("job ended with {result:?}"));
    }
    let workspace = host.root().join("builds/1001");
    if workspace.exists() {
        failures.push(format!("{} outlived the job", workspace.display()));
    }
    let ok = verdict(&failures);
    finish(ok, keep, host, None)
}

/// Greedy word wrap at `width` columns (the summary reads well in a terminal and a CI log).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out
}

/// Keep the temp trees if asked, print the overall verdict, return the exit code.
fn finish(ok: bool, keep: bool, host: Host, realm: Option<Realm>) -> anyhow::Result<i32> {
    if keep {
        let config = host.config.clone();
        let kept = host.keep();
        println!(
            "\nkept {} (audit: p3-executor --config {} audit show)",
            kept.display(),
            config.display()
        );
        if let Some(realm) = realm {
            println!("kept {} (KDC stopped)", realm.keep().display());
        }
    }
    println!();
    if ok {
        println!("{}", paint("1;32", "demo: every job ended as expected"));
        Ok(0)
    } else {
        println!(
            "{}",
            paint(
                "1;31",
                "demo: some job did not end as expected (see ✘ above)"
            )
        );
        Ok(1)
    }
}
