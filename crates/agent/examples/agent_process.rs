//! The agent as a process of its own, for the agent's process tests (`tests/process.rs`,
//! `tests/components.rs`): runs [`flotilla_agent::run`] as the CLI's `flotilla agent` does, on
//! the bootstrap file given as the first argument. `-v`, `-vv`, `-vvv` raise the log level as
//! the CLI's do; `--failpoint NAME` arms a failpoint (see [`flotilla_agent::failpoint`]; the
//! examples build with the `failpoints` feature).
//!
//! ```text
//! cargo run -p flotilla-agent --example agent_process -- BOOTSTRAP.json [-v…] [--failpoint NAME]
//! ```

#![allow(clippy::print_stderr)] // A command-line entry point reports on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use flotilla_agent::failpoint::Failpoint;
use flotilla_agent::{Fetchers, LogFilter};

const USAGE: &str = "usage: agent_process BOOTSTRAP.json [-v…] [--failpoint supervisor-panics-on-restart|api-server-panics-on-accept|metrics-server-returns-on-accept]";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut log_filter = LogFilter::default();
    if let Some(index) = args.iter().position(|arg| arg.starts_with("-v")) {
        let flag = args.remove(index);
        if flag.trim_start_matches('-').chars().any(|c| c != 'v') {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        log_filter.verbosity = u8::try_from(flag.len() - 1).unwrap_or(u8::MAX);
    }
    let (bootstrap, failpoints) = match args.as_slice() {
        [bootstrap] => (bootstrap, Vec::new()),
        [bootstrap, flag, name] if flag == "--failpoint" => {
            let failpoint = match name.as_str() {
                "supervisor-panics-on-restart" => Failpoint::SupervisorPanicsOnRestart,
                "api-server-panics-on-accept" => Failpoint::ApiServerPanicsOnAccept,
                "metrics-server-returns-on-accept" => Failpoint::MetricsServerReturnsOnAccept,
                _ => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            };
            (bootstrap, vec![failpoint])
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bootstrap = PathBuf::from(bootstrap);
    match flotilla_agent::run_with_failpoints(
        &bootstrap,
        Fetchers::default(),
        &log_filter,
        &failpoints,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agent_process: {error}");
            ExitCode::FAILURE
        }
    }
}
