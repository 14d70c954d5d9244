//! Prometheus's configuration and its targets, as typed values rendered by pure functions.
//!
//! Three scrape jobs, one per kind of target on every machine: the user's binary
//! ([`Job::Binary`], its metrics port, 9090 by the deployer's convention; only machines that run
//! one), the flotilla agent ([`Job::Agent`], 9101) and node exporter ([`Job::NodeExporter`],
//! 9100). Each job reads its targets from a file of its own (Prometheus's file-based service
//! discovery, JSON) under a targets directory: a machine that comes or goes, or a new version,
//! is a rewrite of those files, which Prometheus notices and rereads without a restart; the
//! configuration ([`render_prometheus_config`]) only changes with the deployment's settings.
//!
//! Every target carries the labels `deployment`, `name`, `region`, `instance_type`, `market`
//! and `version` ([`TARGET_LABELS`]; `version` is `none` before a machine's first), so that
//! every series can be told apart and grouped the way Loki's streams are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::MonitoredMachine;

/// The port the user's binary serves its metrics on (the commonware deployer scrapes 9090).
pub const BINARY_METRICS_PORT: u16 = 9090;
/// Node exporter's port.
pub const NODE_EXPORTER_PORT: u16 = 9100;
/// How often every target is scraped and rules are evaluated (the deployer's 15 s).
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
/// How often Prometheus rereads the target files even when no change was signalled.
pub const TARGETS_REFRESH: Duration = Duration::from_secs(30);
/// The labels every target carries, in the order they are written.
pub const TARGET_LABELS: [&str; 6] =
    ["deployment", "name", "region", "instance_type", "market", "version"];
/// The `version` label of a machine that runs none yet.
pub const NO_VERSION: &str = "none";

/// A scrape job: one kind of target on every machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    /// The user's binary's metrics.
    Binary,
    /// The flotilla agent's metrics.
    Agent,
    /// Node exporter: the machine's CPU, memory, disks, network.
    NodeExporter,
}

impl Job {
    /// Every job, in the order the configuration lists them.
    pub const ALL: [Job; 3] = [Job::Binary, Job::Agent, Job::NodeExporter];

    /// The `job` label of its series (the alert rules select on it).
    pub fn name(self) -> &'static str {
        match self {
            Job::Binary => "binary",
            Job::Agent => "flotilla_agent",
            Job::NodeExporter => "node",
        }
    }

    /// Its target file's name in the targets directory.
    pub fn targets_file(self) -> &'static str {
        match self {
            Job::Binary => "binary.json",
            Job::Agent => "flotilla_agent.json",
            Job::NodeExporter => "node.json",
        }
    }
}

/// The ports the targets listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub binary: u16,
    pub agent: u16,
    pub node_exporter: u16,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            binary: BINARY_METRICS_PORT,
            agent: flotilla_spec::bootstrap::DEFAULT_METRICS_PORT,
            node_exporter: NODE_EXPORTER_PORT,
        }
    }
}

impl Ports {
    /// The port of `job`'s targets.
    pub fn of(self, job: Job) -> u16 {
        match job {
            Job::Binary => self.binary,
            Job::Agent => self.agent,
            Job::NodeExporter => self.node_exporter,
        }
    }
}

/// What the configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusSettings {
    /// The deployment's tag: an external label of everything this Prometheus stores.
    pub deployment: String,
    /// The directory the target files are written to, as Prometheus sees it.
    pub targets_dir: String,
    /// The rule files, as Prometheus sees them.
    pub rule_files: Vec<String>,
    /// How often targets are scraped and rules evaluated.
    pub scrape_interval: Duration,
}

/// `prometheus.yml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrometheusConfig {
    pub global: GlobalConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rule_files: Vec<String>,
    pub scrape_configs: Vec<ScrapeConfig>,
}

/// Its `global` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GlobalConfig {
    /// A Prometheus duration, e.g. `15s`.
    pub scrape_interval: String,
    pub evaluation_interval: String,
    pub external_labels: BTreeMap<String, String>,
}

/// One scrape job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScrapeConfig {
    pub job_name: String,
    pub metrics_path: String,
    pub file_sd_configs: Vec<FileSdConfig>,
}

/// Where a job's targets are read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileSdConfig {
    pub files: Vec<String>,
    pub refresh_interval: String,
}

/// One group of a target file: targets and the labels they carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    /// `HOST:PORT`.
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The configuration for `settings`: the three jobs, each reading its target file.
pub fn prometheus_config(settings: &PrometheusSettings) -> PrometheusConfig {
    let interval = prometheus_duration(settings.scrape_interval);
    let targets_dir = settings.targets_dir.trim_end_matches('/');
    PrometheusConfig {
        global: GlobalConfig {
            scrape_interval: interval.clone(),
            evaluation_interval: interval,
            external_labels: BTreeMap::from([(
                "deployment".to_owned(),
                settings.deployment.clone(),
            )]),
        },
        rule_files: settings.rule_files.clone(),
        scrape_configs: Job::ALL
            .iter()
            .map(|job| ScrapeConfig {
                job_name: job.name().to_owned(),
                metrics_path: "/metrics".to_owned(),
                file_sd_configs: vec![FileSdConfig {
                    files: vec![format!("{targets_dir}/{}", job.targets_file())],
                    refresh_interval: prometheus_duration(TARGETS_REFRESH),
                }],
            })
            .collect(),
    }
}

/// `prometheus.yml`'s text.
pub fn render_prometheus_config(config: &PrometheusConfig) -> String {
    format!(
        "# Written by flotilla; targets are in the files each job names, rewritten as machines come and go.\n{}",
        super::yaml::to_yaml(config)
    )
}

