//! Progress reporting: a bar on a terminal, one summary line every few seconds in CI logs.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::plan::human_size;
use p3_contract::terminal::escape;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bar on stderr.
    Bar,
    /// One line on stderr every `interval`.
    Lines(Duration),
    /// Nothing but the per-file lines.
    Off,
}

impl Mode {
    /// Bar on a terminal, lines otherwise (CI logs); `P3_S3_PROGRESS_INTERVAL` (seconds)
    /// changes the line interval.
    pub fn detect(disabled: bool) -> Self {
        if disabled {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            let secs = std::env::var("P3_S3_PROGRESS_INTERVAL")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .unwrap_or(5.0);
            Mode::Lines(Duration::from_secs_f64(secs))
        }
    }
}

/// Shared counters; cheap to update from many tasks.
#[derive(Debug)]
pub struct Progress {
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    files_total: AtomicU64,
    files_done: AtomicU64,
    bar: Option<ProgressBar>,
    started: Instant,
    quiet: bool,
}

impl Progress {
    /// Start reporting in `mode`; `quiet` also hides the per-file lines.
    pub fn start(mode: Mode, quiet: bool) -> Arc<Self> {
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let p = Arc::new(Self {
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            bar,
            started: Instant::now(),
            quiet,
        });
        if let Mode::Lines(interval) = mode {
            // The ticker holds only a weak reference: it stops when the transfer is done.
            let weak = Arc::downgrade(&p);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(p) => eprintln!("progress: {}", p.summary()),
                        None => break,
                    }
                }
            });
        }
        p
    }

    /// More work is known.
    pub fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(self.bytes_total.load(Ordering::Relaxed));
        }
    }

    /// Bytes moved.
    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// A file finished; print its line (`upload: a to b`) unless quiet.
    pub fn file_done(&self, line: &str) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.println(line);
    }

    /// Print a line to stdout without tearing the bar. Lines name object keys and file names,
    /// so the line is [`escape`]d: a key holding a newline or an escape sequence prints as
    /// one visible line.
    pub fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        let line = escape(line);
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Print an error line to stderr without tearing the bar (always shown), [`escape`]d like
    /// [`Progress::println`].
    pub fn eprintln(&self, line: &str) {
        let line = escape(line);
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// `3/10 files, 1.0 MiB/4.0 MiB, 2.0 MiB/s`.
    pub fn summary(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let done = self.bytes_done.load(Ordering::Relaxed);
        format!(
            "{}/{} files, {}/{}, {}/s",
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
            human_size(done),
            human_size(self.bytes_total.load(Ordering::Relaxed)),
            human_size((done as f64 / secs) as u64),
        )
    }

    /// Files completed so far.
    pub fn files_done(&self) -> u64 {
        self.files_done.load(Ordering::Relaxed)
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
