//! The `interceptor` binary: daemon and CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use interceptor_daemon::{
    config::Config,
    daemon, redirect,
    telemetry::{self, LogFormat},
};

#[derive(Parser)]
#[command(
    name = "interceptor",
    version,
    about = "Node-level access-governance interceptor for machine identities"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "INTERCEPTOR_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the programs and serve redirected connections.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove the programs a stopped fail-closed daemon left attached.
    Detach {
        #[command(flatten)]
        pins: PinsArg,
    },
    /// Open connections per identity, target and protocol (from the daemon's
    /// admin socket), kernel counters and redirected connections (from the pinned maps).
    Status(interceptor_daemon::status::StatusArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Policy: validate, test a decision, show, diff, schema; apply, history,
    /// rollback on the running daemon.
    Policy {
        #[command(subcommand)]
        command: interceptor_daemon::policy::cli::PolicyCommand,
    },
    /// Audit log: offline verification and the node's public key.
    Audit {
        #[command(subcommand)]
        command: interceptor_daemon::audit::cli::AuditCommand,
    },
    /// Held operations of the running daemon: list, approve, deny (root only).
    Approvals {
        #[command(subcommand)]
        command: interceptor_daemon::approvals::cli::ApprovalsCommand,
    },
    /// Sessions (client connections) as the audit log recorded them.
    Sessions {
        #[command(subcommand)]
        command: interceptor_daemon::audit::review::SessionsCommand,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct PinsArg {
    /// Daemon configuration (its redirect.pin_dir is used).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The bpffs pin directory directly.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

impl PinsArg {
    fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.pin_dir, &self.config) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(c)) => Ok(Config::load(c)?.redirect.pin_dir),
            (None, None) => anyhow::bail!("give --config or --pin-dir"),
        }
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (exit 0 when valid, 2 when not).
    Check { file: PathBuf },
    /// Print an annotated example configuration.
    Example,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("interceptor: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("interceptor: invalid configuration: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = cfg.proxy.threads.resolve(cpus);
            // One thread: the single-threaded scheduler, which skips the
            // multi-threaded one's stealing and poll-time statistics (about
            // 2-3 % of CPU per PostgreSQL transaction at 10 000 tx/s).
            let mut builder = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            };
            let rt = builder
                .enable_all()
                .thread_name("interceptor")
                .build()
                .context("starting the runtime")?;
            rt.block_on(daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { pins } => {
            let dir = pins.pin_dir()?;
            let ids = redirect::pinned_link_ids(&dir);
            let n = redirect::remove_pins(&dir);
            println!("removed {n} pins under {}", dir.display());
            // Unpinned links are released by the kernel a moment later:
            // report detached only once they are.
            if redirect::wait_links_released(&ids, std::time::Duration::from_secs(10)) {
                println!("detached: {} program links released", ids.len());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "the links are unpinned but still exist after 10 s: a process (a running daemon?) still holds them"
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Status(args) => {
            interceptor_daemon::status::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: valid ({} targets, {} cgroup selectors)",
                    file.display(),
                    c.targets.len(),
                    c.redirect.select_cgroups.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", interceptor_daemon::config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => Ok(ExitCode::from(interceptor_daemon::policy::cli::run(
            command,
        ))),
        Command::Audit { command } => {
            Ok(ExitCode::from(interceptor_daemon::audit::cli::run(command)))
        }
        Command::Approvals { command } => Ok(ExitCode::from(
            interceptor_daemon::approvals::cli::run(command),
        )),
        Command::Sessions { command } => {
            let out = interceptor_daemon::audit::review::sessions(command);
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            Ok(ExitCode::from(out.code))
        }
    }
}
