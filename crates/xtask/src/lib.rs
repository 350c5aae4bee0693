//! Man pages and shell completions for the package, generated from the clap definitions so
//! they never drift from `--help`.
//!
//! Users type one command, `p3-executor`. Its runner calls and host tools are parsed by
//! `p3_executor::cli::Cli`; the built-in steps (`s3`, `image`, `p3`, `release`) are passed on
//! untouched to `p3-executor-steps`, whose parser is `p3_steps::cli::StepsCli`. [`command`]
//! joins the two into the command line a user actually has, and the pages and completions
//! are made from it: `p3-executor(1)`, one page per subcommand at every level
//! (`p3-executor-audit-show(1)`, `p3-executor-s3-cp(1)`, ...), and `p3-executor-steps(1)` for
//! the steps binary itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The name users type.
pub const BIN: &str = "p3-executor";

/// The shells completions are made for, and the file each one's completion goes to (the name
/// its Debian directory expects: bash-completion looks the command up by name, zsh wants the
/// function name `_<command>`).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "p3-executor.bash"),
    (Shell::Zsh, "_p3-executor"),
    (Shell::Fish, "p3-executor.fish"),
];

/// `p3-executor`'s full command line: the runner binary's, with each passed-through step
/// replaced by the steps binary's definition of it. The runner's one-line `about` and place of
/// each step are kept, so `p3-executor(1)` lists exactly what `p3-executor --help` does, in the
/// same order. The demo stays a
/// pass-through: its binary is built from the test fixtures and not shipped.
///
/// Panics if a step of `StepsCli` is missing from `Cli` (the two must name the same steps).
#[must_use]
pub fn command() -> Command {
    let steps = p3_steps::cli::StepsCli::command();
    let mut cmd = p3_executor::cli::Cli::command();
    for step in steps.get_subcommands() {
        let step = step.clone();
        let name = step.get_name().to_owned();
        assert!(
            cmd.find_subcommand(&name).is_some(),
            "step `{name}` of p3-executor-steps is not a subcommand of p3-executor"
        );
        cmd = cmd.mut_subcommand(&name, |passthrough| {
            // Where `p3-executor --help` lists it, with the words it uses there.
            let step = step.display_order(passthrough.get_display_order());
            match passthrough.get_about() {
                Some(about) => step.about(about.clone()),
                None => step,
            }
        });
    }
    cmd
}

/// The steps binary on its own (`p3-executor-steps(1)`): the same parser, under its file name.
#[must_use]
pub fn steps_command() -> Command {
    p3_steps::cli::StepsCli::command()
        .name("p3-executor-steps")
        .bin_name("p3-executor-steps")
        .about(
            "Built-in steps of p3-executor (s3, image, p3, release). Jobs call them as \
             `p3-executor <step>`, which runs this binary with the same arguments.",
        )
}

/// The host-side AWS calls' binary on its own (`p3-executor-aws(1)`): what the executor runs
/// for `audit ship|verify --s3|show --s3` and web-identity S3 credentials.
#[must_use]
pub fn aws_command() -> Command {
    p3_aws::cli::AwsCli::command()
        .name("p3-executor-aws")
        .bin_name("p3-executor-aws")
        .about(
            "p3-executor's host-side AWS calls: audit shipping to S3, audit verify and show              across the fleet, STS web identity. Run by p3-executor (`p3-executor audit ship`,              prepare), not by hand.",
        )
}

/// Every subcommand path below `cmd` (`["audit"]`, `["audit", "show"]`, ...), depth first,
/// without clap's `help` and hidden ones: one man page each.
#[must_use]
pub fn subcommand_paths(cmd: &Command) -> Vec<Vec<String>> {
    fn walk(cmd: &Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push(path.clone());
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, &[], &mut out);
    out
}

/// File name of the man page of a subcommand path (`[]` is `p3-executor.1`).
#[must_use]
pub fn man_page_name(path: &[String]) -> String {
    let mut name = BIN.to_owned();
    for part in path {
        name.push('-');
        name.push_str(part);
    }
    format!("{name}.1")
}

/// The build date in `p3-executor --version` (`... built 2026-05-01)`), for the pages' footer.
fn build_date(version: &str) -> String {
    version
        .rsplit_once("built ")
        .map(|(_, date)| date.trim_end_matches(')').to_owned())
        .unwrap_or_default()
}

