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
    // Unchecked: it fails only when a subscriber is already set (tests, a second init), which
    // then keeps logging.
    let _ = match cfg.format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text => registry.with(fmt.event_format(Plain)).try_init(),
    };
}

/// Text lines as `WARN cancellation requested: ... signal=SIGTERM`: the level, unpadded (the
/// default format right-aligns it, so every warning in a job log began with a space), then
/// the message and its fields.
struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "{} ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
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
    fn text_lines_start_with_the_level_not_a_space() {
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(super::Plain);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                signal = "SIGTERM",
                "cancellation requested: stopping the job's processes"
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "WARN cancellation requested: stopping the job's processes signal=\"SIGTERM\"\n"
        );
    }

    #[test]
    fn bare_level_keeps_dependencies_quiet() {
        assert_eq!(
            super::directives("debug"),
            "warn,p3_executor=debug,p3_steps=debug,p3_contract=debug"
        );
        assert_eq!(super::directives("aws_config=debug"), "aws_config=debug");
    }
}
