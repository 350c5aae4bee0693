//! Issue 24 for `p3-executor s3`, on the host and as jobs through the runner calls inside the
//! sandbox: a stalled endpoint fails within its bound with every retry in the log, `-` is
//! stdin/stdout, a private CA works through AWS_CA_BUNDLE, and sync sees an edit made within
//! the second of the upload.
//!
//! Needs: `npm install -g s3rver@3`, `pip install awscli 'moto[server]'`, openssl; root for
//! the jobs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common;
use crate::isolation::{needs_root, prepared, run_body};
use crate::s3::{MIB, data, ok, p, run, write};
use p3_testkit::driver::{Host, JobResult};
use p3_testkit::s3::{S3Server, require_tool};

/// How a fake endpoint misbehaves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stall {
    /// Accepts connections and never answers.
    Silent,
    /// Reads the request, answers the status line, headers and a few body bytes, then stalls.
    AfterHeaders,
}

/// A loopback endpoint that stalls; returns its URL. Connections are held until the process
/// ends (the listener thread is detached).
pub(crate) fn stalling_endpoint(kind: Stall) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Stall::AfterHeaders = kind {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                let mut buf = [0u8; 65536];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nETag: \"0123456789abcdef0123456789abcdef\"\r\nLast-Modified: Sun, 06 Dec 2026 08:00:00 GMT\r\nContent-Length: 1000\r\n\r\n<?xml",
                );
            }
            held.push(conn);
        }
    });
    url
}

/// The options every stall test runs with: short timeouts, three attempts.
const FAST: [&str; 6] = [
    "--read-timeout",
    "1",
    "--connect-timeout",
    "1",
    "--max-attempts",
    "3",
];

/// What a run against a stalled endpoint must show.
fn assert_bounded(what: &str, code: i32, stderr: &str, elapsed: Duration) {
    assert_eq!(code, 1, "{what}: {stderr}");
    assert!(
        elapsed < Duration::from_secs(25),
        "{what} took {elapsed:?}: {stderr}"
    );
    assert!(
        stderr.contains("retry: attempt 2/3") && stderr.contains("retry: attempt 3/3"),
        "{what}: every retry in the log: {stderr}"
    );
    assert!(
        stderr.contains("gave up after 3 attempts in "),
        "{what}: the final error names the attempts and the time: {stderr}"
    );
    assert!(!stderr.contains("progress: 0/0"), "{what}: {stderr}");
}

#[test]
fn a_stalled_endpoint_fails_ls_cp_and_sync_within_the_bound_and_logs_each_retry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up.txt");
    write(&file, b"payload");
    let tree = dir.path().join("tree");
    write(&tree.join("a.txt"), b"a");
    let srv = S3Server::start(); // for its environment (credentials, no AWS files)
    let mut runs = Vec::new();
    for kind in [Stall::Silent, Stall::AfterHeaders] {
        let url = stalling_endpoint(kind);
        let down = dir.path().join(format!("down-{kind:?}.txt"));
        let cmds: Vec<(&str, Vec<String>)> = vec![
            ("ls", vec!["ls".into(), "s3://stall-bkt/x/".into()]),
            (
                "cp up",
                vec!["cp".into(), p(&file).into(), "s3://stall-bkt/k".into()],
            ),
            (
                "cp down",
                vec!["cp".into(), "s3://stall-bkt/k".into(), p(&down).into()],
            ),
            (
                "sync",
                vec!["sync".into(), p(&tree).into(), "s3://stall-bkt/t".into()],
            ),
        ];
        for (name, args) in cmds {
            let mut cmd = srv.p3(&["s3"]);
            cmd.args(&args)
                .args(FAST)
                .args(["--endpoint-url", &url])
                .env("P3_S3_PROGRESS_INTERVAL", "0.2");
            let what = format!("{name} against {kind:?}");
            runs.push(std::thread::spawn(move || {
                let start = Instant::now();
                let r = run(cmd);
                (what, r.code, r.stderr, start.elapsed())
            }));
        }
    }
    for h in runs {
        let (what, code, stderr, elapsed) = h.join().unwrap();
        assert_bounded(&what, code, &stderr, elapsed);
        assert!(
            stderr.contains("waiting: no data for"),
            "{what}: one line says what it waits for: {stderr}"
        );
    }
}

