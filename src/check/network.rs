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
        }
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
