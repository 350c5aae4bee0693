//! The resolve step: every problem of a parsed config at once, each naming its key, and the
//! report that gives each its line. Each section checks itself (its `problems`); this file
//! holds the top-level keys and the checks that span sections.

use std::path::Path;

use super::locate::Locator;
use super::{Config, Problem};

impl Config {
    /// Everything wrong with the config that TOML types cannot express, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (key, path) in [
            ("state_root", &self.state_root),
            ("builds_root", &self.builds_root),
        ] {
            if !path.is_absolute() {
                problems.push(Problem::new(
                    key,
                    format!("{path:?} is not an absolute path"),
                ));
            }
        }
        if self.shared_job_uid && self.job_uid_range.is_some() {
            problems.push(Problem::new(
                "job_uid_range",
                "shared_job_uid = true and job_uid_range contradict each other: keep one",
            ));
        }
        if let Some([lo, hi]) = self.job_uid_range
            && (lo < 1000 || hi < lo)
        {
            problems.push(Problem::new(
                "job_uid_range",
                format!("[{lo}, {hi}] must be ascending and above 1000 (system uids)"),
            ));
        }
        if let Err(e) = crate::subid_pool::validate(self) {
            problems.push(Problem::from_text("job_subid_range", &e));
        }
        problems.extend(self.audit.problems());
        problems.extend(self.sandbox.problems());
        let text = |section: &str, texts: Vec<String>| {
            texts
                .into_iter()
                .map(|t| Problem::from_text(section, &t))
                .collect::<Vec<_>>()
        };
        problems.extend(text("limits", self.limits.problems()));
        problems.extend(text("network", self.network.problems()));
        for (name, stage) in &self.devstages {
            problems.extend(stage.problems(name, &self.accounts));
        }
        for (name, account) in &self.accounts {
            problems.extend(account.problems(name, &self.identity));
        }
        if !self.devstages.is_empty() && self.identity.gitlab_url.is_empty() {
            problems.push(Problem::new(
                "identity.gitlab_url",
                "is required when devstages are defined (the ID token's issuer)",
            ));
        }
        // A template typo would otherwise surface only in a deploy job, long after the edit.
        problems.extend(text("steps", self.steps.validate()));
        problems.extend(text("images", self.images.validate()));
        problems
    }
}

/// Where a report's lines say they come from: the file, or (text without a file) nothing.
fn prefix(origin: Option<&Path>, line: Option<usize>) -> String {
    match (origin, line) {
        (Some(path), Some(line)) => format!("{}:{line}: ", path.display()),
        (Some(path), None) => format!("{}: ", path.display()),
        (None, Some(line)) => format!("line {line}: "),
        (None, None) => String::new(),
    }
}

