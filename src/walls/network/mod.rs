//! The network wall: what a job's sockets may reach, per devstage, enforced by nftables on the
//! job's private uid (`meta skuid`), so every process of the job (and of its containers: their
//! subordinate range) is covered without a network namespace of its own.
//!
//! - prepare ([`prepare`]): the job's [`policy::Policy`] (its devstage's or `[network.plain]`'s
//!   rules after `[network] deny`), names resolved and pinned ([`policy::pin`]), then one
//!   transaction adds the uid's chain and map elements ([`render::add_job`]); the table is
//!   made on first use ([`ensure_table`]);
//! - run: nothing to enter; the rules follow the socket's owner, which the uid switch decides;
//! - cleanup and gc ([`release`]): one transaction removes them, before the uid goes back to
//!   the pool; `gc` also removes the elements of uids no job holds ([`sweep`]);
//! - `check` ([`findings`]): nft works, the table is in place, no job uid unmapped or stale.
//!
//! Pure parts are apart from the I/O: [`target`] (config entries), [`config`] (`[network]`),
//! [`policy`] (rules in order, pinning, hash), [`render`] (the nft JSON); [`nft`] applies it
//! (libnftables in-process, or the `nft` program).

pub mod config;
pub(crate) mod error;
pub(crate) mod libnftables;
pub mod nft;
pub mod policy;
pub mod render;
pub(crate) mod state;
pub mod target;

pub use error::NetworkError;
pub use state::JobNetwork;

use std::collections::BTreeSet;
use std::net::{IpAddr, ToSocketAddrs};

use nix::fcntl::{Flock, FlockArg};

use crate::config::Config;
use crate::workspace::JobState;
use nft::Nft;
use policy::{Always, Policy};
use render::JobKey;

/// Does any job of this config get a rule (else a host without nftables may run jobs)?
pub fn enforced(cfg: &Config) -> bool {
    cfg.network
        .enforces(cfg.devstages.values().map(|d| d.network.as_ref()))
}

/// What allowlist mode always lets through on this host: the resolvers (`[network] resolvers`
/// or `/etc/resolv.conf`) and the GitLab instance of `identity.gitlab_url`.
pub fn always(cfg: &Config) -> Always {
    let resolvers = match &cfg.network.resolvers {
        Some(r) => r.clone(),
        None => std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| policy::resolvers_from_resolv_conf(&t))
            .unwrap_or_default(),
    };
    Always {
        resolvers,
        gitlab: policy::gitlab_target(&cfg.identity.gitlab_url),
    }
}

/// The policy of a job granted `devstage` (None: a plain job), with this host's resolvers.
pub fn policy_for(cfg: &Config, devstage: Option<&str>) -> Policy {
    let stage = devstage.map(|d| (d, cfg.devstages.get(d).and_then(|s| s.network.as_ref())));
    policy::for_job(&cfg.network, stage, &always(cfg))
}

/// The addresses of a host name (getaddrinfo, as the job's own lookups would).
fn lookup(name: &str) -> Result<Vec<IpAddr>, String> {
    (name, 0)
        .to_socket_addrs()
        .map(|a| a.map(|s| s.ip()).collect())
        .map_err(|e| e.to_string())
}

/// Serialises the changes that decide from the leases (gc's sweep) with prepare's adds, so a
/// sweep never takes a just-added job's element for a stale one.
/// None when there is no state root yet: then no job holds a lease to race with.
fn lock(cfg: &Config) -> Result<Option<Flock<std::fs::File>>, NetworkError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| NetworkError::Io { what, source }
    };
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cfg.state_root.join("network.lock"))
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        opened => opened.map_err(io("open the network lock"))?,
    };
    // Released when it drops.
    let file = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock the network lock")(e.into()))?;
    Ok(Some(file))
}

/// The uid ranges the output chain hands to the job chains: private uids and, for container
/// jobs, subordinate ids.
fn job_ranges(cfg: &Config) -> Vec<[u32; 2]> {
    let mut ranges: Vec<[u32; 2]> = cfg.private_uid_range().into_iter().collect();
    ranges.push(crate::subid_pool::configured(cfg));
    ranges
}

/// Make the table, or bring its base in line with the config; every job's chain and element
/// stays. Idempotent; run on first use, by `check --fix` and by the package's postinst.
pub fn ensure_table(cfg: &Config) -> Result<(), NetworkError> {
    let tx = render::base(&cfg.network.table, &job_ranges(cfg), cfg.network.log);
    Nft::new(&cfg.network.nft).apply(&tx, "create the table")
}

