//! A real S3-compatible server on a free loopback port, for integration tests.
//!
//! ```ignore
//! #[path = "common/s3.rs"]
//! mod s3srv;
//! let srv = s3srv::S3Server::start();          // s3rver (npm `s3rver@3`): fast, checks keys
//! let srv = s3srv::S3Server::start_moto();     // moto (PyPI `moto[server]`): fullest API
//! srv.create_bucket("data-bkt");
//! let out = srv.aws(&["s3", "ls", "s3://data-bkt"]);    // the AWS CLI, explicit env only
//! let out = srv.p3(&["s3", "ls", "s3://data-bkt"]).output().unwrap(); // our binary
//! ```
//! The server is killed and its data removed when the value drops. Every command gets an
//! explicit environment: nothing inherited (the build machine sets `AWS_CA_BUNDLE`, a developer
//! may have `AWS_PROFILE`) can change what a test sees.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which server implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// npm `s3rver@3`.
    S3rver,
    /// PyPI `moto[server]`.
    Moto,
}

/// A running server.
pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// Implementation.
    pub kind: Kind,
}

/// Panic with an install hint when `tool` is not on PATH: a missing server must fail the
/// suite, not skip it.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    which::which(tool).unwrap_or_else(|_| {
        panic!(
            "`{tool}` is required by the S3 tests but is not on PATH; install it with: {install}"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

impl S3Server {
    /// Start s3rver (credentials `S3RVER`/`S3RVER`).
    pub fn start() -> Self {
        let bin = require_tool("s3rver", "npm install -g s3rver@3");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let child = Command::new(bin)
            .args(["-d", data.to_str().unwrap(), "-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-s")
            // s3rver encrypts ListObjects continuation tokens with DES, which Node 17+ only
            // offers with the legacy OpenSSL provider: without it listings past 1000 keys fail.
            .env("NODE_OPTIONS", "--openssl-legacy-provider")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3rver");
        Self::wait(child, dir, port, Kind::S3rver)
    }

    /// Start the moto server (accepts any credentials; implements ListMultipartUploads).
    pub fn start_moto() -> Self {
        let bin = require_tool("moto_server", "pip install 'moto[server]'");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        Self::wait(child, dir, port, Kind::Moto)
    }

    fn wait(mut child: Child, dir: tempfile::TempDir, port: u16, kind: Kind) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{kind:?} exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            dir,
            port,
            kind,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Access key id the server accepts.
    pub fn access_key(&self) -> &'static str {
        "S3RVER"
    }

    /// Secret key the server accepts.
    pub fn secret_key(&self) -> &'static str {
        "S3RVER"
    }

    /// A scratch directory that lives as long as the server.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Base environment: PATH, a private HOME, AWS config files that do not exist, and no
    /// credentials.
    pub fn base_env(&self, cmd: &mut Command) {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        // Empty rather than missing: tools warn about a configured file that does not exist.
        for f in ["no-aws-config", "no-aws-credentials"] {
            std::fs::write(home.join(f), "").unwrap();
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// Base environment plus this server's credentials, region and endpoint.
    pub fn env(&self, cmd: &mut Command) {
        self.base_env(cmd);
        cmd.env("AWS_ACCESS_KEY_ID", self.access_key())
            .env("AWS_SECRET_ACCESS_KEY", self.secret_key())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_S3", self.endpoint());
    }

    /// The AWS CLI, pointed at this server.
    pub fn aws(&self, args: &[&str]) -> Output {
        let bin = require_tool("aws", "pip install awscli");
        let mut cmd = Command::new(bin);
        self.env(&mut cmd);
        cmd.arg("--endpoint-url")
            .arg(self.endpoint())
            .args(args)
            .output()
            .expect("run aws")
    }

    /// The AWS CLI; panics with its stderr when it fails.
    pub fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create a bucket (with the AWS CLI, so the fixture does not depend on the code under
    /// test).
    pub fn create_bucket(&self, name: &str) {
        self.aws_ok(&["s3api", "create-bucket", "--bucket", name]);
    }

    /// `p3-executor` with this server's credentials in the environment.
    pub fn p3(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::driver::executor_exe());
        self.env(&mut cmd);
        cmd.args(args).stdin(Stdio::null());
        cmd
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
