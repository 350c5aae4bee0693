//! Container jobs (issue 19, parts 1 and 2), through the runner calls as root: a job that
//! policy lets run containers gets its own user namespace with a private subordinate range,
//! and `p3-executor image build --push` with buildah works inside it against a real registry
//! on loopback (Debian's `docker-registry` with htpasswd auth). Nothing is fetched from
//! outside: the image is `FROM scratch` plus the host's static busybox, with a `RUN` step.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::isolation::{host_with_uids_and, needs_root, prepared, run_body};
use p3_testkit::driver::{Host, Job, uid_base};

const BIN: &str = env!("CARGO_BIN_EXE_p3-executor");
pub(crate) const USER: &str = "ci-pusher";
pub(crate) const PASSWORD: &str = "registry-pass-do-not-print";
const RANGE: u32 = 65_536;

fn require(tool: &str) -> bool {
    let ok = which::which(tool).is_ok();
    assert!(
        ok,
        "{tool} is not installed: apt-get install -y buildah skopeo docker-registry \
         apache2-utils busybox-static (scripts/test.sh does)"
    );
    ok
}

/// A window of subordinate ids no other test of this process (or of a concurrent run) uses:
/// two ranges per host, above every test uid window (`uid_base`, below 101M).
pub(crate) fn subid_window() -> [u32; 2] {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
    let first = 200_000_000 + ((std::process::id() % 997) * 16 + n) * 2 * RANGE;
    [first, first + 2 * RANGE - 1]
}

/// A host whose plain jobs may run containers (`[sandbox] containers`), with its own uid
/// window and subordinate window; returns the host and its subordinate window.
fn container_host(extra: &str) -> (Host, [u32; 2]) {
    let lo = uid_base();
    let sub = subid_window();
    let host = host_with_uids_and(
        lo,
        lo + 9,
        &format!("job_subid_range = [{}, {}]\n{extra}", sub[0], sub[1]),
    );
    (host, sub)
}

/// The loopback registry: `docker-registry` on a free port, with htpasswd auth (the job's
/// `CI_REGISTRY`) or open for pulls without credentials (a site's mirror).
pub(crate) struct Registry {
    child: Child,
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// With htpasswd auth: `USER` / `PASSWORD`.
    pub(crate) fn start() -> Self {
        Self::start_with(true)
    }

    /// Without auth: anyone may pull (and push), as from a site's internal mirror.
    pub(crate) fn start_open() -> Self {
        Self::start_with(false)
    }

