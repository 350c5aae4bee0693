//! `p3-executor s3` against real S3-compatible servers (s3rver; moto where the test needs
//! multipart listing or real multipart ETags), and the per-job credential files end to end.
//!
//! Needs: `npm install -g s3rver@3`, `pip install awscli 'moto[server]'`.

use p3_testkit::s3 as s3srv;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p3_executor::config::{S3Account, S3Source};
use p3_executor::credentials::aws;
use s3srv::S3Server;

pub(crate) const MIB: usize = 1024 * 1024;

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) fn run(mut cmd: Command) -> Run {
    let out = cmd.output().expect("run p3-executor");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn ok(cmd: Command) -> Run {
    let r = run(cmd);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

/// Deterministic pseudo-random bytes (xorshift), so a corruption cannot hide in zeros.
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn lines_starting(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

/// Keys under `s3://bucket/prefix`, listed with the AWS CLI.
pub(crate) fn keys(srv: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    let out = srv.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        bucket,
        "--prefix",
        prefix,
        "--query",
        "Contents[].Key",
        "--output",
        "json",
    ]);
    let v: Option<Vec<String>> = serde_json::from_str(out.trim()).unwrap_or(None);
    let mut v = v.unwrap_or_default();
    v.sort();
    v
}

#[test]
fn cp_round_trip_and_keys_with_special_characters() {
    let srv = S3Server::start();
    srv.create_bucket("rt-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("input.bin");
    let body = data(300_000, 1);
    write(&src, &body);
    let key = "s3://rt-bkt/odd names/a b+c%20%ü€.bin";

    let up = ok(srv.p3(&["s3", "cp", p(&src), key]));
    assert!(
        up.stdout
            .contains(&format!("upload: {} to {key}", src.display())),
        "{}",
        up.stdout
    );
    // The AWS CLI sees the same key with the same bytes.
    let via_aws = dir.path().join("via-aws.bin");
    srv.aws_ok(&["s3", "cp", key, p(&via_aws), "--only-show-errors"]);
    assert_eq!(std::fs::read(&via_aws).unwrap(), body);

    // Download into a directory (trailing slash): the key's basename is used.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    ok(srv.p3(&["s3", "cp", key, &format!("{}/", out_dir.display())]));
    assert_eq!(
        std::fs::read(out_dir.join("a b+c%20%ü€.bin")).unwrap(),
        body
    );
    // Nothing else (no temporary files) is left in the destination directory.
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);

    // Upload to a "directory" key: the file name is appended.
    ok(srv.p3(&["s3", "cp", p(&src), "s3://rt-bkt/into/"]));
    assert_eq!(keys(&srv, "rt-bkt", "into/"), ["into/input.bin"]);
}

#[test]
fn multipart_upload_and_ranged_download_larger_than_the_part_size() {
    // moto: real multipart ETags (`<md5>-<parts>`) and a 5 MiB minimum part size, like S3.
    let srv = S3Server::start_moto();
    srv.create_bucket("mp-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let body = data(12 * MIB + 12345, 2);
    write(&src, &body);

    ok(srv.p3(&[
        "s3",
        "cp",
        p(&src),
        "s3://mp-bkt/big.bin",
        "--part-size",
        "5MiB",
    ]));
    let head = srv.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "mp-bkt",
        "--key",
        "big.bin",
    ]);
    assert!(
        head.contains("-3\\\""),
        "three parts expected in the ETag: {head}"
    );

    // Ranged parallel download (12 MiB > 5 MiB parts) reassembles the same bytes.
    let back = dir.path().join("back.bin");
    ok(srv.p3(&[
        "s3",
        "cp",
        "s3://mp-bkt/big.bin",
        p(&back),
        "--part-size",
        "5MiB",
    ]));
    assert_eq!(std::fs::read(&back).unwrap(), body);
    // And the AWS CLI reads our multipart object byte-identical.
    let via_aws = dir.path().join("via-aws.bin");
    srv.aws_ok(&[
        "s3",
        "cp",
        "s3://mp-bkt/big.bin",
        p(&via_aws),
        "--only-show-errors",
    ]);
    assert_eq!(std::fs::read(&via_aws).unwrap(), body);
    let uploads = srv.aws_ok(&["s3api", "list-multipart-uploads", "--bucket", "mp-bkt"]);
    assert!(!uploads.contains("UploadId"), "{uploads}");
}

