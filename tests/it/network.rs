//! The network wall (issue 21) end to end, as root, on loopback only: hostile and ordinary jobs
//! through the runner calls against stand-ins on their own loopback addresses (127.31.<n>.169
//! stands in for the metadata service), each test with its own nftables table, deleted at the
//! end (also on panic). No test touches another table or any rule it did not create.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};
use crate::isolation::{host_with_uids_and, needs_root, prepared, run_body, uid_of};
use p3_testkit::driver::{Host, Job, uid_base};
use p3_testkit::kdc;
use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// This test's table and loopback block, removed when dropped (also on a panic).
struct Net {
    table: String,
    n: u8,
}

impl Net {
    fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Net {
            table: format!("p3t_{}_{n}", std::process::id()),
            // Its own /24 of loopback: 127.31.<n>.x, distinct for every test of the process.
            n: u8::try_from(n % 250).unwrap(),
        }
    }

    /// 127.31.<n>.<last>.
    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 31, self.n, last)
    }

    /// The table's listing (None: no table).
    fn listing(&self) -> Option<Value> {
        let out = Command::new("nft")
            .args(["-j", "list", "table", "inet", &self.table])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The tags of the tag map's elements and how many peer pairs there are (jobs apart on
    /// loopback).
    fn tags(&self) -> (Vec<u64>, usize) {
        let listing = self.listing().expect("the table exists");
        let mut tags = Vec::new();
        let mut peers = 0;
        for item in listing["nftables"].as_array().unwrap() {
            if item["map"]["name"] == "job_tags" {
                let elem = item["map"]["elem"].as_array().cloned().unwrap_or_default();
                tags.extend(elem.iter().filter_map(|e| e[1].as_u64()));
            } else if item["set"]["name"] == "job_peers" {
                peers = item["set"]["elem"].as_array().map_or(0, Vec::len);
            }
        }
        (tags, peers)
    }

    /// The uids mapped (single-uid keys of job_uids) and the chains besides the two base
    /// ones (the policies' chains).
    fn mapped(&self) -> (Vec<u64>, Vec<String>) {
        let listing = self.listing().expect("the table exists");
        let mut uids = Vec::new();
        let mut chains = Vec::new();
        for item in listing["nftables"].as_array().unwrap() {
            if item["map"]["name"] == "job_uids" {
                for e in item["map"]["elem"].as_array().into_iter().flatten() {
                    uids.extend(e[0].as_u64());
                }
            }
            if let Some(name) = item["chain"]["name"].as_str() {
                if name != "output" && name != "jobs" {
                    chains.push(name.to_string());
                }
            }
        }
        (uids, chains)
    }

    fn nft(&self, cmd: &str) {
        let out = Command::new("nft").arg(cmd).output().unwrap();
        assert!(out.status.success(), "nft {cmd}: {out:?}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

/// The chain a job's banner names (`see \`nft list chain inet <table> <chain>\``).
fn chain_of(log: &str) -> String {
    let (_, rest) = log
        .split_once("see `nft list chain inet ")
        .unwrap_or_else(|| panic!("no chain in the banner: {log}"));
    let line = rest.split('`').next().unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// A host of ten job uids from `lo` with the default network policy in `net`'s table.
fn defaults_host(net: &Net, lo: u32) -> Host {
    host_with_uids_and(
        lo,
        lo + 9,
        &format!("[network]\ntable = \"{}\"\n", net.table),
    )
}

/// A process group killed when dropped (also on a panic), and reaped.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A TCP stand-in on `ip` (port chosen by the kernel) that greets every connection.
fn listener(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hello\n");
        }
    });
    port
}

/// A DNS stand-in on `ip`: answers every query with one A record, `answer`.
fn dns(ip: Ipv4Addr, answer: Ipv4Addr) -> u16 {
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    let port = sock.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // Header: same id, response + recursion available, 1 question, 1 answer.
            let mut r = buf[..2].to_vec();
            r.extend([0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            r.extend(&buf[12..n]);
            // The answer points at the question's name (offset 12): A, IN, TTL 60.
            r.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend(answer.octets());
            let _ = sock.send_to(&r, from);
        }
    });
    port
}

