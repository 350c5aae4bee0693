//! The built-in job steps (`s3`, `image`, `p3`, `release`), as a binary of their own.
//!
//! `p3-executor <step> ...` execs this binary with the same arguments, so users only ever type
//! `p3-executor`. Steps run inside the job as the job user; they need no executor config.

use std::process::ExitCode;

use clap::Parser;

use p3_contract::exit::{ExitCodes, kind_of};
use p3_contract::logging::{self, LogConfig};
use p3_steps::cli::{Step, StepsCli};

fn main() -> ExitCode {
    let cli = StepsCli::parse();
    logging::init(&LogConfig::default());
    let result = match cli.step {
        Step::S3(args) => p3_steps::s3::run(args),
        Step::Image(cmd) => p3_steps::image::run(cmd),
        Step::P3(cmd) => p3_steps::p3::run(cmd),
        Step::Release(args) => p3_steps::release::run(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("p3-executor: error: {}", p3_contract::exit::describe(&err));
            ExitCodes::from_env().for_kind(kind_of(&err))
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
