//! The fleet spec: the commonware deployer's config, unchanged, plus flotilla's optional keys.
//!
//! Field order and optionality of the deployer's types follow refs/commonware-deployer.md §1
//! exactly: a config the deployer accepts is accepted here with the same meaning. flotilla's own
//! keys (`provider`, `update`, and per instance `count`, `args`, `env`, `health`, `restart`) are
//! optional and default to what a deployer user would expect.
//!
//! These types are produced by [`crate::parse_fleet_spec`], which decodes a located YAML tree so
//! that every error names its line and column; they derive `JsonSchema` so `flotilla schema` and
//! the committed `schema/fleet.schema.json` come from the same definitions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

/// Which provider runs the fleet. A config without `provider` means `aws`, as the deployer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Each instance is an agent process on its own 127.0.x.y address on this machine.
    Local,
    /// EC2 instances across regions.
    Aws,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Aws => "aws",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fleet spec (the deployer's `Config` plus flotilla's additions).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(title = "flotilla fleet spec")]
pub struct FleetSpec {
    /// Deployment id: names the state directory and tags every resource. `[A-Za-z0-9_-]+`.
    pub tag: String,
    /// The monitoring instance (always created; listed in every host's hosts.yaml).
    pub monitoring: MonitoringSpec,
    /// The binary instances. May be empty.
    pub instances: Vec<InstanceSpec>,
    /// Ports opened to the given CIDRs on binary instances. Required, may be `[]`.
    pub ports: Vec<PortSpec>,
    /// flotilla: where the fleet runs. Absent means `aws`; `--provider` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    /// flotilla: how `update` rolls a new version out.
    #[serde(default)]
    pub update: UpdateSpec,
}

/// The deployer's `MonitoringConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct MonitoringSpec {
    pub instance_type: String,
    /// Root volume size in GiB.
    pub storage_size: i32,
    /// EBS volume type: gp2, gp3, io1, io2, sc1, st1 or standard.
    pub storage_class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_iops: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_throughput: Option<i32>,
    /// Path to a Grafana dashboard JSON, relative to the current directory.
    pub dashboard: String,
}

/// The deployer's `InstanceConfig` plus flotilla's per-instance keys.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct InstanceSpec {
    /// `[A-Za-z0-9_-]+`, unique ignoring case, not `monitoring`.
    pub name: String,
    pub region: String,
    /// Instances with the same group in the same region share one availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone_group: Option<String>,
    pub instance_type: String,
    /// Root volume size in GiB.
    pub storage_size: i32,
    pub storage_class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_iops: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_throughput: Option<i32>,
    /// Path to the binary, relative to the current directory.
    pub binary: String,
    /// Path to the binary's config, relative to the current directory. Lands as `config.conf`.
    pub config: String,
    pub profiling: bool,
    /// flotilla: run this many replicas, named `name-0` … `name-(count-1)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u32>,
    /// flotilla: extra arguments after `--hosts=… --config=…`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// flotilla: extra environment for the binary.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// flotilla: how the agent decides the binary is healthy. Absent means `none`.
    #[serde(default)]
    pub health: HealthCheck,
    /// flotilla: when the agent restarts the binary.
    #[serde(default)]
    pub restart: RestartSpec,
}

/// The deployer's `PortConfig`: one ingress rule on binary instances.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct PortSpec {
    /// IP protocol, passed to EC2 as written (`tcp`, `udp`, …).
    pub protocol: String,
    pub port: u16,
    pub cidr: String,
}

/// How the agent decides that the binary is healthy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthCheck {
    /// `GET http://<ip>:<port><path>` answers 2xx.
    Http {
        port: u16,
        #[serde(default = "default_health_path")]
        path: String,
    },
    /// A TCP connection to `<ip>:<port>` succeeds.
    Tcp { port: u16 },
    /// No check: the binary counts as healthy once it has stayed up for 2 s.
    #[default]
    None,
}

