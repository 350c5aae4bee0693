//! `prepare`: create the job's workspace, decide and obtain its credentials, print a banner.

use std::collections::BTreeMap;

use chrono::Utc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::JobContext;
use crate::workspace::{self, JobIdentityIds, JobPaths, JobState};

/// Who a job runs as on this host.
pub fn resolve_ids(cfg: &Config, job_id: u64) -> Result<(JobIdentityIds, String)> {
    let me = nix::unistd::getuid();
    if !me.is_root() {
        let user = nix::unistd::User::from_uid(me)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| me.to_string());
        return Ok((
            JobIdentityIds {
                uid: me.as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                private_uid: false,
                switch_user: false,
            },
            user,
        ));
    }
    let user = nix::unistd::User::from_name(&cfg.job_user)
        .map_err(|e| Error::Workspace(format!("look up job_user {:?}: {e}", cfg.job_user)))?
        .ok_or_else(|| {
            Error::Workspace(format!(
                "job_user {:?} does not exist; create it (scripts/install.sh does: \
                 useradd --system --no-create-home --shell /usr/sbin/nologin {})",
                cfg.job_user, cfg.job_user
            ))
        })?;
    if user.uid.is_root() {
        return Err(Error::Workspace(format!(
            "job_user {:?} is root: jobs must run unprivileged",
            cfg.job_user
        )));
    }
    // A stale job may hold the last free uid: sweep, then try once more.
    let private = crate::uid_pool::lease(cfg, job_id).or_else(|_| {
        sweep(cfg, job_id);
        crate::uid_pool::lease(cfg, job_id)
    })?;
    Ok((
        JobIdentityIds {
            uid: private.unwrap_or(user.uid.as_raw()),
            gid: user.gid.as_raw(),
            private_uid: private.is_some(),
            switch_user: true,
        },
        user.name,
    ))
}

/// Tear down the jobs whose cleanup never ran (runner crash, SIGKILL), opportunistically: it
/// runs beside the credentials being obtained (or before the uid lease when that finds no
/// free uid), and a failure only warns; never `job_id`, the job being prepared. The gc timer
/// sweeps too.
fn sweep(cfg: &Config, job_id: u64) {
    if let Err(e) = crate::gc::sweep_stale(cfg, job_id) {
        tracing::warn!("opportunistic gc failed: {e}");
    }
}

/// `p3-executor prepare`.
pub fn execute(cfg: &Config, job: &JobContext) -> Result<()> {
    let job_id = job.job_id();
    // Before anything is taken: no other config on this host may hand out this config's
    // uids, subordinate ids or directories (`side_by_side`). Only root hands any out.
    if nix::unistd::getuid().is_root() {
        crate::side_by_side::claim(cfg)?;
    }
    let paths = JobPaths::new(cfg, job_id);
    workspace::create(cfg, &paths)?;
    // Before anything else is taken or touched: the job id may be another GitLab instance's
    // job's too (`job_owner`).
    crate::job_owner::claim(&paths, job)?;
    let (ids, user) = resolve_ids(cfg, job_id)?;
    let now = Utc::now();
    let mut state = JobState {
        job_id,
        created: now,
        ids,
        user,
        env: BTreeMap::new(),
        grant: None,
        cgroup: None,
        network: None,
    };
    // Save before obtaining credentials so a failure half-way still leaves cleanup what it
    // needs to find and destroy them.
    state.save(&paths)?;
    // The job root, then the walls (some live in it), once the devstage is decided (it may
    // decide them), in their order (`walls::WALLS`), while the grant's credentials are
    // obtained: the credentials need neither.
    let walled = crate::grant::prepare(cfg, job, &paths, &mut state, |state| {
        sweep(cfg, job_id);
        workspace::create_job_root(&paths, ids)?;
        crate::walls::setup(cfg, job, &paths, state)
    });
    state.save(&paths)?;
    let warnings = walled?;
    print_banner(cfg, &state);
    for w in warnings {
        println!("p3-executor: network: warning: {w}");
    }
    Ok(())
}

fn print_banner(cfg: &Config, state: &JobState) {
    let who = if state.ids.switch_user {
        let private = if state.ids.private_uid {
            format!(", private uid {}", state.ids.uid)
        } else {
            String::new()
        };
        let sandbox = if cfg.sandbox.enabled {
            ", sandboxed (own mount, PID and IPC namespaces, private /tmp)"
        } else {
            ", NOT sandboxed ([sandbox] enabled = false)"
        };
        format!("user {}{private}{sandbox}", state.user)
    } else {
        format!(
            "{} (isolation off: executor not running as root)",
            state.user
        )
    };
    println!(
        "p3-executor {} on {}: job {} runs as {who}",
        env!("CARGO_PKG_VERSION"),
        super::hostname(),
        state.job_id,
    );
    if let Some(cgroup) = &state.cgroup {
        println!(
            "p3-executor: limits: {} (its own cgroup)",
            cgroup.limits.summary()
        );
    }
    if let Some(n) = &state.network {
        println!(
            "p3-executor: network: {} ({}, {} rule{}, sha256 {}); see `nft list chain inet {} {}`",
            n.policy,
            n.mode.as_str(),
            n.rules.len(),
            if n.rules.len() == 1 { "" } else { "s" },
            &n.sha256[..12],
            n.table,
            n.chain
                .clone()
                .unwrap_or_else(|| crate::walls::network::render::chain_name(n.key.uid)),
        );
        if cfg.network.loopback_apart {
            println!(
                "p3-executor: network: this job's loopback listeners answer this job only, and other jobs' refuse it ([network] loopback_apart)"
            );
        }
    }
    match &state.grant {
        Some(g) => println!(
            "p3-executor: devstage {} granted: deploy stage {}, Kerberos principal {}{}",
            g.devstage,
            g.deploy_account,
            g.principal,
            if g.s3 { ", S3 credentials" } else { "" }
        ),
        None => println!(
            "p3-executor: no devstage requested ({}); the job runs without credentials",
            cfg.identity.request_variable
        ),
    }
}