/// prepare: apply the job's policy. Returns warnings for the job log (an allowed name that did
/// not resolve). Fails (a system failure) when the policy cannot be applied.
pub fn prepare(cfg: &Config, state: &mut JobState) -> Result<Vec<String>, NetworkError> {
    if !state.ids.switch_user {
        // Not root: no uid of our own to hang rules on (and no isolation at all).
        return Ok(Vec::new());
    }
    let nft = Nft::new(&cfg.network.nft);
    if !nft.installed() {
        return if enforced(cfg) {
            Err(NetworkError::NftMissing {
                program: cfg.network.nft.clone(),
            })
        } else {
            Ok(Vec::new())
        };
    }
    if !state.ids.private_uid {
        return if enforced(cfg) {
            Err(NetworkError::SharedUid)
        } else {
            Ok(Vec::new())
        };
    }
    let devstage = state.grant.as_ref().map(|g| g.devstage.clone());
    let policy = policy_for(cfg, devstage.as_deref());
    let (rules, warnings) = policy::pin(&policy, lookup).map_err(NetworkError::Resolve)?;
    let key = JobKey {
        uid: state.ids.uid,
        subids: crate::subid_pool::leased(cfg, state.job_id).map(|r| [r.first, r.last()]),
    };
    let table = cfg.network.table.clone();
    let mut tx = render::add_job(
        &table,
        state.job_id,
        &key,
        policy.mode,
        &rules,
        cfg.network.log,
    );
    if let Some(cmds) = tx["nftables"].as_array_mut() {
        cmds.insert(0, render::ranges_element(&table, &job_ranges(cfg)));
    }
    state.network = Some(JobNetwork {
        table: table.clone(),
        key,
        policy: policy.name.clone(),
        sha256: policy.sha256(),
        mode: policy.mode,
        rules,
    });
    let _lock = lock(cfg)?;
    if nft.apply(&tx, "add the job's rules").is_err() {
        // First use (no table yet), or a table an operator removed: make it, then once more.
        ensure_table(cfg)?;
        nft.apply(&tx, "add the job's rules")?;
    }
    Ok(warnings)
}

/// cleanup and gc: remove the job's chain and elements. `state` is the job's (None when
/// prepare never saved one: the uid comes from its lease). Idempotent.
pub fn release(cfg: &Config, job_id: u64, state: Option<&JobState>) -> Result<(), NetworkError> {
    let nft = Nft::new(&cfg.network.nft);
    let (table, key) = match state {
        Some(JobState {
            network: Some(n), ..
        }) => (n.table.clone(), n.key),
        Some(s) if s.ids.private_uid => (
            cfg.network.table.clone(),
            JobKey {
                uid: s.ids.uid,
                subids: None,
            },
        ),
        Some(_) => return Ok(()),
        None => match crate::uid_pool::leased_uid(cfg, job_id) {
            Some(uid) => (cfg.network.table.clone(), JobKey { uid, subids: None }),
            None => return Ok(()),
        },
    };
    if !nft.installed() {
        return Ok(());
    }
    match nft.remove_job(&table, &key) {
        Ok(()) => Ok(()),
        // No table (never made on this host, or purged): nothing to remove.
        Err(e) => match nft.list(&table) {
            Ok(None) => Ok(()),
            _ => Err(e),
        },
    }
}

/// What gc and check see in the table: elements and chains of uids no job holds.
#[derive(Debug, Default)]
pub struct Stale {
    /// Map keys (as nft writes them) to remove.
    pub keys: Vec<serde_json::Value>,
    /// Job chains to remove (no live element jumps to them).
    pub chains: Vec<u32>,
}

/// The stale part of `listing` given the leases: an element is stale when its uid is not
/// leased, or (a range) is not the subordinate range of the job holding the uid. Pure.
pub fn stale(
    listing: &nft::Listing,
    leased: &dyn Fn(u32) -> bool,
    subids_of: &dyn Fn(u32) -> Option<[u32; 2]>,
) -> Stale {
    let mut out = Stale::default();
    let mut live = BTreeSet::new();
    for (key, uid) in &listing.elements {
        let fresh = leased(*uid)
            && match nft::Listing::key_uid(key) {
                Some(k) => k == *uid,
                None => {
                    let range = key["range"]
                        .as_array()
                        .map(|r| r.iter().filter_map(|v| v.as_u64()).collect::<Vec<_>>());
                    let want = subids_of(*uid).map(|[a, b]| vec![u64::from(a), u64::from(b)]);
                    range.is_some() && range == want
                }
            };
        if fresh {
            live.insert(*uid);
        } else {
            out.keys.push(key.clone());
        }
    }
    out.chains = listing
        .chains
        .iter()
        .copied()
        .filter(|uid| !live.contains(uid) && !leased(*uid))
        .collect();
    out
}