#[test]
fn the_whole_command_deadline_stops_a_stalled_transfer() {
    let srv = S3Server::start();
    let url = stalling_endpoint(Stall::Silent);
    let mut cmd = srv.p3(&["s3", "ls", "s3://stall-bkt/", "--endpoint-url", &url]);
    cmd.args(["--read-timeout", "30", "--timeout", "2"]);
    let start = Instant::now();
    let r = run(cmd);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        r.stderr.contains("stopped after 2s (--timeout"),
        "{}",
        r.stderr
    );
}

/// `p3-executor` and `/usr/bin` on the jobs' PATH.
pub(crate) fn steps_host() -> Host {
    let host = common::host("");
    let bin_dir = common::exe().parent().unwrap().to_path_buf();
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        format!("job_path = \"{}:/usr/bin:/bin\"\n{text}", bin_dir.display()),
    )
    .unwrap();
    host
}

/// A job with S3 credentials for `srv` in its variables (as a project would set them).
fn s3_job(host: &Host, id: u64, srv_endpoint: &str, script: &str) -> p3_testkit::driver::Job {
    host.job(id, script)
        .var("AWS_ACCESS_KEY_ID", "S3RVER")
        .var("AWS_SECRET_ACCESS_KEY", "S3RVER")
        .var("AWS_REGION", "us-east-1")
        .var("AWS_ENDPOINT_URL_S3", srv_endpoint)
}

#[test]
fn in_a_job_a_stalled_endpoint_fails_within_the_bound_with_each_retry_logged() {
    if !needs_root() {
        return;
    }
    let host = steps_host();
    let silent = stalling_endpoint(Stall::Silent);
    let stalls = stalling_endpoint(Stall::AfterHeaders);
    let fast = FAST.join(" ");
    let mut script = String::from("echo payload > up.txt\nmkdir -p tree && echo a > tree/a.txt\n");
    for (name, url) in [("silent", &silent), ("headers", &stalls)] {
        for (what, args) in [
            ("ls", "ls s3://stall-bkt/x/".to_string()),
            ("cp-up", "cp up.txt s3://stall-bkt/k".to_string()),
            ("cp-down", "cp s3://stall-bkt/k down.txt".to_string()),
            ("sync", "sync tree s3://stall-bkt/t".to_string()),
        ] {
            script.push_str(&format!(
                "s=$(date +%s); rc=0; p3-executor s3 {args} {fast} --endpoint-url {url} 2>err.txt || rc=$?\n\
                 echo \"RESULT {name}-{what} rc=$rc secs=$(( $(date +%s) - s ))\"\n\
                 echo \"RETRIES {name}-{what} $(grep -c '^retry: attempt [23]/3' err.txt) $(grep -c 'gave up after 3 attempts' err.txt) $(grep -c 'progress: 0/0' err.txt)\"\n"
            ));
        }
    }
    let mut job = s3_job(&host, 24_101, &silent, &script).var("P3_S3_PROGRESS_INTERVAL", "0.2");
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    for name in ["silent", "headers"] {
        for what in ["ls", "cp-up", "cp-down", "sync"] {
            let tag = format!("{name}-{what}");
            let result = job
                .log
                .lines()
                .find(|l| l.starts_with(&format!("RESULT {tag} ")))
                .unwrap_or_else(|| panic!("{tag}: {}", job.log));
            let secs: u64 = result.rsplit("secs=").next().unwrap().parse().unwrap();
            assert!(result.contains(" rc=1 "), "{result}\n{}", job.log);
            assert!(secs < 25, "{result}");
            assert!(
                job.log.contains(&format!("RETRIES {tag} 2 1 0")),
                "{tag}: two retries logged, one final error naming the attempts, no 0/0 line:\n{}",
                job.log
            );
        }
    }
}

