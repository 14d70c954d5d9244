//! fleet-app: an example distributed program for flotilla.
//!
//! Every node listed in `hosts.yaml` gossips a counter to every other node and serves
//! `/health`, `/metrics`, `/peers` and `/gossip` over HTTP, so a deployment, an update (change
//! `greeting`) and a failure are all visible in its logs, its metrics and its health answer.
//!
//! Run as `fleet-app --hosts=<dir>/hosts.yaml --config=<dir>/config.conf` with the `FLOTILLA_*`
//! environment the agent sets ([`settings`]). SIGHUP rereads the hosts file ([`reload`]): peers
//! added are gossiped with, peers removed are dropped, and a file that cannot be used is logged
//! and changes nothing, so the agent can swap hosts.yaml in place for a membership change
//! (`on_hosts_change: {signal: SIGHUP}`) instead of restarting the node. Exit status: 0 after
//! SIGTERM or SIGINT, 2 for bad arguments, config, hosts or environment, 1 when the node cannot
//! run (e.g. cannot listen).
//!
//! Map: [`settings`] (arguments and environment) reads [`config`] and [`hosts`]; [`app`] binds and
//! starts [`server`] (HTTP endpoints) and [`gossip`] (the loop), which share a [`view::View`] (the
//! membership and every node's counter) and the [`metrics`]; [`reload`] replaces the view's
//! membership on SIGHUP.

mod app;
mod config;
mod error;
mod gossip;
mod hosts;
mod log;
mod metrics;
mod reload;
mod server;
mod settings;
mod view;

use std::process::ExitCode;

use crate::settings::{Invocation, Settings, USAGE, parse_args};

/// Exit status for bad arguments, config, hosts or environment.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let (hosts, config) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Invocation::Run { hosts, config }) => (hosts, config),
        Ok(Invocation::Help) => {
            log::to_stdout(format_args!("{USAGE}"));
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            log::to_stdout(format_args!("fleet-app {}", env!("CARGO_PKG_VERSION")));
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            log::to_stderr(format_args!("fleet-app: {error}\n\n{USAGE}"));
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let settings = match Settings::load(&hosts, &config, |key| std::env::var(key).ok()) {
        Ok(settings) => settings,
        Err(error) => {
            log::to_stderr(format_args!("fleet-app: {error}"));
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            log::to_stderr(format_args!("fleet-app: cannot start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::to_stderr(format_args!("fleet-app: {error}"));
            ExitCode::FAILURE
        }
    }
}
