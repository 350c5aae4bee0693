//! A throwaway MIT Kerberos realm for tests and benchmarks.
//!
//! Include it with `#[path = "common/kdc.rs"] mod kdc;` (from `tests/`) or
//! `#[path = "../tests/common/kdc.rs"] mod kdc;` (from `benches/`).
//!
//! ```ignore
//! let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
//! kdc.krb5_conf();                 // KRB5_CONFIG for clients
//! kdc.keytab("svc_client_dev");    // keytab holding that principal's current key
//! kdc.principal("svc_client_dev"); // "svc_client_dev@P3.TEST"
//! kdc.realm();                     // "P3.TEST"
//! ```
//!
//! The realm lives in a temp dir: its database, `krb5.conf`, `kdc.conf`, keytabs. `krb5kdc -n`
//! runs as a child bound to `127.0.0.1:<free port>` (TCP and UDP; clients are forced to TCP)
//! and is killed on drop. Nothing reads or writes `/etc/krb5.conf`.
//!
//! Needs `krb5-kdc`, `krb5-user` and `krb5-admin-server` (for `kadmin.local`) from apt; when
//! they are missing the fixture panics with the install command instead of skipping silently.

#![allow(dead_code)] // Each test file uses a different part of the API.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The realm every fixture creates (each in its own config, so fixtures do not collide).
pub const REALM: &str = "P3.TEST";

const INSTALL_HINT: &str = "the Kerberos test fixture needs MIT Kerberos: \
     apt-get install -y krb5-kdc krb5-user krb5-admin-server";

/// A running throwaway KDC. Killed and its directory removed on drop.
pub struct Kdc {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// Find an MIT tool on PATH or in the sbin directories (not on a non-root PATH by default).
pub fn tool(name: &str) -> PathBuf {
    if let Ok(p) = which::which(name) {
        return p;
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: {INSTALL_HINT}");
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// Write a client `krb5.conf` for [`REALM`] whose only KDC is `127.0.0.1:<port>` over TCP.
pub fn write_krb5_conf(path: &Path, port: u16) {
    std::fs::write(
        path,
        format!(
            "[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n rdns = false\n udp_preference_limit = 1\n\n[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
        ),
    )
    .expect("write krb5.conf");
}

impl Kdc {
    /// Create the realm, add each name as a renewable principal (`<name>@P3.TEST`, max
    /// renewable life 7 days) with a keytab at [`Kdc::keytab`], and start the KDC.
    pub fn start(names: &[&str]) -> Kdc {
        for t in ["krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist"] {
            tool(t);
        }
        let dir = tempfile::Builder::new()
            .prefix("p3-kdc-")
            .tempdir()
            .expect("tempdir");
        let mut kdc = Kdc {
            dir,
            port: 0,
            child: None,
        };
        kdc.write_kdc_conf_and_db();
        kdc.kadmin(&format!("modprinc -maxrenewlife 7d krbtgt/{REALM}@{REALM}"));
        for name in names {
            kdc.add_principal(name);
        }
        kdc.start_kdc();
        kdc
    }

    fn write_kdc_conf_and_db(&mut self) {
        // Bound to a fresh port at each start; the DB does not depend on it.
        self.port = free_port();
        let d = self.dir.path().display().to_string();
        let port = self.port;
        std::fs::write(
            self.kdc_conf(),
            format!(
                "[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n\n[realms]\n {REALM} = {{\n  database_name = {d}/principal\n  key_stash_file = {d}/stash\n  acl_file = {d}/kadm5.acl\n  max_life = 1d\n  max_renewable_life = 7d\n }}\n\n[logging]\n kdc = FILE:{d}/kdc.log\n"
            ),
        )
        .expect("write kdc.conf");
        write_krb5_conf(&self.krb5_conf(), port);
        if !self.dir.path().join("principal").exists() {
            let password = format!("p3-{}-{}", std::process::id(), port);
            self.run(
                Command::new(tool("kdb5_util"))
                    .args(["-r", REALM, "create", "-s", "-P", &password]),
                "kdb5_util create",
            );
        }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.kdc_conf())
            .env("LC_ALL", "C")
            .env_remove("KRB5CCNAME");
    }

    fn run(&self, cmd: &mut Command, what: &str) -> String {
        self.env(cmd);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e} ({INSTALL_HINT})"));
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run one `kadmin.local` query against the realm's database; panics on failure.
    pub fn kadmin(&self, query: &str) -> String {
        self.run(
            Command::new(tool("kadmin.local")).args(["-r", REALM, "-q", query]),
            &format!("kadmin.local -q {query:?}"),
        )
    }

    /// Add `<name>@REALM` (random key, renewable 7 d) and export its keytab to
    /// [`Kdc::keytab`]. `ktadd -norandkey` keeps the key just created, so keytabs exported
    /// earlier for other principals stay valid.
    pub fn add_principal(&self, name: &str) {
        let p = self.principal(name);
        self.kadmin(&format!("addprinc -randkey -maxrenewlife 7d {p}"));
        self.kadmin(&format!(
            "ktadd -norandkey -k {} {p}",
            self.keytab(name).display()
        ));
        std::fs::set_permissions(
            self.keytab(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod keytab");
    }

    /// Give `name` a new random key: its existing keytab goes stale ("Password incorrect").
    pub fn rotate_key(&self, name: &str) {
        self.kadmin(&format!("cpw -randkey {}", self.principal(name)));
    }

    /// Delete `name` from the database (its keytab stays: "not found in Kerberos database").
    pub fn delete_principal(&self, name: &str) {
        self.kadmin(&format!("delprinc -force {}", self.principal(name)));
    }

    fn start_kdc(&mut self) {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let mut cmd = Command::new(tool("krb5kdc"));
            cmd.arg("-n").stdout(Stdio::null()).stderr(Stdio::piped());
            self.env(&mut cmd);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("krb5kdc: {e} ({INSTALL_HINT})"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    last_err = format!("krb5kdc exited with {status}: {err}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "krb5kdc did not accept TCP within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // The port may have been taken between probing and binding: pick another.
            self.write_kdc_conf_and_db();
        }
        panic!("cannot start the test KDC: {last_err}");
    }

    /// Kill the KDC (clients then get "Cannot contact any KDC"). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the KDC again after [`Kdc::stop`] (on a new port; `krb5.conf` is rewritten).
    pub fn restart(&mut self) {
        self.stop();
        self.write_kdc_conf_and_db();
        self.start_kdc();
    }

    /// The realm name.
    pub fn realm(&self) -> &str {
        REALM
    }

    /// The KDC's loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The realm's directory (database, configs, keytabs, `kdc.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Client `krb5.conf`: set `KRB5_CONFIG` (or `kerberos.krb5_config`) to it.
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    /// The KDC profile (`KRB5_KDC_PROFILE`).
    pub fn kdc_conf(&self) -> PathBuf {
        self.dir.path().join("kdc.conf")
    }

    /// Keytab of `name` (exists after [`Kdc::start`] / [`Kdc::add_principal`]), mode 0600.
    pub fn keytab(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.keytab"))
    }

    /// Full principal of `name`.
    pub fn principal(&self, name: &str) -> String {
        format!("{name}@{REALM}")
    }

    /// `KRB5_CONFIG` setting for commands run against this realm.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![("KRB5_CONFIG".into(), self.krb5_conf().display().to_string())]
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        self.stop();
    }
}
