//! Executor configuration: one TOML file, unknown keys rejected, validated once at load.
//!
//! Every section the executor and its built-in steps use lives here, so a reader sees the whole
//! surface in one place. Defaults are chosen for a production install under `/var/lib`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use p3_contract::logging::{LogConfig, LogFormat};
pub use p3_contract::steps_config::{ImageConfig, P3Config, StepsConfig};

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

/// The per-job sandbox: namespaces around every job script (see `sandbox/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Run every job script in its own mount, PID and IPC namespaces with `no_new_privs`, a
    /// private `/tmp`, and the state root hidden. Turning it off is an explicit choice that
    /// `check` warns about; it has no effect when the executor does not run as root.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The one size limit shared by the job's private `/tmp`, `/var/tmp` and `/dev/shm` (one
    /// tmpfs, three directories of it bound into place; tmpfs `size=` syntax: `512m`, `4g`,
    /// `10%` of RAM). Its pages count against the job's memory limit. `tmpfs_size` is the old
    /// name, still accepted.
    #[serde(default = "default_tmpfs_size", alias = "tmpfs_size")]
    pub tmp_size: String,
    /// The seccomp filter on every job process: `"default"` (the built-in profile, see
    /// `walls/seccomp/profile.rs`) or `"off"` (`check` warns).
    #[serde(default)]
    pub seccomp: crate::walls::seccomp::Setting,
    /// Groups of refused calls plain jobs (no devstage) may make anyway: `"keyrings"`,
    /// `"io_uring"`. Devstages have their own `seccomp_allow`.
    #[serde(default)]
    pub seccomp_allow: Vec<crate::walls::seccomp::OptIn>,
    /// Further host paths made unreachable inside the sandbox: a directory is covered by an
    /// empty root-owned tmpfs, a file by `/dev/null`. The state root, the builds root, the
    /// keytabs and the audit log are always hidden.
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// Plain jobs (no devstage) may build and run containers: their script runs in its own
    /// user namespace with a private subordinate range (`walls/userns.rs`). Devstages have
    /// their own `containers`.
    #[serde(default)]
    pub containers: bool,
    /// World-writable places searched for anything a job uid left behind before the uid is
    /// leased to another job (files are removed; a uid that cannot be cleaned is quarantined).
    #[serde(default = "default_scrub_dirs")]
    pub scrub_dirs: Vec<PathBuf>,
}

/// Job identity verification.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Base URL of the GitLab instance; the token's `iss` must equal it.
    #[serde(default)]
    pub gitlab_url: String,
    /// Audience (`aud`) the job's ID token must be minted for.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Job variable holding the ID token (`id_tokens:` key in `.gitlab-ci.yml`).
    #[serde(default = "default_token_variable")]
    pub token_variable: String,
    /// Job variable naming the requested devstage.
    #[serde(default = "default_request_variable")]
    pub request_variable: String,
    /// JWKS URL; default `<gitlab_url>/oauth/discovery/keys`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A local JWKS file instead of a URL (air-gapped hosts, tests).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// How long a fetched JWKS is trusted before it is fetched again.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_cache_ttl_secs: u64,
    /// Clock-skew allowance for `exp`/`nbf`/`iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Timeout for JWKS and GitLab API requests.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_secs: u64,
    /// On a token whose `kid` is not in the cached JWKS, refetch the JWKS only if the cached
    /// copy is at least this old, so tokens with made-up key ids cannot make every job hit GitLab.
    #[serde(default = "default_jwks_refetch_min_interval")]
    pub jwks_refetch_min_interval_secs: u64,
    /// Also confirm the job with the GitLab API (`GET /job` with the job token).
    #[serde(default)]
    pub confirm_with_gitlab_api: bool,
    /// GitLab API base for the confirmation; default `<gitlab_url>`.
    #[serde(default)]
    pub api_url: Option<String>,
}

/// Audit log settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append-only JSON-lines file, hash-chained.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Also send every record to the host's syslog (RFC 5424, JSON); never blocks a grant.
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
    /// Ship every record off the host to S3, as immutable Object-Locked batches
    /// (`p3-executor audit ship`; see `crates/aws/src/fleet/`).
    #[serde(default)]
    pub s3: Option<AuditS3Config>,
    /// What every record is stamped with; set when the config is loaded, never from the file.
    #[serde(skip)]
    pub stamp: AuditStamp,
}

/// `[audit.syslog]`: every audit record also to the local syslog socket (see `audit/syslog.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The local syslog datagram socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Syslog facility: `auth`, `authpriv`, `daemon`, `local0` … `local7`.
    #[serde(default = "default_facility")]
    pub facility: String,
}

