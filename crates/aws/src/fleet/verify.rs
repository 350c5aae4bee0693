//! `audit verify --s3`: every host's chain across its shipped objects, and on a host that
//! ships, the local log against what it shipped.
//!
//! The checks are pure ([`check_chain`], [`compare_local`]) over what the bucket listing and
//! the objects hold; [`verify`] only fetches and prints.

use std::collections::BTreeMap;

use anyhow::Result;

use p3_executor::audit::GENESIS;
use p3_executor::audit::shipped;
use p3_executor::config::Config;

use super::key::{BatchKey, dir, host_dir, parse_uri};
use super::local::{Line, read_chain};
use super::store::{Store, Version, settings};

/// One shipped object as the bucket holds it.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its key.
    pub key: String,
    /// What its key says it holds.
    pub batch: BatchKey,
    /// How many versions with content it has (more than one: it was overwritten).
    pub versions: usize,
    /// Its current content; None when its current version is a delete marker.
    pub body: Option<Vec<u8>>,
}

/// What one chain of one host came to.
#[derive(Debug, Default)]
pub struct ChainCheck {
    /// `seq` → `hash` of every record that verified.
    pub hashes: BTreeMap<u64, String>,
    /// Objects read.
    pub objects: usize,
    /// The highest `seq` any object claims.
    pub last_seq: u64,
    /// Every problem, in chain order, each naming its object.
    pub problems: Vec<String>,
}

/// Verify one chain of one host: `objects` sorted by first seq. Each object must hold exactly
/// the records its key names, each matching its hash and continuing the one before it, across
/// object boundaries too, from seq 1 with no gap; an object with more than one version was
/// overwritten, one whose current version is a delete marker was deleted.
pub fn check_chain(objects: &[Object]) -> ChainCheck {
    let mut out = ChainCheck {
        objects: objects.len(),
        ..ChainCheck::default()
    };
    let (mut seq, mut hash) = (0u64, GENESIS.to_string());
    let mut last_key: Option<&str> = None;
    for o in objects {
        let b = &o.batch;
        out.last_seq = out.last_seq.max(b.last);
        if o.versions > 1 {
            out.problems.push(format!(
                "{}: overwritten after shipping ({} versions); the bucket keeps the replaced version (aws s3api list-object-versions --prefix {})",
                o.key, o.versions, o.key
            ));
        }
        let Some(body) = &o.body else {
            out.problems.push(format!(
                "{}: deleted (its current version is a delete marker)",
                o.key
            ));
            continue;
        };
        if b.first > seq + 1 {
            out.problems.push(match last_key {
                Some(k) => format!(
                    "gap: records {}..{} are missing between {k} and {}",
                    seq + 1,
                    b.first - 1,
                    o.key
                ),
                None => format!(
                    "gap: records 1..{} are missing before {} (the chain's start)",
                    b.first - 1,
                    o.key
                ),
            });
            // Continue from this object, so later problems are still found.
            match first_record(body) {
                Some((s, prev)) if s == b.first => (seq, hash) = (s - 1, prev),
                _ => (seq, hash) = (b.first - 1, String::new()),
            }
        } else if b.first <= seq {
            out.problems.push(format!(
                "{}: overlaps records up to seq {seq} already shipped in {}",
                o.key,
                last_key.unwrap_or("an earlier object")
            ));
            continue;
        }
        let read = if hash.is_empty() {
            // After a gap the previous hash is unknown: take the object's own first prev.
            let prev = first_record(body).map(|(_, p)| p).unwrap_or_default();
            read_chain(body, seq, prev)
        } else {
            read_chain(body, seq, hash.clone())
        };
        let complete = body.ends_with(b"\n") || body.is_empty();
        let got = read.lines.last().map_or(seq, |l| l.seq);
        for l in &read.lines {
            if !host_matches(&l.bytes, &b.host_id) {
                out.problems.push(format!(
                    "{}: record seq {} names another host than the key's {}",
                    o.key, l.seq, b.host_id
                ));
            }
            out.hashes.insert(l.seq, l.hash.clone());
        }
        if let Some(why) = read.stop {
            out.problems.push(format!("{}: {why}", o.key));
        } else if !complete {
            out.problems
                .push(format!("{}: ends in an incomplete line", o.key));
        } else if got != b.last || read.lines.first().is_some_and(|l| l.seq != b.first) {
            out.problems.push(format!(
                "{}: holds records {}..{got}, its key says {}..{}: it was cut or replaced",
                o.key,
                seq + 1,
                b.first,
                b.last
            ));
        }
        seq = got.max(b.last);
        hash = read
            .lines
            .last()
            .filter(|l| l.seq == b.last)
            .map(|l| l.hash.clone())
            .unwrap_or_default();
        last_key = Some(&o.key);
    }
    out
}

