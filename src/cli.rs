//! The command line. Every flag here is documented in docs/cli.md (a test checks it).

use crate::error::RunError;
use crate::{credfile, hygiene, logging, manifest, plan, render, runner};
use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `--version` prints after the name: the version, the commit the binary was built from
/// (`-dirty` when built from a modified checkout, `unknown` without git or
/// `BOOTSECRETS_GIT_COMMIT`; see build.rs), the backends compiled in (cargo features) and the
/// target it was built for.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("BOOTSECRETS_COMMIT"),
    "\nbackends: ",
    env!("BOOTSECRETS_BACKENDS"),
    "\ntarget: ",
    env!("BOOTSECRETS_TARGET"),
);

#[derive(Debug, Parser)]
#[command(
    name = "bootsecrets",
    version = VERSION,
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

    /// Development only: accept a manifest and the files it names when owned by the running
    /// user, and group- or world-writable ones with a warning (default: refused, like sshd's
    /// StrictModes).
    #[arg(long, global = true)]
    pub allow_insecure_permissions: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch every secret in the manifest and write them all, or nothing (the default command).
    Run(RunArgs),
    /// Validate the manifest (no network) and print what `run` would write.
    Check(CheckArgs),
    /// Print the Butane snippet or the Ignition config that installs bootsecrets on a node.
    Render(RenderArgs),
    /// Check, on a node, everything a run needs and say what to fix (never reads a value).
    Doctor(DoctorArgs),
    /// Print the manual page (roff), e.g. `bootsecrets man > /usr/local/share/man/man1/bootsecrets.1`
    /// (on a node, where /usr is read-only: `man -l <(bootsecrets man)`).
    Man,
    /// Print the completion script for a shell, e.g.
    /// `bootsecrets completions bash > /etc/bash_completion.d/bootsecrets`.
    Completions(CompletionsArgs),
    /// Write the systemd units for an install method into a directory (the release builds the
    /// sysext image with it).
    Units(UnitsArgs),
}

