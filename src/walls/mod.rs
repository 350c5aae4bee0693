//! The walls between a job and the host (and between jobs) that namespaces do not give, in one
//! shape. Each wall is a [`Wall`] with up to four parts:
//! - **setup** in prepare ([`Wall::setup`], in the order of [`WALLS`], after the grant): make
//!   it, recording in `state.json` before or as it is made, so a half-made wall is found;
//! - **enter** before each stage: in the supervisor ([`Wall::enter`], in the order of
//!   [`WALLS`]: what the stage's processes get), then in the job's own process before exec
//!   ([`ChildWalls::apply`]; the sandbox's init for a user namespace and an image root);
//! - **teardown** when the job ends ([`Wall::teardown`]), in the order of
//!   `crate::teardown::ORDER`, the one place that order is written, with its reasons;
//! - **check** for `p3-executor check` (`check::wall_findings`: an arm per wall, in this order).
//!
//! Adding a wall: a module here, a variant of [`Wall`] with its line in [`WALLS`] (and in
//! `teardown::ORDER` if it takes something down), and the arms the compiler then asks for.

pub mod abstract_sockets;
pub mod cgroup;
pub(crate) mod child;
pub mod keyring;
pub mod network;
pub mod seccomp;
pub mod userns;

use std::collections::BTreeMap;

pub use child::ChildWalls;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::images::JobImage;
use crate::job::JobContext;
use crate::workspace::{JobPaths, JobState};

/// One wall of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wall {
    /// The job's cgroup and its limits (`cgroup/`).
    Cgroup,
    /// An `image:` job's image and its layer (`crate::images`, `sandbox/image.rs`).
    Image,
    /// A container or image job's user namespace and subordinate range (`userns.rs`).
    Userns,
    /// Where the job's sockets may connect (`network/`).
    Network,
    /// The job's own session keyring (`keyring.rs`).
    Keyring,
    /// The job's reach to abstract unix sockets: its own only (`abstract_sockets.rs`).
    AbstractSockets,
    /// The seccomp filter (`seccomp/`).
    Seccomp,
}

/// Every wall, in the order prepare sets them up and each stage enters them.
pub(crate) const WALLS: [Wall; 7] = [
    // After the grant: the granted devstage may set the limits.
    Wall::Cgroup,
    // An image job's image, with or without a devstage (a granted one decides by its policy).
    Wall::Image,
    // Its subordinate range and containers configuration: after the image (an image job
    // needs a range too); at a stage, before the filter (a container job gets its profile).
    Wall::Userns,
    // Last in prepare: the granted devstage decides it, a container job's subordinate range
    // is keyed too, and no process of the job exists before prepare ends.
    Wall::Network,
    // Only in the job's process (ChildWalls::apply): the keyring before the filter, which
    // refuses keyctl; the socket scope after no_new_privs, which it needs.
    Wall::Keyring,
    Wall::AbstractSockets,
    Wall::Seccomp,
];

/// What prepare hands each wall's setup.
pub(crate) struct Setup<'a> {
    cfg: &'a Config,
    job: &'a JobContext,
    paths: &'a JobPaths,
    state: &'a mut JobState,
    /// Printed after the banner.
    warnings: Vec<String>,
    /// The job's cgroup, recorded, still to make.
    cgroup: Option<cgroup::JobCgroup>,
}

/// What a stage's walls come to, made in the supervisor before anything of the script runs.
pub(crate) struct Stage<'a> {
    cfg: &'a Config,
    paths: &'a JobPaths,
    state: &'a JobState,
    stage: &'a str,
    /// Policy lets the job run containers.
    containers: bool,
    /// The job's cgroup, entered: its counters before the stage, for [`Stage::verdict`].
    cgroup: Option<cgroup::Stage<'a>>,
    /// An image job's user stage: its image.
    pub image: Option<JobImage>,
    /// A container or image stage: its user namespace.
    pub userns: Option<userns::JobUserns>,
    /// What the job's shell enters before exec.
    pub child: ChildWalls,
}

