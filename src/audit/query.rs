//! What `audit show` prints: the record filters (`--job`, `--project`, `--since`) and the
//! rendering of the matching records as a terminal-safe table or as the stored JSON lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};

use super::error::{AuditError, io};
use super::record::AuditRecord;
use crate::terminal::escape;

/// Which records `audit show` prints.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this job.
    pub job: Option<u64>,
    /// Only projects matching this glob (`group/*`) or exact path.
    pub project: Option<globset::GlobMatcher>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    /// The filter for `audit show`'s `--job`, `--project` (path or glob) and `--since`.
    pub fn from_options(
        job: Option<u64>,
        project: Option<&str>,
        since: Option<&str>,
    ) -> Result<Self, crate::error::Error> {
        let project = project
            .map(|p| {
                globset::Glob::new(p)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| crate::error::Error::Usage(format!("--project {p:?}: {e}")))
            })
            .transpose()?;
        let since = since
            .map(|s| parse_since(s, chrono::Utc::now()).map_err(crate::error::Error::Usage))
            .transpose()?;
        Ok(Filter {
            job,
            project,
            since,
        })
    }

    /// Whether `r` passes every set criterion.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.job.is_none_or(|j| r.job_id == Some(j))
            && self
                .project
                .as_ref()
                .is_none_or(|g| r.project.as_deref().is_some_and(|p| g.is_match(p)))
            && self.since.is_none_or(|t| r.time >= t)
    }
}

/// Parse `--since`: RFC 3339 (`2026-11-26T12:00:00Z`), a UTC date (`2026-11-26`), or an age
/// (`90m`, `12h`, `7d`, `30s`, and humantime's other forms: `1h 30m`, `2days`, `1w`) before `now`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    let invalid = || {
        format!(
            "--since {text:?}: expected an RFC 3339 time (2026-11-26T12:00:00Z), a date (2026-11-26) or an age (90m, 12h, 7d)"
        )
    };
    let beyond = || format!("--since {text:?}: the age reaches back beyond the representable time");
    // An age in humantime's syntax (`90m`, `12h`, `7d`, also `1h 30m`, `2days`, `1w`). A sign
    // is read as an integer's: `+` is none, and `-` only a zero age may carry.
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let age = match humantime::parse_duration(unsigned) {
        Ok(age) if negative && !age.is_zero() => return Err(invalid()),
        Ok(age) => age,
        Err(humantime::DurationError::NumberOverflow) => return Err(beyond()),
        Err(_) => return Err(invalid()),
    };
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or_else(beyond)
}

/// Print the records of the log at `path` matching `filter` to `out`: a table (one row per
/// record, its text fields escaped for the terminal), or with `json` the stored lines unchanged.
/// Returns how many were printed. Lines that are not records are reported on stderr and
/// skipped (`audit verify` says what is wrong with them).
pub fn show(
    path: &Path,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path, "open")(e)),
    };
    let mut matching: Vec<(String, AuditRecord)> = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path, "read"))?;
        let record: AuditRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                // serde's messages can quote the line's content.
                eprintln!(
                    "audit log line {}: not a record ({}); skipped",
                    i + 1,
                    escape(&e.to_string())
                );
                continue;
            }
        };
        if filter.matches(&record) {
            matching.push((line, record));
        }
    }
    print(&matching, json, false, out).map_err(io(path, "write output"))?;
    Ok(matching.len())
}