/// `job`'s targets on `machines` of `deployment`: one group per machine, with its labels.
pub fn target_groups(
    deployment: &str,
    job: Job,
    machines: &[MonitoredMachine],
    ports: Ports,
) -> Vec<TargetGroup> {
    machines
        .iter()
        .filter(|machine| job != Job::Binary || machine.runs_binary)
        .map(|machine| TargetGroup {
            targets: vec![SocketAddr::new(machine.address, ports.of(job)).to_string()],
            labels: machine_labels(deployment, machine),
        })
        .collect()
}

/// A target file's text (JSON, as Prometheus's file-based discovery reads it).
pub fn render_targets(groups: &[TargetGroup]) -> String {
    let mut text = serde_json::to_string_pretty(groups).expect("target groups serialize");
    text.push('\n');
    text
}

/// Every job's target file for `machines`: its name in the targets directory and its text.
pub fn targets_files(
    deployment: &str,
    machines: &[MonitoredMachine],
    ports: Ports,
) -> Vec<(&'static str, String)> {
    Job::ALL
        .iter()
        .map(|&job| {
            (job.targets_file(), render_targets(&target_groups(deployment, job, machines, ports)))
        })
        .collect()
}

/// The labels of `machine`'s targets.
fn machine_labels(deployment: &str, machine: &MonitoredMachine) -> BTreeMap<String, String> {
    let version = machine.version.as_deref().unwrap_or(NO_VERSION);
    let values = [
        deployment,
        &machine.name,
        &machine.region,
        &machine.instance_type,
        &machine.market,
        version,
    ];
    TARGET_LABELS
        .iter()
        .zip(values)
        .map(|(name, value)| ((*name).to_owned(), value.to_owned()))
        .collect()
}

/// `duration` as Prometheus writes durations, in the largest unit that keeps it whole:
/// `5m`, `15s`, `1500ms`.
pub fn prometheus_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_millis() != 0 || seconds == 0 {
        format!("{}ms", duration.as_millis().max(1))
    } else if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(
        name: &str,
        address: &str,
        version: Option<&str>,
        runs_binary: bool,
    ) -> MonitoredMachine {
        MonitoredMachine {
            name: name.to_owned(),
            region: "us-east-1".to_owned(),
            instance_type: "c7g.large".to_owned(),
            market: "spot".to_owned(),
            version: version.map(str::to_owned),
            address: address.parse().expect("a test address"),
            runs_binary,
        }
    }

    #[test]
    fn every_job_reads_its_own_target_file() {
        let config = prometheus_config(&PrometheusSettings {
            deployment: "t1".to_owned(),
            targets_dir: "/opt/prometheus/targets/".to_owned(),
            rule_files: vec!["/opt/prometheus/rules/flotilla.yml".to_owned()],
            scrape_interval: DEFAULT_SCRAPE_INTERVAL,
        });
        assert_eq!(config.global.scrape_interval, "15s");
        assert_eq!(config.global.external_labels["deployment"], "t1");
        let jobs: Vec<(&str, &str)> = config
            .scrape_configs
            .iter()
            .map(|job| (job.job_name.as_str(), job.file_sd_configs[0].files[0].as_str()))
            .collect();
        assert_eq!(
            jobs,
            [
                ("binary", "/opt/prometheus/targets/binary.json"),
                ("flotilla_agent", "/opt/prometheus/targets/flotilla_agent.json"),
                ("node", "/opt/prometheus/targets/node.json"),
            ]
        );
        let text = render_prometheus_config(&config);
        assert!(
            text.contains("\nrule_files:\n- \"/opt/prometheus/rules/flotilla.yml\"\n"),
            "{text}"
        );
        assert!(text.contains("- job_name: \"flotilla_agent\"\n"), "{text}");
    }

    #[test]
    fn targets_carry_the_machines_labels_and_only_binaries_are_scraped_as_binaries() {
        let machines = [
            machine("monitoring", "10.0.0.5", None, false),
            machine("node-0", "10.1.0.7", Some("abc123"), true),
            machine("node-1", "fd00::7", Some("abc123"), true),
        ];
        let binaries = target_groups("t1", Job::Binary, &machines, Ports::default());
        assert_eq!(
            binaries.iter().map(|g| g.targets[0].as_str()).collect::<Vec<_>>(),
            ["10.1.0.7:9090", "[fd00::7]:9090"]
        );
        let agents = target_groups("t1", Job::Agent, &machines, Ports::default());
        assert_eq!(agents[0].targets, ["10.0.0.5:9101"]);
        let labels: Vec<(&str, &str)> =
            agents[0].labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            [
                ("deployment", "t1"),
                ("instance_type", "c7g.large"),
                ("market", "spot"),
                ("name", "monitoring"),
                ("region", "us-east-1"),
                ("version", "none"),
            ]
        );
        let files = targets_files("t1", &machines, Ports::default());
        let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["binary.json", "flotilla_agent.json", "node.json"]);
        let node: serde_json::Value = serde_json::from_str(&files[2].1).unwrap();
        assert_eq!(node[2]["targets"][0], "[fd00::7]:9100");
        assert_eq!(node[2]["labels"]["version"], "abc123");
    }

    #[test]
    fn durations_are_written_as_prometheus_reads_them() {
        assert_eq!(prometheus_duration(Duration::from_secs(15)), "15s");
        assert_eq!(prometheus_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(prometheus_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(prometheus_duration(Duration::ZERO), "1ms");
        assert_eq!(prometheus_duration(Duration::from_secs(300)), "5m");
        assert_eq!(prometheus_duration(Duration::from_secs(90)), "90s");
        assert_eq!(prometheus_duration(Duration::from_secs(7200)), "2h");
    }
}
