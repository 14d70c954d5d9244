//! `flotilla`: a thin main. Parsing and dispatch are in `cli` and `commands`; errors are printed
//! with their causes and mapped to the exit statuses documented in `--help`.

mod cli;
mod commands;
mod env;
mod fleetd;
mod output;
mod progress;
mod providers;
mod simulate;
mod simulate_plot;
mod symbolicate;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (the AWS SDK's, aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = cli::Cli::parse();
    commands::run(cli)
}