/// Print `records` (each with its stored line): a table, with a HOST column first when
/// `with_host` (records of several hosts, `audit show --s3`), or with `json` the stored lines
/// unchanged.
pub fn print(
    records: &[(String, AuditRecord)],
    json: bool,
    with_host: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        for (line, _) in records {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let rows = records.iter().map(|(_, r)| table_row(r));
    if !with_host {
        return print_table(rows.collect(), out);
    }
    let mut header = vec!["HOST"];
    header.extend(HEADER);
    let header: [&str; 10] = header.try_into().expect("ten columns");
    let rows = records.iter().zip(rows).map(|((_, r), row)| {
        let mut cells = vec![host_cell(r)];
        cells.extend(row);
        let cells: [String; 10] = cells.try_into().expect("ten cells");
        cells
    });
    write!(out, "{}", p3_contract::terminal::table(header, rows))
}

/// The host a record names: its name, and the start of its stable id (names get reused).
fn host_cell(r: &AuditRecord) -> String {
    match &r.host_id {
        Some(id) => format!("{} ({:.8})", escape(&r.host), escape(id)),
        None => escape(&r.host).into_owned(),
    }
}

const HEADER: [&str; 9] = [
    "TIME (UTC)",
    "JOB",
    "PROJECT",
    "REF",
    "DEVSTAGE → DEPLOY STAGE",
    "PRINCIPAL",
    "EVENT",
    "DECISION",
    "REASON",
];

/// One table row. Every text field may hold what a job supplied (its requested devstage, the
/// reason quoting it), so each is [`escape`]d: a record is always exactly one row, and no
/// control or escape sequence reaches the operator's terminal.
fn table_row(r: &AuditRecord) -> [String; 9] {
    let dash = || "-".to_string();
    let opt = |v: &Option<String>| v.as_deref().map_or_else(dash, |s| escape(s).into_owned());
    let git_ref = match (&r.git_ref, r.ref_protected) {
        (Some(g), Some(true)) => format!("{} (protected)", escape(g)),
        (Some(g), _) => escape(g).into_owned(),
        (None, _) => dash(),
    };
    let stage = match (&r.devstage, &r.deploy_stage) {
        (None, None) => dash(),
        (d, s) => format!("{} → {}", opt(d), opt(s)),
    };
    [
        r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
        r.job_id.map_or_else(dash, |j| j.to_string()),
        opt(&r.project),
        git_ref,
        stage,
        opt(&r.principal),
        r.event.to_string(),
        r.decision.to_string(),
        escape(&r.reason).into_owned(),
    ]
}

/// The table `audit show` prints: one line per record (see [`p3_contract::terminal::table`]).
fn print_table(rows: Vec<[String; 9]>, out: &mut dyn Write) -> std::io::Result<()> {
    write!(out, "{}", p3_contract::terminal::table(HEADER, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, Decision};

    #[test]
    fn since_accepts_times_dates_and_ages() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("2026-11-26T10:00:00+01:00", now).unwrap(),
            now - chrono::Duration::hours(3)
        );
        assert_eq!(
            parse_since("2026-11-26", now).unwrap(),
            now - chrono::Duration::hours(12)
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            now - chrono::Duration::minutes(90)
        );
        assert_eq!(
            parse_since("7d", now).unwrap(),
            now - chrono::Duration::days(7)
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("", now).is_err());
    }

    #[test]
    fn a_hostile_record_is_one_escaped_row() {
        let mut r = AuditRecord::new(
            AuditEvent::Deny,
            Decision::Denied,
            "devstage x\n2026-01-01 00:00:00  999  grant  granted\x1b[2J requested",
        );
        r.devstage = Some("client_dev\n999  grant  granted\x1b]0;owned\x07".into());
        r.project = Some("grp/app\u{202e}".into());
        r.git_ref = Some("main\r".into());
        r.ref_protected = Some(true);
        let mut out = Vec::new();
        print_table(vec![table_row(&r)], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(!out.contains(['\x1b', '\x07', '\r', '\u{202e}']), "{out:?}");
        let row = out.lines().nth(1).unwrap();
        for shown in [
            r"client_dev\n999  grant  granted\x1b]0;owned\x07 → -",
            r"grp/app\u{202e}",
            r"main\r (protected)",
            r"devstage x\n2026-01-01 00:00:00  999  grant  granted\x1b[2J requested",
        ] {
            assert!(row.contains(shown), "{shown} not in {row}");
        }
    }

    #[test]
    fn a_record_longer_than_the_table_can_measure_is_still_one_row() {
        // Escaped, each bidi override is 8 characters: far wider than comfy-table's u16 widths.
        let long = "\u{202e}".repeat(20_000);
        let mut r = AuditRecord::new(AuditEvent::Deny, Decision::Denied, long.clone());
        r.devstage = Some(long);
        r.job_id = Some(7);
        let mut out = Vec::new();
        print_table(vec![table_row(&r)], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2);
        let row = out.lines().nth(1).unwrap();
        assert!(row.contains("  7  ") && row.contains("  denied  "));
        assert!(row.ends_with(&format!(
            "… ({} more characters)",
            8 * 20_000 - p3_contract::terminal::MAX_CELL_CHARS
        )));
    }
}