/// `[audit.s3]`: where `audit ship` puts this host's records, with the host's own credentials
/// (never a job's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditS3Config {
    /// The bucket (created with Object Lock enabled, so versioned).
    pub bucket: String,
    /// Key prefix; objects are `<prefix>/<host-id>/<chain>/<first_seq>-<last_seq>.jsonl`.
    #[serde(default = "default_audit_prefix")]
    pub prefix: String,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL for S3-compatible stores (MinIO, Ceph RGW).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    #[serde(default)]
    pub path_style: bool,
    /// Host-side shared-credentials profile (from `shared_credentials_file`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Host-side shared-credentials file for `profile` (default `~root/.aws/credentials`).
    #[serde(default)]
    pub shared_credentials_file: Option<PathBuf>,
    /// argv of an AWS `credential_process` for the shipper (alternative to `profile`).
    #[serde(default)]
    pub credential_process: Option<Vec<String>>,
    /// Object Lock retention for every shipped batch. Without it objects are only protected
    /// by the conditional put and the chain; with COMPLIANCE not even the bucket owner can
    /// shorten it.
    #[serde(default)]
    pub object_lock: Option<ObjectLockConfig>,
    /// At most this many records per object.
    #[serde(default = "default_batch_records")]
    pub batch_records: u64,
    /// Bound of the opportunistic ship at the end of `cleanup` (0: do not ship from cleanup).
    #[serde(default = "default_cleanup_ship_secs")]
    pub cleanup_ship_secs: f64,
    /// Upper bound on each S3 call.
    #[serde(default = "default_audit_s3_timeout")]
    pub timeout_secs: u64,
}

impl AuditS3Config {
    /// The settings for reading `bucket` when the config has no `[audit.s3]` (an auditor's
    /// `audit verify --s3`): every key at its default, credentials from the default chain.
    pub fn for_bucket(bucket: &str) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            region: default_region(),
            endpoint_url: None,
            path_style: false,
            profile: None,
            shared_credentials_file: None,
            credential_process: None,
            object_lock: None,
            batch_records: default_batch_records(),
            cleanup_ship_secs: default_cleanup_ship_secs(),
            timeout_secs: default_audit_s3_timeout(),
        }
    }
}

/// `object_lock = { mode = "...", retain_days = N }` of `[audit.s3]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    /// Retention mode.
    pub mode: ObjectLockMode,
    /// Days each object is retained from its upload.
    pub retain_days: u32,
}

/// S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ObjectLockMode {
    /// Users with `s3:BypassGovernanceRetention` can still overwrite or delete (verify
    /// detects it).
    Governance,
    /// Nobody can overwrite or delete before the retention ends, not even the root account.
    Compliance,
}

fn default_audit_prefix() -> String {
    "p3-executor-audit".into()
}
fn default_batch_records() -> u64 {
    1000
}
fn default_cleanup_ship_secs() -> f64 {
    2.0
}
fn default_audit_s3_timeout() -> u64 {
    30
}

fn default_socket() -> PathBuf {
    "/dev/log".into()
}
fn default_facility() -> String {
    "auth".into()
}

impl SyslogConfig {
    /// The numeric code of the facility, or None for an unknown name.
    pub fn facility_code(&self) -> Option<u8> {
        Some(match self.facility.as_str() {
            "kern" => 0,
            "user" => 1,
            "daemon" => 3,
            "auth" => 4,
            "authpriv" => 10,
            "local0" => 16,
            "local1" => 17,
            "local2" => 18,
            "local3" => 19,
            "local4" => 20,
            "local5" => 21,
            "local6" => 22,
            "local7" => 23,
            _ => return None,
        })
    }
}

/// Facts that let an auditor answer "on which runner, under which policy": the same for every
/// record one executor process writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStamp {
    /// The state root holding this runner host's stable id (`<state_root>/host-id`, made by
    /// the first append once the state root exists), which survives renames.
    pub state_root: Option<PathBuf>,
    /// SHA-256 of the executor config file in force.
    pub config_sha256: Option<String>,
    /// The config file it was loaded from (the shipper is started with the same one).
    pub config_path: Option<PathBuf>,
}

