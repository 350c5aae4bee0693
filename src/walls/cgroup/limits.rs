//! The limits a job runs under: the `[limits]` config, the per-devstage override
//! `[devstages.<name>.limits]`, the job's own request (which may only lower them), and the
//! defaults derived from the host's size. Pure: the host's size is an input ([`HostSize`]).
//!
//! Resolution, field by field: the host default, replaced by `[limits]` when it sets the field,
//! replaced by `[devstages.<granted>.limits]` when the job was granted that devstage and it sets
//! the field, then lowered by the job's request variable. Every resolved value remembers the key
//! that set it, so a job killed by a limit is told which setting to change.

use serde::{Deserialize, Serialize};

/// Job variable a job sets to ask for a lower memory limit (`512m`, `2g`).
pub const REQUEST_MEMORY: &str = "P3_LIMIT_MEMORY";
/// Job variable a job sets to ask for a lower pids limit.
pub const REQUEST_PIDS: &str = "P3_LIMIT_PIDS";
/// Job variable a job sets to ask for a lower CPU quota (cores, `0.5`).
pub const REQUEST_CPU: &str = "P3_LIMIT_CPU";

/// The CFS period written with every CPU quota (the kernel's default, 100 ms).
pub const CPU_PERIOD_USEC: u64 = 100_000;

/// Memory the defaults leave to the host and the runner: a tenth of RAM, at least 512 MiB and
/// at most 4 GiB, and never more than half of RAM.
pub fn memory_reserve(ram: u64) -> u64 {
    (ram / 10).clamp(512 << 20, 4 << 30).min(ram / 2)
}

/// Pids the defaults leave to the host: an eighth of `pid_max`, at least 1024.
pub fn pids_reserve(pid_max: u32) -> u32 {
    (pid_max / 8).max(1024).min(pid_max / 2)
}

/// What the defaults are derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSize {
    /// Physical memory in bytes (`MemTotal`).
    pub ram: u64,
    /// `/proc/sys/kernel/pid_max`.
    pub pid_max: u32,
}

impl HostSize {
    /// Memory all jobs together may use: RAM less [`memory_reserve`]. Also the default of one job.
    pub fn jobs_memory(&self) -> u64 {
        self.ram - memory_reserve(self.ram)
    }

    /// Pids all jobs together may use: `pid_max` less [`pids_reserve`].
    pub fn jobs_pids(&self) -> u32 {
        self.pid_max - pids_reserve(self.pid_max)
    }

    /// One job's default pids limit: 4096, or a quarter of `pid_max` on a host with fewer.
    pub fn job_pids(&self) -> u32 {
        (self.pid_max / 4).min(4096)
    }
}

/// A memory size: bytes, or `max` (no limit). Written in config and job variables as `512m`,
/// `4g`, `1048576` or `max` (binary units: `k`, `m`, `g`, `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemorySize(pub Option<u64>);

impl TryFrom<String> for MemorySize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_size(&s).map(MemorySize)
    }
}

impl From<MemorySize> for String {
    fn from(m: MemorySize) -> String {
        match m.0 {
            None => "max".into(),
            Some(b) => b.to_string(),
        }
    }
}

/// Parse `512m`, `4G`, `1048576` or `max` (None: no limit).
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => {
                    return Err(format!(
                        "{text:?} is not a size like \"512m\", \"4g\" or \"max\""
                    ));
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .ok()
        .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{text:?} is not a size like \"512m\", \"4g\" or \"max\""))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    // The kernel rounds to pages; a job cannot start below a few MiB anyway.
    if bytes < (1 << 20) {
        return Err(format!("{text:?} is below 1 MiB"));
    }
    Ok(Some(bytes))
}