fn stale_now(cfg: &Config, listing: &nft::Listing) -> Stale {
    // Only this config's uids: another executor sharing the table keeps its jobs' rules.
    let ranges = job_ranges(cfg);
    let mine = |uid: u32| ranges.iter().any(|[a, b]| (*a..=*b).contains(&uid));
    let listing = &nft::Listing {
        elements: listing
            .elements
            .iter()
            .filter(|(_, uid)| mine(*uid))
            .cloned()
            .collect(),
        chains: listing
            .chains
            .iter()
            .copied()
            .filter(|u| mine(*u))
            .collect(),
        ..listing.clone()
    };
    let leases = crate::uid_pool::leases(cfg);
    let job_of = |uid: u32| leases.iter().find(|(u, _)| *u == uid).map(|(_, j)| *j);
    stale(listing, &|uid| job_of(uid).is_some(), &|uid| {
        job_of(uid)
            .and_then(|job| crate::subid_pool::leased(cfg, job))
            .map(|r| [r.first, r.last()])
    })
}

/// gc: remove the elements and chains of uids no job holds (a job killed before its cleanup
/// whose teardown could not reach nft, or a crash between lease release and removal). Returns
/// what it removed, for the log.
pub fn sweep(cfg: &Config) -> Result<Vec<String>, NetworkError> {
    let nft = Nft::new(&cfg.network.nft);
    if !nft.installed() {
        return Ok(Vec::new());
    }
    let _lock = lock(cfg)?;
    // The table first, then the leases: an element listed was added after its uid's lease.
    let Some(listing) = nft.list(&cfg.network.table)? else {
        return Ok(Vec::new());
    };
    let stale = stale_now(cfg, &listing);
    if stale.keys.is_empty() && stale.chains.is_empty() {
        return Ok(Vec::new());
    }
    let chains: Vec<String> = stale
        .chains
        .iter()
        .map(|u| render::chain_name(*u))
        .collect();
    nft.apply(
        &render::remove_stale(&cfg.network.table, &stale.keys, &chains),
        "remove stale job rules",
    )?;
    Ok(stale
        .keys
        .iter()
        .map(|k| format!("element {k}"))
        .chain(chains.into_iter().map(|c| format!("chain {c}")))
        .collect())
}

/// What `check` reports about the network wall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// nft is not installed.
    NoNft,
    /// nft failed (e.g. no nf_tables in the kernel, no CAP_NET_ADMIN).
    Broken(String),
    /// The table does not exist (yet).
    NoTable,
    /// The table lacks its map or its output chain.
    Incomplete,
    /// The table is in place.
    Ready {
        /// Jobs mapped.
        mapped: usize,
        /// Stale elements and chains (uids no job holds), as `uid N`.
        stale: Vec<String>,
        /// Leased uids whose job applied a policy but have no element.
        unmapped: Vec<String>,
    },
}

/// Probe nft and the table for `check`.
pub fn probe(cfg: &Config) -> Probe {
    let nft = Nft::new(&cfg.network.nft);
    if !nft.installed() {
        return Probe::NoNft;
    }
    let listing = match nft.list(&cfg.network.table) {
        Err(e) => return Probe::Broken(e.to_string()),
        Ok(None) => return Probe::NoTable,
        Ok(Some(l)) => l,
    };
    if !listing.has_map || !listing.has_output {
        return Probe::Incomplete;
    }
    let stale_part = stale_now(cfg, &listing);
    let mut stale: Vec<String> = stale_part
        .keys
        .iter()
        .map(|k| format!("element {k}"))
        .collect();
    stale.extend(stale_part.chains.iter().map(|u| format!("chain uid_{u}")));
    let unmapped = crate::uid_pool::leases(cfg)
        .into_iter()
        .filter(|(uid, job)| {
            let paths = crate::workspace::JobPaths::new(cfg, *job);
            let applied = JobState::load(&paths).is_ok_and(|s| s.network.is_some());
            applied && !listing.mapped(*uid)
        })
        .map(|(uid, job)| format!("uid {uid} (job {job})"))
        .collect();
    Probe::Ready {
        mapped: listing
            .elements
            .iter()
            .filter(|(k, _)| nft::Listing::key_uid(k).is_some())
            .count(),
        stale,
        unmapped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stale_elements_are_those_of_unleased_uids_or_foreign_ranges() {
        let listing = nft::Listing {
            has_map: true,
            has_output: true,
            elements: vec![
                (json!(1), 1),
                (json!({"range": [100, 199]}), 1),
                (json!(2), 2),
                (json!({"range": [200, 299]}), 3),
                (json!(3), 3),
            ],
            chains: vec![1, 2, 3, 4],
        };
        // uid 1 and 3 are leased; 1's job holds range 100-199, 3's job none now.
        let leased = |u: u32| u == 1 || u == 3;
        let subids = |u: u32| (u == 1).then_some([100, 199]);
        let s = stale(&listing, &leased, &subids);
        assert_eq!(s.keys, [json!(2), json!({"range": [200, 299]})]);
        assert_eq!(s.chains, [2, 4]);
    }
}