/// `seq` and `prev` of the first line of `body`.
fn first_record(body: &[u8]) -> Option<(u64, String)> {
    let end = body.iter().position(|&b| b == b'\n')?;
    let v: serde_json::Value = serde_json::from_slice(&body[..end]).ok()?;
    Some((
        v.get("seq")?.as_u64()?,
        v.get("prev")?.as_str()?.to_string(),
    ))
}

fn host_matches(line: &[u8], host_id: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            v.get("host_id")
                .and_then(|h| h.as_str().map(|h| h == host_id))
        })
        .unwrap_or(false)
}

/// Compare this host's local chain with what it shipped of the same chain. The local log
/// must hold every shipped record, unchanged: a shorter log had its tail cut after shipping,
/// a different record was rewritten.
pub fn compare_local(shipped: &ChainCheck, local: &[Line]) -> Vec<String> {
    let mut problems = Vec::new();
    let local_last = local.last().map_or(0, |l| l.seq);
    for l in local {
        if let Some(h) = shipped.hashes.get(&l.seq)
            && *h != l.hash
        {
            problems.push(format!(
                "local log: record seq {} differs from the one shipped: it was rewritten after shipping",
                l.seq
            ));
            break;
        }
    }
    if local_last < shipped.last_seq {
        problems.push(format!(
            "local log: ends at seq {local_last}, but this host shipped records up to seq {}: its tail was cut after shipping",
            shipped.last_seq
        ));
    }
    problems
}

