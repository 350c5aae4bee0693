//! What a build runs, decided before anything runs (pure): the builder argv of each call in
//! its kind's dialect, the argv as the log shows it (build-arg values masked), the registry
//! auth file, the pushed digest and the dotenv later jobs receive.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use p3_contract::template::quote_argv;
use p3_contract::terminal::escape;

use super::builder::BuilderKind;
use crate::context::Secret;
use crate::tag::ImageName;

/// Everything one build (and push) needs, decided before anything runs.
#[derive(Debug, Clone)]
pub(crate) struct BuildPlan {
    /// Builder kind.
    pub(crate) kind: BuilderKind,
    /// Global builder options.
    pub(crate) global: Vec<String>,
    /// Extra build options.
    pub(crate) build_options: Vec<String>,
    /// Extra push options.
    pub(crate) push_options: Vec<String>,
    /// Containerfile.
    pub(crate) file: PathBuf,
    /// Context directory.
    pub(crate) context: PathBuf,
    /// `KEY=VALUE` build args.
    pub(crate) build_args: Vec<String>,
    /// Target stage.
    pub(crate) target: Option<String>,
    /// Image name.
    pub(crate) name: ImageName,
    /// Labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// Push destination, if pushing.
    pub(crate) push_to: Option<String>,
    /// Where the builder writes the pushed digest.
    pub(crate) digest_file: PathBuf,
    /// Registry auth file (buildah/podman `--authfile`; docker/kaniko `DOCKER_CONFIG` dir).
    pub(crate) auth_file: Option<PathBuf>,
}

/// The argv lists (without the program) the plan runs, in order. Kaniko builds and pushes in
/// one call; docker needs an extra `inspect` to learn the digest (run separately).
pub(crate) fn commands(plan: &BuildPlan) -> Vec<Vec<String>> {
    let reference = plan.name.reference();
    let mut common = Vec::new();
    for (k, v) in &plan.labels {
        common.push(format!("--label={k}={v}"));
    }
    for a in &plan.build_args {
        common.push(format!("--build-arg={a}"));
    }
    if let Some(t) = &plan.target {
        common.push(format!("--target={t}"));
    }
    let file = plan.file.display().to_string();
    let context = plan.context.display().to_string();
    // buildah, podman and docker share the `build --file --tag ... <context>` form.
    let cli_build = || {
        let mut build = plan.global.clone();
        build.extend([
            "build".into(),
            format!("--file={file}"),
            format!("--tag={reference}"),
        ]);
        build.extend(common.iter().cloned());
        build.extend(plan.build_options.iter().cloned());
        build.push(context.clone());
        build
    };
    match plan.kind {
        BuilderKind::Buildah | BuilderKind::Podman => {
            let mut build = cli_build();
            if let Some(auth) = &plan.auth_file {
                // The job's registry credentials for the build's pulls too (a FROM in the
                // project's registry); the file names that registry only, so no other gets them.
                build.insert(build.len() - 1, format!("--authfile={}", auth.display()));
            }
            let mut cmds = vec![build];
            if let Some(dest) = &plan.push_to {
                let mut push = plan.global.clone();
                push.extend([
                    "push".into(),
                    format!("--digestfile={}", plan.digest_file.display()),
                ]);
                if let Some(auth) = &plan.auth_file {
                    push.push(format!("--authfile={}", auth.display()));
                }
                push.extend(plan.push_options.iter().cloned());
                push.extend([reference, dest.clone()]);
                cmds.push(push);
            }
            cmds
        }
        BuilderKind::Docker => {
            let mut cmds = vec![cli_build()];
            if plan.push_to.is_some() {
                let mut push = plan.global.clone();
                push.push("push".into());
                push.extend(plan.push_options.iter().cloned());
                push.push(reference);
                cmds.push(push);
            }
            cmds
        }
        BuilderKind::Kaniko => {
            let mut build = plan.global.clone();
            build.extend([
                format!("--dockerfile={file}"),
                format!("--context=dir://{context}"),
                format!(
                    "--destination={}",
                    plan.push_to.as_deref().unwrap_or(&reference)
                ),
            ]);
            build.extend(common);
            build.extend(plan.build_options.iter().cloned());
            if plan.push_to.is_some() {
                build.push(format!("--digest-file={}", plan.digest_file.display()));
                build.extend(plan.push_options.iter().cloned());
            } else {
                build.push("--no-push".into());
            }
            vec![build]
        }
    }
}

