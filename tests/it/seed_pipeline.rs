//! The seed's four stages end to end (issue 19, "done when"): the example project a team copies
//! (`executor-config/example-project/`) through the runner stand-in, as root, every job in the
//! sandbox under its own private uid, granted from a real KDC on an ID token signed by the
//! testkit key: the tests in an image, the image built and pushed in a container job, the
//! deploy and the remove against the P3 stand-in of `p3.rs`.
//!
//! The jobs' scripts, variables, images and artifact paths are the example's `.gitlab-ci.yml`
//! (its `extends` resolved as `example_project.rs` does); GitLab's part is played here: the
//! predefined `CI_*` variables, the ID token, the build's dotenv report handed to the deploy job.
//! The one edit is the registry host: the site's mirror, `registry.example.com` (the tests' and
//! the Dockerfile's base image), is an open loopback `docker-registry` serving the Debian test
//! image with python3 built by `images.rs`, and the project's `CI_REGISTRY` an htpasswd one.
//! Both speak plain HTTP: the executor pulls with `[images] insecure_registries`, and jobs get a
//! `registries.conf` saying so through `[job_env]`, as a site with an HTTP mirror would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_norway::Value;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::containers::{PASSWORD, Registry, USER, subid_window};
use crate::images::{assert_nothing_left, push};
use crate::isolation::{needs_root, uid_of};
use p3_testkit::driver::{Host, Job};
use p3_testkit::kdc;

const PROJECT: &str = "data-ml/forecast";
/// The site's registry mirror as the example names it.
const MIRROR: &str = "registry.example.com";

/// One pipeline's ref, as GitLab's predefined variables and the ID token describe it.
struct Ref {
    name: &'static str,
    kind: &'static str,
    protected: bool,
}

/// The runner host, its KDC and token key, the two registries, and the example's jobs.
struct Seed {
    _kdc: kdc::Kdc,
    minter: TokenMinter,
    _jwks: JwksServer,
    mirror: Registry,
    registry: Registry,
    host: Host,
    jobs: Vec<(String, Value)>,
}

/// A P3 client on the host, as a site installs one: the `p3.rs` stand-in, run with a umask
/// that lets the next job (another private uid) change what this one recorded.
fn install_p3_client(root: &Path) -> (PathBuf, PathBuf) {
    let standin = root.join("p3-standin.sh");
    fs::write(&standin, crate::p3::STANDIN).unwrap();
    let client = root.join("p3");
    fs::write(
        &client,
        format!(
            "#!/bin/sh\numask 000\nexec bash {} \"$@\"\n",
            standin.display()
        ),
    )
    .unwrap();
    for f in [&standin, &client] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let records = root.join("p3-records");
    fs::create_dir(&records).unwrap();
    fs::set_permissions(&records, fs::Permissions::from_mode(0o777)).unwrap();
    (client, records)
}

