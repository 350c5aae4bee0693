//! `demo`: drive the four runner calls for one job on an embedded config, and the local
//! runner stand-in (`driver`) that the demo and the end-to-end tests share.

pub mod driver;
pub mod realm;
pub mod tokens;

use anyhow::Context;

use driver::{Host, JobResult};

/// Demo options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the demo's temp tree (config, audit log) and print its path.
    #[arg(long)]
    pub keep: bool,
}

const JOB_SCRIPT: &str = r#"echo "job $CI_JOB_ID runs as uid $(id -u), in $PWD"
cat README
echo "HOME=$HOME TMPDIR=$TMPDIR"
if cat "$P3_EXECUTOR_CONFIG_PROBE" >/dev/null 2>&1; then echo "config readable (isolation off)"; else echo "executor config: not readable by the job"; fi"#;

/// Run the demo; returns the exit code.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locate the p3-executor binary")?;
    let host = Host::new(exe, "");
    println!(
        "p3-executor demo: a local runner stand-in calls config → prepare → run (per stage) → cleanup\n\
         on an embedded config under {}\n",
        host.root().display()
    );
    let mut job = host
        .job(1001, JOB_SCRIPT)
        .var(
            "P3_EXECUTOR_CONFIG_PROBE",
            &host.config.display().to_string(),
        )
        .after("echo after_script: done");
    job.echo = true;
    let result = job.run_all();
    println!();
    let code = match result {
        JobResult::Success => {
            println!("demo job succeeded; its workspace and credentials are gone");
            0
        }
        other => {
            println!("demo job ended with {other:?}");
            1
        }
    };
    if args.keep {
        let kept = host.dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(code)
}
