//! A local stand-in for GitLab Runner's side of the custom executor protocol, used by
//! `p3-executor demo` and by the end-to-end tests.
//!
//! It does what `shared/protocol/custom-executor.md` says the runner does: writes the job
//! payload (mode 0600) as JOB_RESPONSE_FILE in a private temp dir, sets BUILD_FAILURE_EXIT_CODE,
//! SYSTEM_FAILURE_EXIT_CODE, BUILD_EXIT_CODE_FILE and CUSTOM_ENV_* for every job variable,
//! calls config → prepare → run (per stage, with runner-like generated bash scripts written
//! root-only into its temp dir) → cleanup, adds config's job_env to the later calls, and
//! collects the job log.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

/// A host: temp dirs, an executor config, a git repository to build.
pub struct Host {
    /// The p3-executor binary the runner calls.
    pub exe: PathBuf,
    /// Keeps the temp tree alive.
    pub dir: tempfile::TempDir,
    /// Executor config file.
    pub config: PathBuf,
    /// Source repository (file:// URL target).
    pub repo: PathBuf,
    /// HEAD commit of the repo.
    pub sha: String,
    /// The host's own nftables table (unless `extra` configured `[network]`), deleted on drop
    /// so no test run leaves one behind and hosts never share one.
    network_table: Option<String>,
}

impl Host {
    /// Keep the host's tree on disk (the demo's `--keep`); its network table is still removed.
    pub fn keep(self) -> PathBuf {
        let path = self.dir.path().to_path_buf();
        self.drop_network_table();
        // Skips TempDir's removal (and this Drop): the tree stays.
        std::mem::forget(self);
        path
    }

    fn drop_network_table(&self) {
        if let Some(table) = &self.network_table {
            // Absent when no job was prepared or nft is not installed: nothing to do then.
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", table])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.drop_network_table();
        // The job cgroups a failed test left (a passing one's cleanups removed theirs): ended
        // as gc ends orphans, every one this host recorded.
        if self
            .root()
            .join("state")
            .join(p3_executor::walls::cgroup::MARKERS)
            .is_dir()
        {
            if let Ok(cfg) = p3_executor::config::Config::load(&self.config) {
                p3_executor::walls::cgroup::sweep_orphans(&cfg, &[]);
            }
        }
        // Its entry in the host's registry of configs, which would otherwise go only when the
        // next prepare finds its config file gone.
        let _ = fs::remove_file(p3_executor::side_by_side::entry(&self.root().join("state")));
    }
}

/// The `p3-executor` binary next to the running test or demo binary (cargo puts test binaries
/// in `deps/`, one level below the binaries they exercise).
pub fn executor_exe() -> PathBuf {
    let me = std::env::current_exe().expect("locate the running binary");
    let dir = me.parent().expect("a binary lives in a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps/ has a parent")
    } else {
        dir
    };
    dir.join("p3-executor")
}

/// Where throwaway hosts and realms live: the temp dir, unless that is one of the dirs a job's
/// sandbox replaces with a private tmpfs (then jobs could not reach the host's repository or
/// krb5.conf), in which case `/var/lib/p3-executor-scratch`.
pub fn scratch_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    let hidden = p3_executor::sandbox::PRIVATE_DIRS
        .iter()
        .any(|d| tmp.starts_with(d));
    if !hidden || !nix::unistd::geteuid().is_root() {
        return tmp;
    }
    let dir = PathBuf::from("/var/lib/p3-executor-scratch");
    let _ = fs::create_dir_all(&dir);
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o711));
    dir
}

