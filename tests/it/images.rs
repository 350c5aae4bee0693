//! `image:` jobs (issue 19, parts 3 and 4), through the runner calls as root: the user's
//! script stages run in the job's image over a private layer, the runner's stages on the
//! host; image policy per devstage, the digest in the audit record; cleanup and gc after a
//! kill leave nothing. Images are built here with buildah and pushed to a loopback
//! `docker-registry` with htpasswd: a Debian one from `mmdebstrap --variant=minbase` (with
//! bash and krb5-user; the root filesystem and the image are cached under
//! `target/tmp/p3-test-images`, keyed by what they are built from) and one with no libc
//! (`busybox-static`, no bash). Nothing is fetched but Debian packages from the machine's
//! own mirror. The built-in steps run in every job wherever the binaries are installed
//! (issue 22, point 3: binaries under `/tmp`, which the sandbox makes private) and in every
//! image, whatever its libc.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::containers::{PASSWORD, Registry, USER, leases, processes_in, subid_window};
use crate::isolation::needs_root;
use p3_testkit::driver::{Host, Job, JobResult};
use p3_testkit::kdc;
use serde_json::{Value, json};

const PROJECT: &str = "data-ml/forecast";

fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/p3-test-images");
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An OCI archive of a test image, built once (under a lock: tests run concurrently).
/// `kind`: "debian" (mmdebstrap minbase + krb5-user), "python" (the same + python3: the
/// example project's base) or "busybox" (static busybox only).
fn image_archive(kind: &str) -> PathBuf {
    let dir = cache_dir();
    let (key, include) = match kind {
        "debian" => ("debian-bookworm-minbase-krb5-user-v1", "krb5-user"),
        "python" => (
            "debian-bookworm-minbase-krb5-user-python3-v1",
            "krb5-user,python3",
        ),
        _ => ("busybox-static-v1", ""),
    };
    let archive = dir.join(format!("{key}.oci.tar"));
    let lock = fs::File::create(dir.join(format!("{key}.lock"))).unwrap();
    // SAFETY: flock on a file we hold.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if archive.exists() {
        return archive;
    }
    let work = tempfile::tempdir_in(&dir).unwrap();
    let store = work.path().join("store");
    let buildah = || {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    let ctr = sh(buildah().args(["from", "scratch"]));
    let marker = work.path().join("marker");
    fs::create_dir_all(marker.join("etc")).unwrap();
    fs::write(marker.join("etc/p3-test-image"), format!("{kind}\n")).unwrap();
    if !include.is_empty() {
        let rootfs = dir.join(format!("{key}.rootfs.tar"));
        if !rootfs.exists() {
            let tmp = dir.join(format!("{key}.rootfs.tar.part"));
            sh(Command::new("mmdebstrap")
                // The format named: mmdebstrap guesses it from the name, and `.part` is none.
                .args(["--quiet", "--variant=minbase", "--format=tar"])
                .arg(format!("--include={include}"))
                .arg("bookworm")
                .arg(&tmp));
            fs::rename(&tmp, &rootfs).unwrap();
        }
        sh(buildah().arg("add").arg(&ctr).arg(&rootfs).arg("/"));
    } else {
        fs::create_dir_all(marker.join("bin")).unwrap();
        fs::copy("/bin/busybox", marker.join("bin/busybox")).unwrap();
        for tool in [
            "sh", "cat", "echo", "touch", "ls", "readlink", "sleep", "id", "test",
        ] {
            std::os::unix::fs::symlink("busybox", marker.join("bin").join(tool)).unwrap();
        }
        fs::create_dir_all(marker.join("tmp")).unwrap();
        fs::create_dir_all(marker.join("usr")).unwrap();
    }
    sh(buildah().arg("add").arg(&ctr).arg(&marker).arg("/"));
    let part = dir.join(format!("{key}.oci.tar.part"));
    let _ = fs::remove_file(&part);
    sh(buildah()
        .args(["commit", "--quiet", "--format", "oci"])
        .arg(&ctr)
        .arg(format!("oci-archive:{}", part.display())));
    fs::rename(&part, &archive).unwrap();
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(work.path())
        .status();
    archive
}