/// Fetch, check and print; returns the exit code (1 when anything failed).
pub async fn verify(cfg: &Config, uri: &str, host: Option<&str>) -> Result<i32> {
    let (bucket, prefix) = parse_uri(uri).map_err(p3_executor::error::Error::Usage)?;
    let store = Store::connect(&settings(cfg.audit.s3.as_ref(), &bucket)).await?;
    let list_prefix = match host {
        Some(h) => host_dir(&prefix, h),
        None => dir(&prefix),
    };
    let objects = fetch(&store, &prefix, &list_prefix).await?;
    let mut chains: BTreeMap<(String, String), Vec<Object>> = BTreeMap::new();
    let mut foreign = Vec::new();
    for o in objects {
        match o {
            Ok(o) => chains
                .entry((o.batch.host_id.clone(), o.batch.chain.clone()))
                .or_default()
                .push(o),
            Err(key) => foreign.push(key),
        }
    }
    let mut failed = false;
    let local = local_chain(cfg, host);
    if let Some(l) = &local
        && let Some(chain) = &l.chain
        && l.state_seq > 0
        && !chains.contains_key(&(l.host_id.clone(), chain.clone()))
    {
        failed = true;
        println!(
            "FAIL host {} chain {chain}: this host shipped records up to seq {}, but the bucket holds none of them",
            l.host_id, l.state_seq
        );
    }
    if let Some(l) = &local {
        let mine: Vec<(String, Option<String>, u64)> = chains
            .iter()
            .filter(|((h, _), _)| *h == l.host_id)
            .map(|((_, c), objs)| {
                let last = objs.iter().map(|o| o.batch.last).max().unwrap_or(0);
                (c.clone(), chain_started(objs), last)
            })
            .collect();
        for problem in compare_chains(l, &mine) {
            match problem {
                Judged::Fail(text) => {
                    failed = true;
                    println!("FAIL host {}: {text}", l.host_id);
                }
                Judged::Explained(text) => println!("OK   host {}: {text}", l.host_id),
            }
        }
    }
    for ((host_id, chain), mut objs) in chains {
        objs.sort_by_key(|o| (o.batch.first, o.batch.last));
        let c = check_chain(&objs);
        let mut problems = c.problems.clone();
        let mut compared = "";
        if let Some(l) = &local
            && l.host_id == host_id
            && l.chain.as_deref() == Some(chain.as_str())
        {
            problems.extend(compare_local(&c, &l.lines));
            compared = ", local log agrees";
        }
        if problems.is_empty() {
            println!(
                "OK   host {host_id} chain {chain}: {} object(s), records 1..{}{compared}",
                c.objects, c.last_seq
            );
        } else {
            failed = true;
            println!(
                "FAIL host {host_id} chain {chain}: {} object(s), first problem: {}",
                c.objects, problems[0]
            );
            for p in &problems[1..] {
                println!("     {p}");
            }
        }
    }
    for key in foreign {
        println!("note: s3://{bucket}/{key} is not a shipped batch (ignored)");
    }
    Ok(i32::from(failed))
}

/// The local side of `verify --s3` on a host that ships.
#[derive(Debug, Default)]
pub struct Local {
    /// This host's id.
    pub host_id: String,
    /// The log.
    pub path: std::path::PathBuf,
    /// Its chain id (None: the log is empty or missing).
    pub chain: Option<String>,
    /// Its records that verify.
    pub lines: Vec<Line>,
    /// How far the watermark says this chain was shipped.
    pub state_seq: u64,
    /// Logs moved aside next to it (`<log>.<anything>`, the README's fix for a damaged log):
    /// each file and its chain id.
    pub moved_aside: Vec<(std::path::PathBuf, String)>,
}

/// This host's local log, when the config's host is the one asked about and it ships.
fn local_chain(cfg: &Config, host: Option<&str>) -> Option<Local> {
    let host_id = p3_executor::config::host_id(&cfg.state_root)?;
    if host.is_some_and(|h| h != host_id) || cfg.audit.s3.is_none() {
        return None;
    }
    let path = cfg.audit.path.clone();
    let text = std::fs::read(&path).unwrap_or_default();
    let lines = read_chain(&text, 0, GENESIS.into()).lines;
    let chain = lines.first().map(|l| shipped::chain_id(&l.hash));
    let state_seq = shipped::load(&cfg.state_root)
        .filter(|s| Some(&s.chain) == chain.as_ref())
        .map_or(0, |s| s.last_seq);
    Some(Local {
        host_id,
        moved_aside: moved_aside(&path),
        path,
        chain,
        lines,
        state_seq,
    })
}

/// Files next to the log named `<log>.<suffix>` whose first line is a record: each with the
/// chain id that record starts (read bounded: the first MiB).
fn moved_aside(log: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    use std::io::Read;
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        if !file_name.starts_with(&prefix) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let mut head = Vec::new();
        if std::fs::File::open(e.path())
            .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
            .is_err()
        {
            continue;
        }
        if let Some(first) = read_chain(&head, 0, GENESIS.into()).lines.first() {
            out.push((e.path(), shipped::chain_id(&first.hash)));
        }
    }
    out.sort();
    out
}

