//! The built-in job steps (`s3`, `image`, `p3`, `release`), as a binary of their own.
//!
//! `p3-executor <step> ...` execs this binary with the same arguments, so users only ever type
//! `p3-executor`: help and usage name that, never this binary's own file name.

use std::process::ExitCode;

use clap::FromArgMatches;

use p3_contract::exit::{ExitCodes, step_code};
use p3_contract::logging::{self, LogConfig};
use p3_steps::cli::{Step, StepsCli};

fn main() -> ExitCode {
    let matches = p3_steps::cli::command().get_matches();
    let cli = StepsCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(&LogConfig {
        // The AWS SDK warns about each missing AWS file once per provider it builds (and
        // repeats itself); the steps name a missing credential themselves.
        // rustls-platform-verifier logs each certificate failure at ERROR on its own; the
        // step's error names it once, with the CAs used.
        level: "warn,aws_config=error,aws_runtime=error,rustls_platform_verifier=off,p3_steps=info,p3_contract=info".into(),
        ..LogConfig::default()
    });
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
            step_code(&err, &ExitCodes::from_env())
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
