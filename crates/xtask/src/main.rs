//! `p3-executor-xtask man|completions <outdir>`: write p3-executor's man pages or its bash,
//! zsh and fish completions, generated from the clap definitions (see the library). Run by
//! packaging/build-deb.sh and scripts/install.sh; the output goes under target/, never into
//! the repository.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Generate p3-executor's man pages and shell completions from its clap definitions.
#[derive(Debug, Parser)]
#[command(name = "p3-executor-xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Man pages: p3-executor.1, one per subcommand, p3-executor-steps.1 (stale *.1 removed).
    Man {
        /// Directory to write them to (created if needed).
        outdir: PathBuf,
    },
    /// Completions: p3-executor.bash, _p3-executor (zsh), p3-executor.fish.
    Completions {
        /// Directory to write them to (created if needed).
        outdir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let written = match Cli::parse().what {
        What::Man { outdir } => p3_xtask::write_man_pages(&outdir)?,
        What::Completions { outdir } => p3_xtask::write_completions(&outdir)?,
    };
    for file in written {
        println!("{}", file.display());
    }
    Ok(())
}
