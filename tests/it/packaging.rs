//! The Debian package and what ships in it (issue 13).
//!
//! Always: `--version` names the commit it was built from; the man pages and completions that
//! p3-executor-xtask generates cover every subcommand of the two clap definitions (read here
//! from the definitions themselves, not from the generator's own list).
//!
//! `the_deb_installs_upgrades_under_a_running_job_removes_and_purges` installs packages into
//! this machine, so it is `#[ignore]`d and also needs `P3_TEST_PACKAGE=1`: scripts/test.sh runs
//! it on its own after the suite (CI included). It builds the .deb from the debug build
//! (packaging/build-deb.sh --profile dev --no-build: no release build), checks it with dpkg-deb
//! and lintian, installs it with apt, runs `check`, `man`, the bash completion and the gc unit,
//! upgrades it under a running job, then removes and purges it.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use clap::CommandFactory;

/// A binary next to the `p3-executor` under test (same profile, same target dir).
fn sibling(name: &str) -> PathBuf {
    common::exe().with_file_name(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run and return the output; panics only if the program cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run, assert success, return stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every subcommand path a user can type after `p3-executor`, straight from the clap
/// definitions: the runner's, and for the passed-through steps the steps binary's.
fn subcommand_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push(path.clone());
            walk(sub, &path, out);
        }
    }
    let runner = p3_executor::cli::Cli::command();
    let steps = p3_steps::cli::StepsCli::command();
    let mut out = Vec::new();
    for sub in runner.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let path = vec![sub.get_name().to_owned()];
        out.push(path.clone());
        // A step's own levels are the steps binary's (the runner passes its arguments on).
        let definition = steps.find_subcommand(sub.get_name()).unwrap_or(sub);
        walk(definition, &path, &mut out);
    }
    out
}

