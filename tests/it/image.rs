//! `p3-executor image build` with real buildah (vfs storage, chroot isolation, a temp store):
//! an image `FROM scratch` + `COPY` (nothing can be pulled here), pushed to an `oci:` layout
//! directory as the registry stand-in, read back with skopeo.

use crate::common::text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_p3-executor");
const REPO: &str = "registry.example.com/data/scoring";
const PASSWORD: &str = "registry-pass-do-not-print";

fn require(tool: &str) {
    assert!(
        which::which(tool).is_ok(),
        "{tool} is not installed: run `apt-get install -y buildah skopeo` (the project's .ci/run does)"
    );
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        require("buildah");
        require("skopeo");
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("hello.txt"), "hello from p3\n").unwrap();
        std::fs::write(
            ctx.join("Containerfile"),
            "FROM scratch\nARG GREETING=none\nCOPY hello.txt /hello.txt\n",
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn store_opts(&self) -> Vec<String> {
        vec![
            format!("--root={}", self.path("root").display()),
            format!("--runroot={}", self.path("runroot").display()),
            "--storage-driver=vfs".into(),
        ]
    }

    /// Run `image build` as a job would: CI variables in the environment, nothing inherited
    /// that could change the outcome.
    fn build(&self, devstage: &str, tag: Option<&str>, extra: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", self.dir.path())
            .env("P3_DEVSTAGE", devstage)
            .env("CI_REGISTRY", "registry.example.com")
            .env("CI_REGISTRY_IMAGE", REPO)
            .env("CI_REGISTRY_USER", "gitlab-ci-token")
            .env("CI_REGISTRY_PASSWORD", PASSWORD)
            .env("CI_COMMIT_SHORT_SHA", "0123abcd")
            .env("CI_COMMIT_SHA", "0123abcd0123abcd0123abcd0123abcd0123abcd")
            .env("CI_PROJECT_URL", "https://gitlab.example.com/data/scoring")
            .env(
                "CI_PIPELINE_URL",
                "https://gitlab.example.com/data/scoring/-/pipelines/42",
            )
            .current_dir(self.dir.path())
            .args(["image", "build", "--builder=buildah", "--context=ctx"])
            .arg("--build-opt=--isolation=chroot");
        if let Some(t) = tag {
            cmd.env("CI_COMMIT_TAG", t);
        }
        for o in self.store_opts() {
            cmd.arg(format!("--builder-opt={o}"));
        }
        cmd.args(extra);
        cmd.output().unwrap()
    }

    fn inspect(&self, reference: &str) -> serde_json::Value {
        let out = Command::new("buildah")
            .args(self.store_opts())
            .args(["inspect", "--type=image", reference])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn labels(image: &serde_json::Value) -> &serde_json::Map<String, serde_json::Value> {
    image["OCIv1"]["config"]["Labels"]
        .as_object()
        .expect("labels")
}

#[test]
fn builds_a_branch_image_with_tag_and_labels() {
    let f = Fixture::new();
    let out = f.build("client_dev", None, &["--build-arg=GREETING=hi there"]);
    assert!(out.status.success(), "{}", text(&out));
    let image = f.inspect(&format!("{REPO}:0123abcd-client_dev"));
    let l = labels(&image);
    assert_eq!(l["org.opencontainers.image.version"], "0123abcd");
    assert_eq!(
        l["org.opencontainers.image.revision"],
        "0123abcd0123abcd0123abcd0123abcd0123abcd"
    );
    assert_eq!(
        l["org.opencontainers.image.source"],
        "https://gitlab.example.com/data/scoring"
    );
    assert_eq!(l["org.p3-executor.devstage"], "client_dev");
    assert_eq!(
        l["org.p3-executor.pipeline.url"],
        "https://gitlab.example.com/data/scoring/-/pipelines/42"
    );
    let created = l["org.opencontainers.image.created"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    // The build-arg value is not echoed in the log.
    assert!(!text(&out).contains("hi there"), "{}", text(&out));
    // Without --push nothing is written for deploy jobs.
    assert!(!f.path("image.env").exists());
}

#[test]
fn release_tag_push_writes_the_digest_skopeo_sees() {
    let f = Fixture::new();
    let layout = f.path("registry");
    let dest = format!("oci:{}:v1.2.3-client_prod", layout.display());
    let out = f.build(
        "client_prod",
        Some("v1.2.3"),
        &[
            "--push",
            &format!("--push-to={dest}"),
            "--dotenv=image-client_prod.env",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains(PASSWORD),
        "registry password printed:\n{}",
        text(&out)
    );

    let image = f.inspect(&format!("{REPO}:v1.2.3-client_prod"));
    assert_eq!(labels(&image)["org.opencontainers.image.version"], "v1.2.3");
    assert_eq!(labels(&image)["org.p3-executor.devstage"], "client_prod");

    let env = std::fs::read_to_string(f.path("image-client_prod.env")).unwrap();
    let pinned = env
        .lines()
        .find_map(|l| l.strip_prefix("P3_IMAGE="))
        .unwrap_or_else(|| panic!("no P3_IMAGE in {env}"));
    let (repo, digest) = pinned.split_once('@').unwrap();
    assert_eq!(repo, REPO);
    assert!(env.contains("P3_IMAGE_DEVSTAGE=client_prod\n"), "{env}");

    let out = Command::new("skopeo")
        .args(["inspect", &dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        inspected["Digest"], digest,
        "dotenv digest differs from the pushed one"
    );
    assert_eq!(
        inspected["Labels"]["org.p3-executor.devstage"],
        "client_prod"
    );
}

#[test]
fn prod_from_a_branch_is_refused_before_building() {
    let f = Fixture::new();
    // A Containerfile that would fail if a build were attempted: the refusal must come first.
    std::fs::write(
        f.path("ctx/Containerfile"),
        "FROM scratch\nCOPY missing /x\n",
    )
    .unwrap();
    let out = f.build(
        "client_prod",
        None,
        &["--push", "--push-to=oci:/nonexistent:x"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client_prod builds only from a release tag")
            && stderr.contains("not a tag pipeline"),
        "{}",
        text(&out)
    );
    assert!(
        !stderr.contains("image: $"),
        "a builder command ran:\n{}",
        text(&out)
    );
    assert!(
        !Path::new(&f.path("root")).exists(),
        "the builder touched its store"
    );
}

#[test]
fn target_stops_at_the_named_stage() {
    let f = Fixture::new();
    // The last stage cannot build (its COPY source is missing): only --target avoids it.
    std::fs::write(
        f.path("ctx/Containerfile"),
        "FROM scratch AS app\nCOPY hello.txt /hello.txt\nFROM app AS broken\nCOPY missing.txt /x\n",
    )
    .unwrap();
    let out = f.build("client_uat", None, &[]);
    assert!(
        !out.status.success(),
        "the broken stage built:\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("build failed"),
        "{}",
        text(&out)
    );
    let out = f.build("client_uat", None, &["--target=app"]);
    assert!(out.status.success(), "{}", text(&out));
    let image = f.inspect(&format!("{REPO}:0123abcd-client_uat"));
    assert_eq!(labels(&image)["org.p3-executor.devstage"], "client_uat");
}