/// `64 MiB`, `1.5 GiB`, `max`: how limits are shown to people.
pub fn format_size(bytes: Option<u64>) -> String {
    let Some(b) = bytes else {
        return "max".into();
    };
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in units {
        if b >= 1 << shift {
            let v = b as f64 / (1u64 << shift) as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} B")
}

/// Limits one layer of config sets; a field left out keeps the layer below. The same keys in
/// `[limits]` and `[devstages.<name>.limits]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory of the whole job, page cache and tmpfs included, swap included (`memory.max` with
    /// `memory.swap.max = 0` on cgroup v2; `memory.memsw.limit_in_bytes` on v1). `max`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySize>,
    /// Processes and threads of the whole job (`pids.max`). 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// CPU quota in cores (`1.5`: 150 ms per 100 ms period). 0: no quota. No quota by default:
    /// CPU is shared fairly and cannot be exhausted the way pids and memory can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
}

impl LimitsConfig {
    /// Problems with these values, naming `section` (`limits`, `devstages.x.limits`).
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cpu) = self.cpu {
            if !(cpu.is_finite() && cpu >= 0.0 && (cpu == 0.0 || cpu >= 0.01)) {
                out.push(format!(
                    "{section}.cpu = {cpu} must be a number of cores, at least 0.01 (0: no quota)"
                ));
            }
        }
        out
    }
}

/// Whether the executor puts each job into its own cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupSetting {
    /// When running as root: a cgroup per job with the limits; failing to make one is a system
    /// failure of prepare.
    #[default]
    Auto,
    /// No cgroup, no limits (`check` warns).
    Off,
}

/// `[limits]`: the host-wide limits and where job cgroups live.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLimitsConfig {
    /// `auto` (default) or `off`.
    #[serde(default)]
    pub cgroups: CgroupSetting,
    /// The cgroup under which `p3-executor/job-<id>-<tag>` is made (a path inside the cgroup
    /// hierarchy, e.g. `/system.slice/gitlab-runner.service`). Default: the cgroup of the
    /// executor process itself (on cgroup v2, its parent when it sits in our `p3-runner` leaf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    /// Memory of one job (see [`LimitsConfig::memory`]). Default: RAM less a reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySize>,
    /// Pids of one job. Default: min(4096, pid_max / 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// CPU cores of one job. Default: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
}

impl HostLimitsConfig {
    /// The limit values of this section, as one layer.
    pub fn layer(&self) -> LimitsConfig {
        LimitsConfig {
            memory: self.memory,
            pids: self.pids,
            cpu: self.cpu,
        }
    }

    /// Problems with `[limits]`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.layer().problems("limits");
        if let Some(p) = &self.cgroup_parent {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\n') {
                out.push(format!(
                    "limits.cgroup_parent = {p:?} must be an absolute cgroup path like \"/system.slice/gitlab-runner.service\""
                ));
            }
        }
        out
    }
}

/// One resolved limit: its value (None: unlimited) and the setting that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limit<T> {
    /// The value; None is no limit.
    pub value: Option<T>,
    /// Who set it: `[limits] memory`, `[devstages.x.limits] pids`, `P3_LIMIT_MEMORY`, or
    /// `default (...)`.
    pub key: String,
}

/// The limits a job runs under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes, swap included.
    pub memory: Limit<u64>,
    /// Processes and threads.
    pub pids: Limit<u32>,
    /// CPU cores.
    pub cpu: Limit<f64>,
}

impl Limits {
    /// `memory 64 MiB, pids 4096, cpu 1.5` for banners and logs.
    pub fn summary(&self) -> String {
        format!(
            "memory {}, pids {}, cpu {}",
            format_size(self.memory.value),
            self.pids.value.map_or("max".into(), |p| p.to_string()),
            self.cpu.value.map_or("max".into(), |c| format!("{c}"))
        )
    }

    /// The `cpu.max` line of cgroup v2 (`150000 100000`, `max 100000`).
    pub fn cpu_max(&self) -> String {
        match self.cpu_quota_usec() {
            Some(q) => format!("{q} {CPU_PERIOD_USEC}"),
            None => format!("max {CPU_PERIOD_USEC}"),
        }
    }

    /// The CPU quota per [`CPU_PERIOD_USEC`] in microseconds (None: no quota).
    pub fn cpu_quota_usec(&self) -> Option<u64> {
        // Rounded: 1.5 cores is exactly 150000; never below the kernel's 1 ms minimum.
        self.cpu
            .value
            .map(|c| ((c * CPU_PERIOD_USEC as f64).round() as u64).max(1000))
    }
}

