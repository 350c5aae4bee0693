//! Built-in step `release`: create or update the GitLab release of the pipeline's release tag,
//! with the image digests built per devstage and the P3 jobs deployed as notes and links.
//!
//! Idempotent: it creates the release; when GitLab answers 409 (the release exists, e.g. the
//! job was retried) it updates name and notes and brings the links in line. It authenticates
//! with the job token (`JOB-TOKEN` header), which GitLab accepts for the releases API.

mod api;
mod notes;
mod publish;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::api::Api;
use self::notes::{links, notes, parse_dotenv, parse_image_arg};
use self::publish::{Outcome, publish};
use super::context::StepContext;
use super::p3::report::Report;
use super::tag::is_release_tag;

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    /// Image of a devstage, `DEVSTAGE=REF` (repeatable), e.g. `client_prod=reg/app@sha256:...`.
    #[arg(long = "image", value_name = "DEVSTAGE=REF")]
    pub(crate) images: Vec<String>,
    /// A dotenv file written by `image build --push` (repeatable).
    #[arg(long = "dotenv", value_name = "FILE")]
    pub(crate) dotenvs: Vec<PathBuf>,
    /// A report written by `p3 deploy --report` (repeatable).
    #[arg(long = "deploy-report", value_name = "FILE")]
    pub(crate) deploy_reports: Vec<PathBuf>,
    /// Release name (default: the tag).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Text put before the generated notes.
    #[arg(long)]
    pub(crate) notes: Option<String>,
    /// GitLab API URL (default `$CI_API_V4_URL`).
    #[arg(long)]
    pub(crate) api_url: Option<String>,
    /// Project ID or path (default `$CI_PROJECT_ID`).
    #[arg(long)]
    pub(crate) project: Option<String>,
    /// Steps config file (default `$P3_STEPS_CONFIG`).
    #[arg(long)]
    pub(crate) steps_config: Option<PathBuf>,
    /// PEM file of the CAs to trust for the GitLab API instead of the system's (default:
    /// AWS_CA_BUNDLE, the AWS profile's ca_bundle, CI_SERVER_TLS_CA_FILE; SSL_CERT_FILE adds
    /// to the system store).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_bundle: Option<PathBuf>,
    /// Time to connect to GitLab.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::s3::parse_duration, env = "P3_GITLAB_CONNECT_TIMEOUT")]
    pub(crate) connect_timeout: Duration,
    /// Time for one API request, answer included.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = crate::s3::parse_duration, env = "P3_GITLAB_TIMEOUT")]
    pub(crate) timeout: Duration,
}

/// Why the release step failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReleaseError {
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
fn release(ctx: &StepContext, args: &ReleaseArgs) -> Result<Outcome, ReleaseError> {
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
