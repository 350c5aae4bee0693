//! Built-in step `release`: create or update the GitLab release of the pipeline's release tag,
//! with the image digests built per devstage and the P3 jobs deployed as notes and links.
//!
//! Idempotent: it creates the release; when GitLab answers 409 (the release exists, e.g. the
//! job was retried) it updates name and notes and brings the links in line. It authenticates
//! with the job token (`JOB-TOKEN` header), which GitLab accepts for the releases API.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gitlab::api::common::{NameOrId, path_escaped};
use gitlab::api::endpoint_prelude::{BodyError, Endpoint, JsonParams, Method};
use gitlab::api::projects::releases::links::{
    CreateReleaseLink, LinkType, ListReleaseLinks, UpdateReleaseLink,
};
use gitlab::api::projects::releases::{CreateRelease, CreateReleaseAssetLinks};
use gitlab::api::{ApiError, Query};
use serde::Deserialize;

use super::context::StepContext;
use super::p3::Report;
use super::tag::is_release_tag;

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    /// Image of a devstage, `DEVSTAGE=REF` (repeatable), e.g. `client_prod=reg/app@sha256:...`.
    #[arg(long = "image", value_name = "DEVSTAGE=REF")]
    pub images: Vec<String>,
    /// A dotenv file written by `image build --push` (repeatable).
    #[arg(long = "dotenv", value_name = "FILE")]
    pub dotenvs: Vec<PathBuf>,
    /// A report written by `p3 deploy --report` (repeatable).
    #[arg(long = "deploy-report", value_name = "FILE")]
    pub deploy_reports: Vec<PathBuf>,
    /// Release name (default: the tag).
    #[arg(long)]
    pub name: Option<String>,
    /// Text put before the generated notes.
    #[arg(long)]
    pub notes: Option<String>,
    /// GitLab API URL (default `$CI_API_V4_URL`).
    #[arg(long)]
    pub api_url: Option<String>,
    /// Project ID or path (default `$CI_PROJECT_ID`).
    #[arg(long)]
    pub project: Option<String>,
    /// Steps config file (default `$P3_STEPS_CONFIG`).
    #[arg(long)]
    pub steps_config: Option<PathBuf>,
    /// PEM file of the CAs to trust for the GitLab API instead of the system's (default:
    /// AWS_CA_BUNDLE, the AWS profile's ca_bundle, CI_SERVER_TLS_CA_FILE; SSL_CERT_FILE adds
    /// to the system store).
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Time to connect to GitLab.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::s3::parse_duration, env = "P3_GITLAB_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,
    /// Time for one API request, answer included.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = crate::s3::parse_duration, env = "P3_GITLAB_TIMEOUT")]
    pub timeout: Duration,
}

/// Why the release step failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Not a release-tag pipeline.
    #[error("{0}")]
    NotARelease(String),
    /// Bad or missing input.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// GitLab refused or could not be reached.
    #[error("GitLab API: {0}")]
    Api(String),
}

/// A release link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name (unique in a release).
    pub name: String,
    /// URL (unique in a release).
    pub url: String,
}

/// Parse `DEVSTAGE=REF`.
pub fn parse_image_arg(arg: &str) -> Result<(String, String), ReleaseError> {
    match arg.split_once('=') {
        Some((d, r)) if !d.is_empty() && !r.is_empty() => Ok((d.into(), r.into())),
        _ => Err(ReleaseError::Usage(format!(
            "--image {arg:?} must be DEVSTAGE=REF"
        ))),
    }
}

/// Read `P3_IMAGE` and `P3_IMAGE_DEVSTAGE` from a dotenv written by `image build`.
pub fn parse_dotenv(text: &str) -> Option<(String, String)> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.trim(), v.trim().trim_matches('"'));
        }
    }
    Some((
        vars.get("P3_IMAGE_DEVSTAGE")?.to_string(),
        vars.get("P3_IMAGE")?.to_string(),
    ))
}

/// Release notes (Markdown): images per devstage, then P3 jobs per devstage.
pub fn notes(
    intro: Option<&str>,
    images: &BTreeMap<String, String>,
    deploys: &[Report],
    pipeline_url: Option<&str>,
) -> String {
    let mut s = String::new();
    if let Some(intro) = intro.filter(|i| !i.trim().is_empty()) {
        s.push_str(intro.trim());
        s.push_str("\n\n");
    }
    s.push_str("## Images\n\n");
    if images.is_empty() {
        s.push_str("No image was recorded for this release.\n");
    } else {
        s.push_str("| Devstage | Image |\n| --- | --- |\n");
        for (devstage, image) in images {
            s.push_str(&format!("| {devstage} | `{image}` |\n"));
        }
    }
    s.push_str("\n## P3 jobs deployed\n\n");
    if deploys.is_empty() {
        s.push_str("No deployment was recorded for this release.\n");
    } else {
        s.push_str("| Devstage | Deploy stage | Jobs |\n| --- | --- | --- |\n");
        for r in deploys {
            let jobs: Vec<String> = r
                .jobs
                .iter()
                .map(|j| {
                    if j.ok {
                        j.job.clone()
                    } else {
                        format!("{} (failed)", j.job)
                    }
                })
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                r.devstage,
                r.deploy_stage,
                jobs.join(", ")
            ));
        }
    }
    if let Some(url) = pipeline_url {
        s.push_str(&format!("\nBuilt by pipeline {url}\n"));
    }
    s
}

