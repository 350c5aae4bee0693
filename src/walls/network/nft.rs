//! Talking to nftables: one atomic JSON transaction per change (what `nft -j -f` commits), and
//! the table read back as `nft -j list table` prints it. The only I/O of the network wall
//! besides name lookups.
//!
//! With `[network] nft` the default (`nft`), both go through libnftables in-process
//! ([`super::libnftables`]) when the library loads: the program is a front end to it, and a
//! process start was most of the cost (~5 ms of prepare against ~2 ms). Any other program an
//! operator names (a path, a wrapper) runs as a process, as does `nft` on a host without the
//! library: the same transaction through a memfd, bounded by [`TIMEOUT`].
//!
//! Why nftables' own tool and library and not netlink from Rust, for every rule: the tool is
//! what operators already use to read the same table (`nft list table inet p3_executor`), its
//! JSON schema is documented and stable (libnftables-json(5)), a rendered value can never
//! inject syntax (comments and log prefixes are JSON strings, not parsed text), and the Rust
//! netlink crates for nftables are either bindings to libnftnl (a C library to link into the
//! binary the runner starts for every stage) or young, thinly maintained pure-Rust ports. The
//! one exception is prepare's fast path, `netlink.rs`: a job's map elements when its
//! policy's chain is already there, two set elements and a jump, where the library's load,
//! context and cache cost ~4 ms against the kernel's ~0.1.

use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::error::NetworkError;
use super::libnftables::{self, Libnftables};
use super::render::{self, JobKey};

/// `[network] nft`'s default: the program whose library may run in-process instead.
const DEFAULT_PROGRAM: &str = "nft";

/// Bound on one nft run (it takes milliseconds; a hung netlink socket must not hang a job).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The nft program of the config.
#[derive(Debug, Clone)]
pub struct Nft {
    program: String,
}

/// What the table holds, as `nft -j list table` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The verdict map exists.
    pub has_map: bool,
    /// The output base chain exists.
    pub has_output: bool,
    /// Map elements: the key as nft writes it (a uid, or `{"range": [a, b]}`), and the chain
    /// it jumps to.
    pub elements: Vec<(Value, String)>,
    /// The chains besides `output` and `jobs`: policy chains, and job chains of executors
    /// before them (`uid_<uid>`).
    pub chains: Vec<String>,
    /// The tag map and the peer set exist (jobs apart on loopback).
    pub has_apart: bool,
    /// Tag-map elements: the key as nft writes it, and its tag.
    pub tags: Vec<(Value, u32)>,
    /// Loopback connections crossed since the rule was made (its counter), when it is there.
    pub crossed: Option<u64>,
}

impl Listing {
    /// The uid of a map key that is a single uid (None for a range).
    pub fn key_uid(key: &Value) -> Option<u32> {
        key.as_u64().and_then(|k| u32::try_from(k).ok())
    }

    /// `[first, last]` of a map key that is a range (None for a single uid).
    pub fn key_range(key: &Value) -> Option<[u32; 2]> {
        let r = key["range"].as_array()?;
        let id = |v: &Value| v.as_u64().and_then(|k| u32::try_from(k).ok());
        match r.as_slice() {
            [a, b] => Some([id(a)?, id(b)?]),
            _ => None,
        }
    }

    /// Is `uid` a key of the map?
    pub fn mapped(&self, uid: u32) -> bool {
        self.elements
            .iter()
            .any(|(k, _)| Self::key_uid(k) == Some(uid))
    }

