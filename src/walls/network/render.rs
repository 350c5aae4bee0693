//! The nftables transactions, as `nft -j` JSON (libnftables-json(5)). Pure and table-tested;
//! [`super::nft`] sends them.
//!
//! The table (family `inet`, so IPv4 and IPv6 alike):
//!
//! ```text
//! table inet p3_executor {
//!     map job_uids { type uid : verdict; flags interval; }      # uid (or subid range) → jump uid_<uid>
//!     set job_ranges { type uid; flags interval; auto-merge; } # every config's job ranges, added
//!     chain output {
//!         type filter hook output priority filter; policy accept;
//!         meta skuid @job_ranges goto jobs                              # a job's uid; the rest
//!     }                                                               # (no socket too) untouched
//!     chain jobs {
//!         meta skuid vmap @job_uids                                     # a job's: its own chain
//!         ... refuse                                                    # no job holds it: strictest
//!     }
//!     chain uid_200001 { <the job's rules in order>; <its mode's verdict> }
//! }
//! ```
//!
//! A job adds (prepare) or removes (cleanup) its own chain and its map elements in one
//! transaction; nothing else in the ruleset changes. Every per-job transaction is idempotent:
//! the add flushes the uid's chain before filling it (so a uid never keeps a previous job's
//! allowance), and the removal adds what it deletes first (so removing what is already gone is
//! not an error).

use serde_json::{Value, json};

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
                json!({"log": {"prefix": cut(&prefix), "level": "info"}}),
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

/// The transaction that makes the table, or brings it in line with the config (the uid ranges
/// of the output chain), leaving every job's chain and element in place. Idempotent.
pub fn base(table: &str, job_ranges: &[[u32; 2]], log: bool) -> Value {
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
        cmd("flush", "chain", on(json!({"name": OUTPUT}))),
        cmd("flush", "chain", on(json!({"name": JOBS}))),
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
    ];
    cmds.extend(refuse(
        table,
        JOBS,
        &[],
        "no job holds this uid: strictest policy",
        log.then(|| "p3-executor unmapped uid: ".to_string()),
    ));
    json!({"nftables": cmds})
}

fn elements(key: &JobKey) -> Value {
    let jump = json!({"jump": {"target": chain_name(key.uid)}});
    let mut elem = vec![json!([key.uid, jump])];
    if let Some([a, b]) = key.subids {
        elem.push(json!([range(a, b), jump]));
    }
    Value::Array(elem)
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

/// The transaction that gives the job `job_id` running as `key` its rules: its chain (flushed
/// first: whatever a previous holder of the uid had is gone in the same transaction) and its
/// map elements. Every chain ends in a verdict: open accepts, allowlist refuses.
pub fn add_job(
    table: &str,
    job_id: u64,
    key: &JobKey,
    mode: Mode,
    rules: &[Pinned],
    log: bool,
) -> Value {
    let chain = chain_name(key.uid);
    let on_chain = json!({"family": "inet", "table": table, "name": chain});
    let mut cmds = vec![
        cmd("add", "chain", on_chain.clone()),
        cmd("flush", "chain", on_chain),
    ];
    let prefix = |source: &str| log.then(|| format!("p3-executor job {job_id} {source}: "));
    for r in rules {
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
                    cmds.push(rule(table, &chain, Some(comment), matching));
                }
                Action::Reject => cmds.extend(refuse(
                    table,
                    &chain,
                    &matching,
                    &comment,
                    prefix(&r.source),
                )),
            }
        }
    }
    match mode {
        Mode::Open => cmds.push(rule(
            table,
            &chain,
            Some("mode = open: everything else".into()),
            vec![json!({"counter": null}), json!({"accept": null})],
        )),
        Mode::Allowlist => cmds.extend(refuse(
            table,
            &chain,
            &[],
            "mode = allowlist: not allowed",
            prefix("allowlist"),
        )),
    }
    cmds.push(cmd(
        "add",
        "element",
        json!({"family": "inet", "table": table, "name": MAP, "elem": elements(key)}),
    ));
    json!({"nftables": cmds})
}

/// The transaction that takes a job's rules away: its map elements and its chain. Adding them
/// first makes the removal of what is already gone succeed, in one atomic step.
pub fn remove_job(table: &str, key: &JobKey) -> Value {
    let on_chain = json!({"family": "inet", "table": table, "name": chain_name(key.uid)});
    let on_map = json!({"family": "inet", "table": table, "name": MAP, "elem": elements(key)});
    json!({"nftables": [
        cmd("add", "chain", on_chain.clone()),
        cmd("add", "element", on_map.clone()),
        cmd("delete", "element", on_map),
        cmd("flush", "chain", on_chain.clone()),
        cmd("delete", "chain", on_chain),
    ]})
}

