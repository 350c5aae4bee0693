//! The GitLab REST client of the release step: reqwest with bounded timeouts, the CA trust of
//! [`crate::tls`], the job token, and transport errors in words.

use std::time::{Duration, Instant};

use gitlab::api::ApiError;

use super::ReleaseError;

/// Split `CI_API_V4_URL` into what `GitlabBuilder` takes: host (with port and any path prefix)
/// and whether it is plain http.
pub(crate) fn api_host(api_url: &str) -> Result<(String, bool), ReleaseError> {
    let (insecure, rest) = if let Some(r) = api_url.strip_prefix("https://") {
        (false, r)
    } else if let Some(r) = api_url.strip_prefix("http://") {
        (true, r)
    } else {
        return Err(ReleaseError::Usage(format!(
            "GitLab API URL {api_url:?} must start with https:// or http://"
        )));
    };
    let host = rest.trim_end_matches('/');
    let host = host.strip_suffix("/api/v4").unwrap_or(host);
    if host.is_empty() {
        return Err(ReleaseError::Usage(format!(
            "GitLab API URL {api_url:?} has no host"
        )));
    }
    Ok((host.to_string(), insecure))
}

/// A failure of the GitLab client, already in words (`connection refused by ...`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ClientError(String);

/// The GitLab REST client the release step uses: reqwest with bounded timeouts, the CA trust
/// of [`crate::tls`], the job token in the `JOB-TOKEN` header, and errors that name their
/// cause (connection refused, timeout, TLS, or the HTTP status with GitLab's message).
pub(crate) struct Api {
    client: reqwest::blocking::Client,
    rest_url: reqwest::Url,
    token: http::HeaderValue,
    trust: Option<crate::tls::CaBundle>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Api {
    /// A client for the API at `api_url` (`https://host[/prefix]/api/v4`).
    pub(crate) fn new(
        api_url: &str,
        token: &str,
        trust: Option<crate::tls::CaBundle>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ReleaseError> {
        let (host, insecure) = api_host(api_url)?;
        let scheme = if insecure { "http" } else { "https" };
        let rest_url = reqwest::Url::parse(&format!("{scheme}://{host}/api/v4/"))
            .map_err(|e| ReleaseError::Usage(format!("GitLab API URL {api_url:?}: {e}")))?;
        let mut builder = reqwest::blocking::Client::builder()
            .user_agent(concat!("p3-executor/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .timeout(timeout);
        let pem_certs =
            |b: &crate::tls::CaBundle| -> Result<Vec<reqwest::Certificate>, ReleaseError> {
                let pem = crate::tls::load(b).map_err(ReleaseError::Api)?;
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ReleaseError::Api(format!("{}: {e}", crate::tls::describe(Some(b))))
                })
            };
        if let Some(b) = &trust {
            builder = builder.tls_certs_only(pem_certs(b)?);
        } else if let Ok(file) = std::env::var("SSL_CERT_FILE")
            && !file.is_empty()
        {
            let b = crate::tls::CaBundle {
                path: file.into(),
                source: "SSL_CERT_FILE".into(),
            };
            builder = builder.tls_certs_merge(pem_certs(&b)?);
        }
        let client = builder
            .build()
            .map_err(|e| ReleaseError::Api(format!("cannot set up the HTTPS client: {e}")))?;
        let mut token = http::HeaderValue::from_str(token)
            .map_err(|_| ReleaseError::Usage("CI_JOB_TOKEN is not a valid header value".into()))?;
        token.set_sensitive(true);
        Ok(Self {
            client,
            rest_url,
            token,
            trust,
            timeout,
            connect_timeout,
        })
    }

    /// `GET /job` with the job token: the token is accepted, or the error says why not.
    pub(crate) fn check_token(&self) -> Result<(), ReleaseError> {
        let url = self.rest_url.join("job").expect("static path");
        let start = Instant::now();
        let rsp = self
            .client
            .get(url.clone())
            .header("JOB-TOKEN", self.token.clone())
            .send()
            .map_err(|e| ReleaseError::Api(self.describe(&e, &url, start.elapsed())))?;
        let status = rsp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = rsp.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").or_else(|| v.get("error")).cloned())
            .map_or_else(
                || body.trim().chars().take(200).collect(),
                |m| m.as_str().map_or_else(|| m.to_string(), str::to_string),
            );
        let why = if status.as_u16() == 401 || status.as_u16() == 403 {
            "the job token was rejected"
        } else {
            "GitLab did not accept the job token check"
        };
        Err(ReleaseError::Api(
            p3_contract::terminal::escape(&format!(
                "{why} (GET {}: HTTP {status}: {message})",
                url.path()
            ))
            .into_owned(),
        ))
    }

    fn origin(url: &reqwest::Url) -> String {
        match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", url.scheme()),
            (Some(h), None) => format!("{}://{h}", url.scheme()),
            _ => url.to_string(),
        }
    }

    /// A transport error in words: connection refused, timeout, TLS, or the cause.
    fn describe(&self, e: &reqwest::Error, url: &reqwest::Url, elapsed: Duration) -> String {
        let mut chain: Vec<String> = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = next {
            let t = err.to_string();
            if !t.is_empty() && !chain.iter().any(|c| c.contains(&t)) {
                chain.push(t);
            }
            next = err.source();
        }
        let all = chain.join(": ");
        let root = chain.last().cloned().unwrap_or_default();
        let origin = Self::origin(url);
        let where_ = format!("{origin}{}", url.path());
        if e.is_timeout() || all.to_ascii_lowercase().contains("timed out") {
            // reqwest marks a request that timed out before its connection was used as a
            // connect error: go by the time it took.
            let bound = if e.is_connect()
                && elapsed < self.timeout.saturating_sub(Duration::from_millis(200))
            {
                format!("connect timeout {}s", self.connect_timeout.as_secs_f64())
            } else {
                format!(
                    "timeout {}s (--timeout, P3_GITLAB_TIMEOUT)",
                    self.timeout.as_secs_f64()
                )
            };
            format!("no answer from {where_} within the {bound}")
        } else if crate::tls::is_certificate_error(&all) {
            format!(
                "TLS with {origin} failed: {root}: {}",
                crate::tls::certificate_hint(self.trust.as_ref())
            )
        } else if all.to_ascii_lowercase().contains("connection refused") {
            format!(
                "connection refused by {origin} (is GitLab's API at {}?)",
                self.rest_url
            )
        } else if e.is_connect() {
            format!("cannot connect to {origin}: {root}")
        } else {
            format!("request to {where_} failed: {all}")
        }
    }
}

impl gitlab::api::RestClient for Api {
    type Error = ClientError;

