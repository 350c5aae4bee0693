//! Who jobs run as: the executor must be root to switch users, `job_user` must be an
//! unprivileged account, and a private uid range keeps concurrent jobs apart.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// `job_user` exists and is not root.
pub(super) fn job_user(cfg: &Config, out: &mut Vec<Finding>) {
    match nix::unistd::User::from_name(&cfg.job_user) {
        Ok(Some(u)) if u.uid.is_root() => out.push(finding(
            Severity::Error,
            format!("job_user {:?} is root", cfg.job_user),
            "set job_user to an unprivileged account",
        )),
        Ok(Some(_)) => {}
        _ => out.push(finding(
            Severity::Error,
            format!("job_user {:?} does not exist", cfg.job_user),
            format!(
                "useradd --system --no-create-home --shell /usr/sbin/nologin {}",
                cfg.job_user
            ),
        )),
    }
}

/// Jobs sharing one uid, or a private range that overlaps real accounts.
pub(super) fn uid_range(cfg: &Config, out: &mut Vec<Finding>) {
    let Some([lo, hi]) = cfg.private_uid_range() else {
        out.push(finding(
            Severity::Warning,
            "shared_job_uid = true: concurrent jobs share job_user's uid and could read each other's files and credentials",
            "remove shared_job_uid so each job gets its own uid (from job_uid_range, default [200000, 265535])",
        ));
        return;
    };
    held_ids(
        "job_uid_range",
        [lo, hi],
        &crate::host_ids::uids(),
        "a job would share its uid with that account or user's containers (their files, \
         processes and credentials)",
        out,
    );
}

/// The job and subordinate ranges against the ids a directory service (sssd) maps its users
/// and groups into: a job uid is looked up before it is leased, a subordinate id is not.
pub(super) fn directory_ids(cfg: &Config, out: &mut Vec<Finding>) {
    directory_findings(cfg, &crate::host_ids::directory_ranges(), out);
}

fn directory_findings(cfg: &Config, mapped: &[crate::host_ids::Held], out: &mut Vec<Finding>) {
    if let Some([lo, hi]) = cfg.private_uid_range() {
        if let Some(list) = crate::host_ids::describe(mapped, [lo, hi]) {
            out.push(finding(
                Severity::Info,
                format!(
                    "job_uid_range [{lo}, {hi}] lies where {list}: each uid is looked up before \
                     it is leased, and a directory user's is skipped"
                ),
                "nothing to do",
            ));
        }
    }
    let [lo, hi] = crate::subid_pool::configured(cfg);
    for domain in mapped.iter().filter(|h| h.meets([lo, hi])) {
        let above = u64::from(domain.range[1]) + 1;
        let fix = if above + u64::from(hi - lo) <= u64::from(u32::MAX - 1) {
            format!(
                "move job_subid_range above the domain's ids (e.g. [{above}, {}]), or narrow \
                 its ldap_idmap_range_min/max",
                above + u64::from(hi - lo)
            )
        } else {
            "narrow the domain's ldap_idmap_range_min/max, or move job_subid_range below them"
                .into()
        };
        out.push(finding(
            Severity::Warning,
            format!(
                "job_subid_range [{lo}, {hi}] lies where {}: a directory user or group may have \
                 an id that is also a container job's image id",
                domain.what
            ),
            fix,
        ));
    }
}