/// The transaction that removes map elements (stale keys found by gc or check) without their
/// chains; `chains` are then deleted (they must no longer be the target of any element).
pub fn remove_stale(table: &str, keys: &[Value], chains: &[String]) -> Value {
    let mut cmds = Vec::new();
    if !keys.is_empty() {
        cmds.push(cmd(
            "delete",
            "element",
            json!({"family": "inet", "table": table, "name": MAP, "elem": keys}),
        ));
    }
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
    fn a_job_chain_is_flushed_filled_and_mapped_in_one_transaction() {
        let key = JobKey {
            uid: 200_001,
            subids: Some([300_000, 365_535]),
        };
        let rules = [
            pinned(
                Action::Reject,
                &["169.254.169.254", "fd00:ec2::254"],
                None,
                "network.deny[0]",
            ),
            pinned(
                Action::Accept,
                &["10.20.0.0/16"],
                Some((443, 443)),
                "devstages.dev.network.allow[0]",
            ),
        ];
        let tx = add_job("t", 42, &key, Mode::Allowlist, &rules, true);
        assert_eq!(
            outline(&tx),
            [
                "add chain uid_200001",
                "flush chain uid_200001",
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
            ]
        );
        let cmds = tx["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[2]["add"]["rule"]["expr"][0],
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "169.254.169.254"}})
        );
        assert_eq!(
            cmds[5]["add"]["rule"]["expr"][0]["match"]["left"]["payload"]["protocol"],
            "ip6"
        );
        assert_eq!(
            cmds[2]["add"]["rule"]["expr"][2]["log"]["prefix"],
            "p3-executor job 42 network.deny[0]: "
        );
        assert_eq!(
            cmds[3]["add"]["rule"]["expr"][3],
            json!({"reject": {"type": "tcp reset"}})
        );
        let allow = &cmds[8]["add"]["rule"]["expr"];
        assert_eq!(
            allow[0]["match"]["right"],
            json!({"prefix": {"addr": "10.20.0.0", "len": 16}})
        );
        assert_eq!(allow[1]["match"]["right"], json!({"set": ["tcp", "udp"]}));
        assert_eq!(allow[2]["match"]["right"], json!(443));
        assert_eq!(allow[4], json!({"accept": null}));
        assert_eq!(
            cmds[12]["add"]["element"]["elem"],
            json!([
                [200001, {"jump": {"target": "uid_200001"}}],
                [{"range": [300000, 365535]}, {"jump": {"target": "uid_200001"}}]
            ])
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
        let tx = add_job("t", 1, &key, Mode::Open, &rules, false);
        let cmds = tx["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2 + 2 + 1 + 1);
        assert_eq!(
            cmds[2]["add"]["rule"]["expr"][0]["match"]["right"],
            json!({"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "10.1.0.0", "len": 16}}]})
        );
        assert_eq!(
            cmds[2]["add"]["rule"]["expr"][2]["match"]["right"],
            json!({"range": [1, 1024]})
        );
        assert_eq!(
            cmds[4]["add"]["rule"]["expr"],
            json!([{"counter": null}, {"accept": null}])
        );
        assert_eq!(
            cmds[5]["add"]["element"]["elem"],
            json!([[7, {"jump": {"target": "uid_7"}}]])
        );
    }

    #[test]
    fn removal_adds_before_it_deletes_so_it_is_idempotent() {
        let key = JobKey {
            uid: 200_002,
            subids: None,
        };
        assert_eq!(
            outline(&remove_job("t", &key)),
            [
                "add chain uid_200002",
                "add element job_uids",
                "delete element job_uids",
                "flush chain uid_200002",
                "delete chain uid_200002",
            ]
        );
    }

    #[test]
    fn base_leaves_other_uids_alone_and_refuses_unmapped_job_uids() {
        let tx = base("p3_test", &[[200_000, 265_535], [300_000, 300_000]], true);
        assert_eq!(
            outline(&tx),
            [
                "add table p3_test",
                "add map job_uids",
                "add chain output",
                "add chain jobs",
                "add set job_ranges",
                "add element job_ranges",
                "flush chain output",
                "flush chain jobs",
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
        let first = &cmds[8]["add"]["rule"]["expr"];
        assert_eq!(first[0]["match"]["op"], "==");
        assert_eq!(first[0]["match"]["right"], "@job_ranges");
        assert_eq!(
            cmds[5]["add"]["element"]["elem"],
            json!([{"range": [200000, 265535]}, 300000])
        );
        assert_eq!(first[1]["goto"]["target"], "jobs");
        assert_eq!(cmds[2]["add"]["chain"]["hook"], "output");
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
