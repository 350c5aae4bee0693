//! Property tests for every parser of outside input (issue 10, "Tests" → "Property tests"):
//! the job payload, the executor config, p3.toml, the steps config JSON, audit record lines
//! and the chain, ID tokens (header and claims), S3 URIs, the AWS INI reader and
//! `credential_process` output, argv templates and `--since` durations. The ticket cache
//! parser has its own property tests next to it (`src/credentials/kerberos/ccache.rs`).
//!
//! Each parser gets arbitrary input and structurally mutated valid input, and must answer
//! `Ok` or a clear error: never panic, never hang. Every case runs under a watchdog
//! ([`within`]): a parser that takes longer than [`DEADLINE`] on one input fails the property
//! with that input. Where a parse round-trips (audit records, templates, S3 URIs, INI
//! profiles, `--since`), the round trip is asserted.
//!
//! `cargo test --test it parsers::` runs 256 cases per property. For a longer run, set
//! `P3_PROPTEST_CASES`:
//!
//! ```text
//! P3_PROPTEST_CASES=100000 cargo test --test it parsers::
//! ```
//!
//! No regression files are written: a failure prints the minimal input it shrank to; add it
//! to the fixed cases at the end of this file.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};

use p3_contract::steps_config::StepsConfig;
use p3_contract::template::{self, TemplateError, Values};
use p3_executor::audit::{self, AuditEvent, AuditRecord, Decision};
use p3_executor::config::{AuditConfig, Config};
use p3_executor::credentials::aws;
use p3_executor::identity::{self, Identity, IdentityError, JwksStore};
use p3_executor::job::JobContext;
use p3_steps::p3toml::P3File;
use p3_steps::s3::uri::{self, Location, S3Uri};
use p3_testkit::http_stub::job_payload_json;
use p3_testkit::tokens::{ISSUER, TokenMinter, gitlab_claims};

// ---------------------------------------------------------------------------------------------
// Harness: case count, watchdog, generic strategies and mutations.

/// Longest one parser call may take (debug build, a busy host) before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);

/// 256 cases per property, or `P3_PROPTEST_CASES`.
fn config() -> ProptestConfig {
    let cases = std::env::var("P3_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        // Shrinking a hang waits for the watchdog on every step: bound it.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

/// Run `f` on its own thread and return its answer; a panic in `f` is re-raised here, and no
/// answer within [`DEADLINE`] is a hang (the thread is left behind).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {DEADLINE:?}: the parser hangs on this input")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
    }
}

/// Short text of every kind: printable, anything Unicode (controls, bidi, NUL), identifiers.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_./-]{0,12}",
        ".{0,16}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

/// Bytes that are sometimes UTF-8 text and sometimes not.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,128}".prop_map(String::into_bytes),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    json_value_of(any::<f64>().prop_map(Value::from).boxed())
}

/// Any JSON value without floats, which serde_json does not always read back exactly (see
/// [`audit_float_in_extra_verifies`]).
fn exact_json_value() -> impl Strategy<Value = Value> {
    json_value_of(Just(Value::Null).boxed())
}

fn json_value_of(float: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float,
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One edit of a text or byte document.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite one byte.
    Replace(Index, u8),
    /// Insert a token of the format (or random bytes).
    Insert(Index, Vec<u8>),
    /// Remove up to n bytes.
    Delete(Index, usize),
    /// Cut the document.
    Truncate(Index),
    /// Repeat one line.
    DupLine(Index),
    /// Exchange two lines.
    SwapLines(Index, Index),
    /// Remove one line.
    DropLine(Index),
}

/// Edits whose insertions are mostly `tokens`, the syntax of the format under test.
fn edits(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<Edit>> {
    let insert = prop_oneof![
        3 => prop::sample::select(tokens).prop_map(|t| t.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..8),
    ];
    let edit = prop_oneof![
        any::<(Index, u8)>().prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<Index>(), insert).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<Index>(), 1usize..24).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
        any::<Index>().prop_map(Edit::DupLine),
        any::<(Index, Index)>().prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<Index>().prop_map(Edit::DropLine),
    ];
    prop::collection::vec(edit, 1..6)
}

/// `base` with `edits` applied in order.
fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        match e {
            Edit::Replace(i, byte) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] = *byte;
            }
            Edit::Insert(i, t) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, t.iter().copied());
            }
            Edit::Delete(i, n) if !b.is_empty() => {
                let at = i.index(b.len());
                b.drain(at..(at + n).min(b.len()));
            }
            Edit::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            Edit::DupLine(_) | Edit::SwapLines(..) | Edit::DropLine(_) => {
                let mut lines: Vec<Vec<u8>> = b
                    .split_inclusive(|&c| c == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.is_empty() {
                    continue;
                }
                let n = lines.len();
                match e {
                    Edit::DupLine(i) => {
                        let l = lines[i.index(n)].clone();
                        lines.insert(i.index(n), l);
                    }
                    Edit::SwapLines(x, y) => lines.swap(x.index(n), y.index(n)),
                    Edit::DropLine(i) => {
                        lines.remove(i.index(n));
                    }
                    _ => unreachable!(),
                }
                b = lines.concat();
            }
            _ => {}
        }
    }
    b
}

/// A step into a JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    At(usize),
}

/// Every node's path (the root is `[]`), depth first.
fn json_paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    here.push(Seg::Key(k.clone()));
                    walk(child, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    here.push(Seg::At(i));
                    walk(child, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |node, seg| match seg {
        Seg::Key(k) => &mut node[k.as_str()],
        Seg::At(i) => &mut node[*i],
    })
}

/// One structural edit of a JSON document.
#[derive(Debug, Clone)]
enum JsonEdit {
    /// Replace a node by another value (a wrong type, a huge number, a deep object).
    Set(Index, Value),
    /// Remove a member or an element.
    Remove(Index),
    /// Add a member to an object (a known field name or any) or an element to an array.
    Add(Index, String, Value),
}