/// Kerberos tools and timings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosConfig {
    /// `kinit` command (name looked up on PATH, or absolute path).
    #[serde(default = "default_kinit")]
    pub kinit: String,
    /// `kdestroy` command.
    #[serde(default = "default_kdestroy")]
    pub kdestroy: String,
    /// `klist` command.
    #[serde(default = "default_klist")]
    pub klist: String,
    /// `KRB5_CONFIG` for the executor's own kinit calls and for jobs (None: system default).
    #[serde(default)]
    pub krb5_config: Option<PathBuf>,
    /// Upper bound on every kinit/kdestroy/klist call (MIT kinit can hang ~27 s on a mute KDC).
    #[serde(default = "default_kinit_timeout")]
    pub timeout_secs: u64,
    /// Before each run stage, re-obtain a ticket with less life left than this, or than the
    /// job still needs (the time to the job's deadline), whichever is less: a ticket that
    /// already covers the rest of the job is kept.
    #[serde(default = "default_renew_threshold")]
    pub renew_threshold_secs: u64,
    /// Slack after the job's deadline (its creation plus the payload's `runner_info.timeout`)
    /// that a ticket, and S3 credentials asked for with a duration, may outlive it: a ticket
    /// is requested for at most the time to that deadline plus this margin (never more than
    /// the account's `ticket_lifetime_secs`). Jobs without a timeout get the account's lifetime.
    /// Keep it at a minute or more: it is also the slack that lets a capped ticket last the
    /// whole job without being re-obtained before every stage.
    #[serde(default = "default_lifetime_margin")]
    pub lifetime_margin_secs: u64,
    /// `check` warns about a keytab older than this many days (0: never). AD service accounts
    /// and gMSAs rotate their passwords (a gMSA every 30 days), and a keytab is only as fresh
    /// as its last export.
    #[serde(default = "default_keytab_max_age_days")]
    pub keytab_max_age_days: u64,
}

fn default_keytab_max_age_days() -> u64 {
    30
}

/// A Kerberos system account whose keytab stays on this host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Kerberos principal, e.g. `svc_client_uat@EXAMPLE.COM`.
    pub principal: String,
    /// Keytab on the host; must be readable by root only.
    pub keytab: PathBuf,
    /// Requested ticket lifetime in seconds (0: krb5.conf's default), capped for each job by
    /// its timeout plus `kerberos.lifetime_margin_secs`.
    #[serde(default = "default_ticket_lifetime")]
    pub ticket_lifetime_secs: u64,
    /// Requested renewable lifetime in seconds. The default, 0, gives tickets that are not
    /// renewable at all, whatever krb5.conf's `renew_lifetime` says: the executor re-obtains
    /// tickets from the keytab before a stage, so jobs need no renewal, and a copied ticket
    /// dies with its lifetime. A value above 0 is an explicit per-account opt-in.
    #[serde(default = "default_renewable_lifetime")]
    pub renewable_lifetime_secs: u64,
    /// S3 access for this account, if any.
    #[serde(default)]
    pub s3: Option<S3Account>,
    /// The account's own realm and DCs (an Active Directory domain). Without it kinit and the
    /// job use the host's krb5.conf (`kerberos.krb5_config`), as before.
    #[serde(default)]
    pub kerberos: Option<AccountKerberos>,
}

/// An account's own Kerberos realm, usually an Active Directory domain: each job granted the
/// account gets a krb5.conf of its own naming this realm and its DCs (see
/// `credentials::kerberos::realm_conf`), used by the executor's kinit and by the job's clients.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountKerberos {
    /// The realm: for AD the domain name in upper case (`CORP.EXAMPLE.COM`). It becomes the
    /// job's `default_realm`.
    pub realm: String,
    /// The realm's DCs, `host` or `host:port` (`[v6 address]:port`), tried in this order: one
    /// that refuses the connection is skipped at once, one that accepts and never answers
    /// after about 10 s (MIT's wait for a TCP reply).
    #[serde(default)]
    pub kdcs: Vec<String>,
    /// Find DCs from the `_kerberos._tcp.<realm>` DNS SRV records, for the realm when `kdcs`
    /// is empty and for realms a referral leads to (trusted domains of the forest).
    #[serde(default)]
    pub dns_lookup_kdc: bool,
    /// Encryption types for tickets and session keys, in order of preference (empty: the
    /// library's defaults), e.g. `["aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"]`.
    #[serde(default)]
    pub enctypes: Vec<String>,
    /// Reverse-resolve service hosts before building their principal names. AD registers SPNs
    /// under the names clients use, so the default is false.
    #[serde(default)]
    pub rdns: bool,
    /// Let the KDC canonicalize the client principal (AD: UPNs and enterprise names).
    #[serde(default)]
    pub canonicalize: bool,
    /// End the per-job krb5.conf with `include <kerberos.krb5_config or /etc/krb5.conf>`, so
    /// the host's other settings and realms still apply. The account's own settings come first
    /// and win: MIT's profile returns the first value it reads.
    #[serde(default = "default_true")]
    pub include_host_config: bool,
    /// Bound on this account's kinit calls, instead of `kerberos.timeout_secs`. A DC that
    /// accepts and never answers costs MIT kinit about 10 s before it asks the next one: allow
    /// 10 s for every DC that may be mute, plus a few seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Encryption type names MIT krb5 accepts in `permitted_enctypes` and friends (compared