    /// The keys in the map that are `uid` or the range `subids`.
    pub fn keys_of(&self, uid: u32, subids: Option<[u32; 2]>) -> Vec<Value> {
        self.elements
            .iter()
            .filter(|(k, _)| Self::is_key_of(k, uid, subids))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Everything the table holds for `uid` and the range `subids`: map keys, tag keys and
    /// their peer pairs (a previous holder's, whatever its tag).
    pub fn elements_of(&self, uid: u32, subids: Option<[u32; 2]>) -> render::Elements {
        self.elements_where(self.keys_of(uid, subids), |k| {
            Self::is_key_of(k, uid, subids)
        })
    }

    /// Is `key` the uid `uid`, or the range `subids`?
    fn is_key_of(key: &Value, uid: u32, subids: Option<[u32; 2]>) -> bool {
        Self::key_uid(key) == Some(uid) || (subids.is_some() && Self::key_range(key) == subids)
    }

    /// `map` keys, and the tag keys `of` selects with their peer pairs.
    pub fn elements_where(&self, map: Vec<Value>, of: impl Fn(&Value) -> bool) -> render::Elements {
        let tagged: Vec<&(Value, u32)> = self.tags.iter().filter(|(k, _)| of(k)).collect();
        render::Elements {
            map,
            tags: tagged.iter().map(|(k, _)| k.clone()).collect(),
            peers: tagged.iter().map(|(k, t)| render::peer(k, *t)).collect(),
        }
    }
}

/// Parse `nft -j list table` output (pure).
pub fn parse_listing(json: &Value) -> Result<Listing, String> {
    let items = json["nftables"]
        .as_array()
        .ok_or("no \"nftables\" array in nft's output")?;
    let mut out = Listing::default();
    let (mut has_tags, mut has_peers) = (false, false);
    for item in items {
        if let Some(map) = item.get("map") {
            if map["name"] == render::MAP {
                out.has_map = true;
                for e in map["elem"].as_array().into_iter().flatten() {
                    let target = e[1]["jump"]["target"]
                        .as_str()
                        .ok_or_else(|| format!("map element {e} does not jump to a chain"))?;
                    out.elements.push((e[0].clone(), target.to_string()));
                }
            } else if map["name"] == render::TAGS {
                has_tags = true;
                for e in map["elem"].as_array().into_iter().flatten() {
                    let tag = e[1]
                        .as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .ok_or_else(|| format!("tag map element {e} has no tag"))?;
                    out.tags.push((e[0].clone(), tag));
                }
            }
        } else if item["set"]["name"] == render::PEERS {
            has_peers = true;
        } else if item["rule"]["comment"] == render::CROSSING {
            let counted = item["rule"]["expr"].as_array().into_iter().flatten();
            let packets = counted
                .filter_map(|e| e["counter"]["packets"].as_u64())
                .next();
            out.crossed = Some(out.crossed.unwrap_or(0) + packets.unwrap_or(0));
        } else if let Some(chain) = item.get("chain") {
            let name = chain["name"].as_str().unwrap_or_default();
            if name == render::OUTPUT && chain["hook"] == "output" {
                out.has_output = true;
            } else if name != render::OUTPUT && name != render::JOBS {
                out.chains.push(name.to_string());
            }
        }
    }
    out.has_apart = has_tags && has_peers;
    Ok(out)
}

impl Nft {
    /// The program named by `[network] nft`.
    pub fn new(program: &str) -> Self {
        Nft {
            program: program.to_string(),
        }
    }

    /// Is nftables there at all: the program, or the library that stands in for it
    /// (the nftables package installs both)?
    pub fn installed(&self) -> bool {
        self.library().is_some() || which::which(&self.program).is_ok()
    }

    /// Do transactions and listings run in-process (libnftables), not as the program?
    pub fn in_process(&self) -> bool {
        self.library().is_some()
    }

    /// May prepare add a job's elements over netlink itself (`netlink.rs`)? Only where
    /// the library would stand in for the program: the default program, as root. Loads
    /// nothing.
    pub fn netlink_allowed(&self) -> bool {
        self.program == DEFAULT_PROGRAM && nix::unistd::geteuid().is_root()
    }

    /// libnftables, when the program is the default, we are root, and the library loads
    /// (loaded here, on the first call that needs it). Not for other users: refused, the
    /// library prints its hint ("you must be root") on our stderr, not into its error text,
    /// and the program's whole message is what `check` shows them.
    fn library(&self) -> Option<&'static Libnftables> {
        if self.program == DEFAULT_PROGRAM && nix::unistd::geteuid().is_root() {
            libnftables::load()
        } else {
            None
        }
    }

