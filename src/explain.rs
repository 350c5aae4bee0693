//! `p3-executor policy explain`: would a job get a devstage, and why (not)? Offline, from the
//! config alone: the claims come from a file (or a directory of files) or from a token verified
//! exactly as `prepare` verifies it. The decision is [`policy::decide`]'s; the rows are the
//! same [`policy::evaluate`] it decides with, all of them instead of the first failure. With
//! `--image`, the image rules prepare applies next ([`crate::images::policy::evaluate`]): a
//! granted devstage whose image is refused is denied, naming the image rule, as prepare does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::identity::{self, Identity, JwksStore};
use crate::policy::{self, Decision, RuleCheck};

/// Exit code: every explained request would be granted.
pub const GRANTED: i32 = 0;
/// Exit code: some request would be denied.
pub const DENIED: i32 = 1;
/// Exit code: the claims, token or arguments are unusable.
pub const INPUT_ERROR: i32 = 2;

/// `policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Would a job with these claims get a devstage? One row per rule, then the decision.
    /// With --request: exit 0 granted, 1 denied; with --all (a report): 0; bad input: 2.
    Explain(ExplainArgs),
}

/// `policy explain` arguments.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["claims", "token"]))]
#[command(group = clap::ArgGroup::new("what").required(true).args(["request", "all"]))]
pub struct ExplainArgs {
    /// JSON claims as GitLab puts them in an ID token; a directory explains every `*.json`
    /// file in it (a policy regression suite).
    #[arg(long, value_name = "FILE|DIR")]
    pub claims: Option<PathBuf>,
    /// An ID token, verified against the JWKS exactly as `prepare` verifies it. `-` reads it
    /// from standard input (a token on the command line is visible to `ps`).
    #[arg(long, value_name = "JWT|-")]
    pub token: Option<String>,
    /// Check the token's `exp`/`nbf` against this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME", requires = "token")]
    pub at: Option<String>,
    /// The devstage requested.
    #[arg(long, value_name = "DEVSTAGE")]
    pub request: Option<String>,
    /// Every devstage of the config.
    #[arg(long)]
    pub all: bool,
    /// The job's `image:` as written in `.gitlab-ci.yml`: would the devstage's image rules
    /// (`images`, `require_digest`, `[images] enabled`) let the job run in it?
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The same as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One request explained.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// Where the claims came from (file, or `token`).
    pub source: String,
    /// The devstage requested.
    pub devstage: String,
    /// Every rule with the claim and its verdict (empty for an unknown devstage).
    pub rules: Vec<RuleCheck>,
    /// `policy::decide`'s answer.
    pub decision: Decision,
    /// The network rules a job granted this devstage gets (None when denied).
    pub network: Option<NetworkRules>,
    /// With `--image`: every image rule and its verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRules>,
}

/// The image rules of one request, as prepare applies them after the devstage's.
#[derive(Debug, Serialize)]
pub struct ImageRules {
    /// The reference as given.
    pub reference: String,
    /// Fully qualified, as the rules match it.
    pub qualified: String,
    /// Every rule in order.
    pub rules: Vec<ImageRule>,
}

/// One image rule and its verdict.
#[derive(Debug, Serialize)]
pub struct ImageRule {
    /// The config key, e.g. `devstages.client_prod.require_digest`.
    pub rule: String,
    /// Whether it holds.
    pub ok: bool,
    /// What matched, or why not.
    pub detail: String,
}

fn image_rules(cfg: &Config, devstage: &str, reference: &str) -> ImageRules {
    let stage = cfg.devstages.contains_key(devstage).then_some(devstage);
    ImageRules {
        reference: reference.to_string(),
        qualified: crate::images::policy::qualify(reference),
        rules: crate::images::policy::evaluate(cfg, stage, reference)
            .into_iter()
            .map(|(rule, verdict)| {
                let ok = verdict.is_ok();
                let detail = verdict.unwrap_or_else(|e| e);
                ImageRule { rule, ok, detail }
            })
            .collect(),
    }
}

/// A devstage's network policy, as `prepare` would apply it (names not resolved yet).
#[derive(Debug, Serialize)]
pub struct NetworkRules {
    /// `devstages.<name>`.
    pub policy: String,
    /// `open` or `allowlist`.
    pub mode: &'static str,
    /// The SHA-256 the grant's audit record names.
    pub sha256: String,
    /// `[ACTION, DESTINATION, FROM]` in order, first match wins; the last row is the mode's.
    pub rules: Vec<[String; 3]>,
}

fn input_error(message: String) -> Error {
    Error::Usage(message)
}

/// The identities to explain, with where each came from.
fn identities(cfg: &Config, args: &ExplainArgs) -> Result<Vec<(String, Identity)>> {
    if let Some(token) = &args.token {
        let token = if token == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), 1 << 20),
                &mut text,
            )
            .map_err(|e| input_error(format!("read the token from standard input: {e}")))?;
            text
        } else {
            token.clone()
        };
        let at = args
            .at
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp().max(0) as u64)
                    .map_err(|e| input_error(format!("--at {t:?} is not an RFC 3339 time: {e}")))
            })
            .transpose()?;
        let identity = identity::verify_token(cfg, token.trim(), &JwksStore::from_config(cfg), at)
            .map_err(|e| input_error(format!("the token does not verify: {e}")))?;
        return Ok(vec![("token".into(), identity)]);
    }
    let path = args
        .claims
        .as_deref()
        .expect("clap requires claims or token");
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| Ok((f.display().to_string(), from_file(f)?)))
        .collect()
}

