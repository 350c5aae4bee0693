//! Running kinit, klist and kdestroy: resolved from the config, with a controlled environment,
//! bounded by `kerberos.timeout_secs` (MIT kinit waits about 27 s on a KDC that accepts
//! connections but never answers, and has no timeout setting of its own).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::KerberosError;
use crate::command::{CommandError, Output, run_bounded};
use crate::config::KerberosConfig;

/// Resolve a configured tool: an absolute path is used as is, a bare name is looked up on PATH.
pub(crate) fn resolve_tool(configured: &str, key: &'static str) -> Result<PathBuf, KerberosError> {
    let missing = |detail: String| KerberosError::ToolMissing {
        tool: configured.to_string(),
        key,
        detail,
    };
    if configured.contains('/') {
        let path = PathBuf::from(configured);
        if !path.is_absolute() {
            return Err(missing("a path must be absolute".into()));
        }
        if !path.is_file() {
            return Err(missing(format!("{} does not exist", path.display())));
        }
        return Ok(path);
    }
    which::which(configured).map_err(|e| missing(format!("not on PATH: {e}")))
}

/// A command for a Kerberos tool with a controlled environment.
fn tool_command(kcfg: &KerberosConfig, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    // English messages: error classification and the docs quote them.
    cmd.env("LC_ALL", "C");
    // Never let an inherited cache, client keytab or trace setting redirect what we do.
    for var in [
        "KRB5CCNAME",
        "KRB5_CLIENT_KTNAME",
        "KRB5_KTNAME",
        "KRB5_TRACE",
    ] {
        cmd.env_remove(var);
    }
    if let Some(conf) = &kcfg.krb5_config {
        cmd.env("KRB5_CONFIG", conf);
    }
    cmd
}

/// The configured bound, at least 1 s.
fn timeout(kcfg: &KerberosConfig) -> Duration {
    Duration::from_secs(kcfg.timeout_secs.max(1))
}

/// Run a tool bounded by the configured timeout, mapping spawn failures and timeouts.
pub(super) fn run_tool(
    kcfg: &KerberosConfig,
    configured: &str,
    key: &'static str,
    args: Vec<OsString>,
    what: &str,
) -> Result<Output, KerberosError> {
    run_tool_with(kcfg, configured, key, args, what, None)
}

/// [`run_tool`], with `KRB5_CONFIG` replaced by `krb5_config` when given.
pub(super) fn run_tool_with(
    kcfg: &KerberosConfig,
    configured: &str,
    key: &'static str,
    args: Vec<OsString>,
    what: &str,
    krb5_config: Option<OsString>,
) -> Result<Output, KerberosError> {
    let program = resolve_tool(configured, key)?;
    let mut cmd = tool_command(kcfg, &program);
    if let Some(conf) = krb5_config {
        cmd.env("KRB5_CONFIG", conf);
    }
    cmd.args(args);
    run_bounded(cmd, timeout(kcfg)).map_err(|e| match e {
        CommandError::Timeout { .. } => KerberosError::Timeout {
            tool: key.to_string(),
            what: what.to_string(),
            secs: kcfg.timeout_secs.max(1),
        },
        CommandError::Spawn { source, .. } => KerberosError::ToolMissing {
            tool: configured.to_string(),
            key,
            detail: source.to_string(),
        },
    })
}
