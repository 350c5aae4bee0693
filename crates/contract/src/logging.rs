//! Diagnostics to stderr (stdout belongs to the runner protocol and the job log).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use serde::{Deserialize, Serialize};

/// Diagnostics settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (an `RUST_LOG`-style filter also works).
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// Diagnostics output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

/// Install the global subscriber. `P3_EXECUTOR_LOG` overrides the configured level.
///
/// `Targets` (`warn,p3_executor=debug` syntax) rather than `EnvFilter`: the latter compiles
/// regular expressions at start-up, and the runner starts the executor for every stage.
pub fn init(cfg: &LogConfig) {
    let filter: Targets = std::env::var("P3_EXECUTOR_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .or_else(|| directives(&cfg.level).parse().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(tracing::Level::WARN)
                .with_target("p3_executor", tracing::Level::INFO)
                .with_target("p3_steps", tracing::Level::INFO)
                .with_target("p3_contract", tracing::Level::INFO)
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour only for a person at a terminal; job logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match cfg.format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text => registry.with(fmt.without_time()).try_init(),
    };
}

/// A bare level applies to our own code; dependencies (the AWS SDK logs credential provider
/// details at info) stay at warn unless the operator writes a full filter.
fn directives(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,p3_executor={level},p3_steps={level},p3_contract={level}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_level_keeps_dependencies_quiet() {
        assert_eq!(
            super::directives("debug"),
            "warn,p3_executor=debug,p3_steps=debug,p3_contract=debug"
        );
        assert_eq!(super::directives("aws_config=debug"), "aws_config=debug");
    }
}