/// Write every man page into `dir` (created if needed; stale `*.1` files there are removed, so
/// a subcommand that is gone loses its page). Returns the files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    // `&'static` because clap's `Str` takes only static strings without its `string` feature,
    // which this build tool would otherwise switch on for the shipped binaries too.
    let version: &'static str = cmd.get_version().unwrap_or_default().to_owned().leak();
    let source = format!("{BIN} {version}");
    let date = build_date(version);
    let paths = subcommand_paths(&cmd);

    let mut written = Vec::new();
    let mut page = |sub: Command, name: String, see_also: Vec<String>| -> Result<()> {
        let man = clap_mangen::Man::new(sub)
            .title(name.trim_end_matches(".1").to_uppercase())
            .date(date.clone())
            .source(source.clone())
            .manual("p3-executor manual");
        let mut text = Vec::new();
        man.render(&mut text)?;
        if !see_also.is_empty() {
            text.extend_from_slice(b".SH \"SEE ALSO\"\n");
            let last = see_also.len() - 1;
            for (i, other) in see_also.iter().enumerate() {
                let stem = other.trim_end_matches(".1").replace('-', "\\-");
                let sep = if i == last { "" } else { "," };
                text.extend_from_slice(format!(".BR {stem} (1){sep}\n").as_bytes());
            }
        }
        let file = dir.join(&name);
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        written.push(file);
        Ok(())
    };

    // The top page points to every other page; each subcommand's page to its parent, its own
    // subcommands and the top page.
    let mut all: Vec<String> = paths.iter().map(|p| man_page_name(p)).collect();
    all.push("p3-executor-steps.1".into());
    all.push("p3-executor-aws.1".into());
    page(cmd.clone(), man_page_name(&[]), all)?;
    for path in &paths {
        let mut sub = &cmd;
        for part in path {
            sub = sub.find_subcommand(part).expect("path from this command");
        }
        let mut see_also = vec![man_page_name(&[])];
        if path.len() > 1 {
            see_also.push(man_page_name(&path[..path.len() - 1]));
        }
        see_also.extend(
            paths
                .iter()
                .filter(|p| p.len() == path.len() + 1 && p.starts_with(path))
                .map(|p| man_page_name(p)),
        );
        page(sub.clone(), man_page_name(path), see_also)?;
    }

    let mut steps = steps_command()
        .disable_help_subcommand(true)
        .version(version);
    steps.build();
    let step_pages = subcommand_paths(&steps)
        .iter()
        .filter(|p| p.len() == 1)
        .map(|p| man_page_name(p))
        .collect::<Vec<_>>();
    let mut see_also = vec![man_page_name(&[])];
    see_also.extend(step_pages);
    page(steps, "p3-executor-steps.1".into(), see_also)?;

    let mut aws = aws_command().disable_help_subcommand(true).version(version);
    aws.build();
    page(
        aws,
        "p3-executor-aws.1".into(),
        vec![
            man_page_name(&[]),
            man_page_name(&["audit".into(), "ship".into()]),
        ],
    )?;
    Ok(written)
}