/// One image link per devstage. GitLab wants a URL; an image reference is not one, so the
/// link points at `https://<reference>`, which registry UIs and humans both read.
pub fn links(images: &BTreeMap<String, String>) -> Vec<Link> {
    images
        .iter()
        .map(|(devstage, image)| Link {
            name: format!("Image {devstage}"),
            url: format!("https://{image}"),
        })
        .collect()
}

/// Split `CI_API_V4_URL` into what `GitlabBuilder` takes: host (with port and any path prefix)
/// and whether it is plain http.
pub fn api_host(api_url: &str) -> Result<(String, bool), ReleaseError> {
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

/// `PUT /projects/:id/releases/:tag_name` (the gitlab crate has no update endpoint).
struct UpdateRelease<'a> {
    project: NameOrId<'a>,
    tag: &'a str,
    name: &'a str,
    description: &'a str,
}

impl Endpoint for UpdateRelease<'_> {
    fn method(&self) -> Method {
        Method::PUT
    }

    fn endpoint(&self) -> Cow<'static, str> {
        format!(
            "projects/{}/releases/{}",
            self.project,
            path_escaped(self.tag)
        )
        .into()
    }

    fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, BodyError> {
        JsonParams::into_body(&serde_json::json!({
            "name": self.name,
            "description": self.description,
        }))
    }
}

#[derive(Debug, Deserialize)]
struct ExistingLink {
    id: u64,
    name: String,
    url: String,
}

fn api_err<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    e: ApiError<E>,
) -> ReleaseError {
    ReleaseError::Api(format!("{what}: {}", api_error_text(&e)))
}

/// What went wrong, in words: the transport's cause (our client's errors already name it),
/// or the HTTP status with GitLab's own message.
fn api_error_text<E: std::error::Error + Send + Sync + 'static>(e: &ApiError<E>) -> String {
    let message = |obj: &serde_json::Value| {
        obj.get("message").or_else(|| obj.get("error")).map_or_else(
            || obj.to_string(),
            |m| m.as_str().map_or_else(|| m.to_string(), str::to_string),
        )
    };
    let text = match e {
        ApiError::Client { source } => source.to_string(),
        ApiError::GitlabWithStatus { status, msg } => format!("HTTP {status}: {msg}"),
        ApiError::GitlabObjectWithStatus { status, obj }
        | ApiError::GitlabUnrecognizedWithStatus { status, obj } => {
            format!("HTTP {status}: {}", message(obj))
        }
        ApiError::GitlabService { status, data } => {
            let body = String::from_utf8_lossy(data);
            let body: String = body.trim().chars().take(200).collect();
            if body.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {body}")
            }
        }
        other => other.to_string(),
    };
    p3_contract::terminal::escape(&text).into_owned()
}

