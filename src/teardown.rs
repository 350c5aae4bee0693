//! Ending a job on this host: kill what is left of it, destroy its credentials, remove its
//! trees, and give its uid back (once proven clean). The one implementation behind `cleanup`
//! and `gc`, which say which of them is ending the job; [`ORDER`] is the one place the order
//! is written, each step with its reason.

use crate::config::Config;
use crate::error::Result;
use crate::grant::Ending;
use crate::process;
use crate::walls::{Teardown, Wall};
use crate::workspace::{self, JobPaths, JobState};

/// One step of ending a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A wall's own teardown (`walls::Wall::teardown`).
    Wall(Wall),
    /// SIGKILL every process holding the job's private uid in any uid field.
    KillByUid,
    /// `grant::revoke`: kdestroy, the AWS files, the cleanup audit record.
    Credentials,
    /// The creds dir, the job root and the workspace.
    Trees,
    /// `uid_pool::scrub`: what the uid left behind removed (`residue.rs`).
    Scrub,
    /// `uid_pool::settle`: the scrubbed uid free, or quarantined when its scrub left residue.
    Uid,
}

/// The order of teardown. Every step runs even when one before it failed.
pub(crate) const ORDER: [Step; 8] = [
    // First the cgroup: one kill of everything the job started, which no fork can race and
    // no process can leave; then what it used, for the credentials' cleanup record.
    Step::Wall(Wall::Cgroup),
    // Nothing the job started may survive, even processes that left its process group (and
    // a job without a cgroup).
    Step::KillByUid,
    // With nothing of the job left running to use them.
    Step::Credentials,
    // The job's image layer (everything it wrote in its image).
    Step::Wall(Wall::Image),
    Step::Trees,
    // Only once its trees are gone: what else the uid owns (IPC objects, keyrings, files in
    // the scrub dirs), while its network rules may still be going (beside).
    Step::Scrub,
    // Then the uid is freed, or quarantined if its scrub left residue.
    Step::Uid,
    // A container job's subordinate range likewise: its processes killed, then free or
    // quarantined (its storage went with the job root above).
    Step::Wall(Wall::Userns),
];

/// Steps that start with teardown and run beside [`ORDER`] on a thread of their own, each
/// finished before the step paired with it begins.
pub(crate) const BESIDE: [(Step, Step); 1] = [
    // Its network rules before its uid (and subordinate range) go back to the pool, so a
    // reused uid never inherits an allowance (prepare also flushes the uid's chain first).
    // Early is safe: a socket of a job uid without its chain gets the strictest policy (the
    // uid is still in the job ranges), and the kernel's commit (a chain deleted: ~15 ms of
    // RCU grace period in nft's exit) no longer adds to every cleanup.
    (Step::Wall(Wall::Network), Step::Uid),
];

impl Step {
    /// Its name in the docs' teardown order (ARCHITECTURE.md, "Teardown order").
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::Wall(Wall::Cgroup) => "cgroup kill",
            Step::Wall(w) => w.name(),
            Step::KillByUid => "processes by uid",
            Step::Credentials => "credentials",
            Step::Trees => "trees",
            Step::Scrub => "uid scrub",
            Step::Uid => "uid release",
        }
    }

    fn run(self, t: &mut Teardown<'_>, paths: &JobPaths, ending: Ending) {
        match self {
            Step::Wall(wall) => wall.teardown(t),
            Step::KillByUid => match t.state {
                Some(state) if state.ids.private_uid => {
                    process::kill_uid(state.ids.uid);
                }
                Some(_) => {}
                None => {
                    if let Some(uid) = crate::uid_pool::leased_uid(t.cfg, t.job_id) {
                        process::kill_uid(uid);
                    }
                }
            },
            Step::Credentials => {
                let Some(state) = t.state else { return };
                let usage = std::mem::take(&mut t.usage);
                if let Err(e) = crate::grant::revoke(t.cfg, paths, state, ending, usage) {
                    t.failed("destroying credentials failed: ", e);
                }
            }
            Step::Trees => {
                for dir in [&paths.creds, &paths.job_root, &paths.workspace] {
                    if let Err(e) = workspace::remove_tree(dir) {
                        t.failed("", e);
                    }
                }
            }
            Step::Scrub => t.scrubbed = crate::uid_pool::scrub(t.cfg, t.job_id),
            Step::Uid => {
                if let Err(e) = crate::uid_pool::settle(t.cfg, &t.scrubbed) {
                    t.failed("releasing its uid failed: ", e);
                }
            }
        }
    }
}

/// Tear down everything belonging to `job_id`; used by cleanup and gc.
///
/// Runs every step of [`ORDER`] even when one fails and returns the first error.
pub fn teardown(cfg: &Config, job_id: u64, ending: Ending) -> Result<()> {
    let paths = JobPaths::new(cfg, job_id);
    let state = JobState::load(&paths).ok();
    let mut t = Teardown::new(cfg, job_id, state.as_ref());
    std::thread::scope(|scope| {
        let mut beside: Vec<_> = BESIDE
            .iter()
            .map(|&(step, before)| {
                let mut own = Teardown::new(cfg, job_id, state.as_ref());
                let paths = &paths;
                let running = scope.spawn(move || {
                    tracing::debug!(job_id, step = step.name(), "teardown");
                    step.run(&mut own, paths, ending);
                    own.first_err
                });
                (before, Some(running))
            })
            .collect();
        for step in ORDER {
            for (before, running) in &mut beside {
                if *before == step
                    && let Some(running) = running.take()
                {
                    let err = running
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    if let Some(e) = err {
                        t.first_err.get_or_insert(e);
                    }
                }
            }
            tracing::debug!(job_id, step = step.name(), "teardown");
            step.run(&mut t, &paths, ending);
        }
    });
    t.first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wall_that_takes_something_down_has_one_place_in_the_order() {
        for wall in crate::walls::WALLS {
            let places = ORDER
                .iter()
                .chain(BESIDE.iter().map(|(step, _)| step))
                .filter(|s| **s == Step::Wall(wall))
                .count();
            assert_eq!(places, usize::from(wall.takes_down()), "{wall:?}");
        }
        // Every step run beside finishes before a step that is in the order.
        for (step, before) in BESIDE {
            assert!(ORDER.contains(&before), "{step:?} before {before:?}");
        }
    }

    #[test]
    fn the_order_is_what_the_docs_say() {
        let order: Vec<&str> = ORDER.iter().map(|s| s.name()).collect();
        assert_eq!(
            order,
            [
                "cgroup kill",
                "processes by uid",
                "credentials",
                "image layer",
                "trees",
                "uid scrub",
                "uid release",
                "subordinate range",
            ]
        );
        let beside: Vec<String> = BESIDE
            .iter()
            .map(|(step, before)| {
                format!("{} (beside, done before {})", step.name(), before.name())
            })
            .collect();
        assert_eq!(beside, ["network rules (beside, done before uid release)"]);
        let want = format!("{}; {}", order.join(" → "), beside.join("; "));
        let line = |doc: &'static str| {
            doc.lines()
                .find(|l| l.contains("Teardown order"))
                .map(|l| l.split_once(": ").map_or(l, |(_, order)| order))
                .map(|order| order.trim().trim_end_matches('.').to_string())
        };
        let docs = [
            ("ARCHITECTURE.md", include_str!("../ARCHITECTURE.md")),
            ("docs/sandbox.md", include_str!("../docs/sandbox.md")),
        ];
        for (name, doc) in docs {
            assert_eq!(
                line(doc).as_deref(),
                Some(want.as_str()),
                "{name}'s \"Teardown order\" line"
            );
        }
    }
}
