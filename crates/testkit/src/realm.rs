//! A throwaway MIT Kerberos realm, shared by `p3-executor demo`, the tests and the benchmarks.
//!
//! ```ignore
//! let realm = Realm::start(&["svc_client_dev", "svc_client_uat"])?;
//! realm.krb5_conf();                 // KRB5_CONFIG for clients
//! realm.keytab("svc_client_dev");    // keytab holding that principal's current key
//! realm.principal("svc_client_dev"); // "svc_client_dev@P3.TEST"
//! realm.realm();                     // "P3.TEST"
//! let dev = Realm::start_named("DEV.TEST", &["svc_dev"])?; // another realm beside it
//! ```
//!
//! The realm lives in a temp dir: its database, `krb5.conf`, `kdc.conf`, keytabs. `krb5kdc -n`
//! runs as a child bound to `127.0.0.1:<free port>` (TCP and UDP; clients are forced to TCP)
//! and is killed on drop. Nothing reads or writes `/etc/krb5.conf`.
//!
//! Needs `krb5-kdc`, `krb5-user` and `krb5-admin-server` (for `kadmin.local`) from apt. Every
//! failure is an error carrying that install command (see [`missing_tools`] to ask first), so
//! the demo can say what to do and the tests fail loudly instead of skipping.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p3_contract::env;

/// The realm a fixture creates unless named otherwise (each in its own config, so fixtures do
/// not collide).
pub const REALM: &str = "P3.TEST";

/// What to install when a tool is missing.
pub const INSTALL_HINT: &str = "apt-get install -y krb5-kdc krb5-user krb5-admin-server";

/// The MIT tools a realm needs: server side (`krb5kdc`, `kdb5_util`, `kadmin.local`) and the
/// client tools the executor runs.
pub const TOOLS: [&str; 5] = ["krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist"];

/// A running throwaway KDC. Killed and its directory removed on drop.
pub struct Realm {
    name: String,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// The KDC offers SPAKE pre-authentication.
    spake: bool,
}

/// Find an MIT tool on PATH or in the sbin directories (which are not on a non-root PATH by
/// default, yet are where Debian puts `krb5kdc` and `kadmin.local`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if let Ok(p) = which::which(name) {
        return Some(p);
    }
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The [`TOOLS`] not installed on this host (empty: a realm can be started).
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .into_iter()
        .filter(|t| find_tool(t).is_none())
        .collect()
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    find_tool(name).with_context(|| format!("{name} not found: {INSTALL_HINT}"))
}

/// A loopback port free right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("bind a loopback port")?
        .port())
}

/// Write a client `krb5.conf` for [`REALM`] whose only KDC is `127.0.0.1:<port>` over TCP.
pub fn write_krb5_conf(path: &Path, port: u16) -> anyhow::Result<()> {
    write_krb5_conf_for(path, REALM, port)
}

/// [`write_krb5_conf`] for the realm `realm`.
pub fn write_krb5_conf_for(path: &Path, realm: &str, port: u16) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!(
            "[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n rdns = false\n udp_preference_limit = 1\n\n[realms]\n {realm} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
        ),
    )
    .with_context(|| format!("write {}", path.display()))
}

impl Realm {
    /// Create the realm, add each name as a renewable principal (`<name>@P3.TEST`, max
    /// renewable life 7 days) with a keytab at [`Realm::keytab`], and start the KDC.
    pub fn start(names: &[&str]) -> anyhow::Result<Realm> {
        Realm::start_named(REALM, names)
    }

