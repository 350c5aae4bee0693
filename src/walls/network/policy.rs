//! Which rules a job gets, in order, and the addresses they pin. Pure: the host's resolvers,
//! the GitLab address and name lookups are inputs.
//!
//! Order (first match wins): `[network] deny` → the devstage's (or `[network.plain]`'s) `deny`
//! → in allowlist mode, DNS and the GitLab instance → the devstage's `allow` → the mode's
//! verdict (open: accept; allowlist: refuse).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{Mode, NetworkConfig, StageNetwork};
use super::target::{Host, Net, Ports, Target};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The connection goes through.
    Accept,
    /// Refused: TCP gets a reset (`ECONNREFUSED`), anything else fails to send (`EPERM`).
    Reject,
}

/// One rule as configured (a name is not resolved yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Accept or reject.
    pub action: Action,
    /// The destination.
    pub target: Target,
    /// The config key it comes from, e.g. `network.deny[0]`, `devstages.prod.network.allow[2]`,
    /// `network.resolvers` (DNS) or `identity.gitlab_url`.
    pub source: String,
}

/// A job's network policy: its name, its mode and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `plain` or `devstages.<name>`.
    pub name: String,
    /// What is left after the rules: open accepts, allowlist refuses.
    pub mode: Mode,
    /// In order, first match wins.
    pub rules: Vec<Rule>,
}

/// What allowlist mode always lets through, found on the host at prepare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Always {
    /// The DNS servers (port 53 unless given).
    pub resolvers: Vec<Target>,
    /// The GitLab instance's host and port (clones, artifacts, cache).
    pub gitlab: Option<Target>,
}

impl Policy {
    /// The SHA-256 of the policy's canonical text (mode, then one line per rule): the same for
    /// every job of a devstage while the config says the same, so an audit record names the
    /// exact rules a grant came with.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.canonical().as_bytes()))
    }

    fn canonical(&self) -> String {
        let mut text = format!("mode {}\n", self.mode.as_str());
        for r in &self.rules {
            text.push_str(&format!("{:?} {} {}\n", r.action, r.target, r.source));
        }
        text
    }

    /// One row per rule, then the mode's verdict: `[ACTION, DESTINATION, FROM]`.
    pub fn rows(&self) -> Vec<[String; 3]> {
        let mut rows: Vec<[String; 3]> = self
            .rules
            .iter()
            .map(|r| {
                [
                    match r.action {
                        Action::Accept => "allow",
                        Action::Reject => "refuse",
                    }
                    .to_string(),
                    r.target.to_string(),
                    r.source.clone(),
                ]
            })
            .collect();
        rows.push([
            match self.mode {
                Mode::Open => "allow",
                Mode::Allowlist => "refuse",
            }
            .into(),
            "everything else".into(),
            format!("{}.mode = {}", self.mode_key(), self.mode.as_str()),
        ]);
        rows
    }

    fn mode_key(&self) -> String {
        match self.name.as_str() {
            "plain" => "network.plain".into(),
            name => format!("{name}.network"),
        }
    }
}

/// The policy of a job: `devstage` is the granted devstage's name and its `network` section,
/// None for a plain job.
pub fn for_job(
    net: &NetworkConfig,
    devstage: Option<(&str, Option<&StageNetwork>)>,
    always: &Always,
) -> Policy {
    let empty = StageNetwork::default();
    let (name, key, stage) = match devstage {
        Some((name, stage)) => (
            format!("devstages.{name}"),
            format!("devstages.{name}.network"),
            stage.unwrap_or(&empty),
        ),
        None => ("plain".into(), "network.plain".into(), &net.plain),
    };
    let mode = stage.mode.unwrap_or(net.mode);
    let mut rules = Vec::new();
    let push = |rules: &mut Vec<Rule>, action, targets: &[Target], key: &str| {
        for (i, t) in targets.iter().enumerate() {
            rules.push(Rule {
                action,
                target: t.clone(),
                source: format!("{key}[{i}]"),
            });
        }
    };
    push(&mut rules, Action::Reject, &net.deny, "network.deny");
    push(
        &mut rules,
        Action::Reject,
        &stage.deny,
        &format!("{key}.deny"),
    );
    if mode == Mode::Allowlist {
        for r in &always.resolvers {
            // DNS over UDP and TCP; a resolver given without a port is asked on 53.
            let mut t = r.clone();
            t.ports.get_or_insert(Ports {
                first: 53,
                last: 53,
            });
            rules.push(Rule {
                action: Action::Accept,
                target: t,
                source: "network.resolvers (DNS)".into(),
            });
        }
        if let Some(g) = &always.gitlab {
            rules.push(Rule {
                action: Action::Accept,
                target: g.clone(),
                source: "identity.gitlab_url".into(),
            });
        }
        push(
            &mut rules,
            Action::Accept,
            &stage.allow,
            &format!("{key}.allow"),
        );
    }
    Policy { name, mode, rules }
}