impl Host {
    /// A host whose config is `extra` added to roots under a temp dir, calling `exe`. Jobs run
    /// as `nobody`'s group with private uids from a range when the executor runs as root.
    pub fn new(exe: PathBuf, extra: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("p3e-host")
            .tempdir_in(scratch_dir())
            .unwrap();
        // The job user must be able to traverse to its builds dir (but not list it).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let root = dir.path();
        let config = root.join("config.toml");
        let uid_lo = uid_base();
        let network_table =
            (!extra.lines().any(|l| l.trim() == "[network]")).then(|| format!("p3t_host_{uid_lo}"));
        let mut text = format!(
            "state_root = \"{}\"\nbuilds_root = \"{}\"\njob_user = \"nobody\"\njob_uid_range = [{}, {}]\ngrace_period_secs = 3\n{extra}\n[audit]\npath = \"{}\"\n",
            root.join("state").display(),
            root.join("builds").display(),
            uid_lo,
            uid_lo + 999,
            root.join("audit/audit.jsonl").display(),
        );
        if !extra.contains("job_subid_range") {
            // Before the first table (`extra` may open one): top-level keys come first.
            let [lo, hi] = subid_window_of(uid_lo);
            text.insert_str(0, &format!("job_subid_range = [{lo}, {hi}]\n"));
        }
        if let Some(table) = &network_table {
            text.push_str(&format!("\n[network]\ntable = \"{table}\"\n"));
        }
        fs::write(&config, text).unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
        let repo = root.join("src/group/project");
        fs::create_dir_all(&repo).unwrap();
        fs::write(repo.join("README"), "hello from the repository\n").unwrap();
        let git = |args: &[&str]| git_in(&repo, args);
        git(&["init", "-q", "-b", "main"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "init"]);
        let sha = git(&["rev-parse", "HEAD"]).trim().to_string();
        // Readable by the job user, as a real remote would be.
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(root.join("src"))
            .status()
            .unwrap();
        fs::set_permissions(root.join("src"), fs::Permissions::from_mode(0o755)).unwrap();
        Host {
            exe,
            dir,
            config,
            repo,
            sha,
            network_table,
        }
    }

    /// Root of the temp tree.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A job on this host.
    pub fn job(&self, id: u64, script: &str) -> Job {
        Job::new(self, id, script)
    }

    /// A host subcommand (`gc`, `check`, ...) with this host's config, not yet started.
    pub fn host_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// Run a host subcommand with this host's config.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.host_command(args).output().unwrap()
    }

    /// Put a project's files (the tree under `from`, e.g. an example project) into the
    /// repository as a second commit; later jobs check it out. `edit` may change each file's
    /// text on the way (e.g. point a registry host at a test's own).
    pub fn commit_tree(&mut self, from: &Path, edit: impl Fn(&Path, String) -> String) {
        copy_tree(from, from, &self.repo, &edit);
        let git = |args: &[&str]| git_in(&self.repo, args);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "project"]);
        self.sha = git(&["rev-parse", "HEAD"]).trim().to_string();
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&self.repo)
            .status()
            .unwrap();
    }
}

/// Copy the files under `dir` (relative to `top`) into `to`, text through `edit`.
fn copy_tree(top: &Path, dir: &Path, to: &Path, edit: &dyn Fn(&Path, String) -> String) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(top).unwrap();
        let dest = to.join(rel);
        if path.is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_tree(top, &path, to, edit);
        } else {
            let text = fs::read_to_string(&path).unwrap();
            fs::write(&dest, edit(rel, text)).unwrap();
        }
    }
}

/// Run git in `repo` with a fixed identity; its stdout.
fn git_in(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A fresh window of 1000 uids for private job users, never handed out twice in this process
/// and distinct between processes: every host of the (single-binary) suite, and every test
/// that narrows its range, gets uids no concurrently running test uses, so no cleanup kills
/// or scrubs another test's job.
pub fn uid_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
    1_000_000 + (std::process::id() % 997) * 100_000 + n * 1000
}

/// The subordinate ids (one job's 65,536) of the test host whose uids start at `uid_lo`
/// ([`uid_base`]): hosts alive at once are configs side by side, which may share no id
/// (`side_by_side`). Above every test uid window and the container tests' own windows
/// (below 2.3G).
pub fn subid_window_of(uid_lo: u32) -> [u32; 2] {
    const RANGE: u32 = 65_536;
    let slot = (uid_lo.saturating_sub(1_000_000) / 1000) % 25_000;
    let first = 2_400_000_000 + slot * RANGE;
    [first, first + RANGE - 1]
}

