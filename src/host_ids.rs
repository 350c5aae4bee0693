//! Ids the host already gives someone: accounts' uids and groups' gids (`/etc/passwd`,
//! `/etc/group`) and users' subordinate ids (`/etc/subuid`, `/etc/subgid`), which `newuidmap`
//! lets a user become inside a user namespace of their own (rootless podman). A job holding such an id would share it with
//! that user: their container could read the job's files and credentials and signal its
//! processes. So the pools never lease one, and `check` names the lines that overlap a range.
//!
//! Parsing is pure ([`accounts`], [`subordinate`]); [`uids`] and [`gids`] read the files.
//! Accounts that only a directory service knows (LDAP, sssd, winbind) are not in these files:
//! the uid pool also asks the user database about the one uid it is about to lease. Groups
//! and subordinate ids such a service defines are not seen.

/// Ids one host entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// The entry as written, shortened for accounts (`name (uid)`), for messages.
    pub(crate) what: String,
    /// The ids, inclusive.
    pub(crate) range: [u32; 2],
}

impl Held {
    /// Does this entry hold any id of `[lo, hi]`?
    pub(crate) fn meets(&self, [lo, hi]: [u32; 2]) -> bool {
        self.range[0] <= hi && lo <= self.range[1]
    }

    /// Does this entry hold `id`?
    pub(crate) fn holds(&self, id: u32) -> bool {
        (self.range[0]..=self.range[1]).contains(&id)
    }
}

/// The ids of the entries of `passwd` or `group` text (`name:x:id:...`).
pub(crate) fn accounts(text: &str) -> Vec<Held> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid: u32 = f.nth(1)?.trim().parse().ok()?;
            Some(Held {
                what: format!("{name} ({uid})"),
                range: [uid, uid],
            })
        })
        .collect()
}

/// The ranges of `subuid`/`subgid` text (`name:first:count`); ranges past the last id are cut
/// there, empty ones skipped.
pub(crate) fn subordinate(text: &str) -> Vec<Held> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let mut f = l.split(':');
            let (_name, first, count) = (f.next()?, f.next()?, f.next()?);
            let first: u32 = first.trim().parse().ok()?;
            let count: u64 = count.trim().parse().ok()?;
            let last = (u64::from(first) + count)
                .checked_sub(1)?
                .min(u64::from(u32::MAX));
            (count > 0).then(|| Held {
                what: l.to_string(),
                range: [first, last as u32],
            })
        })
        .collect()
}

/// The id ranges sssd maps a directory's users and groups into (`id_provider = ad`, or
/// `ldap_id_mapping = true`), one per `[domain/NAME]` section of `sssd.conf` `texts` (the main
/// file, then `conf.d/` in order: a later key wins). The ids a domain's members get are a slice
/// of the range chosen by a hash of the domain's SID, so any id of it may be a user's.
pub(crate) fn sssd_id_mapping(texts: &[String]) -> Vec<Held> {
    use std::collections::BTreeMap;
    let mut domains: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for text in texts {
        let mut section: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().strip_prefix("domain/").map(str::to_string);
                continue;
            }
            let (Some(domain), Some((key, value))) = (&section, line.split_once('=')) else {
                continue;
            };
            domains
                .entry(domain.clone())
                .or_default()
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    domains
        .into_iter()
        .filter_map(|(name, keys)| {
            let get = |k: &str| keys.get(k).map(String::as_str);
            let mapped = match get("ldap_id_mapping") {
                Some(v) => v.eq_ignore_ascii_case("true"),
                None => get("id_provider") == Some("ad"),
            };
            let num =
                |k: &str, default: u64| get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
            let (min, max) = (
                num("ldap_idmap_range_min", 200_000),
                num("ldap_idmap_range_max", 2_000_200_000),
            );
            (mapped && min < max && min <= u64::from(u32::MAX)).then(|| Held {
                what: format!("sssd domain {name} maps its ids into {min}-{}", max - 1),
                range: [min as u32, (max - 1).min(u64::from(u32::MAX)) as u32],
            })
        })
        .collect()
}

/// The ranges sssd maps directory ids into on this host (`/etc/sssd/sssd.conf` and
/// `conf.d/*.conf`, root-only files).
pub(crate) fn directory_ranges() -> Vec<Held> {
    let mut texts = vec![read("/etc/sssd/sssd.conf")];
    let mut snippets: Vec<_> = std::fs::read_dir("/etc/sssd/conf.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    snippets.sort();
    texts.extend(
        snippets
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default()),
    );
    sssd_id_mapping(&texts)
}

/// Whether the `passwd:` line of `nsswitch.conf` text names a source beyond the local files
/// (`files`, `compat`) and systemd's (`systemd`: dynamic and home-directory users, far below
/// any job range): a directory service such as `sss`, `winbind` or `ldap`, whose accounts
/// only a lookup finds. Without a `passwd:` line glibc uses the files.
pub(crate) fn passwd_beyond_files(nsswitch: &str) -> bool {
    nsswitch
        .lines()
        .find_map(|l| l.trim().strip_prefix("passwd:"))
        .is_some_and(|sources| {
            sources
                .split_whitespace()
                .filter(|s| !s.starts_with('['))
                .any(|s| !matches!(s, "files" | "compat" | "systemd"))
        })
}

