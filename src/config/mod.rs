//! Executor configuration: one TOML file, unknown keys rejected, validated once at load.
//!
//! The file format is the serde structs, one file per section (`identity.rs`, `audit.rs`,
//! `kerberos.rs`, `accounts.rs`, `s3.rs`, `devstages.rs`, `sandbox.rs`); sections that belong to
//! a wall live beside it (`walls/network/config.rs`, `walls/cgroup/limits.rs`,
//! `images/config.rs`). Defaults are chosen for a production install under `/var/lib`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use p3_contract::logging::{LogConfig, LogFormat};
pub use p3_contract::steps_config::{ImageConfig, P3Config, StepsConfig};

mod accounts;
mod audit;
mod devstages;
mod identity;
mod kerberos;
mod locate;
mod object_lock;
mod problem;
mod realm;
mod resolve;
mod s3;
mod sandbox;

pub use accounts::Account;
pub use audit::{AuditConfig, AuditStamp, SyslogConfig, host_id};
pub use devstages::{Devstage, RefType};
pub use identity::IdentityConfig;
pub use kerberos::{KerberosConfig, Spake};
pub use object_lock::{ObjectLockConfig, ObjectLockMode};
pub use problem::Problem;
pub use realm::{AccountKerberos, AccountKerberosFile, Dcs, parse_kdc};
pub use s3::{AuditS3Config, S3Account, S3Source, WebIdentity};
pub use sandbox::{SandboxConfig, SandboxFile, Seccomp};

/// Private job uids when the config names no range: uids no account on a normal host uses.
pub const DEFAULT_JOB_UID_RANGE: [u32; 2] = [200_000, 265_535];

/// Default location of the executor config.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/p3-executor/config.toml";

/// The whole executor configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of the executor's private state (per-job workspaces, JWKS cache, uid leases).
    #[serde(default = "default_state_root")]
    pub state_root: PathBuf,
    /// Root under which each job gets its own directory (builds, cache, home, tmp).
    #[serde(default = "default_builds_root")]
    pub builds_root: PathBuf,
    /// Unprivileged user job scripts run as when the executor runs as root.
    #[serde(default = "default_job_user")]
    pub job_user: String,
    /// Optional inclusive uid range: each job then runs under its own private uid (with
    /// `job_user`'s group), so concurrent jobs cannot read each other's files or signal each
    /// other's processes. Without it every job shares `job_user`'s uid.
    #[serde(default)]
    pub job_uid_range: Option<[u32; 2]>,
    /// Run every job under `job_user`'s own uid instead of a private one. Jobs sharing a uid
    /// can read each other's files and credentials: this must be chosen explicitly, and
    /// `check` warns about it. Without it, and without `job_uid_range`, private uids come from
    /// [`DEFAULT_JOB_UID_RANGE`].
    #[serde(default)]
    pub shared_job_uid: bool,
    /// Inclusive id range container jobs lease their 65,536 subordinate uids and gids from
    /// (`subid_pool.rs`); must not overlap `job_uid_range`. Default
    /// [`crate::subid_pool::DEFAULT_JOB_SUBID_RANGE`].
    #[serde(default)]
    pub job_subid_range: Option<[u32; 2]>,
    /// Shell that runs the runner's generated scripts.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled.
    #[serde(default = "default_grace_period")]
    pub grace_period_secs: u64,
    /// Workspaces whose cleanup never ran are swept by `gc` once idle this long.
    #[serde(default = "default_gc_max_age")]
    pub gc_max_age_secs: u64,
    /// PATH given to job scripts.
    #[serde(default = "default_job_path")]
    pub job_path: String,
    /// Extra static environment for every job script (not secrets: the job can print them).
    #[serde(default)]
    pub job_env: BTreeMap<String, String>,
    /// Diagnostics.
    #[serde(default)]
    pub log: LogConfig,
    /// How a job's identity is verified.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Where grants and denials are recorded.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Kerberos tools and timings.
    #[serde(default)]
    pub kerberos: KerberosConfig,
    /// System accounts whose keytabs live on this host, by deploy-stage name.
    #[serde(default)]
    pub accounts: BTreeMap<String, Account>,
    /// Devstages a job may request, and who may have each.
    #[serde(default)]
    pub devstages: BTreeMap<String, Devstage>,
    /// Settings the built-in steps receive (nothing secret: jobs can read them).
    #[serde(default)]
    pub steps: StepsConfig,
    /// The per-job sandbox around every job script.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Per-job cgroup limits (memory, pids, CPU) and where job cgroups live (`walls/cgroup/`).
    #[serde(default)]
    pub limits: crate::walls::cgroup::limits::HostLimitsConfig,
    /// What jobs' sockets may reach: `[network]` (`walls/network/`).
    #[serde(default)]
    pub network: crate::walls::network::config::NetworkConfig,
    /// `image:` jobs: store, credentials, pull policies (`images/`).
    #[serde(default)]
    pub images: crate::images::config::ImagesConfig,
}