/// The argv as printed in the log: build-arg values are masked (they may carry tokens), and
/// each argument is escaped for the terminal before it is quoted.
pub(crate) fn printable(argv: &[String]) -> String {
    let masked: Vec<String> = argv
        .iter()
        .map(|a| match a.strip_prefix("--build-arg=") {
            Some(kv) => format!(
                "--build-arg={}=***",
                kv.split('=').next().unwrap_or_default()
            ),
            None => a.clone(),
        })
        // One line on the terminal whatever a path or label holds.
        .map(|a| escape(&a).into_owned())
        .collect();
    quote_argv(&masked)
}

/// Registry auth file content (`{"auths": {host: {"auth": base64(user:password)}}}`), the
/// format buildah, podman, docker and kaniko all read.
pub(crate) fn auth_json(registry: &str, user: &str, password: &Secret) -> String {
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
    serde_json::json!({ "auths": { registry: { "auth": token } } }).to_string()
}

/// A pushed digest as the builder wrote it: `sha256:<64 hex>`.
pub(crate) fn parse_digest(text: &str) -> Option<String> {
    let d = text.trim();
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| d.to_string())
}

/// The dotenv file later jobs receive: the digest-pinned image plus what it was built for.
pub(crate) fn dotenv(name: &ImageName, digest: &str, devstage: &str) -> String {
    format!(
        "P3_IMAGE={}@{digest}\nP3_IMAGE_TAG={}\nP3_IMAGE_DEVSTAGE={devstage}\n",
        name.repository,
        name.reference()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: BuilderKind, push: bool) -> BuildPlan {
        BuildPlan {
            kind,
            global: vec!["--root=/r".into()],
            build_options: vec!["--isolation=chroot".into()],
            push_options: vec![],
            file: "ctx/Dockerfile".into(),
            context: "ctx".into(),
            build_args: vec!["A=1".into()],
            target: Some("final".into()),
            name: ImageName {
                repository: "reg/app".into(),
                tag: "abc-client_dev".into(),
                version: "abc".into(),
                is_release: false,
            },
            labels: [("k".to_string(), "v w".to_string())].into(),
            push_to: push.then(|| "oci:/o:t".to_string()),
            digest_file: "/d".into(),
            auth_file: Some("/a/config.json".into()),
        }
    }

    #[test]
    fn buildah_argv_puts_global_options_first_and_pulls_and_pushes_with_authfile() {
        let cmds = commands(&plan(BuilderKind::Buildah, true));
        assert_eq!(
            cmds[0],
            [
                "--root=/r",
                "build",
                "--file=ctx/Dockerfile",
                "--tag=reg/app:abc-client_dev",
                "--label=k=v w",
                "--build-arg=A=1",
                "--target=final",
                "--isolation=chroot",
                "--authfile=/a/config.json",
                "ctx"
            ]
        );
        assert_eq!(
            cmds[1],
            [
                "--root=/r",
                "push",
                "--digestfile=/d",
                "--authfile=/a/config.json",
                "reg/app:abc-client_dev",
                "oci:/o:t"
            ]
        );
        assert_eq!(commands(&plan(BuilderKind::Podman, false)).len(), 1);
    }

    #[test]
    fn kaniko_builds_and_pushes_in_one_call() {
        let cmds = commands(&plan(BuilderKind::Kaniko, true));
        assert_eq!(cmds.len(), 1);
        assert!(cmds[0].contains(&"--destination=oci:/o:t".to_string()));
        assert!(cmds[0].contains(&"--digest-file=/d".to_string()));
        let no_push = commands(&plan(BuilderKind::Kaniko, false));
        assert!(no_push[0].contains(&"--no-push".to_string()));
    }

    #[test]
    fn printing_masks_build_arg_values_and_auth_is_base64() {
        let line = printable(&["--build-arg=TOKEN=s3cret".into(), "x y".into()]);
        assert_eq!(line, "'--build-arg=TOKEN=***' 'x y'");
        let line = printable(&["--label=a=b\x1b[2J".into(), "--file=c\nd".into()]);
        assert_eq!(line, r"'--label=a=b\x1b[2J' '--file=c\nd'");
        let json = auth_json("reg:5000", "u", &Secret::new("p"));
        assert_eq!(json, r#"{"auths":{"reg:5000":{"auth":"dTpw"}}}"#);
    }

    #[test]
    fn digest_and_dotenv() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse_digest(&format!("{d}\n")), Some(d.clone()));
        assert_eq!(parse_digest("sha256:abc"), None);
        let name = plan(BuilderKind::Buildah, true).name;
        assert_eq!(
            dotenv(&name, &d, "client_dev"),
            format!(
                "P3_IMAGE=reg/app@{d}\nP3_IMAGE_TAG=reg/app:abc-client_dev\nP3_IMAGE_DEVSTAGE=client_dev\n"
            )
        );
    }
}
