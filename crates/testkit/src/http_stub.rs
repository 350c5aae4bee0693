//! Hand-made attack tokens, job payloads, and tiny loopback HTTP servers (a JWKS endpoint, or
//! any stand-in for GitLab) that count the requests they serve. Minting real tokens is
//! [`crate::tokens`].
//!
//! Typical use:
//! ```ignore
//! let minter = tokens::TokenMinter::new();
//! let jwks = tokens::JwksServer::start(&minter.jwks_json());
//! let claims = tokens::gitlab_claims(tokens::ISSUER, "p3-executor", 42, "client/app", "main", "branch", true);
//! let token = minter.mint(claims);
//! let payload = tokens::job_payload_json(42, &[("P3_ID_TOKEN", &token), ("P3_DEVSTAGE", "client_uat")]);
//! // cfg: identity.gitlab_url = tokens::ISSUER, identity.jwks_url = jwks.url.clone()
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

/// A token with an `alg` of `none` and no signature: must always be rejected.
pub fn unsigned_token(claims: &Value, kid: &str) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!("{}.", signing_input(&header, claims))
}

/// A token signed with HS256 using `secret` (e.g. the public key's modulus: key confusion).
pub fn hs256_token(claims: &Value, kid: &str, secret: &[u8]) -> String {
    let header = json!({"typ": "JWT", "alg": "HS256", "kid": kid});
    let message = signing_input(&header, claims);
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        message.as_bytes(),
    );
    format!("{message}.{}", b64url(tag.as_ref()))
}

/// Unpadded base64url, as JWTs and JWKs encode their parts.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a JWT's signature covers: `base64url(header).base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A JOB_RESPONSE_FILE-shaped payload for job `job_id` with the given variables (in order:
/// later definitions win, as in the runner). Job token: [`JOB_TOKEN`].
pub fn job_payload_json(job_id: u64, variables: &[(&str, &str)]) -> String {
    let vars: Vec<Value> = variables
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v, "public": false, "masked": true}))
        .collect();
    json!({
        "id": job_id,
        "token": JOB_TOKEN,
        "job_info": {"name": "deploy", "stage": "deploy", "project_id": 12, "project_name": "app"},
        "git_info": {"repo_url": format!("https://gitlab-ci-token:{JOB_TOKEN}@gitlab.example.com/client/app.git"),
                     "ref": "main", "sha": "4f0c3a1e", "ref_type": "branch"},
        "variables": vars,
    })
    .to_string()
}

/// The job token [`job_payload_json`] puts in payloads.
pub const JOB_TOKEN: &str = "glcbt-64_test-job-token-xyz";

/// One parsed HTTP request, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path with query, e.g. `/api/v4/job`.
    pub path: String,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A handler: request → (status, JSON body).
pub type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// A one-thread HTTP/1.1 server on a loopback port that answers each request with a handler
/// and counts requests. Stopped when dropped.
pub struct HttpStub {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Requests served so far.
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpStub {
    /// Start serving `handler`.
    pub fn start(handler: Arc<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (hits2, stop2) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Some(request) = read_request(&stream) {
                    hits2.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = handler(&request);
                    write_response(stream, status, &body);
                }
            }
        });
        Self {
            base_url: format!("http://{addr}"),
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.base_url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

fn write_response(mut stream: TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// GitLab's `/oauth/discovery/keys` stand-in: serves a JWKS document (replaceable, for key
/// rotation) at any path and counts fetches.
pub struct JwksServer {
    /// The JWKS URL (`<base>/oauth/discovery/keys`).
    pub url: String,
    /// Fetches so far.
    pub hits: Arc<AtomicUsize>,
    body: Arc<Mutex<(u16, String)>>,
    _stub: HttpStub,
}

impl JwksServer {
    /// Serve `jwks_json` with status 200.
    pub fn start(jwks_json: &str) -> Self {
        let body = Arc::new(Mutex::new((200u16, jwks_json.to_string())));
        let served = body.clone();
        let stub = HttpStub::start(Arc::new(move |_req: &Request| {
            served.lock().expect("jwks body").clone()
        }));
        Self {
            url: format!("{}/oauth/discovery/keys", stub.base_url),
            hits: stub.hits.clone(),
            body,
            _stub: stub,
        }
    }

    /// Fetches so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Serve another document from now on (GitLab rotated its keys).
    pub fn set_jwks(&self, jwks_json: &str) {
        *self.body.lock().expect("jwks body") = (200, jwks_json.to_string());
    }

    /// Answer with another status and body from now on (a broken GitLab).
    pub fn set_response(&self, status: u16, body: &str) {
        *self.body.lock().expect("jwks body") = (status, body.to_string());
    }
}

/// A loopback URL nobody listens on (connection refused): a GitLab that is down.
pub fn unused_local_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}/oauth/discovery/keys")
}

/// A loopback listener that accepts connections and never answers (a hung GitLab). Keep it
/// alive for the test's duration.
pub fn silent_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!(
        "http://{}/oauth/discovery/keys",
        listener.local_addr().expect("local addr")
    );
    (listener, url)
}
