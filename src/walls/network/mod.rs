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
//! - `check` (`check/network.rs`): nft works, the table is in place, no job uid unmapped or stale.
//!
//! Pure parts are apart from the I/O: [`target`] (config entries), [`config`] (`[network]`),
//! [`policy`] (rules in order, pinning, hash), [`render`] (the nft JSON); [`nft`] applies it
//! (libnftables in-process, or the `nft` program).

pub mod config;
pub(crate) mod error;
pub(crate) mod libnftables;
mod netlink;
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
    let switches = render::Switches {
        log: cfg.network.log,
        loopback_apart: cfg.network.loopback_apart,
    };
    let tx = render::base(&cfg.network.table, &job_ranges(cfg), switches);
    Nft::new(&cfg.network.nft)
        .apply(&tx, "create the table")
        .map_err(|e| match e {
            // nft's own words ("No such file or directory") do not name what is missing.
            NetworkError::Nft { what, stderr }
                if switches.loopback_apart && conntrack_fill().1.is_none() =>
            {
                NetworkError::Nft {
                    what: format!(
                        "{what} (its rules that keep jobs apart on loopback need the kernel's connection tracking, which is not loaded: modprobe nf_conntrack, or set [network] loopback_apart = false)"
                    ),
                    stderr,
                }
            }
            e => e,
        })
}

/// The kernel's connection tracking table (this network namespace's): how many entries it
/// holds and how many it may; None when it is not loaded.
pub fn conntrack_fill() -> (Option<u64>, Option<u64>) {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    };
    (read("nf_conntrack_count"), read("nf_conntrack_max"))
}

/// prepare: apply the job's policy. Returns warnings for the job log (an allowed name that did
/// not resolve). Fails (a system failure) when the policy cannot be applied.
///
/// Fast path: the policy's chain is already in the table (another job had the same rules), so
/// only the job's elements are added, over netlink (`netlink.rs`). Otherwise, or when the
/// kernel refuses that batch, one transaction through nftables makes the chain too.
pub fn prepare(cfg: &Config, state: &mut JobState) -> Result<Vec<String>, NetworkError> {
    if !state.ids.switch_user {
        // Not root: no uid of our own to hang rules on (and no isolation at all).
        return Ok(Vec::new());
    }
    let nft = Nft::new(&cfg.network.nft);
    // The fast path needs neither the program nor the library, only the table.
    let fast = state.ids.private_uid && nft.netlink_allowed();
    if !fast {
        if let Some(skip) = unenforceable(cfg, &nft, state) {
            return skip;
        }
    }
    let devstage = state.grant.as_ref().map(|g| g.devstage.clone());
    let policy = policy_for(cfg, devstage.as_deref());
    let (rules, warnings) = policy::pin(&policy, lookup).map_err(NetworkError::Resolve)?;
    let key = JobKey {
        uid: state.ids.uid,
        subids: crate::subid_pool::leased(cfg, state.job_id).map(|r| [r.first, r.last()]),
    };
    let chain = render::PolicyChain::new(&policy.name, policy.mode, &rules, cfg.network.log);
    let _lock = lock(cfg)?;
    if !(fast && add_elements(cfg, &key, &chain.name)) {
        if fast {
            if let Some(skip) = unenforceable(cfg, &nft, state) {
                return skip;
            }
        }
        add_job(cfg, &nft, &key, &chain)?;
    }
    let chain = chain.name;
    let network = JobNetwork {
        table: cfg.network.table.clone(),
        key,
        policy: policy.name.clone(),
        sha256: policy.sha256(),
        mode: policy.mode,
        rules,
        chain: Some(chain),
    };
    state.network = Some(network);
    Ok(warnings)
}