fn default_health_path() -> String {
    "/health".to_owned()
}

/// When the agent restarts the binary after it exits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
}

/// The `restart` key: a policy and its capped exponential backoff (with jitter).
///
/// Written either as a bare policy (`restart: on-failure`) or as a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// First delay before a restart, e.g. `250ms`. Doubles after each quick exit.
    #[serde(with = "crate::duration_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    /// Largest delay between restarts, e.g. `30s`.
    #[serde(with = "crate::duration_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Always,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The top-level `update` key: how a new version rolls out. Mirrors the YAML; use
/// [`UpdateSpec::batch`] for the resolved batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct UpdateSpec {
    /// Instances updated at once (at least 1). Exclusive with `max_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub batch_size: Option<u32>,
    /// Share of the fleet updated at once, as `N%` (1..=100). Default `25%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Percent>,
    /// How long each instance of a batch has to become healthy on the new version. Default `60s`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration_serde::option"
    )]
    #[schemars(with = "Option<String>")]
    pub health_deadline: Option<Duration>,
}

/// A percentage written `N%`, 1..=100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(with = "String")]
pub struct Percent(pub u8);

/// Default health deadline per instance during `update`.
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(60);
/// Default share of the fleet updated at once.
pub const DEFAULT_MAX_UNAVAILABLE: Percent = Percent(25);

impl UpdateSpec {
    /// The resolved batch size.
    pub fn batch(&self) -> BatchSize {
        match (self.batch_size, self.max_unavailable) {
            (Some(n), _) => BatchSize::Count(n),
            (None, Some(p)) => BatchSize::Percent(p.0),
            (None, None) => BatchSize::Percent(DEFAULT_MAX_UNAVAILABLE.0),
        }
    }

    pub fn health_deadline(&self) -> Duration {
        self.health_deadline.unwrap_or(DEFAULT_HEALTH_DEADLINE)
    }
}

/// A batch size: a count or a share of the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    Count(u32),
    /// 1..=100 percent of the instances, rounded down, at least one.
    Percent(u8),
}

impl BatchSize {
    /// The number of instances per batch for a fleet of `total` instances (at least 1).
    pub fn for_total(self, total: usize) -> usize {
        let n = match self {
            BatchSize::Count(n) => n as usize,
            BatchSize::Percent(p) => total * p as usize / 100,
        };
        n.clamp(1, total.max(1))
    }
}

/// One instance after `count` is expanded: what a machine runs.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    /// The machine's name (`name`, or `name-i` with `count`).
    pub name: &'a str,
    /// Index of the entry in `instances` this node comes from.
    pub index: usize,
    pub spec: &'a InstanceSpec,
}

/// Names of the nodes an instance entry expands to.
pub fn node_names(instance: &InstanceSpec) -> Vec<String> {
    match instance.count {
        None => vec![instance.name.clone()],
        Some(n) => (0..n).map(|i| format!("{}-{i}", instance.name)).collect(),
    }
}

impl FleetSpec {
    /// The provider: `override_kind` (from `--provider`) wins, then `provider`, then `aws`.
    pub fn provider_kind(&self, override_kind: Option<ProviderKind>) -> ProviderKind {
        override_kind.or(self.provider).unwrap_or(ProviderKind::Aws)
    }

    /// Every node, in spec order, replicas in index order, with their names.
    pub fn nodes(&self) -> Vec<(String, usize)> {
        self.instances
            .iter()
            .enumerate()
            .flat_map(|(index, instance)| {
                node_names(instance).into_iter().map(move |name| (name, index))
            })
            .collect()
    }

    /// Regions used by the binary instances, sorted and without duplicates.
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = self.instances.iter().map(|i| i.region.clone()).collect();
        regions.sort();
        regions.dedup();
        regions
    }
}

/// Resolves a spec path as the deployer does: relative to the current directory.
pub fn resolve_path(cwd: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) }
}
