//! Running kinit, klist and kdestroy: resolved from the config, with a controlled environment,
//! bounded by `kerberos.timeout_secs` (MIT kinit waits about 27 s on a KDC that accepts
//! connections but never answers, and has no timeout setting of its own).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p3_contract::env;

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

/// Where MIT's libraries write their trace: removed from every tool's environment, and set
/// to stderr for a traced kinit (which KDC answered).
pub(super) const KRB5_TRACE: &str = "KRB5_TRACE";

/// A command for a Kerberos tool with a controlled environment.
fn tool_command(kcfg: &KerberosConfig, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    // English messages: error classification and the docs quote them.
    cmd.env("LC_ALL", "C");
    // Never let an inherited cache, client keytab or trace setting redirect what we do.
    for var in [
        env::KRB5CCNAME,
        "KRB5_CLIENT_KTNAME",
        "KRB5_KTNAME",
        KRB5_TRACE,
    ] {
        cmd.env_remove(var);
    }
    if let Some(conf) = &kcfg.krb5_config {
        cmd.env(env::KRB5_CONFIG, conf);
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
    run_tool_with(kcfg, configured, key, args, what, Vec::new())
}

/// [`run_tool`] with extra environment (`KRB5_CONFIG` replacing the configured one,
/// `KRB5_TRACE`).
pub(super) fn run_tool_with(
    kcfg: &KerberosConfig,
    configured: &str,
    key: &'static str,
    args: Vec<OsString>,
    what: &str,
    envs: Vec<(&'static str, OsString)>,
) -> Result<Output, KerberosError> {
    let program = resolve_tool(configured, key)?;
    let mut cmd = tool_command(kcfg, &program);
    cmd.envs(envs);
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

/// What MIT's `KRB5_TRACE` output says about the KDCs a kinit talked to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KdcTrace {
    /// The KDC whose answer ended the exchange (`host:port`), if any answered.
    pub answered: Option<String>,
    /// KDCs contacted, in order, that never answered (refused, mute, unreachable).
    pub unanswered: Vec<String>,
}

/// The message of a trace line (`[pid] seconds.micros: message`), or None for other stderr.
pub(super) fn trace_message(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let (pid, rest) = rest.split_once("] ")?;
    let (stamp, message) = rest.split_once(": ")?;
    (pid.bytes().all(|b| b.is_ascii_digit())
        && !stamp.is_empty()
        && stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    .then_some(message)
}

/// The address in a trace's remote address: `stream 10.0.0.1:88` (MIT 1.13 and later),
/// `tcp/10.0.0.1:88` (older), `dgram`/`udp/` likewise.
fn trace_addr(raddr: &str) -> String {
    let raddr = raddr.trim();
    for prefix in ["stream ", "dgram ", "https ", "tcp/", "udp/"] {
        if let Some(addr) = raddr.strip_prefix(prefix) {
            return addr.to_string();
        }
    }
    raddr.to_string()
}

/// Which KDCs a traced kinit contacted and which one answered, from its stderr: "Initiating
/// TCP connection to …", "Sending TCP request to …" / "Sending initial UDP request to …", and
/// "Received answer (N bytes) from …". The last answer counts (AD asks for pre-authentication,
/// so a kinit makes two requests).
pub fn parse_kdc_trace(stderr: &str) -> KdcTrace {
    let mut contacted: Vec<String> = Vec::new();
    let mut answered = None;
    for message in stderr.lines().filter_map(trace_message) {
        if message.starts_with("Received answer")
            && let Some((_, raddr)) = message.split_once(" from ")
        {
            answered = Some(trace_addr(raddr));
        } else if (message.starts_with("Initiating TCP connection to ")
            || (message.starts_with("Sending ") && message.contains(" request to ")))
            && let Some((_, raddr)) = message.split_once(" to ")
        {
            let addr = trace_addr(raddr);
            if !contacted.contains(&addr) {
                contacted.push(addr);
            }
        }
    }
    contacted.retain(|addr| Some(addr) != answered.as_ref());
    KdcTrace {
        answered,
        unanswered: contacted,
    }
}

/// stderr without its trace lines: what kinit itself said, for error messages.
pub fn without_trace(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| trace_message(l).is_none())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kinit 1.20's trace with a refused DC, then a mute one, then one that answers twice
    /// (pre-authentication), and its final message.
    const TRACE: &str = "[6393] 1795992487.826850: Getting initial credentials for svc@DEV.TEST
[6393] 1795992487.826856: Resolving hostname 127.0.0.1
[6393] 1795992487.826857: Initiating TCP connection to stream 127.0.0.1:47002
[6393] 1795992487.826858: Terminating TCP connection to stream 127.0.0.1:47002
[6393] 1795992487.826859: Initiating TCP connection to stream 127.0.0.1:47001
[6393] 1795992487.826860: Sending TCP request to stream 127.0.0.1:47001
[6393] 1795992497.826861: Initiating TCP connection to stream 127.0.0.1:60959
[6393] 1795992497.826862: Sending TCP request to stream 127.0.0.1:60959
[6393] 1795992497.826863: Received answer (190 bytes) from stream 127.0.0.1:60959
[6393] 1795992497.826864: Received error from KDC: -1765328359/Additional pre-authentication required
[6393] 1795992497.826865: Sending TCP request to stream 127.0.0.1:60959
[6393] 1795992497.826866: Received answer (758 bytes) from stream 127.0.0.1:60959
kinit: Password incorrect while getting initial credentials
";

    #[test]
    fn the_trace_names_the_dc_that_answered_and_those_that_did_not() {
        assert_eq!(
            parse_kdc_trace(TRACE),
            KdcTrace {
                answered: Some("127.0.0.1:60959".into()),
                unanswered: vec!["127.0.0.1:47002".into(), "127.0.0.1:47001".into()],
            }
        );
        // Older MIT spells addresses tcp/<addr>; UDP exchanges count too.
        let old = "[1] 2.3: Sending initial UDP request to dgram 10.0.0.1:88\n[1] 2.4: Sending TCP request to tcp/10.0.0.2:88\n[1] 2.5: Received answer (9 bytes) from tcp/10.0.0.2:88\n";
        assert_eq!(
            parse_kdc_trace(old),
            KdcTrace {
                answered: Some("10.0.0.2:88".into()),
                unanswered: vec!["10.0.0.1:88".into()],
            }
        );
        // Nobody answered: every DC is listed, none answered.
        let none = parse_kdc_trace(
            "[1] 2.3: Initiating TCP connection to stream 127.0.0.1:2\nkinit: Cannot contact any KDC for realm 'DEV.TEST' while getting initial credentials\n",
        );
        assert_eq!(none.answered, None);
        assert_eq!(none.unanswered, vec!["127.0.0.1:2"]);
    }

    #[test]
    fn error_text_keeps_only_what_kinit_said() {
        assert_eq!(
            without_trace(TRACE),
            "kinit: Password incorrect while getting initial credentials"
        );
        assert_eq!(
            without_trace("kinit: plain\n[not a trace] line"),
            "kinit: plain\n[not a trace] line"
        );
    }
}