/// Why no policy can be applied here, if none can: no nftables (an error only when a policy
/// has rules), or a job sharing the job user's uid.
fn unenforceable(
    cfg: &Config,
    nft: &Nft,
    state: &JobState,
) -> Option<Result<Vec<String>, NetworkError>> {
    if !nft.installed() {
        return Some(if enforced(cfg) {
            Err(NetworkError::NftMissing {
                program: cfg.network.nft.clone(),
            })
        } else {
            Ok(Vec::new())
        });
    }
    if !state.ids.private_uid {
        return Some(if enforced(cfg) {
            Err(NetworkError::SharedUid)
        } else {
            Ok(Vec::new())
        });
    }
    None
}

/// The fast path: the job's uid (and subordinate range) → its policy's chain, and the
/// executor's job ranges, in one netlink batch. False when the kernel refused it (no table or
/// chain yet, an element already there): nothing changed then.
fn add_elements(cfg: &Config, key: &JobKey, chain: &str) -> bool {
    let mut job = vec![[key.uid, key.uid]];
    job.extend(key.subids);
    let tag = render::tag_of(key);
    let adds = [
        netlink::Elements {
            set: render::RANGES,
            ranges: job_ranges(cfg),
            data: netlink::Data::None,
        },
        netlink::Elements {
            set: render::MAP,
            ranges: job.clone(),
            data: netlink::Data::Jump(chain),
        },
        netlink::Elements {
            set: render::TAGS,
            ranges: job.clone(),
            data: netlink::Data::Mark(tag),
        },
        netlink::Elements {
            set: render::PEERS,
            ranges: job,
            data: netlink::Data::Pair(tag),
        },
    ];
    netlink::add(&cfg.network.table, &adds)
        .inspect_err(|e| tracing::debug!("job elements over netlink: {e}; through nftables"))
        .is_ok()
}

/// The slow path: the policy's chain and the job's elements in one nftables transaction. On
/// first use (no table yet, or one an operator removed) the table is made first; elements a
/// previous holder of the uid left (its cleanup never ran) are replaced.
fn add_job(
    cfg: &Config,
    nft: &Nft,
    key: &JobKey,
    chain: &render::PolicyChain<'_>,
) -> Result<(), NetworkError> {
    let table = &cfg.network.table;
    let tx =
        |replace: &render::Elements| render::add_job(table, &job_ranges(cfg), key, chain, replace);
    if nft
        .apply(&tx(&render::Elements::default()), "add the job's rules")
        .is_ok()
    {
        return Ok(());
    }
    ensure_table(cfg)?;
    let replace = match nft.list(table)? {
        Some(listing) => listing.elements_of(key.uid, key.subids),
        None => render::Elements::default(),
    };
    nft.apply(&tx(&replace), "add the job's rules")
}

/// cleanup and gc: remove the job's map elements (and its own chain, made by an executor
/// before policy chains). `state` is the job's (None when prepare never saved one: the uid
/// comes from its lease). Idempotent.
pub fn release(cfg: &Config, job_id: u64, state: Option<&JobState>) -> Result<(), NetworkError> {
    let nft = Nft::new(&cfg.network.nft);
    let (table, key, chain) = match state {
        Some(JobState {
            network: Some(n), ..
        }) => (
            n.table.clone(),
            n.key,
            Some(
                n.chain
                    .clone()
                    .unwrap_or_else(|| render::chain_name(n.key.uid)),
            ),
        ),
        Some(s) if s.ids.private_uid => (
            cfg.network.table.clone(),
            JobKey {
                uid: s.ids.uid,
                subids: None,
            },
            None,
        ),
        Some(_) => return Ok(()),
        None => match crate::uid_pool::leased_uid(cfg, job_id) {
            Some(uid) => (
                cfg.network.table.clone(),
                JobKey { uid, subids: None },
                None,
            ),
            None => return Ok(()),
        },
    };
    if !nft.installed() {
        return Ok(());
    }
    if let Some(chain) = &chain {
        if nft.remove_job(&table, &key, chain).is_ok() {
            return Ok(());
        }
    }
    // Not known or not as recorded: remove what the table holds for the job's keys.
    let Some(listing) = nft.list(&table)? else {
        // No table (never made on this host, or purged): nothing to remove.
        return Ok(());
    };
    let elements = listing.elements_of(key.uid, key.subids);
    let own = render::chain_name(key.uid);
    let chains: Vec<String> = listing
        .chains
        .iter()
        .filter(|c| **c == own)
        .cloned()
        .collect();
    if elements.is_empty() && chains.is_empty() {
        return Ok(());
    }
    nft.apply(
        &render::remove_stale(&table, &elements, &chains),
        "remove the job's rules",
    )
}

