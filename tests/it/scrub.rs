//! End-to-end: the uid scrub no job can jam (issue 18, point 3), played through the runner calls
//! (config → prepare → run → cleanup, then `gc`) as root with a narrow `job_uid_range`.
//!
//! The attack: a plain job leaves a 40-level directory tree in a scrub dir that the sandbox does
//! not make private (`/run/lock`, one of the default `scrub_dirs`). Its own uid is quarantined,
//! as it should be; the next job's uid must not be (its scrub must not walk a tree it could not
//! have written into, nor spend its budget on another uid's tree), `gc` must remove the tree
//! and free the first uid, and the pool must recover without a hand.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{self, is_root};
use crate::isolation::{host_with_uids, prepared, run_body};
use p3_testkit::driver::{Host, uid_base};

/// A scrub dir every job reaches (the sandbox gives each job a private `/tmp`, `/var/tmp` and
/// `/dev/shm`, but not this one).
const SHARED: &str = "/run/lock";

fn needs_root() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root for private job uids and the sandbox");
    }
    is_root() && Path::new(SHARED).is_dir()
}

/// A job's whole life: prepare, one stage, cleanup (all succeed); returns its uid.
fn whole_job(host: &Host, id: u64, body: &str) -> u32 {
    let (mut job, uid) = prepared(host, id);
    assert_eq!(run_body(&mut job, body), 0, "job {id}:\n{}", job.log);
    assert_eq!(job.cleanup(), 0, "job {id} cleanup:\n{}", job.log);
    uid
}

/// The lease file's content for `uid`: None when the uid is free.
fn lease(host: &Host, uid: u32) -> Option<String> {
    fs::read_to_string(host.root().join(format!("state/uids/{uid}"))).ok()
}

/// The tree a test plants in the shared scrub dir, removed whatever the test's outcome.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn planted(tag: &str) -> Planted {
    Planted(Path::new(SHARED).join(format!("p3e-{tag}-{}", std::process::id())))
}

/// A stage that builds a `levels`-deep chain of directories `d` below `top`; with `mode`, each
/// level gets it (e.g. 1777: a tree every other job uid could write into).
fn deep_tree_script(top: &Path, levels: usize, mode: Option<&str>) -> String {
    let chmod = mode.map_or(String::new(), |m| format!("chmod {m} \"$d\"; "));
    format!(
        "set -e\nd={top}\nmkdir \"$d\"; {chmod}\nfor i in $(seq {levels}); do d=\"$d/d\"; mkdir \"$d\"; {chmod}done\necho planted\n",
        top = top.display()
    )
}

fn gc(host: &Host) -> String {
    let out = host.exec(&["gc"]);
    let text = common::text(&out);
    assert!(out.status.success(), "gc:\n{text}");
    text
}

/// The attack: a plain 40-level tree in `/run/lock` quarantines the uid that made it,
/// and only that one: the next job's uid goes back to the pool, prepare keeps working, and
/// `gc` removes the tree and frees the first uid, so both uids serve jobs again.
#[test]
fn a_deep_tree_left_by_one_job_jams_neither_the_next_uid_nor_the_pool() {
    if !needs_root() {
        return;
    }
    let lo = uid_base() + 500;
    let host = host_with_uids(lo, lo + 1);
    let tree = planted("deep-tree");

    let a = whole_job(&host, 9101, &deep_tree_script(&tree.0, 40, None));
    let why = lease(&host, a).unwrap_or_default();
    assert!(
        why.starts_with("quarantine: "),
        "uid {a} left a 40-level tree in {SHARED} and was not quarantined: {why:?}"
    );

    let b = whole_job(&host, 9102, "true");
    assert_ne!(a, b);
    assert_eq!(
        lease(&host, b),
        None,
        "uid {b} created nothing, yet was not released (uid {a}'s tree jammed it)"
    );
    // The pool still has uid b: a third job gets it.
    assert_eq!(whole_job(&host, 9103, "true"), b);

    let text = gc(&host);
    assert_eq!(
        lease(&host, a),
        None,
        "gc left uid {a} quarantined:\n{text}"
    );
    assert!(
        !tree.0.exists(),
        "gc freed uid {a} but its tree is still there"
    );

    // Both uids serve jobs again, at the same time.
    let (mut d, d_uid) = prepared(&host, 9104);
    let (mut e, e_uid) = prepared(&host, 9105);
    assert_ne!(d_uid, e_uid);
    assert_eq!(d.cleanup(), 0, "{}", d.log);
    assert_eq!(e.cleanup(), 0, "{}", e.log);
    assert_eq!((lease(&host, a), lease(&host, b)), (None, None));
}

/// The harder form: every level of the tree is world-writable, so every job uid could have
/// written into it. The next job's scrub looks into it (it must), but stops at the depth limit
/// without quarantining its own uid for another uid's tree. The first uid's quarantine reason
/// names the limit that was actually hit (depth, not the entry count), and `gc` clears it.
#[test]
fn a_deep_world_writable_tree_quarantines_its_maker_for_depth_and_only_it() {
    if !needs_root() {
        return;
    }
    let lo = uid_base() + 500;
    let host = host_with_uids(lo, lo + 1);
    let tree = planted("deep-open-tree");

    let a = whole_job(&host, 9111, &deep_tree_script(&tree.0, 40, Some("1777")));
    let why = lease(&host, a).unwrap_or_default();
    assert!(why.starts_with("quarantine: "), "{why:?}");
    assert!(
        why.contains("depth limit") && !why.contains("entry limit"),
        "the reason should name the depth limit (the walk stopped there): {why:?}"
    );
    // `check` shows the same reason.
    let check = common::text(&host.exec(&["check"]));
    assert!(
        check.contains(&format!("uid {a} is quarantined")) && check.contains("depth limit"),
        "{check}"
    );

    let b = whole_job(&host, 9112, "true");
    assert_eq!(
        lease(&host, b),
        None,
        "uid {b} was jammed by uid {a}'s tree"
    );

    let text = gc(&host);
    assert_eq!(
        lease(&host, a),
        None,
        "gc left uid {a} quarantined:\n{text}"
    );
    assert!(!tree.0.exists());
    let (mut c, c_uid) = prepared(&host, 9113);
    let (mut d, d_uid) = prepared(&host, 9114);
    assert_ne!(c_uid, d_uid);
    assert_eq!(c.cleanup(), 0, "{}", c.log);
    assert_eq!(d.cleanup(), 0, "{}", d.log);
}
