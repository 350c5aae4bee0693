//! Progress reporting: a bar on a terminal; in CI logs a summary line every few seconds while
//! bytes move or files finish, and one line saying what the step waits for when nothing does.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Requests in flight, and the last one started (`GET http://...`).
    requests: AtomicU64,
    last_request: Mutex<String>,
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
            requests: AtomicU64::new(0),
            last_request: Mutex::new(String::new()),
        });
        if let Mode::Lines(interval) = mode {
            // The ticker holds only a weak reference: it stops when the transfer is done.
            let weak = Arc::downgrade(&p);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                let mut shown = (0, 0);
                let mut still_since: Option<Instant> = None;
                let mut said_waiting = false;
                loop {
                    tick.tick().await;
                    let Some(p) = weak.upgrade() else { break };
                    let now = (p.files_done(), p.bytes_done.load(Ordering::Relaxed));
                    if now != shown {
                        // Bytes moved or files finished since the last line.
                        shown = now;
                        still_since = None;
                        said_waiting = false;
                        eprintln!("progress: {}", p.summary());
                    } else if !said_waiting
                        && let Some(line) = p.waiting(*still_since.get_or_insert_with(|| {
                            // Nothing moved since the previous tick at least.
                            Instant::now()
                                .checked_sub(interval)
                                .unwrap_or_else(Instant::now)
                        }))
                    {
                        // Nothing moved: say once what the step waits for.
                        said_waiting = true;
                        eprintln!("{line}");
                    }
                }
            });
        }
        p
    }

    /// A request was sent (`what`: method and URL).
    pub fn request_started(&self, what: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.last_request.lock().expect("lock") = what.to_string();
    }

    /// A request's attempt ended.
    pub fn request_ended(&self) {
        let _ = self
            .requests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// `waiting: no data for 5 s; 1 request(s) in flight, the last: GET http://...` (a
    /// response body that stalls is no longer a request in flight: the last one is named).
    fn waiting(&self, since: Instant) -> Option<String> {
        let n = self.requests.load(Ordering::Relaxed);
        let last = escape(&self.last_request.lock().expect("lock")).into_owned();
        let secs = since.elapsed().as_secs_f64();
        Some(if last.is_empty() {
            format!("waiting: no data for {secs:.0} s")
        } else {
            format!("waiting: no data for {secs:.0} s; {n} request(s) in flight, the last: {last}")
        })
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

    /// A file finished whose line must stay off stdout (a download to stdout): on stderr,
    /// unless quiet.
    pub fn file_done_on_stderr(&self, line: &str) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        if !self.quiet {
            self.eprintln(line);
        }
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
