//! Building the S3 client from the AWS default chain plus the step's options.
//!
//! The default chain is what makes the per-job files work: `prepare` writes `AWS_CONFIG_FILE`,
//! `AWS_SHARED_CREDENTIALS_FILE`, `AWS_PROFILE`, `AWS_REGION` and `AWS_ENDPOINT_URL_S3`, and
//! aws-config reads all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextMut,
    FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{
    ConfigBag, Intercept, RequestChecksumCalculation, ResponseChecksumValidation,
    RuntimeComponents, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::BoxError;
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use super::progress::Progress;
use crate::tls::{CaBundle, describe as describe_trust};

use p3_contract::env::S3_PATH_STYLE as PATH_STYLE_ENV;

/// Connection options from the command line.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `--endpoint-url` (overrides `AWS_ENDPOINT_URL_S3`).
    pub endpoint_url: Option<String>,
    /// `--region` (overrides `AWS_REGION` and the profile).
    pub region: Option<String>,
    /// `--path-style`, or `P3_S3_PATH_STYLE=true`.
    pub path_style: bool,
    /// Attempts per request, including the first.
    pub max_attempts: u32,
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time without a byte from the server: until the response starts, and between bytes
    /// of a response or request body.
    pub read_timeout: Duration,
    /// The CA bundle to trust instead of the system store (see [`crate::tls`]).
    pub ca_bundle: Option<CaBundle>,
}

/// The client and what error messages say about it.
pub struct Built {
    /// The S3 client.
    pub client: aws_sdk_s3::Client,
    /// The endpoint in use.
    pub endpoint: String,
    /// The CAs trusted (for certificate errors).
    pub trust: Option<CaBundle>,
}

/// Build the client. Fails only on an unreadable CA bundle.
pub async fn build(opts: &ClientOptions, progress: Arc<Progress>) -> Result<Built, String> {
    // Only the job's own sources: flags, environment, and the profile files prepare wrote.
    // Never instance metadata: on a cloud runner host that would hand a job without a grant
    // the host's own role (and it fills the job log with IMDS warnings when absent).
    let region = RegionProviderChain::first_try(opts.region.clone().map(Region::new))
        .or_else(aws_config::environment::region::EnvironmentVariableRegionProvider::new())
        .or_else(aws_config::profile::ProfileFileRegionProvider::new())
        // S3-compatible stores accept any region; us-east-1 is what the AWS CLI assumes too.
        .or_else(Region::from_static("us-east-1"));
    let credentials = aws_config::meta::credentials::CredentialsProviderChain::first_try(
        "Environment",
        aws_config::environment::credentials::EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        aws_config::profile::ProfileFileCredentialsProvider::builder().build(),
    );
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        // Standard mode retries throttling, 5xx and I/O errors with jittered exponential
        // backoff; a short first backoff keeps a wrong endpoint from hanging for long.
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(opts.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(10)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(opts.connect_timeout)
                .read_timeout(opts.read_timeout)
                .build(),
        )
        // A response or request body that moves no byte for the read timeout fails (and is
        // retried) instead of hanging.
        .stalled_stream_protection(
            StalledStreamProtectionConfig::enabled()
                .grace_period(opts.read_timeout)
                .build(),
        )
        .http_client(https_client(opts.ca_bundle.as_ref())?)
        // We compute our own checksums (CRC32 for parts, Content-MD5 for single PUTs) and
        // send them as plain headers. The SDK's default (aws-chunked bodies with trailing
        // checksums) is not understood by several S3-compatible servers.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let endpoint = opts
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|e| !e.is_empty());
    let path_style = opts.path_style
        || env_true(PATH_STYLE_ENV)
        || endpoint.as_deref().is_some_and(host_needs_path_style);
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(path_style)
        .interceptor(RetryLog {
            max_attempts: opts.max_attempts.max(1),
            progress,
        })
        .build();
    let described = endpoint.unwrap_or_else(|| "(AWS default endpoint)".into());
    Ok(Built {
        client: aws_sdk_s3::Client::from_conf(config),
        endpoint: described,
        trust: opts.ca_bundle.clone(),
    })
}