    fn start_with(auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(out.status.success(), "htpasswd: {out:?}");
        fs::write(&htpasswd, &out.stdout).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        let auth = if auth {
            format!(
                "auth:\n  htpasswd:\n    realm: p3-test\n    path: {}\n",
                htpasswd.display()
            )
        } else {
            String::new()
        };
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    pub(crate) fn inspect(&self, reference: &str) -> std::process::Output {
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("--creds={USER}:{PASSWORD}"))
            .arg(format!("docker://127.0.0.1:{}/{reference}", self.port))
            .output()
            .unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A job's script that builds and pushes an image with a `RUN` step as another image user.
fn build_and_push(port: u16, repo: &str) -> String {
    format!(
        r#"mkdir -p ctx
cp /bin/busybox ctx/busybox
cat > ctx/Containerfile <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox echo built in a job > /built && /bin/busybox chown 1000:1000 /built && /bin/busybox id -u > /ran-as"]
EOF
# The loopback registry speaks plain HTTP.
printf '[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n' > registries.conf
export CONTAINERS_REGISTRIES_CONF=$PWD/registries.conf
echo "inside: $(id -u) $(id -un)"
echo "MAP $(awk '{{print $1, $2, $3}}' /proc/self/uid_map | tr '\n' ';')"
{BIN} image build --builder=buildah --context=ctx --devstage=dev --image-name=127.0.0.1:{port}/{repo} --push
cat image.env
"#
    )
}

fn payload_variables(job: &mut Job, port: u16) {
    job.variables.extend([
        ("CI_REGISTRY".into(), format!("127.0.0.1:{port}")),
        ("CI_REGISTRY_USER".into(), USER.into()),
        ("CI_REGISTRY_PASSWORD".into(), PASSWORD.into()),
        ("CI_COMMIT_SHORT_SHA".into(), "0123abcd".into()),
    ]);
}

/// The first host id of the subordinate range in a `MAP` line the job printed, after checking
/// that inside 0 is the job's uid.
fn range_of(log: &str, uid: u32) -> u32 {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("MAP "))
        .unwrap_or_else(|| panic!("no MAP line:\n{log}"));
    let rows: Vec<Vec<u32>> = line
        .split(';')
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{line}");
    assert_eq!(rows[0], vec![0, uid, 1], "{line}");
    assert_eq!((rows[1][0], rows[1][2]), (1, RANGE), "{line}");
    rows[1][1]
}

pub(crate) fn leases(host: &Host) -> Vec<String> {
    match fs::read_dir(host.root().join("state/subids")) {
        Ok(d) => d
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.file_name().to_string_lossy(),
                    fs::read_to_string(e.path()).unwrap_or_default().trim()
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn job_root(host: &Host, id: u64) -> PathBuf {
    host.root().join(format!("builds/{id}"))
}

/// Processes holding an id of `[lo, hi]` (uid or gid fields).
pub(crate) fn processes_in(lo: u32, hi: u32) -> Vec<String> {
    p3_testkit::procs::holding(lo..=hi)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_container_job_builds_and_pushes_an_image_with_a_run_step() {
    if !needs_root()
        || !["buildah", "skopeo", "docker-registry", "htpasswd"]
            .iter()
            .all(|t| require(t))
    {
        return;
    }
    let registry = Registry::start();
    let (host, sub) = container_host("[sandbox]\ncontainers = true\n");
    let (mut job, uid) = prepared(&host, 1901);
    payload_variables(&mut job, registry.port);
    let code = run_body(&mut job, &build_and_push(registry.port, "group/app"));
    assert_eq!(code, 0, "{}", job.log);
    // The job is root in its namespace, which is its private uid outside, and its range
    // follows: one of the host's two.
    let first = range_of(&job.log, uid);
    assert!(
        first == sub[0] || first == sub[0] + RANGE,
        "{first} / {sub:?}"
    );
    assert!(job.log.contains("inside: 0 root"), "{}", job.log);
    // The RUN step ran (as the image's root, mapped into the range).
    let inspected = registry.inspect("group/app:0123abcd-dev");
    assert!(inspected.status.success(), "{inspected:?}\n{}", job.log);
    let image: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let digest = image["Digest"].as_str().unwrap().to_string();
    // The script's `cat image.env` put the dotenv in the log.
    let env = &job.log;
    assert!(
        env.contains(&format!(
            "P3_IMAGE=127.0.0.1:{}/group/app@{digest}",
            registry.port
        )),
        "registry digest {digest}\n{env}"
    );
    assert!(!job.log.contains(PASSWORD), "{}", job.log);
    // The storage lives in the job's tree; cleanup takes it, the processes, and the lease.
    let store = job_root(&host, 1901).join("containers/storage");
    assert!(store.is_dir(), "storage at {}", store.display());
    // The file the RUN step gave to image uid 1000 is owned by the job's range on the host.
    let owners = Command::new("find")
        .arg(&store)
        .args(["-name", "built", "-printf", "%U\\n"])
        .output()
        .unwrap();
    let owners = String::from_utf8_lossy(&owners.stdout);
    assert!(
        owners.lines().any(|l| l == (first + 999).to_string()),
        "owners of /built in the store: {owners:?} (range from {first})"
    );
    assert_eq!(leases(&host).len(), 1, "{:?}", leases(&host));
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert!(!job_root(&host, 1901).exists());
    assert!(leases(&host).is_empty(), "{:?}", leases(&host));
    assert!(processes_in(sub[0], sub[1]).is_empty());
    assert!(processes_in(uid, uid).is_empty());
}

/// Tries a user namespace and a buildah container; says which worked.
const BODY: &str = "if unshare -U true; then echo USERNS-OK; else echo userns refused; fi\n\
     if buildah --storage-driver=vfs --root=$HOME/s --runroot=$HOME/r from scratch; then echo BUILDAH-OK; else echo buildah refused; fi\n";

#[test]
fn a_job_without_the_policy_cannot_make_a_user_namespace_or_run_buildah() {
    if !needs_root() || !require("buildah") {
        return;
    }
    let (host, _) = container_host("");
    let (mut job, _) = prepared(&host, 1902);
    let code = run_body(&mut job, BODY);
    assert_eq!(code, 0, "{}", job.log);
    assert!(job.log.contains("userns refused"), "{}", job.log);
    assert!(!job.log.contains("USERNS-OK"), "{}", job.log);
    assert!(!job.log.contains("BUILDAH-OK"), "{}", job.log);
    assert!(leases(&host).is_empty(), "no range for a plain job");
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    // The same script in a job that policy lets run containers: both work.
    let (host, _) = container_host("[sandbox]\ncontainers = true\n");
    let (mut job, _) = prepared(&host, 1906);
    assert_eq!(run_body(&mut job, BODY), 0, "{}", job.log);
    assert!(job.log.contains("USERNS-OK"), "{}", job.log);
    assert!(job.log.contains("BUILDAH-OK"), "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

#[test]
fn concurrent_container_jobs_get_disjoint_ranges_and_cleanup_releases_them() {
    if !needs_root() {
        return;
    }
    let (host, sub) = container_host("[sandbox]\ncontainers = true\n");
    let (mut a, ua) = prepared(&host, 1903);
    let (mut b, ub) = prepared(&host, 1904);
    let map = |job: &mut Job, uid: u32| {
        let code = run_body(
            job,
            "echo \"MAP $(awk '{print $1, $2, $3}' /proc/self/uid_map | tr '\\n' ';')\"",
        );
        assert_eq!(code, 0, "{}", job.log);
        range_of(&job.log, uid)
    };
    let firsts = [map(&mut a, ua), map(&mut b, ub)];
    assert_ne!(firsts[0], firsts[1]);
    for f in &firsts {
        assert!((sub[0]..=sub[1]).contains(f), "{f} outside {sub:?}");
    }
    assert_eq!(leases(&host).len(), 2);
    // A third job finds the window (two ranges) full: prepare says so.
    let mut c = host.job(1905, "");
    assert_eq!(c.config(), 0);
    assert_ne!(c.prepare(), 0, "{}", c.log);
    assert!(c.log.contains("subordinate range"), "{}", c.log);
    let _ = c.cleanup();
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    assert_eq!(b.cleanup(), 0, "{}", b.log);
    assert!(leases(&host).is_empty(), "{:?}", leases(&host));
}

/// Figures for the README: prepare and one `run` stage (`true`) of a container job against a
/// plain one, interleaved (one of each per round, so a busy machine slows both alike), median
/// of 10. `cargo test --test it measure_container -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn measure_container_job_overhead() {
    if !needs_root() {
        return;
    }
    let kinds = [
        ("plain", ""),
        ("container", "[sandbox]\ncontainers = true\n"),
    ];
    let hosts: Vec<Host> = kinds
        .iter()
        .map(|(_, extra)| container_host(extra).0)
        .collect();
    let mut figures = vec![(Vec::new(), Vec::new()); kinds.len()];
    for i in 0..10 {
        for (k, host) in hosts.iter().enumerate() {
            let mut job = host.job(1950 + i, "");
            assert_eq!(job.config(), 0);
            let t = Instant::now();
            assert_eq!(job.prepare(), 0, "{}", job.log);
            figures[k].0.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            assert_eq!(run_body(&mut job, "true"), 0, "{}", job.log);
            figures[k].1.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(job.cleanup(), 0, "{}", job.log);
        }
    }
    for ((what, _), (prep, run)) in kinds.iter().zip(figures) {
        println!(
            "{what}: prepare {:.1} ms, run {:.1} ms (median of 10)",
            median(prep),
            median(run)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The build both measurements run: `FROM scratch`, the host's static busybox, and a `RUN`
/// step, into a fresh vfs store (a container job's storage is new with every job).
const BUILD_CONTEXT: &str = r#"mkdir -p ctx
cp /bin/busybox ctx/busybox
cat > ctx/Containerfile <<'END'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox echo built > /built"]
END
"#;

/// Figures for the README: `p3-executor image build` of one image with a `RUN` step inside a
/// container job (its user namespace, vfs in its tree, chroot isolation) against the same
/// build run as root on the host (vfs in a fresh temp store, chroot isolation), interleaved,
/// median of 5; only the command is timed. `cargo test --test it measure_image_build --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn measure_image_build_in_a_container_job_against_root_on_the_host() {
    if !needs_root() || !require("buildah") {
        return;
    }
    let (host, _) = container_host("[sandbox]\ncontainers = true\n");
    let build = "p3-executor image build --builder=buildah --context=ctx --devstage=dev \
                 --image-name=localhost/p3-measure";
    let (mut in_job, mut on_host) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let (mut job, _) = prepared(&host, 1970 + i);
        payload_variables(&mut job, 0);
        let body = format!(
            "{BUILD_CONTEXT}s=$(date +%s%N)\n{build} >build.log 2>&1 || {{ cat build.log; exit 1; }}\ne=$(date +%s%N)\n\
             echo \"BUILD-MS $(( (e - s) / 1000000 ))\"\n"
        );
        assert_eq!(run_body(&mut job, &body), 0, "{}", job.log);
        let ms: f64 = job
            .log
            .lines()
            .find_map(|l| l.strip_prefix("BUILD-MS "))
            .unwrap_or_else(|| panic!("no BUILD-MS:\n{}", job.log))
            .trim()
            .parse()
            .unwrap();
        in_job.push(ms);
        assert_eq!(job.cleanup(), 0, "{}", job.log);

        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(BUILD_CONTEXT)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir.path())
            .env("CI_COMMIT_SHORT_SHA", "0123abcd")
            .args([
                "image",
                "build",
                "--builder=buildah",
                "--context=ctx",
                "--devstage=dev",
                "--image-name=localhost/p3-measure",
                "--build-opt=--isolation=chroot",
                "--builder-opt=--storage-driver=vfs",
            ])
            .arg(format!(
                "--builder-opt=--root={}",
                dir.path().join("s").display()
            ))
            .arg(format!(
                "--builder-opt=--runroot={}",
                dir.path().join("r").display()
            ));
        let t = Instant::now();
        let out = cmd.output().unwrap();
        on_host.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(out.status.success(), "{out:?}");
    }
    println!(
        "image build: {:.0} ms in a container job, {:.0} ms as root on the host (median of 5)",
        median(in_job),
        median(on_host)
    );
}

#[test]
fn check_reports_the_tooling_the_store_the_range_pool_and_the_auth_file() {
    if !needs_root() {
        return;
    }
    let (host, sub) = container_host("[sandbox]\ncontainers = true\n");
    let auth = host.root().join("auth.json");
    fs::write(
        &auth,
        r#"{"auths": {"registry.example.com": {"auth": "eDp5"}}}"#,
    )
    .unwrap();
    fs::set_permissions(&auth, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let text = fs::read_to_string(&host.config).unwrap();
    fs::write(
        &host.config,
        format!("{text}\n[images]\nauth_file = \"{}\"\n", auth.display()),
    )
    .unwrap();
    // One range leased, one quarantined (as a release that found a file of the range leaves it).
    let subids = host.root().join("state/subids");
    fs::create_dir_all(&subids).unwrap();
    fs::write(subids.join(sub[0].to_string()), "4242\n").unwrap();
    fs::write(
        subids.join((sub[0] + RANGE).to_string()),
        "quarantine: files owned by the range in the scrub dirs: /tmp/x\n",
    )
    .unwrap();
    let run = || {
        let out = host.exec(&["check"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run();
    assert_eq!(code, Some(1), "the open auth file is an error:\n{text}");
    for want in [
        "ok: image: jobs: ",
        "ok: container jobs: buildah",
        "image store",
        &format!(
            "ok: subordinate range pool job_subid_range [{}, {}]: 2 range(s), 1 leased, 1 quarantined",
            sub[0], sub[1]
        ),
        "warning: every subordinate range is leased or quarantined",
        &format!(
            "warning: subordinate range {}-{} is quarantined: files owned by the range",
            sub[0] + RANGE,
            sub[1]
        ),
        "others can read or change it",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    fs::set_permissions(&auth, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (_, text) = run();
    assert!(
        text.contains("root-only, credentials for registry.example.com"),
        "{text}"
    );
    assert!(!text.contains("others can read"), "{text}");
}

/// Prints the job's range: `MAP <inside> <outside> <count>;...`.
const MAP: &str = "echo \"MAP $(awk '{print $1, $2, $3}' /proc/self/uid_map | tr '\\n' ';')\"";

#[test]
fn a_file_left_by_a_subordinate_uid_quarantines_its_range_and_gc_purges_it() {
    if !needs_root() {
        return;
    }
    // A world-writable scrub dir the jobs can reach (the defaults are all private in a job).
    let scratch = tempfile::tempdir_in(p3_testkit::driver::scratch_dir()).unwrap();
    let scrub = scratch.path().join("scrub");
    fs::create_dir_all(&scrub).unwrap();
    fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    fs::set_permissions(&scrub, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    fs::write(scrub.join("roots"), "not the range's\n").unwrap();
    let (host, sub) = container_host(&format!(
        "[sandbox]\ncontainers = true\nscrub_dirs = [\"{}\"]\n",
        scrub.display()
    ));
    // The job leaves a tree owned by image uid 1000 (a uid of its range), with a link to a
    // host file in it that must never be followed.
    let (mut a, ua) = prepared(&host, 1911);
    let body = format!(
        "{MAP}\nmkdir -p {s}/left/deep/er && echo x > {s}/left/deep/er/f && ln -s /etc/passwd {s}/left/link && chown -R -h 1000:1000 {s}/left && echo LEFT",
        s = scrub.display()
    );
    assert_eq!(run_body(&mut a, &body), 0, "{}", a.log);
    assert!(a.log.contains("LEFT"), "{}", a.log);
    let first = range_of(&a.log, ua);
    let owner = fs::symlink_metadata(scrub.join("left/deep/er/f")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&owner),
        first + 999,
        "owned by the range on the host"
    );
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    // Cleanup quarantined that range (and only it).
    let held = leases(&host);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].starts_with(&format!("{first}: quarantine: files owned by the range")),
        "{held:?}"
    );
    // The next container job gets the other range, not the quarantined one.
    let (mut b, ub) = prepared(&host, 1912);
    assert_eq!(run_body(&mut b, MAP), 0, "{}", b.log);
    let other = range_of(&b.log, ub);
    assert_ne!(other, first);
    assert!((sub[0]..=sub[1]).contains(&other));
    assert_eq!(b.cleanup(), 0, "{}", b.log);
    // gc removes the range's files (never following the link) and frees the range.
    let out = host.exec(&["gc"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!scrub.join("left").exists(), "the range's tree is gone");
    assert_eq!(
        fs::read_to_string(scrub.join("roots")).unwrap(),
        "not the range's\n",
        "another owner's file stays"
    );
    assert!(fs::metadata("/etc/passwd").unwrap().len() > 0);
    assert!(leases(&host).is_empty(), "{:?}", leases(&host));
    // The range serves jobs again.
    let (mut c, uc) = prepared(&host, 1913);
    let (mut d, ud) = prepared(&host, 1914);
    assert_eq!(run_body(&mut c, MAP), 0, "{}", c.log);
    assert_eq!(run_body(&mut d, MAP), 0, "{}", d.log);
    let mut got = [range_of(&c.log, uc), range_of(&d.log, ud)];
    got.sort();
    assert_eq!(got, [sub[0], sub[0] + RANGE]);
    assert_eq!(c.cleanup(), 0, "{}", c.log);
    assert_eq!(d.cleanup(), 0, "{}", d.log);
}