/// [`passwd_beyond_files`] of this host's `/etc/nsswitch.conf`.
pub(crate) fn host_passwd_beyond_files() -> bool {
    passwd_beyond_files(&read("/etc/nsswitch.conf"))
}

/// Host-held uids: accounts and subordinate uids.
pub(crate) fn uids() -> Vec<Held> {
    let mut held = accounts(&read("/etc/passwd"));
    held.extend(tagged("/etc/subuid", subordinate(&read("/etc/subuid"))));
    held
}

/// Host-held gids: groups and subordinate gids.
pub(crate) fn gids() -> Vec<Held> {
    let mut held = tagged("/etc/group", accounts(&read("/etc/group")));
    held.extend(tagged("/etc/subgid", subordinate(&read("/etc/subgid"))));
    held
}

/// The entries of `held` that meet `[lo, hi]`, described and joined for a message.
pub(crate) fn describe(held: &[Held], range: [u32; 2]) -> Option<String> {
    let hits: Vec<&str> = held
        .iter()
        .filter(|h| h.meets(range))
        .map(|h| h.what.as_str())
        .collect();
    (!hits.is_empty()).then(|| hits.join(", "))
}

fn tagged(file: &str, held: Vec<Held>) -> Vec<Held> {
    held.into_iter()
        .map(|h| Held {
            what: format!("{file}: {}", h.what),
            ..h
        })
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_parse_into_the_ids_they_hold() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n\
                      broken line\nbad:x:notanumber:1::/:/bin/false\n";
        let held = accounts(passwd);
        assert_eq!(
            held.iter()
                .map(|h| (h.what.as_str(), h.range))
                .collect::<Vec<_>>(),
            [("root (0)", [0, 0]), ("alice (1000)", [1000, 1000])]
        );
        // Debian's useradd gives each new user the next 65,536 ids from 100000: the second
        // and third users' ranges fall in the default job_uid_range [200000, 265535].
        let subuid = "alice:100000:65536\nbob:165536:65536\n 1001:231072:65536 \nempty:5:0\n\
                      huge:4294967000:1000\nnonsense\n";
        let held = subordinate(subuid);
        let ranges: Vec<_> = held.iter().map(|h| h.range).collect();
        assert_eq!(
            ranges,
            [
                [100000, 165535],
                [165536, 231071],
                [231072, 296607],
                [4294967000, u32::MAX]
            ]
        );
        assert_eq!(held[2].what, "1001:231072:65536");
        let default = crate::config::DEFAULT_JOB_UID_RANGE;
        assert_eq!(
            describe(&held, default).as_deref(),
            Some("bob:165536:65536, 1001:231072:65536")
        );
        assert_eq!(describe(&held, [300000, 400000]), None);
        assert!(held[1].holds(200000) && !held[1].holds(231072));
        assert!(held[0].meets([165535, 165535]) && !held[0].meets([165536, 200000]));
    }

    #[test]
    fn a_directory_service_in_nsswitch_is_told_from_the_local_sources() {
        let cases = [
            ("passwd:         files systemd\ngroup: files sss\n", false),
            ("passwd: compat\n", false),
            ("# passwd: sss\npasswd: files\n", false),
            ("", false),
            ("passwd:         files sss\n", true),
            ("passwd: files [NOTFOUND=return] winbind\n", true),
            ("passwd: ldap files\n", true),
        ];
        for (text, want) in cases {
            assert_eq!(passwd_beyond_files(text), want, "{text:?}");
        }
    }

    #[test]
    fn sssd_domains_that_map_ids_are_found_with_their_ranges() {
        let main = "[sssd]\ndomains = corp.example.com, lab, files\n\n\
                    [domain/corp.example.com]\nid_provider = ad\n# a comment\n\n\
                    [domain/lab]\nid_provider = ldap\nldap_id_mapping = True\n\
                    ldap_idmap_range_min = 3000000000\nldap_idmap_range_max = 3000400000\n\n\
                    [domain/files]\nid_provider = files\n"
            .to_string();
        let held = sssd_id_mapping(std::slice::from_ref(&main));
        let got: Vec<_> = held.iter().map(|h| (h.what.as_str(), h.range)).collect();
        assert_eq!(
            got,
            [
                (
                    "sssd domain corp.example.com maps its ids into 200000-2000199999",
                    [200_000, 2_000_199_999]
                ),
                (
                    "sssd domain lab maps its ids into 3000000000-3000399999",
                    [3_000_000_000, 3_000_399_999]
                ),
            ]
        );
        // A conf.d snippet read after the main file turns the AD domain's mapping off.
        let off = "[domain/corp.example.com]\nldap_id_mapping = false\n".to_string();
        let held = sssd_id_mapping(&[main, off]);
        assert_eq!(held.len(), 1);
        assert!(held[0].what.starts_with("sssd domain lab "));
        assert!(sssd_id_mapping(&[String::new()]).is_empty());
    }
}
