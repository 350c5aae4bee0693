//! `p3-executor release` against a stand-in GitLab API server.
//!
//! No GitLab can run here. The server below is a stand-in faithful to the documented REST API
//! (docs.gitlab.com "Releases API" and "Release links API", and "Jobs API: get job tokens
//! job"): `GET /api/v4/job`, `POST /api/v4/projects/:id/releases` (201; 409 "Release already
//! exists"), `GET`/`PUT /api/v4/projects/:id/releases/:tag_name` (200; 404),
//! `GET`/`POST /api/v4/projects/:id/releases/:tag_name/assets/links` and
//! `PUT .../assets/links/:link_id`; every request must carry the `JOB-TOKEN` header (else 401).
//! Path parameters are URL-encoded and bodies are JSON or form-encoded, as clients send them.

use crate::common::text;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_p3-executor");
const TOKEN: &str = "job-token-do-not-print";
const DIGEST_DEV: &str = "registry.example.com/data/scoring@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST_PROD: &str = "registry.example.com/data/scoring@sha256:2222222222222222222222222222222222222222222222222222222222222222";
const DIGEST_PROD2: &str = "registry.example.com/data/scoring@sha256:3333333333333333333333333333333333333333333333333333333333333333";

#[derive(Default)]
struct State {
    /// tag → release JSON (name, description, links).
    releases: BTreeMap<String, Value>,
    next_link_id: u64,
    /// (method, path, status) per request.
    log: Vec<(String, String, u16)>,
}

struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Request body as a JSON object, whether the client sent JSON or a form.
fn body_params(content_type: &str, body: &[u8]) -> Value {
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body).unwrap()
    } else {
        let text = String::from_utf8_lossy(body);
        let mut map = serde_json::Map::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), Value::String(percent_decode(v)));
        }
        Value::Object(map)
    }
}

fn handle(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    token: Option<&str>,
    params: Value,
) -> (u16, Value) {
    if token != Some(TOKEN) {
        return (401, json!({"message": "401 Unauthorized"}));
    }
    let segments: Vec<String> = path
        .trim_start_matches("/api/v4/")
        .split('/')
        .map(percent_decode)
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut st = state.lock().unwrap();
    match (method, seg.as_slice()) {
        ("GET", ["job"]) => (
            200,
            json!({"id": 7, "name": "release", "status": "running"}),
        ),
        ("POST", ["projects", "42", "releases"]) => {
            let tag = params["tag_name"].as_str().unwrap().to_string();
            if st.releases.contains_key(&tag) {
                return (409, json!({"message": "Release already exists"}));
            }
            let mut links = Vec::new();
            for l in params["assets"]["links"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                st.next_link_id += 1;
                links.push(json!({"id": st.next_link_id, "name": l["name"], "url": l["url"], "link_type": l["link_type"]}));
            }
            let release = json!({
                "tag_name": tag,
                "name": params["name"],
                "description": params["description"],
                "assets": {"links": links},
            });
            st.releases.insert(tag, release.clone());
            (201, release)
        }
        ("GET", ["projects", "42", "releases", tag]) => match st.releases.get(*tag) {
            Some(r) => (200, r.clone()),
            None => (404, json!({"message": "404 Not Found"})),
        },
        ("PUT", ["projects", "42", "releases", tag]) => match st.releases.get_mut(*tag) {
            Some(r) => {
                for key in ["name", "description"] {
                    if !params[key].is_null() {
                        r[key] = params[key].clone();
                    }
                }
                (200, r.clone())
            }
            None => (404, json!({"message": "404 Not Found"})),
        },
        ("GET", ["projects", "42", "releases", tag, "assets", "links"]) => {
            match st.releases.get(*tag) {
                Some(r) => (200, r["assets"]["links"].clone()),
                None => (404, json!({"message": "404 Not Found"})),
            }
        }
        ("POST", ["projects", "42", "releases", tag, "assets", "links"]) => {
            st.next_link_id += 1;
            let id = st.next_link_id;
            let Some(r) = st.releases.get_mut(*tag) else {
                return (404, json!({"message": "404 Not Found"}));
            };
            let links = r["assets"]["links"].as_array_mut().unwrap();
            if links.iter().any(|l| l["name"] == params["name"]) {
                return (
                    400,
                    json!({"message": {"name": ["has already been taken"]}}),
                );
            }
            let link = json!({"id": id, "name": params["name"], "url": params["url"], "link_type": params["link_type"]});
            links.push(link.clone());
            (201, link)
        }
        ("PUT", ["projects", "42", "releases", tag, "assets", "links", id]) => {
            let Some(r) = st.releases.get_mut(*tag) else {
                return (404, json!({"message": "404 Not Found"}));
            };
            let id: u64 = id.parse().unwrap();
            let links = r["assets"]["links"].as_array_mut().unwrap();
            match links.iter_mut().find(|l| l["id"] == id) {
                Some(l) => {
                    for key in ["name", "url", "link_type"] {
                        if !params[key].is_null() {
                            l[key] = params[key].clone();
                        }
                    }
                    (200, l.clone())
                }
                None => (404, json!({"message": "404 Not Found"})),
            }
        }
        _ => (404, json!({"message": "404 Not Found"})),
    }
}

