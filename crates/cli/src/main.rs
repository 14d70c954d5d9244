//! `flotilla`: a thin main. Parsing and dispatch are in `cli` and `commands`; errors are printed
//! with their causes and mapped to the exit statuses documented in `--help`.

mod cli;
mod commands;
mod output;
mod progress;
mod providers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    commands::run(cli)
}
