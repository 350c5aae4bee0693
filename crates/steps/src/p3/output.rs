//! What a `p3` run prints: the result table (one escaped line per job), each failure's whole
//! error below it, the summary of a stopped run, and an argv as a shell reads it back.

use p3_contract::steps_config::Action;
use p3_contract::template::quote_argv;
use p3_contract::terminal::escape;

use super::execute::{JobResult, Stopped};

/// Most characters of a client's error in the table; the whole text follows the table.
pub(crate) const ERROR_CELL_CHARS: usize = 200;

/// `text` without terminal escape sequences (colours, titles, cursor moves).
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The table's error cell: the first line of the error that says something (ANSI stripped,
/// blank and decoration-only lines skipped), at most [`ERROR_CELL_CHARS`] characters, after
/// the exit status.
pub(crate) fn error_cell(error: &str) -> String {
    let clean = strip_ansi(error);
    // `exit status: 3: <stderr>` or `signal: 9 (SIGKILL): <stderr>`.
    let (status, rest) = ["exit status: ", "signal: "]
        .iter()
        .find_map(|p| {
            let after = clean.strip_prefix(p)?;
            let (code, rest) = after.split_once(':')?;
            Some((Some(format!("{p}{code}")), rest))
        })
        .unwrap_or((None, clean.as_str()));
    let first = rest
        .lines()
        .map(str::trim)
        .find(|l| l.chars().any(char::is_alphanumeric))
        .unwrap_or("");
    let line = match status {
        Some(s) if first.is_empty() => s.to_string(),
        Some(s) => format!("{s}: {first}"),
        None => first.to_string(),
    };
    let more = rest.lines().filter(|l| !l.trim().is_empty()).count() > 1;
    let mut cell: String = line.chars().take(ERROR_CELL_CHARS).collect();
    if line.chars().count() > ERROR_CELL_CHARS || more {
        cell.push_str(" …");
    }
    escape(&cell).into_owned()
}

/// The result table: job, action, result, duration, and the first meaningful line of the
/// error ([`error_cell`]). Job names and errors are [`escape`]d: one line per job.
pub(crate) fn table(results: &[JobResult]) -> String {
    let rows = results.iter().map(|r| {
        [
            escape(&r.job).into_owned(),
            r.action.name().into(),
            if r.ok { "ok" } else { "FAILED" }.into(),
            format!("{:.1}s", r.duration_ms as f64 / 1000.0),
            r.error.as_deref().map(error_cell).unwrap_or_default(),
        ]
    });
    p3_contract::terminal::table(["JOB", "ACTION", "RESULT", "DURATION", "ERROR"], rows)
}

/// Below the table: each failed job's whole error (ANSI stripped, each line escaped).
pub(crate) fn error_details(results: &[JobResult]) -> String {
    let mut out = String::new();
    for r in results {
        let Some(error) = &r.error else { continue };
        out.push_str(&format!(
            "--- {} {}: the client's error output ---\n",
            escape(&r.job),
            r.action.name()
        ));
        for line in strip_ansi(error).lines() {
            out.push_str(&escape(line));
            out.push('\n');
        }
    }
    out
}

