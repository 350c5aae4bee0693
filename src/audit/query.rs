//! What `audit show` prints: the record filters ([`Filter`], resolved from the command line's
//! [`ShowFilter`]) and the rendering of the matching records as a terminal-safe table or as the
//! stored JSON lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;

use super::error::{AuditError, io};
use super::record::{AuditEvent, AuditRecord, Decision};
use crate::error::Error;
use crate::terminal::escape;

/// `audit show`'s filters as typed on the command line (locally and with `--s3`); every one
/// given must match. [`Filter::resolve`] checks them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShowFilter {
    /// Only this GitLab job id.
    #[arg(long)]
    pub job: Option<u64>,
    /// Only this project path, or a glob (`group/*`).
    #[arg(long)]
    pub project: Option<String>,
    /// Only records since an RFC 3339 time, a UTC date (2026-11-26), or an age (90m, 12h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before a time, in `--since`'s forms (`--until 2026-12-01`: up to the end
    /// of November 30).
    #[arg(long)]
    pub until: Option<String>,
    /// Only records naming this Kerberos principal, or a glob (`svc_client_*@EXAMPLE.COM`).
    #[arg(long)]
    pub principal: Option<String>,
    /// Only records of this account (`[accounts.<name>]`, the deploy stage).
    #[arg(long)]
    pub account: Option<String>,
    /// Only records for this requested devstage.
    #[arg(long)]
    pub devstage: Option<String>,
    /// Only jobs started by this GitLab user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this event: grant, deny, renew, cleanup, gc, s3_credentials or recovered.
    #[arg(long)]
    pub event: Option<String>,
    /// Only this decision: granted, denied, succeeded or failed.
    #[arg(long)]
    pub decision: Option<String>,
}

/// Which records `audit show` prints: [`ShowFilter`] checked and compiled.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this job.
    pub job: Option<u64>,
    /// Only projects matching this glob (`group/*`) or exact path.
    pub project: Option<globset::GlobMatcher>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only principals matching this glob or exact name.
    pub principal: Option<globset::GlobMatcher>,
    /// Only this account (the record's `account` or `deploy_stage`).
    pub account: Option<String>,
    /// Only this requested devstage.
    pub devstage: Option<String>,
    /// Only jobs of this GitLab user.
    pub user: Option<String>,
    /// Only this event.
    pub event: Option<AuditEvent>,
    /// Only this decision.
    pub decision: Option<Decision>,
}

impl Filter {
    /// Check and compile the command line's filters; a bad one is a usage error naming it.
    pub fn resolve(args: &ShowFilter) -> Result<Self, Error> {
        Self::resolve_at(args, Utc::now())
    }

    fn resolve_at(args: &ShowFilter, now: DateTime<Utc>) -> Result<Self, Error> {
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_time(flag, t, now).map_err(Error::Usage))
                .transpose()
        };
        let filter = Filter {
            job: args.job,
            project: glob("--project", &args.project)?,
            since: time("--since", &args.since)?,
            until: time("--until", &args.until)?,
            principal: glob("--principal", &args.principal)?,
            account: args.account.clone(),
            devstage: args.devstage.clone(),
            user: args.user.clone(),
            event: named("--event", &args.event, AuditEvent::Other, EVENTS)?,
            decision: named("--decision", &args.decision, Decision::Other, DECISIONS)?,
        };
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(Error::Usage(format!(
                "--since {} is not before --until {}: no record can match",
                since.to_rfc3339(),
                until.to_rfc3339()
            )));
        }
        Ok(filter)
    }

    /// Whether `r` passes every set criterion.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let is = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let globbed = |want: &Option<globset::GlobMatcher>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|g| have.as_deref().is_some_and(|h| g.is_match(h)))
        };
        self.job.is_none_or(|j| r.job_id == Some(j))
            && globbed(&self.project, &r.project)
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time < t)
            && globbed(&self.principal, &r.principal)
            && (is(&self.account, &r.account) || is(&self.account, &r.deploy_stage))
            && is(&self.devstage, &r.devstage)
            && is(&self.user, &r.user)
            && self.event.is_none_or(|e| r.event == e)
            && self.decision.is_none_or(|d| r.decision == d)
    }
}

