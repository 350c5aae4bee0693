//! Which cgroup layout this host has, and where this process sits in it.
//!
//! The parsers of `/proc/self/mountinfo` and `/proc/self/cgroup` are pure and table-tested;
//! [`detect`] reads the two files and decides. A controller is attached to exactly one
//! hierarchy, so the mode is decided by where `memory` and `pids` live: on v1 mounts (a v1 or
//! hybrid host, like systemd's hybrid layout, whose unified mount then holds no controller), or
//! in the unified hierarchy (v2).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The v1 controllers a job cgroup uses. `memory` and `pids` are required; `cpu` (quota),
/// `cpuacct` (CPU time) and `freezer` (a kill no fork can race) are used when mounted.
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

/// One cgroup filesystem mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup path its root is (`/` unless a cgroup namespace or a bind says otherwise).
    pub root: String,
    /// `cgroup2`, or the v1 controllers attached (`cpu`, `cpuacct`, `name=systemd`, ...).
    pub kind: MountKind,
}

/// What a cgroup mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// The unified hierarchy.
    V2,
    /// A v1 hierarchy with these controllers.
    V1(Vec<String>),
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount_point options [optional...] - fstype source super
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, mount_point) = (left.get(3)?, left.get(4)?);
            let kind = match *right.first()? {
                "cgroup2" => MountKind::V2,
                "cgroup" => MountKind::V1(
                    right
                        .get(2)?
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .filter(|o| {
                            ![
                                "relatime",
                                "noatime",
                                "nosuid",
                                "nodev",
                                "noexec",
                                "clone_children",
                            ]
                            .contains(o)
                        })
                        .map(str::to_string)
                        .collect(),
                ),
                _ => return None,
            };
            Some(CgroupMount {
                mount_point: PathBuf::from(unescape(mount_point)),
                root: unescape(root),
                kind,
            })
        })
        .collect()
}

/// This process's cgroup per hierarchy from a `/proc/<pid>/cgroup` text: `(controllers, path)`,
/// where the unified hierarchy's line has no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some((
                controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// The directory of cgroup `path` under a mount whose root is `root`.
fn dir_of(mount: &CgroupMount, path: &str) -> PathBuf {
    // Inside a cgroup namespace the paths are already relative to the mount's root; outside
    // one, a mount of a sub-tree shows the full path, which starts with the mount's root.
    let rel = if mount.root != "/" {
        path.strip_prefix(&mount.root).unwrap_or(path)
    } else {
        path
    };
    let mut dir = mount.mount_point.clone();
    for c in rel.split('/').filter(|c| !c.is_empty() && *c != "..") {
        dir.push(c);
    }
    dir
}

/// The cgroup layout of this host and the executor's own place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Layout {
    /// The unified hierarchy holds the controllers.
    V2 {
        /// Mount point of the unified hierarchy.
        mount: PathBuf,
        /// Directory of this process's cgroup.
        own: PathBuf,
    },
    /// v1 hierarchies: one directory per controller, this process's cgroup in each (a
    /// controller co-mounted with another, `cpu,cpuacct`, has the same directory).
    V1 {
        /// `(controller, mount point, own cgroup dir)` for each of [`V1_CONTROLLERS`] mounted.
        hierarchies: Vec<(String, PathBuf, PathBuf)>,
    },
}

impl Layout {
    /// `v1` or `v2`.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
        }
    }
}