#[test]
fn interrupted_upload_leaves_no_object_and_no_multipart_upload() {
    let srv = S3Server::start_moto();
    srv.create_bucket("int-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("huge.bin");
    // Sparse: large enough to take seconds at one 5 MiB part at a time, instant to create.
    std::fs::File::create(&src)
        .unwrap()
        .set_len(400 * MIB as u64)
        .unwrap();

    let mut cmd = srv.p3(&[
        "s3",
        "cp",
        p(&src),
        "s3://int-bkt/huge.bin",
        "--part-size",
        "5MiB",
        "--max-memory",
        "5MiB",
    ]);
    cmd.env("P3_S3_PROGRESS_INTERVAL", "0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Wait until parts are on the server (progress reports bytes), then interrupt.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next()
            .expect("stderr closed before progress")
            .unwrap();
        if line.starts_with("progress: 0/1 files, ") && !line.contains(", 0 Bytes/") {
            break;
        }
        assert!(Instant::now() < deadline, "no progress within 60 s");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("aborted multipart upload")),
        "{rest:?}"
    );

    let uploads = srv.aws_ok(&["s3api", "list-multipart-uploads", "--bucket", "int-bkt"]);
    assert!(
        !uploads.contains("UploadId"),
        "dangling multipart upload: {uploads}"
    );
    assert!(keys(&srv, "int-bkt", "").is_empty());
}

