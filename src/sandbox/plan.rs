//! What the sandbox mounts, decided from paths alone: pure, so the rules are table-tested.
//!
//! Inside a job's mount namespace:
//! - `/tmp`, `/var/tmp` and `/dev/shm` are fresh tmpfs mounts (the job's alone; gone with it);
//! - the state root, the builds root and any configured path are covered by an empty
//!   root-owned tmpfs, and host files such as keytabs by `/dev/null`;
//! - the job's own directories (its job root, its credentials dir) are bound back at their
//!   usual paths inside those covers, so every path the job was given still works;
//! - the executor's own binary directory, when a cover hides it (a checkout under `/tmp`, an
//!   install under a hidden dir), is bound back read-only at its path, so `p3-executor <step>`
//!   and the steps binary next to it resolve in every job wherever they are installed; never
//!   when a hidden file or dir lies inside it (it would come back with it);
//! - `/proc` shows the job's PID namespace only, `/dev/mqueue` its IPC namespace only.

use std::path::{Path, PathBuf};

/// One step of the sandbox's mount setup, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Make every inherited mount private, so nothing below propagates to the host.
    PrivateRoot,
    /// A fresh world-writable (sticky) tmpfs for the job, e.g. `/tmp`.
    PrivateTmp(PathBuf),
    /// An empty root-owned tmpfs covering a host directory.
    HideDir(PathBuf),
    /// `/dev/null` bound over a host file.
    HideFile(PathBuf),
    /// The `n`th kept directory bound back at `target` (which lies inside a cover).
    Keep {
        /// Where the directory appears.
        target: PathBuf,
        /// Index into the plan input's `keep` list.
        index: usize,
    },
    /// The executor's binary directory bound back read-only at its path (inside a cover).
    ExecDir(PathBuf),
    /// A fresh `/dev/mqueue` for the job's IPC namespace.
    Mqueue,
    /// A fresh `/proc` for the job's PID namespace.
    Proc,
}

/// The paths the plan is made from (existence already checked by the caller).
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// Directories that become private tmpfs mounts.
    pub private_dirs: Vec<PathBuf>,
    /// Host directories to cover.
    pub hide_dirs: Vec<PathBuf>,
    /// Host files to cover.
    pub hide_files: Vec<PathBuf>,
    /// The job's own directories, which must stay reachable at their paths.
    pub keep: Vec<PathBuf>,
    /// The host has `/dev/mqueue`.
    pub mqueue: bool,
    /// The directory of the executor's binaries (`p3-executor`, `p3-executor-steps`).
    pub exec_dir: Option<PathBuf>,
}

fn strictly_under(path: &Path, dir: &Path) -> bool {
    path != dir && path.starts_with(dir)
}

/// The mount steps for `input`, in the order they must run.
pub fn plan(input: &PlanInput) -> Vec<MountOp> {
    // Covers (private tmpfs and hidden dirs) from the shallowest: one under an earlier cover
    // is already unreachable (or lies in a fresh tmpfs where there is nothing to hide).
    let mut covers: Vec<(PathBuf, bool)> = input
        .private_dirs
        .iter()
        .map(|p| (p.clone(), true))
        .chain(input.hide_dirs.iter().map(|p| (p.clone(), false)))
        .collect();
    covers.sort_by(|a, b| (a.0.components().count(), &a.0).cmp(&(b.0.components().count(), &b.0)));
    let mut ops = vec![MountOp::PrivateRoot];
    let mut done: Vec<PathBuf> = Vec::new();
    for (path, private) in covers {
        if done.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        ops.push(if private {
            MountOp::PrivateTmp(path.clone())
        } else {
            MountOp::HideDir(path.clone())
        });
        done.push(path);
    }
    let covered = |p: &Path| done.iter().any(|d| strictly_under(p, d) || p == d);
    let mut files: Vec<&PathBuf> = input.hide_files.iter().filter(|f| !covered(f)).collect();
    files.sort();
    files.dedup();
    ops.extend(files.into_iter().cloned().map(MountOp::HideFile));
    let mut keeps: Vec<(usize, &PathBuf)> = input
        .keep
        .iter()
        .enumerate()
        .filter(|(_, p)| covered(p))
        .collect();
    keeps.sort_by_key(|(_, p)| p.components().count());
    ops.extend(keeps.into_iter().map(|(index, target)| MountOp::Keep {
        target: target.clone(),
        index,
    }));
    if let Some(dir) = exec_dir_to_bind(input, covered) {
        ops.push(MountOp::ExecDir(dir.clone()));
    }
    if input.mqueue {
        ops.push(MountOp::Mqueue);
    }
    ops.push(MountOp::Proc);
    ops
}