/// Push a test image to the registry as `repo:tag`; returns its manifest digest.
pub(crate) fn push(registry: &Registry, kind: &str, repo: &str) -> String {
    let archive = image_archive(kind);
    sh(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("--dest-creds={USER}:{PASSWORD}"))
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://127.0.0.1:{}/{repo}", registry.port)));
    let out = registry.inspect(repo);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// The job's payload with `image:` (and the variables set so far): the runner stand-in writes
/// no image, so the payload is written here, in the stand-in's shape.
pub(crate) fn set_image(job: &mut Job, image: &str, extra: Value) {
    let vars: Vec<Value> = job
        .variables
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v, "public": true, "masked": false}))
        .collect();
    let mut payload = json!({
        "id": job.id,
        "token": format!("glcbt-secret-token-{}", job.id),
        "job_info": {"name": "job", "stage": "test", "project_id": 7, "project_name": "project"},
        "git_info": {"repo_url": format!("file://{}", job.repo.display()), "ref": "main",
                     "sha": job.sha, "ref_type": "branch"},
        "variables": vars,
        "runner_info": {"timeout": job.timeout_secs},
        "image": {"name": image, "entrypoint": null, "pull_policy": null},
    });
    if let (Some(p), Some(e)) = (payload.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    job.raw_payload = Some(payload.to_string());
}

/// The registry's variables, so the pull authenticates as the job does.
fn registry_vars(job: Job, registry: &Registry) -> Job {
    job.var("CI_REGISTRY", &format!("127.0.0.1:{}", registry.port))
        .var("CI_REGISTRY_USER", USER)
        .var("CI_REGISTRY_PASSWORD", PASSWORD)
}

fn images_section(registry: &Registry) -> String {
    format!(
        "\n[images]\ninsecure_registries = [\"127.0.0.1:{}\"]\n",
        registry.port
    )
}

/// A host without devstages whose jobs may run images from the loopback registry.
fn plain_host(registry: &Registry) -> Host {
    let sub = subid_window();
    crate::common::host(&format!(
        "job_subid_range = [{}, {}]\n{}",
        sub[0],
        sub[1],
        images_section(registry)
    ))
}