/// Prometheus metrics (see `metrics.rs`): printed by `p3-executor metrics`, and written for a
/// node_exporter textfile collector when `textfile` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to write the exposition (atomically, 0644), e.g.
    /// `/var/lib/prometheus/node-exporter/p3_executor.prom`; updated by `metrics`, `gc` and
    /// at the end of every `cleanup`.
    #[serde(default)]
    pub textfile: Option<PathBuf>,
}

pub(super) fn default_true() -> bool {
    true
}
fn default_state_root() -> PathBuf {
    "/var/lib/p3-executor".into()
}
fn default_builds_root() -> PathBuf {
    "/var/lib/p3-executor/builds".into()
}
fn default_job_user() -> String {
    "p3-job".into()
}
fn default_shell() -> String {
    "bash".into()
}
fn default_grace_period() -> u64 {
    30
}
fn default_gc_max_age() -> u64 {
    24 * 3600
}
fn default_job_path() -> String {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
}

/// The hex SHA-256 of a state root: the one name of a config's deployment on this host
/// (its job cgroups' tag, its entry among the configs side by side).
pub fn state_root_digest(state_root: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    hex::encode(Sha256::digest(state_root.as_os_str().as_bytes()))
}

impl Config {
    /// Read, parse and validate the config at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        // A truncated write by config management must not run jobs on built-in defaults.
        if text.trim().is_empty() {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: "the file is empty: restore it (see executor-config/config.toml for an annotated example); an empty config is never taken to mean the defaults".into(),
            });
        }
        let mut cfg = Self::parse_at(&text, Some(path)).map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        cfg.audit.stamp = AuditStamp {
            state_root: Some(cfg.state_root.clone()),
            config_sha256: Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                text.as_bytes(),
            ))),
            config_path: Some(path.to_path_buf()),
        };
        Ok(cfg)
    }

    /// [`Config::load`], then start logging with the config's settings (or the defaults, when
    /// the config cannot be loaded, so the error itself is logged): how every command starts.
    pub fn load_and_init_logging(path: &Path) -> Result<Self> {
        match Self::load(path) {
            Ok(cfg) => {
                crate::logging::init(&cfg.log);
                Ok(cfg)
            }
            Err(e) => {
                crate::logging::init(&LogConfig::default());
                Err(e)
            }
        }
    }

    /// The private uid range jobs lease from, or None when jobs share `job_user`'s uid.
    pub fn private_uid_range(&self) -> Option<[u32; 2]> {
        (!self.shared_job_uid).then(|| self.job_uid_range.unwrap_or(DEFAULT_JOB_UID_RANGE))
    }

    /// Parse and resolve TOML text; the error has one line per problem, each naming its line
    /// and key (`line 3: audit.s3.bucket: ...`).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        Self::parse_at(text, None)
    }

    /// [`Config::parse`], the problems' lines naming `origin`, the file the text was read from.
    fn parse_at(text: &str, origin: Option<&Path>) -> std::result::Result<Self, String> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| resolve::report_parse_error(text, origin, &e))?;
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(resolve::report(text, origin, &problems));
        }
        Ok(cfg)
    }

    /// JWKS URL in effect.
    pub fn jwks_url(&self) -> String {
        self.identity.jwks_url.clone().unwrap_or_else(|| {
            format!(
                "{}/oauth/discovery/keys",
                self.identity.gitlab_url.trim_end_matches('/')
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_defaults() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.shell, "bash");
        assert_eq!(cfg.identity.token_variable, "P3_ID_TOKEN");
    }

    #[test]
    fn an_empty_config_file_is_an_error_not_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "  \n\t\n"] {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).unwrap();
            let msg = Config::load(&path).unwrap_err().to_string();
            assert!(msg.contains("the file is empty"), "{msg}");
        }
    }

    #[test]
    fn jobs_get_private_uids_unless_sharing_is_explicit() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.private_uid_range(), Some(DEFAULT_JOB_UID_RANGE));
        let cfg = Config::parse("job_uid_range = [300000, 300009]").unwrap();
        assert_eq!(cfg.private_uid_range(), Some([300000, 300009]));
        let cfg = Config::parse("shared_job_uid = true").unwrap();
        assert_eq!(cfg.private_uid_range(), None);
        let err =
            Config::parse("shared_job_uid = true\njob_uid_range = [300000, 300009]").unwrap_err();
        assert!(err.contains("contradict"), "{err}");
    }

    #[test]
    fn web_identity_is_a_third_s3_source_validated_key_by_key() {
        let account = |s3: &str| {
            format!(
                "[identity]\ngitlab_url = \"https://gitlab.example.com\"\n\
                 [accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n[accounts.a.s3]\n{s3}\n"
            )
        };
        let role = r#"role_arn = "arn:aws:iam::123456789012:role/deploy""#;
        let cfg = Config::parse(&account(&format!("web_identity = {{ {role} }}"))).unwrap();
        let Some(S3Source::WebIdentity(wi)) =
            cfg.accounts["a"].s3.as_ref().map(|s| s.source.clone())
        else {
            panic!("web_identity is the source");
        };
        assert_eq!(wi.role_arn, "arn:aws:iam::123456789012:role/deploy");
        assert_eq!(
            (wi.audience, wi.token_variable, wi.duration_secs),
            (None, None, None)
        );
        Config::parse(&account(&format!(
            "web_identity = {{ {role}, audience = \"sts.amazonaws.com\", token_variable = \"P3_STS_TOKEN\", duration_secs = 43200 }}"
        )))
        .unwrap();
        // The identity audience needs no second token.
        Config::parse(&account(&format!(
            "web_identity = {{ {role}, audience = \"p3-executor\" }}"
        )))
        .unwrap();

        // (s3 table, a text the error must contain)
        let table = [
            (
                format!("profile = \"x\"\nweb_identity = {{ {role} }}"),
                "accounts.a.s3: set exactly one of credential_process, profile or web_identity",
            ),
            (
                format!("credential_process = [\"x\"]\nweb_identity = {{ {role} }}"),
                "set exactly one of",
            ),
            (
                "web_identity = { role_arn = \"deploy\" }".to_string(),
                "accounts.a.s3.web_identity.role_arn: \"deploy\" is not a role ARN",
            ),
            (
                format!("web_identity = {{ {role}, duration_secs = 600 }}"),
                "accounts.a.s3.web_identity.duration_secs: 600 is outside what STS accepts",
            ),
            (
                format!("web_identity = {{ {role}, duration_secs = 50000 }}"),
                "web_identity.duration_secs: 50000",
            ),
            (
                format!("web_identity = {{ {role}, token_variable = \"P3_STS_TOKEN\" }}"),
                "accounts.a.s3.web_identity.audience: missing: token_variable needs it",
            ),
            (
                format!("web_identity = {{ {role}, audience = \"sts\" }}"),
                "accounts.a.s3.web_identity.audience: \"sts\" needs token_variable",
            ),
            (
                format!(
                    "web_identity = {{ {role}, audience = \"sts\", token_variable = \"P3-STS\" }}"
                ),
                "web_identity.token_variable: \"P3-STS\" is not a CI variable name",
            ),
            (
                format!(
                    "web_identity = {{ {role}, audience = \"sts\", token_variable = \"P3_ID_TOKEN\" }}"
                ),
                "is identity.token_variable",
            ),
            (
                format!("web_identity = {{ {role}, sts_endpoint_url = \"sts.local\" }}"),
                "web_identity.sts_endpoint_url: \"sts.local\" is not an http:// or https:// URL",
            ),
            (
                format!("web_identity = {{ {role}, rolearn = \"x\" }}"),
                "rolearn",
            ),
        ];
        for (s3, want) in table {
            let err = Config::parse(&account(&s3)).unwrap_err();
            assert!(err.contains(want), "{s3}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("shell = \"bash\"\n\ngrace_perod_secs = 3\n").unwrap_err();
        assert!(err.contains("grace_perod_secs"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_key_in_nested_table_is_rejected() {
        let err = Config::parse("[kerberos]\ntimeout = 3\n").unwrap_err();
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let cfg = Config::parse(include_str!("../../executor-config/config.toml")).unwrap();
        assert_eq!(cfg.devstages["client_prod"].deploy_account, "client_uat");
        assert_eq!(cfg.job_uid_range, Some([200000, 265535]));
    }

    #[test]
    fn invalid_patterns_are_named() {
        let err = Config::parse(
            "[identity]\ngitlab_url = \"https://g\"\n[accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n[devstages.d]\ndeploy_account = \"a\"\nprojects = [\"x/*\"]\ntag_pattern = \"^v(\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("devstages.d.tag_pattern: invalid regex"),
            "{err}"
        );
    }

    fn account_with(kerberos: &str) -> std::result::Result<Config, String> {
        Config::parse(&format!(
            "[accounts.corp]\nprincipal = \"svc_ci@CORP.EXAMPLE.COM\"\nkeytab = \"/k\"\n[accounts.corp.kerberos]\n{kerberos}\n"
        ))
    }

    #[test]
    fn an_accounts_realm_settings_parse_with_ad_defaults() {
        let cfg = account_with(
            "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1.corp.example.com\", \"dc2:88\"]",
        )
        .unwrap();
        let realm = cfg.accounts["corp"].kerberos.clone().unwrap();
        assert_eq!(realm.dcs.listed(), ["dc1.corp.example.com", "dc2:88"]);
        assert!(!realm.dcs.srv());
        assert!(!realm.rdns && !realm.canonicalize);
        assert!(realm.include_host_config);
        assert_eq!(realm.timeout_secs, None);
        // Accounts without the table keep the host's krb5.conf.
        let plain = Config::parse("[accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n").unwrap();
        assert!(plain.accounts["a"].kerberos.is_none());
        // SRV discovery alone is enough.
        account_with("realm = \"CORP.EXAMPLE.COM\"\ndns_lookup_kdc = true").unwrap();
    }

    #[test]
    fn bad_realm_settings_are_named() {
        // (the [accounts.corp.kerberos] table, what the error must say)
        let table = [
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdc = [\"dc1\"]",
                "unknown field `kdc`",
            ),
            ("realm = \"\"\nkdcs = [\"dc1\"]", "realm is empty"),
            (
                "realm = \"corp.example.com\"\nkdcs = [\"dc1\"]",
                "\"CORP.EXAMPLE.COM\"",
            ),
            (
                "realm = \"CORP EXAMPLE\"\nkdcs = [\"dc1\"]",
                "is not a realm name",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"",
                "no way to find the realm's DCs",
            ),
            (
                "realm = \"OTHER.EXAMPLE.COM\"\nkdcs = [\"dc1\"]",
                "is in realm \"CORP.EXAMPLE.COM\"",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1:0\"]",
                "port \"0\"",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1:70000\"]",
                "port \"70000\"",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1:\"]",
                "port \"\"",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1:+88\"]",
                "port \"+88\"",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"2001:db8::1\"]",
                "in brackets",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"[2001:db8::1\"]",
                "closing ']'",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"[nope]:88\"]",
                "not an IPv6 address",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1 }\\n[x]\"]",
                "not a host name",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1\", \"dc1\"]",
                "listed twice",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1\"]\nenctypes = [\"aes257\"]",
                "\"aes257\" is not an encryption type",
            ),
            (
                "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1\"]\ntimeout_secs = 0",
                "timeout_secs = 0",
            ),
        ];
        for (table_text, needle) in table {
            let err = account_with(table_text).unwrap_err();
            assert!(err.contains(needle), "{table_text}: {err}");
        }
        // What passes: host names, IPv4, bracketed IPv6 with a port, enctype families.
        account_with(
            "realm = \"CORP.EXAMPLE.COM\"\nkdcs = [\"dc1.corp.example.com:88\", \"10.0.0.5\", \"[2001:db8::1]:88\", \"[2001:db8::2]\"]\nenctypes = [\"AES256-CTS-HMAC-SHA1-96\", \"aes\", \"-rc4\"]",
        )
        .unwrap();
        // A principal without a realm takes the account's.
        Config::parse("[accounts.a]\nprincipal = \"svc\"\nkeytab = \"/k\"\n[accounts.a.kerberos]\nrealm = \"DEV.TEST\"\nkdcs = [\"dc1\"]\n").unwrap();
    }

    #[test]
    fn devstage_must_name_a_known_account() {
        let err = Config::parse(
            "[identity]\ngitlab_url = \"https://g\"\n[devstages.client_dev]\ndeploy_account = \"nope\"\nprojects = [\"a/*\"]\n",
        )
        .unwrap_err();
        assert!(err.contains("devstages.client_dev.deploy_account"), "{err}");
    }
}
