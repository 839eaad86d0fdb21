//! The command line. Every flag here is documented in docs/cli.md (a test checks it).

use crate::error::RunError;
use crate::{hygiene, logging, manifest, plan, runner};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "bootsecrets",
    version,
    about = "Fetch a node's secrets at boot with its cloud instance identity and write them to a tmpfs",
    long_about = "Fetch a node's secrets at boot with its cloud instance identity and write them \
                  atomically, with strict modes and owners, to a tmpfs. Without a command, `run`."
)]
pub struct Cli {
    /// The manifest to read.
    #[arg(
        short,
        long,
        global = true,
        value_name = "PATH",
        env = "BOOTSECRETS_MANIFEST",
        default_value = manifest::DEFAULT_PATH
    )]
    pub manifest: PathBuf,

    /// More detail on stderr: -v adds each attempt and retry, -vv everything.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch every secret in the manifest and write them all, or nothing (the default command).
    Run(RunArgs),
    /// Validate the manifest offline (no network) and print what `run` would write.
    Check,
}

#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Development only: accept an output root that is not on tmpfs or ramfs.
    #[arg(long)]
    pub allow_non_tmpfs: bool,
}

/// Extra verbosity from the environment (`BOOTSECRETS_VERBOSE=1` or `2`), for unit files.
pub const VERBOSE_ENV: &str = "BOOTSECRETS_VERBOSE";

fn env_verbosity() -> u8 {
    std::env::var(VERBOSE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(0)
}

fn check(cli: &Cli) -> ExitCode {
    match plan::load(&cli.manifest) {
        Ok(p) => {
            print!("{}", p.describe());
            println!("manifest {} is valid", cli.manifest.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bootsecrets: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    let result = (|| -> Result<runner::Summary, RunError> {
        hygiene::harden_process().map_err(RunError::Failed)?;
        let p = plan::load(&cli.manifest).map_err(RunError::Invalid)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                RunError::Failed(anyhow::Error::new(e).context("cannot start the async runtime"))
            })?;
        let opts = runner::RunOptions {
            allow_non_tmpfs: args.allow_non_tmpfs,
        };
        rt.block_on(runner::run(&p, &opts))
    })();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{:#}", e.inner());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose.saturating_add(env_verbosity()), cli.quiet);
    match &cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Run(args)) => run(&cli, args),
        None => run(&cli, &RunArgs::default()),
    }
}