fn json_edits(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<JsonEdit>> {
    let key = prop_oneof![
        3 => prop::sample::select(keys).prop_map(str::to_string),
        1 => text(),
    ];
    let edit = prop_oneof![
        (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Set(i, v)),
        any::<Index>().prop_map(JsonEdit::Remove),
        (any::<Index>(), key, json_value()).prop_map(|(i, k, v)| JsonEdit::Add(i, k, v)),
    ];
    prop::collection::vec(edit, 1..5)
}

fn apply_json(doc: &mut Value, edits: &[JsonEdit]) {
    for e in edits {
        let paths = json_paths(doc);
        match e {
            JsonEdit::Set(i, v) => *node_mut(doc, &paths[i.index(paths.len())]) = v.clone(),
            JsonEdit::Remove(i) => {
                let path = &paths[i.index(paths.len())];
                if let Some((last, parent)) = path.split_last() {
                    match (node_mut(doc, parent), last) {
                        (Value::Object(m), Seg::Key(k)) => {
                            m.remove(k);
                        }
                        (Value::Array(a), Seg::At(at)) => {
                            a.remove(*at);
                        }
                        _ => {}
                    }
                }
            }
            JsonEdit::Add(i, k, v) => match node_mut(doc, &paths[i.index(paths.len())]) {
                Value::Object(m) => {
                    m.insert(k.clone(), v.clone());
                }
                Value::Array(a) => a.push(v.clone()),
                _ => {}
            },
        }
    }
}

/// A file in a fresh temporary directory, for parsers that take a path.
fn temp_file(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

// ---------------------------------------------------------------------------------------------
// The job payload (JOB_RESPONSE_FILE).

const SECRET_TOKEN: &str = "glcbt-64_SECRET-job-token-9f8e7d";
const SECRET_VALUE: &str = "masked-SECRET-value-1a2b3c";

fn payload_doc() -> Value {
    json!({
        "id": 4242,
        "token": SECRET_TOKEN,
        "job_info": {"name": "deploy", "stage": "deploy", "project_id": 12, "project_name": "app"},
        "git_info": {"repo_url": format!("https://gitlab-ci-token:{SECRET_TOKEN}@g/client/app.git"),
                     "ref": "main", "sha": "4f0c3a1e", "ref_type": "branch"},
        "variables": [
            {"key": "CI_JOB_ID", "value": "4242", "public": true, "masked": false},
            {"key": "P3_ID_TOKEN", "value": SECRET_VALUE, "public": false, "masked": true, "file": false},
        ],
        "runner_info": {"timeout": 3600},
    })
}

const PAYLOAD_KEYS: &[&str] = &[
    "id",
    "token",
    "job_info",
    "git_info",
    "variables",
    "runner_info",
    "timeout",
    "key",
    "value",
    "masked",
    "file",
    "ref",
    "project_id",
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-",
    "0",
    "1e999",
    "-1",
    "18446744073709551616",
    "\\u0000",
    "\\ud800",
    "\"id\":",
    "{\"id\":1}",
    "[[[[[[[[",
    " ",
];

/// The payload parser's answer, checked: an `Ok` has a job id, and neither an error nor the
/// Debug form of a payload ever shows the job token or a variable value.
fn check_payload(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let outcome = within("JobContext::from_json", move || {
        JobContext::from_json(&bytes).map_err(|e| e.to_string())
    });
    match outcome {
        Ok(job) => {
            prop_assert_ne!(job.job_id(), 0);
            let debug = format!("{job:?}");
            prop_assert!(!debug.contains(SECRET_TOKEN) && !debug.contains(SECRET_VALUE));
        }
        Err(msg) => {
            prop_assert!(
                msg.contains("job payload") || msg.contains("job id"),
                "{msg}"
            );
            prop_assert!(
                !msg.contains(SECRET_TOKEN) && !msg.contains(SECRET_VALUE),
                "the error quotes a secret: {msg}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: a payload with a job id, or an error that quotes nothing.
    #[test]
    fn payload_arbitrary_bytes(b in bytes()) {
        check_payload(b)?;
    }

    /// The runner's payload with fields removed, retyped or added, then its text edited.
    #[test]
    fn payload_mutated(json in json_edits(PAYLOAD_KEYS), text in prop::option::of(edits(JSON_TOKENS))) {
        let mut doc = payload_doc();
        apply_json(&mut doc, &json);
        let mut b = serde_json::to_vec(&doc).unwrap();
        if let Some(t) = text {
            b = apply(&b, &t);
        }
        check_payload(b)?;
    }

    /// A payload as the runner writes it reads back: its id, its timeout, the last value of
    /// each variable and how often each is defined.
    #[test]
    fn payload_round_trip(
        id in 1u64..,
        timeout in prop::option::of(any::<i64>()),
        vars in prop::collection::vec(("[A-C]", text()), 0..6),
    ) {
        let doc = json!({
            "id": id,
            "token": SECRET_TOKEN,
            "variables": vars.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            "runner_info": {"timeout": timeout},
        });
        let job = JobContext::from_json(doc.to_string().as_bytes()).unwrap();
        prop_assert_eq!(job.job_id(), id);
        prop_assert_eq!(job.timeout_secs(), timeout.filter(|&t| t > 0).map(|t| t as u64));
        for key in ["A", "B", "C"] {
            let last = vars.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            prop_assert_eq!(job.variable(key), last);
            prop_assert_eq!(job.variable_count(key), vars.iter().filter(|(k, _)| k == key).count());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The executor config.

const EXAMPLE_CONFIG: &str = include_str!("../../executor-config/config.toml");

const TOML_TOKENS: &[&str] = &[
    "\n",
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\\u0000",
    "\\",
    "= 1",
    "= -1",
    "= 1e400",
    "= 18446744073709551616",
    "= true",
    "= []",
    "= {}",
    "= \"\"",
    "= \"x\"",
    "= 1979-05-27T07:32:00Z",
    "\n[devstages.x]\n",
    "\n[accounts.x]\n",
    "\n[steps.p3]\n",
    "deploy = [\"{",
    "tmpfs_size = \"\"",
    "job_uid_range = [2000, 1000]",
    "\n[[job]]\n",
    "name = \"",
    "\n[job.overrides.x]\n",
    "env = {",
    "resources = {",
];

fn check_config(text: String) -> Result<(), TestCaseError> {
    let outcome = within("Config::parse", move || Config::parse(&text));
    match outcome {
        Ok(cfg) => {
            // What parsed serialises, and the serialised form parses to the same config.
            let once = toml::to_string(&cfg).unwrap();
            let again = Config::parse(&once)
                .unwrap_or_else(|e| panic!("the serialised config does not parse: {e}\n{once}"));
            prop_assert_eq!(toml::to_string(&again).unwrap(), once);
        }
        Err(msg) => prop_assert!(!msg.trim().is_empty()),
    }
    Ok(())
}

#[test]
fn example_config_parses() {
    Config::parse(EXAMPLE_CONFIG).unwrap();
}

proptest! {
    #![proptest_config(config())]

    /// Any text: a config or an error message, never a panic.
    #[test]
    fn config_arbitrary_text(b in bytes()) {
        check_config(String::from_utf8_lossy(&b).into_owned())?;
    }

    /// The annotated example config, edited: a config that round-trips, or an error.
    #[test]
    fn config_mutated(e in edits(TOML_TOKENS)) {
        check_config(String::from_utf8_lossy(&apply(EXAMPLE_CONFIG.as_bytes(), &e)).into_owned())?;
    }
}

// ---------------------------------------------------------------------------------------------
// p3.toml (only through `P3File::parse`: its internals are being reworked).

const EXAMPLE_P3TOML: &str = include_str!("../../executor-config/example-project/p3.toml");

fn check_p3toml(text: String) -> Result<(), TestCaseError> {
    if let Err(e) = within("P3File::parse", move || P3File::parse(&text)) {
        let msg = e.to_string();
        prop_assert!(
            msg.starts_with("p3.toml") && msg.len() > "p3.toml: ".len(),
            "{msg}"
        );
    }
    Ok(())
}

#[test]
fn example_p3toml_parses() {
    P3File::parse(EXAMPLE_P3TOML).unwrap();
}

proptest! {
    #![proptest_config(config())]

    /// Any text: a file or an error naming p3.toml.
    #[test]
    fn p3toml_arbitrary_text(b in bytes()) {
        check_p3toml(String::from_utf8_lossy(&b).into_owned())?;
    }

    /// The example project's p3.toml, edited (errors point at lines and keys: many offsets).
    #[test]
    fn p3toml_mutated(e in edits(TOML_TOKENS)) {
        check_p3toml(String::from_utf8_lossy(&apply(EXAMPLE_P3TOML.as_bytes(), &e)).into_owned())?;
    }

    /// Valid TOML of the wrong shape at any key: an error naming p3.toml.
    #[test]
    fn p3toml_wrong_types(doc in json_edits(&["job", "defaults", "name", "command", "schedule",
        "devstages", "resources", "cpu", "memory", "env", "overrides"])) {
        let mut v: Value = serde_json::to_value(
            toml::from_str::<toml::Table>(EXAMPLE_P3TOML).unwrap()).unwrap();
        apply_json(&mut v, &doc);
        // Nulls and non-table roots have no TOML form: those cases test nothing.
        if let Ok(text) = toml::to_string(&v) {
            check_p3toml(text)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The steps config JSON (P3_STEPS_CONFIG).

fn steps_config() -> impl Strategy<Value = StepsConfig> {
    let list = || prop::collection::vec(text(), 0..4);
    (
        prop::option::of(text()),
        list(),
        prop::option::of(text()),
        text(),
        text(),
        (list(), list(), any::<u64>()),
        (list(), list(), list(), any::<u64>()),
    )
        .prop_map(
            |(builder, args, registry, prod, pattern, (bo, po, t), (d, r, s, pt))| {
                let mut c = StepsConfig::default();
                c.image.builder = builder;
                c.image.builder_args = args;
                c.image.registry = registry;
                c.image.prod_devstage = prod;
                c.image.release_tag_pattern = pattern;
                c.image.build_options = bo;
                c.image.push_options = po;
                c.image.timeout_secs = t;
                c.p3.deploy = d;
                c.p3.remove = r;
                c.p3.status = s;
                c.p3.timeout_secs = pt;
                c
            },
        )
}

const STEPS_KEYS: &[&str] = &[
    "image",
    "p3",
    "builder",
    "builder_args",
    "registry",
    "prod_devstage",
    "release_tag_pattern",
    "build_options",
    "push_options",
    "timeout_secs",
    "deploy",
    "remove",
    "status",
];

/// `load_steps_config` on `content`: a config that validates without panicking and
/// round-trips, or an error naming the file.
fn check_steps_config(content: Vec<u8>) -> Result<(), TestCaseError> {
    let (dir, path) = temp_file(&content);
    let p = path.clone();
    let outcome = within("load_steps_config", move || {
        p3_steps::context::load_steps_config(&p).map(|c| {
            let problems = c.validate();
            (c, problems)
        })
    });
    match outcome {
        Ok((cfg, _problems)) => {
            let once = serde_json::to_string(&cfg).unwrap();
            std::fs::write(&path, &once).unwrap();
            let again = p3_steps::context::load_steps_config(&path).unwrap();
            prop_assert_eq!(serde_json::to_string(&again).unwrap(), once);
        }
        Err(f) => prop_assert!(
            f.message.contains(&path.display().to_string()),
            "{}",
            f.message
        ),
    }
    drop(dir);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes in the file.
    #[test]
    fn steps_config_arbitrary_bytes(b in bytes()) {
        check_steps_config(b)?;
    }

    /// A steps config with fields removed, retyped, unknown, then its text edited.
    #[test]
    fn steps_config_mutated(
        cfg in steps_config(),
        json in json_edits(STEPS_KEYS),
        text in prop::option::of(edits(JSON_TOKENS)),
    ) {
        let mut doc = serde_json::to_value(&cfg).unwrap();
        apply_json(&mut doc, &json);
        let mut b = serde_json::to_vec(&doc).unwrap();
        if let Some(t) = text {
            b = apply(&b, &t);
        }
        check_steps_config(b)?;
    }

    /// What the executor writes is what the steps read.
    #[test]
    fn steps_config_round_trip(cfg in steps_config()) {
        let text = serde_json::to_string(&cfg).unwrap();
        let (_dir, path) = temp_file(text.as_bytes());
        let read = p3_steps::context::load_steps_config(&path).unwrap();
        prop_assert_eq!(serde_json::to_string(&read).unwrap(), text);
    }
}

// ---------------------------------------------------------------------------------------------
// Audit records and the chain.

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000_000)
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

fn audit_record() -> impl Strategy<Value = AuditRecord> {
    let event = prop::sample::select(vec![
        AuditEvent::Grant,
        AuditEvent::Deny,
        AuditEvent::Renew,
        AuditEvent::Cleanup,
        AuditEvent::Gc,
        AuditEvent::S3Credentials,
        AuditEvent::Other,
    ]);
    let decision = prop::sample::select(vec![
        Decision::Granted,
        Decision::Denied,
        Decision::Succeeded,
        Decision::Failed,
        Decision::Other,
    ]);
    let opt = || prop::option::of(text());
    (
        (event, decision, text(), text(), time()),
        (
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<bool>>(),
        ),
        (opt(), opt(), opt(), opt(), opt(), opt()),
        (opt(), opt(), opt(), opt(), opt(), opt(), opt()),
        prop::collection::btree_map(text(), exact_json_value(), 0..4),
    )
        .prop_map(
            |((event, decision, reason, host, time), (job, pipeline, protected), a, b, extra)| {
                let mut r = AuditRecord::new(event, decision, reason);
                r.host = host;
                r.time = time;
                r.job_id = job;
                r.pipeline_id = pipeline;
                r.ref_protected = protected;
                (
                    r.job_url, r.project, r.git_ref, r.ref_type, r.user, r.devstage,
                ) = a;
                (
                    r.deploy_stage,
                    r.account,
                    r.principal,
                    r.keytab_sha256,
                    r.identity_source,
                    r.token_jti,
                    _,
                ) = b;
                r.extra = extra;
                r
            },
        )
}

/// A log of `records` as `append` writes it, and each line's JSON.
fn write_chain(records: Vec<AuditRecord>) -> (tempfile::TempDir, PathBuf, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        path: dir.path().join("audit.log"),
        ..AuditConfig::default()
    };
    for r in records {
        audit::append(&cfg, r).unwrap();
    }
    let text = std::fs::read_to_string(&cfg.path).unwrap_or_default();
    let values = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (dir, cfg.path, values)
}

/// Every line the log holds, parsed, when every line is complete JSON.
fn lines_as_json(b: &[u8]) -> Option<Vec<Value>> {
    if b.is_empty() {
        return Some(Vec::new());
    }
    if b.last() != Some(&b'\n') {
        return None;
    }
    b[..b.len() - 1]
        .split(|&c| c == b'\n')
        .map(|l| serde_json::from_slice(l).ok())
        .collect()
}

const RECORD_KEYS: &[&str] = &[
    "seq", "time", "host", "event", "decision", "reason", "job_id", "project", "ref", "extra",
    "prev", "hash",
];

proptest! {
    #![proptest_config(config())]

    /// A record serialises to one line that parses back to the same record with the same
    /// hash, whatever its text fields hold.
    #[test]
    fn audit_record_round_trip(r in audit_record()) {
        let line = serde_json::to_string(&r).unwrap();
        prop_assert!(!line.contains('\n'));
        let parsed: AuditRecord = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(&parsed, &r);
        let written = serde_json::to_value(&r).unwrap();
        let read: Value = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(audit::record_hash(&read), audit::record_hash(&written));
        prop_assert_eq!(
            audit::record_hash(&serde_json::to_value(&parsed).unwrap()),
            audit::record_hash(&written)
        );
    }

    /// Any line: a record or an error; any JSON: a hash, the same for any key order and
    /// whatever `hash` holds.
    #[test]
    fn audit_record_line_arbitrary(b in bytes(), v in json_value(), other_hash in text()) {
        let (b2, v2) = (b.clone(), v.clone());
        within("AuditRecord from a line", move || {
            let _ = serde_json::from_slice::<AuditRecord>(&b2);
            let _ = serde_json::from_value::<AuditRecord>(v2);
        });
        let h = audit::record_hash(&v);
        prop_assert!(h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()));
        if let Value::Object(m) = &v {
            let mut reversed: Map<String, Value> = Map::new();
            for (k, x) in m.iter().rev() {
                reversed.insert(k.clone(), x.clone());
            }
            reversed.insert("hash".into(), Value::String(other_hash));
            prop_assert_eq!(audit::record_hash(&Value::Object(reversed)), h);
        }
    }

    /// A record with fields removed, retyped or added: parsed or refused, never a panic.
    #[test]
    fn audit_record_mutated(r in audit_record(), json in json_edits(RECORD_KEYS)) {
        let mut v = serde_json::to_value(&r).unwrap();
        apply_json(&mut v, &json);
        let line = serde_json::to_vec(&v).unwrap();
        within("AuditRecord from a mutated line", move || {
            let _ = serde_json::from_slice::<AuditRecord>(&line);
        });
    }

    /// A log `append` wrote verifies, with its head the last record's hash.
    #[test]
    fn audit_chain_verifies(records in prop::collection::vec(audit_record(), 0..5)) {
        let n = records.len() as u64;
        let (_dir, path, values) = write_chain(records);
        let v = within("audit::verify", move || audit::verify(&path)).unwrap();
        prop_assert_eq!(v.broken, None);
        prop_assert_eq!(v.records, n);
        let head = values.last().map_or(audit::GENESIS, |l| l["hash"].as_str().unwrap());
        prop_assert_eq!(v.head, head);
    }

    /// Any edit that changes what the log says (a byte, a line dropped, repeated or moved,
    /// bytes inserted) is reported as a break, never a panic; an edit that leaves every
    /// line's JSON as it was is not.
    #[test]
    fn audit_chain_edits_are_found(
        records in prop::collection::vec(audit_record(), 1..5),
        e in edits(JSON_TOKENS),
    ) {
        let (_dir, path, values) = write_chain(records);
        let original = std::fs::read(&path).unwrap();
        let edited = apply(&original, &e);
        std::fs::write(&path, &edited).unwrap();
        let v = within("audit::verify", move || audit::verify(&path)).unwrap();
        match lines_as_json(&edited) {
            Some(now) if now == values => prop_assert_eq!(v.broken, None),
            Some(now) if values.starts_with(&now) => {
                // Whole records cut from the end: the rest is an intact, shorter chain.
                prop_assert_eq!(v.broken, None);
                prop_assert_eq!(v.records, now.len() as u64);
            }
            _ => prop_assert!(v.broken.is_some(), "edit not found: {:?}", v),
        }
    }

    /// A log cut anywhere: intact up to the last whole line, broken if a line is cut.
    #[test]
    fn audit_chain_truncated(records in prop::collection::vec(audit_record(), 1..4), at in any::<Index>()) {
        let (_dir, path, _) = write_chain(records);
        let original = std::fs::read(&path).unwrap();
        let cut = at.index(original.len() + 1);
        std::fs::write(&path, &original[..cut]).unwrap();
        let v = audit::verify(&path).unwrap();
        let whole = original[..cut].iter().filter(|&&c| c == b'\n').count() as u64;
        prop_assert_eq!(v.records, whole);
        prop_assert_eq!(v.broken.is_some(), cut > 0 && original[cut - 1] != b'\n');
    }

    /// Any file as the log: `verify` and `show` answer, never panic; `show --json` prints
    /// only lines of the file, the table one line per record.
    #[test]
    fn audit_log_arbitrary(lines in prop::collection::vec(prop_oneof![
        bytes(),
        audit_record().prop_map(|r| serde_json::to_vec(&r).unwrap()),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ], 0..5)) {
        let content = lines.join(&b'\n');
        let (_dir, path) = temp_file(&content);
        let outcome = within("audit::verify and audit::show", move || {
            let verified = audit::verify(&path).map(|v| v.records);
            let mut json_out = Vec::new();
            let json = audit::show(&path, &audit::Filter::default(), true, &mut json_out)
                .map_err(|e| e.to_string());
            let mut table_out = Vec::new();
            let table = audit::show(&path, &audit::Filter::default(), false, &mut table_out)
                .map_err(|e| e.to_string());
            (verified, json, json_out, table, table_out)
        });
        let (verified, json, json_out, table, table_out) = outcome;
        prop_assert!(verified.is_ok());
        match (json, table) {
            (Ok(n), Ok(m)) => {
                prop_assert_eq!(n, m);
                let printed = String::from_utf8(json_out).unwrap();
                prop_assert_eq!(printed.lines().count(), n);
                let file = String::from_utf8_lossy(&content).into_owned();
                prop_assert!(printed.lines().all(|l| file.lines().any(|f| f == l)));
                let table = String::from_utf8(table_out).unwrap();
                prop_assert_eq!(table.lines().count(), n + 1, "{}", table);
            }
            // Only bytes that are not UTF-8 stop `show` (an I/O error naming the log).
            (Err(e), _) | (_, Err(e)) => {
                prop_assert!(std::str::from_utf8(&content).is_err(), "{}", e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ID tokens: header and claims, through `identity::verify_with` with a JWKS file.

const AUD: &str = "p3-executor";
const JOB_ID: u64 = 4242;

/// One signing key, its JWKS in a file, a config that trusts it.
struct Tokens {
    _dir: tempfile::TempDir,
    cfg: Config,
    minter: TokenMinter,
}

impl Tokens {
    fn new() -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let minter = TokenMinter::new();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, minter.jwks_json()).unwrap();
        let cfg = Config::parse(&format!(
            "state_root = {:?}\n[identity]\ngitlab_url = {ISSUER:?}\naudience = {AUD:?}\njwks_file = {jwks:?}\n",
            dir.path()
        ))
        .unwrap();
        Arc::new(Self {
            _dir: dir,
            cfg,
            minter,
        })
    }

    fn claims(&self) -> Value {
        gitlab_claims(ISSUER, AUD, JOB_ID, "client/app", "main", "branch", true)
    }

    /// Verify `token` as the job's `P3_ID_TOKEN`, under the watchdog.
    fn verify(self: &Arc<Self>, token: &str) -> Result<Identity, IdentityError> {
        let (me, token) = (Arc::clone(self), token.to_string());
        within("identity::verify_with", move || {
            let job = JobContext::from_json(
                job_payload_json(JOB_ID, &[("P3_ID_TOKEN", token.as_str())]).as_bytes(),
            )
            .unwrap();
            identity::verify_with(&me.cfg, &job, &JwksStore::from_config(&me.cfg))
        })
    }
}

/// Must be refused, without the token in the message.
fn check_denied(tokens: &Arc<Tokens>, token: &str) -> Result<(), TestCaseError> {
    match tokens.verify(token) {
        Ok(id) => prop_assert!(false, "token accepted: {token:?} → {id:?}"),
        Err(e) => {
            let msg = e.to_string();
            let t = token.trim();
            prop_assert!(t.len() < 16 || !msg.contains(t), "token leaked: {msg}");
        }
    }
    Ok(())
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Headers an attacker would try: other algorithms, no or other key ids, odd fields.
fn header(kid: &'static str) -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        prop::sample::select(vec![
            "none", "None", "HS256", "RS256", "RS512", "PS256", "ES256", "EdDSA"
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let kid = prop_oneof![
        Just(Value::from(kid)),
        text().prop_map(Value::from),
        json_value()
    ];
    (alg, prop::option::of(kid), prop::option::of(json_value())).prop_map(|(alg, kid, extra)| {
        let mut h = json!({"alg": alg, "typ": "JWT"});
        if let Some(k) = kid {
            h["kid"] = k;
        }
        if let Some(x) = extra {
            h["crit"] = x;
        }
        h
    })
}

/// One structural edit of a token.
#[derive(Debug, Clone)]
enum TokenEdit {
    /// Drop a dot-separated segment.
    Drop(Index),
    /// Repeat a segment.
    Dup(Index),
    /// Exchange two segments.
    Swap(Index, Index),
    /// Replace a segment with this text.
    Segment(Index, String),
    /// Replace one character.
    Char(Index, char),
    /// Insert a character.
    Insert(Index, char),
    /// Remove a character.
    Remove(Index),
}

fn token_edits() -> impl Strategy<Value = Vec<TokenEdit>> {
    let segment = prop_oneof![
        header("test-key-1").prop_map(|h| b64(h.to_string().as_bytes())),
        json_value().prop_map(|v| b64(v.to_string().as_bytes())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| b64(&b)),
        text(),
        Just(String::new()),
    ];
    let c = prop_oneof![
        prop::sample::select(vec![
            'A', 'a', 'z', '0', '-', '_', '.', '=', '+', '/', ' ', '\0', 'é'
        ]),
        any::<char>(),
    ];
    let edit = prop_oneof![
        any::<Index>().prop_map(TokenEdit::Drop),
        any::<Index>().prop_map(TokenEdit::Dup),
        any::<(Index, Index)>().prop_map(|(a, b)| TokenEdit::Swap(a, b)),
        (any::<Index>(), segment).prop_map(|(i, s)| TokenEdit::Segment(i, s)),
        (any::<Index>(), c.clone()).prop_map(|(i, c)| TokenEdit::Char(i, c)),
        (any::<Index>(), c).prop_map(|(i, c)| TokenEdit::Insert(i, c)),
        any::<Index>().prop_map(TokenEdit::Remove),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply_token(token: &str, edits: &[TokenEdit]) -> String {
    let mut t = token.to_string();
    for e in edits {
        let mut segs: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut chars: Vec<char> = t.chars().collect();
        match e {
            TokenEdit::Drop(i) => {
                segs.remove(i.index(segs.len()));
            }
            TokenEdit::Dup(i) => {
                let at = i.index(segs.len());
                segs.insert(at, segs[at].clone());
            }
            TokenEdit::Swap(a, b) => {
                let n = segs.len();
                segs.swap(a.index(n), b.index(n));
            }
            TokenEdit::Segment(i, s) => {
                let at = i.index(segs.len());
                segs[at] = s.clone();
            }
            TokenEdit::Char(i, c) if !chars.is_empty() => {
                let at = i.index(chars.len());
                chars[at] = *c;
            }
            TokenEdit::Insert(i, c) => chars.insert(i.index(chars.len() + 1), *c),
            TokenEdit::Remove(i) if !chars.is_empty() => {
                chars.remove(i.index(chars.len()));
            }
            _ => {}
        }
        t = match e {
            TokenEdit::Drop(_)
            | TokenEdit::Dup(_)
            | TokenEdit::Swap(..)
            | TokenEdit::Segment(..) => segs.join("."),
            _ => chars.into_iter().collect(),
        };
    }
    t
}

/// Claim values worth trying: any JSON, and values near the ones that pass.
fn claim_value() -> impl Strategy<Value = Value> {
    let now = p3_testkit::tokens::now() as i64;
    prop_oneof![
        json_value(),
        (-7200i64..7200).prop_map(move |d| Value::from(now + d)),
        (-7200i64..7200).prop_map(move |d| Value::from((now + d).to_string())),
        (-7200.0f64..7200.0).prop_map(move |d| Value::from(now as f64 + d)),
        prop::sample::select(vec![
            json!(ISSUER),
            json!(format!("{ISSUER}/")),
            json!(AUD),
            json!([AUD, "other"]),
            json!(["other"]),
            json!(JOB_ID),
            json!(JOB_ID.to_string()),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(1e300),
            json!("true"),
            json!("false"),
            json!(true),
            json!("branch"),
            json!("tag"),
            json!(""),
            json!(null),
            json!([]),
            json!({}),
        ]),
    ]
}

const CLAIM_NAMES: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "job_id",
    "project_id",
    "project_path",
    "namespace_path",
    "ref",
    "ref_type",
    "ref_path",
    "ref_protected",
    "pipeline_id",
    "pipeline_source",
    "user_login",
    "sha",
    "environment",
    "environment_protected",
    "sub",
];

/// A claim set edit: (claim, None = removed | Some(new value)).
fn claim_edits() -> impl Strategy<Value = Vec<(&'static str, Option<Value>)>> {
    prop::collection::vec(
        (
            prop::sample::select(CLAIM_NAMES),
            prop::option::weighted(0.8, claim_value()),
        ),
        1..3,
    )
}

#[test]
fn id_token_arbitrary_strings_are_denied() {
    let tokens = Tokens::new();
    let dot_parts = prop::collection::vec(
        prop_oneof![
            "[A-Za-z0-9_-]{0,64}",
            json_value().prop_map(|v| b64(v.to_string().as_bytes())),
            text()
        ],
        0..5,
    )
    .prop_map(|p| p.join("."));
    proptest!(config(), |(token in prop_oneof![text(), dot_parts])| {
        check_denied(&tokens, &token)?;
    });
}

#[test]
fn id_token_mutated_valid_token_is_denied() {
    let tokens = Tokens::new();
    let valid = tokens.minter.mint(tokens.claims());
    // The property is about the valid token's neighbours: it must itself pass.
    tokens.verify(&valid).unwrap();
    proptest!(config(), |(e in token_edits())| {
        let token = apply_token(&valid, &e);
        prop_assume!(token.trim() != valid);
        check_denied(&tokens, &token)?;
    });
}

#[test]
fn id_token_signed_with_mutated_claims() {
    let tokens = Tokens::new();
    let leeway = tokens.cfg.identity.leeway_secs as f64;
    proptest!(config(), |(e in claim_edits(), kid in prop::option::weighted(0.9, Just("test-key-1")))| {
        let mut claims = tokens.claims();
        for (name, v) in &e {
            match v {
                Some(v) => claims[*name] = v.clone(),
                None => {
                    claims.as_object_mut().unwrap().remove(*name);
                }
            }
        }
        let token = tokens.minter.mint_with_kid(claims.clone(), kid.unwrap_or("unknown-kid"));
        let outcome = tokens.verify(&token);
        let Ok(id) = outcome else { return Ok(()) };
        // Accepted: exactly the identity the claims describe, for this job, from this
        // issuer and audience, not expired, not from the future.
        let now = p3_testkit::tokens::now() as f64;
        prop_assert!(kid.is_some());
        let c = claims.as_object().unwrap();
        prop_assert_eq!(&id, &identity::identity_from_claims(c).unwrap());
        prop_assert_eq!(id.job_id, JOB_ID);
        let slashed = format!("{ISSUER}/");
        prop_assert!(c["iss"] == json!(ISSUER) || c["iss"] == json!(slashed));
        prop_assert!(c["aud"] == json!(AUD) || c["aud"].as_array().is_some_and(|a| a.contains(&json!(AUD))));
        prop_assert!(c["exp"].as_f64().is_some_and(|exp| exp + leeway >= now - 1.0), "exp {}", c["exp"]);
        if let Some(nbf) = c.get("nbf").and_then(Value::as_f64) {
            prop_assert!(nbf <= now + leeway + 1.0, "nbf {}", nbf);
        }
        if let Some(iat) = c.get("iat") {
            prop_assert!(iat.as_u64().is_some_and(|t| t as f64 <= now + leeway + 1.0), "iat {}", iat);
        }
    });
}

fn gitlab_like_claims() -> Map<String, Value> {
    json!({
        "project_path": "client/app", "project_id": "12", "namespace_path": "client",
        "ref": "main", "ref_type": "branch", "ref_protected": "true",
        "ref_path": "refs/heads/main", "pipeline_source": "push", "pipeline_id": "99",
        "user_login": "alice", "job_id": "4242", "jti": "j-1", "sha": "abc"
    })
    .as_object()
    .unwrap()
    .clone()
}

proptest! {
    #![proptest_config(config())]

    /// Any claim set (known names, any values): an identity or a named error.
    #[test]
    fn id_claims_arbitrary(edits in prop::collection::vec(
        (prop_oneof![prop::sample::select(CLAIM_NAMES).prop_map(str::to_string), text()],
         prop::option::of(claim_value())), 0..8),
        start_empty in any::<bool>(),
    ) {
        let mut c = if start_empty { Map::new() } else { gitlab_like_claims() };
        for (k, v) in edits {
            match v {
                Some(v) => { c.insert(k, v); }
                None => { c.remove(&k); }
            }
        }
        let _ = within("identity_from_claims", move || identity::identity_from_claims(&c));
    }

    /// GitLab's string encodings and the native JSON ones give the same identity.
    #[test]
    fn id_claims_round_trip(
        job in any::<u64>(), project in any::<u64>(), pipeline in any::<u64>(),
        protected in any::<bool>(), native in any::<[bool; 4]>(),
        names in ("[a-z/]{1,12}", ".{0,12}", ".{1,12}"),
        env in prop::option::of((".{1,8}", any::<bool>())),
    ) {
        let num = |n: u64, native: bool| if native { json!(n) } else { json!(n.to_string()) };
        let mut c = gitlab_like_claims();
        c.insert("job_id".into(), num(job, native[0]));
        c.insert("project_id".into(), num(project, native[1]));
        c.insert("pipeline_id".into(), num(pipeline, native[2]));
        c.insert("ref_protected".into(),
            if native[3] { json!(protected) } else { json!(protected.to_string()) });
        c.insert("project_path".into(), json!(names.0));
        c.insert("ref".into(), json!(names.1));
        c.insert("user_login".into(), json!(names.2));
        c.remove("ref_path");
        if let Some((e, p)) = &env {
            c.insert("environment".into(), json!(e));
            c.insert("environment_protected".into(), json!(p.to_string()));
        }
        let id = identity::identity_from_claims(&c).unwrap();
        prop_assert_eq!(id.job_id, job);
        prop_assert_eq!(id.project_id, project);
        prop_assert_eq!(id.pipeline_id, pipeline);
        prop_assert_eq!(id.ref_protected, protected);
        prop_assert_eq!(&id.project_path, &names.0);
        prop_assert_eq!(&id.ref_name, &names.1);
        prop_assert_eq!(id.ref_path, format!("refs/heads/{}", names.1));
        prop_assert_eq!(id.environment.as_deref(), env.as_ref().map(|(e, _)| e.as_str()));
        prop_assert_eq!(id.environment_protected, env.is_some_and(|(_, p)| p));
    }
}

// ---------------------------------------------------------------------------------------------
// S3 URIs and the local paths keys map to.

fn bucket() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{3,63}"
}

proptest! {
    #![proptest_config(config())]

    /// Any text: a location or an error; an S3 URI that parsed prints as one that parses
    /// to it again.
    #[test]
    fn s3_uri_arbitrary(
        t in prop_oneof![text(), (prop_oneof![Just("s3://"), Just("s3:/"), Just("S3://")], text(), text())
            .prop_map(|(p, a, b)| format!("{p}{a}/{b}"))],
    ) {
        let t2 = t.clone();
        let (uri, loc) = within("S3Uri::parse", move || (S3Uri::parse(&t2), Location::parse(&t2)));
        if let Ok(u) = &uri {
            prop_assert!(t.starts_with("s3://"));
            prop_assert_eq!(&S3Uri::parse(&u.to_string()).unwrap(), u);
            prop_assert_eq!(loc, Ok(Location::S3(u.clone())));
        } else if t.starts_with("s3://") {
            prop_assert!(loc.is_err());
        } else {
            prop_assert_eq!(loc.is_ok(), !t.is_empty());
        }
    }

    /// `s3://bucket/key` gives that bucket and key, for any key.
    #[test]
    fn s3_uri_round_trip(b in bucket(), key in prop::option::of(".{0,40}")) {
        let text = match &key {
            Some(k) => format!("s3://{b}/{k}"),
            None => format!("s3://{b}"),
        };
        let u = S3Uri::parse(&text).unwrap();
        prop_assert_eq!(u.bucket, b);
        prop_assert_eq!(u.key, key.unwrap_or_default());
    }

    /// A bucket name outside 3-63 characters of a-z 0-9 . - _ is refused.
    #[test]
    fn s3_uri_bad_bucket(b in prop_oneof!["[^/]{0,70}", "[a-z0-9._A-Z-]{0,70}"]) {
        let valid = (3..=63).contains(&b.len())
            && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c));
        prop_assert_eq!(S3Uri::parse(&format!("s3://{b}/k")).is_ok(), valid);
    }

    /// A key from a listing maps to a path inside the target directory, or is refused.
    #[test]
    fn s3_key_local_path_stays_inside(
        rel in prop_oneof![text(), prop::collection::vec(
            prop_oneof![Just("..".to_string()), Just(".".to_string()), Just(String::new()), "[a-z]{1,3}", text()], 0..5,
        ).prop_map(|s| s.join("/"))],
    ) {
        let dir = Path::new("/target/dir");
        let r2 = rel.clone();
        if let Ok(p) = within("local_path_for", move || uri::local_path_for(Path::new("/target/dir"), &r2)) {
            let below = p.strip_prefix(dir).unwrap();
            prop_assert!(below.components().count() > 0);
            prop_assert!(below.components().all(|c| matches!(c, Component::Normal(_))), "{:?}", p);
            prop_assert_eq!(uri::join_key("", &rel), rel);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AWS: the shared-credentials INI reader and `credential_process` output.

/// One section of a generated INI file.
#[derive(Debug, Clone)]
struct Section {
    name: String,
    keys: Vec<(String, String)>,
}

/// INI values: printable ASCII without surrounding spaces (base64 secrets end in `=`).
fn ini_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,30}[!-~])?"
}

fn ini_section() -> impl Strategy<Value = Section> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "region",
            "AWS_Access_Key_ID",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,12}",
    ];
    (
        "[A-Za-z0-9_.-]{1,12}",
        prop::collection::vec((key, ini_value()), 0..5),
    )
        .prop_map(|(name, keys)| Section { name, keys })
}

/// Render sections the way people write the file: `[name]` or `[profile name]`, spaces
/// around `=` or not, comments, blank lines, indented nested blocks.
fn render_ini(sections: &[Section], style: &[u8]) -> String {
    let mut s = String::from("# AWS credentials\n\n");
    for (i, sec) in sections.iter().enumerate() {
        let st = style.get(i).copied().unwrap_or(0);
        if st & 1 == 0 {
            s.push_str(&format!("[{}]\n", sec.name));
        } else {
            s.push_str(&format!("[ profile {} ]\r\n", sec.name));
        }
        for (k, v) in &sec.keys {
            match st >> 1 & 3 {
                0 => s.push_str(&format!("{k} = {v}\n")),
                1 => s.push_str(&format!("{k}={v}\n")),
                2 => s.push_str(&format!("{k}  =\t{v}  \n  ; comment\n")),
                _ => s.push_str(&format!(
                    "{k} = {v}\ns3 =\n    {k} = nested-{v}\n# comment\n"
                )),
            }
        }
        s.push('\n');
    }
    s
}

/// What `read_profile` should find for `profile`: the keys of every section of that name,
/// later ones winning, keys compared without case.
fn expected_profile(sections: &[Section], profile: &str) -> Option<BTreeMap<String, String>> {
    let mut found: Option<BTreeMap<String, String>> = None;
    for sec in sections.iter().filter(|s| s.name == profile) {
        let map = found.get_or_insert_with(BTreeMap::new);
        for (k, v) in &sec.keys {
            map.insert(k.to_ascii_lowercase(), v.clone());
        }
    }
    found
}

fn process_output() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!(1)), json_value()],
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(prop_oneof![time().prop_map(|t| t.to_rfc3339()), text()]),
    )
        .prop_map(|(version, a, s, t, e)| {
            let mut doc = json!({"Version": version});
            for (k, v) in [
                ("AccessKeyId", a),
                ("SecretAccessKey", s),
                ("SessionToken", t),
                ("Expiration", e),
            ] {
                if let Some(v) = v {
                    doc[k] = json!(v);
                }
            }
            doc
        })
}

proptest! {
    #![proptest_config(config())]

    /// Any file, any profile name: credentials or an error naming file and profile.
    #[test]
    fn aws_ini_arbitrary(b in bytes(), profile in text()) {
        let (_dir, path) = temp_file(&b);
        let p2 = path.clone();
        let outcome = within("aws::read_profile", move || aws::read_profile(&p2, &profile));
        if let Err(e) = outcome {
            prop_assert!(e.to_string().contains(&path.display().to_string()), "{}", e);
        }
    }

    /// A generated file, edited: credentials or an error.
    #[test]
    fn aws_ini_mutated(
        sections in prop::collection::vec(ini_section(), 1..4),
        style in any::<[u8; 4]>(),
        e in edits(&["[", "]", "=", "\n", "#", ";", " ", "\t", "[profile ", "\r", "aws_access_key_id"]),
        which in any::<Index>(),
    ) {
        let text = apply(render_ini(&sections, &style).as_bytes(), &e);
        let profile = sections[which.index(sections.len())].name.clone();
        let (_dir, path) = temp_file(&text);
        let _ = within("aws::read_profile", move || aws::read_profile(&path, &profile));
    }

    /// The profile's keys are read back as written, whatever the spelling of the file.
    #[test]
    fn aws_ini_round_trip(
        sections in prop::collection::vec(ini_section(), 1..5),
        style in any::<[u8; 5]>(),
        which in any::<Index>(),
        absent in any::<bool>(),
    ) {
        let profile = if absent {
            "no-such-profile-here".to_string()
        } else {
            sections[which.index(sections.len())].name.clone()
        };
        let (_dir, path) = temp_file(render_ini(&sections, &style).as_bytes());
        let got = aws::read_profile(&path, &profile);
        match expected_profile(&sections, &profile) {
            None => prop_assert!(got.unwrap_err().to_string().contains("no such profile")),
            Some(want) => {
                let get = |k: &str| want.get(k).cloned();
                match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                    (Some(id), Some(secret)) => {
                        let c = got.unwrap();
                        prop_assert_eq!(c.access_key_id, id);
                        prop_assert_eq!(c.secret_access_key, secret);
                        prop_assert_eq!(c.session_token, get("aws_session_token"));
                        prop_assert_eq!(c.expiration, None);
                    }
                    (None, _) => prop_assert!(got.unwrap_err().to_string().contains("aws_access_key_id")),
                    (_, None) => prop_assert!(got.unwrap_err().to_string().contains("aws_secret_access_key")),
                }
            }
        }
    }

    /// Any `credential_process` output: credentials or an error that quotes nothing; a
    /// well-formed document reads back as written.
    #[test]
    fn aws_process_output(doc in process_output(), e in prop::option::of(edits(JSON_TOKENS))) {
        let mut b = serde_json::to_vec(&doc).unwrap();
        if let Some(e) = &e {
            b = apply(&b, e);
        }
        let b2 = b.clone();
        let outcome = within("aws::parse_process_output", move || aws::parse_process_output(&b2));
        let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
        match outcome {
            Ok(c) if e.is_none() => {
                prop_assert_eq!(&doc["Version"], &json!(1));
                prop_assert_eq!(Some(c.access_key_id), s("AccessKeyId"));
                prop_assert_eq!(Some(c.secret_access_key), s("SecretAccessKey"));
                prop_assert_eq!(c.session_token, s("SessionToken").filter(|t| !t.is_empty()));
                let exp = s("Expiration").map(|t| DateTime::parse_from_rfc3339(&t).unwrap().to_utc());
                prop_assert_eq!(c.expiration, exp);
            }
            Ok(_) => {}
            Err(msg) => {
                if let Some(secret) = s("SecretAccessKey").filter(|v| v.len() >= 8) {
                    prop_assert!(!msg.contains(&secret), "{}", msg);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Argv templates.

/// One piece of a template element.
#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Var(String),
}

/// `text` with its braces doubled: a literal in a template.
fn escape_braces(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

fn element_pieces(names: &'static [&'static str]) -> impl Strategy<Value = Vec<Piece>> {
    prop::collection::vec(
        prop_oneof![
            text().prop_map(Piece::Lit),
            "[{}a-z ]{0,6}".prop_map(Piece::Lit),
            prop::sample::select(names).prop_map(|n| Piece::Var(n.to_string())),
        ],
        0..6,
    )
}

fn element(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Lit(s) => escape_braces(s),
            Piece::Var(n) => format!("{{{n}}}"),
        })
        .collect()
}

const NAMES: &[&str] = &["name", "image", "command", "cpu", "memory"];

proptest! {
    #![proptest_config(config())]

    /// Any template elements: validated and rendered, or refused, never a panic.
    #[test]
    fn template_arbitrary(
        elements in prop::collection::vec(prop_oneof![text(), "[{}a-z]{0,8}"], 0..4),
        values in prop::collection::btree_map("[a-z{}]{0,4}", prop_oneof![
            text().prop_map(template::Value::One),
            prop::collection::vec(text(), 0..3).prop_map(template::Value::Many),
        ], 0..4),
    ) {
        let values: Values = values;
        let known: Vec<String> = values.keys().cloned().collect();
        let (validated, rendered) = within("template::validate and render", move || {
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            (
                template::validate(&elements, &known),
                template::render("deploy", &elements, &values),
            )
        });
        // A template that renders also validates against the same names.
        if rendered.is_ok() {
            prop_assert_eq!(validated, Ok(()));
        }
    }

    /// Literals (braces doubled) and scalar placeholders render to the literal text with the
    /// values in place, one argument per element, whatever the values hold.
    #[test]
    fn template_round_trip(
        elements in prop::collection::vec(element_pieces(NAMES), 1..5),
        values in prop::collection::vec(text(), NAMES.len()),
    ) {
        let template: Vec<String> = elements.iter().map(|p| element(p)).collect();
        let vals: Values = NAMES
            .iter()
            .zip(&values)
            .map(|(n, v)| (n.to_string(), template::Value::One(v.clone())))
            .collect();
        prop_assert_eq!(template::validate(&template, NAMES), Ok(()));
        let want: Vec<String> = elements
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Lit(s) => s.clone(),
                        Piece::Var(n) => vals.get(n).map(|v| match v {
                            template::Value::One(s) => s.clone(),
                            template::Value::Many(_) => unreachable!(),
                        }).unwrap(),
                    })
                    .collect()
            })
            .collect();
        prop_assert_eq!(template::render("deploy", &template, &vals), Ok(want));
        // Without one of the names it uses, the template is refused, naming it.
        let used: Vec<&str> = elements.iter().flatten().filter_map(|p| match p {
            Piece::Var(n) => Some(n.as_str()),
            Piece::Lit(_) => None,
        }).collect();
        if let Some(missing) = used.first() {
            let fewer: Vec<&str> = NAMES.iter().copied().filter(|n| n != missing).collect();
            let refused = template::validate(&template, &fewer);
            prop_assert!(
                matches!(&refused, Err(TemplateError::Unknown { name, .. }) if used.contains(&name.as_str()) && !fewer.contains(&name.as_str())),
                "{:?}", refused
            );
        }
    }

    /// An element holding a list placeholder is emitted once per item (none for an empty
    /// list), each item whole.
    #[test]
    fn template_list_values(
        before in element_pieces(&["name"]),
        after in element_pieces(&["name"]),
        items in prop::collection::vec(text(), 0..4),
        name in text(),
    ) {
        let mut pieces = before.clone();
        pieces.push(Piece::Var("env".into()));
        pieces.extend(after.iter().cloned());
        let template = vec!["p3".to_string(), element(&pieces)];
        let vals: Values = [
            ("name".to_string(), template::Value::One(name.clone())),
            ("env".to_string(), template::Value::Many(items.clone())),
        ]
        .into_iter()
        .collect();
        let text_of = |ps: &[Piece]| -> String {
            ps.iter().map(|p| match p {
                Piece::Lit(s) => s.clone(),
                Piece::Var(_) => name.clone(),
            }).collect()
        };
        let mut want = vec!["p3".to_string()];
        want.extend(items.iter().map(|i| format!("{}{i}{}", text_of(&before), text_of(&after))));
        prop_assert_eq!(template::render("deploy", &template, &vals), Ok(want));
    }
}