/// without case; a leading `+`/`-` adds or removes, as in `DEFAULT -rc4`).
const ENCTYPES: &[&str] = &[
    "default",
    "aes",
    "aes256-cts-hmac-sha1-96",
    "aes256-cts",
    "aes256-sha1",
    "aes128-cts-hmac-sha1-96",
    "aes128-cts",
    "aes128-sha1",
    "aes256-cts-hmac-sha384-192",
    "aes256-sha2",
    "aes128-cts-hmac-sha256-128",
    "aes128-sha2",
    "rc4",
    "arcfour-hmac",
    "rc4-hmac",
    "arcfour-hmac-md5",
    "des3",
    "des3-cbc-sha1",
    "des3-hmac-sha1",
    "des3-cbc-sha1-kd",
    "camellia",
    "camellia256-cts-cmac",
    "camellia256-cts",
    "camellia128-cts-cmac",
    "camellia128-cts",
];

impl AccountKerberos {
    /// Problems with `[accounts.<name>.kerberos]` for the account's `principal`, each naming
    /// its key. Everything here ends up in a krb5.conf, so only plain profile words pass.
    pub fn problems(&self, name: &str, principal: &str) -> Vec<String> {
        let key = format!("accounts.{name}.kerberos");
        let mut problems = Vec::new();
        let realm = &self.realm;
        if realm.is_empty() {
            problems.push(format!(
                "{key}.realm is empty: name the realm (AD: the domain in upper case, CORP.EXAMPLE.COM)"
            ));
        } else if !realm.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) || realm.starts_with('.')
            || realm.ends_with('.')
        {
            problems.push(format!(
                "{key}.realm = {realm:?} is not a realm name: upper-case letters, digits, '.', '-' and '_' (AD: the domain in upper case, {:?})",
                realm.to_ascii_uppercase()
            ));
        } else if let Some((_, own)) = principal.rsplit_once('@')
            && own != realm
        {
            problems.push(format!(
                "accounts.{name}.principal {principal:?} is in realm {own:?}, but {key}.realm is {realm:?}: kinit would ask {realm}'s DCs for a principal of another realm (write the principal as <name>@{realm}, or leave its realm out)"
            ));
        }
        if self.kdcs.is_empty() && !self.dns_lookup_kdc {
            problems.push(format!(
                "{key}: no way to find the realm's DCs: list them in kdcs = [\"dc1.example.com\", ...] or set dns_lookup_kdc = true"
            ));
        }
        let mut seen = Vec::new();
        for kdc in &self.kdcs {
            if let Err(why) = parse_kdc(kdc) {
                problems.push(format!("{key}.kdcs: {kdc:?}: {why}"));
            } else if seen.contains(&kdc) {
                problems.push(format!("{key}.kdcs: {kdc:?} is listed twice"));
            }
            seen.push(kdc);
        }
        for enctype in &self.enctypes {
            let bare = enctype.trim_start_matches(['+', '-']).to_ascii_lowercase();
            if !ENCTYPES.contains(&bare.as_str()) {
                problems.push(format!(
                    "{key}.enctypes: {enctype:?} is not an encryption type MIT krb5 knows (AD: \"aes256-cts-hmac-sha1-96\", \"aes128-cts-hmac-sha1-96\")"
                ));
            }
        }
        if self.timeout_secs == Some(0) {
            problems.push(format!(
                "{key}.timeout_secs = 0: give kinit at least a few seconds (10 s more for every DC that may be mute)"
            ));
        }
        problems
    }
}

/// A DC entry, `host`, `host:port` or `[v6]:port`: the host and the port, if given.
pub fn parse_kdc(entry: &str) -> std::result::Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        match after {
            "" => (addr, None),
            _ => (
                addr,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected ':<port>' after ']'")?,
                ),
            ),
        }
    } else {
        match entry.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("an IPv6 address goes in brackets: \"[2001:db8::1]:88\"".into());
            }
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("no host name".into());
    }
    if !entry.starts_with('[')
        && (!host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            || host.starts_with(['.', '-']))
    {
        return Err("not a host name: letters, digits, '.', '-' and '_' only".into());
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

/// S3 settings and credential source for an account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Account {
    /// AWS region (S3-compatible stores usually accept `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL for S3-compatible stores.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    #[serde(default)]
    pub path_style: bool,
    /// argv of an AWS `credential_process` command, run with the job's KRB5CCNAME. The
    /// credential lifetime the job needs (the same capped duration as its ticket: the time to
    /// the job's deadline plus `kerberos.lifetime_margin_secs`, at most the account's
    /// `ticket_lifetime_secs`) replaces `{duration_secs}` in any argv element and is also in
    /// the process's environment as `P3_CREDENTIAL_DURATION_SECS`, for services that accept a
    /// duration (clamp it to what the service allows, e.g. STS: 900 s and up).
    #[serde(default)]
    pub credential_process: Option<Vec<String>>,
    /// Host-side shared-credentials profile (alternative to `credential_process`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Host-side shared-credentials file for `profile` (default `~root/.aws/credentials`).
    #[serde(default)]
    pub shared_credentials_file: Option<PathBuf>,
    /// STS `AssumeRoleWithWebIdentity` with the job's verified GitLab ID token (alternative to
    /// `credential_process` and `profile`: no secret on the host).
    #[serde(default)]
    pub web_identity: Option<WebIdentity>,
    /// Refresh credentials expiring within this many seconds before each run stage.
    #[serde(default = "default_s3_refresh")]
    pub refresh_threshold_secs: u64,
    /// Upper bound on the credential_process call.
    #[serde(default = "default_process_timeout")]
    pub timeout_secs: u64,
}