/// The executor's directory, when a cover hides it and binding it back reveals nothing hidden
/// (no hidden file or dir, no kept dir, at or under it) and nothing the job owns.
fn exec_dir_to_bind(input: &PlanInput, covered: impl Fn(&Path) -> bool) -> Option<&PathBuf> {
    let dir = input.exec_dir.as_ref()?;
    let reveals = |p: &PathBuf| p.starts_with(dir);
    let safe = !input.hide_files.iter().any(reveals)
        && !input.hide_dirs.iter().any(reveals)
        && !input.keep.iter().any(reveals)
        && !input.keep.iter().any(|k| dir.starts_with(k));
    (covered(dir) && safe).then_some(dir)
}

/// Why the executor's directory is not bound back although a cover hides it (for a warning):
/// None when it is bound, or when nothing hides it.
pub fn exec_dir_left_hidden(input: &PlanInput) -> Option<&Path> {
    let ops = plan(input);
    let dir = input.exec_dir.as_deref()?;
    let hidden = ops.iter().any(|o| match o {
        MountOp::PrivateTmp(d) | MountOp::HideDir(d) => dir.starts_with(d),
        _ => false,
    });
    let bound = ops.iter().any(|o| matches!(o, MountOp::ExecDir(_)));
    (hidden && !bound).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn input(private: &[&str], hide: &[&str], files: &[&str], keep: &[&str]) -> PlanInput {
        PlanInput {
            private_dirs: private.iter().map(|s| p(s)).collect(),
            hide_dirs: hide.iter().map(|s| p(s)).collect(),
            hide_files: files.iter().map(|s| p(s)).collect(),
            keep: keep.iter().map(|s| p(s)).collect(),
            mqueue: false,
            exec_dir: None,
        }
    }

    #[test]
    fn plans_for_typical_layouts() {
        use MountOp::*;
        let keep = |t: &str, index| Keep {
            target: p(t),
            index,
        };
        let cases: Vec<(&str, PlanInput, Vec<MountOp>)> = vec![
            (
                "production defaults: builds root inside the state root",
                input(
                    &["/tmp", "/var/tmp", "/dev/shm"],
                    &["/var/lib/p3", "/var/lib/p3/builds"],
                    &["/etc/p3/keytabs/uat.keytab", "/var/log/p3/audit.jsonl"],
                    &["/var/lib/p3/builds/7", "/var/lib/p3/creds/7"],
                ),
                vec![
                    PrivateRoot,
                    PrivateTmp(p("/tmp")),
                    PrivateTmp(p("/dev/shm")),
                    PrivateTmp(p("/var/tmp")),
                    HideDir(p("/var/lib/p3")),
                    HideFile(p("/etc/p3/keytabs/uat.keytab")),
                    HideFile(p("/var/log/p3/audit.jsonl")),
                    keep("/var/lib/p3/builds/7", 0),
                    keep("/var/lib/p3/creds/7", 1),
                    Proc,
                ],
            ),
            (
                "roots under /tmp: nothing to hide in a fresh tmpfs, the job's dirs come back",
                input(
                    &["/tmp"],
                    &["/tmp/h/state", "/tmp/h/builds"],
                    &["/tmp/h/keytab"],
                    &["/tmp/h/builds/7", "/tmp/h/state/creds/7"],
                ),
                vec![
                    PrivateRoot,
                    PrivateTmp(p("/tmp")),
                    keep("/tmp/h/builds/7", 0),
                    keep("/tmp/h/state/creds/7", 1),
                    Proc,
                ],
            ),
            (
                "separate roots, a kept dir outside every cover is left alone",
                input(
                    &[],
                    &["/srv/state"],
                    &[],
                    &["/srv/builds/7", "/srv/state/creds/7"],
                ),
                vec![
                    PrivateRoot,
                    HideDir(p("/srv/state")),
                    keep("/srv/state/creds/7", 1),
                    Proc,
                ],
            ),
            (
                "a hidden ancestor of a private dir wins; duplicates collapse",
                input(
                    &["/var/tmp"],
                    &["/var", "/var"],
                    &["/var/x", "/etc/k", "/etc/k"],
                    &[],
                ),
                vec![PrivateRoot, HideDir(p("/var")), HideFile(p("/etc/k")), Proc],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(plan(&input), want, "{name}");
        }
    }

    #[test]
    fn the_executors_dir_comes_back_only_when_hidden_and_revealing_nothing() {
        use MountOp::*;
        let with = |exec: &str, files: &[&str]| {
            let mut i = input(
                &["/tmp", "/var/tmp"],
                &["/var/lib/p3", "/opt/hidden"],
                files,
                &["/var/lib/p3/builds/7", "/var/lib/p3/creds/7"],
            );
            i.exec_dir = Some(p(exec));
            i
        };
        let cases: Vec<(&str, PlanInput, Option<MountOp>)> = vec![
            (
                "a checkout under /tmp: bound back after the job's dirs",
                with("/tmp/src/p3/target/debug", &[]),
                Some(ExecDir(p("/tmp/src/p3/target/debug"))),
            ),
            (
                "under /var/tmp",
                with("/var/tmp/p3 x/target/debug", &[]),
                Some(ExecDir(p("/var/tmp/p3 x/target/debug"))),
            ),
            (
                "under a hidden dir",
                with("/opt/hidden/bin", &[]),
                Some(ExecDir(p("/opt/hidden/bin"))),
            ),
            (
                "installed in /usr/bin: nothing hides it",
                with("/usr/bin", &[]),
                None,
            ),
            (
                "a keytab inside it stays hidden: not bound",
                with("/opt/hidden/bin", &["/opt/hidden/bin/k.keytab"]),
                None,
            ),
            (
                "a hidden dir itself: not bound",
                with("/opt/hidden", &[]),
                None,
            ),
            (
                "inside the job's own tree: not bound",
                with("/var/lib/p3/builds/7/bin", &[]),
                None,
            ),
        ];
        for (name, input, want) in cases {
            let ops = plan(&input);
            let got = ops.iter().find(|o| matches!(o, ExecDir(_))).cloned();
            assert_eq!(got, want, "{name}: {ops:?}");
            if let Some(want) = want {
                assert_eq!(ops[ops.len() - 2], want, "{name}: after the keeps");
            }
            let hidden_left = exec_dir_left_hidden(&input).is_some();
            let hidden = !name.contains("/usr/bin");
            assert_eq!(hidden_left, hidden && got.is_none(), "{name}");
        }
    }

    #[test]
    fn mqueue_comes_before_proc_and_private_root_first() {
        let mut i = input(&["/tmp"], &[], &[], &[]);
        i.mqueue = true;
        let ops = plan(&i);
        assert_eq!(ops.first(), Some(&MountOp::PrivateRoot));
        assert_eq!(&ops[ops.len() - 2..], &[MountOp::Mqueue, MountOp::Proc]);
    }

    #[test]
    fn every_kept_dir_under_a_cover_is_bound_back() {
        // Whatever the layout, a kept path inside a cover is always bound, after its cover.
        let layouts = [
            ("/a", "/a/b"),
            ("/a/b", "/a"),
            ("/tmp/x", "/var/lib/y"),
            ("/var/lib/p3", "/var/lib/p3/builds"),
        ];
        for (state, builds) in layouts {
            let keep = [format!("{builds}/9"), format!("{state}/creds/9")];
            let i = input(
                &["/tmp"],
                &[state, builds],
                &[],
                &[keep[0].as_str(), keep[1].as_str()],
            );
            let ops = plan(&i);
            for (index, k) in keep.iter().enumerate() {
                let at = ops
                    .iter()
                    .position(|o| matches!(o, MountOp::Keep { index: n, .. } if *n == index))
                    .unwrap_or_else(|| panic!("{k} not kept in {ops:?}"));
                let cover = ops
                    .iter()
                    .position(|o| match o {
                        MountOp::HideDir(d) | MountOp::PrivateTmp(d) => Path::new(k).starts_with(d),
                        _ => false,
                    })
                    .unwrap();
                assert!(cover < at, "{ops:?}");
            }
        }
    }
}
