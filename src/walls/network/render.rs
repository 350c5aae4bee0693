//! The nftables transactions, as `nft -j` JSON (libnftables-json(5)). Pure and table-tested;
//! [`super::nft`] sends them.
//!
//! The table (family `inet`, so IPv4 and IPv6 alike):
//!
//! ```text
//! table inet p3_executor {
//!     map job_uids { type uid : verdict; flags interval; }      # uid (or subid range) → jump policy_<digest>
//!     set job_ranges { type uid; flags interval; auto-merge; } # every config's job ranges, added
//!     map job_tags { type uid : mark; flags interval; }         # uid (or subid range) → its job's tag
//!     set job_peers { type uid . mark; flags interval; }        # uid (or subid range) . its job's tag
//!     chain output {
//!         type filter hook output priority filter; policy accept;
//!         oifname "lo" ct mark 0xffffffff tcp flags syn reject with tcp reset  # crossed: refused
//!         oifname "lo" ct mark 0xffffffff meta l4proto != tcp drop
//!         oifname "lo" ct state new meta skuid @job_ranges ct mark set meta skuid map @job_tags
//!         oifname "lo" ct direction reply meta skuid @job_tags
//!             meta skuid . ct mark != @job_peers ct mark set 0xffffffff drop   # another job's
//!         meta skuid @job_ranges goto jobs                              # a job's uid; the rest
//!     }                                                               # (no socket too) untouched
//!     chain jobs {
//!         meta skuid vmap @job_uids                                     # a job's: its policy's chain
//!         ... refuse                                                    # no job holds it: strictest
//!     }
//!     chain policy_3f9a…  { <a policy's rules in order>; <its mode's verdict> }
//! }
//! ```
//!
//! A policy's chain is named by a digest of its rules (and of [`RENDER_VERSION`]) and shared
//! by every job with those rules; a job adds (prepare) or removes (cleanup) only its map
//! elements, nothing else in the ruleset changes. The first job of a policy makes its chain in
//! the same transaction as its elements ([`add_job`], idempotent: the chain is flushed before
//! it is filled, with the same rules); later jobs add their elements alone. The removal adds what it deletes first (so
//! removing what is already gone is not an error); gc removes policy chains no element jumps
//! to. Executors before policy chains gave each job a chain of its own (`uid_<uid>`); their
//! jobs' cleanup removes it.
//!
//! **Jobs apart on loopback** ([`apart`]): jobs share the host's network namespace, so a port a
//! job listens on is the host's. A loopback connection a job's socket opens is marked (its
//! conntrack mark) with its job's tag, the job's private uid; a reply from a job's socket on
//! a connection not marked with its own job's tag (another job's, or the host's) marks the
//! connection crossed and is dropped, and the initiator's next SYN is answered with a reset:
//! `connect` fails with "Connection refused" after one retransmission (about a second). The
//! job's own connections (its uid and its subordinate range) pass. A UDP datagram still
//! reaches another job's socket once; its answer does not, nor anything after it. A job
//! without a tag (prepared before the executor kept jobs apart) is left as it was. The rules
//! need the kernel's connection tracking, which the table's `ct` expressions load.

use serde_json::{Value, json};
use sha2::Digest as _;

use super::config::Mode;
use super::policy::{Action, Pinned};
use super::target::{Net, Ports};

/// The verdict map from job uid (and subordinate range) to the job's chain.
pub const MAP: &str = "job_uids";
/// The base chain on the output hook.
pub const OUTPUT: &str = "output";
/// The regular chain a job uid's packets go to: its map lookup, then the strictest policy.
pub const JOBS: &str = "jobs";
/// The set of job uid ranges (every sharing executor's private and subordinate ranges).
pub const RANGES: &str = "job_ranges";
/// The map from a job's uid (and subordinate range) to its job's tag, the conntrack mark of
/// the loopback connections its sockets open.
pub const TAGS: &str = "job_tags";
/// The set of `uid . tag` pairs of every job: a reply from a job's socket on loopback passes
/// only on a connection marked with its own job's tag.
pub const PEERS: &str = "job_peers";
/// The conntrack mark of a loopback connection that crossed from one job (or the host) to
/// another job's socket: refused from then on. No job's tag (a uid is never 2^32 - 1).
pub const CROSSED: u32 = u32::MAX;
/// The comment of the rule that crosses a connection: its counter counts them (the metrics).
pub const CROSSING: &str = "jobs apart on loopback: a reply to another job or the host";
/// nft's limit on a comment and a log prefix (bytes, with the terminating NUL).
const TEXT_MAX: usize = 127;

/// Whose sockets a job's chain applies to: its private uid, and the subordinate range of a
/// container job (its processes' host uids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobKey {
    /// The job's private uid.
    pub uid: u32,
    /// `[first, last]` of its subordinate range, if it has one.
    pub subids: Option<[u32; 2]>,
}

