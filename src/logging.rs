//! Diagnostics to stderr (stdout belongs to the runner protocol and the job log).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber. `P3_EXECUTOR_LOG` overrides the configured level.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("P3_EXECUTOR_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(directives(&cfg.level)).ok())
        .unwrap_or_else(|| EnvFilter::new("warn,p3_executor=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour only for a person at a terminal; job logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.without_time().try_init(),
    };
}

/// A bare level applies to our own code; dependencies (the AWS SDK logs credential provider
/// details at info) stay at warn unless the operator writes a full filter.
fn directives(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,p3_executor={level}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_level_keeps_dependencies_quiet() {
        assert_eq!(super::directives("debug"), "warn,p3_executor=debug");
        assert_eq!(super::directives("aws_config=debug"), "aws_config=debug");
    }
}