/// One job as the runner sees it.
pub struct Job {
    /// The p3-executor binary the runner calls.
    pub exe: PathBuf,
    /// GitLab job id.
    pub id: u64,
    /// Runner's private temp dir for this job.
    pub tmp: tempfile::TempDir,
    /// Job variables (key, value).
    pub variables: Vec<(String, String)>,
    /// `script:` lines of the job.
    pub script: String,
    /// `after_script:` lines.
    pub after_script: Option<String>,
    /// Executor config file.
    pub config: PathBuf,
    /// Repo to clone.
    pub repo: PathBuf,
    /// Commit.
    pub sha: String,
    /// Environment added by config's job_env.
    pub job_env: BTreeMap<String, String>,
    /// Directories config_exec reported.
    pub builds_dir: Option<String>,
    /// The job log so far (stdout + stderr of every call).
    pub log: String,
    /// Exit code of every call, in order: (call, code).
    pub calls: Vec<(String, i32)>,
    counter: usize,
    /// Payload override (raw JSON) for invalid-payload tests.
    pub raw_payload: Option<String>,
    /// Print every call and its output as it happens (the demo's job log).
    pub echo: bool,
    /// The payload's `runner_info.timeout` in seconds (GitLab's job timeout).
    pub timeout_secs: u64,
    /// The payload's `image` (`name`, `entrypoint`, `pull_policy`), as the runner sends a
    /// job's `image:`.
    pub image: Option<Value>,
    /// `artifacts: paths:` (relative to the project dir), collected after the user's stages.
    pub artifacts: Vec<String>,
    /// What the stand-in collected of `artifacts`: path → content.
    pub collected: BTreeMap<String, String>,
    /// The payload's job token (`glcbt-secret-token-<id>` unless set: the same job, retried,
    /// carries the same one).
    pub token: String,
}

impl Job {
    fn new(host: &Host, id: u64, script: &str) -> Job {
        Job {
            exe: host.exe.clone(),
            id,
            tmp: tempfile::Builder::new()
                .prefix("custom-executor")
                .tempdir()
                .unwrap(),
            variables: vec![
                ("CI_JOB_ID".into(), id.to_string()),
                ("CI_PROJECT_PATH".into(), "group/project".into()),
                ("CI_COMMIT_REF_NAME".into(), "main".into()),
            ],
            script: script.into(),
            after_script: None,
            config: host.config.clone(),
            repo: host.repo.clone(),
            sha: host.sha.clone(),
            job_env: BTreeMap::new(),
            builds_dir: None,
            log: String::new(),
            calls: Vec::new(),
            counter: 0,
            raw_payload: None,
            echo: false,
            timeout_secs: 3600,
            image: None,
            artifacts: Vec::new(),
            collected: BTreeMap::new(),
            token: format!("glcbt-secret-token-{id}"),
        }
    }

    /// Give the payload another job token: a different job with the same id (as another
    /// GitLab instance would send).
    pub fn token(mut self, token: &str) -> Self {
        self.token = token.into();
        self
    }

    /// Run the job in `name` (`image:` in .gitlab-ci.yml; the payload's `image`).
    pub fn image(mut self, name: &str) -> Self {
        self.image = Some(json!({"name": name, "entrypoint": null, "pull_policy": null}));
        self
    }

    /// Collect `path` (relative to the project dir) as an artifact of the job.
    pub fn artifact(mut self, path: &str) -> Self {
        self.artifacts.push(path.into());
        self
    }

    /// Add a job variable (as `variables:` in .gitlab-ci.yml would).
    pub fn var(mut self, key: &str, value: &str) -> Self {
        self.variables.push((key.into(), value.into()));
        self
    }

    /// Set the job's timeout (`runner_info.timeout` in the payload; default 3600 s).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Set after_script.
    pub fn after(mut self, script: &str) -> Self {
        self.after_script = Some(script.into());
        self
    }

    /// The payload file path.
    pub fn payload_path(&self) -> PathBuf {
        self.tmp.path().join("response.json")
    }

