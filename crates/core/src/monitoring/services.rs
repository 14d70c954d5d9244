//! The monitoring services as manifest entries: node exporter beside every machine's binary,
//! and on the monitoring machine Prometheus with flotilla's configuration, rules and targets.
//!
//! Where each program comes from is the provider's answer ([`MonitoringTools`]): a path every
//! machine has (locally, the programs this host has installed), a distribution package each
//! machine's agent installs (on AWS, Ubuntu's `prometheus` and `prometheus-node-exporter`,
//! verified by apt's signatures), or missing, with the reason and how to get it, in which case
//! the service is left out and the user is told once.
//!
//! Prometheus's files travel as the service's files (its configuration and rules: part of the
//! monitoring machine's version, a change restarts it) and its target files as live files
//! (membership: swapped in place, reread by Prometheus, never a restart). The configuration
//! names the target files relative to itself ([`TARGETS_FROM_CONFIG`]), since only the agent
//! knows where its instance directory is.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_spec::manifest::{Artifact, PackageProgram, ServiceManifest, ServiceProgram};
use flotilla_spec::{HealthCheck, RestartPolicy, RestartSpec};

use super::prometheus::NODE_EXPORTER_PORT;

/// The port Prometheus serves on, on the monitoring machine.
pub const PROMETHEUS_PORT: u16 = 9090;
/// The services' names, as manifests and `status` show them.
pub const NODE_EXPORTER: &str = "node-exporter";
pub const PROMETHEUS: &str = "prometheus";
/// Prometheus's file names in its service's files.
pub const PROMETHEUS_CONFIG_FILE: &str = "prometheus.yml";
pub const RULES_FILE: &str = "rules.yml";
/// Where the target files are, seen from the configuration: the configuration is in
/// `<instance>/versions/<version>/services/prometheus/`, the live files in
/// `<instance>/live/prometheus/` (see the agent's instance directory).
pub const TARGETS_FROM_CONFIG: &str = "../../../../live/prometheus";
/// How often the monitoring machine's Prometheus scrapes and evaluates rules.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);

/// Where one monitoring program comes from on a provider's machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tool {
    /// The machines have it at this path.
    System(String),
    /// The machines' agents install this distribution package, which gives the program at
    /// `path` (see [`ServiceProgram::Package`]).
    Package { package: String, path: String },
    /// The machines do not have it: why, and how to get it.
    Missing(String),
}

impl Tool {
    /// The service program this tool gives, if any.
    fn program(&self) -> Option<ServiceProgram> {
        match self {
            Tool::System(path) => Some(ServiceProgram::System(path.clone())),
            Tool::Package { package, path } => Some(ServiceProgram::Package(PackageProgram {
                package: package.clone(),
                path: path.clone(),
            })),
            Tool::Missing(_) => None,
        }
    }
}

/// The monitoring programs of a provider's machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitoringTools {
    pub prometheus: Tool,
    pub node_exporter: Tool,
}

impl MonitoringTools {
    /// No program anywhere, for `why`.
    pub fn none(why: &str) -> MonitoringTools {
        MonitoringTools {
            prometheus: Tool::Missing(why.to_owned()),
            node_exporter: Tool::Missing(why.to_owned()),
        }
    }

    /// One line per missing program, for the user.
    pub fn missing(&self) -> Vec<String> {
        [(PROMETHEUS, &self.prometheus), (NODE_EXPORTER, &self.node_exporter)]
            .into_iter()
            .filter_map(|(name, tool)| match tool {
                Tool::Missing(why) => Some(format!("{name} is skipped: {why}")),
                Tool::System(_) | Tool::Package { .. } => None,
            })
            .collect()
    }
}

fn restart() -> RestartSpec {
    RestartSpec {
        policy: RestartPolicy::Always,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
    }
}

/// Node exporter on the machine's own address, when the machines have it.
pub fn node_exporter(tools: &MonitoringTools) -> Option<ServiceManifest> {
    let program = tools.node_exporter.program()?;
    Some(ServiceManifest {
        name: NODE_EXPORTER.to_owned(),
        program,
        args: vec![format!("--web.listen-address={{address}}:{NODE_EXPORTER_PORT}")],
        env: BTreeMap::new(),
        files: BTreeMap::new(),
        live_files: BTreeMap::new(),
        health: HealthCheck::Tcp { port: NODE_EXPORTER_PORT },
        restart: restart(),
    })
}

/// Prometheus on the monitoring machine, with its published configuration and rules
/// (`files`, by [`PROMETHEUS_CONFIG_FILE`] and [`RULES_FILE`]) and target files (`targets`,
/// by file name), when the machines have it.
pub fn prometheus(
    tools: &MonitoringTools,
    files: BTreeMap<String, Artifact>,
    targets: BTreeMap<String, Artifact>,
) -> Option<ServiceManifest> {
    let program = tools.prometheus.program()?;
    Some(ServiceManifest {
        name: PROMETHEUS.to_owned(),
        program,
        args: vec![
            format!("--config.file={{files}}/{PROMETHEUS_CONFIG_FILE}"),
            "--storage.tsdb.path={data}/tsdb".to_owned(),
            format!("--web.listen-address={{address}}:{PROMETHEUS_PORT}"),
        ],
        env: BTreeMap::new(),
        files,
        live_files: targets,
        health: HealthCheck::Http { port: PROMETHEUS_PORT, path: "/-/ready".to_owned() },
        restart: restart(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_leave_their_services_out_and_say_why() {
        let tools = MonitoringTools {
            prometheus: Tool::Missing("install it with apt-get install prometheus".into()),
            node_exporter: Tool::System("/usr/bin/prometheus-node-exporter".into()),
        };
        assert!(prometheus(&tools, BTreeMap::new(), BTreeMap::new()).is_none());
        let exporter = node_exporter(&tools).expect("node exporter is there");
        assert_eq!(exporter.args, ["--web.listen-address={address}:9100"]);
        assert_eq!(
            tools.missing(),
            ["prometheus is skipped: install it with apt-get install prometheus"]
        );
        assert!(MonitoringTools::none("no tools here").missing().len() == 2);
    }

    #[test]
    fn a_package_tool_makes_a_package_program() {
        let tools = MonitoringTools {
            prometheus: Tool::Package {
                package: "prometheus".into(),
                path: "/usr/bin/prometheus".into(),
            },
            node_exporter: Tool::Missing("none here".into()),
        };
        let prometheus = prometheus(&tools, BTreeMap::new(), BTreeMap::new()).expect("prometheus");
        assert_eq!(
            prometheus.program,
            ServiceProgram::Package(PackageProgram {
                package: "prometheus".into(),
                path: "/usr/bin/prometheus".into()
            })
        );
        assert!(node_exporter(&tools).is_none());
        assert_eq!(tools.missing(), ["node-exporter is skipped: none here"]);
    }
}
