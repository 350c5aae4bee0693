//! Create the release, or on 409 update it and bring its links in line, through the gitlab
//! crate's endpoints (plus the update endpoint it lacks); GitLab's errors in words.

use std::borrow::Cow;

use gitlab::api::common::{NameOrId, path_escaped};
use gitlab::api::endpoint_prelude::{BodyError, Endpoint, JsonParams, Method};
use gitlab::api::projects::releases::links::{
    CreateReleaseLink, LinkType, ListReleaseLinks, UpdateReleaseLink,
};
use gitlab::api::projects::releases::{CreateRelease, CreateReleaseAssetLinks};
use gitlab::api::{ApiError, Query};
use serde::Deserialize;

use super::ReleaseError;
use super::api::Api;
use super::notes::Link;

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
pub(crate) enum Outcome {
    /// A new release.
    Created,
    /// An existing release was updated.
    Updated,
}

/// Create or update the release of `tag` on `client`.
pub(crate) fn publish(
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
