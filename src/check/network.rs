//! The network wall: nft works, the table is in place, and every job uid is mapped to exactly
//! its job's policy (none unmapped, none stale).

use super::finding::{Finding, Severity, finding};
use crate::config::Config;
use crate::walls::network::{self, Probe};

/// nft, the table, the elements; and what plain jobs get.
pub(super) fn network_findings(cfg: &Config, out: &mut Vec<Finding>) {
    let table = &cfg.network.table;
    let enforced = network::enforced(cfg);
    match network::probe(cfg) {
        Probe::NoNft if enforced => out.push(finding(
            Severity::Error,
            format!(
                "network: {:?} (nftables) is not installed, but [network] promises rules (deny or allowlist): every job will fail in prepare",
                cfg.network.nft
            ),
            "apt-get install nftables (the Debian package depends on it), or set [network] nft to its path",
        )),
        Probe::NoNft => out.push(finding(
            Severity::Warning,
            format!(
                "network: {:?} (nftables) is not installed: jobs run with no network policy ([network] mode = \"open\", deny = []), so they reach everything the host can, including a cloud metadata service",
                cfg.network.nft
            ),
            "apt-get install nftables and keep the default [network] deny (the metadata and credential endpoints)",
        )),
        Probe::Broken(why) => out.push(finding(
            Severity::Error,
            format!("network: nft does not work here: {why}"),
            "the kernel needs nf_tables (modprobe nf_tables) and the executor CAP_NET_ADMIN (run it as root)",
        )),
        Probe::NoTable => out.push(finding(
            if enforced { Severity::Warning } else { Severity::Info },
            format!("network: table inet {table} does not exist yet (the first prepare makes it)"),
            "p3-executor check --fix makes it now (the package's postinst does too)",
        )),
        Probe::Incomplete => out.push(finding(
            Severity::Error,
            format!(
                "network: table inet {table} lacks its job_uids map or output chain (edited by hand?)"
            ),
            "p3-executor check --fix restores them (job elements are kept)",
        )),
        Probe::Earlier => out.push(finding(
            Severity::Warning,
            format!(
                "network: table inet {table} was made by an earlier version: it lacks the job_tags map and job_peers set that keep jobs' loopback listeners apart (the next prepare adds them)"
            ),
            "p3-executor check --fix adds them now (job elements are kept)",
        )),
        Probe::Ready {
            mapped,
            stale,
            unmapped,
        } => {
            let plain = network::policy_for(cfg, None);
            out.push(finding(
                Severity::Info,
                format!(
                    "network: table inet {table} in place, {mapped} job uid{} mapped; a job without a devstage: {}, {} rule{} (sha256 {})",
                    if mapped == 1 { "" } else { "s" },
                    plain.mode.as_str(),
                    plain.rules.len(),
                    if plain.rules.len() == 1 { "" } else { "s" },
                    &plain.sha256()[..12],
                ),
                "nothing to do",
            ));
            if !stale.is_empty() {
                out.push(finding(
                    Severity::Warning,
                    format!(
                        "network: stale rules of uids no job holds in table inet {table}: {}",
                        stale.join(", ")
                    ),
                    "p3-executor gc (or check --fix) removes them; a reused uid's chain is replaced at prepare either way",
                ));
            }
            if !unmapped.is_empty() {
                out.push(finding(
                    Severity::Error,
                    format!(
                        "network: job uids with a policy in their state but no element in table inet {table} (their jobs can reach nothing): {}",
                        unmapped.join(", ")
                    ),
                    "something removed them by hand; retry the jobs (prepare adds them again)",
                ));
            }
            if cfg.network.loopback_apart {
                let (count, max) = network::conntrack_fill();
                out.push(conntrack_finding(count, max));
            }
        }
    }
}

/// How full the kernel's connection tracking table is: `[network] loopback_apart` loads it
/// for the whole host, and a full table drops new connections host-wide. Pure.
fn conntrack_finding(count: Option<u64>, max: Option<u64>) -> Finding {
    match (count, max) {
        (Some(n), Some(m)) if n.saturating_mul(5) >= m.saturating_mul(4) => finding(
            Severity::Warning,
            format!(
                "network: the kernel's connection tracking table, which [network] loopback_apart uses, holds {n} of {m} entries: when it is full, new connections are dropped host-wide"
            ),
            format!(
                "raise it (sysctl -w net.netfilter.nf_conntrack_max={}, and the same in /etc/sysctl.d/), or set [network] loopback_apart = false",
                m.saturating_mul(2).max(65_536)
            ),
        ),
        (Some(n), Some(m)) => finding(
            Severity::Info,
            format!(
                "network: jobs' loopback listeners kept apart; connection tracking holds {n} of {m} entries"
            ),
            "nothing to do",
        ),
        _ => finding(
            Severity::Warning,
            "network: [network] loopback_apart is on, but the kernel's connection tracking is not loaded: jobs' loopback listeners are not kept apart yet".to_string(),
            "p3-executor check --fix applies the table's rules, which load it (modprobe nf_conntrack if that fails)",
        ),
    }
}

/// `check --fix`: make the table (or restore its base) and remove stale rules.
pub fn fix(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if !crate::walls::network::nft::Nft::new(&cfg.network.nft).installed() {
        return out;
    }
    match network::ensure_table(cfg).and_then(|()| network::sweep(cfg)) {
        Ok(removed) => out.push(finding(
            Severity::Info,
            format!(
                "network: fixed: table inet {} in place{}",
                cfg.network.table,
                if removed.is_empty() {
                    String::new()
                } else {
                    format!("; removed {}", removed.join(", "))
                }
            ),
            "nothing to do",
        )),
        Err(e) => out.push(finding(
            Severity::Error,
            format!("network: check --fix could not make the table: {e}"),
            "see the message; nft must work as root",
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nearly_full_conntrack_table_warns_with_a_larger_max() {
        let cases = [
            (Some(10), Some(262_144), Severity::Info, "10 of 262144"),
            (
                Some(209_716),
                Some(262_144),
                Severity::Warning,
                "nf_conntrack_max=524288",
            ),
            (
                Some(262_144),
                Some(262_144),
                Severity::Warning,
                "dropped host-wide",
            ),
            (
                Some(900),
                Some(1_000),
                Severity::Warning,
                "nf_conntrack_max=65536",
            ),
            (None, None, Severity::Warning, "not loaded"),
            (Some(1), None, Severity::Warning, "not loaded"),
        ];
        for (count, max, severity, says) in cases {
            let f = conntrack_finding(count, max);
            assert_eq!(f.severity, severity, "{count:?}/{max:?}");
            let text = format!("{} {}", f.problem, f.fix);
            assert!(text.contains(says), "{says} not in {text}");
        }
    }
}