// ---------------------------------------------------------------------------------------------
// `audit show --since`.

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
        .unwrap()
        .to_utc()
}

proptest! {
    #![proptest_config(config())]

    /// Any text, and text shaped like an age (long numbers, signs, any last character): a
    /// time or an error, never a panic.
    #[test]
    fn since_arbitrary(t in prop_oneof![
        text(),
        ("[ +-]?[0-9]{0,22}", prop_oneof![Just(String::new()), "[smhdSMHDyé日 ]", any::<char>().prop_map(String::from)])
            .prop_map(|(n, u)| format!("{n}{u}")),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2}))?",
    ]) {
        let t2 = t.clone();
        if let Err(msg) = within("audit::parse_since", move || audit::parse_since(&t2, now())) {
            prop_assert!(msg.starts_with("--since"), "{}", msg);
        }
    }

    /// An age of n units is exactly n units before now.
    #[test]
    fn since_age_round_trip(n in 0i64..1_000_000, unit in prop::sample::select(vec![('s', 1i64), ('m', 60), ('h', 3600), ('d', 86400)]), pad in "[ \t]{0,2}") {
        let got = audit::parse_since(&format!("{pad}{n}{}{pad}", unit.0), now()).unwrap();
        prop_assert_eq!(got, now() - chrono::Duration::seconds(n * unit.1));
    }

    /// An RFC 3339 time (any offset, any precision) is that instant; a date is its midnight UTC.
    #[test]
    fn since_time_round_trip(t in time(), offset_min in -1439i32..1440, precision in 0usize..4) {
        let offset = FixedOffset::east_opt(offset_min * 60).unwrap();
        let format = [SecondsFormat::Secs, SecondsFormat::Millis, SecondsFormat::Micros, SecondsFormat::Nanos][precision];
        let text = t.with_timezone(&offset).to_rfc3339_opts(format, offset_min == 0);
        let got = audit::parse_since(&text, now()).unwrap();
        let truncated = match format {
            SecondsFormat::Secs => t.timestamp_nanos_opt().unwrap() / 1_000_000_000 * 1_000_000_000,
            SecondsFormat::Millis => t.timestamp_nanos_opt().unwrap() / 1_000_000 * 1_000_000,
            SecondsFormat::Micros => t.timestamp_nanos_opt().unwrap() / 1_000 * 1_000,
            _ => t.timestamp_nanos_opt().unwrap(),
        };
        prop_assert_eq!(got.timestamp_nanos_opt().unwrap(), truncated);
        let date = t.date_naive();
        let midnight = audit::parse_since(&date.format("%Y-%m-%d").to_string(), now()).unwrap();
        prop_assert_eq!(midnight, date.and_hms_opt(0, 0, 0).unwrap().and_utc());
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs the properties found, kept as fixed cases.

/// `--since` with a multi-byte last character, and ages beyond what a time can hold: each
/// panicked (a slice inside a character; `n * unit` overflowing; `TimeDelta::seconds` out of
/// range; `now - age` before the earliest time).
#[test]
fn since_regressions() {
    let mut wrong = Vec::new();
    for text in [
        "\u{80}",
        "¡",
        "5日",
        "106751991167301d",
        "9223372036854776s",
        "100000000000d",
        "9223372036854775807s",
    ] {
        match std::panic::catch_unwind(|| audit::parse_since(text, now())) {
            Ok(Err(msg)) if msg.starts_with("--since") => {}
            other => wrong.push(format!("{text:?}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        audit::parse_since("106751991167300d", now()).unwrap_err(),
        "--since \"106751991167300d\": the age reaches back beyond the representable time"
    );
}

/// Was a bug: `append` hashes the record's in-memory JSON, `verify` the
/// JSON it reads back from the line, and serde_json (without its `float_roundtrip` feature)
/// can read a float back one ULP off, and an untouched record with such a float in `extra`
/// then failed `audit verify` as "edited". The workspace enables `float_roundtrip`.
#[test]
fn audit_float_in_extra_verifies() {
    let mut r = AuditRecord::new(AuditEvent::Grant, Decision::Granted, "a float in extra");
    r.extra.insert("x".into(), json!(9.371430607729377e75));
    let (_dir, path, _) = write_chain(vec![r]);
    assert_eq!(audit::verify(&path).unwrap().broken, None);
}