/// What gc and check see in the table: elements of uids no job holds, and chains no element
/// jumps to.
#[derive(Debug, Default)]
pub struct Stale {
    /// Elements (as nft writes them) to remove: map keys, and the tag-map keys and peer pairs
    /// of the same uids and ranges.
    pub elements: render::Elements,
    /// Chains to remove: policy chains no element jumps to once the stale keys are gone, and
    /// job chains of executors before policy chains whose uid no job holds.
    pub chains: Vec<String>,
}

/// Whose elements and chains a [`stale`] may remove, and which are live.
pub struct Holders<'a> {
    /// Is the uid in this executor's job ranges (another executor sharing the table keeps
    /// its own)?
    pub mine: &'a dyn Fn(u32) -> bool,
    /// Is the uid leased to a job?
    pub leased: &'a dyn Fn(u32) -> bool,
    /// Is the range the subordinate range of a job whose uid is leased?
    pub range_held: &'a dyn Fn([u32; 2]) -> bool,
}

/// The stale part of `listing`: an element of ours is stale when its uid is not leased, or
/// (a range) is not a live job's subordinate range. Pure.
pub fn stale(listing: &nft::Listing, h: &Holders<'_>) -> Stale {
    let mut out = Stale::default();
    // Chains some element still jumps to, whoever's (policy chains are shared).
    let mut live = BTreeSet::new();
    let ours = |key: &serde_json::Value| {
        let first = nft::Listing::key_uid(key).or(nft::Listing::key_range(key).map(|[a, _]| a));
        first.is_some_and(|u| (h.mine)(u))
    };
    // A key is live when it is not ours, or its uid is leased, or its range a live job's.
    let held = |key: &serde_json::Value| {
        !ours(key)
            || match (nft::Listing::key_uid(key), nft::Listing::key_range(key)) {
                (Some(u), _) => (h.leased)(u),
                (None, Some(r)) => (h.range_held)(r),
                (None, None) => true,
            }
    };
    let mut map = Vec::new();
    for (key, target) in &listing.elements {
        // A job chain of an executor before policy chains is its own uid's.
        let own_chain = nft::Listing::key_uid(key)
            .is_none_or(|u| render::chain_uid(target).is_none_or(|owner| owner == u));
        if held(key) && (own_chain || !ours(key)) {
            live.insert(target.as_str());
        } else {
            map.push(key.clone());
        }
    }
    out.elements = listing.elements_where(map, |k| !held(k));
    out.chains = listing
        .chains
        .iter()
        .filter(|c| !live.contains(c.as_str()))
        .filter(|c| match render::chain_uid(c) {
            Some(uid) => (h.mine)(uid) && !(h.leased)(uid),
            None => c.starts_with(render::POLICY_PREFIX),
        })
        .cloned()
        .collect();
    out
}

fn stale_now(cfg: &Config, listing: &nft::Listing) -> Stale {
    let ranges = job_ranges(cfg);
    let mine = |uid: u32| ranges.iter().any(|[a, b]| (*a..=*b).contains(&uid));
    let leases = crate::uid_pool::leases(cfg);
    let held: Vec<[u32; 2]> = leases
        .iter()
        .filter_map(|(_, job)| crate::subid_pool::leased(cfg, *job))
        .map(|r| [r.first, r.last()])
        .collect();
    stale(
        listing,
        &Holders {
            mine: &mine,
            leased: &|uid| leases.iter().any(|(u, _)| *u == uid),
            range_held: &|r| held.contains(&r),
        },
    )
}