/// A failure of the GitLab client, already in words (`connection refused by ...`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// The GitLab REST client the release step uses: reqwest with bounded timeouts, the CA trust
/// of [`crate::tls`], the job token in the `JOB-TOKEN` header, and errors that name their
/// cause (connection refused, timeout, TLS, or the HTTP status with GitLab's message).
pub struct Api {
    client: reqwest::blocking::Client,
    rest_url: reqwest::Url,
    token: http::HeaderValue,
    trust: Option<crate::tls::CaBundle>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Api {
    /// A client for the API at `api_url` (`https://host[/prefix]/api/v4`).
    pub fn new(
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
    pub fn check_token(&self) -> Result<(), ReleaseError> {
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

fn status_of<E: std::error::Error + Send + Sync + 'static>(e: &ApiError<E>) -> Option<u16> {
    match e {
        ApiError::GitlabWithStatus { status, .. }
        | ApiError::GitlabObjectWithStatus { status, .. }
        | ApiError::GitlabUnrecognizedWithStatus { status, .. }
        | ApiError::GitlabService { status, .. } => Some(status.as_u16()),
        _ => None,
    }
}

/// What the step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new release.
    Created,
    /// An existing release was updated.
    Updated,
}

/// Create or update the release of `tag` on `client`.
pub fn publish(
    client: &Api,
    project: &str,
    tag: &str,
    name: &str,
    description: &str,
    wanted: &[Link],
) -> Result<Outcome, ReleaseError> {
    let project_id = || -> NameOrId<'_> {
        match project.parse::<u64>() {
            Ok(id) => id.into(),
            Err(_) => project.into(),
        }
    };
    let mut create = CreateRelease::builder();
    create
        .project(project_id())
        .tag_name(tag)
        .name(name)
        .description(description);
    for l in wanted {
        create.asset(
            CreateReleaseAssetLinks::builder()
                .name(l.name.as_str())
                .url(l.url.as_str())
                .link_type(LinkType::Image)
                .build()
                .map_err(|e| ReleaseError::Usage(e.to_string()))?,
        );
    }
    let create = create
        .build()
        .map_err(|e| ReleaseError::Usage(e.to_string()))?;
    match gitlab::api::ignore(create).query(client) {
        Ok(()) => return Ok(Outcome::Created),
        // 409 Conflict: "Release already exists" (documented for POST /releases).
        Err(e) if status_of(&e) == Some(409) => {}
        Err(e) => return Err(api_err("create release", e)),
    }
    let update = UpdateRelease {
        project: project_id(),
        tag,
        name,
        description,
    };
    gitlab::api::ignore(update)
        .query(client)
        .map_err(|e| api_err("update release", e))?;
    let list = ListReleaseLinks::builder()
        .project(project_id())
        .tag_name(tag)
        .build()
        .map_err(|e| ReleaseError::Usage(e.to_string()))?;
    let existing: Vec<ExistingLink> = gitlab::api::paged(list, gitlab::api::Pagination::All)
        .query(client)
        .map_err(|e| api_err("list release links", e))?;
    for l in wanted {
        match existing.iter().find(|e| e.name == l.name) {
            Some(e) if e.url == l.url => {}
            Some(e) => {
                let ep = UpdateReleaseLink::builder()
                    .project(project_id())
                    .tag_name(tag)
                    .link_id(e.id)
                    .url(l.url.as_str())
                    .build()
                    .map_err(|e| ReleaseError::Usage(e.to_string()))?;
                gitlab::api::ignore(ep)
                    .query(client)
                    .map_err(|e| api_err("update release link", e))?;
            }
            None => {
                let ep = CreateReleaseLink::builder()
                    .project(project_id())
                    .tag_name(tag)
                    .name(l.name.as_str())
                    .url(l.url.as_str())
                    .link_type(LinkType::Image)
                    .build()
                    .map_err(|e| ReleaseError::Usage(e.to_string()))?;
                gitlab::api::ignore(ep)
                    .query(client)
                    .map_err(|e| api_err("create release link", e))?;
            }
        }
    }
    Ok(Outcome::Updated)
}

fn read(path: &Path) -> Result<String, ReleaseError> {
    std::fs::read_to_string(path).map_err(|source| ReleaseError::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })
}

/// Run the step; returns the process exit code.
pub fn run(args: ReleaseArgs) -> anyhow::Result<i32> {
    let ctx = StepContext::from_env(args.steps_config.as_deref())?;
    release(&ctx, &args).map_err(|e| match e {
        // Exit codes (p3_contract::exit::step_code): usage 2, everything else 1.
        ReleaseError::Usage(_) => anyhow::Error::new(p3_contract::exit::Usage(e.to_string())),
        ReleaseError::NotARelease(_) => {
            anyhow::Error::new(p3_contract::exit::Failure::build(e.to_string()))
        }
        other => other.into(),
    })?;
    Ok(0)
}