/// The name of the chain of the job running as `uid`.
pub fn chain_name(uid: u32) -> String {
    format!("uid_{uid}")
}

/// The uid of a job chain's name (`uid_200001` → 200001).
pub fn chain_uid(name: &str) -> Option<u32> {
    name.strip_prefix("uid_")?.parse().ok()
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn cmd(verb: &str, kind: &str, body: Value) -> Value {
    json!({ verb: { kind: body } })
}

fn rule(table: &str, chain: &str, comment: Option<String>, expr: Vec<Value>) -> Value {
    let mut body = json!({"family": "inet", "table": table, "chain": chain, "expr": expr});
    if let Some(c) = comment {
        body["comment"] = Value::String(cut(&c));
    }
    cmd("add", "rule", body)
}

fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn l4proto(right: Value) -> Value {
    matches(json!({"meta": {"key": "l4proto"}}), right)
}

fn range(first: u32, last: u32) -> Value {
    if first == last {
        json!(first)
    } else {
        json!({"range": [first, last]})
    }
}

fn net_value(n: &Net) -> Value {
    if n.is_host() {
        json!(n.addr.to_string())
    } else {
        json!({"prefix": {"addr": n.addr.to_string(), "len": n.len}})
    }
}

/// `ip daddr …` / `ip6 daddr …` for the nets of one family (None: that family has none).
fn daddr(nets: &[Net], v4: bool) -> Option<Value> {
    let values: Vec<Value> = nets
        .iter()
        .filter(|n| n.addr.is_ipv4() == v4)
        .map(net_value)
        .collect();
    let right = match values.len() {
        0 => return None,
        1 => values.into_iter().next().expect("one value"),
        _ => json!({"set": values}),
    };
    let protocol = if v4 { "ip" } else { "ip6" };
    Some(matches(
        json!({"payload": {"protocol": protocol, "field": "daddr"}}),
        right,
    ))
}

fn ports_match(p: Ports) -> [Value; 2] {
    [
        l4proto(json!({"set": ["tcp", "udp"]})),
        matches(
            json!({"payload": {"protocol": "th", "field": "dport"}}),
            range(u32::from(p.first), u32::from(p.last)),
        ),
    ]
}

/// The rules that refuse what `matching` matches: logged (rate-limited, when `log`), TCP reset
/// (the job sees `ECONNREFUSED` at once, instead of a connect that hangs), anything else
/// dropped (the sender sees `EPERM`).
fn refuse(
    table: &str,
    chain: &str,
    matching: &[Value],
    comment: &str,
    log_prefix: Option<String>,
) -> Vec<Value> {
    let with = |extra: Vec<Value>| {
        let mut e = matching.to_vec();
        e.extend(extra);
        e
    };
    let mut out = Vec::new();
    if let Some(prefix) = log_prefix {
        out.push(rule(
            table,
            chain,
            Some(format!("log: {comment}")),
            with(vec![
                json!({"limit": {"rate": 10, "per": "second"}}),
                // The socket's uid on the line: a policy's chain is shared by its jobs.
                json!({"log": {"prefix": cut(&prefix), "level": "info", "flags": ["skuid"]}}),
            ]),
        ));
    }
    out.push(rule(
        table,
        chain,
        Some(comment.to_string()),
        with(vec![
            l4proto(json!("tcp")),
            json!({"counter": null}),
            json!({"reject": {"type": "tcp reset"}}),
        ]),
    ));
    out.push(rule(
        table,
        chain,
        Some(comment.to_string()),
        with(vec![json!({"counter": null}), json!({"drop": null})]),
    ));
    out
}

/// The table-wide settings of `[network]` the base chain follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    /// `[network] log`: refusals in the kernel log.
    pub log: bool,
    /// `[network] loopback_apart`: the rules that keep jobs apart on loopback ([`apart`]).
    pub loopback_apart: bool,
}