impl Seed {
    fn start() -> Seed {
        let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
        let minter = TokenMinter::new();
        let jwks = JwksServer::start(&minter.jwks_json());
        let mirror = Registry::start_open();
        let registry = Registry::start();
        let sub = subid_window();
        // The example runner's policy (testkit's copy of executor-config/config.toml's), with
        // the build jobs' devstages allowed to run containers.
        let policy =
            p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "")
                .replace(
                    "[devstages.client_dev]\n",
                    "[devstages.client_dev]\ncontainers = true\n",
                )
                .replace(
                    "[devstages.client_prod]\n",
                    "[devstages.client_prod]\ncontainers = true\n",
                );
        let insecure = [mirror.port, registry.port].map(|p| format!("127.0.0.1:{p}"));
        let mut host = crate::common::host(&format!(
            "job_subid_range = [{}, {}]\n{policy}\n[images]\ninsecure_registries = {insecure:?}\n",
            sub[0], sub[1],
        ));
        let root = host.root().to_path_buf();
        let (client, records) = install_p3_client(&root);
        let registries = root.join("registries.conf");
        let text: String = insecure
            .iter()
            .map(|r| format!("[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"))
            .collect();
        fs::write(&registries, text).unwrap();
        fs::set_permissions(&registries, fs::Permissions::from_mode(0o644)).unwrap();
        // Buildah in a container job is root in its namespace: without the registries.d the
        // executor gives the job, it would look for signatures under root's 0700
        // /var/lib/containers, as on every host where root has used buildah, and every pull of
        // the build's FROM would fail with EACCES. Make sure the host is such a host.
        let store = Path::new("/var/lib/containers");
        if !store.exists() {
            fs::create_dir(store).unwrap();
            fs::set_permissions(store, fs::Permissions::from_mode(0o700)).unwrap();
        }
        let c = client.display().to_string();
        let common = |action: &str| {
            format!(
                "\"{c}\", \"{action}\", \"--as={{deploy_stage}}\", \"--devstage={{devstage}}\", \"--job={{job}}\""
            )
        };
        let mut config = fs::read_to_string(&host.config).unwrap();
        config.push_str(&format!(
            "\n[job_env]\nCONTAINERS_REGISTRIES_CONF = \"{}\"\nP3_STANDIN_DIR = \"{}\"\n\n\
             [steps.p3]\ndeploy = [{}, \"--image={{image}}\", \"--command\", \"{{command}}\", \
             \"--schedule={{schedule}}\", \"--cpu={{cpu}}\", \"--memory={{memory}}\", \"--env={{env}}\"]\n\
             remove = [{}]\nstatus = [{}]\ntimeout_secs = 30\n",
            registries.display(),
            records.display(),
            common("deploy"),
            common("remove"),
            common("status"),
        ));
        fs::write(&host.config, config).unwrap();
        // The project's repository holds the example, its registry host the mirror's.
        let mirror_host = format!("127.0.0.1:{}", mirror.port);
        host.commit_tree(&crate::example_project::project(), |_, text| {
            text.replace(MIRROR, &mirror_host)
        });
        let text =
            fs::read_to_string(crate::example_project::project().join(".gitlab-ci.yml")).unwrap();
        let doc: Value = serde_norway::from_str(&text).unwrap();
        let jobs = crate::example_project::jobs(doc.as_mapping().unwrap());
        Seed {
            _kdc: kdc,
            minter,
            _jwks: jwks,
            mirror,
            registry,
            host,
            jobs,
        }
    }

    fn spec(&self, name: &str) -> &Value {
        &self
            .jobs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no job {name} in the example"))
            .1
    }

    fn records(&self) -> PathBuf {
        self.host.root().join("p3-records")
    }

    /// `name` of the example as GitLab would hand it to the runner on `git_ref`, with the
    /// variables of `dotenv` (the reports of the jobs it needs).
    fn job(&self, id: u64, name: &str, git_ref: &Ref, dotenv: &str) -> Job {
        let spec = self.spec(name);
        let script: Vec<&str> = spec["script"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let mut job = self.host.job(id, &script.join("\n"));
        let sha = self.host.sha.clone();
        let registry = format!("127.0.0.1:{}", self.registry.port);
        let token = self.minter.mint(gitlab_claims(
            ISSUER,
            "p3-executor",
            id,
            PROJECT,
            git_ref.name,
            git_ref.kind,
            git_ref.protected,
        ));
        let mut vars: Vec<(String, String)> = [
            ("CI_PROJECT_PATH", PROJECT.to_string()),
            ("CI_PROJECT_URL", format!("{ISSUER}/{PROJECT}")),
            (
                "CI_PIPELINE_URL",
                format!("{ISSUER}/{PROJECT}/-/pipelines/31"),
            ),
            ("CI_COMMIT_REF_NAME", git_ref.name.to_string()),
            ("CI_COMMIT_REF_PROTECTED", git_ref.protected.to_string()),
            ("CI_COMMIT_SHA", sha.clone()),
            ("CI_COMMIT_SHORT_SHA", sha[..8].to_string()),
            ("CI_DEFAULT_BRANCH", "main".to_string()),
            ("CI_REGISTRY", registry.clone()),
            ("CI_REGISTRY_IMAGE", format!("{registry}/{PROJECT}")),
            ("CI_REGISTRY_USER", USER.to_string()),
            ("CI_REGISTRY_PASSWORD", PASSWORD.to_string()),
            ("P3_ID_TOKEN", token),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let ref_var = if git_ref.kind == "tag" {
            "CI_COMMIT_TAG"
        } else {
            "CI_COMMIT_BRANCH"
        };
        vars.push((ref_var.into(), git_ref.name.into()));
        if let Some(own) = spec["variables"].as_mapping() {
            for (k, v) in own {
                vars.push((k.as_str().unwrap().into(), v.as_str().unwrap().into()));
            }
        }
        for line in dotenv.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            vars.push((k.into(), v.into()));
        }
        for (k, v) in vars {
            job.variables.retain(|(old, _)| *old != k);
            job.variables.push((k, v));
        }
        if let Some(image) = spec["image"].as_str() {
            job = job.image(&self.local(image));
        }
        let devstage = spec["variables"]["P3_DEVSTAGE"].as_str().unwrap_or("");
        if let Some(paths) = spec["artifacts"]["paths"].as_sequence() {
            for p in paths {
                job = job.artifact(&p.as_str().unwrap().replace("${P3_DEVSTAGE}", devstage));
            }
        }
        job
    }

    /// A reference with the mirror's host made the loopback one.
    fn local(&self, reference: &str) -> String {
        reference.replace(MIRROR, &format!("127.0.0.1:{}", self.mirror.port))
    }

    /// The runner's calls for one job, each asserted to succeed but the user's script, whose
    /// exit code is returned; artifacts are collected before cleanup, and nothing of the job
    /// (tree, state, layer, range lease, process, mount) may outlive it.
    fn run(&self, job: &mut Job) -> i32 {
        assert_eq!(job.config(), 0, "{}", job.log);
        assert_eq!(job.prepare(), 0, "{}", job.log);
        let uid = uid_of(&self.host, job.id);
        for stage in ["prepare_script", "get_sources"] {
            assert_eq!(job.run_stage(stage), 0, "{stage}:\n{}", job.log);
        }
        let code = job.run_stage("build_script");
        job.collect_artifacts();
        assert_eq!(job.run_stage("cleanup_file_variables"), 0, "{}", job.log);
        assert_eq!(job.cleanup(), 0, "{}", job.log);
        assert_nothing_left(&self.host, job.id, uid);
        code
    }

    fn audit(&self, id: u64) -> Vec<Json> {
        fs::read_to_string(self.host.root().join("audit/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .filter(|r| r["job_id"] == id)
            .collect()
    }

    fn grant(&self, id: u64) -> Json {
        self.audit(id)
            .into_iter()
            .find(|r| r["event"] == "grant")
            .unwrap_or_else(|| panic!("no grant record for job {id}: {:?}", self.audit(id)))
    }

    /// What the P3 stand-in holds for `devstage`: job → image.
    fn deployed(&self, devstage: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            fs::read_dir(self.records().join("state").join(devstage))
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            let image = fs::read_to_string(e.path()).unwrap();
                            (
                                e.file_name().to_string_lossy().into_owned(),
                                image.trim().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
        out.sort();
        out
    }

    /// Every call the P3 stand-in received: (argv, klist of the ticket it was handed).
    fn p3_calls(&self) -> Vec<(Vec<String>, String)> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.records().join("calls"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs.iter()
            .map(|d| {
                let argv = fs::read(d.join("argv")).unwrap();
                let argv = argv
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (
                    argv,
                    fs::read_to_string(d.join("klist")).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The pipeline's build, deploy and remove jobs of `suffix` (`dev`, `prod`) on `git_ref`,
    /// job ids from `first`: the image built from the example's Dockerfile (its base from the
    /// mirror) in a container job and pushed to CI_REGISTRY with the devstage in its tag; the
    /// digest in the dotenv report handed to deploy, which deploys exactly that image as the
    /// devstage's account to `jobs` (p3.toml's for the devstage); remove takes them away.
    fn build_deploy_remove(&self, first: u64, git_ref: &Ref, suffix: &str, jobs: &[&str]) {
        let devstage = format!("client_{suffix}");
        let account = if suffix == "dev" {
            "client_dev"
        } else {
            "client_uat"
        };
        let mut build = self.job(first, &format!("build:{suffix}"), git_ref, "");
        assert_eq!(self.run(&mut build), 0, "{}", build.log);
        assert!(!build.log.contains(PASSWORD), "{}", build.log);
        let dotenv = build
            .collected
            .get(&format!("image-{devstage}.env"))
            .unwrap_or_else(|| panic!("no dotenv artifact:\n{}", build.log))
            .clone();
        let version = if git_ref.kind == "tag" {
            git_ref.name.to_string()
        } else {
            self.host.sha[..8].to_string()
        };
        let tagged = format!("{PROJECT}:{version}-{devstage}");
        let inspected = self.registry.inspect(&tagged);
        assert!(inspected.status.success(), "{tagged}: {inspected:?}");
        let pushed: Json = serde_json::from_slice(&inspected.stdout).unwrap();
        let digest = pushed["Digest"].as_str().unwrap();
        let pinned = format!("127.0.0.1:{}/{PROJECT}@{digest}", self.registry.port);
        assert!(
            dotenv.contains(&format!("P3_IMAGE={pinned}\n")),
            "{dotenv}\nregistry: {digest}"
        );
        assert_eq!(self.grant(first)["devstage"], devstage.as_str());

        let calls_before = self.p3_calls().len();
        let mut deploy = self.job(first + 1, &format!("deploy:{suffix}"), git_ref, &dotenv);
        assert_eq!(self.run(&mut deploy), 0, "{}", deploy.log);
        let want: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.to_string(), pinned.clone()))
            .collect();
        assert_eq!(self.deployed(&devstage), want, "{}", deploy.log);
        let report = deploy
            .collected
            .get(&format!("p3-deploy-{devstage}.json"))
            .unwrap_or_else(|| panic!("no deploy report:\n{}", deploy.log));
        assert!(report.contains(&pinned), "{report}");
        let calls = self.p3_calls();
        assert_eq!(calls.len() - calls_before, jobs.len(), "{calls:?}");
        for (argv, klist) in &calls[calls_before..] {
            assert!(argv.contains(&format!("--as={account}")), "{argv:?}");
            assert!(argv.contains(&format!("--devstage={devstage}")), "{argv:?}");
            let principal = format!("Default principal: svc_{account}@");
            assert!(klist.contains(&principal), "{klist}");
        }
        assert_eq!(self.grant(first + 1)["devstage"], devstage.as_str());

        let mut remove = self.job(first + 2, &format!("remove:{suffix}"), git_ref, "");
        assert_eq!(self.run(&mut remove), 0, "{}", remove.log);
        assert!(self.deployed(&devstage).is_empty(), "{}", remove.log);
        assert_eq!(self.grant(first + 2)["devstage"], devstage.as_str());
    }
}

#[test]
fn the_example_projects_four_stages_run_through_the_runner() {
    if !needs_root() {
        return;
    }
    let seed = Seed::start();
    let base_digest = push(&seed.mirror, "python", "base/python:3.12");
    let branch = Ref {
        name: "feature/x",
        kind: "branch",
        protected: false,
    };

    // 1. test: the unit tests, in the project's base image, with the dev account's ticket.
    let mut test = seed.job(3101, "test", &branch, "");
    let image = test
        .image
        .clone()
        .expect("the example's test job names an image");
    let image = image["name"].as_str().unwrap().to_string();
    assert_eq!(seed.run(&mut test), 0, "{}", test.log);
    assert!(test.log.contains("Ran 2 tests"), "{}", test.log);
    let grant = seed.grant(3101);
    assert_eq!(grant["devstage"], "client_dev", "{grant}");
    assert_eq!(grant["extra"]["image"], image, "{grant}");
    assert_eq!(grant["extra"]["image_digest"], base_digest, "{grant}");
    // `policy explain` answers for the same job offline: granted, the image allowed.
    let claims = gitlab_claims(
        ISSUER,
        "p3-executor",
        3101,
        PROJECT,
        "feature/x",
        "branch",
        false,
    );
    let claims_file = seed.host.root().join("claims-3101.json");
    fs::write(&claims_file, claims.to_string()).unwrap();
    let out = seed.host.exec(&[
        "policy",
        "explain",
        "--claims",
        claims_file.to_str().unwrap(),
        "--request",
        "client_dev",
        "--image",
        &image,
    ]);
    assert!(out.status.success(), "{}", crate::common::text(&out));

    // 2.-4. build, deploy and remove for client_dev from the branch.
    seed.build_deploy_remove(
        3102,
        &branch,
        "dev",
        &["scoring-backfill", "scoring-nightly"],
    );
    // The same on a protected release tag: client_prod, with the client_uat account, the image
    // tagged with the release (prod's test job is the same as dev's, not run twice).
    let release = Ref {
        name: "v1.2.3",
        kind: "tag",
        protected: true,
    };
    seed.build_deploy_remove(3202, &release, "prod", &["scoring-nightly"]);

    // Every decision is in the audit log, and its chain holds.
    let out = seed.host.exec(&["audit", "verify"]);
    assert!(out.status.success(), "{}", crate::common::text(&out));
}