    fn rest_endpoint(&self, endpoint: &str) -> Result<reqwest::Url, ApiError<Self::Error>> {
        self.rest_url
            .join(endpoint)
            .map_err(|e| ApiError::client(ClientError(format!("bad API path {endpoint:?}: {e}"))))
    }
}

impl gitlab::api::Client for Api {
    fn rest(
        &self,
        mut request: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<http::Response<bytes::Bytes>, ApiError<Self::Error>> {
        let fail = |text: String| ApiError::client(ClientError(text));
        if let Some(h) = request.headers_mut() {
            h.insert("JOB-TOKEN", self.token.clone());
        }
        let request = request.body(body).map_err(|e| fail(e.to_string()))?;
        let request: reqwest::blocking::Request = request
            .try_into()
            .map_err(|e: reqwest::Error| fail(e.to_string()))?;
        let url = request.url().clone();
        let start = Instant::now();
        let rsp = self
            .client
            .execute(request)
            .map_err(|e| fail(self.describe(&e, &url, start.elapsed())))?;
        let mut out = http::Response::builder()
            .status(rsp.status())
            .version(rsp.version());
        if let Some(h) = out.headers_mut() {
            for (k, v) in rsp.headers() {
                h.insert(k, v.clone());
            }
        }
        let body = rsp
            .bytes()
            .map_err(|e| fail(self.describe(&e, &url, start.elapsed())))?;
        out.body(body).map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_host_table() {
        let cases = [
            (
                "https://gitlab.example.com/api/v4",
                Ok(("gitlab.example.com", false)),
            ),
            (
                "http://127.0.0.1:8080/api/v4/",
                Ok(("127.0.0.1:8080", true)),
            ),
            (
                "https://example.com/gitlab/api/v4",
                Ok(("example.com/gitlab", false)),
            ),
            ("gitlab.example.com", Err("must start with")),
            ("https:///api/v4", Err("no host")),
        ];
        for (url, want) in cases {
            match (want, api_host(url)) {
                (Ok((h, i)), Ok((host, insecure))) => assert_eq!((host.as_str(), insecure), (h, i)),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{url}: {e}"),
                (w, g) => panic!("{url}: want {w:?}, got {g:?}"),
            }
        }
    }
}