/// `web_identity = { role_arn = "...", ... }` of `[accounts.<name>.s3]`: temporary credentials
/// from STS `AssumeRoleWithWebIdentity` (AWS, MinIO, Ceph RGW), obtained in `prepare` with
/// the job's GitLab ID token and refreshed like any other S3 credentials.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebIdentity {
    /// The role to assume; its trust policy names GitLab as the OIDC provider.
    pub role_arn: String,
    /// The `aud` the STS expects, when it is not `identity.audience`: the job then supplies a
    /// second `id_tokens:` entry with it, in `token_variable`.
    #[serde(default)]
    pub audience: Option<String>,
    /// The job variable of that second token (verified like the identity token, against
    /// `audience`). Without it the identity token prepare verified is sent.
    #[serde(default)]
    pub token_variable: Option<String>,
    /// The longest session to ask for: the role's maximum session duration (STS refuses
    /// more). Default 3600, STS's default maximum; the job's own duration is clamped to
    /// 900 (STS's minimum) ..= this.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// STS endpoint; default the account's `endpoint_url` (MinIO and Ceph RGW serve STS
    /// there), or AWS's regional STS when neither is set.
    #[serde(default)]
    pub sts_endpoint_url: Option<String>,
}

impl WebIdentity {
    /// STS's shortest session.
    pub const MIN_DURATION_SECS: u64 = 900;
    /// STS's longest role session (a role's maximum session duration is at most 12 hours).
    pub const MAX_DURATION_SECS: u64 = 43_200;
    /// The longest session asked for when `duration_secs` is not set: STS's default maximum.
    pub const DEFAULT_MAX_DURATION_SECS: u64 = 3600;