const EVENTS: &str = "grant, deny, renew, cleanup, gc, s3_credentials, recovered";
const DECISIONS: &str = "granted, denied, succeeded, failed";

/// A glob option (`--project`, `--principal`): an exact name is a glob without wildcards.
fn glob(flag: &str, text: &Option<String>) -> Result<Option<globset::GlobMatcher>, Error> {
    text.as_deref()
        .map(|p| {
            globset::Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| Error::Usage(format!("{flag} {p:?}: {e}")))
        })
        .transpose()
}

/// An event or decision by the name records store; a name this version does not write
/// (`other`) is refused rather than matching nothing.
fn named<T: DeserializeOwned + PartialEq>(
    flag: &str,
    text: &Option<String>,
    other: T,
    names: &str,
) -> Result<Option<T>, Error> {
    let Some(text) = text else { return Ok(None) };
    match serde_json::from_value::<T>(serde_json::Value::String(text.clone())) {
        Ok(v) if v != other => Ok(Some(v)),
        _ => Err(Error::Usage(format!(
            "{flag} {text:?}: expected one of {names}"
        ))),
    }
}

/// Parse `--since`: RFC 3339 (`2026-11-26T12:00:00Z`), a UTC date (`2026-11-26`), or an age
/// (`90m`, `12h`, `7d`, `30s`, and humantime's other forms: `1h 30m`, `2days`, `1w`) before `now`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    parse_time("--since", text, now)
}

