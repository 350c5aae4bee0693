//! The `[network]` section and `[devstages.<n>.network]`: which destinations a job's sockets
//! may reach. Pure (types, defaults and validation).

use serde::{Deserialize, Serialize};

use super::target::Target;

/// The nftables table the executor owns when the config names none.
pub const DEFAULT_TABLE: &str = "p3_executor";

/// What a job may reach beyond the rules that name a destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Everything except what a `deny` names.
    #[default]
    Open,
    /// Only what an `allow` names, plus DNS and the GitLab instance.
    Allowlist,
}

impl Mode {
    /// `open` or `allowlist`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Allowlist => "allowlist",
        }
    }
}

/// The rules of one kind of job: a devstage's (`[devstages.<n>.network]`) or plain jobs'
/// (`[network.plain]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageNetwork {
    /// `open` or `allowlist` for these jobs (default: `[network] mode`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Destinations these jobs may reach (what allowlist mode lets through).
    #[serde(default)]
    pub allow: Vec<Target>,
    /// Destinations these jobs may not reach, even if an `allow` names them.
    #[serde(default)]
    pub deny: Vec<Target>,
}

/// `[network]`: the egress policy of every job (`walls/network/`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `open` (the default: everything but `deny`) or `allowlist`, for jobs whose devstage (or
    /// `[network.plain]`) sets no mode of its own.
    #[serde(default)]
    pub mode: Mode,
    /// Refused to every job, whatever its devstage allows. Default: the cloud metadata and
    /// credential endpoints ([`default_deny`]); `deny = []` turns that off.
    #[serde(default = "default_deny")]
    pub deny: Vec<Target>,
    /// The rules of jobs without a devstage.
    #[serde(default)]
    pub plain: StageNetwork,
    /// The nftables table (family `inet`) the executor owns; nothing else in the ruleset is
    /// touched.
    #[serde(default = "default_table")]
    pub table: String,
    /// DNS servers jobs may always reach in allowlist mode (address, optional port; default
    /// 53). Default: the `nameserver` lines of `/etc/resolv.conf`, read at prepare.
    #[serde(default)]
    pub resolvers: Option<Vec<Target>>,
    /// The `nft` program (a name looked up in PATH, or an absolute path).
    #[serde(default = "default_nft")]
    pub nft: String,
    /// Log refused connections to the kernel log (rate-limited, prefix `p3-executor job <id>`).
    #[serde(default = "default_true")]
    pub log: bool,
    /// Keep jobs apart on loopback: a port a job listens on answers its own job only, not
    /// another job or the host (`render.rs`). Needs the kernel's connection tracking, which
    /// the table then loads for the whole host; `false` leaves both off.
    #[serde(default = "default_true")]
    pub loopback_apart: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: Mode::default(),
            deny: default_deny(),
            plain: StageNetwork::default(),
            table: default_table(),
            resolvers: None,
            nft: default_nft(),
            log: true,
            loopback_apart: true,
        }
    }
}

/// The link-local endpoints that hand a cloud host's instance or task role credentials to any
/// process that asks: the metadata service (AWS, GCP, Azure, OpenStack: `169.254.169.254`, EC2
/// IPv6 `fd00:ec2::254`), the ECS task credential endpoint (`169.254.170.2`) and the EKS Pod
/// Identity agent (`169.254.170.23`, `fd00:ec2::23`).
pub fn default_deny() -> Vec<Target> {
    [
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::254",
        "fd00:ec2::23",
    ]
    .iter()
    .map(|t| t.parse().expect("built-in targets parse"))
    .collect()
}

fn default_table() -> String {
    DEFAULT_TABLE.into()
}

fn default_nft() -> String {
    "nft".into()
}

fn default_true() -> bool {
    true
}

impl NetworkConfig {
    /// Does any job get a rule? False only for `mode = "open"` everywhere with nothing denied:
    /// then a host without nftables may run jobs (and `check` warns).
    pub fn enforces<'a>(&self, stages: impl IntoIterator<Item = Option<&'a StageNetwork>>) -> bool {
        let strict =
            |s: &StageNetwork| !s.deny.is_empty() || s.mode.unwrap_or(self.mode) == Mode::Allowlist;
        !self.deny.is_empty() || strict(&self.plain) || stages.into_iter().flatten().any(strict)
    }

    /// What is wrong with the section (each problem names its key).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        // nft identifiers: a letter, then letters, digits, underscores; the per-uid chains add
        // a suffix, so leave room within nft's 256 bytes.
        let t = &self.table;
        if t.is_empty()
            || t.len() > 64
            || !t.as_bytes()[0].is_ascii_alphabetic()
            || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            out.push(format!(
                "network.table = {t:?} is not an nftables name (a letter, then letters, digits or _, at most 64)"
            ));
        }
        if self.nft.is_empty() {
            out.push("network.nft is empty: name the nft program (default \"nft\")".into());
        }
        for r in self.resolvers.iter().flatten() {
            if !matches!(r.host, super::target::Host::Net(n) if n.is_host()) {
                out.push(format!(
                    "network.resolvers: {r} is not an address (a DNS server must be reachable before names resolve)"
                ));
            }
        }
        out
    }
}
