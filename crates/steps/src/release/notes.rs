//! What the release says (pure): the images per devstage (from `--image` and the dotenv files
//! of `image build`), and the notes and links made of them and the P3 deploy reports.

use std::collections::BTreeMap;

use super::ReleaseError;
use crate::p3::report::Report;

/// A release link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// Name (unique in a release).
    pub(crate) name: String,
    /// URL (unique in a release).
    pub(crate) url: String,
}

/// Parse `DEVSTAGE=REF`.
pub(crate) fn parse_image_arg(arg: &str) -> Result<(String, String), ReleaseError> {
    match arg.split_once('=') {
        Some((d, r)) if !d.is_empty() && !r.is_empty() => Ok((d.into(), r.into())),
        _ => Err(ReleaseError::Usage(format!(
            "--image {arg:?} must be DEVSTAGE=REF"
        ))),
    }
}

/// Read `P3_IMAGE` and `P3_IMAGE_DEVSTAGE` from a dotenv written by `image build`.
pub(crate) fn parse_dotenv(text: &str) -> Option<(String, String)> {
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
pub(crate) fn notes(
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
pub(crate) fn links(images: &BTreeMap<String, String>) -> Vec<Link> {
    images
        .iter()
        .map(|(devstage, image)| Link {
            name: format!("Image {devstage}"),
            url: format!("https://{image}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p3::report::ReportJob;

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
}