/// What teardown hands each wall (`crate::teardown`).
pub(crate) struct Teardown<'a> {
    pub cfg: &'a Config,
    pub job_id: u64,
    pub state: Option<&'a JobState>,
    /// What the job used (from its cgroup), for the credentials' cleanup record.
    pub usage: BTreeMap<String, serde_json::Value>,
    /// The job's uids and what their scrub left, for their release (`teardown::Step::Uid`).
    pub scrubbed: Vec<(u32, crate::residue::Residue)>,
    /// The first failure; every step runs anyway.
    pub first_err: Option<Error>,
}

impl<'a> Teardown<'a> {
    /// A fresh teardown of `job_id` (its saved `state`, when there is one).
    pub(crate) fn new(cfg: &'a Config, job_id: u64, state: Option<&'a JobState>) -> Self {
        Teardown {
            cfg,
            job_id,
            state,
            usage: BTreeMap::new(),
            scrubbed: Vec::new(),
            first_err: None,
        }
    }

    /// Log a failed step and keep the first error.
    pub(crate) fn failed(&mut self, what: &str, e: Error) {
        tracing::error!("job {}: {what}{e}", self.job_id);
        self.first_err.get_or_insert(e);
    }
}

impl Wall {
    /// Its name, in the teardown order and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Wall::Cgroup => "cgroup",
            Wall::Image => "image layer",
            Wall::Userns => "subordinate range",
            Wall::Network => "network rules",
            Wall::Keyring => "keyring",
            Wall::AbstractSockets => "abstract sockets",
            Wall::Seccomp => "seccomp",
        }
    }

    /// prepare: make this wall for the job. The job's cgroup is only planned (recorded) here;
    /// [`setup`] makes it beside the walls after it.
    fn setup(self, s: &mut Setup<'_>) -> Result<()> {
        match self {
            Wall::Cgroup => {
                s.cgroup = cgroup::plan(s.cfg, s.job, s.state)?;
                Ok(())
            }
            Wall::Image => {
                let devstage = s.state.grant.as_ref().map(|g| g.devstage.clone());
                crate::images::resolve(s.cfg, s.job, s.paths, devstage.as_deref())?;
                Ok(())
            }
            Wall::Userns => userns::prepare(s.cfg, s.paths, s.state),
            Wall::Network => {
                s.warnings.extend(network::prepare(s.cfg, s.state)?);
                Ok(())
            }
            // Nothing to make: entered in the job's process only.
            Wall::Keyring | Wall::AbstractSockets | Wall::Seccomp => Ok(()),
        }
    }

    /// run, in the supervisor before the stage's first process: what the stage gets.
    fn enter<'a>(self, s: &mut Stage<'a>) -> Result<()> {
        match self {
            // Into the job's cgroup before anything of the script exists: the sandbox's init,
            // the shell and all they start inherit it, so the limits hold for every process.
            Wall::Cgroup => {
                let state: &'a JobState = s.state;
                s.cgroup = state.cgroup.as_ref().map(|c| c.enter()).transpose()?;
            }
            // An image job's user stages run in its image; its runner stages on the host.
            Wall::Image => {
                s.image =
                    crate::images::load(s.paths).filter(|_| crate::images::is_image_stage(s.stage));
            }
            // A container job (policy at prepare, and a leased subordinate range) gets its own
            // user namespace, and so does an image stage; every other job neither.
            Wall::Userns => {
                if s.containers || s.image.is_some() {
                    s.userns = userns::for_run(s.cfg, s.paths, s.state)?;
                }
                if s.image.is_some() && (s.userns.is_none() || !s.cfg.sandbox.enabled) {
                    return Err(Error::Spawn(
                        "an image: job needs the sandbox and its subordinate range (leased at \
                         prepare)"
                            .into(),
                    ));
                }
            }
            // Enforced by the host's nftables on the job's uid: nothing to enter.
            Wall::Network => {}
            // Always joined by the shell (ChildWalls::apply).
            Wall::Keyring => {}
            // Made here (an fd the shell inherits), entered by the shell; none on a kernel
            // that cannot scope abstract sockets.
            Wall::AbstractSockets => {
                s.child.abstract_sockets = abstract_sockets::for_stage().map_err(|e| {
                    Error::Spawn(format!("make the job's abstract unix socket scope: {e}"))
                })?;
            }
            // Compiled here, installed by the shell: the container profile for a container
            // job in its user namespace.
            Wall::Seccomp => {
                let devstage = s.state.grant.as_ref().map(|g| g.devstage.as_str());
                let containers = s.userns.is_some() && s.containers;
                s.child.seccomp =
                    seccomp::for_job(s.cfg, devstage, containers).map_err(Error::Spawn)?;
            }
        }
        Ok(())
    }

    /// Does this wall take something down when the job ends? (Each that does has its place
    /// in `teardown::ORDER`, which a test of it checks.)
    #[cfg(test)]
    pub(crate) fn takes_down(self) -> bool {
        match self {
            Wall::Cgroup | Wall::Image | Wall::Userns | Wall::Network => true,
            // The keyrings are emptied with the uid (`residue::scrub` calls
            // `keyring::clear_uid`); a filter and a scope die with their processes.
            Wall::Keyring | Wall::AbstractSockets | Wall::Seccomp => false,
        }
    }

    /// teardown: take this wall down; a failure is logged and kept in `t`.
    pub(crate) fn teardown(self, t: &mut Teardown<'_>) {
        match self {
            Wall::Cgroup => {
                let Some(cgroup) = t.state.and_then(|s| s.cgroup.as_ref()) else {
                    return;
                };
                let (used, ended) = cgroup::end(t.cfg, t.job_id, cgroup);
                t.usage = cgroup.audit_fields(&used);
                if let Err(e) = ended {
                    t.failed("ending its cgroup failed: ", e.into());
                }
            }
            Wall::Image => {
                if let Err(e) = crate::images::remove_layer(t.cfg, t.job_id) {
                    t.failed("", e);
                }
            }
            Wall::Userns => {
                if let Err(e) = crate::subid_pool::release(t.cfg, t.job_id) {
                    t.failed("releasing its subordinate range failed: ", e);
                }
            }
            Wall::Network => {
                if let Err(e) = network::release(t.cfg, t.job_id, t.state) {
                    t.failed("removing its network rules failed: ", e.into());
                }
            }
            Wall::Keyring | Wall::AbstractSockets | Wall::Seccomp => {}
        }
    }
}

