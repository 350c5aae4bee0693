//! `check`: validate a config and the host it runs on; print every problem with its fix.
//!
//! This file runs the checks in a fixed order and prints the report; each check lives in its
//! own file and returns [`Finding`]s. Check depends on the modules it checks (credentials,
//! sandbox, audit, uid pool), never the other way round.

use std::path::Path;

use crate::config::Config;
use crate::walls::Wall;

mod audit;
mod cgroups;
mod containers;
pub mod finding;
mod gc;
pub mod kerberos;
pub mod network;
mod paths;
mod sandbox;
mod side_by_side;
mod tools;
mod users;
mod walls;
mod web_identity;

pub use finding::{Finding, Severity};

/// Every finding for this config on this host.
pub fn check(cfg: &Config, config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    // What every audit record this config writes will carry: which policy, which host.
    let stamp = &cfg.audit.stamp;
    if let Some(hash) = &stamp.config_sha256 {
        out.push(finding::finding(
            Severity::Info,
            format!(
                "config {} has sha256 {hash}; host id {} (every audit record names both)",
                config_path.display(),
                stamp
                    .state_root
                    .as_deref()
                    .and_then(crate::config::host_id)
                    .as_deref()
                    .unwrap_or("(none yet: made with the state root)")
            ),
            "nothing to do",
        ));
    }
    paths::private_paths(cfg, config_path, &mut out);
    tools::tools(cfg, &mut out);
    if let Ok(exe) = std::env::current_exe() {
        web_identity::sibling(cfg, &exe, &mut out);
    }
    if nix::unistd::geteuid().is_root() {
        users::job_user(cfg, &mut out);
        sandbox::sandbox_findings(cfg, &mut out);
        for wall in crate::walls::WALLS {
            wall_findings(wall, cfg, &mut out);
        }
        users::uid_range(cfg, &mut out);
        users::directory_ids(cfg, &mut out);
        side_by_side::others(cfg, config_path, &mut out);
    } else {
        users::not_root(&mut out);
    }
    audit::audit_chain(cfg, &mut out);
    gc::max_age(cfg, &mut out);
    out.extend(kerberos::check(cfg));
    out
}

/// Each wall's check (the `check` part of a [`Wall`]), in the order of `walls::WALLS`: a new
/// wall is a new arm here, which the compiler asks for.
fn wall_findings(wall: Wall, cfg: &Config, out: &mut Vec<Finding>) {
    match wall {
        Wall::Cgroup => cgroups::cgroup_findings(cfg, out),
        Wall::Image => containers::image_findings(cfg, out),
        Wall::Userns => containers::userns_findings(cfg, out),
        Wall::Network => network::network_findings(cfg, out),
        Wall::Keyring => walls::keyring_findings(out),
        Wall::AbstractSockets => walls::abstract_socket_findings(cfg, out),
        Wall::Seccomp => walls::seccomp_findings(cfg, out),
    }
}

/// Print findings; returns the exit code (0 when there is no error).
pub fn report(findings: &[Finding]) -> i32 {
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    for f in findings {
        let tag = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => {
                println!("ok: {}", f.problem);
                continue;
            }
        };
        println!("{tag}: {}\n  fix: {}", f.problem, f.fix);
    }
    if errors == 0 {
        println!(
            "config ok ({warnings} warning{})",
            if warnings == 1 { "" } else { "s" }
        );
        0
    } else {
        println!("{errors} error(s): the executor is not ready");
        1
    }
}
