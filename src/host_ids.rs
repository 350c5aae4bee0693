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
}