/// What a stopped run had done, for the log.
pub(crate) fn stopped_summary(action: Action, results: &[JobResult], stopped: &Stopped) -> String {
    let names = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.into_iter()
                .map(|n| escape(n).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let done = |ok: bool| {
        names(
            results
                .iter()
                .filter(|r| r.ok == ok)
                .map(|r| r.job.as_str())
                .collect(),
        )
    };
    let verb = match action {
        Action::Deploy => "applied",
        Action::Remove => "removed",
        Action::Status => "shown",
    };
    let mut s = format!("p3 {} stopped by a signal:\n", action.name());
    s.push_str(&format!("  {verb}: {}\n", done(true)));
    if results.iter().any(|r| !r.ok) {
        s.push_str(&format!("  failed: {}\n", done(false)));
    }
    s.push_str(&format!(
        "  in flight (sent SIGTERM; its state in P3 is unknown, check with p3 status): {}\n",
        names(stopped.in_flight.iter().map(String::as_str).collect())
    ));
    s.push_str(&format!(
        "  not started: {}\n",
        names(stopped.not_started.iter().map(String::as_str).collect())
    ));
    s
}

/// An argv as one line for a person that a shell reads back as the same argv: plain
/// arguments quoted as usual, one holding control or invisible characters (a newline in a
/// command) in bash's `$'...'` form, so a copy-paste passes a newline, not a backslash-n.
pub(crate) fn shown_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if escape(a) == a.as_str() {
                quote_argv(std::slice::from_ref(a))
            } else {
                ansi_c_quote(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `$'...'` with `\n`, `\t`, `\xNN`, `\uNNNN` for what is not plainly printable.
fn ansi_c_quote(arg: &str) -> String {
    let mut out = String::from("$'");
    for c in arg.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if escape(&c.to_string()) != c.to_string().as_str() => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_job_with_its_error() {
        let r = |job: &str, ok: bool| JobResult {
            job: job.into(),
            action: Action::Deploy,
            ok,
            duration_ms: 1500,
            error: (!ok).then(|| "exit status: 3: quota\nexceeded".into()),
            output: String::new(),
        };
        let t = table(&[r("alpha", true), r("b", false)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "JOB    ACTION  RESULT  DURATION  ERROR");
        assert_eq!(lines[1], "alpha  deploy  ok      1.5s");
        assert_eq!(
            lines[2],
            "b      deploy  FAILED  1.5s      exit status: 3: quota …"
        );
        // The whole error follows the table.
        assert_eq!(
            error_details(&[r("b", false)]),
            "--- b deploy: the client's error output ---\nexit status: 3: quota\nexceeded\n"
        );
    }

    #[test]
    fn the_error_cell_is_the_first_meaningful_line_without_colours() {
        let stderr = format!(
            "exit status: 3: \n\x1b[31m===\x1b[0m\n\x1b[1;31mERROR\x1b[0m: quota exceeded in client_dev\n{}",
            "trace line\n".repeat(2000)
        );
        let cell = error_cell(&stderr);
        assert_eq!(
            cell,
            "exit status: 3: ERROR: quota exceeded in client_dev …"
        );
        let long = format!("exit status: 1: {}", "x".repeat(1000));
        assert!(error_cell(&long).chars().count() <= ERROR_CELL_CHARS + 2);
        assert_eq!(strip_ansi("\x1b]0;title\x07a\x1b[2Jb"), "ab");
    }

    #[test]
    fn a_stopped_run_says_what_was_applied_in_flight_and_not_started() {
        let r = JobResult {
            job: "a".into(),
            action: Action::Deploy,
            ok: true,
            duration_ms: 1,
            error: None,
            output: String::new(),
        };
        let s = stopped_summary(
            Action::Deploy,
            &[r],
            &Stopped {
                in_flight: Some("b".into()),
                not_started: vec!["c".into(), "d".into()],
            },
        );
        assert!(s.contains("applied: a\n"), "{s}");
        assert!(
            s.contains(
                "in flight (sent SIGTERM; its state in P3 is unknown, check with p3 status): b\n"
            ),
            "{s}"
        );
        assert!(s.contains("not started: c, d\n"), "{s}");
    }

    #[test]
    fn an_error_longer_than_the_table_can_measure_is_still_one_line() {
        let r = JobResult {
            job: "ingest".into(),
            action: Action::Deploy,
            ok: false,
            duration_ms: 1500,
            // One line far wider than comfy-table's u16 widths.
            error: Some("y".repeat(80_000)),
            output: String::new(),
        };
        let t = table(&[r]);
        assert_eq!(t.lines().count(), 2);
        let row = t.lines().nth(1).unwrap();
        assert!(
            row.starts_with("ingest  deploy  FAILED  1.5s  "),
            "{:.80}",
            row
        );
        assert!(row.ends_with(" …"), "{:.80}", row);
        assert!(row.chars().count() < 300);
    }

    #[test]
    fn table_and_argv_escape_what_the_client_and_job_supplied() {
        let r = JobResult {
            job: "ingest\x1b[2J".into(),
            action: Action::Deploy,
            ok: false,
            duration_ms: 1500,
            error: Some("exit status: 3: \x1b]0;owned\x07bad\nforged  deploy  ok\r".into()),
            output: String::new(),
        };
        let t = table(&[r]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains(['\x1b', '\x07', '\r']), "{t:?}");
        assert_eq!(
            t.lines().nth(1).unwrap(),
            r"ingest\x1b[2J  deploy  FAILED  1.5s      exit status: 3: bad …"
        );
        // A newline is shown as bash reads it back: $'a\nb' is a, newline, b.
        assert_eq!(
            shown_argv(&["p3".into(), "a\nb".into(), "it's".into(), "x\\y\x07".into()]),
            r"p3 $'a\nb' 'it'\''s' $'x\\y\x07'"
        );
    }
}