/// Decide the layout from the two texts (pure). `Err` says why no job cgroup can be made.
pub fn layout(mountinfo: &str, proc_cgroup: &str) -> Result<Layout, String> {
    let mounts = parse_mountinfo(mountinfo);
    let mine = parse_proc_cgroup(proc_cgroup);
    let v1_mount = |c: &str| {
        mounts
            .iter()
            .find(|m| matches!(&m.kind, MountKind::V1(cs) if cs.iter().any(|x| x == c)))
    };
    if v1_mount("memory").is_some() || v1_mount("pids").is_some() {
        let mut hierarchies = Vec::new();
        for c in V1_CONTROLLERS {
            let Some(m) = v1_mount(c) else { continue };
            let path = mine
                .iter()
                .find(|(cs, _)| cs.iter().any(|x| x == c))
                .map_or("/", |(_, p)| p.as_str());
            hierarchies.push((c.to_string(), m.mount_point.clone(), dir_of(m, path)));
        }
        for required in ["memory", "pids"] {
            if !hierarchies.iter().any(|(c, _, _)| c == required) {
                return Err(format!(
                    "cgroup v1 host without the {required} controller mounted"
                ));
            }
        }
        return Ok(Layout::V1 { hierarchies });
    }
    let Some(m) = mounts.iter().find(|m| m.kind == MountKind::V2) else {
        return Err("no cgroup filesystem is mounted".into());
    };
    let path = mine
        .iter()
        .find(|(cs, _)| cs.is_empty())
        .map_or("/", |(_, p)| p.as_str());
    Ok(Layout::V2 {
        mount: m.mount_point.clone(),
        own: dir_of(m, path),
    })
}

/// The layout of this host, from `/proc/self`.
pub fn detect() -> Result<Layout, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"));
    layout(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
}

/// `path` (an absolute cgroup path from the config) under `mount`.
pub fn under(mount: &Path, path: &str) -> PathBuf {
    let mut dir = mount.to_path_buf();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != "..") {
        dir.push(c);
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn hybrid_v1_is_v1_with_each_hierarchy() {
        let Layout::V1 { hierarchies } = layout(HYBRID, HYBRID_SELF).unwrap() else {
            panic!("not v1")
        };
        let names: Vec<&str> = hierarchies.iter().map(|(c, _, _)| c.as_str()).collect();
        assert_eq!(names, V1_CONTROLLERS);
        assert_eq!(
            hierarchies[0].2,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(hierarchies[1].2, PathBuf::from("/sys/fs/cgroup/pids"));
    }

    #[test]
    fn comounted_cpu_cpuacct_share_a_directory() {
        let info = "\
1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
3 0 0:3 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let me = "3:cpu,cpuacct:/runner\n2:memory:/runner\n1:pids:/runner\n";
        let Layout::V1 { hierarchies } = layout(info, me).unwrap() else {
            panic!()
        };
        let cpu = &hierarchies.iter().find(|h| h.0 == "cpu").unwrap().2;
        let acct = &hierarchies.iter().find(|h| h.0 == "cpuacct").unwrap().2;
        assert_eq!(cpu, acct);
        assert_eq!(cpu, &PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/runner"));
        assert!(!hierarchies.iter().any(|h| h.0 == "freezer"));
    }

    #[test]
    fn unified_is_v2_with_own_cgroup() {
        let info = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let me = "0::/system.slice/gitlab-runner.service\n";
        assert_eq!(
            layout(info, me).unwrap(),
            Layout::V2 {
                mount: "/sys/fs/cgroup".into(),
                own: "/sys/fs/cgroup/system.slice/gitlab-runner.service".into()
            }
        );
    }

    #[test]
    fn a_mount_of_a_subtree_strips_its_root() {
        let info = "30 24 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let me = "0::/docker/abc/inner\n";
        let Layout::V2 { own, .. } = layout(info, me).unwrap() else {
            panic!()
        };
        assert_eq!(own, PathBuf::from("/sys/fs/cgroup/inner"));
    }

    #[test]
    fn without_controllers_there_is_no_layout() {
        let info = "1 0 0:1 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert!(layout(info, "1:name=systemd:/\n").is_err());
        let only_memory = "1 0 0:1 / /m rw - cgroup cgroup rw,memory\n";
        assert!(
            layout(only_memory, "1:memory:/\n")
                .unwrap_err()
                .contains("pids")
        );
    }

    #[test]
    fn escaped_mount_points() {
        let info = "1 0 0:1 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(info)[0].mount_point,
            PathBuf::from("/sys/fs/my cgroup")
        );
    }
}