fn from_file(file: &Path) -> Result<Identity> {
    let bytes = crate::limits::read_bounded(file, 1 << 20, "claims file")?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
        input_error(format!(
            "{} is not a JSON object of claims: {e}",
            file.display()
        ))
    })?;
    identity::identity_from_claims(&claims)
        .map_err(|e| input_error(format!("{}: {e}", file.display())))
}

/// Explain every requested devstage for every identity.
pub fn explain(cfg: &Config, args: &ExplainArgs) -> Result<Vec<Explanation>> {
    let requests: Vec<String> = match &args.request {
        Some(r) => vec![r.clone()],
        None => cfg.devstages.keys().cloned().collect(),
    };
    let mut out = Vec::new();
    for (source, identity) in identities(cfg, args)? {
        for devstage in &requests {
            let rules = cfg
                .devstages
                .get(devstage)
                .map(|stage| policy::evaluate(&identity, devstage, stage))
                .unwrap_or_default();
            let mut decision = policy::decide(&identity, devstage, cfg);
            let image = args.image.as_deref().map(|i| image_rules(cfg, devstage, i));
            // A granted devstage still needs its image allowed (prepare's next check).
            let refused = image
                .as_ref()
                .filter(|_| decision.is_grant())
                .and_then(|img| img.rules.iter().find(|r| !r.ok));
            if let Some(r) = refused {
                decision = Decision::Deny {
                    rule: r.rule.clone(),
                    reason: format!("image denied: {}", r.detail),
                };
            }
            let network = decision.is_grant().then(|| {
                let p = crate::walls::network::policy_for(cfg, Some(devstage));
                NetworkRules {
                    policy: p.name.clone(),
                    mode: p.mode.as_str(),
                    sha256: p.sha256(),
                    rules: p.rows(),
                }
            });
            out.push(Explanation {
                source: source.clone(),
                devstage: devstage.clone(),
                rules,
                decision,
                network,
                image,
            });
        }
    }
    Ok(out)
}

/// The human-readable report: per request, one row per rule, then the decision.
pub fn render(explanations: &[Explanation]) -> String {
    use p3_contract::terminal::{escape, table};
    let mut text = String::new();
    for e in explanations {
        text.push_str(&format!(
            "{} — devstage {}\n",
            escape(&e.source),
            escape(&e.devstage)
        ));
        if !e.rules.is_empty() {
            let rows = e.rules.iter().map(|r| {
                [
                    r.rule.clone(),
                    escape(&r.claim).into_owned(),
                    escape(&r.expected).into_owned(),
                    if r.ok { "✔" } else { "✘" }.to_string(),
                ]
            });
            text.push_str(&table(["RULE", "CLAIM", "REQUIRES", "HOLDS"], rows));
        }
        if let Some(img) = &e.image {
            text.push_str(&format!("image {}:\n", escape(&img.qualified)));
            let rows = img.rules.iter().map(|r| {
                [
                    r.rule.clone(),
                    escape(&r.detail).into_owned(),
                    if r.ok { "✔" } else { "✘" }.to_string(),
                ]
            });
            text.push_str(&table(["RULE", "CHECK", "HOLDS"], rows));
        }
        match &e.decision {
            Decision::Grant {
                deploy_account,
                principal,
                ..
            } => text.push_str(&format!(
                "decision: GRANTED — deploy account {deploy_account}, principal {principal}\n\n"
            )),
            Decision::Deny { rule, reason } => text.push_str(&format!(
                "decision: DENIED — {rule}: {}\n\n",
                escape(reason)
            )),
        }
        if let Some(n) = &e.network {
            // Above the blank line that ends the decision.
            text.pop();
            text.push_str(&format!(
                "network: {} ({}, sha256 {}), first match wins:\n",
                n.policy,
                n.mode,
                &n.sha256[..12]
            ));
            let rows = n
                .rules
                .iter()
                .map(|r| r.clone().map(|c| escape(&c).into_owned()));
            text.push_str(&table(["ACTION", "DESTINATION", "FROM"], rows));
            text.push('\n');
        }
    }
    text
}

/// `p3-executor policy explain`: prints the report; returns the exit code (its own table, as
/// for `check`: input errors are printed here and are [`INPUT_ERROR`]).
pub fn run(cfg: &Config, cmd: PolicyCommand) -> i32 {
    let PolicyCommand::Explain(args) = cmd;
    let explanations = match explain(cfg, &args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("p3-executor policy explain: error: {e}");
            return INPUT_ERROR;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanations).expect("explanations serialize")
        );
    } else {
        print!("{}", render(&explanations));
    }
    if args.all || explanations.iter().all(|e| e.decision.is_grant()) {
        GRANTED
    } else {
        DENIED
    }
}