/// A shell function the jobs use: `probe ADDR PORT` prints `OK ADDR:PORT` or `REFUSED ADDR:PORT
/// <why>`, never waiting long (a refusal is a reset, not a timeout).
const PROBE: &str = r#"
probe() {
  if out=$(timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 6 <&3" 2>&1) && [ "$out" = hello ]; then
    echo "OK $1:$2"
  else
    echo "REFUSED $1:$2 ${out//$'\n'/ }"
  fi
}
"#;

fn ok(log: &str, ip: Ipv4Addr, port: u16) -> bool {
    log.contains(&format!("OK {ip}:{port}"))
}

fn refused(log: &str, ip: Ipv4Addr, port: u16) -> bool {
    log.lines()
        .any(|l| l.starts_with(&format!("REFUSED {ip}:{port} ")) && l.contains("refused"))
}

/// Can `uid` (root, or another user via setpriv) connect to ip:port from the host?
fn connects_as(uid: u32, ip: Ipv4Addr, port: u16) -> bool {
    if uid == 0 {
        return TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5))
            .and_then(|mut s| {
                let mut b = [0u8; 6];
                s.read_exact(&mut b)
            })
            .is_ok();
    }
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{ip}/{port}"),
        ])
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_plain_job_cannot_reach_the_metadata_stand_in_but_root_and_other_uids_can() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let (meta, other) = (net.ip(169), net.ip(172));
    let (meta_port, other_port) = (listener(meta), listener(other));
    let lo = uid_base();
    let host = host_with_uids_and(
        lo,
        lo + 9,
        &format!(
            "[network]\ntable = \"{}\"\ndeny = [\"{meta}\"]\n",
            net.table
        ),
    );
    let (mut job, uid) = prepared(&host, 2101);
    // A port nobody listens on: the kernel answers a connection with a RST of no socket.
    let closed = TcpListener::bind((other, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(
        job.log
            .contains("p3-executor: network: plain (open, 1 rule"),
        "{}",
        job.log
    );
    let body = format!(
        "{PROBE}\nprobe {meta} {meta_port}\nprobe {other} {other_port}\nprobe {other} {closed}\n\
         if echo x 2>/tmp/udp.err > /dev/udp/{meta}/9; then echo UDP SENT; else echo \"UDP $(cat /tmp/udp.err)\"; fi\n"
    );
    assert_eq!(run_body(&mut job, &body), 0, "{}", job.log);
    assert!(refused(&job.log, meta, meta_port), "{}", job.log);
    assert!(ok(&job.log, other, other_port), "open mode: {}", job.log);
    assert!(
        job.log.contains("UDP ") && job.log.contains("Operation not permitted"),
        "a refused datagram fails at send: {}",
        job.log
    );
    // Packets without a socket (the kernel's RST for a closed port, ICMP errors) are nobody's
    // job: they pass, so a closed port still refuses at once, in the job and on the host.
    assert!(refused(&job.log, other, closed), "{}", job.log);
    let started = std::time::Instant::now();
    let err =
        TcpStream::connect_timeout(&SocketAddr::from((other, closed)), Duration::from_secs(5))
            .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Root and a uid outside job_uid_range are never touched.
    assert!(connects_as(0, meta, meta_port));
    assert!(
        connects_as(65534, meta, meta_port),
        "nobody is outside the range"
    );
    // The operator's view: the job's uid jumps to its policy's chain, which holds the rule
    // that refused it, with a counter that moved.
    let name = chain_of(&job.log);
    assert!(name.starts_with("policy_"), "{name}");
    assert_eq!(net.mapped(), (vec![u64::from(uid)], vec![name.clone()]));
    let list = |name: &str| {
        let out = Command::new("nft")
            .args(["list", "chain", "inet", &net.table, name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chain = list(&name);
    assert!(chain.contains("comment \"network.deny[0]"), "{chain}");
    assert!(
        !chain.contains("counter packets 0 bytes 0 meta l4proto tcp"),
        "{chain}"
    );
    // A second job with the same policy gets the same chain, as it was: only its uid is added
    // (the counter is not reset by a refill).
    let (mut second, second_uid) = prepared(&host, 2102);
    assert_eq!(chain_of(&second.log), name);
    assert_eq!(list(&name), chain, "the chain is untouched");
    assert_eq!(
        net.mapped(),
        (
            vec![u64::from(uid), u64::from(second_uid)],
            vec![name.clone()]
        )
    );
    assert_eq!(run_body(&mut second, &body), 0, "{}", second.log);
    assert!(refused(&second.log, meta, meta_port), "{}", second.log);
    assert!(ok(&second.log, other, other_port), "{}", second.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert_eq!(second.cleanup(), 0, "{}", second.log);
    assert_eq!(
        net.mapped(),
        (vec![], vec![name]),
        "cleanup removes the jobs' elements; the policy's chain stays for the next job"
    );
    let gc = host.exec(&["gc", "--max-age-secs", "0"]);
    assert!(gc.status.success(), "{}", crate::common::text(&gc));
    assert_eq!(
        net.mapped(),
        (vec![], vec![]),
        "gc removes a chain no job jumps to"
    );
}

/// Devstages with real ID tokens on a loopback GitLab (JWKS) and KDC, in allowlist mode.
struct Stages {
    _kdc: kdc::Kdc,
    minter: TokenMinter,
    _jwks: JwksServer,
    host: Host,
    gitlab: Ipv4Addr,
    gitlab_port: u16,
    issuer: String,
}

const PROJECT: &str = "data-ml/forecast";

/// A host where client_dev may reach `dev` (one port) and client_prod `prod` (any port), in
/// allowlist mode, with a git daemon as the GitLab instance and a DNS stand-in as resolver.
fn stages(net: &Net, dev: SocketAddr, prod: Ipv4Addr, dns_port: u16, extra: &str) -> Stages {
    let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let minter = TokenMinter::new();
    let jwks = JwksServer::start(&minter.jwks_json());
    let gitlab = net.ip(171);
    let gitlab_port = listener_port_free(gitlab);
    let issuer = format!("http://{gitlab}:{gitlab_port}");
    let config = p3_testkit::demo::policy_config(&kdc, &format!("jwks_url = \"{}\"", jwks.url), "")
        .replace(
            &format!("gitlab_url = \"{ISSUER}\""),
            &format!("gitlab_url = \"{issuer}\""),
        );
    let config = format!(
        "[network]\ntable = \"{table}\"\nmode = \"allowlist\"\ndeny = [\"{meta}\"]\nresolvers = [\"{dns}:{dns_port}\"]\n{extra}\n{config}\n\
         [devstages.client_dev.network]\nallow = [\"{dev}\"]\n\
         [devstages.client_prod.network]\nallow = [\"{prod}\"]\n",
        table = net.table,
        meta = net.ip(169),
        dns = net.ip(170),
    );
    let lo = uid_base();
    let host = host_with_uids_and(lo, lo + 99, &config);
    Stages {
        _kdc: kdc,
        minter,
        _jwks: jwks,
        host,
        gitlab,
        gitlab_port,
        issuer,
    }
}

/// A free port on `ip` (bound and released; the git daemon takes it).
fn listener_port_free(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Stages {
    fn job(&self, id: u64, devstage: &str) -> Job {
        let (git_ref, ref_type, protected) = match devstage {
            "client_prod" => ("v1.2.3", "tag", true),
            _ => ("feature/x", "branch", false),
        };
        let claims = gitlab_claims(
            &self.issuer,
            "p3-executor",
            id,
            PROJECT,
            git_ref,
            ref_type,
            protected,
        );
        let job = self.host.job(id, "");
        if devstage.is_empty() {
            return job;
        }
        job.var("P3_ID_TOKEN", &self.minter.mint(claims))
            .var("P3_DEVSTAGE", devstage)
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.host.root().join("audit/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn prepare(job: &mut Job) {
    assert_eq!(job.config(), 0, "config:\n{}", job.log);
    assert_eq!(job.prepare(), 0, "prepare:\n{}", job.log);
}

#[test]
fn allowlist_devstages_reach_only_their_own_and_still_clone_and_resolve() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let (dev_ip, prod_ip) = (net.ip(172), net.ip(173));
    let (dev_port, dev_other) = (listener(dev_ip), listener(dev_ip));
    let prod_port = listener(prod_ip);
    let dns_port = dns(net.ip(170), net.ip(172));
    let s = stages(&net, (dev_ip, dev_port).into(), prod_ip, dns_port, "");
    // The GitLab stand-in: a git daemon serving the host's repository.
    let base = s
        .host
        .repo
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let daemon = Command::new("git")
        .args([
            "daemon",
            "--export-all",
            "--reuseaddr",
            &format!("--listen={}", s.gitlab),
            &format!("--port={}", s.gitlab_port),
            &format!("--base-path={}", base.display()),
        ])
        .arg(&base)
        // Its own process group: `git daemon` runs git-daemon as a child, which a kill of
        // `git` alone would leave running after the test.
        .process_group(0)
        .spawn()
        .map(Daemon)
        .unwrap();
    let mut dev = s.job(2111, "client_dev");
    let mut prod = s.job(2112, "client_prod");
    // Both prepared before either runs: concurrent jobs with different policies.
    prepare(&mut dev);
    prepare(&mut prod);
    let body = format!(
        "{PROBE}\nprobe {dev_ip} {dev_port}\nprobe {dev_ip} {dev_other}\nprobe {prod_ip} {prod_port}\n\
         for i in 1 2 3 4 5 6 7 8 9 10; do git clone -q git://{gl}:{glp}/group/project clone 2>/dev/null && break; sleep 0.3; done\n\
         cat clone/README || echo NO CLONE\n\
         host -W 3 -p {dns_port} -t A ci.example.test {dns} || echo NO DNS\n",
        gl = s.gitlab,
        glp = s.gitlab_port,
        dns = net.ip(170),
    );
    assert_eq!(run_body(&mut dev, &body), 0, "{}", dev.log);
    assert_eq!(run_body(&mut prod, &body), 0, "{}", prod.log);
    drop(daemon);
    assert!(ok(&dev.log, dev_ip, dev_port), "dev: {}", dev.log);
    assert!(
        refused(&dev.log, dev_ip, dev_other),
        "dev, another port: {}",
        dev.log
    );
    assert!(
        refused(&dev.log, prod_ip, prod_port),
        "dev, prod: {}",
        dev.log
    );
    assert!(ok(&prod.log, prod_ip, prod_port), "prod: {}", prod.log);
    assert!(
        refused(&prod.log, dev_ip, dev_port),
        "prod, dev's: {}",
        prod.log
    );
    for (name, log) in [("dev", &dev.log), ("prod", &prod.log)] {
        assert!(
            log.contains("hello from the repository"),
            "{name} clones: {log}"
        );
        assert!(
            log.contains(&format!("ci.example.test has address {dev_ip}")),
            "{name} resolves: {log}"
        );
    }
    // The grant's audit record names the policy and the hash of its rules, and the job's uid
    // and chain, which a refusal in the kernel log names (`UID=`, the policy in the prefix).
    let grants: Vec<Value> = s
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "grant")
        .collect();
    for (job, policy, log) in [
        (2111, "devstages.client_dev", &dev.log),
        (2112, "devstages.client_prod", &prod.log),
    ] {
        let rec = grants
            .iter()
            .find(|r| r["job_id"] == job)
            .unwrap_or_else(|| panic!("grant of {job}: {grants:?}"));
        assert_eq!(rec["extra"]["network_policy"], policy, "{rec}");
        assert_eq!(
            rec["extra"]["network_sha256"].as_str().unwrap().len(),
            64,
            "{rec}"
        );
        assert_eq!(rec["extra"]["job_uid"], uid_of(&s.host, job), "{rec}");
        assert_eq!(rec["extra"]["network_chain"], chain_of(log), "{rec}");
        assert_eq!(rec["extra"]["loopback_apart"], true, "{rec}");
    }
    // policy explain shows the rules a client_dev job would get.
    let claims = s.host.root().join("claims.json");
    let c = gitlab_claims(
        &s.issuer,
        "p3-executor",
        1,
        PROJECT,
        "feature/x",
        "branch",
        false,
    );
    std::fs::write(&claims, c.to_string()).unwrap();
    let out = s.host.exec(&[
        "policy",
        "explain",
        "--claims",
        claims.to_str().unwrap(),
        "--request",
        "client_dev",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("network: devstages.client_dev (allowlist"),
        "{text}"
    );
    assert!(text.contains(&format!("{dev_ip}:{dev_port}")), "{text}");
    assert!(
        text.contains("devstages.client_dev.network.allow[0]"),
        "{text}"
    );
    assert!(text.contains("identity.gitlab_url"), "{text}");
    assert_eq!(dev.cleanup(), 0, "{}", dev.log);
    assert_eq!(prod.cleanup(), 0, "{}", prod.log);
    assert_eq!(net.mapped().0, Vec::<u64>::new());
}

#[test]
fn cleanup_and_gc_after_sigkill_remove_the_element_and_a_reused_uid_inherits_nothing() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let target = net.ip(172);
    let port = listener(target);
    // One uid, so every job reuses it.
    let uid = uid_base();
    let config = |allow: &str| {
        format!(
            "[network]\ntable = \"{}\"\nmode = \"allowlist\"\ndeny = []\nresolvers = []\n[network.plain]\nallow = [{allow}]\n",
            net.table
        )
    };
    let host = host_with_uids_and(uid, uid, &config(&format!("\"{target}:{port}\"")));
    let body = format!("{PROBE}\nprobe {target} {port}\n");

    // Job 1 may reach the target; its cleanup removes its element.
    let (mut first, got) = prepared(&host, 2121);
    assert_eq!(got, uid);
    let allowing = chain_of(&first.log);
    assert_eq!(net.mapped(), (vec![u64::from(uid)], vec![allowing.clone()]));
    assert_eq!(run_body(&mut first, &body), 0, "{}", first.log);
    assert!(ok(&first.log, target, port), "{}", first.log);
    assert_eq!(first.cleanup(), 0, "{}", first.log);
    assert_eq!(net.mapped(), (vec![], vec![allowing.clone()]));
    // Between jobs the uid has no element: the strictest policy, even for a process that
    // outlived its job.
    let strict = Command::new("setpriv")
        .args([&format!("--reuid={uid}"), "--regid=65534", "--clear-groups"])
        .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{target}/{port}")])
        .output()
        .unwrap();
    assert!(
        !strict.status.success(),
        "an unmapped job uid reaches nothing"
    );

    // Job 2 on the same uid, under a config that no longer allows the target, is SIGKILLed
    // mid-stage (runner crash): no cleanup runs.
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace(&format!("allow = [\"{target}:{port}\"]"), "allow = []"),
    )
    .unwrap();
    let (mut second, got) = prepared(&host, 2122);
    assert_eq!(got, uid);
    assert_ne!(
        chain_of(&second.log),
        allowing,
        "other rules, another chain"
    );
    let script = second.write_script("build_script", &format!("{body}\necho READY\nsleep 60\n"));
    let mut run = second
        .command(&["run", script.to_str().unwrap(), "build_script"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = run.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !seen.contains("READY") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stage ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        refused(&seen, target, port),
        "no inherited allowance: {seen}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = run.wait();
    assert_eq!(
        net.mapped().0,
        vec![u64::from(uid)],
        "still mapped after the kill"
    );
    let gc = host.exec(&["gc", "--max-age-secs", "0"]);
    assert!(gc.status.success(), "{}", crate::common::text(&gc));
    assert_eq!(
        net.mapped(),
        (vec![], vec![]),
        "gc removed the element and chain"
    );
    assert_eq!(net.tags(), (vec![], 0), "gc removed the tag and its pair");
}

/// A previous holder of the uid left its element behind (its cleanup never reached nft): the
/// next job's elements cannot be added beside it, so prepare replaces it, and the job gets its
/// own policy, not the one left behind.
#[test]
fn a_uid_whose_element_was_left_behind_gets_its_own_policy() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let target = net.ip(172);
    let port = listener(target);
    let uid = uid_base();
    let host = host_with_uids_and(
        uid,
        uid,
        &format!(
            "[network]\ntable = \"{}\"\nmode = \"allowlist\"\ndeny = []\nresolvers = []\n[network.plain]\nallow = [\"{target}:{port}\"]\n",
            net.table
        ),
    );
    // The table, as the package's postinst makes it.
    let fixed = String::from_utf8_lossy(&host.exec(&["check", "--fix"]).stdout).into_owned();
    assert!(fixed.contains("network: fixed"), "{fixed}");
    // What a crashed job of another policy leaves: its chain (here one that accepts
    // everything) and the uid's element jumping to it.
    net.nft(&format!(
        "add chain inet {} policy_left_behind {{ accept; }}",
        net.table
    ));
    net.nft(&format!(
        "add element inet {} job_uids {{ {uid} : jump policy_left_behind }}",
        net.table
    ));
    let (mut job, got) = prepared(&host, 2151);
    assert_eq!(got, uid);
    let own = chain_of(&job.log);
    assert_ne!(own, "policy_left_behind");
    let (mapped, mut chains) = net.mapped();
    chains.sort();
    assert_eq!(mapped, [u64::from(uid)]);
    assert_eq!(chains, [own.clone(), "policy_left_behind".to_string()]);
    let listing = net.listing().unwrap().to_string();
    assert!(
        listing.contains(&format!("[{uid},{{\"jump\":{{\"target\":\"{own}\"}}}}]")),
        "{listing}"
    );
    let other = net.ip(173);
    let other_port = listener(other);
    let body = format!("{PROBE}\nprobe {target} {port}\nprobe {other} {other_port}\n");
    assert_eq!(run_body(&mut job, &body), 0, "{}", job.log);
    assert!(ok(&job.log, target, port), "{}", job.log);
    assert!(
        refused(&job.log, other, other_port),
        "the allowlist holds, not the accept left behind: {}",
        job.log
    );
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert!(host.exec(&["gc"]).status.success());
    assert_eq!(net.mapped(), (vec![], vec![]));
}

/// A job prepared by an executor before policy chains (its own chain `uid_<uid>`, no `chain`
/// in its state.json) and cleaned up by this one, as across a package upgrade: its element
/// and its chain go, and nothing else.
#[test]
fn cleanup_of_a_job_prepared_before_policy_chains_removes_its_own_chain() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let lo = uid_base();
    let host = defaults_host(&net, lo);
    let (mut job, uid) = prepared(&host, 2161);
    let shared = chain_of(&job.log);
    // What the old executor would have left: the uid jumping to a chain of its own.
    let own = format!("uid_{uid}");
    net.nft(&format!("add chain inet {} {own} {{ accept; }}", net.table));
    net.nft(&format!(
        "delete element inet {} job_uids {{ {uid} }}",
        net.table
    ));
    net.nft(&format!(
        "add element inet {} job_uids {{ {uid} : jump {own} }}",
        net.table
    ));
    let path = host.root().join("state/jobs/2161/state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["network"]
        .as_object_mut()
        .expect("the job's network in its state")
        .remove("chain");
    std::fs::write(&path, state.to_string()).unwrap();
    let (mapped, mut chains) = net.mapped();
    chains.sort();
    assert_eq!(mapped, [u64::from(uid)]);
    assert_eq!(chains, [shared.clone(), own]);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    assert_eq!(
        net.mapped(),
        (vec![], vec![shared]),
        "the old job's element and chain are gone; the policy's chain waits for gc"
    );
}

#[test]
fn fifty_concurrent_jobs_with_mixed_devstages_each_get_exactly_their_policy() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let (dev_ip, prod_ip) = (net.ip(172), net.ip(173));
    let (dev_port, prod_port) = (listener(dev_ip), listener(prod_ip));
    let dns_port = dns(net.ip(170), net.ip(172));
    let s = stages(&net, (dev_ip, dev_port).into(), prod_ip, dns_port, "");
    let body = format!("{PROBE}\nprobe {dev_ip} {dev_port}\nprobe {prod_ip} {prod_port}\n");
    let kinds = ["client_dev", "client_prod", ""];
    let results: Vec<(u64, &str, String, u32)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50u64)
            .map(|i| {
                let (s, body) = (&s, &body);
                let kind = kinds[(i % 3) as usize];
                scope.spawn(move || {
                    let id = 2200 + i;
                    let mut job = s.job(id, kind).timeout(120);
                    prepare(&mut job);
                    let uid = uid_of(&s.host, id);
                    assert_eq!(run_body(&mut job, body), 0, "{}", job.log);
                    assert_eq!(job.cleanup(), 0, "{}", job.log);
                    (id, kind, job.log, uid)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut uids: Vec<u32> = results.iter().map(|r| r.3).collect();
    for (id, kind, log, _) in &results {
        let (dev_ok, prod_ok) = match *kind {
            "client_dev" => (true, false),
            "client_prod" => (false, true),
            _ => (false, false),
        };
        assert_eq!(
            ok(log, dev_ip, dev_port),
            dev_ok,
            "job {id} ({kind:?}): {log}"
        );
        assert_eq!(
            refused(log, dev_ip, dev_port),
            !dev_ok,
            "job {id} ({kind:?}): {log}"
        );
        assert_eq!(
            ok(log, prod_ip, prod_port),
            prod_ok,
            "job {id} ({kind:?}): {log}"
        );
        assert_eq!(
            refused(log, prod_ip, prod_port),
            !prod_ok,
            "job {id} ({kind:?}): {log}"
        );
    }
    uids.sort_unstable();
    uids.dedup();
    assert!(uids.len() > 1, "jobs ran under their own uids: {uids:?}");
    let (mapped, chains) = net.mapped();
    assert_eq!(mapped, Vec::<u64>::new(), "no job uid is left mapped");
    assert_eq!(chains.len(), 3, "one chain per policy: {chains:?}");
}

#[test]
fn check_names_a_missing_table_a_stale_element_and_a_host_without_nft() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let lo = uid_base();
    let host = defaults_host(&net, lo);
    let check = |host: &Host, args: &[&str]| {
        let mut all = vec!["check"];
        all.extend(args);
        String::from_utf8_lossy(&host.exec(&all).stdout).into_owned()
    };
    let out = check(&host, &[]);
    assert!(
        out.contains(&format!("table inet {} does not exist yet", net.table)),
        "{out}"
    );
    let out = check(&host, &["--fix"]);
    assert!(out.contains("network: fixed"), "{out}");
    assert!(
        out.contains(&format!("table inet {} in place, 0 job uids", net.table)),
        "{out}"
    );
    // The table's rules loaded connection tracking, whose fill check reports.
    assert!(out.contains("connection tracking holds"), "{out}");
    // An element of a uid no job holds (as a crash could leave): named, and gc removes it.
    let stale = lo + 5;
    net.nft(&format!("add chain inet {} uid_{stale}", net.table));
    net.nft(&format!(
        "add element inet {} job_uids {{ {stale} : jump uid_{stale} }}",
        net.table
    ));
    let out = check(&host, &[]);
    assert!(
        out.contains("stale rules") && out.contains(&format!("element {stale}")),
        "{out}"
    );
    assert!(host.exec(&["gc"]).status.success());
    assert_eq!(net.mapped(), (vec![], vec![]));

    // A host without nft: the default deny is a promise, so check errs and prepare fails as a
    // system failure; with mode open and deny = [] jobs run and check warns.
    let missing = host_with_uids_and(
        lo + 10,
        lo + 19,
        &format!(
            "[network]\ntable = \"{}\"\nnft = \"/nonexistent/nft\"\n",
            net.table
        ),
    );
    let out = check(&missing, &[]);
    assert!(
        out.contains("error: network: \"/nonexistent/nft\" (nftables) is not installed"),
        "{out}"
    );
    let mut job = missing.job(2131, "");
    assert_eq!(job.config(), 0);
    let code = job.prepare();
    assert_ne!(code, 0, "{}", job.log);
    assert!(job.log.contains("apt-get install nftables"), "{}", job.log);
    let _ = job.cleanup();
    let open = host_with_uids_and(
        lo + 20,
        lo + 29,
        &format!(
            "[network]\ntable = \"{}\"\nnft = \"/nonexistent/nft\"\ndeny = []\n",
            net.table
        ),
    );
    let out = check(&open, &[]);
    assert!(
        out.contains("warning: network:") && out.contains("no network policy"),
        "{out}"
    );
    let (mut job, _) = prepared(&open, 2132);
    assert_eq!(run_body(&mut job, "true"), 0, "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

/// The ticket is obtained while the walls go up: when the network wall then fails, the ticket
/// already in the job's credentials dir is destroyed before any stage could see it, prepare is
/// a system failure, and the audit log says the grant failed and why (no granted record).
#[test]
fn a_granted_job_whose_network_wall_fails_keeps_no_ticket() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let dev_ip = net.ip(172);
    let dev_port = listener(dev_ip);
    let extra = "nft = \"/nonexistent/nft\"";
    let s = stages(&net, (dev_ip, dev_port).into(), net.ip(173), 53, extra);
    let mut job = s.job(2141, "client_dev");
    assert_eq!(job.config(), 0, "config:\n{}", job.log);
    assert_eq!(job.prepare(), 2, "a system failure:\n{}", job.log);
    assert!(job.log.contains("apt-get install nftables"), "{}", job.log);
    let cache = s.host.root().join("state/creds/2141/krb5cc");
    assert!(!cache.exists(), "the ticket outlived a failed prepare");
    let records: Vec<Value> = s
        .audit()
        .into_iter()
        .filter(|r| r["job_id"] == 2141)
        .collect();
    assert!(
        records.iter().all(|r| r["decision"] != "granted"),
        "{records:?}"
    );
    let failed = records
        .iter()
        .find(|r| r["event"] == "grant" && r["decision"] == "failed")
        .unwrap_or_else(|| panic!("no failed grant record: {records:?}"));
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("walls could not be set up") && reason.contains("nftables"),
        "{reason}"
    );
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

#[test]
fn two_executors_sharing_a_table_each_keep_their_jobs_policy() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let meta = net.ip(169);
    let meta_port = listener(meta);
    let config = format!(
        "[network]\ntable = \"{}\"\ndeny = [\"{meta}\"]\n",
        net.table
    );
    let (lo_a, lo_b) = (uid_base(), uid_base());
    let a = host_with_uids_and(lo_a, lo_a + 9, &config);
    let b = host_with_uids_and(lo_b, lo_b + 9, &config);
    // A makes the table; B's jobs must still be put under their policy in it.
    let (mut first, _) = prepared(&a, 2131);
    let (mut second, _) = prepared(&b, 2132);
    let body = format!("{PROBE}\nprobe {meta} {meta_port}\n");
    assert_eq!(run_body(&mut second, &body), 0, "{}", second.log);
    assert!(
        refused(&second.log, meta, meta_port),
        "the second executor's job: {}",
        second.log
    );
    // A's gc judges only A's uids: B's job keeps its rules.
    let gc = a.exec(&["gc", "--max-age-secs", "0"]);
    assert!(gc.status.success(), "{}", crate::common::text(&gc));
    assert_eq!(run_body(&mut second, &body), 0, "{}", second.log);
    assert_eq!(
        second
            .log
            .lines()
            .filter(|l| l.starts_with(&format!("REFUSED {meta}:{meta_port} ")))
            .count(),
        2,
        "after the other executor's gc: {}",
        second.log
    );
    assert_eq!(first.cleanup(), 0, "{}", first.log);
    assert_eq!(second.cleanup(), 0, "{}", second.log);
    assert_eq!(net.mapped().0, Vec::<u64>::new());
}

/// The default `nft`, which must run in-process (libnftables), not silently fall back to the
/// program; None when not root (the library is for root only).
fn in_process_nft() -> Option<p3_executor::walls::network::nft::Nft> {
    if !needs_root() {
        return None;
    }
    let nft = p3_executor::walls::network::nft::Nft::new("nft");
    assert!(nft.in_process(), "libnftables.so.1 does not load");
    Some(nft)
}

#[test]
fn the_default_nft_applies_and_lists_in_process_through_libnftables() {
    let Some(nft) = in_process_nft() else { return };
    // The test's own table, deleted when dropped (also on a panic).
    let net = Net::new();
    let table = &net.table;
    let tx = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": {"family": "inet", "table": table, "name": "uid_4242"}}},
    ]});
    nft.apply(&tx, "make the scratch table").unwrap();
    // The program sees what the library committed.
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", table])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listing = nft.list(table).unwrap().expect("the table exists");
    assert_eq!(listing.chains, ["uid_4242"]);
    assert!(!listing.has_map && !listing.has_output);
    let delete = serde_json::json!({"nftables": [
        {"delete": {"table": {"family": "inet", "name": table}}},
    ]});
    nft.apply(&delete, "delete the scratch table").unwrap();
    assert_eq!(nft.list(table).unwrap(), None);
}

#[test]
fn a_failing_transaction_in_process_fails_with_the_programs_error_text() {
    use p3_executor::walls::network::NetworkError;
    let Some(nft) = in_process_nft() else { return };
    // Names like no other test's: nft names a similar chain of another table ("did you mean"),
    // and the other tests' tables come and go meanwhile.
    let missing = format!("absent_{}_xq", std::process::id());
    let tx = serde_json::json!({"nftables": [
        {"delete": {"chain": {"family": "inet", "table": missing, "name": "never_made_qz"}}},
    ]});
    let Err(NetworkError::Nft { what, stderr }) = nft.apply(&tx, "remove the job's rules") else {
        panic!("deleting a chain of a table that does not exist succeeded");
    };
    assert_eq!(what, "remove the job's rules");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    // Word for word what the program prints for the same transaction.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(tx.to_string().as_bytes()).unwrap();
    let out = Command::new("nft")
        .arg("-j")
        .arg("-f")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(stderr, String::from_utf8_lossy(&out.stderr).trim());
}

/// Not a check: prints how long a plain job's transaction takes through libnftables and
/// through the `nft` process (`cargo test --test it -- --ignored --nocapture
/// network::time_a_jobs_transaction`).
#[test]
#[ignore = "a measurement, not a test"]
fn time_a_jobs_transaction_in_process_and_as_the_program() {
    if !needs_root() {
        return;
    }
    use p3_executor::walls::network::nft::Nft;
    use p3_executor::walls::network::{config::NetworkConfig, policy, render};
    use std::time::Instant;
    // The test's own table, deleted when dropped (also on a panic).
    let net = Net::new();
    let table = &net.table;
    let (lib, program) = (Nft::new("nft"), Nft::new("/usr/sbin/nft"));
    assert!(lib.in_process() && !program.in_process());
    let ranges = [[uid_base(), uid_base() + 9]];
    let started = Instant::now();
    let switches = render::Switches {
        log: true,
        loopback_apart: true,
    };
    lib.apply(&render::base(table, &ranges, switches), "create the table")
        .unwrap();
    println!("first call (dlopen included): {:?}", started.elapsed());
    let cfg: NetworkConfig = toml::from_str("").unwrap();
    let always = policy::Always {
        resolvers: vec![],
        gitlab: None,
    };
    let plain = policy::for_job(&cfg, None, &always);
    let (rules, _) = policy::pin(&plain, |_| Err("no names".into())).unwrap();
    // A fresh uid each time, as at prepare, removed as cleanup does (timed apart).
    let job = |i: u32| render::JobKey {
        uid: ranges[0][0] + i % 10,
        subids: None,
    };
    let chain = render::PolicyChain::new(&plain.name, plain.mode, &rules, true);
    for (name, nft) in [("libnftables", &lib), ("nft process", &program)] {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for i in 0..30 {
            let tx = render::add_job(table, &ranges, &job(i), &chain, &Default::default());
            let t = Instant::now();
            nft.apply(&tx, "add the job's rules").unwrap();
            add.push(t.elapsed());
            let t = Instant::now();
            nft.remove_job(table, &job(i), &chain.name).unwrap();
            remove.push(t.elapsed());
        }
        for (what, times) in [("add", &mut add), ("remove", &mut remove)] {
            times.sort();
            println!(
                "{name}, {what} a job: median {:?}, min {:?}, max {:?} (30 runs)",
                times[15], times[0], times[29]
            );
        }
    }
}

/// A greeting server on `ip:port` run as `uid` (what a service a job's script starts is, seen
/// from the network), ready when this returns.
fn listener_as(uid: u32, ip: std::net::IpAddr, port: u16) -> Daemon {
    let family = if ip.is_ipv6() { "AF_INET6" } else { "AF_INET" };
    let server = format!(
        "import socket\n\
         s = socket.socket(socket.{family}); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{ip}', {port})); s.listen(16)\n\
         while True:\n    c, _ = s.accept(); c.sendall(b'hello\\n'); c.close()\n"
    );
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        // Not a PATH lookup: root's PATH may name a python the uid cannot run.
        "/usr/bin/python3",
        "-c",
        &server,
    ])
    .process_group(0);
    let daemon = Daemon(cmd.spawn().unwrap());
    for _ in 0..100 {
        let probe = Command::new("ss")
            .args(["-Htln", &format!("src {}", SocketAddr::from((ip, port)))])
            .output()
            .unwrap();
        if !probe.stdout.is_empty() {
            return daemon;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the listener as uid {uid} never listened on {ip}:{port}");
}

/// Jobs share the host's network namespace, not their listeners: a port job A listens on (a
/// server running as A's uid) answers A's own connections only. Job B's connect is refused
/// (a reset, within a second or two, not a hang), as is the host's; B still reaches the
/// host's own listener, and A's tag leaves the table with A's cleanup.
#[test]
fn a_jobs_listener_answers_its_own_job_only() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let lo = uid_base();
    let textfile_dir = tempfile::tempdir().unwrap();
    let textfile = textfile_dir.path().join("p3_executor.prom");
    let host = host_with_uids_and(
        lo,
        lo + 9,
        &format!(
            "[network]\ntable = \"{}\"\n[metrics]\ntextfile = \"{}\"\n",
            net.table,
            textfile.display()
        ),
    );
    let (mut a, ua) = prepared(&host, 620);
    let (mut b, ub) = prepared(&host, 621);
    assert_ne!(ua, ub);
    assert!(
        a.log.contains("loopback listeners answer this job only"),
        "the job log says so: {}",
        a.log
    );
    let ip = net.ip(20);
    let port = listener_port_free(ip);
    let _a_service = listener_as(ua, ip.into(), port);
    let host_ip = net.ip(21);
    let host_port = listener(host_ip);

    assert_eq!(
        run_body(&mut a, &format!("{PROBE}\nprobe {ip} {port}")),
        0,
        "{}",
        a.log
    );
    assert!(
        ok(&a.log, ip, port),
        "A reaches its own listener:\n{}",
        a.log
    );

    let started = std::time::Instant::now();
    assert_eq!(
        run_body(
            &mut b,
            &format!("{PROBE}\nprobe {ip} {port}\nprobe {host_ip} {host_port}")
        ),
        0,
        "{}",
        b.log
    );
    assert!(
        refused(&b.log, ip, port),
        "job B reached job A's listener:\n{}",
        b.log
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal waited for a timeout: {:?}",
        started.elapsed()
    );
    assert!(ok(&b.log, host_ip, host_port), "{}", b.log);
    assert!(
        !connects_as(0, ip, port),
        "the host reached job A's listener"
    );
    // A's own connection still works after B's was refused (B's crossed, not A's).
    assert!(connects_as(ua, ip, port));
    // The same over IPv6 (::1), where the host has it.
    if let Ok(free) = TcpListener::bind("[::1]:0") {
        let port6 = free.local_addr().unwrap().port();
        drop(free);
        let _a_service6 = listener_as(ua, std::net::Ipv6Addr::LOCALHOST.into(), port6);
        let probe = format!("{PROBE}\nprobe ::1 {port6}");
        assert_eq!(run_body(&mut a, &probe), 0, "{}", a.log);
        assert!(a.log.contains(&format!("OK ::1:{port6}")), "{}", a.log);
        assert_eq!(run_body(&mut b, &probe), 0, "{}", b.log);
        assert!(
            b.log
                .lines()
                .any(|l| l.starts_with(&format!("REFUSED ::1:{port6} ")) && l.contains("refused")),
            "job B reached job A's IPv6 listener:\n{}",
            b.log
        );
    }
    // The metrics count both crossings (B's and the host's).
    let metrics = host.exec(&["metrics"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let crossed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("p3_executor_loopback_crossed_total "))
        .unwrap_or_else(|| panic!("no crossing counter in:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(crossed >= 2, "{metrics}");

    let (tags, peers) = net.tags();
    assert!(tags.contains(&u64::from(ua)) && tags.contains(&u64::from(ub)));
    assert_eq!(peers, tags.len());
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    assert_eq!(b.cleanup(), 0, "{}", b.log);
    // Cleanup rewrote the textfile without listing the table: it keeps the last reading.
    let written = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        written.contains(&format!("p3_executor_loopback_crossed_total {crossed}\n")),
        "{written}"
    );
    assert_eq!(net.tags(), (vec![], 0), "a tag outlived its job");
}

/// `[network] loopback_apart = false` leaves the host's loopback as it was (for hosts that
/// must not load connection tracking): job B reaches job A's listener, and the table's output
/// chain holds no `ct` expression.
#[test]
fn loopback_apart_off_leaves_listeners_shared_and_conntrack_unused() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let lo = uid_base();
    let host = host_with_uids_and(
        lo,
        lo + 9,
        &format!(
            "[network]\ntable = \"{}\"\nloopback_apart = false\n",
            net.table
        ),
    );
    let (mut a, ua) = prepared(&host, 630);
    let (mut b, _) = prepared(&host, 631);
    assert!(!a.log.contains("loopback listeners"), "{}", a.log);
    let ip = net.ip(30);
    let port = listener_port_free(ip);
    let _a_service = listener_as(ua, ip.into(), port);
    assert_eq!(
        run_body(&mut b, &format!("{PROBE}\nprobe {ip} {port}")),
        0,
        "{}",
        b.log
    );
    assert!(ok(&b.log, ip, port), "{}", b.log);
    let chain = Command::new("nft")
        .args(["list", "chain", "inet", &net.table, "output"])
        .output()
        .unwrap();
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert!(
        chain.contains("goto jobs") && !chain.contains(" ct "),
        "{chain}"
    );
    let metrics = host.exec(&["metrics"]);
    assert!(
        !String::from_utf8_lossy(&metrics.stdout).contains("loopback_crossed"),
        "no counter when off"
    );
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    assert_eq!(b.cleanup(), 0, "{}", b.log);
}

/// A job prepared before its executor kept jobs apart has no tag. Once the upgrade's rules
/// are in, its loopback stays as it was (its own listener still answers it: nothing is cut off
/// mid-job), and its cleanup by the new executor succeeds and leaves nothing behind.
#[test]
fn a_job_prepared_before_loopback_apart_keeps_its_loopback_and_cleans_up() {
    if !needs_root() {
        return;
    }
    let net = Net::new();
    let host = defaults_host(&net, uid_base());
    let (mut a, ua) = prepared(&host, 640);
    // What an earlier executor's prepare left: the map element, no tag and no peer.
    net.nft(&format!(
        "delete element inet {} job_tags {{ {ua} }}",
        net.table
    ));
    net.nft(&format!(
        "delete element inet {} job_peers {{ {ua}-{ua} . {ua} }}",
        net.table
    ));
    assert_eq!(net.tags(), (vec![], 0));
    let ip = net.ip(40);
    let port = listener_port_free(ip);
    let _a_service = listener_as(ua, ip.into(), port);
    assert_eq!(
        run_body(&mut a, &format!("{PROBE}\nprobe {ip} {port}")),
        0,
        "{}",
        a.log
    );
    assert!(ok(&a.log, ip, port), "{}", a.log);
    assert_eq!(a.cleanup(), 0, "{}", a.log);
    assert_eq!(net.tags(), (vec![], 0));
    assert_eq!(net.mapped().0, Vec::<u64>::new());
}