    fn run(&self, args: &[&str], what: &str) -> Result<Vec<u8>, NetworkError> {
        if which::which(&self.program).is_err() {
            return Err(NetworkError::NftMissing {
                program: self.program.clone(),
            });
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(args);
        let out = crate::command::run_bounded(cmd, TIMEOUT)?;
        if !out.status.success() {
            return Err(NetworkError::Nft {
                what: what.to_string(),
                stderr: out.stderr_text(),
            });
        }
        Ok(out.stdout)
    }

    /// Apply one transaction (all of it or nothing: nft commits it as one batch).
    pub fn apply(&self, tx: &Value, what: &str) -> Result<(), NetworkError> {
        // One write: serde_json writes token by token, and an unbuffered file took a syscall
        // per quote and colon (thousands per job at prepare).
        let json = serde_json::to_string(tx).expect("JSON values serialize");
        if let Some(lib) = self.library() {
            return lib.run(&json, what).map(drop);
        }
        // The JSON goes through a memfd nft opens by path: the bounded runner closes stdin, and
        // a file on disk would be a leftover when we are killed.
        let mut file = memfd()?;
        file.write_all(json.as_bytes())
            .and_then(|()| file.rewind())
            .map_err(|e| NetworkError::Io {
                what: "write the nft transaction".into(),
                source: e,
            })?;
        // Our fd stays close-on-exec; nft (root, like us) opens it through our /proc entry.
        let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        self.run(&["-j", "-f", &path], what).map(drop)
    }

    /// The table's contents; None when there is no such table.
    pub fn list(&self, table: &str) -> Result<Option<Listing>, NetworkError> {
        let what = "list the table";
        let listed = match self.library() {
            Some(lib) => lib
                .run(&format!("list table inet {table}"), what)
                .map(String::into_bytes),
            None => self.run(&["-j", "list", "table", "inet", table], what),
        };
        match listed {
            Ok(stdout) => {
                let json: Value =
                    serde_json::from_slice(&stdout).map_err(|e| NetworkError::Nft {
                        what: "read the table".into(),
                        stderr: format!("nft's JSON output does not parse: {e}"),
                    })?;
                parse_listing(&json)
                    .map(Some)
                    .map_err(|stderr| NetworkError::Nft {
                        what: "read the table".into(),
                        stderr,
                    })
            }
            Err(NetworkError::Nft { stderr, .. }) if stderr.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the map elements of the job keyed `key`, which jump to `chain`, from `table`
    /// (idempotent).
    pub fn remove_job(&self, table: &str, key: &JobKey, chain: &str) -> Result<(), NetworkError> {
        self.apply(
            &render::remove_job(table, key, chain),
            "remove the job's rules",
        )
    }
}

fn memfd() -> Result<std::fs::File, NetworkError> {
    let fd = nix::sys::memfd::memfd_create(c"p3-nft", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| NetworkError::Io {
            what: "create a memfd for the nft transaction".into(),
            source: e.into(),
        })?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listing_reads_elements_and_chains() {
        let out = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "t"}},
            {"map": {"name": "job_uids", "elem": [
                [200001, {"jump": {"target": "policy_ab"}}],
                [{"range": [300000, 365535]}, {"jump": {"target": "policy_ab"}}],
                [200002, {"jump": {"target": "uid_200002"}}]
            ]}},
            {"chain": {"name": "output", "hook": "output"}},
            {"chain": {"name": "jobs"}},
            {"chain": {"name": "policy_ab"}},
            {"chain": {"name": "uid_200009"}},
            {"rule": {"chain": "output"}}
        ]});
        let l = parse_listing(&out).unwrap();
        assert!(l.has_map && l.has_output);
        assert_eq!(l.chains, ["policy_ab", "uid_200009"]);
        assert_eq!(l.elements.len(), 3);
        assert!(l.mapped(200_001) && l.mapped(200_002) && !l.mapped(200_009));
        assert!(!l.mapped(300_000));
        assert_eq!(l.elements[1].1, "policy_ab");
        assert_eq!(
            Listing::key_range(&l.elements[1].0),
            Some([300_000, 365_535])
        );
        assert_eq!(
            l.keys_of(200_001, Some([300_000, 365_535])),
            [json!(200001), json!({"range": [300000, 365535]})]
        );
        assert_eq!(l.keys_of(200_001, None), [json!(200001)]);
        // A map without elements has no "elem" key.
        let empty = json!({"nftables": [{"map": {"name": "job_uids"}}]});
        assert!(parse_listing(&empty).unwrap().elements.is_empty());
        assert!(parse_listing(&json!({})).is_err());
        assert!(!l.has_apart, "a table made before jobs were kept apart");
    }

    #[test]
    fn listing_reads_tags_and_finds_a_previous_holders_peers() {
        let out = json!({"nftables": [
            {"map": {"name": "job_uids", "elem": [[200001, {"jump": {"target": "policy_ab"}}]]}},
            {"map": {"name": "job_tags", "type": "uid", "map": "mark", "elem": [
                [200001, 200001],
                [{"range": [300000, 365535]}, 200007],
                [200002, 200002]
            ]}},
            {"set": {"name": "job_peers", "type": ["uid", "mark"]}}
        ]});
        let counted = json!({"nftables": [{"rule": {"chain": "output", "comment": render::CROSSING,
            "expr": [{"match": {}}, {"mangle": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}}]});
        assert_eq!(parse_listing(&counted).unwrap().crossed, Some(3));
        let l = parse_listing(&out).unwrap();
        assert!(l.has_apart);
        assert_eq!(l.crossed, None, "no crossing rule listed");
        // The range's tag is a previous holder's (200007): its peer pair is found by the tag.
        let e = l.elements_of(200_001, Some([300_000, 365_535]));
        assert_eq!(e.map, [json!(200001)]);
        assert_eq!(e.tags, [json!(200001), json!({"range": [300000, 365535]})]);
        assert_eq!(
            e.peers,
            [
                json!({"concat": [{"range": [200001, 200001]}, 200001]}),
                json!({"concat": [{"range": [300000, 365535]}, 200007]})
            ]
        );
        let bad = json!({"nftables": [{"map": {"name": "job_tags", "elem": [[1, "x"]]}}]});
        assert!(parse_listing(&bad).is_err());
    }

    #[test]
    fn only_the_default_program_may_run_in_process() {
        // The library stands in for the config's default only: a program an operator or a
        // test names runs as itself.
        let empty: super::super::config::NetworkConfig = toml::from_str("").unwrap();
        assert_eq!(empty.nft, DEFAULT_PROGRAM);
        for other in ["/usr/sbin/nft", "/bin/true", "/nonexistent/nft"] {
            assert!(!Nft::new(other).in_process(), "{other}");
        }
        assert!(!Nft::new("/nonexistent/nft").installed());
    }
}
