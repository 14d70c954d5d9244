//! The agent as a process of its own, for the agent's process tests (`tests/process.rs`): runs
//! [`flotilla_agent::run`] as the CLI's `flotilla agent` does, on the bootstrap file given as
//! the only argument.
//!
//! ```text
//! cargo run -p flotilla-agent --example agent_process -- BOOTSTRAP.json
//! ```

#![allow(clippy::print_stderr)] // A command-line entry point reports on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use flotilla_agent::Fetchers;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(bootstrap), None) = (args.next(), args.next()) else {
        eprintln!("usage: agent_process BOOTSTRAP.json");
        return ExitCode::from(2);
    };
    match flotilla_agent::run(&PathBuf::from(bootstrap), Fetchers::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agent_process: {error}");
            ExitCode::FAILURE
        }
    }
}