#[test]
fn interrupted_download_leaves_no_file_behind() {
    let srv = S3Server::start();
    srv.create_bucket("intd-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(300 * MIB as u64)
        .unwrap();
    ok(srv.p3(&["s3", "cp", p(&src), "s3://intd-bkt/big.bin", "--quiet"]));
    std::fs::remove_file(&src).unwrap();

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut cmd = srv.p3(&[
        "s3",
        "cp",
        "s3://intd-bkt/big.bin",
        p(&out.join("big.bin")),
        "--part-size",
        "5MiB",
        "--max-memory",
        "5MiB",
    ]);
    cmd.env("P3_S3_PROGRESS_INTERVAL", "0.05")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("stderr closed before progress")
            .unwrap();
        if line.starts_with("progress: 0/1 files, ") && !line.contains(", 0 Bytes/") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest:?}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn tree(root: &Path) {
    write(&root.join("a.txt"), b"alpha");
    write(&root.join("b.bin"), &data(70_000, 3));
    write(&root.join("sub/c.txt"), b"gamma");
    write(&root.join("sub/deeper/d.log"), b"delta");
    write(&root.join("with space/e+%.txt"), b"epsilon");
}

#[test]
fn sync_twice_transfers_nothing_the_second_time_in_both_directions() {
    let srv = S3Server::start();
    srv.create_bucket("sync-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);

    let first = ok(srv.p3(&["s3", "sync", p(&local), "s3://sync-bkt/data"]));
    assert_eq!(
        lines_starting(&first.stdout, "upload: "),
        5,
        "{}",
        first.stdout
    );
    let second = ok(srv.p3(&["s3", "sync", p(&local), "s3://sync-bkt/data"]));
    assert_eq!(second.stdout, "", "second sync must transfer nothing");

    // A changed file (new size) is uploaded again, alone.
    write(&local.join("a.txt"), b"alpha, changed");
    let third = ok(srv.p3(&["s3", "sync", p(&local), "s3://sync-bkt/data/"]));
    assert_eq!(third.stdout.lines().count(), 1, "{}", third.stdout);
    assert!(third.stdout.contains("s3://sync-bkt/data/a.txt"));

    let down = dir.path().join("down");
    let first = ok(srv.p3(&["s3", "sync", "s3://sync-bkt/data", p(&down)]));
    assert_eq!(
        lines_starting(&first.stdout, "download: "),
        5,
        "{}",
        first.stdout
    );
    assert_eq!(
        std::fs::read(down.join("with space/e+%.txt")).unwrap(),
        b"epsilon"
    );
    assert_eq!(
        std::fs::read(down.join("a.txt")).unwrap(),
        b"alpha, changed"
    );
    let second = ok(srv.p3(&["s3", "sync", "s3://sync-bkt/data", p(&down)]));
    assert_eq!(
        second.stdout, "",
        "second download sync must transfer nothing"
    );
}

#[test]
fn sync_delete_removes_what_the_source_no_longer_has() {
    let srv = S3Server::start();
    srv.create_bucket("del-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);
    ok(srv.p3(&["s3", "sync", p(&local), "s3://del-bkt/d"]));
    std::fs::remove_file(local.join("sub/c.txt")).unwrap();

    // Without --delete the extra object stays.
    ok(srv.p3(&["s3", "sync", p(&local), "s3://del-bkt/d"]));
    assert!(keys(&srv, "del-bkt", "d/").contains(&"d/sub/c.txt".to_string()));
    // Dry run says what it would delete and deletes nothing.
    let dry = ok(srv.p3(&[
        "s3",
        "sync",
        p(&local),
        "s3://del-bkt/d",
        "--delete",
        "--dryrun",
    ]));
    assert!(
        dry.stdout
            .contains("(dryrun) delete: s3://del-bkt/d/sub/c.txt"),
        "{}",
        dry.stdout
    );
    assert!(keys(&srv, "del-bkt", "d/").contains(&"d/sub/c.txt".to_string()));
    // Excluded paths are not deleted.
    let r = ok(srv.p3(&[
        "s3",
        "sync",
        p(&local),
        "s3://del-bkt/d",
        "--delete",
        "--exclude",
        "sub/*",
    ]));
    assert!(!r.stdout.contains("delete:"), "{}", r.stdout);
    let r = ok(srv.p3(&["s3", "sync", p(&local), "s3://del-bkt/d", "--delete"]));
    assert_eq!(r.stdout.trim(), "delete: s3://del-bkt/d/sub/c.txt");
    assert_eq!(keys(&srv, "del-bkt", "d/").len(), 4);

    // S3 → local: a local file the prefix does not have is removed.
    let down = dir.path().join("down");
    ok(srv.p3(&["s3", "sync", "s3://del-bkt/d", p(&down)]));
    write(&down.join("stray.txt"), b"stray");
    let r = ok(srv.p3(&["s3", "sync", "s3://del-bkt/d", p(&down), "--delete"]));
    assert!(r.stdout.contains("delete: "), "{}", r.stdout);
    assert!(!down.join("stray.txt").exists());
    assert!(down.join("a.txt").exists());
}

#[test]
fn sync_checksum_compares_content_not_times() {
    let srv = S3Server::start();
    srv.create_bucket("sum-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);
    ok(srv.p3(&["s3", "sync", p(&local), "s3://sum-bkt/x"]));

    // Same content, newer mtime: time-based sync copies, checksum sync does not.
    let future = std::time::SystemTime::now() + Duration::from_secs(3600);
    let f = std::fs::File::options()
        .write(true)
        .open(local.join("a.txt"))
        .unwrap();
    f.set_modified(future).unwrap();
    let r = ok(srv.p3(&[
        "s3",
        "sync",
        p(&local),
        "s3://sum-bkt/x",
        "--checksum",
        "--dryrun",
    ]));
    assert_eq!(r.stdout, "", "{}", r.stdout);
    let r = ok(srv.p3(&["s3", "sync", p(&local), "s3://sum-bkt/x", "--dryrun"]));
    assert!(r.stdout.contains("a.txt"), "{}", r.stdout);

    // Different content, same size, old mtime: only checksum sync notices.
    write(&local.join("sub/c.txt"), b"GAMMA");
    let past = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let f = std::fs::File::options()
        .write(true)
        .open(local.join("sub/c.txt"))
        .unwrap();
    f.set_modified(past).unwrap();
    let r = ok(srv.p3(&["s3", "sync", p(&local), "s3://sum-bkt/x", "--dryrun"]));
    assert!(!r.stdout.contains("c.txt"), "{}", r.stdout);
    let r = ok(srv.p3(&["s3", "sync", p(&local), "s3://sum-bkt/x", "--checksum"]));
    assert_eq!(
        r.stdout.trim(),
        format!(
            "upload: {} to s3://sum-bkt/x/sub/c.txt",
            local.join("sub/c.txt").display()
        )
    );
}

#[test]
fn include_exclude_follow_the_aws_cli_order_rules() {
    let srv = S3Server::start();
    srv.create_bucket("flt-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);

    ok(srv.p3(&[
        "s3",
        "cp",
        "--recursive",
        p(&local),
        "s3://flt-bkt/t",
        "--exclude",
        "*",
        "--include",
        "*.txt",
    ]));
    assert_eq!(
        keys(&srv, "flt-bkt", "t/"),
        ["t/a.txt", "t/sub/c.txt", "t/with space/e+%.txt"]
    );
    // Reversed: the later exclude wins over everything.
    let r = ok(srv.p3(&[
        "s3",
        "cp",
        "--recursive",
        p(&local),
        "s3://flt-bkt/u",
        "--include",
        "*.txt",
        "--exclude",
        "*",
    ]));
    assert_eq!(r.stdout, "");
    assert!(keys(&srv, "flt-bkt", "u/").is_empty());

    // Filters apply to downloads too (relative to the source prefix).
    let down = dir.path().join("down");
    ok(srv.p3(&[
        "s3",
        "cp",
        "--recursive",
        "s3://flt-bkt/t",
        p(&down),
        "--exclude",
        "sub/*",
    ]));
    assert!(down.join("a.txt").exists());
    assert!(down.join("with space/e+%.txt").exists());
    assert!(!down.join("sub").exists());
}

#[test]
fn dryrun_changes_nothing() {
    let srv = S3Server::start();
    srv.create_bucket("dry-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);

    let r = ok(srv.p3(&[
        "s3",
        "cp",
        "--recursive",
        "--dryrun",
        p(&local),
        "s3://dry-bkt/p",
    ]));
    assert_eq!(
        lines_starting(&r.stdout, "(dryrun) upload: "),
        5,
        "{}",
        r.stdout
    );
    assert!(keys(&srv, "dry-bkt", "").is_empty());
    let r = ok(srv.p3(&[
        "s3",
        "cp",
        "--dryrun",
        p(&local.join("a.txt")),
        "s3://dry-bkt/a",
    ]));
    assert!(r.stdout.starts_with("(dryrun) upload: "), "{}", r.stdout);
    assert!(keys(&srv, "dry-bkt", "").is_empty());

    ok(srv.p3(&["s3", "cp", "--recursive", p(&local), "s3://dry-bkt/p"]));
    let r = ok(srv.p3(&["s3", "rm", "--recursive", "--dryrun", "s3://dry-bkt/p"]));
    assert_eq!(
        lines_starting(&r.stdout, "(dryrun) delete: s3://dry-bkt/p/"),
        5,
        "{}",
        r.stdout
    );
    let down = dir.path().join("down");
    let r = ok(srv.p3(&["s3", "sync", "--dryrun", "s3://dry-bkt/p", p(&down)]));
    assert_eq!(lines_starting(&r.stdout, "(dryrun) download: "), 5);
    assert!(!down.exists());
    assert_eq!(keys(&srv, "dry-bkt", "").len(), 5);
}

#[test]
fn ls_lists_buckets_prefixes_objects_and_summaries() {
    let srv = S3Server::start();
    srv.create_bucket("ls-bkt");
    srv.create_bucket("ls-other");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);
    ok(srv.p3(&["s3", "cp", "--recursive", p(&local), "s3://ls-bkt/top"]));

    let buckets = ok(srv.p3(&["s3", "ls"])).stdout;
    assert!(buckets.lines().any(|l| l.ends_with(" ls-bkt")), "{buckets}");
    assert!(
        buckets.lines().any(|l| l.ends_with(" ls-other")),
        "{buckets}"
    );

    let top = ok(srv.p3(&["s3", "ls", "s3://ls-bkt/top/"])).stdout;
    assert!(top.contains("PRE sub/"), "{top}");
    assert!(top.contains("PRE with space/"), "{top}");
    assert!(
        top.lines().any(|l| l.ends_with("      70000 b.bin")),
        "{top}"
    );
    assert!(!top.contains("d.log"), "{top}");

    let all = ok(srv.p3(&[
        "s3",
        "ls",
        "--recursive",
        "--human-readable",
        "--summarize",
        "s3://ls-bkt",
    ]))
    .stdout;
    assert!(all.contains("top/sub/deeper/d.log"), "{all}");
    assert!(all.contains("68.4 KiB top/b.bin"), "{all}");
    assert!(all.contains("Total Objects: 5"), "{all}");
    assert!(all.contains("Total Size: 68.4 KiB"), "{all}");

    // Nothing under a prefix is an empty answer, not a failure (issue 24, point 8).
    let none = run(srv.p3(&["s3", "ls", "s3://ls-bkt/nothing-here"]));
    assert_eq!(
        (none.code, none.stdout.as_str()),
        (0, ""),
        "{}",
        none.stderr
    );
    assert!(!none.stderr.contains("failed"), "{}", none.stderr);
}

#[test]
fn listings_and_deletes_page_past_1000_keys() {
    let srv = S3Server::start();
    srv.create_bucket("many-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("many");
    for i in 0..1100 {
        write(&local.join(format!("f{i:04}")), format!("{i}").as_bytes());
    }
    ok(srv.p3(&[
        "s3",
        "cp",
        "--recursive",
        "--quiet",
        p(&local),
        "s3://many-bkt/m",
    ]));
    let r = ok(srv.p3(&["s3", "ls", "--recursive", "--summarize", "s3://many-bkt/m/"]));
    assert!(
        r.stdout.contains("Total Objects: 1100"),
        "{}",
        &r.stdout[r.stdout.len() - 100..]
    );
    // A second sync sees all 1100 on the server (both listing pages) and copies nothing.
    let r = ok(srv.p3(&["s3", "sync", p(&local), "s3://many-bkt/m"]));
    assert_eq!(r.stdout, "");
    // DeleteObjects takes 1000 keys per request: two batches.
    let r = ok(srv.p3(&["s3", "rm", "--recursive", "s3://many-bkt/m"]));
    assert_eq!(lines_starting(&r.stdout, "delete: "), 1100);
    assert!(keys(&srv, "many-bkt", "").is_empty());
}

#[test]
fn rm_deletes_one_object_or_a_filtered_prefix() {
    let srv = S3Server::start();
    srv.create_bucket("rm-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);
    ok(srv.p3(&["s3", "cp", "--recursive", p(&local), "s3://rm-bkt/r"]));

    let r = ok(srv.p3(&["s3", "rm", "s3://rm-bkt/r/a.txt"]));
    assert_eq!(r.stdout.trim(), "delete: s3://rm-bkt/r/a.txt");
    assert_eq!(keys(&srv, "rm-bkt", "").len(), 4);
    ok(srv.p3(&[
        "s3",
        "rm",
        "--recursive",
        "s3://rm-bkt/r",
        "--exclude",
        "*.bin",
    ]));
    assert_eq!(keys(&srv, "rm-bkt", ""), ["r/b.bin"]);
    // A prefix without --recursive is refused rather than guessed at.
    let r = run(srv.p3(&["s3", "rm", "s3://rm-bkt/r/"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--recursive"), "{}", r.stderr);
}

#[test]
fn s3_to_s3_copies_single_and_recursive() {
    // moto: s3rver cannot copy keys with `+` or `%` even for the AWS CLI.
    let srv = S3Server::start_moto();
    srv.create_bucket("cpa-bkt");
    srv.create_bucket("cpb-bkt");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    tree(&local);
    ok(srv.p3(&["s3", "cp", "--recursive", p(&local), "s3://cpa-bkt/src"]));

    ok(srv.p3(&[
        "s3",
        "cp",
        "s3://cpa-bkt/src/with space/e+%.txt",
        "s3://cpb-bkt/one/",
    ]));
    let back = dir.path().join("e.txt");
    srv.aws_ok(&[
        "s3",
        "cp",
        "s3://cpb-bkt/one/e+%.txt",
        p(&back),
        "--only-show-errors",
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), b"epsilon");

    // Multipart copy (UploadPartCopy), forced at a small size through the hidden threshold.
    let big = data(12 * MIB, 9);
    write(&dir.path().join("big.bin"), &big);
    ok(srv.p3(&[
        "s3",
        "cp",
        p(&dir.path().join("big.bin")),
        "s3://cpa-bkt/big.bin",
    ]));
    ok(srv.p3(&[
        "s3",
        "cp",
        "s3://cpa-bkt/big.bin",
        "s3://cpb-bkt/big-copy.bin",
        "--copy-threshold",
        "10MiB",
        "--part-size",
        "5MiB",
    ]));
    let head = srv.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "cpb-bkt",
        "--key",
        "big-copy.bin",
    ]);
    assert!(head.contains("-3\\\""), "copied in three parts: {head}");
    let back = dir.path().join("big-back.bin");
    srv.aws_ok(&[
        "s3",
        "cp",
        "s3://cpb-bkt/big-copy.bin",
        p(&back),
        "--only-show-errors",
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), big);

    let r = ok(srv.p3(&[
        "s3",
        "cp",
        "--recursive",
        "s3://cpa-bkt/src",
        "s3://cpb-bkt/all",
    ]));
    assert_eq!(lines_starting(&r.stdout, "copy: "), 5, "{}", r.stdout);
    assert_eq!(keys(&srv, "cpb-bkt", "all/").len(), 5);
}

#[test]
fn errors_name_the_object_and_the_cause() {
    let srv = S3Server::start();
    srv.create_bucket("err-bkt");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    write(&file, b"x");

    let r = run(srv.p3(&[
        "s3",
        "cp",
        "s3://err-bkt/missing.txt",
        p(&dir.path().join("o")),
    ]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("s3://err-bkt/missing.txt: no such key"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("o").exists());

    let r = run(srv.p3(&["s3", "cp", "s3://no-such-bkt/k", p(&dir.path().join("o"))]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no such bucket \"no-such-bkt\""),
        "{}",
        r.stderr
    );
    let r = run(srv.p3(&["s3", "cp", p(&file), "s3://no-such-bkt/k"]));
    assert!(r.stderr.contains("no such bucket"), "{}", r.stderr);

    let r = run(srv.p3(&[
        "s3",
        "cp",
        p(&dir.path().join("nope.txt")),
        "s3://err-bkt/k",
    ]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("nope.txt: cannot read: No such file"),
        "{}",
        r.stderr
    );

    // Unwritable destination: a path below a regular file.
    ok(srv.p3(&["s3", "cp", p(&file), "s3://err-bkt/f.txt"]));
    let r = run(srv.p3(&["s3", "cp", "s3://err-bkt/f.txt", p(&file.join("below/x"))]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot create directory"), "{}", r.stderr);

    // Wrong endpoint: fails fast with the endpoint named.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let start = Instant::now();
    let r = run(srv.p3(&[
        "s3",
        "ls",
        "s3://err-bkt",
        "--endpoint-url",
        &dead_url,
        "--connect-timeout",
        "2",
        "--max-attempts",
        "2",
    ]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("cannot reach S3 endpoint {dead_url}")),
        "{}",
        r.stderr
    );
    assert!(start.elapsed() < Duration::from_secs(20));

    // Credentials the server does not know.
    let mut cmd = srv.p3(&["s3", "ls", "s3://err-bkt"]);
    cmd.env("AWS_ACCESS_KEY_ID", "NOT-A-KEY");
    let r = run(cmd);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("credentials were rejected (InvalidAccessKeyId"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("S3RVER"),
        "a secret leaked: {}",
        r.stderr
    );

    // No credentials at all: a clear error, and never the host's instance metadata (a job
    // without a grant must not fall back to the runner host's cloud role).
    let mut cmd = srv.p3(&["s3", "ls", "s3://err-bkt"]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_EC2_METADATA_DISABLED");
    let r = run(cmd);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no S3 credentials"), "{}", r.stderr);
    assert!(!r.stderr.contains("IMDS"), "{}", r.stderr);

    let r = run(srv.p3(&["s3", "cp", p(&file), p(&file)]));
    assert_eq!(r.code, 2);
    let r = run(srv.p3(&[
        "s3",
        "cp",
        p(&file),
        "s3://err-bkt/k",
        "--part-size",
        "1MiB",
    ]));
    assert_eq!(r.code, 2, "clap usage error");
}

#[test]
fn aws_cli_multipart_objects_download_identically() {
    let srv = S3Server::start();
    srv.create_bucket("io-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("aws-made.bin");
    let body = data(20 * MIB + 7, 4);
    write(&src, &body);
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&src),
        "s3://io-bkt/aws-made.bin",
        "--only-show-errors",
    ]);
    let back = dir.path().join("back.bin");
    ok(srv.p3(&[
        "s3",
        "cp",
        "s3://io-bkt/aws-made.bin",
        p(&back),
        "--part-size",
        "5MiB",
    ]));
    assert_eq!(std::fs::read(&back).unwrap(), body);
    // Ours up (multipart), the AWS CLI down.
    ok(srv.p3(&[
        "s3",
        "cp",
        p(&src),
        "s3://io-bkt/ours.bin",
        "--part-size",
        "5MiB",
    ]));
    let via = dir.path().join("via.bin");
    srv.aws_ok(&[
        "s3",
        "cp",
        "s3://io-bkt/ours.bin",
        p(&via),
        "--only-show-errors",
    ]);
    assert_eq!(std::fs::read(&via).unwrap(), body);
}

#[test]
fn progress_lines_in_ci_logs() {
    let srv = S3Server::start();
    srv.create_bucket("pg-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("p.bin");
    write(&src, &data(40 * MIB, 5));
    let mut cmd = srv.p3(&[
        "s3",
        "cp",
        p(&src),
        "s3://pg-bkt/p.bin",
        "--part-size",
        "5MiB",
        "--max-memory",
        "5MiB",
    ]);
    cmd.env("P3_S3_PROGRESS_INTERVAL", "0.05");
    let r = ok(cmd);
    assert!(r.stderr.contains("progress: 0/1 files, "), "{}", r.stderr);
    let mut cmd = srv.p3(&[
        "s3",
        "cp",
        p(&src),
        "s3://pg-bkt/q.bin",
        "--no-progress",
        "--quiet",
    ]);
    cmd.env("P3_S3_PROGRESS_INTERVAL", "0.05");
    let r = ok(cmd);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
}

/// prepare's side (retrieve + write_job_files) and the job's side (our step and the AWS CLI)
/// with nothing but the written files and the returned environment.
#[test]
fn job_uses_only_the_files_prepare_wrote() {
    let srv = S3Server::start();
    srv.create_bucket("job-bkt");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("cred-process");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ -n \"$KRB5CCNAME\" ] || { echo 'no ticket' >&2; exit 1; }\n\
         echo '{\"Version\": 1, \"AccessKeyId\": \"S3RVER\", \"SecretAccessKey\": \"S3RVER\", \
         \"SessionToken\": \"SESSION-TOKEN-SECRET-0123\", \"Expiration\": \"2099-01-01T00:00:00Z\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut account = S3Account::new(S3Source::CredentialProcess(vec![p(&script).to_string()]));
    account.region = "us-east-1".into();
    account.endpoint_url = Some(srv.endpoint());
    account.path_style = true;
    account.refresh_threshold_secs = 600;
    account.timeout_secs = 10;
    let creds = aws::retrieve(&account, Some("FILE:/tmp/krb5cc_test"), None).unwrap();
    let creds_dir = dir.path().join("creds");
    std::fs::create_dir(&creds_dir).unwrap();
    let me = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let env = aws::write_job_files(&creds_dir, "client_uat", &account, &creds, Some(me)).unwrap();

    let job_env = |cmd: &mut Command| {
        srv.base_env(cmd);
        cmd.envs(&env);
    };
    let file = dir.path().join("job-output.txt");
    write(&file, b"inference results");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p3-executor"));
    job_env(&mut cmd);
    cmd.args(["s3", "cp", p(&file), "s3://job-bkt/results/out.txt"]);
    ok(cmd);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p3-executor"));
    job_env(&mut cmd);
    cmd.args(["s3", "ls", "s3://job-bkt/results/"]);
    let listed = ok(cmd);
    assert!(listed.stdout.contains(" out.txt"));
    // The env handed to the job names files, never secrets.
    assert!(
        env.values().all(|v| !v.contains("SESSION-TOKEN-SECRET")),
        "{env:?}"
    );
    assert!(!listed.stderr.contains("SESSION-TOKEN-SECRET"));

    let mut cmd = Command::new(s3srv::require_tool("aws", "pip install awscli"));
    job_env(&mut cmd);
    let out = cmd
        .args(["s3", "ls", "s3://job-bkt/results/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(" out.txt"));

    // After cleanup the same job environment has no credentials left.
    aws::remove_job_files(&creds_dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p3-executor"));
    job_env(&mut cmd);
    cmd.args(["s3", "ls", "s3://job-bkt/results/"]);
    let r = run(cmd);
    assert_eq!(r.code, 1, "{}", r.stdout);
}
