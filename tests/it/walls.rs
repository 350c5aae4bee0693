//! End-to-end: the second wall (issue 18), each attack played by a hostile job through the
//! runner calls, as root with private job uids: kernel keyrings (a uid's next job, the
//! runner's session keyring), the seccomp filter, and the one tmpfs budget of a job's
//! private `/tmp`, `/var/tmp` and `/dev/shm`. Cgroup limits are in `cgroups.rs`, the uid scrub
//! in `scrub.rs`.

use crate::isolation::{host_with_uids_and, needs_root, prepared, run_body};
use p3_testkit::driver::uid_base;

/// `keyctl` is Debian's keyutils (installed by scripts/test.sh).
fn has_keyctl() -> bool {
    let ok = std::path::Path::new("/usr/bin/keyctl").exists()
        || std::path::Path::new("/bin/keyctl").exists();
    if !ok {
        eprintln!("skipped: keyctl (keyutils) is not installed");
    }
    ok
}

#[test]
fn a_key_a_job_leaves_in_its_uids_keyrings_never_reaches_the_uids_next_job() {
    if !needs_root() || !has_keyctl() {
        return;
    }
    // One uid, so the second job gets the first one's; keyrings opted in for plain jobs so the
    // first job can write them at all (with the default filter it could not even try).
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo, "[sandbox]\nseccomp_allow = [\"keyrings\"]\n");
    let (mut first, uid) = prepared(&host, 91);
    let code = run_body(
        &mut first,
        "keyctl add user p3-ticket client_uat-ticket @u >/dev/null\n\
         keyctl add user p3-ticket client_uat-ticket @us >/dev/null\n\
         keyctl add user p3-ticket client_uat-ticket \"$(keyctl get_persistent @s)\" >/dev/null\n\
         echo planted",
    );
    assert_eq!(code, 0, "{}", first.log);
    assert!(first.log.contains("planted"), "{}", first.log);
    assert_eq!(first.cleanup(), 0, "{}", first.log);

    let (mut second, uid2) = prepared(&host, 92);
    assert_eq!(uid, uid2, "the test needs the uid reused");
    let code = run_body(
        &mut second,
        "for k in @u @us \"$(keyctl get_persistent @s)\"; do\n\
           if keyctl search \"$k\" user p3-ticket >/dev/null 2>&1; then echo \"LEAKED in $k\"; fi\n\
         done\n\
         echo searched",
    );
    assert_eq!(code, 0, "{}", second.log);
    assert!(second.log.contains("searched"), "{}", second.log);
    assert!(!second.log.contains("LEAKED"), "{}", second.log);
    assert_eq!(second.cleanup(), 0, "{}", second.log);
}

/// Join a new session keyring in this thread (a test runs on its own thread, and the runner
/// calls it starts inherit it) and put a key there, as a runner's service keyring would hold.
fn runner_session_key(description: &std::ffi::CStr) -> i64 {
    // SAFETY: keyctl/add_key with valid C strings.
    unsafe {
        assert!(
            libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_JOIN_SESSION_KEYRING,
                c"p3-test-runner".as_ptr()
            ) > 0
        );
        let id = libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            description.as_ptr(),
            c"root-secret".as_ptr(),
            11usize,
            libc::KEY_SPEC_SESSION_KEYRING,
        );
        assert!(id > 0, "add_key: {}", std::io::Error::last_os_error());
        id
    }
}

