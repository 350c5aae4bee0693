//! `p3-executor demo`: the product's story end to end on this machine, no GitLab needed (see
//! [`p3_testkit::demo`]). Installed only from a checkout (scripts/demo.sh).

use std::process::ExitCode;

use clap::Parser;

/// Run the demo locally: jobs through the four runner calls on an embedded config.
#[derive(Debug, Parser)]
#[command(name = "p3-executor demo")]
struct Cli {
    /// Accepted for symmetry with `p3-executor --config ... demo`; the demo writes its own.
    #[arg(long, global = true, hide = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the demo.
    Demo(p3_testkit::demo::DemoArgs),
}

fn main() -> ExitCode {
    let Command::Demo(args) = Cli::parse().command;
    p3_contract::logging::init(&p3_contract::logging::LogConfig::default());
    match p3_testkit::demo::run(args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!(
                "p3-executor demo: error: {}",
                p3_contract::exit::describe(&err)
            );
            ExitCode::from(2)
        }
    }
}