/// The raw values of the job's request variables (job-controlled, not trusted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request<'a> {
    /// [`REQUEST_MEMORY`].
    pub memory: Option<&'a str>,
    /// [`REQUEST_PIDS`].
    pub pids: Option<&'a str>,
    /// [`REQUEST_CPU`].
    pub cpu: Option<&'a str>,
}

/// Resolve a job's limits; `Err` is a denial of the job's request, naming the variable and the
/// limit it exceeds.
pub fn resolve(
    host: &HostSize,
    base: &LimitsConfig,
    devstage: Option<(&str, &LimitsConfig)>,
    request: &Request<'_>,
) -> Result<Limits, String> {
    let mut memory = Limit {
        value: Some(host.jobs_memory()),
        key: format!(
            "default: RAM {} less {} for the host",
            format_size(Some(host.ram)),
            format_size(Some(memory_reserve(host.ram)))
        ),
    };
    let mut pids = Limit {
        value: Some(host.job_pids()),
        key: format!("default: min(4096, pid_max {} / 4)", host.pid_max),
    };
    let mut cpu = Limit {
        value: None,
        key: "default: no quota".into(),
    };
    let layers = [Some(("[limits]".to_string(), base))]
        .into_iter()
        .chain([devstage.map(|(name, l)| (format!("[devstages.{name}.limits]"), l))])
        .flatten();
    for (section, layer) in layers {
        if let Some(m) = layer.memory {
            memory = Limit {
                value: m.0,
                key: format!("{section} memory"),
            };
        }
        if let Some(p) = layer.pids {
            pids = Limit {
                value: (p > 0).then_some(p),
                key: format!("{section} pids"),
            };
        }
        if let Some(c) = layer.cpu {
            cpu = Limit {
                value: (c > 0.0).then_some(c),
                key: format!("{section} cpu"),
            };
        }
    }
    if let Some(text) = request.memory {
        let asked = parse_size(text).map_err(|e| format!("{REQUEST_MEMORY}: {e}"))?;
        memory = lower(memory, asked, REQUEST_MEMORY, text, |v| {
            format_size(Some(*v))
        })?;
    }
    if let Some(text) = request.pids {
        let asked: u32 = text.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!("{REQUEST_PIDS} = {text:?} is not a number of processes (at least 1)")
        })?;
        pids = lower(pids, Some(asked), REQUEST_PIDS, text, u32::to_string)?;
    }
    if let Some(text) = request.cpu {
        let asked: f64 = text
            .trim()
            .parse()
            .ok()
            .filter(|c: &f64| c.is_finite() && *c >= 0.01)
            .ok_or_else(|| {
                format!("{REQUEST_CPU} = {text:?} is not a number of cores (at least 0.01)")
            })?;
        cpu = lower(cpu, Some(asked), REQUEST_CPU, text, f64::to_string)?;
    }
    Ok(Limits { memory, pids, cpu })
}