/// prepare: set up every wall in order, stopping at the first failure (what was made is in
/// `state`, for teardown). Returns the warnings to print after the banner.
///
/// The job's cgroup is made (its directories, its limits: about a millisecond of writes to
/// cgroupfs) on a thread of its own while the walls after it go up, none of which needs it; it
/// is recorded before, and joined before prepare goes on, so nothing of the job runs without it.
pub(crate) fn setup(
    cfg: &Config,
    job: &JobContext,
    paths: &JobPaths,
    state: &mut JobState,
) -> Result<Vec<String>> {
    let mut s = Setup {
        cfg,
        job,
        paths,
        state,
        warnings: Vec::new(),
        cgroup: None,
    };
    std::thread::scope(|scope| {
        let mut making = None;
        let mut walled = Ok(());
        for wall in WALLS {
            walled = wall.setup(&mut s);
            if let Some(cgroup) = s.cgroup.take() {
                making = Some(scope.spawn(move || cgroup.create()));
            }
            if walled.is_err() {
                break;
            }
        }
        let made = match making {
            Some(making) => making
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Ok(()),
        };
        // The first failure in wall order: the cgroup's comes first.
        made.map_err(Error::from).and(walled)
    })?;
    Ok(s.warnings)
}

impl<'a> Stage<'a> {
    /// run: enter every wall in order for `stage`.
    pub(crate) fn enter(
        cfg: &'a Config,
        paths: &'a JobPaths,
        state: &'a JobState,
        stage: &'a str,
    ) -> Result<Self> {
        let devstage = state.grant.as_ref().map(|g| g.devstage.as_str());
        let mut s = Stage {
            cfg,
            paths,
            state,
            stage,
            containers: userns::allowed(cfg, devstage),
            cgroup: None,
            image: None,
            userns: None,
            child: ChildWalls::default(),
        };
        for wall in WALLS {
            wall.enter(&mut s)?;
        }
        Ok(s)
    }

    /// After the script: when it `failed` and a limit was hit during the stage, the message
    /// naming the limit and the setting that sets it.
    pub(crate) fn verdict(&self, failed: bool) -> Option<String> {
        self.cgroup.as_ref().and_then(|c| c.verdict(failed))
    }
}