/// `cp - s3://...` from a 100 MiB pipe and `cp s3://... -` back, against s3rver.
#[test]
fn dash_streams_stdin_up_and_the_object_to_stdout_and_leaves_a_file_named_dash_alone() {
    let srv = S3Server::start();
    srv.create_bucket("pipe-bkt");
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("-"), b"a local file named -").unwrap();
    let body = data(100 * MIB, 24);

    let mut cmd = srv.p3(&["s3", "cp", "-", "s3://pipe-bkt/big.bin"]);
    cmd.current_dir(cwd.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = body.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cmd = srv.p3(&["s3", "cp", "s3://pipe-bkt/big.bin", "-"]);
    cmd.current_dir(cwd.path());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout.len(),
        body.len(),
        "nothing but the object on stdout"
    );
    assert!(out.stdout == body, "the bytes differ");
    assert_eq!(
        std::fs::read(cwd.path().join("-")).unwrap(),
        b"a local file named -"
    );

    // A small stream is one PUT; ./- is the file.
    let mut cmd = srv.p3(&["s3", "cp", "-", "s3://pipe-bkt/small.txt"]);
    cmd.current_dir(cwd.path()).stdin(Stdio::piped());
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut cmd = srv.p3(&["s3", "cp", "./-", "s3://pipe-bkt/file.txt"]);
    cmd.current_dir(cwd.path());
    ok(cmd);
    let mut cmd = srv.p3(&["s3", "cp", "s3://pipe-bkt/small.txt", "-"]);
    cmd.current_dir(cwd.path());
    assert_eq!(ok(cmd).stdout, "from stdin");
    let mut cmd = srv.p3(&["s3", "cp", "s3://pipe-bkt/file.txt", "-"]);
    cmd.current_dir(cwd.path());
    assert_eq!(ok(cmd).stdout, "a local file named -");
    assert_eq!(
        std::fs::read(cwd.path().join("-")).unwrap(),
        b"a local file named -"
    );
}