/// gc: remove the elements of uids no job holds (a job killed before its cleanup whose
/// teardown could not reach nft, or a crash between lease release and removal) and the chains
/// no element jumps to. Returns what it removed, for the log.
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
    if stale.elements.is_empty() && stale.chains.is_empty() {
        return Ok(Vec::new());
    }
    nft.apply(
        &render::remove_stale(&cfg.network.table, &stale.elements, &stale.chains),
        "remove stale job rules",
    )?;
    let e = &stale.elements;
    Ok(e.map
        .iter()
        .map(|k| format!("element {k}"))
        .chain(e.tags.iter().map(|k| format!("tag {k}")))
        .chain(stale.chains.iter().map(|c| format!("chain {c}")))
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
    /// The table was made by an executor before jobs were kept apart on loopback: it lacks
    /// the tag map and the peer set (the next prepare adds them).
    Earlier,
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
    if !listing.has_apart {
        return Probe::Earlier;
    }
    let stale_part = stale_now(cfg, &listing);
    let mut stale: Vec<String> = stale_part
        .elements
        .map
        .iter()
        .map(|k| format!("element {k}"))
        .collect();
    stale.extend(stale_part.elements.tags.iter().map(|k| format!("tag {k}")));
    stale.extend(stale_part.chains.iter().map(|c| format!("chain {c}")));
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
        let e = |k: serde_json::Value, c: &str| (k, c.to_string());
        let listing = nft::Listing {
            has_map: true,
            has_output: true,
            has_apart: true,
            crossed: None,
            // Tags follow the map's keys: 2 and its range are stale, and so are their peers.
            tags: vec![
                (json!(1), 1),
                (json!({"range": [100, 199]}), 1),
                (json!(2), 2),
                (json!({"range": [200, 299]}), 2),
                (json!(9001), 9001),
            ],
            elements: vec![
                e(json!(1), "policy_a"),
                e(json!({"range": [100, 199]}), "policy_a"),
                e(json!(2), "policy_b"),
                e(json!({"range": [200, 299]}), "policy_b"),
                e(json!(3), "policy_c"),
                // Another executor's job (uid outside our ranges) keeps policy_d alive.
                e(json!(9001), "policy_d"),
                // A job chain of an executor before policy chains: its own uid's.
                e(json!(5), "uid_5"),
                e(json!(6), "uid_5"),
            ],
            chains: [
                "policy_a",
                "policy_b",
                "policy_c",
                "policy_d",
                "policy_e",
                "uid_4",
                "uid_5",
                "uid_6",
                "uid_9002",
                "operators_own",
            ]
            .map(String::from)
            .to_vec(),
        };
        // uids 1, 3, 5, 6 are leased; 1's job holds range 100-199.
        let s = stale(
            &listing,
            &Holders {
                mine: &|u| u < 9000,
                leased: &|u| [1, 3, 5, 6].contains(&u),
                range_held: &|r| r == [100, 199],
            },
        );
        assert_eq!(
            s.elements.map,
            [json!(2), json!({"range": [200, 299]}), json!(6)],
            "unleased, a range no job holds, and a leased uid jumping to another uid's chain"
        );
        assert_eq!(s.elements.tags, [json!(2), json!({"range": [200, 299]})]);
        assert_eq!(
            s.elements.peers,
            [
                json!({"concat": [{"range": [2, 2]}, 2]}),
                json!({"concat": [{"range": [200, 299]}, 2]})
            ]
        );
        // policy_b lost its elements, policy_e had none; uid_4 is no one's; uid_6 is leased
        // (its job may be preparing); foreign and unknown chains stay.
        assert_eq!(s.chains, ["policy_b", "policy_e", "uid_4"]);
    }
}