    /// Problems with these settings, each naming its key under `accounts.<account>.s3`.
    pub fn problems(&self, account: &str, identity: &IdentityConfig) -> Vec<String> {
        let key = |k: &str| format!("accounts.{account}.s3.web_identity.{k}");
        let mut problems = Vec::new();
        let arn = self.role_arn.as_str();
        if !arn.starts_with("arn:")
            || arn.split(':').count() < 6
            || arn.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push(format!(
                "{} = {arn:?} is not a role ARN (e.g. arn:aws:iam::123456789012:role/gitlab-deploy)",
                key("role_arn")
            ));
        }
        if let Some(d) = self.duration_secs
            && !(Self::MIN_DURATION_SECS..=Self::MAX_DURATION_SECS).contains(&d)
        {
            problems.push(format!(
                "{} = {d} is outside what STS accepts ({}..={})",
                key("duration_secs"),
                Self::MIN_DURATION_SECS,
                Self::MAX_DURATION_SECS
            ));
        }
        match (&self.token_variable, &self.audience) {
            (Some(var), _) if !is_variable_name(var) => problems.push(format!(
                "{} = {var:?} is not a CI variable name (letters, digits, '_')",
                key("token_variable")
            )),
            (Some(var), _) if *var == identity.token_variable => problems.push(format!(
                "{} = {var:?} is identity.token_variable: leave token_variable out to send the identity token",
                key("token_variable")
            )),
            (Some(_), None) => problems.push(format!(
                "{} is required with token_variable: the aud the STS expects of that token",
                key("audience")
            )),
            (None, Some(aud)) if *aud != identity.audience => problems.push(format!(
                "{} = {aud:?} needs token_variable: without it the identity token (aud {:?}) is sent",
                key("audience"),
                identity.audience
            )),
            _ => {}
        }
        if matches!(&self.audience, Some(a) if a.trim().is_empty()) {
            problems.push(format!("{} is empty", key("audience")));
        }
        if matches!(&self.sts_endpoint_url, Some(u) if !(u.starts_with("https://") || u.starts_with("http://")))
        {
            problems.push(format!(
                "{} must be an http:// or https:// URL",
                key("sts_endpoint_url")
            ));
        }
        problems
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Ref kinds GitLab reports in `ref_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefType {
    /// A branch.
    Branch,
    /// A tag.
    Tag,
}

/// Who may be granted a devstage, and with which account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Devstage {
    /// Account (deploy stage) whose credentials the job gets, e.g. `client_uat` for `client_prod`.
    pub deploy_account: String,
    /// Project path globs (`group/sub/*`); the verified `project_path` must match one.
    pub projects: Vec<String>,
    /// Allowed ref types.
    #[serde(default = "default_ref_types")]
    pub ref_types: Vec<RefType>,
    /// The ref must be protected.
    #[serde(default)]
    pub protected_ref: bool,
    /// Regex a branch name must match (when the ref is a branch).
    #[serde(default)]
    pub branch_pattern: Option<String>,
    /// Regex a tag must match (when the ref is a tag), e.g. `^v\d+\.\d+\.\d+$`.
    #[serde(default)]
    pub tag_pattern: Option<String>,
    /// Allowed `pipeline_source` values (None: any).
    #[serde(default)]
    pub pipeline_sources: Option<Vec<String>>,
    /// Required protected environment (job `environment:` name), if any.
    #[serde(default)]
    pub environment: Option<String>,
    /// Groups of calls the seccomp filter refuses that this devstage's jobs may make anyway:
    /// `"keyrings"` (a `KEYRING:` ticket cache), `"io_uring"`.
    #[serde(default)]
    pub seccomp_allow: Vec<crate::walls::seccomp::OptIn>,
    /// Limits of this devstage's jobs, in place of `[limits]` for the keys it sets.
    #[serde(default)]
    pub limits: Option<crate::walls::cgroup::limits::LimitsConfig>,
    /// What this devstage's jobs may reach, after `[network] deny` (`walls/network/`).
    #[serde(default)]
    pub network: Option<crate::walls::network::config::StageNetwork>,
    /// This devstage's jobs may build and run containers (their own user namespace with a
    /// private subordinate range, `walls/userns.rs`).
    #[serde(default)]
    pub containers: bool,
    /// Images this devstage's jobs may run in (globs, `**` crosses `/`); None: any.
    #[serde(default)]
    pub images: Option<Vec<String>>,
    /// Only images pinned by digest (`name@sha256:...`).
    #[serde(default)]
    pub require_digest: bool,
}

fn default_true() -> bool {
    true
}
fn default_tmpfs_size() -> String {
    // Shared by /tmp, /var/tmp and /dev/shm, and charged to the job's memory limit.
    "10%".into()
}
fn default_scrub_dirs() -> Vec<PathBuf> {
    ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
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
fn default_audience() -> String {
    "p3-executor".into()
}
fn default_token_variable() -> String {
    "P3_ID_TOKEN".into()
}
fn default_request_variable() -> String {
    "P3_DEVSTAGE".into()
}
fn default_jwks_ttl() -> u64 {
    3600
}
fn default_leeway() -> u64 {
    30
}
fn default_http_timeout() -> u64 {
    10
}
fn default_jwks_refetch_min_interval() -> u64 {
    30
}
fn default_audit_path() -> PathBuf {
    "/var/log/p3-executor/audit.jsonl".into()
}
fn default_kinit() -> String {
    "kinit".into()
}
fn default_kdestroy() -> String {
    "kdestroy".into()
}
fn default_klist() -> String {
    "klist".into()
}
fn default_kinit_timeout() -> u64 {
    15
}
fn default_renew_threshold() -> u64 {
    3600
}
fn default_ticket_lifetime() -> u64 {
    10 * 3600
}
fn default_renewable_lifetime() -> u64 {
    0
}
fn default_lifetime_margin() -> u64 {
    900
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_s3_refresh() -> u64 {
    600
}
fn default_process_timeout() -> u64 {
    30
}
fn default_ref_types() -> Vec<RefType> {
    vec![RefType::Branch, RefType::Tag]
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            gitlab_url: String::new(),
            audience: default_audience(),
            token_variable: default_token_variable(),
            request_variable: default_request_variable(),
            jwks_url: None,
            jwks_file: None,
            jwks_cache_ttl_secs: default_jwks_ttl(),
            leeway_secs: default_leeway(),
            http_timeout_secs: default_http_timeout(),
            jwks_refetch_min_interval_secs: default_jwks_refetch_min_interval(),
            confirm_with_gitlab_api: false,
            api_url: None,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tmp_size: default_tmpfs_size(),
            seccomp: Default::default(),
            seccomp_allow: Vec::new(),
            hide: Vec::new(),
            containers: false,
            scrub_dirs: default_scrub_dirs(),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: default_audit_path(),
            syslog: None,
            s3: None,
            stamp: AuditStamp::default(),
        }
    }
}

/// This host's stable id: `<state_root>/host-id`, made once (128 random bits, hex) and kept.
/// None when the state root cannot hold it (not root, read-only): records then name the host
/// by its name only.
pub fn host_id(state_root: &Path) -> Option<String> {
    let file = state_root.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Some(id.to_string());
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .ok()?;
    let id = hex::encode(bytes);
    // Never create the state root here (loading a config must not make directories, and the
    // workspace code makes it with the right mode); the first prepare does.
    if !state_root.is_dir() {
        return None;
    }
    // create_new: two first executions race; the loser reads the winner's id.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
    {
        Ok(mut f) => std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes()).ok()?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return std::fs::read_to_string(&file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
        Err(_) => return None,
    }
    Some(id)
}

impl Default for KerberosConfig {
    fn default() -> Self {
        Self {
            kinit: default_kinit(),
            kdestroy: default_kdestroy(),
            klist: default_klist(),
            krb5_config: None,
            timeout_secs: default_kinit_timeout(),
            renew_threshold_secs: default_renew_threshold(),
            lifetime_margin_secs: default_lifetime_margin(),
            keytab_max_age_days: default_keytab_max_age_days(),
        }
    }
}

/// Syntax check of a pattern without compiling it: every runner call validates the config,
/// and building the automaton is only needed where a pattern is matched (policy, steps).
fn check_regex(pattern: &str) -> std::result::Result<(), String> {
    regex_syntax::Parser::new()
        .parse(pattern)
        .map(drop)
        .map_err(|e| e.to_string())
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
        let mut cfg = Self::parse(&text).map_err(|message| Error::Config {
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

    /// Parse and validate TOML text; the error names the offending key and line.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Consistency checks that TOML types cannot express.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        for (key, path) in [
            ("state_root", &self.state_root),
            ("builds_root", &self.builds_root),
        ] {
            if !path.is_absolute() {
                problems.push(format!("{key} must be an absolute path, got {path:?}"));
            }
        }
        if self.shared_job_uid && self.job_uid_range.is_some() {
            problems.push(
                "shared_job_uid = true and job_uid_range contradict each other: keep one".into(),
            );
        }
        if let Some([lo, hi]) = self.job_uid_range {
            if lo < 1000 || hi < lo {
                problems.push(format!(
                    "job_uid_range [{lo}, {hi}] must be ascending and above 1000 (system uids)"
                ));
            }
        }
        if let Err(e) = crate::subid_pool::validate(self) {
            problems.push(e);
        }
        if let Some(s) = &self.audit.syslog {
            if s.facility_code().is_none() {
                problems.push(format!(
                    "audit.syslog.facility = {:?} is not a syslog facility (auth, authpriv, daemon, user, local0 … local7)",
                    s.facility
                ));
            }
        }
        if let Some(s3) = &self.audit.s3 {
            if s3.bucket.is_empty() || s3.bucket.contains('/') {
                problems.push(format!(
                    "audit.s3.bucket = {:?} is not a bucket name (the key prefix goes in audit.s3.prefix)",
                    s3.bucket
                ));
            }
            if s3.profile.is_some() && s3.credential_process.is_some() {
                problems.push(
                    "audit.s3: profile and credential_process contradict each other: keep one"
                        .into(),
                );
            }
            if s3.batch_records == 0 {
                problems.push("audit.s3.batch_records must be at least 1".into());
            }
            if !(s3.cleanup_ship_secs >= 0.0 && s3.cleanup_ship_secs <= 60.0) {
                problems.push(format!(
                    "audit.s3.cleanup_ship_secs = {} must be between 0 (off) and 60: it delays every job's cleanup",
                    s3.cleanup_ship_secs
                ));
            }
            if s3.object_lock.as_ref().is_some_and(|l| l.retain_days == 0) {
                problems.push("audit.s3.object_lock.retain_days must be at least 1".into());
            }
        }
        // Interpolated into tmpfs mount options: no separators, only a size.
        let size = &self.sandbox.tmp_size;
        if size.is_empty()
            || !size
                .trim_end_matches(['k', 'm', 'g', 'K', 'M', 'G', '%'])
                .bytes()
                .all(|b| b.is_ascii_digit())
            || !size.as_bytes()[0].is_ascii_digit()
        {
            problems.push(format!(
                "sandbox.tmp_size = {size:?} is not a size like \"512m\", \"4g\" or \"25%\""
            ));
        }
        for path in self.sandbox.hide.iter().chain(&self.sandbox.scrub_dirs) {
            if !path.is_absolute() {
                problems.push(format!(
                    "sandbox.hide and sandbox.scrub_dirs take absolute paths, got {path:?}"
                ));
            }
        }
        problems.extend(self.limits.problems());
        problems.extend(self.network.problems());
        for (name, stage) in &self.devstages {
            if let Some(limits) = &stage.limits {
                problems.extend(limits.problems(&format!("devstages.{name}.limits")));
            }
            if !self.accounts.contains_key(&stage.deploy_account) {
                problems.push(format!(
                    "devstages.{name}.deploy_account = {:?} names no [accounts.{}] section (known: {})",
                    stage.deploy_account,
                    stage.deploy_account,
                    self.accounts.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if stage.projects.is_empty() {
                problems.push(format!(
                    "devstages.{name}.projects is empty: list the project path globs allowed"
                ));
            }
            for (key, pattern) in [
                ("branch_pattern", &stage.branch_pattern),
                ("tag_pattern", &stage.tag_pattern),
            ] {
                if let Some(p) = pattern {
                    if let Err(e) = check_regex(p) {
                        problems.push(format!("devstages.{name}.{key}: invalid regex: {e}"));
                    }
                }
            }
            for glob in &stage.projects {
                if let Err(e) = globset::Glob::new(glob) {
                    problems.push(format!(
                        "devstages.{name}.projects: invalid glob {glob:?}: {e}"
                    ));
                }
            }
        }
        for (name, account) in &self.accounts {
            if !account.keytab.is_absolute() {
                problems.push(format!("accounts.{name}.keytab must be an absolute path"));
            }
            if let Some(realm) = &account.kerberos {
                problems.extend(realm.problems(name, &account.principal));
            }
            if let Some(s3) = &account.s3 {
                let sources = [
                    s3.credential_process.is_some(),
                    s3.profile.is_some(),
                    s3.web_identity.is_some(),
                ];
                if sources.iter().filter(|set| **set).count() != 1 {
                    problems.push(format!(
                        "accounts.{name}.s3: set exactly one of credential_process, profile or web_identity"
                    ));
                }
                if let Some(wi) = &s3.web_identity {
                    problems.extend(wi.problems(name, &self.identity));
                }
                if matches!(&s3.credential_process, Some(argv) if argv.is_empty()) {
                    problems.push(format!("accounts.{name}.s3.credential_process is empty"));
                }
            }
        }
        if !self.devstages.is_empty() && self.identity.gitlab_url.is_empty() {
            problems.push(
                "identity.gitlab_url is required when devstages are defined (the ID token's issuer)"
                    .into(),
            );
        }
        // A template typo would otherwise surface only in a deploy job, long after the edit.
        problems.extend(self.steps.validate());
        problems.extend(self.images.validate());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
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
        let wi = cfg.accounts["a"]
            .s3
            .as_ref()
            .unwrap()
            .web_identity
            .clone()
            .unwrap();
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
                "accounts.a.s3.web_identity.role_arn = \"deploy\" is not a role ARN",
            ),
            (
                format!("web_identity = {{ {role}, duration_secs = 600 }}"),
                "accounts.a.s3.web_identity.duration_secs = 600 is outside what STS accepts",
            ),
            (
                format!("web_identity = {{ {role}, duration_secs = 50000 }}"),
                "web_identity.duration_secs = 50000",
            ),
            (
                format!("web_identity = {{ {role}, token_variable = \"P3_STS_TOKEN\" }}"),
                "accounts.a.s3.web_identity.audience is required with token_variable",
            ),
            (
                format!("web_identity = {{ {role}, audience = \"sts\" }}"),
                "accounts.a.s3.web_identity.audience = \"sts\" needs token_variable",
            ),
            (
                format!(
                    "web_identity = {{ {role}, audience = \"sts\", token_variable = \"P3-STS\" }}"
                ),
                "web_identity.token_variable = \"P3-STS\" is not a CI variable name",
            ),
            (
                format!(
                    "web_identity = {{ {role}, audience = \"sts\", token_variable = \"P3_ID_TOKEN\" }}"
                ),
                "is identity.token_variable",
            ),
            (
                format!("web_identity = {{ {role}, sts_endpoint_url = \"sts.local\" }}"),
                "web_identity.sts_endpoint_url must be an http:// or https:// URL",
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
        let cfg = Config::parse(include_str!("../executor-config/config.toml")).unwrap();
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
        assert_eq!(realm.kdcs, ["dc1.corp.example.com", "dc2:88"]);
        assert!(!realm.rdns && !realm.canonicalize && !realm.dns_lookup_kdc);
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