#[test]
fn a_key_in_the_runners_session_keyring_is_not_visible_to_any_job() {
    if !needs_root() || !has_keyctl() {
        return;
    }
    let key = runner_session_key(c"p3-runner-key");
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo + 9, "[sandbox]\nseccomp_allow = [\"keyrings\"]\n");
    let (mut job, _) = prepared(&host, 93);
    let code = run_body(
        &mut job,
        &format!(
            "if keyctl search @s user p3-runner-key >/dev/null 2>&1; then echo FOUND; fi\n\
             if keyctl print {key} >/dev/null 2>&1; then echo READ; fi\n\
             keyctl unlink {key} @s >/dev/null 2>&1 || true\n\
             keyctl describe @s\n\
             echo looked"
        ),
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(job.log.contains("looked"), "{}", job.log);
    for leak in ["FOUND", "READ", "p3-test-runner"] {
        assert!(!job.log.contains(leak), "{leak}:\n{}", job.log);
    }
    // Still in the runner's session keyring: the job could not unlink it.
    // SAFETY: KEYCTL_READ with a null buffer returns the payload's size.
    let size = unsafe { libc::syscall(libc::SYS_keyctl, libc::KEYCTL_READ, key, 0, 0) };
    assert_eq!(size, 11, "the runner's key is gone or changed");
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

#[test]
fn the_seccomp_filter_refuses_keyrings_user_namespaces_and_mounts_with_eperm() {
    if !needs_root() || !has_keyctl() {
        return;
    }
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo + 9, "");
    let (mut job, _) = prepared(&host, 94);
    // perl's syscall() reports the errno of a raw call: EPERM is "Operation not permitted".
    let code = run_body(
        &mut job,
        r#"try() { if out=$("$@" 2>&1); then echo "ALLOWED: $*"; else echo "refused: $* ($out)"; fi; }
try keyctl show @s
try keyctl add user k v @u
try unshare -U true
try unshare -Ur true
try unshare -Urm true
try unshare -Urn true
try unshare -Urp -f true
try unshare -Uri true
try unshare -Uru true
try unshare -UrC true
try mount -t tmpfs none "$HOME"
perl -e 'my $p = "\0" x 120; $!=0; my $r = syscall(425, 4, $p); print "io_uring_setup: $r $!\n"'
perl -e '$!=0; my $r = syscall(323, 0); print "userfaultfd: $r $!\n"'
perl -e '$!=0; my $r = syscall(321, 0, 0, 0); print "bpf: $r $!\n"'
perl -e '$!=0; my $r = syscall(435, 0, 0); print "clone3: $r $!\n"'
# What jobs need still works; SIGPIPE is not ignored on entry (it ends a writer).
grep SigIgn /proc/self/status
bash -c 'echo bash-ok'
git init -q "$HOME/repo" && git -C "$HOME/repo" status --short && echo git-ok
sh -c 'sleep 0.1 & wait; echo fork-ok'
perl -e 'use threads; threads->create(sub { print "thread-ok\n" })->join' 2>/dev/null || python3 -c 'import threading; t=threading.Thread(target=lambda: print("thread-ok")); t.start(); t.join()'
"#,
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(!job.log.contains("ALLOWED"), "{}", job.log);
    assert!(
        job.log.contains("refused: keyctl show @s (")
            && job.log.contains("Operation not permitted"),
        "{}",
        job.log
    );
    for call in ["io_uring_setup", "userfaultfd", "bpf"] {
        assert!(
            job.log
                .contains(&format!("{call}: -1 Operation not permitted")),
            "{call}:\n{}",
            job.log
        );
    }
    assert!(
        job.log.contains("clone3: -1 Function not implemented"),
        "{}",
        job.log
    );
    let ignored = job
        .log
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .expect("SigIgn line");
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "a job starts with SIGPIPE ignored:\n{}",
        job.log
    );
    for ok in ["bash-ok", "git-ok", "fork-ok", "thread-ok"] {
        assert!(job.log.contains(ok), "{ok}:\n{}", job.log);
    }
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

#[test]
fn tmp_var_tmp_and_dev_shm_share_one_budget_and_a_full_tmp_names_the_setting() {
    if !needs_root() {
        return;
    }
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo + 9, "[sandbox]\ntmp_size = \"8m\"\n");
    let (mut job, _) = prepared(&host, 95);
    // Each alone fits; together they do not.
    let code = run_body(
        &mut job,
        "head -c 3M /dev/zero > /tmp/a && echo tmp-ok\n\
         head -c 3M /dev/zero > /dev/shm/b && echo shm-ok\n\
         head -c 3M /dev/zero > /var/tmp/c || exit 3\n\
         echo var-tmp-ok",
    );
    assert_ne!(code, 0, "{}", job.log);
    assert!(
        job.log.contains("tmp-ok") && job.log.contains("shm-ok"),
        "{}",
        job.log
    );
    assert!(!job.log.contains("var-tmp-ok"), "{}", job.log);
    assert!(job.log.contains("No space left on device"), "{}", job.log);
    assert!(job.log.contains("[sandbox] tmp_size"), "{}", job.log);
    assert!(job.log.contains("8m"), "{}", job.log);
    // A full /tmp is the job's own doing: a build failure, not a system failure.
    assert_eq!(code, 1, "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

/// Whether this kernel scopes abstract unix sockets (Landlock ABI 6, Linux 6.12).
fn kernel_scopes_abstract_sockets() -> bool {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only reports.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if abi < 6 {
        eprintln!("skipped: Landlock ABI {abi} cannot scope abstract unix sockets (Linux 6.12+)");
    }
    abi >= 6
}

/// A listener on an abstract unix socket (no file, no permissions: the name is the host
/// network namespace's), answering every connection with `reply`.
fn abstract_listener(name: &str, reply: &'static [u8]) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(reply);
        }
    })
}

/// Jobs share the host's network namespace, and with it its abstract unix sockets, which have
/// no file and no permissions: any job could talk to a host daemon listening on one (or bind
/// the name a daemon connects to), and to another job's. The job reaches only the abstract
/// sockets its own processes made; path sockets and TCP are not touched.
#[test]
fn a_job_reaches_only_its_own_abstract_unix_sockets() {
    if !needs_root() || !kernel_scopes_abstract_sockets() {
        return;
    }
    let name = format!("p3t-abstract-{}-{}", std::process::id(), uid_base());
    let _listener = abstract_listener(&name, b"host-secret\n");
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo + 9, "");
    let (mut job, _) = prepared(&host, 95);
    let code = run_body(
        &mut job,
        &format!(
            r#"connect() {{ python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0" + sys.argv[1])
    print("CONNECTED", sys.argv[1], s.recv(64).decode().strip())
except OSError as e:
    print("refused", sys.argv[1], e.strerror)
PY
}}
connect {name}
# The job's own abstract sockets work: a listener it starts, then a client of it.
python3 -c '
import socket, threading
l = socket.socket(socket.AF_UNIX); l.bind("\0own-{name}"); l.listen()
def serve():
    c, _ = l.accept(); c.sendall(b"own-ok\n")
threading.Thread(target=serve).start()
c = socket.socket(socket.AF_UNIX); c.connect("\0own-{name}"); print(c.recv(16).decode().strip())
'
"#
        ),
    );
    assert_eq!(code, 0, "{}", job.log);
    assert!(
        job.log
            .contains(&format!("refused {name} Operation not permitted")),
        "the job reached the host's abstract socket:\n{}",
        job.log
    );
    assert!(!job.log.contains("host-secret"), "{}", job.log);
    assert!(job.log.contains("own-ok"), "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}