/// [`parse_since`] for the option `flag` (`--since`, `--until`), which its errors name.
fn parse_time(flag: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    let invalid = || {
        format!(
            "{flag} {text:?}: expected an RFC 3339 time (2026-11-26T12:00:00Z), a date (2026-11-26) or an age (90m, 12h, 7d)"
        )
    };
    let beyond = || format!("{flag} {text:?}: the age reaches back beyond the representable time");
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

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    /// A grant of `svc_client_uat` to job 8812 of grp/app, started by alice, for client_prod.
    fn prod_grant() -> AuditRecord {
        let mut r = AuditRecord::new(AuditEvent::Grant, Decision::Granted, "every rule satisfied");
        r.time = at("2026-11-26T12:58:03Z");
        r.job_id = Some(8812);
        r.project = Some("grp/app".into());
        r.user = Some("alice".into());
        r.devstage = Some("client_prod".into());
        r.deploy_stage = Some("client_uat".into());
        r.account = Some("client_uat".into());
        r.principal = Some("svc_client_uat@EXAMPLE.COM".into());
        r
    }

    #[test]
    fn every_filter_given_must_match() {
        let now = at("2026-12-01T00:00:00Z");
        let grant = prod_grant();
        // A denial names the devstage only; its account is unknown.
        let mut deny = AuditRecord::new(AuditEvent::Deny, Decision::Denied, "ref not protected");
        deny.time = at("2026-11-26T13:01:44Z");
        deny.devstage = Some("client_prod".into());
        deny.user = Some("mallory".into());
        // An image refusal names the deploy stage but no account.
        let mut image = deny.clone();
        image.account = None;
        image.deploy_stage = Some("client_uat".into());
        let f = |args: ShowFilter| Filter::resolve_at(&args, now).unwrap();
        let o = |v: &str| Some(v.to_string());
        let cases: Vec<(&str, ShowFilter, [bool; 3])> = vec![
            ("nothing given", ShowFilter::default(), [true, true, true]),
            (
                "principal, exact",
                ShowFilter {
                    principal: o("svc_client_uat@EXAMPLE.COM"),
                    ..Default::default()
                },
                [true, false, false],
            ),
            (
                "principal, glob",
                ShowFilter {
                    principal: o("svc_client_*@EXAMPLE.COM"),
                    ..Default::default()
                },
                [true, false, false],
            ),
            (
                "principal, other",
                ShowFilter {
                    principal: o("svc_client_dev@EXAMPLE.COM"),
                    ..Default::default()
                },
                [false, false, false],
            ),
            (
                "account",
                ShowFilter {
                    account: o("client_uat"),
                    ..Default::default()
                },
                [true, false, true],
            ),
            (
                "account is not the devstage",
                ShowFilter {
                    account: o("client_prod"),
                    ..Default::default()
                },
                [false, false, false],
            ),
            (
                "devstage",
                ShowFilter {
                    devstage: o("client_prod"),
                    ..Default::default()
                },
                [true, true, true],
            ),
            (
                "user",
                ShowFilter {
                    user: o("mallory"),
                    ..Default::default()
                },
                [false, true, true],
            ),
            (
                "event",
                ShowFilter {
                    event: o("deny"),
                    ..Default::default()
                },
                [false, true, true],
            ),
            (
                "decision",
                ShowFilter {
                    decision: o("granted"),
                    ..Default::default()
                },
                [true, false, false],
            ),
            (
                "until excludes its own instant",
                ShowFilter {
                    until: o("2026-11-26T13:01:44Z"),
                    ..Default::default()
                },
                [true, false, false],
            ),
            (
                "until a date: before its midnight",
                ShowFilter {
                    until: o("2026-11-27"),
                    ..Default::default()
                },
                [true, true, true],
            ),
            (
                "since and until",
                ShowFilter {
                    since: o("2026-11-26T13:00:00Z"),
                    until: o("2026-11-26T14:00:00Z"),
                    ..Default::default()
                },
                [false, true, true],
            ),
            (
                "until as an age",
                ShowFilter {
                    until: o("4d"),
                    ..Default::default()
                },
                [true, true, true],
            ),
            (
                "until as an age, too far back",
                ShowFilter {
                    until: o("5d 12h"),
                    ..Default::default()
                },
                [false, false, false],
            ),
            (
                "all together",
                ShowFilter {
                    devstage: o("client_prod"),
                    decision: o("denied"),
                    user: o("mallory"),
                    account: o("client_uat"),
                    ..Default::default()
                },
                [false, false, true],
            ),
        ];
        for (what, args, want) in cases {
            let filter = f(args);
            let got = [&grant, &deny, &image].map(|r| filter.matches(r));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_bad_filter_is_a_usage_error_naming_it() {
        let now = at("2026-12-01T00:00:00Z");
        let o = |v: &str| Some(v.to_string());
        let cases: Vec<(ShowFilter, &str)> = vec![
            (
                ShowFilter {
                    event: o("granted"),
                    ..Default::default()
                },
                "--event \"granted\": expected one of grant, deny",
            ),
            (
                ShowFilter {
                    event: o("other"),
                    ..Default::default()
                },
                "--event \"other\"",
            ),
            (
                ShowFilter {
                    decision: o("deny"),
                    ..Default::default()
                },
                "--decision \"deny\": expected one of granted, denied",
            ),
            (
                ShowFilter {
                    until: o("tomorrow"),
                    ..Default::default()
                },
                "--until \"tomorrow\": expected an RFC 3339 time",
            ),
            (
                ShowFilter {
                    principal: o("svc_[x"),
                    ..Default::default()
                },
                "--principal \"svc_[x\"",
            ),
            (
                ShowFilter {
                    since: o("2026-11-27"),
                    until: o("2026-11-26"),
                    ..Default::default()
                },
                "--since 2026-11-27T00:00:00+00:00 is not before --until 2026-11-26T00:00:00+00:00",
            ),
        ];
        for (args, want) in cases {
            let err = Filter::resolve_at(&args, now).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{err:?}");
            assert!(err.to_string().contains(want), "{want} not in {err}");
        }
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