pub(crate) fn layers(host: &Host) -> Vec<String> {
    fs::read_dir(host.root().join("state/layers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn run_in(job: &mut Job, body: &str) -> i32 {
    crate::isolation::run_body(job, body)
}

pub(crate) fn assert_nothing_left(host: &Host, id: u64, uid: u32) {
    assert!(layers(host).is_empty(), "layers left: {:?}", layers(host));
    assert!(
        leases(host).is_empty(),
        "range leases left: {:?}",
        leases(host)
    );
    assert!(!host.root().join(format!("builds/{id}")).exists());
    assert!(!host.root().join(format!("state/jobs/{id}")).exists());
    assert!(
        processes_in(uid, uid).is_empty(),
        "{:?}",
        processes_in(uid, uid)
    );
    let sub = fs::read_to_string(host.config.clone()).unwrap();
    let line = sub
        .lines()
        .find(|l| l.starts_with("job_subid_range"))
        .unwrap();
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(processes_in(nums[0], nums[1]).is_empty());
    // No mount of the job's anywhere on the host.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(host.root().to_str().unwrap()),
        "a mount of the host's tree outlived the job:\n{mounts}"
    );
}

#[test]
fn an_image_job_runs_its_script_in_the_image_over_a_private_layer() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    push(&registry, "debian", "tools/debian:12");
    let host = plain_host(&registry);
    let image = format!("127.0.0.1:{}/tools/debian:12", registry.port);
    let mut job = registry_vars(host.job(2001, ""), &registry);
    set_image(&mut job, &image, json!({}));
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let uid = crate::isolation::uid_of(&host, 2001);
    assert_eq!(layers(&host), vec!["2001".to_string()]);
    // The runner's own stages stay on the host (git and gitlab-runner are the host's).
    let code = job.run_stage("get_sources");
    assert_eq!(code, 0, "{}", job.log);
    let script = job.write_script(
        "restore_cache",
        "test -e /etc/p3-test-image || echo ON-HOST",
    );
    let out = job
        .command(&["run", script.to_str().unwrap(), "restore_cache"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ON-HOST"),
        "{out:?}"
    );
    let body = "echo \"IMAGE:$(cat /etc/p3-test-image)\"\n\
                grep PRETTY_NAME /etc/os-release\n\
                echo \"SHELL-EXE:$(readlink /proc/$$/exe)\"\n\
                echo \"ID:$(id -u)\"\n\
                echo written > /usr/p3-left-by-2001 && echo WROTE-USR\n\
                test -d \"$CI_PROJECT_DIR\" || test -d \"$HOME\" && echo DIRS-OK\n\
                cat /etc/resolv.conf > /dev/null && echo RESOLV-OK\n\
                p3-executor --version && echo EXEC-OK\n";
    assert_eq!(run_in(&mut job, body), 0, "{}", job.log);
    for want in [
        "IMAGE:debian",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"",
        "SHELL-EXE:/usr/bin/bash",
        "ID:0",
        "WROTE-USR",
        "DIRS-OK",
        "RESOLV-OK",
        "EXEC-OK",
    ] {
        assert!(job.log.contains(want), "{want} missing:\n{}", job.log);
    }
    // The write stayed in the job's layer: never in the image's base.
    let store = host.root().join("state/images");
    let leaked = Command::new("find")
        .arg(&store)
        .args(["-name", "p3-left-by-2001"])
        .output()
        .unwrap();
    assert!(leaked.stdout.is_empty(), "{leaked:?}");
    // A second job, concurrent with the first, does not see it; nor does the first see its.
    let mut other = registry_vars(host.job(2002, ""), &registry);
    set_image(&mut other, &image, json!({}));
    assert_eq!(other.config(), 0);
    assert_eq!(other.prepare(), 0, "{}", other.log);
    let code = run_in(
        &mut other,
        "test ! -e /usr/p3-left-by-2001 && echo NOT-SEEN\necho b > /usr/p3-left-by-2002",
    );
    assert_eq!(code, 0, "{}", other.log);
    assert!(other.log.contains("NOT-SEEN"), "{}", other.log);
    let code = run_in(
        &mut job,
        "test -e /usr/p3-left-by-2001 && echo OWN-KEPT\ntest ! -e /usr/p3-left-by-2002 && echo OTHER-NOT-SEEN",
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(
        job.log.contains("OWN-KEPT"),
        "own layer kept between stages:\n{}",
        job.log
    );
    assert!(job.log.contains("OTHER-NOT-SEEN"), "{}", job.log);
    let uid2 = crate::isolation::uid_of(&host, 2002);
    assert_eq!(other.cleanup(), 0, "{}", other.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert_nothing_left(&host, 2001, uid);
    assert_nothing_left(&host, 2002, uid2);
    // The next job in the image starts from the image again.
    let mut next = registry_vars(host.job(2003, ""), &registry);
    set_image(&mut next, &image, json!({}));
    assert_eq!(next.config(), 0);
    assert_eq!(next.prepare(), 0, "{}", next.log);
    let code = run_in(&mut next, "test ! -e /usr/p3-left-by-2001 && echo GONE");
    assert_eq!(code, 0, "{}", next.log);
    assert!(next.log.contains("GONE"), "{}", next.log);
    assert_eq!(next.cleanup(), 0);
    assert!(!next.log.contains(PASSWORD), "{}", next.log);
}

#[test]
fn an_image_without_bash_or_libc_runs_the_script_with_sh() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    push(&registry, "busybox", "tools/busybox:1");
    let host = plain_host(&registry);
    let mut job = registry_vars(host.job(2011, ""), &registry);
    set_image(
        &mut job,
        &format!("127.0.0.1:{}/tools/busybox:1", registry.port),
        json!({}),
    );
    assert_eq!(job.config(), 0);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let code = run_in(
        &mut job,
        "echo \"IMAGE:$(cat /etc/p3-test-image)\"\necho \"SHELL-EXE:$(readlink /proc/$$/exe)\"\ntest -e /lib64 || echo NO-LIBC",
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(job.log.contains("IMAGE:busybox"), "{}", job.log);
    assert!(job.log.contains("SHELL-EXE:/bin/busybox"), "{}", job.log);
    assert!(job.log.contains("NO-LIBC"), "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

#[test]
fn services_are_refused_with_a_message_and_a_missing_image_fails_prepare() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    let host = plain_host(&registry);
    let mut job = registry_vars(host.job(2021, ""), &registry);
    set_image(
        &mut job,
        &format!("127.0.0.1:{}/tools/none:1", registry.port),
        json!({"services": [{"name": "postgres:16"}]}),
    );
    assert_eq!(job.config(), 0);
    assert_ne!(job.prepare(), 0, "{}", job.log);
    assert!(
        job.log.contains("services: are not supported"),
        "{}",
        job.log
    );
    job.cleanup();
    let mut job = registry_vars(host.job(2022, ""), &registry);
    set_image(
        &mut job,
        &format!("127.0.0.1:{}/tools/none:1", registry.port),
        json!({}),
    );
    assert_eq!(job.config(), 0);
    assert_ne!(job.prepare(), 0, "{}", job.log);
    assert!(job.log.contains("tools/none:1"), "{}", job.log);
    job.cleanup();
    assert!(layers(&host).is_empty());
}

#[test]
fn a_killed_image_job_leaves_nothing_after_cleanup_or_gc() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    push(&registry, "busybox", "tools/busybox:1");
    let host = plain_host(&registry);
    for (id, by_gc) in [(2031u64, false), (2032, true)] {
        let mut job = registry_vars(host.job(id, ""), &registry);
        set_image(
            &mut job,
            &format!("127.0.0.1:{}/tools/busybox:1", registry.port),
            json!({}),
        );
        assert_eq!(job.config(), 0);
        assert_eq!(job.prepare(), 0, "{}", job.log);
        let uid = crate::isolation::uid_of(&host, id);
        let script = job.write_script("build_script", "echo STARTED; sleep 1000 & sleep 1000");
        let mut child = job
            .command(&["run", script.to_str().unwrap(), "build_script"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 8];
        let _ = std::io::Read::read(&mut out, &mut buf);
        assert!(!processes_in(uid, uid).is_empty(), "the job runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        if by_gc {
            let out = host.exec(&["gc", "--max-age-secs", "0"]);
            assert!(out.status.success(), "{out:?}");
        } else {
            assert_eq!(job.cleanup(), 0, "{}", job.log);
        }
        assert_nothing_left(&host, id, uid);
    }
}

/// The Kerberos host: a real KDC, the team's devstages; client_prod may only run images
/// under `approved/` of the loopback registry, pinned by digest.
struct KerberosEnv {
    _kdc: kdc::Kdc,
    minter: TokenMinter,
    _jwks: JwksServer,
    host: Host,
}

fn kerberos_env(registry: &Registry) -> KerberosEnv {
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let sub = subid_window();
    let config = format!(
        "job_subid_range = [{}, {}]\n{}images = [\"127.0.0.1:{}/approved/**\"]\nrequire_digest = true\n{}",
        sub[0],
        sub[1],
        p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), ""),
        registry.port,
        images_section(registry),
    );
    let host = crate::common::host(&config);
    KerberosEnv {
        _kdc: kdc,
        minter,
        _jwks: jwks,
        host,
    }
}

impl KerberosEnv {
    fn job(&self, id: u64, git_ref: &str, ref_type: &str, devstage: &str, script: &str) -> Job {
        let claims = gitlab_claims(ISSUER, "p3-executor", id, PROJECT, git_ref, ref_type, true);
        self.host
            .job(id, script)
            .var("P3_ID_TOKEN", &self.minter.mint(claims))
            .var("P3_DEVSTAGE", devstage)
    }

    fn audit(&self, id: u64) -> Vec<Value> {
        fs::read_to_string(self.host.root().join("audit/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["job_id"] == id)
            .collect()
    }
}

#[test]
fn a_granted_image_job_has_its_ticket_and_prod_runs_only_approved_pinned_images() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    let dev_digest = push(&registry, "debian", "tools/debian:12");
    let approved = push(&registry, "debian", "approved/debian:12");
    let env = kerberos_env(&registry);
    let port = registry.port;
    // client_dev (any image): the ticket is visible in the image with klist.
    let mut job = registry_vars(
        env.job(
            2041,
            "feature/x",
            "branch",
            "client_dev",
            "cat /etc/p3-test-image\nklist | grep -i 'default principal'\necho \"cache=$KRB5CCNAME\"",
        ),
        &registry,
    );
    set_image(
        &mut job,
        &format!("127.0.0.1:{port}/tools/debian:12"),
        json!({}),
    );
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(job.log.contains("\ndebian\n"), "{}", job.log);
    assert!(
        job.log.contains("Default principal: svc_client_dev@"),
        "{}",
        job.log
    );
    let grant = env
        .audit(2041)
        .into_iter()
        .find(|r| r["event"] == "grant")
        .unwrap();
    assert_eq!(grant["extra"]["image_digest"], dev_digest, "{grant}");
    assert_eq!(
        grant["extra"]["image"],
        format!("127.0.0.1:{port}/tools/debian:12"),
        "{grant}"
    );
    // client_prod: outside its glob → denied, naming the rule.
    let prod = |id: u64, image: &str| {
        let mut job = registry_vars(
            env.job(id, "v1.2.3", "tag", "client_prod", "klist"),
            &registry,
        );
        set_image(&mut job, image, json!({}));
        let result = job.run_all();
        (job, result)
    };
    let (job, result) = prod(2042, &format!("127.0.0.1:{port}/tools/debian:12"));
    assert_eq!(result, JobResult::BuildFailure(Some(1)), "{}", job.log);
    assert!(
        job.log.contains("devstages.client_prod.images"),
        "{}",
        job.log
    );
    let deny = env.audit(2042);
    assert_eq!(deny[0]["event"], "deny", "{deny:?}");
    // In the glob but tagged, with require_digest → denied.
    let (job, result) = prod(2043, &format!("127.0.0.1:{port}/approved/debian:12"));
    assert_eq!(result, JobResult::BuildFailure(Some(1)), "{}", job.log);
    assert!(
        job.log.contains("devstages.client_prod.require_digest"),
        "{}",
        job.log
    );
    // Pinned by digest → granted; the record holds the digest.
    let (job, result) = prod(
        2044,
        &format!("127.0.0.1:{port}/approved/debian@{approved}"),
    );
    assert_eq!(result, JobResult::Success, "{}", job.log);
    assert!(
        job.log.contains("Default principal: svc_client_uat@"),
        "{}",
        job.log
    );
    let grant = env
        .audit(2044)
        .into_iter()
        .find(|r| r["event"] == "grant")
        .unwrap();
    assert_eq!(grant["extra"]["image_digest"], approved, "{grant}");
    assert!(layers(&env.host).is_empty());
}

/// The executor's two binaries copied to a dir under `/tmp` whose name has a space: where a
/// checkout under `/tmp` builds them, hidden by every job's private `/tmp`.
fn binaries_under_tmp() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("p3 bins ")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let built = crate::common::exe();
    for name in ["p3-executor", "p3-executor-steps"] {
        fs::copy(built.with_file_name(name), dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn the_built_in_steps_run_from_binaries_under_tmp_on_the_host_and_in_an_image_without_libc() {
    if !needs_root() {
        return;
    }
    let bins = binaries_under_tmp();
    let srv = p3_testkit::s3::S3Server::start();
    srv.create_bucket("job-data");
    let registry = Registry::start();
    push(&registry, "busybox", "tools/busybox:1");
    let sub = subid_window();
    // job_path left at its default: the executor's dir is added to every job's PATH.
    let host = Host::new(
        bins.path().join("p3-executor"),
        &format!(
            "job_subid_range = [{}, {}]\n{}",
            sub[0],
            sub[1],
            images_section(&registry)
        ),
    );
    // A plain job in the host's sandbox: a real step, the S3 upload, with the job's keys.
    let mut job = host
        .job(2051, "")
        .var("AWS_ACCESS_KEY_ID", srv.access_key())
        .var("AWS_SECRET_ACCESS_KEY", srv.secret_key())
        .var("AWS_REGION", "us-east-1")
        .var("AWS_ENDPOINT_URL_S3", &srv.endpoint());
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let code = run_in(
        &mut job,
        "echo \"FOUND:$(command -v p3-executor)\"\n\
         echo from-tmp > up.txt\n\
         p3-executor s3 cp --no-progress up.txt s3://job-data/tmp/up.txt && echo UPLOADED\n",
    );
    assert_eq!(code, 0, "{}", job.log);
    let found = format!("FOUND:{}/p3-executor", bins.path().display());
    assert!(job.log.contains(&found), "{found}:\n{}", job.log);
    assert!(job.log.contains("UPLOADED"), "{}", job.log);
    assert_eq!(
        srv.aws_ok(&["s3", "cp", "s3://job-data/tmp/up.txt", "-"]),
        "from-tmp\n"
    );
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    // An image with no libc (static busybox) and no bash: the executor and a step run there,
    // through the host's loader.
    let mut job = registry_vars(host.job(2052, ""), &registry);
    set_image(
        &mut job,
        &format!("127.0.0.1:{}/tools/busybox:1", registry.port),
        json!({}),
    );
    assert_eq!(job.config(), 0);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let code = run_in(
        &mut job,
        "test -e /lib64 || echo NO-LIBC\n\
         p3-executor --version\n\
         p3-executor s3 cp --help\n\
         echo \"PATH=$PATH\"\n",
    );
    assert_eq!(code, 0, "{}", job.log);
    for want in [
        "NO-LIBC",
        "p3-executor 0.",
        "Usage: p3-executor s3 cp [OPTIONS] <SRC> <DST>",
        ":/.p3-executor/bin",
    ] {
        assert!(job.log.contains(want), "{want} missing:\n{}", job.log);
    }
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

/// The site's S3 credential service client, as in `credentials.rs`: it answers only with the
/// job's Kerberos ticket (run on the host by prepare, with the job's ticket cache).
const CREDENTIAL_PROCESS: &str = r#"#!/bin/sh
klist -s || { echo "no valid Kerberos ticket in $KRB5CCNAME" >&2; exit 3; }
exp=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
printf '{"Version": 1, "AccessKeyId": "S3RVER", "SecretAccessKey": "S3RVER", "Expiration": "%s"}\n' "$exp"
"#;

#[test]
fn a_granted_image_job_copies_to_s3_with_the_built_in_step_inside_its_image() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    push(&registry, "debian", "tools/debian:12");
    let srv = p3_testkit::s3::S3Server::start();
    srv.create_bucket("job-data");
    let env = kerberos_env(&registry);
    // client_dev's S3 credentials come from the host (credential_process with the job's
    // ticket) as AWS files in the job's credentials dir, which the image sees at its path.
    let helper = env.host.root().join("s3-credentials");
    fs::write(&helper, CREDENTIAL_PROCESS).unwrap();
    fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = fs::read_to_string(&env.host.config).unwrap().replace(
        "[accounts.client_uat]",
        &format!(
            "[accounts.client_dev.s3]\nendpoint_url = \"{}\"\npath_style = true\ncredential_process = [\"{}\"]\n\n[accounts.client_uat]",
            srv.endpoint(),
            helper.display()
        ),
    );
    fs::write(&env.host.config, text).unwrap();
    let script = "cat /etc/p3-test-image\n\
                  echo in-the-image > out.txt\n\
                  p3-executor s3 cp --no-progress out.txt s3://job-data/image/out.txt\n\
                  p3-executor s3 cp --no-progress s3://job-data/image/out.txt back.txt\n\
                  echo \"BACK:$(cat back.txt)\"\n\
                  p3-executor s3 ls s3://job-data/image/";
    let mut job = registry_vars(
        env.job(2061, "feature/s3", "branch", "client_dev", script),
        &registry,
    );
    set_image(
        &mut job,
        &format!("127.0.0.1:{}/tools/debian:12", registry.port),
        json!({}),
    );
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(
        job.log.contains("\ndebian\n"),
        "ran in the image:\n{}",
        job.log
    );
    assert!(job.log.contains("BACK:in-the-image"), "{}", job.log);
    assert!(job.log.contains("out.txt"), "{}", job.log);
    assert_eq!(
        srv.aws_ok(&["s3", "cp", "s3://job-data/image/out.txt", "-"]),
        "in-the-image\n"
    );
    let events: Vec<String> = env
        .audit(2061)
        .iter()
        .map(|r| r["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(events.contains(&"s3_credentials".to_string()), "{events:?}");
    assert!(layers(&env.host).is_empty());
}

/// Figures for the README, with a warm store (the image pulled and its base made by a first
/// job, not counted): prepare and one user stage (`true`, then `p3-executor --version`: the
/// wrapper and the host's loader in the image) of a plain job on the host, a container job and
/// an `image:` job (Debian), interleaved (one of each per round, so a busy machine slows all
/// three alike), median of 20. `cargo test --test it measure_image -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn measure_image_job_overhead() {
    if !needs_root() {
        return;
    }
    let registry = Registry::start();
    push(&registry, "debian", "tools/debian:12");
    let image = format!("127.0.0.1:{}/tools/debian:12", registry.port);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    // P3_MEASURE_KINDS (e.g. "image") and P3_MEASURE_ROUNDS narrow a run for profiling.
    let only = std::env::var("P3_MEASURE_KINDS").unwrap_or_default();
    let kinds: Vec<&str> = ["plain", "container", "image"]
        .into_iter()
        .filter(|k| only.is_empty() || only.split(',').any(|o| o == *k))
        .collect();
    let rounds: usize = std::env::var("P3_MEASURE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let hosts: Vec<Host> = kinds
        .iter()
        .map(|what| {
            let sub = subid_window();
            let extra = if *what == "container" {
                "[sandbox]\ncontainers = true\n"
            } else {
                ""
            };
            crate::common::host(&format!(
                "job_subid_range = [{}, {}]\n{extra}{}",
                sub[0],
                sub[1],
                images_section(&registry)
            ))
        })
        .collect();
    let mut figures = vec![(Vec::new(), Vec::new(), Vec::new()); kinds.len()];
    let mut id = 2100;
    for round in 0..=rounds {
        for (k, what) in kinds.iter().enumerate() {
            id += 1;
            let mut job = registry_vars(hosts[k].job(id, ""), &registry);
            if *what == "image" {
                set_image(&mut job, &image, json!({}));
            }
            assert_eq!(job.config(), 0);
            let t = std::time::Instant::now();
            assert_eq!(job.prepare(), 0, "{}", job.log);
            let p = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            assert_eq!(run_in(&mut job, "true"), 0, "{}", job.log);
            let r = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            let code = run_in(&mut job, "p3-executor --version >/dev/null");
            assert_eq!(code, 0, "{}", job.log);
            let e = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(job.cleanup(), 0, "{}", job.log);
            // The first round warms the store (pull, base container).
            if round > 0 {
                figures[k].0.push(p);
                figures[k].1.push(r);
                figures[k].2.push(e);
            }
        }
    }
    for (what, (p, r, e)) in kinds.iter().zip(figures.iter_mut()) {
        println!(
            "{what}: prepare {:.1} ms, stage `true` {:.1} ms, stage `p3-executor --version` \
             {:.1} ms (median of {rounds})",
            median(p),
            median(r),
            median(e)
        );
    }
}