/// The transaction that makes the table, or brings it in line with the config (the uid ranges
/// of the output chain), leaving every job's chain and element in place. Idempotent. The tag
/// map and the peer set are made either way (jobs add their elements either way); only the
/// rules that use them follow `loopback_apart`.
pub fn base(table: &str, job_ranges: &[[u32; 2]], switches: Switches) -> Value {
    let Switches {
        log,
        loopback_apart,
    } = switches;
    let t = json!({"family": "inet", "name": table});
    let on = |extra: Value| {
        let mut v = json!({"family": "inet", "table": table});
        v.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        v
    };
    let mut cmds = vec![
        cmd("add", "table", t),
        cmd(
            "add",
            "map",
            on(json!({"name": MAP, "type": "uid", "map": "verdict", "flags": ["interval"]})),
        ),
        cmd(
            "add",
            "chain",
            on(
                json!({"name": OUTPUT, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}),
            ),
        ),
        cmd("add", "chain", on(json!({"name": JOBS}))),
        // The job ranges are a set every executor sharing the table adds its own to (never
        // replaced): one config's prepare must not take another's job uids out of its policy.
        cmd(
            "add",
            "set",
            on(json!({"name": RANGES, "type": "uid", "flags": ["interval"], "auto-merge": true})),
        ),
        ranges_element(table, job_ranges),
        cmd(
            "add",
            "map",
            on(json!({"name": TAGS, "type": "uid", "map": "mark", "flags": ["interval"]})),
        ),
        cmd(
            "add",
            "set",
            on(json!({"name": PEERS, "type": ["uid", "mark"], "flags": ["interval"]})),
        ),
        cmd("flush", "chain", on(json!({"name": OUTPUT}))),
        cmd("flush", "chain", on(json!({"name": JOBS}))),
    ];
    if loopback_apart {
        cmds.extend(apart(table, log));
    }
    cmds.extend([
        // Only a socket of a job's uid goes on: packets without a socket (the kernel's RST for
        // a closed port, ICMP errors, TIME_WAIT answers) never match `meta skuid` and must not
        // reach the refusal below, or the whole host's connections to closed ports would hang.
        rule(
            table,
            OUTPUT,
            Some("a job's uid: its policy".into()),
            vec![
                json!({"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": format!("@{RANGES}")}}),
                json!({"goto": {"target": JOBS}}),
            ],
        ),
        rule(
            table,
            JOBS,
            Some("a job's uid: its own chain".into()),
            vec![json!({"vmap": {"key": {"meta": {"key": "skuid"}}, "data": format!("@{MAP}")}})],
        ),
    ]);
    cmds.extend(refuse(
        table,
        JOBS,
        &[],
        "no job holds this uid: strictest policy",
        log.then(|| "p3-executor unmapped uid: ".to_string()),
    ));
    json!({"nftables": cmds})
}

