//! The monitoring machine's configs as typed values, rendered by pure functions (as
//! hosts.yaml is, in `artifacts`): Prometheus's configuration and the file-based service
//! discovery files its targets live in (`prometheus`), flotilla's alert rules (`rules`), and
//! Grafana's datasources, dashboard provider and flotilla's dashboard (`grafana`), and the
//! services that run them as manifest entries (`services`).
//!
//! Nothing here reads a clock or a file: a caller builds the values from the plan and the
//! machines, renders them, and publishes the text. Membership changes rewrite only the target
//! files, which Prometheus rereads by itself; the configuration stays the same, so Prometheus
//! is never restarted for a machine that came or went.

pub mod grafana;
pub mod prometheus;
pub mod rules;
pub mod services;
mod yaml;

use std::net::IpAddr;

/// A machine as monitoring sees it: where it is and the labels its series carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitoredMachine {
    pub name: String,
    pub region: String,
    /// The instance type it runs on (`local` under the local provider).
    pub instance_type: String,
    /// `spot`, `on-demand` (or `local`).
    pub market: String,
    /// The version it runs; `None` before its first.
    pub version: Option<String>,
    /// The address Prometheus scrapes it at (on AWS its private address: scrapes stay inside
    /// the deployment's VPCs).
    pub address: IpAddr,
    /// Whether it runs the user's binary (the monitoring machine runs none).
    pub runs_binary: bool,
}
