//! `flotilla-emulator`: the AWS emulator stack as a command. `up` starts it; see
//! [`flotilla_emulator::up`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_emulator::up::{UpOptions, run};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-emulator",
    version,
    about = "AWS on loopback for flotilla's tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start moto (with flotilla's additions), the booter and per-instance IMDS; print the
    /// environment to use (`export NAME=value` lines on stdout) once ready; run until SIGINT,
    /// SIGTERM or the end of --parent-pid.
    Up(UpArgs),
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// moto's port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The booter's control API port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Latency added to every AWS request, in milliseconds (per scope at run time too).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// How long instances stay pending (per scope at run time too).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pending: Duration,
    /// How long instances stay shutting-down or stopping (per scope at run time too).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    shutting_down: Duration,
    /// How long an EBS attachment stays attaching (per scope at run time too).
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    attach: Duration,
    /// How long an EBS attachment stays detaching (per scope at run time too).
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    detach: Duration,
    /// How long a terminated instance's volumes stay attached (per scope at run time too).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    volume_release: Duration,
    /// Where instances' roots, logs and moto's files go; kept at exit, except the instances'
    /// roots (see --keep-instances). Default: a temporary directory removed at exit.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Stop everything when this process is gone.
    #[arg(long)]
    parent_pid: Option<u32>,
    /// Also write the environment lines to this file, once ready (for background use).
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// A flotilla binary instances may use instead of downloading the agent (FLOTILLA_AGENT_SEED).
    #[arg(long)]
    agent_seed: Option<PathBuf>,
    /// The Python environment with moto (default: $FLOTILLA_EMULATOR_VENV, else
    /// ~/.cache/flotilla/emulator-venv-5.2.5); created on first use.
    #[arg(long)]
    venv: Option<PathBuf>,
    /// /24 loopback blocks for public IPs, 254 addresses each.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    public_ip_blocks: u16,
    /// Time an instance's processes get between SIGTERM and SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    /// Keep the instances' root directories under --state-dir at exit (each holds the agent and
    /// every version its machine ran).
    #[arg(long)]
    keep_instances: bool,
    /// More logging on stderr (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let Command::Up(args) = Cli::parse().command;
    init_tracing(args.verbose);
    let agent_seed = match args.agent_seed.as_deref().map(fs_err::canonicalize).transpose() {
        Ok(seed) => seed,
        Err(error) => {
            tracing::error!("--agent-seed: {error}");
            return ExitCode::from(2);
        }
    };
    let options = UpOptions {
        port: args.port,
        control_port: args.control_port,
        latency: Duration::from_millis(args.latency_ms),
        pending: args.pending,
        shutting_down: args.shutting_down,
        volumes: flotilla_emulator::control::VolumeTiming {
            attach: args.attach,
            detach: args.detach,
            release_after_terminate: args.volume_release,
        },
        state_dir: args.state_dir,
        parent_pid: args.parent_pid,
        env_file: args.env_file,
        agent_seed,
        venv: args.venv,
        public_ip_blocks: args.public_ip_blocks,
        stop_grace: args.stop_grace,
        keep_instances: args.keep_instances,
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", flotilla_core::client::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