/// When a shipped chain's first record was written (None: it cannot be read).
fn chain_started(objs: &[Object]) -> Option<String> {
    let first = objs.iter().min_by_key(|o| o.batch.first)?;
    let line = first.body.as_ref()?.split(|&b| b == b'\n').next()?;
    let r: p3_executor::audit::AuditRecord = serde_json::from_slice(line).ok()?;
    Some(r.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

/// What [`compare_chains`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    /// A failure (exit 1).
    Fail(String),
    /// A change of chain an operator action explains.
    Explained(String),
}

/// Compare the local log with every chain this host shipped (`mine`: chain id, when its
/// first record was written, its last shipped seq). The local log must be the latest shipped
/// chain, or a new one that follows it; an empty log, or a log that is another chain, fails
/// unless the latest shipped chain was moved aside next to the log (the README's fix for a
/// damaged log: the next record starts a new chain).
pub fn compare_chains(local: &Local, mine: &[(String, Option<String>, u64)]) -> Vec<Judged> {
    let Some((latest, _, latest_last)) = mine.iter().max_by(|a, b| a.1.cmp(&b.1)) else {
        return Vec::new();
    };
    let log = local.path.display();
    let moved = local
        .moved_aside
        .iter()
        .find(|(_, c)| c == latest)
        .map(|(p, _)| p.display().to_string());
    let explained = |what: &str| match &moved {
        Some(path) => Judged::Explained(format!(
            "{what}; chain {latest} (shipped up to seq {latest_last}) was moved aside to {path}, as the README says to do with a damaged log: not a failure"
        )),
        None => Judged::Fail(format!(
            "{what}, but this host shipped chain {latest} up to seq {latest_last} and no file next to the log holds it: the log was emptied or replaced after shipping (if it was moved aside, keep it next to the log as {log}.damaged-<time>)"
        )),
    };
    match &local.chain {
        None => vec![explained(&format!("the local log {log} is empty"))],
        Some(c) if c == latest => Vec::new(),
        Some(c) if mine.iter().any(|(m, _, _)| m == c) => vec![Judged::Fail(format!(
            "the local log {log} holds chain {c}, but this host shipped a later chain {latest} (up to seq {latest_last}): the log was replaced by an older one"
        ))],
        Some(c) => vec![explained(&format!(
            "the local log {log} starts a new chain {c} ({} record(s), not shipped yet)",
            local.lines.len()
        ))],
    }
}

/// Every object under `list_prefix` with its versions and current content; Err(key) for keys
/// that are not batches.
pub async fn fetch(
    store: &Store,
    prefix: &str,
    list_prefix: &str,
) -> Result<Vec<std::result::Result<Object, String>>> {
    let versions = store.versions(list_prefix).await?;
    let mut by_key: BTreeMap<String, Vec<Version>> = BTreeMap::new();
    for v in versions {
        by_key.entry(v.key.clone()).or_default().push(v);
    }
    let mut out = Vec::new();
    let mut bodies = tokio::task::JoinSet::new();
    for (key, vs) in by_key {
        let Some(batch) = BatchKey::parse(prefix, &key) else {
            out.push(Err(key));
            continue;
        };
        let deleted = vs.iter().any(|v| v.is_latest && v.delete_marker);
        let versions = vs.iter().filter(|v| !v.delete_marker).count();
        let object = Object {
            key: key.clone(),
            batch,
            versions,
            body: None,
        };
        if deleted {
            out.push(Ok(object));
        } else {
            bodies.spawn(fetch_body(store.clone(), object));
        }
        // Bounded concurrency: at most 16 GETs in flight.
        while bodies.len() >= 16 {
            out.push(Ok(bodies.join_next().await.expect("a task")??));
        }
    }
    while let Some(o) = bodies.join_next().await {
        out.push(Ok(o??));
    }
    Ok(out)
}

async fn fetch_body(store: Store, mut object: Object) -> Result<Object> {
    object.body = Some(store.get(&object.key).await?);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p3_executor::audit::record_hash;

    /// Lines of a chain of `n` records of host `h`, as `append` writes them.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut v = serde_json::json!({
                    "seq": seq, "prev": prev, "host": "runner", "host_id": "h",
                    "event": "grant", "decision": "granted", "reason": format!("r{seq}"),
                    "time": "2026-11-30T00:00:00Z",
                });
                let hash = record_hash(&v);
                v["hash"] = hash.clone().into();
                prev = hash;
                let mut line = serde_json::to_vec(&v).unwrap();
                line.push(b'\n');
                line
            })
            .collect()
    }

    fn object(lines: &[Vec<u8>], first: u64, last: u64) -> Object {
        let batch = BatchKey {
            host_id: "h".into(),
            chain: "c".into(),
            first,
            last,
        };
        Object {
            key: batch.render("p"),
            batch,
            versions: 1,
            body: Some(lines[first as usize - 1..last as usize].concat()),
        }
    }

    /// Objects 1-3, 4-6, 7-9 of a nine-record chain.
    fn three() -> (Vec<Vec<u8>>, Vec<Object>) {
        let lines = chain(9);
        let objs = vec![
            object(&lines, 1, 3),
            object(&lines, 4, 6),
            object(&lines, 7, 9),
        ];
        (lines, objs)
    }

    fn first_problem(objs: &[Object]) -> String {
        check_chain(objs)
            .problems
            .first()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn an_intact_trail_verifies() {
        let (_, objs) = three();
        let c = check_chain(&objs);
        assert_eq!(c.problems, Vec::<String>::new());
        assert_eq!((c.last_seq, c.hashes.len()), (9, 9));
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let (lines, objs) = three();
        let key = |i: usize| objs[i].key.clone();
        type Tamper = fn(&mut Vec<Object>, &[Vec<u8>]);
        let cases: Vec<(&str, Tamper, String)> = vec![
            (
                "middle object deleted (version removed)",
                |o, _| {
                    o.remove(1);
                },
                format!(
                    "gap: records 4..6 are missing between {} and {}",
                    key(0),
                    key(2)
                ),
            ),
            (
                "first object deleted",
                |o, _| {
                    o.remove(0);
                },
                format!("gap: records 1..3 are missing before {}", key(1)),
            ),
            (
                "delete marker",
                |o, _| o[1].body = None,
                format!("{}: deleted", key(1)),
            ),
            (
                "overwritten with the same content",
                |o, _| o[2].versions = 2,
                format!("{}: overwritten after shipping (2 versions)", key(2)),
            ),
            (
                "a record edited",
                |o, _| {
                    let body = o[1].body.as_mut().unwrap();
                    let at = body.windows(2).position(|w| w == b"r5").unwrap();
                    body[at + 1] = b'6';
                },
                format!("{}: the record after seq 4 does not match its hash", key(1)),
            ),
            (
                "an object cut short",
                |o, l| o[2].body = Some(l[6..8].concat()),
                format!("{}: holds records 7..8, its key says 7..9", key(2)),
            ),
            (
                "an object replaced by another run of records",
                |o, l| o[1].body = Some(l[6..9].concat()),
                format!("{}: seq 7 follows seq 3", key(1)),
            ),
        ];
        for (what, tamper, expected) in cases {
            let mut o = objs.clone();
            tamper(&mut o, &lines);
            let got = first_problem(&o);
            assert!(got.starts_with(&expected), "{what}: {got}");
        }
    }

    #[test]
    fn a_rehashed_replacement_breaks_the_next_objects_link() {
        // Someone rewrote records 4..6 and re-hashed them consistently: the object is a valid
        // chain on its own, but record 7 no longer continues it.
        let (lines, mut objs) = three();
        let mut forged: Vec<serde_json::Value> = lines[3..6]
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let mut prev = serde_json::from_slice::<serde_json::Value>(&lines[2]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_string();
        let mut body = Vec::new();
        for v in &mut forged {
            v["reason"] = "nothing to see".into();
            v["prev"] = prev.clone().into();
            v["hash"] = record_hash(v).into();
            prev = v["hash"].as_str().unwrap().into();
            body.extend(serde_json::to_vec(v).unwrap());
            body.push(b'\n');
        }
        objs[1].body = Some(body);
        let got = first_problem(&objs);
        assert!(
            got.starts_with(&format!(
                "{}: record seq 7 does not continue seq 6",
                objs[2].key
            )),
            "{got}"
        );
    }

    #[test]
    fn a_record_of_another_host_is_named() {
        let (_, mut objs) = three();
        objs[0].batch.host_id = "other".into();
        assert!(first_problem(&objs).contains("names another host"));
    }

    #[test]
    fn the_local_log_must_be_the_latest_shipped_chain_or_explained() {
        let mine = vec![
            (
                "old".to_string(),
                Some("2026-01-01T00:00:00Z".to_string()),
                5,
            ),
            (
                "new".to_string(),
                Some("2026-02-01T00:00:00Z".to_string()),
                3,
            ),
        ];
        let local = |chain: Option<&str>, moved: &[(&str, &str)]| Local {
            host_id: "h".into(),
            path: "/var/log/p3/audit.jsonl".into(),
            chain: chain.map(str::to_string),
            moved_aside: moved
                .iter()
                .map(|(p, c)| (p.into(), c.to_string()))
                .collect(),
            ..Local::default()
        };
        assert_eq!(compare_chains(&local(Some("new"), &[]), &mine), vec![]);
        let fail = |j: &[Judged]| matches!(j, [Judged::Fail(_)]);
        let empty = compare_chains(&local(None, &[]), &mine);
        assert!(fail(&empty), "{empty:?}");
        let Judged::Fail(text) = &empty[0] else {
            unreachable!()
        };
        assert!(
            text.contains("is empty") && text.contains("chain new up to seq 3"),
            "{text}"
        );
        assert!(fail(&compare_chains(&local(Some("old"), &[]), &mine)));
        assert!(fail(&compare_chains(&local(Some("fresh"), &[]), &mine)));
        // Moved aside per the README: explained, whether or not the next record came yet.
        let moved = [("/var/log/p3/audit.jsonl.damaged-1", "new")];
        for chain in [None, Some("fresh")] {
            let j = compare_chains(&local(chain, &moved), &mine);
            assert!(
                matches!(&j[..], [Judged::Explained(t)] if t.contains("moved aside to /var/log/p3/audit.jsonl.damaged-1")),
                "{j:?}"
            );
        }
        // Moving aside an older chain explains nothing.
        let j = compare_chains(&local(None, &[("/x.old", "old")]), &mine);
        assert!(fail(&j), "{j:?}");
    }

    #[test]
    fn the_local_log_must_hold_what_was_shipped() {
        let (lines, objs) = three();
        let shipped = check_chain(&objs);
        let local = |n: usize| read_chain(&lines[..n].concat(), 0, GENESIS.into()).lines;
        // Same records: fine.
        assert_eq!(compare_local(&shipped, &local(9)), Vec::<String>::new());
        // Cut after shipping.
        let p = compare_local(&shipped, &local(7));
        assert!(
            p[0].contains("ends at seq 7") && p[0].contains("tail was cut"),
            "{p:?}"
        );
        // Cut, then new records appended in place of the shipped ones.
        let mut rewritten = chain(9);
        let mut v: serde_json::Value = serde_json::from_slice(&rewritten[7]).unwrap();
        v["reason"] = "other".into();
        v["hash"] = record_hash(&v).into();
        rewritten[7] = [serde_json::to_vec(&v).unwrap(), b"\n".to_vec()].concat();
        let local = read_chain(&rewritten[..8].concat(), 0, GENESIS.into()).lines;
        let p = compare_local(&shipped, &local);
        assert!(p[0].contains("record seq 8 differs"), "{p:?}");
    }
}