/// Write the bash, zsh and fish completions of `p3-executor` into `dir` (created if needed),
/// named as in [`SHELLS`]. Returns the files written.
pub fn write_completions(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = Vec::new();
    for (shell, file_name) in SHELLS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command(), BIN, &mut text);
        if shell == Shell::Bash {
            text = fix_bash_states(&text);
        }
        let file = dir.join(file_name);
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// clap_complete's bash script names the state of `p3-executor audit` two ways when the
/// command's name has a hyphen: the loop that walks the words says `p3__executor__subcmd__audit`,
/// the arms that complete each state say `p3__subcmd__executor__subcmd__audit`, so nothing
/// after the first word completes (clap-rs/clap#6421, open in clap_complete 4.6.12). Spell the
/// arms as the loop does; once clap is fixed this finds nothing to replace.
fn fix_bash_states(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("p3__subcmd__executor", "p3__executor")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner_and_steps_subcommands() -> (Vec<String>, Vec<Vec<String>>) {
        let runner = p3_executor::cli::Cli::command();
        let top = runner
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        let steps = subcommand_paths(&p3_steps::cli::StepsCli::command());
        (top, steps)
    }

    #[test]
    fn the_joined_command_has_every_runner_subcommand_and_every_step_below_it() {
        let cmd = command();
        let paths = subcommand_paths(&cmd);
        let (top, steps) = runner_and_steps_subcommands();
        for name in &top {
            assert!(paths.contains(&vec![name.clone()]), "{name} missing");
        }
        for step in &steps {
            assert!(paths.contains(step), "step {step:?} missing");
        }
        // The steps bring their own levels (`s3 cp`, `audit show` comes from the runner).
        assert!(paths.contains(&vec!["s3".into(), "cp".into()]), "{paths:?}");
        assert!(
            paths.contains(&vec!["audit".into(), "show".into()]),
            "{paths:?}"
        );
        cmd.debug_assert();
    }

    #[test]
    fn the_top_page_lists_the_subcommands_as_help_does() {
        let help = p3_executor::cli::Cli::command().render_help().to_string();
        let in_help: Vec<&str> = help
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| *w != "help")
            .collect();
        let mut cmd = command();
        cmd.build();
        let mut listed: Vec<(usize, String)> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .map(|c| (c.get_display_order(), c.get_name().to_owned()))
            .collect();
        listed.sort();
        let listed: Vec<&str> = listed.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(listed, in_help);
    }

    fn read_aws(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("p3-executor-aws.1")).unwrap()
    }

    #[test]
    fn every_subcommand_has_a_man_page_that_its_parent_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p3-executor-gone.1"), "stale").unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        assert!(
            !dir.path().join("p3-executor-gone.1").exists(),
            "stale page kept"
        );
        let cmd = command();
        let paths = subcommand_paths(&cmd);
        // The top page, one per subcommand, the steps binary's and the AWS binary's.
        assert_eq!(written.len(), paths.len() + 3, "{written:?}");
        assert!(read_aws(dir.path()).contains("audit ship"));
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let top = read("p3-executor.1");
        assert!(top.contains(".TH P3-EXECUTOR 1"), "{top}");
        for path in &paths {
            let page = read(&man_page_name(path));
            assert!(page.contains(".SH NAME"), "{path:?}: {page}");
            let parent = read(&man_page_name(&path[..path.len() - 1]));
            let name = path.last().unwrap();
            assert!(
                parent.contains(name.as_str()),
                "{name} not in its parent's page"
            );
            let stem = man_page_name(path)
                .trim_end_matches(".1")
                .replace('-', "\\-");
            assert!(
                top.contains(&stem),
                "p3-executor(1) does not point to {stem}"
            );
        }
        let steps = read("p3-executor-steps.1");
        for step in ["s3", "image", "p3", "release"] {
            assert!(steps.contains(step), "{step} not in p3-executor-steps(1)");
        }
    }

    #[test]
    fn every_shell_completes_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_completions(dir.path()).unwrap();
        assert_eq!(written.len(), 3);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let (bash, zsh, fish) = (
            read("p3-executor.bash"),
            read("_p3-executor"),
            read("p3-executor.fish"),
        );
        for path in subcommand_paths(&command()) {
            let word = path.last().unwrap();
            // bash: a state per path, entered from its parent and completed by its own arm.
            let state: String = std::iter::once("p3__executor".to_owned())
                .chain(path.iter().map(|p| format!("__subcmd__{p}")))
                .collect();
            assert!(
                bash.contains(&format!("cmd=\"{state}\"")),
                "bash enters no {state}"
            );
            assert!(
                bash.contains(&format!("        {state})")),
                "bash completes no {state}"
            );
            // zsh: the word and its description in its parent's command list.
            assert!(zsh.contains(&format!("'{word}:")), "zsh: {path:?} missing");
            // fish: offered as a word.
            assert!(
                fish.contains(&format!("-a \"{word}\"")),
                "fish: {path:?} missing"
            );
        }
        assert!(bash.contains("complete -F _p3__executor"), "{bash}");
        assert!(zsh.starts_with("#compdef p3-executor"), "{zsh}");
    }

    /// What bash offers for `words` (the last one being completed) with `script` loaded.
    pub(crate) fn bash_complete(script: &Path, words: &[&str]) -> String {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _p3__executor p3-executor '{}' '{}'; \
             echo \"${{COMPREPLY[*]}}\"",
            script.display(),
            quoted.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn bash_completes_subcommands_and_their_options_at_every_level() {
        let dir = tempfile::tempdir().unwrap();
        write_completions(dir.path()).unwrap();
        let script = dir.path().join("p3-executor.bash");
        let top = bash_complete(&script, &["p3-executor", ""]);
        for sub in ["gc", "check", "audit", "s3", "image", "p3", "release"] {
            assert!(top.split(' ').any(|w| w == sub), "{sub} not offered: {top}");
        }
        let audit = bash_complete(&script, &["p3-executor", "audit", ""]);
        assert!(
            audit.contains("show") && audit.contains("verify"),
            "{audit}"
        );
        let show = bash_complete(&script, &["p3-executor", "audit", "show", "--"]);
        assert!(show.contains("--job") && show.contains("--since"), "{show}");
        let gc = bash_complete(&script, &["p3-executor", "gc", "--"]);
        assert!(
            gc.contains("--max-age-secs") && gc.contains("--dry-run"),
            "{gc}"
        );
        // A step's options come from the steps binary's parser.
        let cp = bash_complete(&script, &["p3-executor", "s3", "cp", "--"]);
        assert!(cp.contains("--recursive"), "{cp}");
    }

    #[test]
    fn the_page_footer_carries_the_build_date() {
        assert_eq!(
            build_date("0.1.0 (commit 60aabd6, built 2026-05-01)"),
            "2026-05-01"
        );
        assert_eq!(build_date("0.1.0"), "");
    }
}