    /// [`Realm::start`] for the realm `realm` (`DEV.TEST`) instead of [`REALM`]: several
    /// realms can run side by side, each with its own KDC.
    pub fn start_named(realm: &str, names: &[&str]) -> anyhow::Result<Realm> {
        let missing = missing_tools();
        if !missing.is_empty() {
            bail!(
                "MIT Kerberos tools not found ({}): {INSTALL_HINT}",
                missing.join(", ")
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("p3-kdc-")
            .tempdir_in(crate::driver::scratch_dir())
            .context("create the realm's temp dir")?;
        let mut realm = Realm {
            name: realm.to_string(),
            dir,
            port: 0,
            child: None,
            spake: false,
        };
        realm.write_kdc_conf_and_db()?;
        let r = realm.name.clone();
        realm.kadmin(&format!("modprinc -maxrenewlife 7d krbtgt/{r}@{r}"))?;
        for name in names {
            realm.add_principal(name)?;
        }
        realm.start_kdc()?;
        Ok(realm)
    }

    fn write_kdc_conf_and_db(&mut self) -> anyhow::Result<()> {
        // Bound to a fresh port at each start; the DB does not depend on it.
        self.port = free_port()?;
        let d = self.dir.path().display().to_string();
        let port = self.port;
        let realm = &self.name;
        std::fs::write(
            self.kdc_conf(),
            format!(
                "[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n\n[realms]\n {realm} = {{\n  database_name = {d}/principal\n  key_stash_file = {d}/stash\n  acl_file = {d}/kadm5.acl\n  max_life = 1d\n  max_renewable_life = 7d\n }}\n\n[logging]\n kdc = FILE:{d}/kdc.log\n"
            ),
        )
        .context("write kdc.conf")?;
        // The KDC reads the groups it offers from its krb5.conf; clients keep the plain one.
        std::fs::write(
            self.kdc_krb5_conf(),
            if self.spake {
                "[libdefaults]\n spake_preauth_groups = edwards25519\n"
            } else {
                ""
            },
        )
        .context("write the KDC's krb5.conf")?;
        write_krb5_conf_for(&self.krb5_conf(), realm, port)?;
        if !self.dir.path().join("principal").exists() {
            let password = format!("p3-{}-{}", std::process::id(), port);
            self.run(
                Command::new(tool("kdb5_util")?)
                    .args(["-r", realm, "create", "-s", "-P", &password]),
                "kdb5_util create",
            )?;
        }
        Ok(())
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env(env::KRB5_CONFIG, self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.kdc_conf())
            .env("LC_ALL", "C")
            .env_remove(env::KRB5CCNAME);
    }

    fn run(&self, cmd: &mut Command, what: &str) -> anyhow::Result<String> {
        self.env(cmd);
        let out = cmd
            .output()
            .with_context(|| format!("{what} ({INSTALL_HINT})"))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run one `kadmin.local` query against the realm's database; returns its stdout.
    pub fn kadmin(&self, query: &str) -> anyhow::Result<String> {
        self.run(
            Command::new(tool("kadmin.local")?).args(["-r", &self.name, "-q", query]),
            &format!("kadmin.local -q {query:?}"),
        )
    }

    /// Add `<name>@REALM` (random key, renewable 7 d) and export its keytab to
    /// [`Realm::keytab`] (mode 0600). `ktadd -norandkey` keeps the key just created, so keytabs
    /// exported earlier for other principals stay valid.
    pub fn add_principal(&self, name: &str) -> anyhow::Result<()> {
        let p = self.principal(name);
        self.kadmin(&format!("addprinc -randkey -maxrenewlife 7d {p}"))?;
        self.kadmin(&format!(
            "ktadd -norandkey -k {} {p}",
            self.keytab(name).display()
        ))?;
        std::fs::set_permissions(self.keytab(name), std::fs::Permissions::from_mode(0o600))
            .context("chmod keytab")
    }

    /// Give `name` a new random key: its existing keytab goes stale ("Password incorrect").
    pub fn rotate_key(&self, name: &str) -> anyhow::Result<()> {
        self.kadmin(&format!("cpw -randkey {}", self.principal(name)))
            .map(drop)
    }

    /// Give `name` the key derived from `password` at key version `kvno` (`cpw -pw`, then
    /// `modprinc -kvno`). Two realms of the same name derive the same key from the same
    /// password (same salt), so two KDCs stand in for two DCs of one domain, before and after
    /// a rotation replicated.
    pub fn set_key(&self, name: &str, password: &str, kvno: u32) -> anyhow::Result<()> {
        let p = self.principal(name);
        self.kadmin(&format!("cpw -pw {password} {p}"))?;
        self.kadmin(&format!("modprinc -kvno {kvno} {p}")).map(drop)
    }

    /// Add `name`'s current keys to the keytab at `path` (created 0600 if missing; entries are
    /// appended, so exports from several KDCs make a keytab of several key versions).
    pub fn export_keytab(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        self.kadmin(&format!(
            "ktadd -norandkey -k {} {}",
            path.display(),
            self.principal(name)
        ))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .context("chmod keytab")
    }

    /// Delete `name` from the database (its keytab stays: "not found in Kerberos database").
    pub fn delete_principal(&self, name: &str) -> anyhow::Result<()> {
        self.kadmin(&format!("delprinc -force {}", self.principal(name)))
            .map(drop)
    }

    fn start_kdc(&mut self) -> anyhow::Result<()> {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let mut cmd = Command::new(tool("krb5kdc")?);
            cmd.arg("-n").stdout(Stdio::null()).stderr(Stdio::piped());
            self.env(&mut cmd);
            let mut profile = self.kdc_krb5_conf().into_os_string();
            profile.push(":");
            profile.push(self.krb5_conf());
            cmd.env(env::KRB5_CONFIG, profile);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("krb5kdc ({INSTALL_HINT})"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    last_err = format!("krb5kdc exited with {status}: {}", err.trim());
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
            self.write_kdc_conf_and_db()?;
        }
        bail!("cannot start the KDC: {last_err}")
    }

    /// Kill the KDC (clients then get "Cannot contact any KDC"). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the KDC again after [`Realm::stop`] (on a new port; `krb5.conf` is rewritten).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.write_kdc_conf_and_db()?;
        self.start_kdc()
    }

    /// Restart the KDC offering SPAKE pre-authentication (group edwards25519), beside
    /// encrypted timestamps, to principals that require pre-authentication; or, with `false`,
    /// not offering it (as a KDC starts).
    pub fn offer_spake(&mut self, offer: bool) -> anyhow::Result<()> {
        self.spake = offer;
        self.restart()
    }

    /// Stop the KDC but leave the realm's directory on disk (`demo --keep`); returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.stop();
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    fn kdc_krb5_conf(&self) -> PathBuf {
        self.dir.path().join("kdc-krb5.conf")
    }

    /// The realm name.
    pub fn realm(&self) -> &str {
        &self.name
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

    /// Keytab of `name` (exists after [`Realm::start`] / [`Realm::add_principal`]), mode 0600.
    pub fn keytab(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.keytab"))
    }

    /// Full principal of `name`.
    pub fn principal(&self, name: &str) -> String {
        format!("{name}@{}", self.name)
    }

    /// `KRB5_CONFIG` setting for commands run against this realm.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![(
            env::KRB5_CONFIG.into(),
            self.krb5_conf().display().to_string(),
        )]
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        self.stop();
    }
}