    fn write_payload(&self) {
        let text = match &self.raw_payload {
            Some(raw) => raw.clone(),
            None => {
                let vars: Vec<Value> = self
                    .variables
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v, "public": true, "masked": false}))
                    .collect();
                let mut payload = json!({
                    "id": self.id,
                    "token": self.token,
                    "job_info": {"name": "job", "stage": "test", "project_id": 7, "project_name": "project"},
                    "git_info": {"repo_url": format!("file://{}", self.repo.display()), "ref": "main",
                                 "sha": self.sha, "ref_type": "branch"},
                    "variables": vars,
                    "runner_info": {"timeout": self.timeout_secs}
                });
                if let Some(image) = &self.image {
                    payload["image"] = image.clone();
                }
                payload.to_string()
            }
        };
        let path = self.payload_path();
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A command for one executor call with the runner's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.write_payload();
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.tmp.path())
            .env("TMPDIR", self.tmp.path())
            .env("BUILD_FAILURE_EXIT_CODE", "1")
            .env("SYSTEM_FAILURE_EXIT_CODE", "2")
            .env("JOB_RESPONSE_FILE", self.payload_path())
            .env("BUILD_EXIT_CODE_FILE", self.tmp.path().join("exit-code"))
            .env_remove("P3_EXECUTOR_CONFIG")
            .stdin(Stdio::null());
        for (k, v) in &self.variables {
            cmd.env(format!("CUSTOM_ENV_{k}"), v);
        }
        if args.first() != Some(&"config") {
            cmd.envs(&self.job_env);
        }
        cmd
    }

    fn record(&mut self, call: &str, out: &Output) -> i32 {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let code = out.status.code().unwrap_or(-1);
        if self.echo {
            println!("{}", paint("36", &format!("── {call} (exit {code}) ──")));
            print!("{text}");
        }
        self.log.push_str(&text);
        self.calls.push((call.into(), code));
        code
    }

    /// config_exec: parse and keep its JSON.
    pub fn config(&mut self) -> i32 {
        let out = self.command(&["config"]).output().unwrap();
        let code = self.record("config", &out);
        if code == 0 {
            let v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("config stdout is not JSON ({e}): {out:?}"));
            self.builds_dir = v["builds_dir"].as_str().map(String::from);
            if let Some(env) = v["job_env"].as_object() {
                for (k, val) in env {
                    self.job_env
                        .insert(k.clone(), val.as_str().unwrap().to_string());
                }
            }
        }
        code
    }

    /// prepare_exec.
    pub fn prepare(&mut self) -> i32 {
        let out = self.command(&["prepare"]).output().unwrap();
        self.record("prepare", &out)
    }

    /// cleanup_exec.
    pub fn cleanup(&mut self) -> i32 {
        let out = self.command(&["cleanup"]).output().unwrap();
        self.record("cleanup", &out)
    }

    /// Project directory, as the runner derives it from the repo URL.
    pub fn project_dir(&self) -> String {
        format!(
            "{}/group/project",
            self.builds_dir.as_deref().expect("config ran")
        )
    }

    /// Write a runner-like script for `stage` (root-only, in the runner's temp dir).
    pub fn write_script(&mut self, stage: &str, body: &str) -> PathBuf {
        self.counter += 1;
        let dir = self.tmp.path().join(format!("script{:03}", self.counter));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let mut full = String::new();
        if stage != "prepare_script" {
            for (k, v) in &self.variables {
                full.push_str(&format!("export {k}={}\n", shell_quote(v)));
            }
        }
        full.push_str(body);
        let script = format!(
            "#!/usr/bin/env bash\n\ntrap exit 1 TERM\n\nif set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\nset +o noclobber\n: | eval {}\nexit 0\n",
            shell_quote(&full)
        );
        let path = dir.join("script");
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    /// The body of a stage as the runner would generate it.
    pub fn stage_body(&self, stage: &str) -> String {
        let project = self.project_dir();
        match stage {
            "prepare_script" => {
                "echo \"Running on $(hostname) via the local runner stand-in...\"\n".into()
            }
            "get_sources" => format!(
                "echo 'Fetching changes...'\ngit config --global --add safe.directory '*'\nmkdir -p {project}\ncd {project}\ngit init -q .\ngit fetch -q {repo} +refs/heads/*:refs/remotes/origin/*\ngit checkout -q -f {sha}\necho \"Checking out {short} as detached HEAD\"\n",
                repo = shell_quote(&format!("file://{}", self.repo.display())),
                sha = self.sha,
                short = &self.sha[..8],
            ),
            "build_script" => format!("cd {project}\n{}\n", self.script),
            "after_script" => format!(
                "cd {project}\n{}\n",
                self.after_script.clone().unwrap_or_default()
            ),
            "cleanup_file_variables" => format!("rm -rf {project}.tmp\n"),
            other => format!("echo stage {other}\n"),
        }
    }

    /// Start run_exec for a stage without waiting (for cancellation tests).
    pub fn spawn_stage(&mut self, stage: &str) -> Child {
        let body = self.stage_body(stage);
        let script = self.write_script(stage, &body);
        self.command(&["run", script.to_str().unwrap(), stage])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// run_exec for one stage; returns its exit code.
    pub fn run_stage(&mut self, stage: &str) -> i32 {
        let body = self.stage_body(stage);
        let script = self.write_script(stage, &body);
        let out = self
            .command(&["run", script.to_str().unwrap(), stage])
            .output()
            .unwrap();
        self.record(stage, &out)
    }

    /// The whole job in the runner's order; returns the job's final status.
    pub fn run_all(&mut self) -> JobResult {
        if self.config() != 0 || self.prepare() != 0 {
            let status = *self.calls.last().map(|(_, c)| c).unwrap();
            self.cleanup();
            return JobResult::from_code(status, self.exit_code_file());
        }
        let mut failed = None;
        for stage in ["prepare_script", "get_sources"] {
            let code = self.run_stage(stage);
            if code != 0 {
                failed = Some(code);
                break;
            }
        }
        if failed.is_none() {
            let code = self.run_stage("build_script");
            if code != 0 {
                failed = Some(code);
            }
            if self.after_script.is_some() {
                self.run_stage("after_script");
            }
        }
        self.collect_artifacts();
        self.run_stage("cleanup_file_variables");
        let code_file = self.exit_code_file();
        self.cleanup();
        JobResult::from_code(failed.unwrap_or(0), code_file)
    }

    /// The runner's artifact upload, simplified: the stand-in reads each of `artifacts` that
    /// exists from the project dir (as root, never following a link) into `collected`.
    pub fn collect_artifacts(&mut self) {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let project = PathBuf::from(self.project_dir());
        for path in &self.artifacts {
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(project.join(path));
            let mut text = String::new();
            if let Ok(mut f) = file {
                if f.read_to_string(&mut text).is_ok() {
                    self.collected.insert(path.clone(), text);
                }
            }
        }
    }

    /// Content of BUILD_EXIT_CODE_FILE, if written.
    pub fn exit_code_file(&self) -> Option<i32> {
        fs::read_to_string(self.tmp.path().join("exit-code"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
    }
}

/// How the runner would report the job.
#[derive(Debug, PartialEq, Eq)]
pub enum JobResult {
    /// Passed.
    Success,
    /// script_failure with the reported exit code.
    BuildFailure(Option<i32>),
    /// runner_system_failure.
    SystemFailure,
    /// Any other exit code.
    Unknown(i32),
}

impl JobResult {
    fn from_code(code: i32, reported: Option<i32>) -> JobResult {
        match code {
            0 => JobResult::Success,
            1 => JobResult::BuildFailure(reported),
            2 => JobResult::SystemFailure,
            other => JobResult::Unknown(other),
        }
    }
}

/// `text` in the SGR colour `sgr` (e.g. `"36"`, `"1;32"`) when stdout is a terminal or a CI log
/// (GitLab renders ANSI colours), plain when piped elsewhere or when `NO_COLOR` is set.
pub fn paint(sgr: &str, text: &str) -> String {
    use std::io::IsTerminal;
    let color = std::env::var_os("NO_COLOR").is_none()
        && (std::io::stdout().is_terminal() || std::env::var_os("CI").is_some());
    if color {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Single-quote for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
