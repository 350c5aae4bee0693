//! The built-in job steps (`s3`, `image`, `p3`, `release`), as a binary of their own.
//!
//! `p3-executor <step> ...` execs this binary with the same arguments, so users only ever type
//! `p3-executor`. Steps run inside the job as the job user; they need no executor config.

use std::process::ExitCode;

use clap::Parser;

use p3_executor::cli::{Cli, Command};
use p3_executor::config::LogConfig;
use p3_executor::error::{ExitCodes, kind_of};
use p3_executor::{logging, steps};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&LogConfig::default());
    let result = match cli.command {
        Command::S3(args) => steps::s3::run(args),
        Command::Image(cmd) => steps::image::run(cmd),
        Command::P3(cmd) => steps::p3::run(cmd),
        Command::Release(args) => steps::release::run(args),
        _ => Err(anyhow::anyhow!(
            "p3-executor-steps only runs the built-in steps; use p3-executor for the rest"
        )),
    };
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("p3-executor: error: {err:#}");
            ExitCodes::from_env().for_kind(kind_of(&err))
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