/// The HTTPS client: rustls trusting `bundle` alone when one is given (as the AWS CLI's
/// `--ca-bundle` does), else the system store (which honours `SSL_CERT_FILE`).
fn https_client(bundle: Option<&CaBundle>) -> Result<aws_sdk_s3::config::SharedHttpClient, String> {
    let store = match bundle {
        Some(b) => tls::TrustStore::empty().with_pem_certificate(crate::tls::load(b)?),
        None => tls::TrustStore::default(),
    };
    let context = tls::TlsContext::builder()
        .with_trust_store(store)
        .build()
        .map_err(|e| format!("cannot use {}: {e}", describe_trust(bundle)))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

/// One request's attempts so far (kept in the request's config bag).
#[derive(Debug, Clone)]
struct Attempts {
    count: u32,
    started: Instant,
    last_error: Option<String>,
    /// `GET http://host/bucket/key` of the last attempt.
    what: String,
}

impl Storable for Attempts {
    type Storer = StoreReplace<Self>;
}

/// The retry error of a request that failed every attempt: names the attempts and the time.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempts in {secs:.1} s, the last: {last}")]
struct GaveUp {
    attempts: u32,
    secs: f64,
    last: String,
}

/// Makes the SDK's retries visible: each retry prints `retry: attempt 2/5 of GET <url>
/// after: read timeout 30 s`, a request that failed every attempt ends with an error naming
/// the attempts and the time, and progress learns what the step is waiting for.
#[derive(Debug)]
struct RetryLog {
    max_attempts: u32,
    progress: Arc<Progress>,
}

impl Intercept for RetryLog {
    fn name(&self) -> &'static str {
        "p3-executor retry log"
    }

    fn read_before_attempt(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let _ = context;
        let mut state = cfg.load::<Attempts>().cloned().unwrap_or(Attempts {
            count: 0,
            started: Instant::now(),
            last_error: None,
            what: String::new(),
        });
        state.count += 1;
        if state.count > 1 {
            self.progress.eprintln(&format!(
                "retry: attempt {}/{} of {} after: {}",
                state.count,
                self.max_attempts,
                state.what,
                state.last_error.as_deref().unwrap_or("an error")
            ));
        }
        cfg.interceptor_state().store_put(state);
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The request is complete here: endpoint resolved, signed.
        let request = context.request();
        let what = format!("{} {}", request.method(), without_query(request.uri()));
        self.progress.request_started(&what);
        if let Some(mut state) = cfg.load::<Attempts>().cloned() {
            state.what = what;
            cfg.interceptor_state().store_put(state);
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.progress.request_ended();
        if let Some(Err(e)) = context.output_or_error()
            && let Some(mut state) = cfg.load::<Attempts>().cloned()
        {
            state.last_error = Some(short_cause(&error_chain(e)));
            cfg.interceptor_state().store_put(state);
        }
        Ok(())
    }

    fn modify_before_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(state) = cfg.load::<Attempts>().cloned() else {
            return Ok(());
        };
        let retried_transport_error = matches!(
            context.output_or_error(),
            Some(Err(e)) if state.count > 1 && !e.is_operation_error()
        );
        if retried_transport_error && let Some(Err(e)) = context.inner_mut().take_output_or_error()
        {
            let gave_up = GaveUp {
                attempts: state.count,
                secs: state.started.elapsed().as_secs_f64(),
                last: short_cause(&error_chain(&e)),
            };
            context
                .inner_mut()
                .set_output_or_error(Err(OrchestratorError::timeout(Box::new(gave_up))));
        }
        Ok(())
    }
}

fn without_query(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The cause of a failed attempt in a few words: `read timeout 30 s`, `connect timeout 10 s`,
/// `connection refused`, or the error's last cause.
pub fn short_cause(chain: &str) -> String {
    let lower = chain.to_ascii_lowercase();
    for (kind, what) in [
        ("http read timeout", "read timeout"),
        ("http connect timeout", "connect timeout"),
    ] {
        if let Some(at) = lower.find(kind) {
            // "HTTP read timeout occurred after 30s"
            let after = &chain[at..];
            let secs = after
                .split("after ")
                .nth(1)
                .map(|d| {
                    d.split([':', ' '])
                        .next()
                        .unwrap_or(d)
                        .trim_end_matches('s')
                })
                .unwrap_or("");
            return if secs.is_empty() {
                what.to_string()
            } else {
                format!("{what} {secs} s")
            };
        }
    }
    if let Some(at) = lower.find("invalid peer certificate") {
        return chain[at..].to_string();
    }
    if crate::tls::is_certificate_error(chain) {
        let last = chain.rsplit(": ").next().unwrap_or(chain);
        return format!("invalid peer certificate: {last}");
    }
    if lower.contains("minimum throughput") {
        return "the transfer stalled (no data for the read timeout)".into();
    }
    if lower.contains("connection refused") {
        return "connection refused".into();
    }
    chain.rsplit(": ").next().unwrap_or(chain).to_string()
}

fn env_true(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Virtual-hosted addressing (`bucket.host`) cannot work for an IP address or `localhost`.
fn host_needs_path_style(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if host_port.starts_with('[') {
        return true; // IPv6 literal
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_for_addresses() {
        assert!(host_needs_path_style("http://127.0.0.1:9000"));
        assert!(host_needs_path_style("http://localhost:9000/"));
        assert!(host_needs_path_style("http://[::1]:9000"));
        assert!(!host_needs_path_style("https://s3.example.com"));
    }
}