/// `problems` of the config `text`, one line each: `<file>:<line>: <key>: <what is wrong>`
/// (the line of the key, or of its nearest table the file writes; none when the file writes
/// neither).
pub(super) fn report(text: &str, origin: Option<&Path>, problems: &[Problem]) -> String {
    let at = Locator::new(text);
    problems
        .iter()
        // A message of several lines (a regex error drawn with a caret) stays one item.
        .map(|p| {
            let line = prefix(origin, at.line_of(&p.key));
            format!("{line}{p}").replace('\n', "\n    ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TOML or type error (the first one: parsing stops there) in the same form, naming the
/// key when the error points into one.
pub(super) fn report_parse_error(text: &str, origin: Option<&Path>, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return format!("{}{e}", prefix(origin, None));
    };
    let at = Locator::new(text);
    let line = at.line_at(span.start);
    let message = e.message().trim_end();
    let first = match at.key_at(span.start) {
        Some(key) => format!("{}{key}: {message}", prefix(origin, line)),
        None => format!("{}{message}", prefix(origin, line)),
    };
    // toml's own rendering, less the message: "at line 3, column 1" and the text with a caret.
    let full = e.to_string();
    let snippet = full
        .rfind(message)
        .map_or(full.as_str(), |end| &full[..end]);
    let mut out = first;
    for l in snippet.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("\n    ");
        out.push_str(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_line_and_key() {
        // (config text, the report's lines)
        let cases: &[(&str, &[&str])] = &[
            (
                "state_root = \"rel\"\nbuilds_root = \"b\"\n",
                &[
                    "line 1: state_root: \"rel\" is not an absolute path",
                    "line 2: builds_root: \"b\" is not an absolute path",
                ],
            ),
            (
                "shared_job_uid = true\njob_uid_range = [5, 1]\n",
                &[
                    "line 2: job_uid_range: shared_job_uid = true and job_uid_range contradict each other: keep one",
                    "line 2: job_uid_range: [5, 1] must be ascending and above 1000 (system uids)",
                ],
            ),
            (
                "[audit.syslog]\nfacility = \"mail\"\n[audit.s3]\nbucket = \"b/x\"\nbatch_records = 0\nprofile = \"p\"\ncredential_process = [\"x\"]\n",
                &[
                    "line 2: audit.syslog.facility: \"mail\" is not a syslog facility (auth, authpriv, daemon, user, local0 … local7)",
                    "line 4: audit.s3.bucket: \"b/x\" is not a bucket name (the key prefix goes in audit.s3.prefix)",
                    "line 3: audit.s3: profile and credential_process contradict each other: keep one",
                    "line 5: audit.s3.batch_records: must be at least 1",
                ],
            ),
            (
                "[sandbox]\ntmp_size = \"1x\"\nhide = [\"/ok\", \"rel\"]\nscrub_dirs = [\n  \"tmp\",\n]\n",
                &[
                    "line 2: sandbox.tmp_size: \"1x\" is not a size like \"512m\", \"4g\" or \"25%\"",
                    "line 3: sandbox.hide.1: \"rel\" is not an absolute path (sandbox.hide and sandbox.scrub_dirs take absolute paths)",
                    "line 5: sandbox.scrub_dirs.0: \"tmp\" is not an absolute path (sandbox.hide and sandbox.scrub_dirs take absolute paths)",
                ],
            ),
            (
                "[devstages.d]\ndeploy_account = \"nope\"\nprojects = [\"a/[\"]\ntag_pattern = \"(\"\n",
                &[
                    "line 2: devstages.d.deploy_account: \"nope\" names no [accounts.nope] section (known: )",
                    "line 4: devstages.d.tag_pattern: invalid regex \"(\": unclosed group",
                    "line 3: devstages.d.projects.0: invalid glob \"a/[\": error parsing glob 'a/[': unclosed character class; missing ']'",
                    "identity.gitlab_url: is required when devstages are defined (the ID token's issuer)",
                ],
            ),
            (
                "[devstages.d]\ndeploy_account = \"a\"\nprojects = []\n[devstages.d.limits]\ncpu = -1.0\n[accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n[identity]\ngitlab_url = \"https://g\"\n",
                &[
                    "line 5: devstages.d.limits.cpu: -1 must be a number of cores, at least 0.01 (0: no quota)",
                    "line 3: devstages.d.projects: is empty: list the project path globs allowed",
                ],
            ),
            (
                "[accounts.a]\nprincipal = \"p@X\"\nkeytab = \"k\"\n[accounts.a.kerberos]\nrealm = \"Y\"\nkdcs = [\"dc1:0\", \"dc2\", \"dc2\"]\nenctypes = [\"aes\", \"des9\"]\n",
                &[
                    "line 3: accounts.a.keytab: \"k\" is not an absolute path",
                    "line 2: accounts.a.principal: \"p@X\" is in realm \"X\", but accounts.a.kerberos.realm is \"Y\": kinit would ask Y's DCs for a principal of another realm (write the principal as <name>@Y, or leave its realm out)",
                    "line 6: accounts.a.kerberos.kdcs.0: \"dc1:0\": port \"0\" is not a number from 1 to 65535",
                    "line 6: accounts.a.kerberos.kdcs.2: \"dc2\" is listed twice",
                    "line 7: accounts.a.kerberos.enctypes.1: \"des9\" is not an encryption type MIT krb5 knows (AD: \"aes256-cts-hmac-sha1-96\", \"aes128-cts-hmac-sha1-96\")",
                ],
            ),
            (
                "[accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n[accounts.a.kerberos]\nrealm = \"y\"\n[accounts.a.s3]\nweb_identity = { role_arn = \"r\", duration_secs = 1 }\n",
                &[
                    "line 5: accounts.a.kerberos.realm: \"y\" is not a realm name: upper-case letters, digits, '.', '-' and '_' (AD: the domain in upper case, \"Y\")",
                    "line 4: accounts.a.kerberos: no way to find the realm's DCs: list them in kdcs = [\"dc1.example.com\", ...] or set dns_lookup_kdc = true",
                    "line 7: accounts.a.s3.web_identity.role_arn: \"r\" is not a role ARN (e.g. arn:aws:iam::123456789012:role/gitlab-deploy)",
                    "line 7: accounts.a.s3.web_identity.duration_secs: 1 is outside what STS accepts (900..=43200)",
                ],
            ),
            (
                "[network]\ntable = \"1x\"\n[limits]\ncpu = -1.0\ncgroup_parent = \"x\"\n",
                &[
                    "line 4: limits.cpu: -1 must be a number of cores, at least 0.01 (0: no quota)",
                    "line 5: limits.cgroup_parent: \"x\" must be an absolute cgroup path like \"/system.slice/gitlab-runner.service\"",
                    "line 2: network.table: \"1x\" is not an nftables name (a letter, then letters, digits or _, at most 64)",
                ],
            ),
            (
                "[images]\npull_policy = \"sometimes\"\n",
                &[
                    "line 1: images: [images] pull policy \"sometimes\" is not one of [\"always\", \"if-not-present\", \"never\"]",
                    "line 1: images: [images] pull_policy \"sometimes\" is not in allowed_pull_policies",
                ],
            ),
            (
                "[kerberos]\ntimeout = 3\n",
                &[
                    "line 2: kerberos.timeout: unknown field `timeout`, expected one of `kinit`, `kdestroy`, `klist`, `krb5_config`, `timeout_secs`, `renew_threshold_secs`, `lifetime_margin_secs`, `keytab_max_age_days`, `spake`",
                ],
            ),
            (
                "[accounts.a]\nprincipal = 3\n",
                &["line 2: accounts.a.principal: invalid type: integer `3`, expected a string"],
            ),
            (
                "shell = \"bash\n",
                &["line 1: invalid basic string, expected `\"`"],
            ),
            (
                "job_subid_range = [300000, 300100]\n",
                &[
                    "line 1: job_subid_range: [300000, 300100] must be ascending, above 1000 (system ids), below 4294967295 and hold at least 65536 ids (one job's range)",
                ],
            ),
        ];
        for (text, want) in cases {
            let got = Config::parse(text).unwrap_err();
            // Indented lines continue an item (toml's caret under a parse error).
            let items: Vec<_> = got.lines().filter(|l| !l.starts_with("    ")).collect();
            assert_eq!(items, *want, "{text}");
        }
        let err = Config::parse("[kerberos]\ntimeout = 3\n").unwrap_err();
        assert!(err.contains("\n    2 | timeout = 3\n"), "{err}");
    }

    #[test]
    fn a_loaded_file_with_several_mistakes_names_them_all_with_its_path_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "shell = \"bash\"\n[sandbox]\ntmp_size = \"x\"\n[accounts.a]\nprincipal = \"p\"\n\
             keytab = \"k\"\n[audit.syslog]\nfacility = \"mail\"\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(matches!(err, crate::error::Error::Config { .. }), "{err:?}");
        let text = err.to_string();
        let file = path.display();
        for want in [
            format!("\n{file}:3: sandbox.tmp_size: \"x\" is not a size"),
            format!("\n{file}:6: accounts.a.keytab: \"k\" is not an absolute path"),
            format!("\n{file}:8: audit.syslog.facility: \"mail\" is not a syslog facility"),
        ] {
            assert!(text.contains(&want), "{want}\nin\n{text}");
        }
    }
}