#[derive(Debug, Args)]
pub struct UnitsArgs {
    /// Where the binary is: `binary` runs /opt/bin/bootsecrets, `sysext` /usr/bin/bootsecrets.
    #[arg(long, value_enum, default_value = "binary")]
    pub install: render::InstallMethod,
    /// The directory to write bootsecrets.service, bootsecrets-refresh.service and
    /// bootsecrets-refresh.timer into (it must exist).
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderFormat {
    /// A Butane config to copy into your own (`variant`/`version` for the chosen OS).
    Butane,
    /// An Ignition 3.3.0 config, e.g. to merge with `ignition.config.merge` (`local:`).
    Ignition,
    /// A Container Linux Config (Flatcar's `ct` YAML), e.g. for Cluster API's
    /// `ignition.containerLinuxConfig.additionalConfig`.
    Clc,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// What to print.
    #[arg(value_enum)]
    pub format: RenderFormat,
    /// The node's OS.
    #[arg(long, value_enum)]
    pub variant: render::Variant,
    /// How bootsecrets reaches the node: the static binary at /opt/bin, or the systemd-sysext image.
    #[arg(long, value_enum, default_value = "binary")]
    pub install: render::InstallMethod,
    /// `--install binary`: where Ignition downloads the (static) bootsecrets binary from.
    #[arg(long, value_name = "URL")]
    pub binary_url: Option<String>,
    /// `--install binary`: sha512 of that binary (128 hex digits, as `sha512sum` prints), verified by Ignition.
    #[arg(long, value_name = "HEX")]
    pub binary_sha512: Option<String>,
    /// `--install sysext`: where Ignition downloads the sysext image from.
    #[arg(long, value_name = "URL")]
    pub image_url: Option<String>,
    /// `--install sysext`: sha512 of that image (128 hex digits), verified by Ignition.
    #[arg(long, value_name = "HEX")]
    pub image_sha512: Option<String>,
    /// `--install sysext`: the image's architecture.
    #[arg(long, value_enum)]
    pub arch: Option<render::Arch>,
    /// Also install a kubelet.service drop-in that requires bootsecrets (for a kubelet unit you do not own).
    #[arg(long)]
    pub kubelet_dropin: bool,
    /// Also install bootsecrets-refresh.service and enable bootsecrets-refresh.timer (hourly refresh, on_change actions).
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Default, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON (`{"healthy": bool, "checks": [...]}`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also log in with an AppRole secret_id (not wrapped), although the login spends one of its
    /// uses when the role limits them (default: not checked, said so). A wrapped secret_id is
    /// never unwrapped: doctor looks it up instead.
    #[arg(long)]
    pub use_secret_id: bool,
}

#[derive(Debug, Default, Args)]
pub struct CheckArgs {
    /// Validate only what does not depend on this machine, for CI pipelines that build user data:
    /// no user or group looked up, no file the manifest names examined, no environment read,
    /// and the manifest read without the StrictModes checks. The node still checks all of it
    /// at boot.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Development only: accept an output root that is not on tmpfs or ramfs.
    #[arg(long)]
    pub allow_non_tmpfs: bool,
    /// What to do with the on_change commands this run owes: `run` them (a refresh), or `defer`
    /// them to bootsecrets-refresh.service, started without waiting (the boot gate, which must
    /// never wait on a unit ordered after it). bootsecrets.service sets `defer`.
    #[arg(long, value_enum, env = "BOOTSECRETS_ON_CHANGE", default_value = "run")]
    pub on_change: runner::OnChange,
}

/// Extra verbosity from the environment (`BOOTSECRETS_VERBOSE=1` or `2`), for unit files.
pub const VERBOSE_ENV: &str = "BOOTSECRETS_VERBOSE";

fn env_verbosity() -> u8 {
    std::env::var(VERBOSE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(0)
}

fn check(cli: &Cli, args: &CheckArgs) -> ExitCode {
    let loaded = if args.offline {
        crate::settings::set_offline();
        plan::load_offline(&cli.manifest)
    } else {
        plan::load(&cli.manifest)
    };
    match loaded {
        Ok(mut p) => {
            // What only this node can tell: the files the backends read, the on_change
            // programs. An error only where a run would fail now; the rest warned of, with why.
            let (errors, warnings) = if args.offline {
                Default::default()
            } else {
                let skipped = runner::skipped_secrets(&p).into_iter().map(|(i, _)| i);
                p.node_findings(&skipped.collect())
            };
            p.warnings.extend(warnings);
            print!("{}", p.describe());
            if !errors.is_empty() {
                let n = errors.len();
                eprintln!(
                    "bootsecrets: error: manifest {} is valid, but a run on this node would fail: \
                     {n} problem{}:\n  - {}",
                    cli.manifest.display(),
                    if n == 1 { "" } else { "s" },
                    errors.join("\n  - ")
                );
                return ExitCode::from(2);
            }
            if args.offline {
                println!(
                    "manifest {} is valid (offline: users, groups and the files it names are \
                     checked on the node)",
                    cli.manifest.display()
                );
            } else {
                println!("manifest {} is valid", cli.manifest.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bootsecrets: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The manual page's sections clap does not write (roff).
const MAN_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
\fBrun\fR: the set was published or is unchanged (an optional secret's failure is a warning).
\fBcheck\fR: the manifest is valid. \fBdoctor\fR: nothing failed.
.TP
\fB1\fR
A permanent error of a required secret (denied, not found, a JSON key missing), or the output
root or a file could not be written: nothing was published. Also: the secrets were published but
an \fBon_change\fR command failed. \fBdoctor\fR: a check failed.
.TP
\fB2\fR
An invalid command line or manifest.
.TP
\fB3\fR
\fBrun\fR: the deadline passed while the errors were still transient (a metadata service or
backend unreachable, timeouts, 5xx, throttling): nothing was published. The unit restarts it.
.SH FILES
.TP
\fI/etc/bootsecrets/manifest.toml\fR
The manifest: names and references only, never values; owned by root and writable by no one
else.
.TP
\fI/run/bootsecrets\fR
The output root (a tmpfs): each file a link into the published version directory.
.TP
\fI/run/bootsecrets/.status.json\fR
What the last run did: every file with its mode, owner, version and digest (never a value),
every failure and skipped secret.
.TP
\fI/run/credstore\fR
The output root of the credstore layout (systemd credentials).
.SH ENVIRONMENT
.TP
\fBBOOTSECRETS_MANIFEST\fR, \fBBOOTSECRETS_VERBOSE\fR, \fBBOOTSECRETS_ON_CHANGE\fR
As \fB\-\-manifest\fR, \fB\-v\fR (a number) and \fB\-\-on\-change\fR.
.TP
\fBAWS_REGION\fR, \fBAWS_DEFAULT_REGION\fR, \fBAWS_ENDPOINT_URL_SECRETS_MANAGER\fR, \fBAWS_ENDPOINT_URL\fR, \fBAWS_USE_FIPS_ENDPOINT\fR, \fBAWS_EC2_METADATA_SERVICE_ENDPOINT\fR, \fBAWS_EC2_METADATA_SERVICE_ENDPOINT_MODE\fR
An aws backend's region, endpoints and metadata service, when the manifest does not set them.
.TP
\fBVAULT_ADDR\fR
A vault backend's address, when the manifest does not set one. No other \fBVAULT_*\fR variable
is read.
.SH "SEE ALSO"
\fBsystemd.exec\fR(5), \fBsystemd.unit\fR(5), \fBbutane\fR(1); the manifest reference,
docs/manifest.md, and the operator's guide, docs/operations.md, shipped with the release.
"#;

/// The manual page: the command and, as sections of it, every subcommand with its options.
fn man() -> ExitCode {
    use clap::CommandFactory;
    // The page's title line takes the plain version (`--version` has the commit and backends
    // on further lines, which roff would read as commands).
    let cmd = Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .long_version(env!("CARGO_PKG_VERSION"));
    let mut out = Vec::new();
    let result = (|| -> std::io::Result<()> {
        let page = clap_mangen::Man::new(cmd.clone());
        page.render_title(&mut out)?;
        page.render_name_section(&mut out)?;
        page.render_synopsis_section(&mut out)?;
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
        // One page: each subcommand is a section of it below (clap's own subcommand list would
        // name pages such as bootsecrets-run(1), which do not exist).
        for sub in cmd.get_subcommands() {
            let name = format!("bootsecrets {}", sub.get_name());
            let sub = sub.clone().bin_name(name.clone()).display_name(name);
            let page = clap_mangen::Man::new(sub);
            page.render_synopsis_section(&mut out)?;
            page.render_description_section(&mut out)?;
            page.render_options_section(&mut out)?;
        }
        out.extend_from_slice(MAN_SECTIONS.as_bytes());
        page.render_version_section(&mut out)?;
        Ok(())
    })();
    match result.and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootsecrets: error: cannot write the manual page: {e}");
            ExitCode::from(1)
        }
    }
}

fn doctor(cli: &Cli, args: &DoctorArgs) -> ExitCode {
    // Doctor logs in as a run does and holds the same tokens: hardened the same way, first.
    if let Err(e) = hygiene::harden_process() {
        eprintln!("bootsecrets: error: {e:#}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bootsecrets: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = rt.block_on(crate::doctor::run(
        &cli.manifest,
        &crate::doctor::Places::default(),
        crate::doctor::Options {
            use_secret_id: args.use_secret_id,
        },
    ));
    rt.shutdown_background();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("bootsecrets: error: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.human());
    }
    if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn render_cmd(cli: &Cli, args: &RenderArgs) -> ExitCode {
    // Rendered on a workstation or in CI for a node: validated as `check --offline` does, and
    // refused when that refuses it.
    crate::settings::set_offline();
    let result = std::fs::read_to_string(&cli.manifest)
        .with_context(|| format!("cannot read manifest {}", cli.manifest.display()))
        .and_then(|manifest| {
            for w in plan::from_text_offline(&manifest)
                .with_context(|| format!("manifest {} is not valid", cli.manifest.display()))?
                .warnings
            {
                eprintln!("bootsecrets: warning: {w}");
            }
            let (url, sha512) = download(args)?;
            let install = render::Install {
                variant: args.variant,
                method: args.install,
                arch: args.arch.unwrap_or(render::Arch::X86_64),
                binary_url: url,
                binary_sha512: sha512,
                manifest,
                kubelet_dropin: args.kubelet_dropin,
                refresh: args.refresh,
            };
            if let Some(w) = install.image_url_warning() {
                eprintln!("bootsecrets: warning: {w}");
            }
            match args.format {
                RenderFormat::Butane => render::butane(&install),
                RenderFormat::Ignition => render::ignition(&install),
                RenderFormat::Clc => render::clc(&install),
            }
        });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bootsecrets: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The URL and sha512 of what `--install` downloads, from the flags that belong to it.
fn download(args: &RenderArgs) -> anyhow::Result<(String, String)> {
    use render::InstallMethod::{Binary, Sysext};
    let given = |flag: &str, v: &Option<String>| v.as_ref().map(|_| flag.to_string());
    let (wanted, other) = match args.install {
        Binary => (
            (
                &args.binary_url,
                &args.binary_sha512,
                "--binary-url",
                "--binary-sha512",
            ),
            [
                given("--image-url", &args.image_url),
                given("--image-sha512", &args.image_sha512),
                args.arch.map(|_| "--arch".to_string()),
            ],
        ),
        Sysext => (
            (
                &args.image_url,
                &args.image_sha512,
                "--image-url",
                "--image-sha512",
            ),
            [
                given("--binary-url", &args.binary_url),
                given("--binary-sha512", &args.binary_sha512),
                None,
            ],
        ),
    };
    let method = match args.install {
        Binary => "binary",
        Sysext => "sysext",
    };
    if let Some(flag) = other.into_iter().flatten().next() {
        anyhow::bail!("{flag} does not apply to --install {method}");
    }
    let (url, sha, url_flag, sha_flag) = wanted;
    match (url, sha) {
        (Some(u), Some(h)) => Ok((u.clone(), h.clone())),
        _ => anyhow::bail!("--install {method} needs {url_flag} and {sha_flag}"),
    }
}

fn units_cmd(args: &UnitsArgs) -> ExitCode {
    for (name, text) in crate::units::SHIPPED_UNITS {
        let path = args.output_dir.join(name);
        if let Err(e) = std::fs::write(&path, crate::units::for_install(text, args.install)) {
            eprintln!("bootsecrets: error: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
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
            on_change: args.on_change,
        };
        let result = rt.block_on(runner::run(&p, &opts));
        // Without waiting for blocking tasks: a DNS lookup (getaddrinfo on a blocking thread)
        // that the deadline abandoned may still hang, and must not keep the process alive.
        rt.shutdown_background();
        result
    })();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{:#}", e.inner());
            ExitCode::from(e.exit_code())
        }
    }
}

/// `run`'s options when no command is named: their defaults, or the environment's values.
fn run_args_from_env() -> Result<RunArgs, clap::Error> {
    use clap::FromArgMatches;
    let cmd = <RunArgs as Args>::augment_args(clap::Command::new("run"));
    RunArgs::from_arg_matches(&cmd.try_get_matches_from(["run"])?)
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose.saturating_add(env_verbosity()), cli.quiet);
    if cli.allow_insecure_permissions {
        credfile::allow_insecure_permissions();
    }
    match &cli.command {
        Some(Command::Check(args)) => check(&cli, args),
        Some(Command::Render(args)) => render_cmd(&cli, args),
        Some(Command::Doctor(args)) => doctor(&cli, args),
        Some(Command::Man) => man(),
        Some(Command::Completions(args)) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "bootsecrets",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Some(Command::Units(args)) => units_cmd(args),
        Some(Command::Run(args)) => run(&cli, args),
        // The default command is `run` with its options from the environment, as the unit sets
        // them (`ExecStart=/opt/bin/bootsecrets`).
        None => match run_args_from_env() {
            Ok(args) => run(&cli, &args),
            Err(e) => {
                eprintln!("bootsecrets: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