/// The job's request in place of `policy` when it is not above it (a request for no limit,
/// `max`, is above every limit).
fn lower<T: PartialOrd + Copy>(
    policy: Limit<T>,
    asked: Option<T>,
    variable: &str,
    text: &str,
    show: impl Fn(&T) -> String,
) -> Result<Limit<T>, String> {
    let allowed = match (asked, policy.value) {
        (_, None) => true,
        (Some(a), Some(p)) => a <= p,
        (None, Some(_)) => false,
    };
    if !allowed {
        return Err(format!(
            "{variable} = {text:?} is above this runner's limit of {} ({}): a job may only lower its limits",
            policy.value.as_ref().map_or("max".into(), &show),
            policy.key
        ));
    }
    Ok(Limit {
        value: asked,
        key: variable.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostSize = HostSize {
        ram: 16 << 30,
        pid_max: 32768,
    };

    fn layer(memory: Option<&str>, pids: Option<u32>, cpu: Option<f64>) -> LimitsConfig {
        LimitsConfig {
            memory: memory.map(|m| MemorySize(parse_size(m).unwrap())),
            pids,
            cpu,
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        let cases: [(&str, Result<Option<u64>, ()>); 9] = [
            ("64m", Ok(Some(64 << 20))),
            ("4G", Ok(Some(4 << 30))),
            ("1048576", Ok(Some(1 << 20))),
            ("max", Ok(None)),
            ("2t", Ok(Some(2 << 40))),
            ("1k", Err(())),
            ("12x", Err(())),
            ("-5m", Err(())),
            ("99999999999999999g", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).map_err(drop), want, "{text}");
        }
        assert_eq!(format_size(Some(64 << 20)), "64 MiB");
        assert_eq!(format_size(Some(3 << 29)), "1.5 GiB");
        assert_eq!(format_size(None), "max");
    }

    #[test]
    fn defaults_follow_the_host_size() {
        // 16 GiB: a tenth (1.6 GiB) reserved; 1 GiB: 512 MiB; 256 GiB: capped at 4 GiB.
        assert_eq!(memory_reserve(16 << 30), (16u64 << 30) / 10);
        assert_eq!(memory_reserve(1 << 30), 512 << 20);
        assert_eq!(memory_reserve(256 << 30), 4 << 30);
        assert_eq!(memory_reserve(512 << 20), 256 << 20);
        assert_eq!(HOST.job_pids(), 4096);
        assert_eq!(
            HostSize {
                ram: 1 << 30,
                pid_max: 4096
            }
            .job_pids(),
            1024
        );
        assert_eq!(HOST.jobs_pids(), 32768 - 4096);
    }

    #[test]
    fn resolution_table() {
        let base = layer(Some("4g"), None, Some(2.0));
        let stage = layer(Some("64m"), Some(64), None);
        let none = Request::default();
        type Want = (
            Option<u64>,
            &'static str,
            Option<u32>,
            &'static str,
            Option<f64>,
        );
        // (name, [limits], the granted devstage's layer, the job's request, the outcome)
        type Case<'a> = (
            &'a str,
            LimitsConfig,
            Option<(&'a str, &'a LimitsConfig)>,
            Request<'a>,
            Result<Want, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "defaults only",
                LimitsConfig::default(),
                None,
                none.clone(),
                Ok((
                    Some(HOST.jobs_memory()),
                    "default",
                    Some(4096),
                    "default",
                    None,
                )),
            ),
            (
                "[limits] replaces the defaults it sets",
                base.clone(),
                None,
                none.clone(),
                Ok((
                    Some(4 << 30),
                    "[limits] memory",
                    Some(4096),
                    "default",
                    Some(2.0),
                )),
            ),
            (
                "the granted devstage replaces [limits]",
                base.clone(),
                Some(("client_dev", &stage)),
                none.clone(),
                Ok((
                    Some(64 << 20),
                    "[devstages.client_dev.limits] memory",
                    Some(64),
                    "[devstages.client_dev.limits] pids",
                    Some(2.0),
                )),
            ),
            (
                "a request lowers",
                base.clone(),
                None,
                Request {
                    memory: Some("1g"),
                    pids: Some("100"),
                    cpu: Some("0.5"),
                },
                Ok((
                    Some(1 << 30),
                    "P3_LIMIT_MEMORY",
                    Some(100),
                    "P3_LIMIT_PIDS",
                    Some(0.5),
                )),
            ),
            (
                "a request equal to the policy is taken",
                base.clone(),
                None,
                Request {
                    memory: Some("4g"),
                    ..Request::default()
                },
                Ok((
                    Some(4 << 30),
                    "P3_LIMIT_MEMORY",
                    Some(4096),
                    "default",
                    Some(2.0),
                )),
            ),
            (
                "a request under no limit is taken",
                layer(Some("max"), Some(0), None),
                None,
                Request {
                    memory: Some("8g"),
                    pids: Some("10"),
                    ..Request::default()
                },
                Ok((
                    Some(8 << 30),
                    "P3_LIMIT_MEMORY",
                    Some(10),
                    "P3_LIMIT_PIDS",
                    None,
                )),
            ),
            (
                "0 pids and max memory lift the limit",
                layer(Some("max"), Some(0), Some(0.0)),
                None,
                none.clone(),
                Ok((None, "[limits] memory", None, "[limits] pids", None)),
            ),
            (
                "a request cannot raise memory",
                base.clone(),
                Some(("client_dev", &stage)),
                Request {
                    memory: Some("128m"),
                    ..Request::default()
                },
                Err(
                    "P3_LIMIT_MEMORY = \"128m\" is above this runner's limit of 64 MiB ([devstages.client_dev.limits] memory)",
                ),
            ),
            (
                "a request cannot lift a limit",
                base.clone(),
                None,
                Request {
                    memory: Some("max"),
                    ..Request::default()
                },
                Err(
                    "P3_LIMIT_MEMORY = \"max\" is above this runner's limit of 4 GiB ([limits] memory)",
                ),
            ),
            (
                "a request cannot raise pids",
                base.clone(),
                None,
                Request {
                    pids: Some("5000"),
                    ..Request::default()
                },
                Err("P3_LIMIT_PIDS = \"5000\" is above this runner's limit of 4096 (default"),
            ),
            (
                "a request cannot raise cpu",
                base.clone(),
                None,
                Request {
                    cpu: Some("3"),
                    ..Request::default()
                },
                Err("P3_LIMIT_CPU = \"3\" is above this runner's limit of 2 ([limits] cpu)"),
            ),
            (
                "garbage is refused",
                base.clone(),
                None,
                Request {
                    pids: Some("-1"),
                    ..Request::default()
                },
                Err("P3_LIMIT_PIDS = \"-1\" is not a number"),
            ),
            (
                "a zero cpu request is refused (it would lift the quota)",
                base.clone(),
                None,
                Request {
                    cpu: Some("0"),
                    ..Request::default()
                },
                Err("P3_LIMIT_CPU = \"0\" is not a number of cores"),
            ),
        ];
        for (name, base, stage, request, want) in cases {
            let got = resolve(&HOST, &base, stage, &request);
            match (got, want) {
                (Ok(l), Ok((mem, mem_key, pids, pids_key, cpu))) => {
                    assert_eq!(l.memory.value, mem, "{name}");
                    assert!(
                        l.memory.key.starts_with(mem_key),
                        "{name}: {}",
                        l.memory.key
                    );
                    assert_eq!(l.pids.value, pids, "{name}");
                    assert!(l.pids.key.starts_with(pids_key), "{name}: {}", l.pids.key);
                    assert_eq!(l.cpu.value, cpu, "{name}");
                }
                (Err(e), Err(want)) => assert!(e.starts_with(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cpu_max_lines() {
        let mut l = resolve(
            &HOST,
            &layer(None, None, Some(1.5)),
            None,
            &Request::default(),
        )
        .unwrap();
        assert_eq!(l.cpu_max(), "150000 100000");
        l.cpu.value = Some(0.001);
        assert_eq!(l.cpu_max(), "1000 100000");
        l.cpu.value = None;
        assert_eq!(l.cpu_max(), "max 100000");
    }

    #[test]
    fn config_layers_parse_strictly() {
        let l: HostLimitsConfig =
            toml::from_str("memory = \"4g\"\npids = 64\ncpu = 1.5\ncgroup_parent = \"/x\"")
                .unwrap();
        assert_eq!(l.memory, Some(MemorySize(Some(4 << 30))));
        assert!(l.problems().is_empty());
        assert!(toml::from_str::<LimitsConfig>("memroy = \"4g\"").is_err());
        assert!(toml::from_str::<LimitsConfig>("memory = \"4x\"").is_err());
        assert!(toml::from_str::<LimitsConfig>("cgroup_parent = \"/x\"").is_err());
        let bad: HostLimitsConfig =
            toml::from_str("cpu = -1.0\ncgroup_parent = \"x/../y\"").unwrap();
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
    }
}