/// The output chain's rules that keep jobs apart on loopback (see the module's doc), first in
/// the chain: a crossed connection refused; a job's new connection tagged; a reply from a
/// job's socket on a connection not tagged with its job's tag crossed (logged, when `log`).
fn apart(table: &str, log: bool) -> Vec<Value> {
    let lo = matches(json!({"meta": {"key": "oifname"}}), json!("lo"));
    let ct = |key: &str| json!({"ct": {"key": key}});
    let crossed = matches(ct("mark"), json!(CROSSED));
    let job_socket = matches(
        json!({"meta": {"key": "skuid"}}),
        json!(format!("@{RANGES}")),
    );
    let refused = |packets: Value, verdict: Value| {
        let comment = "jobs apart on loopback: a crossed connection is refused";
        let expr = vec![
            lo.clone(),
            crossed.clone(),
            packets,
            json!({"counter": null}),
            verdict,
        ];
        rule(table, OUTPUT, Some(comment.into()), expr)
    };
    let mut out = vec![
        // The initiator's SYN (retransmitted), and the listener's SYN-ACK, get a reset; the
        // resets themselves must pass, as must every other packet of the host.
        refused(
            json!({"match": {"op": "in", "left": {"payload": {"protocol": "tcp", "field": "flags"}}, "right": "syn"}}),
            json!({"reject": {"type": "tcp reset"}}),
        ),
        refused(
            json!({"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
            json!({"drop": null}),
        ),
        rule(
            table,
            OUTPUT,
            Some("jobs apart on loopback: a job's connection carries its tag".into()),
            vec![
                lo.clone(),
                json!({"match": {"op": "in", "left": ct("state"), "right": "new"}}),
                job_socket,
                json!({"mangle": {"key": ct("mark"), "value": {"map": {"key": {"meta": {"key": "skuid"}}, "data": format!("@{TAGS}")}}}}),
            ],
        ),
    ];
    // Only a tagged socket's replies are checked: a job prepared before its executor kept
    // jobs apart (no tag) keeps its loopback as it was until it ends.
    let tagged = matches(json!({"meta": {"key": "skuid"}}), json!(format!("@{TAGS}")));
    let another = vec![
        lo,
        matches(ct("direction"), json!("reply")),
        tagged,
        json!({"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "skuid"}}, ct("mark")]}, "right": format!("@{PEERS}")}}),
    ];
    let comment = CROSSING;
    if log {
        let mut e = another.clone();
        e.extend([
            json!({"limit": {"rate": 10, "per": "second"}}),
            // The listener's uid on the line; the initiator is the packet's destination.
            json!({"log": {"prefix": "p3-executor another job's listener: ", "level": "info", "flags": ["skuid"]}}),
        ]);
        out.push(rule(table, OUTPUT, Some(format!("log: {comment}")), e));
    }
    let mut e = another;
    e.extend([
        json!({"mangle": {"key": ct("mark"), "value": CROSSED}}),
        json!({"counter": null}),
        json!({"drop": null}),
    ]);
    out.push(rule(table, OUTPUT, Some(comment.into()), e));
    out
}

/// A job's tag: its private uid (no other live job holds it), the mark its loopback
/// connections carry.
pub fn tag_of(key: &JobKey) -> u32 {
    key.uid
}

/// The job's elements of the tag map (uid and subordinate range → its tag) and of the peer
/// set (uid . tag, range . tag), as nft writes them.
pub fn tag_elements(key: &JobKey) -> (Vec<Value>, Vec<Value>) {
    let t = tag_of(key);
    let mut keys = vec![json!(key.uid)];
    if let Some([a, b]) = key.subids {
        keys.push(range(a, b));
    }
    let tags = keys.iter().map(|k| json!([k, t])).collect();
    let peers = keys.iter().map(|k| peer(k, t)).collect();
    (tags, peers)
}

/// A peer-set element: a tag-map key and its tag. A single uid is written as the range of
/// itself: nft 1.0.6 cannot delete a concatenation's single value from an interval set
/// ("No such file or directory"), only a range.
pub fn peer(key: &Value, tag: u32) -> Value {
    let first = match key.as_u64() {
        Some(uid) => json!({"range": [uid, uid]}),
        None => key.clone(),
    };
    json!({"concat": [first, tag]})
}

/// Elements a transaction deletes, as nft writes them: verdict-map keys, tag-map keys and
/// peer pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Elements {
    /// Keys of [`MAP`].
    pub map: Vec<Value>,
    /// Keys of [`TAGS`].
    pub tags: Vec<Value>,
    /// Elements of [`PEERS`].
    pub peers: Vec<Value>,
}

impl Elements {
    /// Nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.tags.is_empty() && self.peers.is_empty()
    }

    /// The delete commands, one per non-empty kind.
    fn delete(&self, table: &str) -> Vec<Value> {
        [(MAP, &self.map), (TAGS, &self.tags), (PEERS, &self.peers)]
            .into_iter()
            .filter(|(_, elem)| !elem.is_empty())
            .map(|(name, elem)| {
                cmd(
                    "delete",
                    "element",
                    json!({"family": "inet", "table": table, "name": name, "elem": elem}),
                )
            })
            .collect()
    }
}

/// The command adding `job_ranges` to the table's set of job ranges (idempotent). In base and
/// in every job's transaction: a second executor sharing the table (made by the first) must
/// still get its ranges into the set, or its jobs' sockets would bypass every policy.
pub fn ranges_element(table: &str, job_ranges: &[[u32; 2]]) -> Value {
    let elem: Vec<Value> = job_ranges.iter().map(|[a, b]| range(*a, *b)).collect();
    cmd(
        "add",
        "element",
        json!({"family": "inet", "table": table, "name": RANGES, "elem": elem}),
    )
}

/// The prefix of a policy chain's name; the rest is a digest of what it is rendered from.
pub const POLICY_PREFIX: &str = "policy_";

/// The version of how [`PolicyChain::rules`] renders a policy, part of every chain's name: a
/// change of the rendering (a fixed rule, a new match) must make new chains on hosts that
/// still hold chains rendered the old way. The unit test
/// `the_rendering_is_pinned_to_its_version` fails when the rendering changes, until this is
/// bumped and its digest updated.
pub const RENDER_VERSION: u32 = 1;

/// A policy's chain, shared by every job with the same rules: its name is a digest of what it
/// is rendered from (the rendering's version, the policy's name, mode, logging and pinned
/// rules), so a change of the config or of a name's addresses makes a new chain, and a job's
/// own transaction is only its map elements when the chain is already there. The rules are
/// rendered only when the chain has to be made (half a millisecond of a prepare otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyChain<'a> {
    /// `policy_<96-bit digest, hex>`.
    pub name: String,
    policy: &'a str,
    mode: Mode,
    rules: &'a [Pinned],
    log: bool,
}

impl<'a> PolicyChain<'a> {
    /// The chain of `policy` (`plain` or `devstages.<name>`) with `rules`, in `mode`.
    pub fn new(policy: &'a str, mode: Mode, rules: &'a [Pinned], log: bool) -> Self {
        let what = serde_json::to_vec(&(RENDER_VERSION, policy, mode, log, rules))
            .expect("policies serialize");
        let name = format!(
            "{POLICY_PREFIX}{}",
            &hex::encode(sha2::Sha256::digest(&what))[..24]
        );
        PolicyChain {
            name,
            policy,
            mode,
            rules,
            log,
        }
    }

    /// The chain's rules in `table`, in order (`add rule` commands): the policy's rules, then
    /// its mode's verdict (open accepts, allowlist refuses). Refusals are logged with the
    /// policy and the rule's source in the prefix and the socket's uid on the line.
    pub fn rules(&self, table: &str) -> Vec<Value> {
        let (t, c) = (table, self.name.as_str());
        let prefix = |source: &str| {
            self.log
                .then(|| format!("p3-executor {} {source}: ", self.policy))
        };
        let mut cmds = Vec::new();
        for r in self.rules {
            for v4 in [true, false] {
                let Some(dst) = daddr(&r.nets, v4) else {
                    continue;
                };
                let mut matching = vec![dst];
                if let Some(p) = r.ports {
                    matching.extend(ports_match(p));
                }
                let comment = format!("{} {}", r.source, r.target);
                match r.action {
                    Action::Accept => {
                        matching.extend([json!({"counter": null}), json!({"accept": null})]);
                        cmds.push(rule(t, c, Some(comment), matching));
                    }
                    Action::Reject => {
                        cmds.extend(refuse(t, c, &matching, &comment, prefix(&r.source)));
                    }
                }
            }
        }
        match self.mode {
            Mode::Open => cmds.push(rule(
                t,
                c,
                Some("mode = open: everything else".into()),
                vec![json!({"counter": null}), json!({"accept": null})],
            )),
            Mode::Allowlist => cmds.extend(refuse(
                t,
                c,
                &[],
                "mode = allowlist: not allowed",
                prefix("allowlist"),
            )),
        }
        cmds
    }
}

/// A job's elements: of the map, its uid (and subordinate range) → jump to `chain`; of the
/// tag map and the peer set, its tag ([`tag_elements`]).
fn job_elements(table: &str, key: &JobKey, chain: &str) -> [Value; 3] {
    let jump = json!({"jump": {"target": chain}});
    let mut elem = vec![json!([key.uid, jump])];
    if let Some([a, b]) = key.subids {
        elem.push(json!([range(a, b), jump]));
    }
    let (tags, peers) = tag_elements(key);
    let on = |name: &str, elem: Vec<Value>| json!({"family": "inet", "table": table, "name": name, "elem": elem});
    [on(MAP, elem), on(TAGS, tags), on(PEERS, peers)]
}

/// The transaction that gives the job running as `key` its policy: the executor's job uid
/// ranges into the set, the policy's chain (made, or flushed and filled again with the same
/// rules), `replace` (elements already there for the job's keys: a previous holder's, which
/// the add would conflict with) deleted, and the job's map, tag and peer elements. prepare's
/// slow path; the fast path adds the elements alone (`netlink.rs`).
pub fn add_job(
    table: &str,
    job_ranges: &[[u32; 2]],
    key: &JobKey,
    policy: &PolicyChain<'_>,
    replace: &Elements,
) -> Value {
    let on_chain = json!({"family": "inet", "table": table, "name": policy.name});
    let mut cmds = vec![
        ranges_element(table, job_ranges),
        cmd("add", "chain", on_chain.clone()),
        cmd("flush", "chain", on_chain),
    ];
    cmds.extend(policy.rules(table));
    cmds.extend(replace.delete(table));
    cmds.extend(job_elements(table, key, &policy.name).map(|e| cmd("add", "element", e)));
    json!({"nftables": cmds})
}

/// The transaction that takes a job's map elements away; they jump to `chain`. Adding them
/// first makes the removal of what is already gone succeed, in one atomic step. A policy's
/// chain stays for its other jobs (gc removes it once none jumps to it); a job chain of an
/// executor before policy chains (`uid_<uid>`) goes with its elements.
pub fn remove_job(table: &str, key: &JobKey, chain: &str) -> Value {
    let on_chain = json!({"family": "inet", "table": table, "name": chain});
    let elements = job_elements(table, key, chain);
    let mut cmds = Vec::new();
    let own = chain_uid(chain) == Some(key.uid);
    if own {
        cmds.push(cmd("add", "chain", on_chain.clone()));
    }
    cmds.extend(elements.iter().map(|e| cmd("add", "element", e.clone())));
    cmds.extend(elements.into_iter().map(|e| cmd("delete", "element", e)));
    if own {
        cmds.push(cmd("flush", "chain", on_chain.clone()));
        cmds.push(cmd("delete", "chain", on_chain));
    }
    json!({"nftables": cmds})
}

/// The transaction that removes elements (stale ones found by gc or check) without their
/// chains; `chains` are then deleted (they must no longer be the target of any element).
pub fn remove_stale(table: &str, elements: &Elements, chains: &[String]) -> Value {
    let mut cmds = elements.delete(table);
    for c in chains {
        let on_chain = json!({"family": "inet", "table": table, "name": c});
        cmds.push(cmd("flush", "chain", on_chain.clone()));
        cmds.push(cmd("delete", "chain", on_chain));
    }
    json!({"nftables": cmds})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walls::network::policy::Pinned;

    fn pinned(action: Action, nets: &[&str], ports: Option<(u16, u16)>, source: &str) -> Pinned {
        Pinned {
            action,
            nets: nets
                .iter()
                .map(|n| {
                    let t: crate::walls::network::target::Target = n.parse().unwrap();
                    match t.host {
                        crate::walls::network::target::Host::Net(n) => n,
                        _ => panic!("{n}"),
                    }
                })
                .collect(),
            ports: ports.map(|(first, last)| Ports { first, last }),
            source: source.into(),
            target: nets.join(","),
        }
    }

    /// `[network] deny`'s metadata addresses, v4 and v6: a refusal rendered in both families.
    fn metadata_denied() -> Pinned {
        pinned(
            Action::Reject,
            &["169.254.169.254", "fd00:ec2::254"],
            None,
            "network.deny[0]",
        )
    }

    /// The verbs and kinds of a transaction, in order, and each rule's comment.
    fn outline(v: &Value) -> Vec<String> {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
                let (kind, obj) = body.as_object().unwrap().iter().next().unwrap();
                let what = obj
                    .get("comment")
                    .or(obj.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("{verb} {kind} {what}")
            })
            .collect()
    }

    #[test]
    fn a_policy_chain_is_made_flushed_filled_and_mapped_in_one_transaction() {
        let key = JobKey {
            uid: 200_001,
            subids: Some([300_000, 365_535]),
        };
        let rules = [
            metadata_denied(),
            pinned(
                Action::Accept,
                &["10.20.0.0/16"],
                Some((443, 443)),
                "devstages.dev.network.allow[0]",
            ),
        ];
        let chain = PolicyChain::new("devstages.dev", Mode::Allowlist, &rules, true);
        assert!(chain.name.starts_with("policy_") && chain.name.len() == 7 + 24);
        let tx = add_job(
            "t",
            &[[200_000, 265_535]],
            &key,
            &chain,
            &Elements::default(),
        );
        let named = format!("add chain {}", chain.name);
        let flushed = format!("flush chain {}", chain.name);
        assert_eq!(
            outline(&tx),
            [
                "add element job_ranges",
                &named,
                &flushed,
                // v4 then v6 of the refusal: log, TCP reset, drop.
                "add rule log: network.deny[0] 169.254.169.254,fd00:ec2::254",
                "add rule network.deny[0] 169.254.169.254,fd00:ec2::254",
                "add rule network.deny[0] 169.254.169.254,fd00:ec2::254",
                "add rule log: network.deny[0] 169.254.169.254,fd00:ec2::254",
                "add rule network.deny[0] 169.254.169.254,fd00:ec2::254",
                "add rule network.deny[0] 169.254.169.254,fd00:ec2::254",
                "add rule devstages.dev.network.allow[0] 10.20.0.0/16",
                "add rule log: mode = allowlist: not allowed",
                "add rule mode = allowlist: not allowed",
                "add rule mode = allowlist: not allowed",
                "add element job_uids",
                "add element job_tags",
                "add element job_peers",
            ]
        );
        let cmds = tx["nftables"].as_array().unwrap();
        assert_eq!(cmds[3]["add"]["rule"]["table"], "t");
        assert_eq!(cmds[3]["add"]["rule"]["chain"], json!(chain.name));
        assert_eq!(
            cmds[3]["add"]["rule"]["expr"][0],
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "169.254.169.254"}})
        );
        assert_eq!(
            cmds[6]["add"]["rule"]["expr"][0]["match"]["left"]["payload"]["protocol"],
            "ip6"
        );
        // Shared by the policy's jobs: the policy in the prefix, the socket's uid on the line.
        assert_eq!(
            cmds[3]["add"]["rule"]["expr"][2]["log"],
            json!({"prefix": "p3-executor devstages.dev network.deny[0]: ", "level": "info", "flags": ["skuid"]})
        );
        assert_eq!(
            cmds[4]["add"]["rule"]["expr"][3],
            json!({"reject": {"type": "tcp reset"}})
        );
        let allow = &cmds[9]["add"]["rule"]["expr"];
        assert_eq!(
            allow[0]["match"]["right"],
            json!({"prefix": {"addr": "10.20.0.0", "len": 16}})
        );
        assert_eq!(allow[1]["match"]["right"], json!({"set": ["tcp", "udp"]}));
        assert_eq!(allow[2]["match"]["right"], json!(443));
        assert_eq!(allow[4], json!({"accept": null}));
        let jump = json!({"jump": {"target": chain.name}});
        assert_eq!(
            cmds[13]["add"]["element"]["elem"],
            json!([[200001, jump], [{"range": [300000, 365535]}, jump]])
        );
    }

    #[test]
    fn the_chain_name_follows_the_rules_and_nothing_else() {
        let deny = |addr: &str| [pinned(Action::Reject, &[addr], None, "network.deny[0]")];
        let name =
            |rules: &[Pinned], mode, log, policy| PolicyChain::new(policy, mode, rules, log).name;
        let a = name(&deny("10.0.0.1"), Mode::Open, true, "plain");
        assert_eq!(a, name(&deny("10.0.0.1"), Mode::Open, true, "plain"));
        // A name that resolved to another address, the mode, logging, the policy's name (in
        // the log prefix): each makes another chain.
        for other in [
            name(&deny("10.0.0.2"), Mode::Open, true, "plain"),
            name(&deny("10.0.0.1"), Mode::Allowlist, true, "plain"),
            name(&deny("10.0.0.1"), Mode::Open, false, "plain"),
            name(&deny("10.0.0.1"), Mode::Open, true, "devstages.dev"),
        ] {
            assert_ne!(a, other);
        }
    }

    /// A chain is reused by name, so rules rendered differently under the same name would
    /// leave hosts with chains rendered the old way. This digest of a rendering that uses every
    /// kind of rule fails when the rendering changes: then bump [`RENDER_VERSION`] (which
    /// renames every chain) and record the new digest here, with it.
    #[test]
    fn the_rendering_is_pinned_to_its_version() {
        let rules = [
            metadata_denied(),
            pinned(
                Action::Accept,
                &["10.20.0.0/16", "10.21.0.1"],
                Some((443, 450)),
                "devstages.dev.network.allow[0]",
            ),
            pinned(Action::Reject, &["10.30.0.0/16"], Some((22, 22)), "x"),
        ];
        let mut rendered = Vec::new();
        for (mode, log) in [(Mode::Allowlist, true), (Mode::Open, false)] {
            rendered.extend(PolicyChain::new("devstages.dev", mode, &rules, log).rules("t"));
        }
        // The chain's name is in every rule; the digest is of the rest.
        for r in &mut rendered {
            r["add"]["rule"]["chain"] = json!("");
        }
        let digest = hex::encode(sha2::Sha256::digest(
            Value::Array(rendered).to_string().as_bytes(),
        ));
        assert_eq!(
            (RENDER_VERSION, digest.as_str()),
            (
                1,
                "8a7eda3b2478340234b2bd17ee066282d5839037f463475bfd310ccb5bad835e"
            ),
            "the rules render differently: bump RENDER_VERSION and record both here"
        );
    }

    #[test]
    fn open_mode_ends_in_accept_and_no_log_means_no_log_rules() {
        let key = JobKey {
            uid: 7,
            subids: None,
        };
        let rules = [pinned(
            Action::Reject,
            &["10.0.0.0/8", "10.1.0.0/16"],
            Some((1, 1024)),
            "network.plain.deny[0]",
        )];
        let chain = PolicyChain::new("plain", Mode::Open, &rules, false);
        let replace = Elements {
            map: vec![json!(7)],
            tags: vec![json!(7)],
            peers: vec![peer(&json!(7), 7)],
        };
        let tx = add_job("t", &[[7, 7]], &key, &chain, &replace);
        let cmds = tx["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3 + 2 + 1 + 3 + 3);
        assert_eq!(
            cmds[3]["add"]["rule"]["expr"][0]["match"]["right"],
            json!({"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "10.1.0.0", "len": 16}}]})
        );
        assert_eq!(
            cmds[3]["add"]["rule"]["expr"][2]["match"]["right"],
            json!({"range": [1, 1024]})
        );
        assert_eq!(
            cmds[5]["add"]["rule"]["expr"],
            json!([{"counter": null}, {"accept": null}])
        );
        // A previous holder's element is deleted before the job's is added.
        assert_eq!(cmds[6]["delete"]["element"]["elem"], json!([7]));
        assert_eq!(cmds[7]["delete"]["element"]["name"], "job_tags");
        assert_eq!(
            cmds[8]["delete"]["element"]["elem"],
            json!([{"concat": [{"range": [7, 7]}, 7]}])
        );
        assert_eq!(
            cmds[9]["add"]["element"]["elem"],
            json!([[7, {"jump": {"target": chain.name}}]])
        );
        // Its tag is its uid, for the uid and the subordinate range alike.
        assert_eq!(cmds[10]["add"]["element"]["elem"], json!([[7, 7]]));
        assert_eq!(
            cmds[11]["add"]["element"]["elem"],
            json!([{"concat": [{"range": [7, 7]}, 7]}])
        );
    }

    #[test]
    fn removal_adds_before_it_deletes_so_it_is_idempotent() {
        let key = JobKey {
            uid: 200_002,
            subids: None,
        };
        // A policy chain stays for its other jobs.
        assert_eq!(
            outline(&remove_job("t", &key, "policy_ab")),
            [
                "add element job_uids",
                "add element job_tags",
                "add element job_peers",
                "delete element job_uids",
                "delete element job_tags",
                "delete element job_peers",
            ]
        );
        // A job chain of an executor before policy chains goes with its elements.
        assert_eq!(
            outline(&remove_job("t", &key, "uid_200002")),
            [
                "add chain uid_200002",
                "add element job_uids",
                "add element job_tags",
                "add element job_peers",
                "delete element job_uids",
                "delete element job_tags",
                "delete element job_peers",
                "flush chain uid_200002",
                "delete chain uid_200002",
            ]
        );
    }

    #[test]
    fn base_leaves_other_uids_alone_and_refuses_unmapped_job_uids() {
        let on = Switches {
            log: true,
            loopback_apart: true,
        };
        let tx = base("p3_test", &[[200_000, 265_535], [300_000, 300_000]], on);
        assert_eq!(
            outline(&tx),
            [
                "add table p3_test",
                "add map job_uids",
                "add chain output",
                "add chain jobs",
                "add set job_ranges",
                "add element job_ranges",
                "add map job_tags",
                "add set job_peers",
                "flush chain output",
                "flush chain jobs",
                "add rule jobs apart on loopback: a crossed connection is refused",
                "add rule jobs apart on loopback: a crossed connection is refused",
                "add rule jobs apart on loopback: a job's connection carries its tag",
                "add rule log: jobs apart on loopback: a reply to another job or the host",
                "add rule jobs apart on loopback: a reply to another job or the host",
                "add rule a job's uid: its policy",
                "add rule a job's uid: its own chain",
                "add rule log: no job holds this uid: strictest policy",
                "add rule no job holds this uid: strictest policy",
                "add rule no job holds this uid: strictest policy",
            ]
        );
        let cmds = tx["nftables"].as_array().unwrap();
        // Only job uids go on (`==`): a packet without a socket never matches, so the kernel's
        // own answers (RST for a closed port, ICMP errors) pass untouched.
        let first = &cmds[15]["add"]["rule"]["expr"];
        assert_eq!(first[0]["match"]["op"], "==");
        assert_eq!(first[0]["match"]["right"], "@job_ranges");
        assert_eq!(
            cmds[5]["add"]["element"]["elem"],
            json!([{"range": [200000, 265535]}, 300000])
        );
        assert_eq!(first[1]["goto"]["target"], "jobs");
        assert_eq!(cmds[2]["add"]["chain"]["hook"], "output");
        // Apart: only loopback; a job socket's new connection takes its job's tag; a reply
        // from a job socket whose (uid . mark) is no job's pair crosses the connection.
        let tagging = &cmds[12]["add"]["rule"]["expr"];
        assert_eq!(tagging[0]["match"]["right"], "lo");
        assert_eq!(tagging[2]["match"]["right"], "@job_ranges");
        assert_eq!(tagging[3]["mangle"]["value"]["map"]["data"], "@job_tags");
        let crossing = &cmds[14]["add"]["rule"]["expr"];
        assert_eq!(crossing[1]["match"]["right"], "reply");
        assert_eq!(crossing[2]["match"]["right"], "@job_tags");
        assert_eq!(crossing[3]["match"]["op"], "!=");
        assert_eq!(crossing[3]["match"]["right"], "@job_peers");
        assert_eq!(crossing[4]["mangle"]["value"], CROSSED);
        // Only the SYNs of a crossed TCP connection are reset: the resets must pass.
        let refusing = &cmds[10]["add"]["rule"]["expr"];
        assert_eq!(refusing[2]["match"]["right"], "syn");
        assert_eq!(refusing[4]["reject"]["type"], "tcp reset");
        // Without log, no log rule.
        let quiet = base("p3_test", &[[1, 2]], Switches { log: false, ..on });
        assert!(
            !outline(&quiet)
                .iter()
                .any(|r| r.starts_with("add rule log: jobs apart"))
        );
        // Off: no rule keeps jobs apart (and no `ct` expression loads connection tracking),
        // but the map and the set a job's elements go to are there.
        let off = outline(&base(
            "p3_test",
            &[[1, 2]],
            Switches {
                loopback_apart: false,
                ..on
            },
        ));
        assert!(!off.iter().any(|r| r.contains("jobs apart")), "{off:?}");
        assert!(off.contains(&"add map job_tags".to_string()));
        assert!(off.contains(&"add set job_peers".to_string()));
    }

    #[test]
    fn long_texts_are_cut_to_nfts_limit_on_a_char_boundary() {
        let long = "é".repeat(100);
        let c = cut(&long);
        assert!(c.len() <= TEXT_MAX && c.chars().all(|ch| ch == 'é'));
        assert_eq!(chain_uid(&chain_name(200_001)), Some(200_001));
        assert_eq!(chain_uid("output"), None);
    }
}