/// The host and port of a GitLab URL (`https://gitlab.example.com` → `gitlab.example.com:443`).
pub fn gitlab_target(url: &str) -> Option<Target> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    // Without a port (`host`, `[v6]`) the scheme's.
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:{default_port}")
    } else {
        authority.to_string()
    };
    with_port.parse().ok()
}

/// The DNS servers of a `resolv.conf` (its `nameserver` lines; a zone index is dropped).
pub fn resolvers_from_resolv_conf(text: &str) -> Vec<Target> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .map(|a| Target {
            host: Host::Net(Net::host(a)),
            ports: None,
        })
        .collect()
}

/// A rule with its addresses pinned: what the job's chain is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// Accept or reject.
    pub action: Action,
    /// The addresses (a name's as resolved at prepare); never empty.
    pub nets: Vec<Net>,
    /// Destination ports, if the entry names any.
    pub ports: Option<Ports>,
    /// The config key the rule comes from.
    pub source: String,
    /// The entry as written.
    pub target: String,
}

/// Pin every name of `policy` with `lookup` (addresses of a host name).
///
/// A name in a refusing rule that does not resolve is an error: the job would run without a
/// refusal it was promised. One in an allowing rule only narrows what the job reaches, so it is
/// left out with a warning (returned, for the job log).
pub fn pin(
    policy: &Policy,
    mut lookup: impl FnMut(&str) -> Result<Vec<IpAddr>, String>,
) -> Result<(Vec<Pinned>, Vec<String>), String> {
    let mut pinned = Vec::new();
    let mut warnings = Vec::new();
    for rule in &policy.rules {
        let nets = match &rule.target.host {
            Host::Net(n) => vec![*n],
            Host::Name(name) => match lookup(name) {
                Ok(addrs) if !addrs.is_empty() => {
                    let mut nets: Vec<Net> = addrs.into_iter().map(Net::host).collect();
                    nets.sort();
                    nets.dedup();
                    nets
                }
                outcome => {
                    let why = outcome.err().unwrap_or_else(|| "no addresses".into());
                    if rule.action == Action::Reject {
                        return Err(format!(
                            "{} = {:?} does not resolve ({why}), so the job cannot be refused it",
                            rule.source,
                            rule.target.to_string()
                        ));
                    }
                    warnings.push(format!(
                        "{} = {:?} does not resolve ({why}): the job cannot reach it",
                        rule.source,
                        rule.target.to_string()
                    ));
                    continue;
                }
            },
        };
        pinned.push(Pinned {
            action: rule.action,
            nets,
            ports: rule.target.ports,
            source: rule.source.clone(),
            target: rule.target.to_string(),
        });
    }
    Ok((pinned, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn cfg(toml_text: &str) -> NetworkConfig {
        toml::from_str(toml_text).unwrap()
    }

    /// The job's devstage (and its section), the mode it gets, its rules.
    type Case<'a> = (
        Option<(&'a str, Option<&'a StageNetwork>)>,
        Mode,
        Vec<(Action, String, String)>,
    );

    fn actions(p: &Policy) -> Vec<(Action, String, String)> {
        p.rules
            .iter()
            .map(|r| (r.action, r.target.to_string(), r.source.clone()))
            .collect()
    }

    #[test]
    fn rules_come_in_order_and_name_their_key() {
        use Action::*;
        let net = cfg(r#"
            mode = "allowlist"
            deny = ["169.254.169.254"]
            [plain]
            mode = "open"
            deny = ["10.9.0.0/16"]
        "#);
        let stage = StageNetwork {
            mode: None,
            allow: vec![t("10.20.0.0/16"), t("p3-api.example.com:443")],
            deny: vec![t("10.20.9.9")],
        };
        let always = Always {
            resolvers: vec![t("10.0.0.2")],
            gitlab: Some(t("gitlab.example.com:443")),
        };
        let s = |x: &str| x.to_string();
        let table: Vec<Case> = vec![
            (
                Some(("dev", Some(&stage))),
                Mode::Allowlist,
                vec![
                    (Reject, s("169.254.169.254"), s("network.deny[0]")),
                    (Reject, s("10.20.9.9"), s("devstages.dev.network.deny[0]")),
                    (Accept, s("10.0.0.2:53"), s("network.resolvers (DNS)")),
                    (
                        Accept,
                        s("gitlab.example.com:443"),
                        s("identity.gitlab_url"),
                    ),
                    (
                        Accept,
                        s("10.20.0.0/16"),
                        s("devstages.dev.network.allow[0]"),
                    ),
                    (
                        Accept,
                        s("p3-api.example.com:443"),
                        s("devstages.dev.network.allow[1]"),
                    ),
                ],
            ),
            // Plain jobs: their own mode (open), so no always-allowed entries are needed.
            (
                None,
                Mode::Open,
                vec![
                    (Reject, s("169.254.169.254"), s("network.deny[0]")),
                    (Reject, s("10.9.0.0/16"), s("network.plain.deny[0]")),
                ],
            ),
            // A devstage without a network section: the global mode, the global deny only.
            (
                Some(("bare", None)),
                Mode::Allowlist,
                vec![
                    (Reject, s("169.254.169.254"), s("network.deny[0]")),
                    (Accept, s("10.0.0.2:53"), s("network.resolvers (DNS)")),
                    (
                        Accept,
                        s("gitlab.example.com:443"),
                        s("identity.gitlab_url"),
                    ),
                ],
            ),
        ];
        for (stage, mode, want) in table {
            let p = for_job(&net, stage, &always);
            assert_eq!(p.mode, mode, "{}", p.name);
            assert_eq!(actions(&p), want, "{}", p.name);
        }
    }

    #[test]
    fn hash_changes_with_any_rule_and_mode_only() {
        let net = NetworkConfig::default();
        let a = for_job(&net, None, &Always::default());
        assert_eq!(a.sha256(), for_job(&net, None, &Always::default()).sha256());
        let mut b = a.clone();
        b.mode = Mode::Allowlist;
        assert_ne!(a.sha256(), b.sha256());
        let mut c = a.clone();
        c.rules[0].target = t("169.254.169.253");
        assert_ne!(a.sha256(), c.sha256());
        assert_eq!(a.sha256().len(), 64);
    }

    #[test]
    fn default_deny_covers_metadata_and_credential_endpoints() {
        let p = for_job(&NetworkConfig::default(), None, &Always::default());
        let targets: Vec<String> = p.rules.iter().map(|r| r.target.to_string()).collect();
        for must in ["169.254.169.254", "169.254.170.2", "fd00:ec2::254"] {
            assert!(targets.iter().any(|t| t == must), "{must} in {targets:?}");
        }
        assert!(p.rules.iter().all(|r| r.action == Action::Reject));
        assert_eq!(p.mode, Mode::Open);
        assert_eq!(p.rows().last().unwrap()[0], "allow");
    }

    #[test]
    fn gitlab_url_gives_host_and_port() {
        let table = [
            ("https://gitlab.example.com", Some("gitlab.example.com:443")),
            ("http://127.0.0.1:8080/", Some("127.0.0.1:8080")),
            (
                "https://u@git.example.com:8443/x",
                Some("git.example.com:8443"),
            ),
            ("http://[::1]:81", Some("[::1]:81")),
            ("https://[fd00::5]", Some("[fd00::5]:443")),
            ("ftp://x", None),
            ("", None),
        ];
        for (url, want) in table {
            assert_eq!(
                gitlab_target(url).map(|t| t.to_string()).as_deref(),
                want,
                "{url}"
            );
        }
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text =
            "# x\nnameserver 127.0.0.53\nsearch a\nnameserver fe80::1%eth0\nnameserver bogus\n";
        let got: Vec<String> = resolvers_from_resolv_conf(text)
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(got, ["127.0.0.53", "fe80::1"]);
    }

    #[test]
    fn names_are_pinned_and_an_unresolvable_refusal_fails() {
        let net = cfg(r#"
            mode = "allowlist"
            deny = []
        "#);
        let stage = StageNetwork {
            allow: vec![t("api.example.com:443"), t("gone.example.com")],
            deny: vec![],
            mode: None,
        };
        let p = for_job(&net, Some(("dev", Some(&stage))), &Always::default());
        let lookup = |name: &str| match name {
            "api.example.com" => Ok(vec![
                "10.0.0.7".parse().unwrap(),
                "10.0.0.6".parse().unwrap(),
            ]),
            _ => Err("NXDOMAIN".to_string()),
        };
        let (pinned, warnings) = pin(&p, lookup).unwrap();
        assert_eq!(pinned.len(), 1);
        assert_eq!(
            pinned[0]
                .nets
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.6", "10.0.0.7"]
        );
        assert_eq!(
            pinned[0].ports,
            Some(Ports {
                first: 443,
                last: 443
            })
        );
        assert!(warnings[0].contains("gone.example.com") && warnings[0].contains("NXDOMAIN"));

        let refusing = StageNetwork {
            deny: vec![t("gone.example.com")],
            ..StageNetwork::default()
        };
        let p = for_job(&net, Some(("dev", Some(&refusing))), &Always::default());
        let err = pin(&p, lookup).unwrap_err();
        assert!(err.contains("devstages.dev.network.deny[0]"), "{err}");
    }
}