/// The step with its context given.
pub fn release(ctx: &StepContext, args: &ReleaseArgs) -> Result<Outcome, ReleaseError> {
    let pattern = &ctx.config.image.release_tag_pattern;
    let tag = match ctx.ci.commit_tag.as_deref() {
        None => {
            return Err(ReleaseError::NotARelease(
                "release runs only in a release-tag pipeline (CI_COMMIT_TAG is not set): add `rules: - if: $CI_COMMIT_TAG` to the release job".into(),
            ));
        }
        Some(t) => t,
    };
    if !is_release_tag(Some(tag), pattern).map_err(|e| ReleaseError::Usage(e.to_string()))? {
        return Err(ReleaseError::NotARelease(format!(
            "tag {tag:?} is not a release tag (steps.image.release_tag_pattern {pattern}): no release made"
        )));
    }
    let mut images = BTreeMap::new();
    for path in &args.dotenvs {
        let (devstage, image) = parse_dotenv(&read(path)?).ok_or_else(|| {
            ReleaseError::Usage(format!(
                "{} holds no P3_IMAGE and P3_IMAGE_DEVSTAGE (write it with image build --push --dotenv)",
                path.display()
            ))
        })?;
        images.insert(devstage, image);
    }
    for arg in &args.images {
        let (devstage, image) = parse_image_arg(arg)?;
        images.insert(devstage, image);
    }
    let mut deploys = Vec::new();
    for path in &args.deploy_reports {
        let report: Report = serde_json::from_str(&read(path)?).map_err(|e| {
            ReleaseError::Usage(format!("{} is not a p3 deploy report: {e}", path.display()))
        })?;
        deploys.push(report);
    }
    let description = notes(
        args.notes.as_deref(),
        &images,
        &deploys,
        ctx.ci.pipeline_url.as_deref(),
    );
    let api_url = args
        .api_url
        .clone()
        .or_else(|| ctx.ci.api_v4_url.clone())
        .ok_or_else(|| ReleaseError::Usage("no GitLab API URL: CI_API_V4_URL is not set".into()))?;
    let project = args
        .project
        .clone()
        .or_else(|| ctx.ci.project_id.clone())
        .ok_or_else(|| ReleaseError::Usage("no project: CI_PROJECT_ID is not set".into()))?;
    let token = ctx
        .ci
        .job_token
        .as_ref()
        .ok_or_else(|| ReleaseError::Usage("no job token: CI_JOB_TOKEN is not set".into()))?;
    let client = Api::new(
        &api_url,
        token.expose(),
        crate::tls::resolve(args.ca_bundle.as_deref(), crate::tls::For::Gitlab),
        args.connect_timeout,
        args.timeout,
    )?;
    // The token is checked first, so a wrong one changes nothing; errors never contain it.
    client.check_token()?;
    let name = args.name.clone().unwrap_or_else(|| tag.to_string());
    let outcome = publish(&client, &project, tag, &name, &description, &links(&images))?;
    let verb = match outcome {
        Outcome::Created => "created",
        Outcome::Updated => "updated",
    };
    println!(
        "release {verb}: {} with {} image(s) and {} deployment(s)",
        p3_contract::terminal::escape(tag),
        images.len(),
        deploys.len()
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p3::ReportJob;

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

    #[test]
    fn notes_and_links_list_images_and_jobs() {
        let images: BTreeMap<String, String> = [
            ("client_dev".to_string(), "reg/app@sha256:aa".to_string()),
            ("client_prod".to_string(), "reg/app@sha256:bb".to_string()),
        ]
        .into();
        let deploys = vec![Report {
            devstage: "client_prod".into(),
            deploy_stage: "client_uat".into(),
            image: None,
            action: "deploy".into(),
            jobs: vec![
                ReportJob {
                    job: "ingest".into(),
                    ok: true,
                    error: None,
                },
                ReportJob {
                    job: "score".into(),
                    ok: false,
                    error: None,
                },
            ],
        }];
        let n = notes(Some("Scoring 1.2"), &images, &deploys, Some("https://p/1"));
        assert!(n.starts_with("Scoring 1.2\n\n## Images"), "{n}");
        assert!(n.contains("| client_prod | `reg/app@sha256:bb` |"), "{n}");
        assert!(
            n.contains("| client_prod | client_uat | ingest, score (failed) |"),
            "{n}"
        );
        assert!(n.ends_with("Built by pipeline https://p/1\n"), "{n}");
        let l = links(&images);
        assert_eq!(
            l[1],
            Link {
                name: "Image client_prod".into(),
                url: "https://reg/app@sha256:bb".into()
            }
        );
    }

    #[test]
    fn inputs_parse() {
        assert_eq!(
            parse_dotenv("P3_IMAGE=r@sha256:1\nP3_IMAGE_TAG=r:t\nP3_IMAGE_DEVSTAGE=client_uat\n"),
            Some(("client_uat".into(), "r@sha256:1".into()))
        );
        assert_eq!(parse_dotenv("P3_IMAGE=r\n"), None);
        assert!(parse_image_arg("client_dev=r@sha256:1").is_ok());
        assert!(parse_image_arg("r@sha256:1").is_err());
    }

    #[test]
    fn refuses_outside_a_release_tag_pipeline() {
        let args = ReleaseArgs {
            images: vec![],
            dotenvs: vec![],
            deploy_reports: vec![],
            name: None,
            notes: None,
            api_url: Some("http://127.0.0.1:9/api/v4".into()),
            project: Some("1".into()),
            steps_config: None,
            ca_bundle: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let mut ctx = StepContext::default();
        let err = release(&ctx, &args).unwrap_err();
        assert!(
            err.to_string().contains("CI_COMMIT_TAG is not set"),
            "{err}"
        );
        ctx.ci.commit_tag = Some("nightly".into());
        let err = release(&ctx, &args).unwrap_err();
        assert!(err.to_string().contains("not a release tag"), "{err}");
    }
}
