//! Building the S3 client from the AWS default chain plus the step's options.
//!
//! The default chain is what makes the per-job files work: `prepare` writes `AWS_CONFIG_FILE`,
//! `AWS_SHARED_CREDENTIALS_FILE`, `AWS_PROFILE`, `AWS_REGION` and `AWS_ENDPOINT_URL_S3`, and
//! aws-config reads all of them.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};

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
}

/// Build the client; also returns the endpoint in use, for error messages.
pub async fn build(opts: &ClientOptions) -> (aws_sdk_s3::Client, String) {
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
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(120))
                .build(),
        )
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
        .build();
    let described = endpoint.unwrap_or_else(|| "(AWS default endpoint)".into());
    (aws_sdk_s3::Client::from_conf(config), described)
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