/// Ids of `range` (of config `key`) that the host gives accounts, groups or users'
/// subordinate ids (`held`): the pool never leases them, so this is a warning, or an error
/// when no id is left. Shared with the subordinate range's check.
pub(super) fn held_ids(
    key: &str,
    [lo, hi]: [u32; 2],
    held: &[crate::host_ids::Held],
    why: &str,
    out: &mut Vec<Finding>,
) {
    let Some(list) = crate::host_ids::describe(held, [lo, hi]) else {
        return;
    };
    // Ids of the range no entry holds: the union of the entries' parts in the range, off its size.
    let mut parts: Vec<[u32; 2]> = held
        .iter()
        .filter(|h| h.meets([lo, hi]))
        .map(|h| [h.range[0].max(lo), h.range[1].min(hi)])
        .collect();
    parts.sort();
    let (mut covered, mut end) = (0u64, None::<u32>);
    for [a, b] in parts {
        let from = end.map_or(a, |e| a.max(e.saturating_add(1)));
        if end.is_none_or(|e| b > e) {
            covered += u64::from(b - from) + 1;
            end = Some(b);
        }
    }
    let free = u64::from(hi - lo) + 1 - covered;
    let (severity, effect) = if free == 0 {
        (
            Severity::Error,
            "no id is left to lease: every job fails at prepare".to_string(),
        )
    } else {
        (
            Severity::Warning,
            format!("they are never leased ({free} ids left)"),
        )
    };
    out.push(finding(
        severity,
        format!("{key} [{lo}, {hi}] holds ids the host gives others: {list}; {why}; {effect}"),
        format!("move {key} clear of them, or move those entries"),
    ));
}

/// Not root: no isolation at all.
pub(super) fn not_root(out: &mut Vec<Finding>) {
    out.push(finding(
        Severity::Warning,
        "not running as root: isolation is off, jobs run as the executor's own user and can read its config and state",
        "run gitlab-runner (and so p3-executor) as root with job_user set",
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_ids::{accounts, subordinate};

    #[test]
    fn an_ad_domains_id_mapping_over_the_default_subordinate_range_is_a_warning_with_a_range_above_it()
     {
        let ad = crate::host_ids::sssd_id_mapping(&["[domain/corp]\nid_provider = ad\n".into()]);
        let mut out = Vec::new();
        directory_findings(&Config::parse("").unwrap(), &ad, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].severity, Severity::Info);
        assert!(
            out[0].problem.contains("looked up before it is leased"),
            "{}",
            out[0].problem
        );
        assert_eq!(out[1].severity, Severity::Warning);
        assert!(
            out[1].problem.starts_with("job_subid_range [1073741824, 1090519039] lies where sssd domain corp maps its ids into 200000-2000199999"),
            "{}",
            out[1].problem
        );
        assert!(
            out[1].fix.contains("e.g. [2000200000, 2016977215]"),
            "{}",
            out[1].fix
        );
        // Ranges clear of the mapping: nothing to say.
        let clear = Config::parse(
            "job_uid_range = [100000, 165535]\njob_subid_range = [2100000000, 2100065535]\n",
        )
        .unwrap();
        let mut out = Vec::new();
        directory_findings(&clear, &ad, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn ids_the_host_holds_in_a_range_are_a_warning_with_what_is_left_or_an_error_if_nothing_is() {
        let mut held = subordinate("bob:165536:65536\ncarol:240000:65536\ndup:200000:10\n");
        held.extend(accounts("dave:x:235000:235000::/:/bin/sh\n"));
        // A range, and the finding it gets: its severity and a part of its text.
        type Expected = Option<(Severity, &'static str)>;
        let cases: &[([u32; 2], Expected)] = &[
            ([400000, 500000], None),
            // bob holds 200000-231071 (dup's ten inside counted once), dave 235000, carol
            // 240000-249999: 50000 - 31072 - 1 - 10000 left.
            (
                [200000, 249999],
                Some((Severity::Warning, "(8927 ids left)")),
            ),
            ([200000, 231071], Some((Severity::Error, "no id is left"))),
            ([235000, 235000], Some((Severity::Error, "dave (235000)"))),
        ];
        for (range, want) in cases {
            let mut out = Vec::new();
            held_ids("job_uid_range", *range, &held, "why", &mut out);
            match want {
                None => assert!(out.is_empty(), "{range:?}: {out:?}"),
                Some((severity, text)) => {
                    assert_eq!(out.len(), 1, "{range:?}");
                    assert_eq!(out[0].severity, *severity, "{range:?}: {}", out[0].problem);
                    assert!(
                        out[0].problem.contains(text),
                        "{range:?}: {}",
                        out[0].problem
                    );
                }
            }
        }
    }
}
