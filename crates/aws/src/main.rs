//! `p3-executor-aws`: the audit trail in S3 and STS web identity, for `p3-executor`.

use std::process::ExitCode;

use clap::Parser;

use p3_aws::cli::{AwsCli, AwsCommand};
use p3_executor::config::{Config, LogConfig};
use p3_executor::error::{ExitCodes, kind_of};
use p3_executor::logging;

fn main() -> ExitCode {
    let cli = AwsCli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("p3-executor: error: {}", p3_contract::exit::describe(&err));
            ExitCodes::from_env().for_kind(kind_of(&err))
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn dispatch(cli: AwsCli) -> anyhow::Result<i32> {
    match cli.command {
        AwsCommand::Audit(cmd) => {
            let cfg = load_config(&cli.config)?;
            p3_aws::fleet::run(&cfg, cmd)
        }
        AwsCommand::Sts(cmd) => {
            logging::init(&LogConfig::default());
            p3_aws::sts::run(cmd)
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load_and_init_logging(path)?)
}