fn serve_one(state: &Mutex<State>, stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let path = target.split('?').next().unwrap().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let params = if len == 0 {
        Value::Null
    } else {
        body_params(
            headers.get("content-type").map_or("", String::as_str),
            &body,
        )
    };
    let (status, response) = handle(
        state,
        &method,
        &path,
        headers.get("job-token").map(String::as_str),
        params,
    );
    state.lock().unwrap().log.push((method, path, status));
    let body = response.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve_one(&s, stream),
                    Err(_) => break,
                }
            }
        });
        Self { port, state }
    }

    fn release(&self, tag: &str) -> Option<Value> {
        self.state.lock().unwrap().releases.get(tag).cloned()
    }

    fn log(&self) -> Vec<(String, String, u16)> {
        self.state.lock().unwrap().log.clone()
    }
}

struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("image-client_dev.env"),
            format!("P3_IMAGE={DIGEST_DEV}\nP3_IMAGE_TAG=x\nP3_IMAGE_DEVSTAGE=client_dev\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p3-deploy-client_prod.json"),
            json!({
                "devstage": "client_prod", "deploy_stage": "client_uat", "image": DIGEST_PROD,
                "action": "deploy",
                "jobs": [{"job": "ingest", "ok": true}, {"job": "score", "ok": true}]
            })
            .to_string(),
        )
        .unwrap();
        Self { dir }
    }

    fn release(&self, server: &Server, tag: Option<&str>, token: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env(
                "CI_API_V4_URL",
                format!("http://127.0.0.1:{}/api/v4", server.port),
            )
            .env("CI_PROJECT_ID", "42")
            .env("CI_JOB_TOKEN", token)
            .env(
                "CI_PIPELINE_URL",
                "https://gitlab.example.com/data/scoring/-/pipelines/9",
            )
            .current_dir(self.dir.path())
            .arg("release")
            .args(args);
        if let Some(t) = tag {
            cmd.env("CI_COMMIT_TAG", t);
        }
        cmd.output().unwrap()
    }
}

fn link_urls(release: &Value) -> BTreeMap<String, String> {
    release["assets"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["url"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn creates_then_updates_the_release_idempotently() {
    let server = Server::start();
    let job = Job::new();
    let args = [
        "--dotenv=image-client_dev.env",
        "--deploy-report=p3-deploy-client_prod.json",
    ];
    let prod = format!("--image=client_prod={DIGEST_PROD}");
    let out = job.release(&server, Some("v1.2.3"), TOKEN, &[args[0], args[1], &prod]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("release created: v1.2.3"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(TOKEN), "job token printed");

    let r = server.release("v1.2.3").expect("release created");
    assert_eq!(r["name"], "v1.2.3");
    let notes = r["description"].as_str().unwrap();
    assert!(
        notes.contains(&format!("| client_dev | `{DIGEST_DEV}` |")),
        "{notes}"
    );
    assert!(
        notes.contains(&format!("| client_prod | `{DIGEST_PROD}` |")),
        "{notes}"
    );
    assert!(
        notes.contains("| client_prod | client_uat | ingest, score |"),
        "{notes}"
    );
    assert!(notes.contains("pipelines/9"), "{notes}");
    assert_eq!(
        link_urls(&r),
        BTreeMap::from([
            ("Image client_dev".into(), format!("https://{DIGEST_DEV}")),
            ("Image client_prod".into(), format!("https://{DIGEST_PROD}")),
        ])
    );

    // A retried job with a rebuilt prod image: 409 on create, then update notes and links.
    let prod2 = format!("--image=client_prod={DIGEST_PROD2}");
    let out = job.release(&server, Some("v1.2.3"), TOKEN, &[args[0], args[1], &prod2]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("release updated: v1.2.3"),
        "{}",
        text(&out)
    );
    let r = server.release("v1.2.3").unwrap();
    assert!(r["description"].as_str().unwrap().contains(DIGEST_PROD2));
    assert!(!r["description"].as_str().unwrap().contains(DIGEST_PROD));
    let links = link_urls(&r);
    assert_eq!(links.len(), 2, "links duplicated: {links:?}");
    assert_eq!(
        links["Image client_prod"],
        format!("https://{DIGEST_PROD2}")
    );

    let log = server.log();
    assert!(
        log.iter()
            .any(|(m, p, s)| m == "POST" && p.ends_with("/releases") && *s == 409),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(m, p, s)| m == "PUT" && p.ends_with("/releases/v1.2.3") && *s == 200),
        "{log:?}"
    );
    assert!(
        log.iter().all(|(_, _, s)| *s != 401),
        "a request lacked the job token: {log:?}"
    );
}

#[test]
fn a_wrong_token_fails_clearly_and_creates_nothing() {
    let server = Server::start();
    let job = Job::new();
    let out = job.release(
        &server,
        Some("v1.2.3"),
        "wrong-token",
        &["--dotenv=image-client_dev.env"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the job token was rejected"),
        "{}",
        text(&out)
    );
    assert!(!stderr.contains("wrong-token"), "token printed: {stderr}");
    assert!(server.release("v1.2.3").is_none());
}

#[test]
fn refuses_outside_a_release_tag_pipeline_without_calling_gitlab() {
    let server = Server::start();
    let job = Job::new();
    for tag in [None, Some("nightly-build")] {
        let out = job.release(&server, tag, TOKEN, &["--dotenv=image-client_dev.env"]);
        assert!(!out.status.success(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("release-tag pipeline") || stderr.contains("is not a release tag"),
            "{}",
            text(&out)
        );
    }
    assert!(
        server.log().is_empty(),
        "GitLab was called: {:?}",
        server.log()
    );
}
