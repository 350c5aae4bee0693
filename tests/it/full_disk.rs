//! A full disk: state_root and builds_root on a small tmpfs filled to the last byte. prepare,
//! run and cleanup fail with a clear system error (the cause said once); once space is back,
//! cleanup and gc leave nothing behind and the next job runs.

use std::path::{Path, PathBuf};

use crate::common::{JobResult, host, is_root};
use p3_testkit::driver::Host;

/// A tmpfs mounted for the test's lifetime, detached on drop (even after a failed assert).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0711").as_str()),
        )
        .expect("mount a tmpfs (the suite runs as root)");
        Tmpfs(at.to_path_buf())
    }

    /// Fill it: one file takes every free byte.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        // The last partial chunk: byte by byte until ENOSPC.
        while std::io::Write::write_all(&mut f, &[0]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A host whose state and builds roots live on `disk`.
fn host_on(disk: &Path) -> Host {
    let h = host("");
    let text = std::fs::read_to_string(&h.config).unwrap();
    let root = h.root().display().to_string();
    let text = text
        .replace(
            &format!("{root}/state"),
            &disk.join("state").display().to_string(),
        )
        .replace(
            &format!("{root}/builds"),
            &disk.join("builds").display().to_string(),
        );
    std::fs::write(&h.config, text).unwrap();
    h
}

fn says_no_space_once(log: &str) -> bool {
    log.matches("No space left on device").count() == 1
}

#[test]
fn a_full_disk_fails_clearly_and_gc_cleans_up_once_space_is_back() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let probe = host("");
    let disk = Tmpfs::mount(&probe.root().join("disk"), "2m");
    let h = host_on(&disk.0);

    // Full before prepare: a clear system failure, the cause said once.
    let filler = disk.fill();
    let mut job = h.job(7101, "echo never");
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 2, "{}", job.log);
    assert!(says_no_space_once(&job.log), "{}", job.log);
    assert_eq!(
        job.cleanup(),
        0,
        "cleanup after a failed prepare: {}",
        job.log
    );

    // Prepared with space, then the disk fills: run and cleanup fail or finish cleanly.
    std::fs::remove_file(&filler).unwrap();
    let mut job = h.job(7102, "echo should-not-matter > big && echo ran");
    assert_eq!(job.config(), 0, "{}", job.log);
    assert_eq!(job.prepare(), 0, "{}", job.log);
    let filler = disk.fill();
    let code = job.run_stage("build_script");
    assert!(
        code == 0 || code == 1 || code == 2,
        "run on a full disk ended with {code}: {}",
        job.log
    );
    job.cleanup();

    // Space is back: cleanup and gc leave nothing, and the next job runs.
    std::fs::remove_file(&filler).unwrap();
    let gc = h.exec(&["gc", "--max-age-secs", "0"]);
    assert!(gc.status.success(), "{gc:?}");
    for id in [7101, 7102] {
        for p in [
            disk.0.join(format!("state/jobs/{id}")),
            disk.0.join(format!("state/creds/{id}")),
            disk.0.join(format!("builds/{id}")),
        ] {
            assert!(!p.exists(), "{} left after gc", p.display());
        }
    }
    let leases: Vec<_> = std::fs::read_dir(disk.0.join("state/uids"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let mut next = h.job(7103, "echo next-ok");
    assert_eq!(next.run_all(), JobResult::Success, "{}", next.log);
}