#[test]
fn in_a_job_dash_pipes_through_tar_and_sha256sum() {
    if !needs_root() {
        return;
    }
    let srv = S3Server::start();
    srv.create_bucket("pipe-bkt");
    let host = steps_host();
    let script = "echo untouched > ./-\n\
        head -c 104857600 /dev/urandom > big.bin\n\
        sha256sum < big.bin > want.txt\n\
        cat big.bin | p3-executor s3 cp - s3://pipe-bkt/big.bin\n\
        p3-executor s3 cp s3://pipe-bkt/big.bin - | sha256sum > got.txt\n\
        cmp want.txt got.txt && echo SAME-SHA256\n\
        mkdir -p t && echo inside > t/f.txt && tar c t | p3-executor s3 cp - s3://pipe-bkt/t.tar\n\
        mkdir out && p3-executor s3 cp s3://pipe-bkt/t.tar - | tar x -C out\n\
        echo \"TAR $(cat out/t/f.txt)\"\n\
        echo \"DASH $(cat ./-)\"\n\
        rc=0; p3-executor s3 ls s3://pipe-bkt/nothing-here/ > empty.txt 2>&1 || rc=$?\n\
        echo \"EMPTY rc=$rc bytes=$(wc -c < empty.txt)\"";
    let mut job = s3_job(&host, 24_102, &srv.endpoint(), script);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(job.log.contains("SAME-SHA256"), "{}", job.log);
    assert!(job.log.contains("TAR inside"), "{}", job.log);
    assert!(job.log.contains("DASH untouched"), "{}", job.log);
    // An empty prefix is an empty answer: nothing printed, exit 0.
    assert!(job.log.contains("EMPTY rc=0 bytes=0"), "{}", job.log);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
pub(crate) struct PrivateCa {
    pub(crate) dir: tempfile::TempDir,
}

impl PrivateCa {
    pub(crate) fn new() -> Self {
        let openssl = require_tool("openssl", "apt-get install openssl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sh = |args: &[&str]| {
            let out = Command::new(&openssl)
                .current_dir(d)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=p3 test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        sh(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        sh(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        Self { dir }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// moto behind TLS with the private CA's server certificate.
pub(crate) struct TlsMoto {
    child: std::process::Child,
    pub(crate) url: String,
    _home: tempfile::TempDir,
}

impl TlsMoto {
    pub(crate) fn start(ca: &PrivateCa) -> Self {
        let bin = require_tool("moto_server", "pip install 'moto[server]'");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c"])
            .arg(ca.file("server.pem"))
            .arg("-k")
            .arg(ca.file("server.key"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("https://127.0.0.1:{port}"),
            _home: home,
        }
    }
}

impl Drop for TlsMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_private_ca_is_trusted_through_aws_ca_bundle_the_flag_and_the_profile() {
    let ca = PrivateCa::new();
    let moto = TlsMoto::start(&ca);
    let srv = S3Server::start(); // environment only
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    write(&file, b"over tls");
    let step = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = srv.p3(&["s3"]);
        cmd.args(extra).args(["--endpoint-url", &moto.url]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd)
    };
    // Without the CA: a clear failure naming the CAs used and what to set.
    let r = step(&["ls", "s3://tls-bkt/"], &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not trusted by the system's CAs")
            && r.stderr.contains("set AWS_CA_BUNDLE"),
        "{}",
        r.stderr
    );
    let ca_path = p(&ca.ca()).to_string();
    // moto needs the bucket: made by the AWS CLI with the same bundle.
    let mut aws = Command::new(require_tool("aws", "pip install awscli"));
    srv.env(&mut aws);
    let out = aws
        .args(["--endpoint-url", &moto.url, "--ca-bundle", &ca_path])
        .args(["s3api", "create-bucket", "--bucket", "tls-bkt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = step(
        &["cp", p(&file), "s3://tls-bkt/f.txt"],
        &[("AWS_CA_BUNDLE", &ca_path)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = step(&["ls", "s3://tls-bkt/", "--ca-bundle", &ca_path], &[]);
    assert!(r.stdout.contains(" f.txt"), "{} {}", r.stdout, r.stderr);
    let config = dir.path().join("aws-config");
    std::fs::write(&config, format!("[default]\nca_bundle = {ca_path}\n")).unwrap();
    let r = step(&["ls", "s3://tls-bkt/"], &[("AWS_CONFIG_FILE", p(&config))]);
    assert!(r.stdout.contains(" f.txt"), "{} {}", r.stdout, r.stderr);
    // A wrong bundle names itself.
    let other = PrivateCa::new();
    let r = step(
        &["ls", "s3://tls-bkt/"],
        &[("AWS_CA_BUNDLE", p(&other.ca()))],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "not trusted by the CA bundle {} (from AWS_CA_BUNDLE)",
            p(&other.ca())
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn in_a_job_a_private_ca_works_with_aws_ca_bundle_and_fails_clearly_without() {
    if !needs_root() {
        return;
    }
    let ca = PrivateCa::new();
    let moto = TlsMoto::start(&ca);
    let pem = std::fs::read_to_string(ca.ca()).unwrap();
    let mut aws = Command::new(require_tool("aws", "pip install awscli"));
    S3Server::start().env(&mut aws);
    let out = aws
        .args(["--endpoint-url", &moto.url, "--ca-bundle", p(&ca.ca())])
        .args(["s3api", "create-bucket", "--bucket", "tls-bkt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let host = steps_host();
    let script = format!(
        "cat > ca.pem <<'PEM'\n{pem}PEM\n\
         echo over-tls > f.txt\n\
         rc=0; p3-executor s3 cp f.txt s3://tls-bkt/f.txt || rc=$?\n\
         echo \"WITHOUT rc=$rc\"\n\
         AWS_CA_BUNDLE=$PWD/ca.pem p3-executor s3 cp f.txt s3://tls-bkt/f.txt\n\
         AWS_CA_BUNDLE=$PWD/ca.pem p3-executor s3 cp s3://tls-bkt/f.txt -\n"
    );
    let mut job = s3_job(&host, 24_103, &moto.url, &script);
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    assert!(job.log.contains("WITHOUT rc=1"), "{}", job.log);
    assert!(
        job.log.contains("not trusted by the system's CAs"),
        "{}",
        job.log
    );
    assert!(
        job.log.contains("upload: f.txt to s3://tls-bkt/f.txt"),
        "{}",
        job.log
    );
    assert!(job.log.lines().any(|l| l == "over-tls"), "{}", job.log);
}

/// The object's LastModified as a SystemTime (the AWS CLI prints it with its sub-seconds).
fn last_modified(srv: &S3Server, bucket: &str, key: &str) -> SystemTime {
    let text = srv.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        bucket,
        "--prefix",
        key,
        "--query",
        "Contents[0].LastModified",
        "--output",
        "text",
    ]);
    let t = chrono::DateTime::parse_from_rfc3339(text.trim()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::new(t.timestamp() as u64, t.timestamp_subsec_nanos())
}

/// A local mtime later than `uploaded` but within the same whole second.
fn same_second_after(uploaded: SystemTime) -> SystemTime {
    let since = uploaded.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let bump = Duration::from_micros(500).min(Duration::from_nanos(
        999_999_999 - u64::from(since.subsec_nanos()),
    ));
    uploaded + bump
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn sync_uploads_a_same_size_edit_made_within_the_second_of_the_upload() {
    let srv = S3Server::start();
    srv.create_bucket("edit-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("d");
    write(&local.join("f.txt"), b"aaaa");
    set_mtime(
        &local.join("f.txt"),
        SystemTime::now() - Duration::from_secs(60),
    );
    ok(srv.p3(&["s3", "sync", p(&local), "s3://edit-bkt/p"]));
    let uploaded = last_modified(&srv, "edit-bkt", "p/f.txt");
    write(&local.join("f.txt"), b"bbbb");
    set_mtime(&local.join("f.txt"), same_second_after(uploaded));
    let r = ok(srv.p3(&["s3", "sync", p(&local), "s3://edit-bkt/p"]));
    assert!(
        r.stdout.contains("upload: "),
        "the edit was skipped: {}",
        r.stdout
    );
    let back = srv.aws_ok(&["s3", "cp", "s3://edit-bkt/p/f.txt", "-"]);
    assert_eq!(back, "bbbb");
    // --size-only does not look at times; --exact-timestamps downloads any difference.
    write(&local.join("f.txt"), b"cccc");
    let r = ok(srv.p3(&["s3", "sync", "--size-only", p(&local), "s3://edit-bkt/p"]));
    assert_eq!(r.stdout, "");
    let down = dir.path().join("down");
    ok(srv.p3(&["s3", "sync", "s3://edit-bkt/p", p(&down)]));
    set_mtime(
        &down.join("f.txt"),
        SystemTime::now() + Duration::from_secs(60),
    );
    let r = ok(srv.p3(&["s3", "sync", "s3://edit-bkt/p", p(&down)]));
    assert_eq!(r.stdout, "", "a newer local file is kept without the flag");
    let r = ok(srv.p3(&[
        "s3",
        "sync",
        "--exact-timestamps",
        "s3://edit-bkt/p",
        p(&down),
    ]));
    assert!(r.stdout.contains("download: "), "{}", r.stdout);
}

/// Files written just before a sync, in the same second as their upload: S3's whole-second
/// LastModified makes them look newer than their objects, but the mtime the upload recorded
/// rules that out, so the next sync transfers nothing.
#[test]
fn sync_right_after_writing_transfers_nothing_the_second_time() {
    let srv = S3Server::start();
    srv.create_bucket("fresh-bkt");
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        // Start at the beginning of a second, so the upload most likely shares it.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        std::thread::sleep(Duration::from_nanos(
            1_000_000_000 - u64::from(now.subsec_nanos()) + 10_000_000,
        ));
        let local = dir.path().join(format!("r{round}"));
        for i in 0..20 {
            write(
                &local.join(format!("f{i}.txt")),
                format!("file {i}").as_bytes(),
            );
        }
        let dst = format!("s3://fresh-bkt/r{round}");
        let first = ok(srv.p3(&["s3", "sync", p(&local), &dst]));
        assert_eq!(first.stdout.lines().count(), 20, "{}", first.stdout);
        let second = ok(srv.p3(&["s3", "sync", p(&local), &dst]));
        assert_eq!(second.stdout, "", "round {round}: nothing changed");
    }
}

#[test]
fn in_a_job_sync_uploads_a_same_size_edit_made_within_the_second_of_the_upload() {
    if !needs_root() {
        return;
    }
    let srv = S3Server::start();
    srv.create_bucket("edit-bkt");
    let host = steps_host();
    let (job, _uid) = prepared(&host, 24_104);
    let mut job = job;
    job.variables.extend(
        [
            ("AWS_ACCESS_KEY_ID", "S3RVER"),
            ("AWS_SECRET_ACCESS_KEY", "S3RVER"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_S3", srv.endpoint().as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let code = run_body(
        &mut job,
        "mkdir -p d && printf aaaa > d/f.txt && touch -d '-1 min' d/f.txt\np3-executor s3 sync d s3://edit-bkt/p",
    );
    assert_eq!(code, 0, "{}", job.log);
    let t = same_second_after(last_modified(&srv, "edit-bkt", "p/f.txt"));
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let stamp = format!("@{}.{:09}", since.as_secs(), since.subsec_nanos());
    let code = run_body(
        &mut job,
        &format!(
            "printf bbbb > d/f.txt && touch -d '{stamp}' d/f.txt\np3-executor s3 sync d s3://edit-bkt/p | sed 's/^/SYNC2 /'"
        ),
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(job.log.contains("SYNC2 upload: "), "{}", job.log);
    // Written and synced within one second, then synced again: nothing to do.
    let code = run_body(
        &mut job,
        "mkdir -p fresh && for i in 1 2 3 4 5; do echo $i > fresh/$i.txt; done\n\
         p3-executor s3 sync fresh s3://edit-bkt/fresh > /dev/null\n\
         p3-executor s3 sync fresh s3://edit-bkt/fresh | sed 's/^/SYNC3 /'",
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(!job.log.contains("SYNC3 "), "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert_eq!(
        srv.aws_ok(&["s3", "cp", "s3://edit-bkt/p/f.txt", "-"]),
        "bbbb"
    );
}