fn man_page(path: &[String]) -> String {
    format!("p3-executor-{}.1", path.join("-"))
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let out = ok(Command::new(common::exe()).arg("--version"));
    let line = out.trim();
    let rest = line
        .strip_prefix(&format!(
            "p3-executor {} (commit ",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{line}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    let d: Vec<&str> = date.split('-').collect();
    assert!(
        d.len() == 3 && d[0].len() == 4 && d.iter().all(|p| p.parse::<u32>().is_ok()),
        "{line}"
    );
    // This suite runs from a git checkout: the commit is known.
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        let head = text(
            &run(Command::new("git")
                .args(["-c", "safe.directory=*", "rev-parse", "--short", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR")))
            .stdout,
        );
        // The binary may predate a commit made after it was built; it names a real one.
        assert_ne!(hash, "unknown", "{line}");
        if head.trim() == hash {
            return;
        }
        let known = run(Command::new("git")
            .args(["-c", "safe.directory=*", "cat-file", "-e"])
            .arg(format!("{hash}^{{commit}}"))
            .current_dir(env!("CARGO_MANIFEST_DIR")));
        assert!(known.status.success(), "{line}: no such commit");
    }
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let xtask = sibling("p3-executor-xtask");
    if !xtask.exists() {
        eprintln!(
            "skipped: {} is not built (`cargo test --workspace`, as scripts/test.sh runs it, \
             builds it; a plain `cargo test` does not)",
            xtask.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (man, completions) = (dir.path().join("man"), dir.path().join("completions"));
    ok(Command::new(&xtask).arg("man").arg(&man));
    ok(Command::new(&xtask).arg("completions").arg(&completions));
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));

    let top = read(man.join("p3-executor.1"));
    assert!(top.contains(".TH P3-EXECUTOR 1"), "{top}");
    let paths = subcommand_paths();
    for name in [
        "gc", "check", "audit", "s3", "image", "p3", "release", "demo",
    ] {
        assert!(paths.contains(&vec![name.to_owned()]), "{name}: {paths:?}");
    }
    for path in &paths {
        let page = read(man.join(man_page(path)));
        let synopsis = format!("p3\\-executor {}", path.join(" ").replace('-', "\\-"));
        assert!(
            page.contains(&synopsis),
            "{}: no `{synopsis}`",
            man_page(path)
        );
    }
    assert!(read(man.join("p3-executor-steps.1")).contains("p3\\-executor\\-steps"));
    assert!(read(man.join("p3-executor-aws.1")).contains("p3\\-executor\\-aws"));
    let pages = std::fs::read_dir(&man).unwrap().count();
    assert_eq!(
        pages,
        paths.len() + 3,
        "one page per subcommand, the top, the steps' and the AWS binary's"
    );

    let bash = read(completions.join("p3-executor.bash"));
    let zsh = read(completions.join("_p3-executor"));
    let fish = read(completions.join("p3-executor.fish"));
    for path in &paths {
        let word = path.last().unwrap();
        let state: String = std::iter::once("p3__executor".to_owned())
            .chain(path.iter().map(|p| format!("__subcmd__{p}")))
            .collect();
        assert!(
            bash.contains(&format!("        {state})")),
            "bash: {path:?}"
        );
        assert!(zsh.contains(&format!("'{word}:")), "zsh: {path:?}");
        assert!(fish.contains(&format!("-a \"{word}\"")), "fish: {path:?}");
    }
}

/// What bash completes for `words` with the completion script `script` loaded.
fn bash_complete(script: &Path, words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _p3__executor p3-executor '{}' '{}'; \
         echo \"${{COMPREPLY[*]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    ok(Command::new("bash").args(["--norc", "-c", &program]))
        .trim()
        .to_owned()
}

const PKG: &str = "p3-executor";
/// Versions of the test builds: below any release (`~`), and recognisable, so a run that died
/// half-way is cleaned up by the next one rather than mistaken for a real install.
const TEST_VERSION_MARK: &str = "~pkgtest";

/// `Some(version)` when the package is installed (or only its config files are).
fn installed_version() -> Option<String> {
    let out =
        run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev} ${Version}", PKG]));
    let s = text(&out.stdout);
    (out.status.success() && !s.starts_with("un"))
        .then(|| s.split_whitespace().last().unwrap_or("").to_owned())
}

fn apt(args: &[&str]) -> Output {
    run(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env_remove("P3_EXECUTOR_CONFIG"))
}

fn apt_ok(args: &[&str]) -> String {
    let out = apt(args);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "apt-get {args:?}: {all}");
    all
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

/// Whatever the test installed or created on this machine goes, however the test ends.
struct Machine {
    created_user: bool,
    created: Vec<&'static str>,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if installed_version().is_some() {
            let _ = apt(&["purge", "-y", "-q", PKG]);
        }
        for path in &self.created {
            let _ = std::fs::remove_dir_all(path);
        }
        if self.created_user {
            let _ = run(Command::new("deluser").args(["--system", "--quiet", "p3-job"]));
            let _ = run(Command::new("delgroup").args(["--system", "--quiet", "p3-job"]));
        }
    }
}

/// Why this machine cannot take the test, if it cannot.
fn cannot_install_here() -> Option<String> {
    if std::env::var("P3_TEST_PACKAGE").as_deref() != Ok("1") {
        return Some(
            "set P3_TEST_PACKAGE=1 to let it install packages (scripts/test.sh does)".into(),
        );
    }
    if !common::is_root() {
        return Some("installing a package needs root".into());
    }
    for tool in ["apt-get", "dpkg-deb", "dpkg-query"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
            .status
            .code()
            != Some(0)
        {
            return Some(format!("not a Debian machine: no {tool}"));
        }
    }
    if let Some(v) = installed_version() {
        if !v.contains(TEST_VERSION_MARK) {
            return Some(format!(
                "{PKG} {v} is installed here; the test never touches a real install"
            ));
        }
    }
    None
}

#[test]
#[ignore = "installs a .deb into this machine: scripts/test.sh runs it with P3_TEST_PACKAGE=1"]
fn the_deb_installs_upgrades_under_a_running_job_removes_and_purges() {
    if let Some(why) = cannot_install_here() {
        eprintln!("skipped: {why}");
        return;
    }
    // A leftover of a run that died half-way.
    if installed_version().is_some() {
        apt_ok(&["purge", "-y", "-q", PKG]);
    }
    // Nothing of a real install may be here. A state root holding only `host-id` is not one:
    // loading any config as root with the default state_root makes that file (the suite's
    // tests do), and purge removes it with the rest of the state.
    let state_root_is_only_a_host_id = std::fs::read_dir("/var/lib/p3-executor")
        .map(|d| d.flatten().all(|e| e.file_name() == "host-id"))
        .unwrap_or(true);
    for (path, taken) in [
        ("/etc/p3-executor", Path::new("/etc/p3-executor").exists()),
        ("/var/lib/p3-executor", !state_root_is_only_a_host_id),
        (
            "/var/log/p3-executor",
            Path::new("/var/log/p3-executor").exists(),
        ),
    ] {
        assert!(
            !taken,
            "{path} exists (an install from source?): the test would take it over; remove it \
             or run the test elsewhere"
        );
    }
    for tool in ["p3-executor-steps", "p3-executor-aws", "p3-executor-xtask"] {
        assert!(
            sibling(tool).exists(),
            "{} is not built: run `cargo test --workspace` (scripts/test.sh)",
            sibling(tool).display()
        );
    }
    let user_existed = run(Command::new("getent").args(["passwd", "p3-job"]))
        .status
        .success();
    let _machine = Machine {
        created_user: !user_existed,
        created: vec![
            "/etc/p3-executor",
            "/var/lib/p3-executor",
            "/var/log/p3-executor",
        ],
    };
    let clock = Instant::now();
    let lap = |what: &str| eprintln!("[{:>5.1}s] {what}", clock.elapsed().as_secs_f64());

    // --- Build two packages from the debug build: the first and an upgrade. ---
    let out_dir = tempfile::tempdir().unwrap();
    let target_dir = common::exe()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let version = env!("CARGO_PKG_VERSION");
    let build = |n: u32| -> PathBuf {
        let deb_version = format!("{version}{TEST_VERSION_MARK}{n}-1");
        let stdout = ok(Command::new("packaging/build-deb.sh")
            .args([
                "--profile",
                "dev",
                "--no-build",
                "--fast",
                "--deb-version",
                &deb_version,
            ])
            .arg("--output")
            .arg(out_dir.path().join(n.to_string()))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target_dir));
        let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        let deb = if deb.is_absolute() {
            deb
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(deb)
        };
        assert!(deb.exists(), "no .deb at {deb:?}: {stdout}");
        assert!(deb.to_string_lossy().contains(&deb_version), "{deb:?}");
        deb
    };
    let (v1, v2) = (build(1), build(2));
    lap("built two packages");

    // --- Control fields. ---
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&v1));
    eprintln!("dpkg-deb -I:\n{info}");
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name}: in\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), PKG);
    assert_eq!(field("Architecture"), "amd64");
    let depends: Vec<String> = field("Depends").split(", ").map(str::to_owned).collect();
    let names: Vec<&str> = depends
        .iter()
        .map(|d| d.split_whitespace().next().unwrap())
        .collect();
    for needed in ["git", "krb5-user", "ca-certificates", "adduser", "libc6"] {
        assert!(
            names.contains(&needed),
            "Depends lacks {needed}: {depends:?}"
        );
    }
    for optional in ["buildah", "podman", "awscli"] {
        assert!(
            !names.contains(&optional),
            "{optional} must only be suggested: {depends:?}"
        );
    }
    assert_eq!(field("Suggests"), "buildah, podman, awscli");
    let conffiles = ok(Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&v1)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/p3-executor/config.toml");

    // --- Contents and modes. ---
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&v1));
    let entries: BTreeMap<String, (String, String)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.').to_owned();
            Some((path, (f[0].to_owned(), f[1].to_owned())))
        })
        .collect();
    let expect = |path: &str, perms: &str| {
        let (p, owner) = entries
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        assert_eq!((p.as_str(), owner.as_str()), (perms, "0/0"), "{path}");
    };
    expect("/usr/bin/p3-executor", "-rwxr-xr-x");
    expect("/usr/bin/p3-executor-steps", "-rwxr-xr-x");
    expect("/usr/bin/p3-executor-aws", "-rwxr-xr-x");
    expect("/etc/p3-executor/config.toml", "-rw-------");
    expect("/usr/lib/tmpfiles.d/p3-executor.conf", "-rw-r--r--");
    expect(
        "/usr/lib/systemd/system/p3-executor-gc.service",
        "-rw-r--r--",
    );
    expect("/usr/lib/systemd/system/p3-executor-gc.timer", "-rw-r--r--");
    expect(
        "/usr/lib/systemd/system/p3-executor-audit-ship.service",
        "-rw-r--r--",
    );
    expect(
        "/usr/lib/systemd/system/gitlab-runner.service.d/p3-executor.conf",
        "-rw-r--r--",
    );
    expect(
        "/usr/share/bash-completion/completions/p3-executor",
        "-rw-r--r--",
    );
    expect(
        "/usr/share/zsh/vendor-completions/_p3-executor",
        "-rw-r--r--",
    );
    expect(
        "/usr/share/fish/vendor_completions.d/p3-executor.fish",
        "-rw-r--r--",
    );
    expect("/usr/share/doc/p3-executor/README.md", "-rw-r--r--");
    expect(
        "/usr/share/doc/p3-executor/runner-config.toml",
        "-rw-r--r--",
    );
    expect(
        "/usr/share/doc/p3-executor/example-project/.gitlab-ci.yml",
        "-rw-r--r--",
    );
    expect(
        "/usr/share/doc/p3-executor/example-project/p3.toml",
        "-rw-r--r--",
    );
    expect("/usr/share/doc/p3-executor/copyright", "-rw-r--r--");
    expect(
        "/usr/share/doc/p3-executor/changelog.Debian.gz",
        "-rw-r--r--",
    );
    expect("/usr/share/man/man1/p3-executor.1.gz", "-rw-r--r--");
    expect("/usr/share/man/man1/p3-executor-steps.1.gz", "-rw-r--r--");
    expect("/usr/share/man/man1/p3-executor-aws.1.gz", "-rw-r--r--");
    for path in subcommand_paths() {
        expect(
            &format!("/usr/share/man/man1/{}.gz", man_page(&path)),
            "-rw-r--r--",
        );
    }
    let unwanted: Vec<&String> = entries
        .keys()
        .filter(|p| p.contains("cron") || p.ends_with("/p3-executor-demo"))
        .collect();
    assert!(
        unwanted.is_empty(),
        "no cron file and no demo in the package: {unwanted:?}"
    );

    // --- lintian: no error or warning (overrides are in packaging/debian/lintian-overrides,
    // each with its reason; not --show-overrides, which makes lintian 2.116 fail on them). ---
    // Its own TMPDIR, removed with the test: lintian leaves a cache file there
    // (`mldbm-elf-*`), which the suite's shared TMPDIR would keep run after run.
    let lintian_tmp = tempfile::tempdir().unwrap();
    let lintian = run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info", "--pedantic"])
        .env("TMPDIR", lintian_tmp.path())
        .arg(&v1));
    eprintln!(
        "lintian:\n{}{}",
        text(&lintian.stdout),
        text(&lintian.stderr)
    );
    assert!(lintian.status.success(), "lintian failed (see above)");
    lap("dpkg-deb and lintian checks");

    // --- Install. ---
    apt_ok(&["install", "-y", "-q", v1.to_str().unwrap()]);
    assert_eq!(
        installed_version().as_deref(),
        Some(format!("{version}{TEST_VERSION_MARK}1-1").as_str())
    );
    lap("installed");
    for (path, want) in [
        ("/etc/p3-executor", 0o700),
        ("/etc/p3-executor/keytabs", 0o700),
        ("/etc/p3-executor/config.toml", 0o600),
        ("/var/lib/p3-executor", 0o711),
        ("/var/lib/p3-executor/builds", 0o711),
        ("/var/log/p3-executor", 0o750),
    ] {
        assert_eq!(mode(path), want, "{path}: {:o}", mode(path));
        assert_eq!(std::fs::metadata(path).unwrap().uid(), 0, "{path}");
    }
    let user = ok(Command::new("getent").args(["passwd", "p3-job"]));
    assert!(user.contains(":/nonexistent:/usr/sbin/nologin"), "{user}");
    assert!(
        run(Command::new("getent").args(["group", "p3-job"]))
            .status
            .success()
    );
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/timers.target.wants/p3-executor-gc.timer")
            .is_ok(),
        "the gc timer is not enabled"
    );

    // `check` with the shipped config: what is left is the operator's part, the keytabs.
    let check = run(Command::new("/usr/bin/p3-executor")
        .arg("check")
        .env_remove("P3_EXECUTOR_CONFIG"));
    let report = format!("{}{}", text(&check.stdout), text(&check.stderr));
    eprintln!("p3-executor check:\n{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(
        !errors.is_empty() && errors.iter().all(|e| e.contains("keytab")),
        "{report}"
    );
    assert_eq!(check.status.code(), Some(1), "{report}");

    assert_eq!(
        ok(Command::new("man").args(["-w", "p3-executor"])).trim(),
        "/usr/share/man/man1/p3-executor.1.gz"
    );
    ok(Command::new("man").args(["-w", "p3-executor-audit-show"]));
    let completion = Path::new("/usr/share/bash-completion/completions/p3-executor");
    let offered = bash_complete(completion, &["p3-executor", ""]);
    assert!(offered.split(' ').any(|w| w == "gc"), "{offered}");
    let offered = bash_complete(completion, &["p3-executor", "audit", "show", "--"]);
    assert!(offered.contains("--job"), "{offered}");

    // The units as systemd reads them (offline), then one gc run.
    let units = [
        "/usr/lib/systemd/system/p3-executor-gc.service",
        "/usr/lib/systemd/system/p3-executor-gc.timer",
        "/usr/lib/systemd/system/p3-executor-audit-ship.service",
    ];
    if run(Command::new("sh").args(["-c", "command -v systemd-analyze"]))
        .status
        .success()
    {
        let verify = run(Command::new("systemd-analyze").arg("verify").args(units));
        let said = format!("{}{}", text(&verify.stdout), text(&verify.stderr));
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "systemd-analyze verify: {said}"
        );
    }
    if Path::new("/run/systemd/system").exists() {
        ok(Command::new("systemctl").args(["start", "p3-executor-gc.service"]));
        let result =
            ok(Command::new("systemctl").args(["show", "-p", "Result", "p3-executor-gc.service"]));
        assert_eq!(result.trim(), "Result=success");
    } else {
        // No systemd here (a container): run what the unit runs.
        let unit = std::fs::read_to_string(units[0]).unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let out = ok(Command::new(argv[0])
            .args(&argv[1..])
            .env_remove("P3_EXECUTOR_CONFIG"));
        assert!(out.contains("job(s) removed"), "{out}");
    }
    lap("check, man, completion, gc");

    // --- Upgrade, with a job running across it. ---
    // The operator's data: an edited config, a keytab, state, an audit record.
    let config = "/etc/p3-executor/config.toml";
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string(config).unwrap()
    );
    std::fs::write(config, &edited).unwrap();
    std::fs::write(
        "/etc/p3-executor/keytabs/test.keytab",
        b"\x05\x02not a real keytab",
    )
    .unwrap();
    std::fs::set_permissions(
        "/etc/p3-executor/keytabs/test.keytab",
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write("/var/lib/p3-executor/operator-state", "kept").unwrap();
    std::fs::write(
        "/var/log/p3-executor/audit.jsonl",
        "{\"record\":\"kept\"}\n",
    )
    .unwrap();

    // A job of the installed binary (with a test host's config), mid-`run` during the upgrade:
    // its stage waits for `go`, which is created only once the new package is in place.
    let host = p3_testkit::driver::Host::new(PathBuf::from("/usr/bin/p3-executor"), "");
    let go = host.root().join("go");
    let script = format!(
        "for i in $(seq 1 1200); do [ -e '{go}' ] && break; sleep 0.1; done; [ -e '{go}' ] && echo spanned-the-upgrade",
        go = go.display()
    );
    let mut job = host
        .job(1301, &script)
        .after("p3-executor image --help >/dev/null && echo the-new-steps-binary-ran");
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    assert_eq!(job.run_stage("get_sources"), 0, "{}", job.log);
    let running = job.spawn_stage("build_script");
    let upgrade = apt_ok(&["install", "-y", "-q", v2.to_str().unwrap()]);
    assert_eq!(
        installed_version().as_deref(),
        Some(format!("{version}{TEST_VERSION_MARK}2-1").as_str())
    );
    assert!(
        !upgrade.contains("Configuration file"),
        "a conffile prompt: {upgrade}"
    );
    // The running `run` still executes the old binary, now replaced on disk.
    let exe = std::fs::read_link(format!("/proc/{}/exe", running.id())).unwrap();
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
    std::fs::write(&go, "").unwrap();
    let out = running.wait_with_output().unwrap();
    let stage_log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stage_log.contains("spanned-the-upgrade"),
        "{stage_log}"
    );
    // The rest of the job runs the new binary (each runner call is a new process).
    assert_eq!(job.run_stage("after_script"), 0, "{}", job.log);
    assert!(job.log.contains("the-new-steps-binary-ran"), "{}", job.log);
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    lap("upgraded under a running job");

    assert_eq!(
        std::fs::read_to_string(config).unwrap(),
        edited,
        "the edited config was replaced"
    );
    for (path, want) in [
        ("/etc/p3-executor", 0o700),
        ("/etc/p3-executor/keytabs", 0o700),
        (config, 0o600),
        ("/var/lib/p3-executor", 0o711),
        ("/var/log/p3-executor", 0o750),
    ] {
        assert_eq!(
            mode(path),
            want,
            "{path} after the upgrade: {:o}",
            mode(path)
        );
    }
    for path in [
        "/etc/p3-executor/keytabs/test.keytab",
        "/var/lib/p3-executor/operator-state",
        "/var/log/p3-executor/audit.jsonl",
    ] {
        assert!(Path::new(path).exists(), "{path} lost in the upgrade");
    }

    // --- Remove: only the package's own files go. ---
    apt_ok(&["remove", "-y", "-q", PKG]);
    assert!(
        !Path::new("/usr/bin/p3-executor").exists()
            && !Path::new("/usr/bin/p3-executor-steps").exists()
    );
    for path in [
        config,
        "/etc/p3-executor/keytabs/test.keytab",
        "/var/lib/p3-executor/operator-state",
        "/var/log/p3-executor/audit.jsonl",
    ] {
        assert!(Path::new(path).exists(), "remove took {path}");
    }
    assert!(
        run(Command::new("getent").args(["passwd", "p3-job"]))
            .status
            .success(),
        "remove took the job user"
    );

    // --- Purge: config and state go; the audit log and the keytabs never do, and it says so. ---
    let purge = apt_ok(&["purge", "-y", "-q", PKG]);
    assert_eq!(installed_version(), None);
    assert!(!Path::new(config).exists(), "purge kept the config");
    assert!(
        !Path::new("/var/lib/p3-executor").exists(),
        "purge kept the state"
    );
    assert!(
        !Path::new("/run/p3-executor").exists(),
        "purge kept the registry of configs"
    );
    assert!(
        Path::new("/var/log/p3-executor/audit.jsonl").exists(),
        "purge took the audit log"
    );
    assert!(
        Path::new("/etc/p3-executor/keytabs/test.keytab").exists(),
        "purge took a keytab"
    );
    assert!(
        purge.contains(
            "keeps: /var/log/p3-executor (the audit log) /etc/p3-executor/keytabs (the keytabs)"
        ),
        "{purge}"
    );
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/timers.target.wants/p3-executor-gc.timer")
            .is_err(),
        "purge left the timer enabled"
    );
    assert!(
        run(Command::new("getent").args(["passwd", "p3-job"]))
            .status
            .success(),
        "purge took the job user"
    );
    lap("removed and purged");
}
