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
//!
//! The schema describes the YAML, not the Rust values: where the two differ (the `restart`
//! shorthand, `N%`, durations written `30s`) a `schema_with`/`with` attribute gives the YAML
//! shape. Every key carries `x-origin` (`deployer` or `flotilla`), which the generated
//! reference (docs/spec-reference.md) shows; a test checks that the decoder's keys, their
//! required-ness and origin equal the schema's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;

use crate::account::{AccountKeys, IamKeys};
use crate::capacity::{InstanceRequirements, Market};
use crate::duration_serde::DurationText;

/// Which provider runs the fleet. A config without `provider` means `aws`, as the deployer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
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

/// A fleet spec: the commonware deployer's config file, accepted unchanged, plus flotilla's keys.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(title = "flotilla fleet spec")]
pub struct FleetSpec {
    /// Deployment id: names the state directory and tags every resource. Letters, digits, `_` and `-` only, at most 255 characters.
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"), length(max = 255), extend("x-origin" = "deployer"))]
    pub tag: String,
    /// The monitoring instance (always created; listed in every host's hosts.yaml).
    #[schemars(extend("x-origin" = "deployer"))]
    pub monitoring: MonitoringSpec,
    /// The binary instances. May be empty.
    #[schemars(extend("x-origin" = "deployer"))]
    pub instances: Vec<InstanceSpec>,
    /// Ports opened to the given CIDRs on binary instances. Required, may be `[]`.
    #[schemars(extend("x-origin" = "deployer"))]
    pub ports: Vec<PortSpec>,
    /// Where the fleet runs. Absent means `aws`; `--provider` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla", "default" = "aws"))]
    pub provider: Option<ProviderKind>,
    /// How `update` rolls a new version out.
    #[serde(default)]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub update: UpdateSpec,
    /// How `flotilla watch` keeps the fleet at its spec: when a machine counts as gone, and how many replacements it may make.
    #[serde(default, skip_serializing_if = "HealSpec::is_default")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub heal: HealSpec,
    /// Image, network, tags, boot additions and root volume: every machine's defaults.
    #[serde(flatten)]
    pub account: AccountKeys,
    /// Managed policies and inline statements for the deployment's role.
    #[serde(flatten)]
    pub iam: IamKeys,
    /// Dedicated host pools, by name: the hosts entries with `host_pool: NAME` launch onto (Mac instances need them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub host_pools: BTreeMap<String, crate::host_pool::HostPoolSpec>,
}

/// The deployer's `MonitoringConfig`: the instance that runs Prometheus, Loki, Grafana,
/// Pyroscope and Tempo for the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct MonitoringSpec {
    /// EC2 instance type, e.g. `t4g.small` (arm64) or `t3.small` (x86_64).
    #[schemars(extend("x-origin" = "deployer"))]
    pub instance_type: String,
    /// Root volume size in GiB, at least 1.
    #[schemars(extend("x-origin" = "deployer"))]
    pub storage_size: i32,
    /// EBS volume type of the root volume.
    #[schemars(extend("x-origin" = "deployer", "enum" = STORAGE_CLASSES))]
    pub storage_class: String,
    /// Provisioned IOPS: required for io1 and io2, allowed for gp3 (3000 to 500 per GiB, at most 80000), refused for other classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "deployer"))]
    pub storage_iops: Option<i32>,
    /// Throughput in MiB/s, gp3 only: 125 to 2000 and at most a quarter of the IOPS (3000 when `storage_iops` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "deployer"))]
    pub storage_throughput: Option<i32>,
    /// Path to a Grafana dashboard JSON, relative to the current directory.
    #[schemars(extend("x-origin" = "deployer"))]
    pub dashboard: String,
}

/// The EBS volume types the deployer accepts for `storage_class`.
pub const STORAGE_CLASSES: [&str; 7] = ["gp2", "gp3", "io1", "io2", "sc1", "st1", "standard"];

/// The deployer's `InstanceConfig` plus flotilla's per-instance keys.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct InstanceSpec {
    /// Instance name: letters, digits, `_` and `-`; unique ignoring case (after `count` expansion); not `monitoring`.
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"), extend("x-origin" = "deployer"))]
    pub name: String,
    /// AWS region, e.g. `us-east-1`. It must be enabled in the account.
    #[schemars(extend("x-origin" = "deployer"))]
    pub region: String,
    /// Instances with the same group in the same region share one availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "deployer"))]
    pub availability_zone_group: Option<String>,
    /// EC2 instance type, e.g. `c7g.large`. Required, as the deployer requires it, except in a spec with `provider:` whose entry has `instance_types` or `requirements`; with `instance_types` it is the first alternative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "deployer"))]
    pub instance_type: Option<String>,
    /// Root volume size in GiB, at least 1.
    #[schemars(extend("x-origin" = "deployer"))]
    pub storage_size: i32,
    /// EBS volume type of the root volume.
    #[schemars(extend("x-origin" = "deployer", "enum" = STORAGE_CLASSES))]
    pub storage_class: String,
    /// Provisioned IOPS: required for io1 (100 to 50 per GiB, at most 64000) and io2 (100 to 1000 per GiB, at most 256000), allowed for gp3 (3000 to 500 per GiB, at most 80000), refused for other classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "deployer"))]
    pub storage_iops: Option<i32>,
    /// Throughput in MiB/s, gp3 only: 125 to 2000 and at most a quarter of the IOPS (3000 when `storage_iops` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "deployer"))]
    pub storage_throughput: Option<i32>,
    /// Path to the binary, relative to the current directory.
    #[schemars(extend("x-origin" = "deployer"))]
    pub binary: String,
    /// Path to the binary's config, relative to the current directory. Lands as `config.conf`.
    #[schemars(extend("x-origin" = "deployer"))]
    pub config: String,
    /// Whether to profile the binary with perf and send the profiles to Pyroscope.
    #[schemars(extend("x-origin" = "deployer"))]
    pub profiling: bool,
    /// Run this many replicas, named `name-0` … `name-(count-1)`. A deployment has at most 10000 machines on aws and 1000 on local, counted over every entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000), extend("x-origin" = "flotilla"))]
    pub count: Option<u32>,
    /// Extra arguments after `--hosts=… --config=…`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub args: Vec<String>,
    /// Extra environment for the binary. Names are letters, digits and `_`, not starting with a digit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(
        extend("x-origin" = "flotilla", "propertyNames" = {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})
    )]
    pub env: BTreeMap<String, String>,
    /// How the agent decides the binary is healthy.
    #[serde(default)]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub health: HealthCheck,
    /// When the agent restarts the binary: `always`, `on-failure`, or a mapping with the backoff.
    #[serde(default)]
    #[schemars(schema_with = "restart_setting_schema", extend("x-origin" = "flotilla"))]
    pub restart: RestartSpec,
    /// Instance types that may run this entry, in preference order (after `instance_type`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub instance_types: Vec<String>,
    /// Attribute-based selection, with AWS's `InstanceRequirements` in snake_case: the types it matches follow the listed ones, cheapest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub requirements: Option<InstanceRequirements>,
    /// `on-demand` (default), `spot`, or `prefer-spot` (spot, and on-demand for what spot cannot give).
    #[serde(default)]
    #[schemars(extend("x-origin" = "flotilla", "default" = "on-demand"))]
    pub market: Market,
    /// Zones machines may run in (default: every zone that offers an eligible type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub zones: Vec<String>,
    /// The dedicated host pool (a name under `host_pools`) this entry's machines launch onto, one machine per host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub host_pool: Option<String>,
    /// Data disks by device (`/dev/sdf` to `/dev/sdp`, or `/dev/xvdb` to `/dev/xvdz`): EBS volumes created with each machine, tagged with the deployment's tags and the disk's `label`, and deleted with it; the agent formats (only an empty disk) and mounts each disk that has a `mount`. AWS only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub disks: BTreeMap<String, crate::disk::DiskSpec>,
    /// This entry's image, network, tags, boot additions and root volume, over the top's.
    #[serde(flatten)]
    pub account: AccountKeys,
    /// What the agent does around the binary through the machine's life (volumes, DNS records, hooks and notifications on events): an ec2fleetd config written here in YAML, or the path of an ec2fleetd file (JSON5), read as ec2fleetd reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "crate::fleetd::LifecycleSchema", extend("x-origin" = "flotilla"))]
    pub lifecycle: Option<crate::fleetd::Lifecycle>,
    /// A dead-man switch (off by default): a machine whose agent has heard nothing from this deployment's CLI for this long stops its binary and powers off (on AWS it is launched to terminate on shutdown, so billing stops). `flotilla status`, `update` and `flotilla keepalive` (for cron) are word from the deployment. At most 30 days.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration_serde::option"
    )]
    #[schemars(with = "Option<DurationText>", extend("x-origin" = "flotilla"))]
    pub keepalive: Option<Duration>,
    /// What a running binary's machine does when only hosts.yaml changes (machines added, removed or replaced): the file is swapped in place first, then `restart` (the default: restarted in health-gated batches, as an update), `{signal: SIGHUP}` (the binary is sent the signal and rereads the file; no restart), or `none`.
    #[serde(default, skip_serializing_if = "OnHostsChange::is_default")]
    #[schemars(extend("x-origin" = "flotilla", "default" = "restart"))]
    pub on_hosts_change: OnHostsChange,
}

/// What the agent does after it swapped hosts.yaml in place for a hosts-only change.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum OnHostsChange {
    /// Restart the binary, health-gated; a restart that fails puts the old file back.
    #[default]
    Restart,
    /// Send the binary this signal (it rereads the file); it is not restarted.
    Signal(HostsSignal),
    /// Leave the binary alone; it reads the file when it wants.
    None,
}

impl OnHostsChange {
    pub fn is_default(&self) -> bool {
        *self == OnHostsChange::Restart
    }
}

/// The signals a binary may be sent when its hosts.yaml changes: those whose default action
/// a program can take over to reread a file. Not `SIGTERM`, `SIGKILL` or `SIGSTOP`, which stop
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
pub enum HostsSignal {
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
    #[serde(rename = "SIGWINCH")]
    Winch,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    Quit,
}

impl HostsSignal {
    /// Every signal, with its name as written in a spec.
    pub const ALL: [(HostsSignal, &'static str); 6] = [
        (HostsSignal::Hup, "SIGHUP"),
        (HostsSignal::Usr1, "SIGUSR1"),
        (HostsSignal::Usr2, "SIGUSR2"),
        (HostsSignal::Winch, "SIGWINCH"),
        (HostsSignal::Int, "SIGINT"),
        (HostsSignal::Quit, "SIGQUIT"),
    ];

    pub fn name(self) -> &'static str {
        HostsSignal::ALL.iter().find(|(signal, _)| *signal == self).map_or("", |(_, name)| name)
    }

    /// Reads `SIGHUP`, `HUP` or `hup`.
    pub fn parse(text: &str) -> Option<HostsSignal> {
        let upper = text.trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        HostsSignal::ALL.iter().find(|(_, known)| *known == name).map(|(signal, _)| *signal)
    }
}

impl InstanceSpec {
    /// The listed instance types in preference order: `instance_type`, then `instance_types`.
    pub fn listed_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.instance_type.iter().cloned().collect();
        for name in &self.instance_types {
            if !types.contains(name) {
                types.push(name.clone());
            }
        }
        types
    }
}

/// The region of the monitoring machine on AWS, as the deployer places it.
pub const AWS_MONITORING_REGION: &str = "us-east-1";

/// Most replicas one `instances` entry may ask for with `count`.
pub const MAX_COUNT: u32 = 10_000;

/// The longest restart backoff (`initial_backoff`, `max_backoff`): a binary that has been down
/// for an hour is retried at least hourly.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest `health_deadline`: a rollout waits at most this long for one machine.
pub const MAX_HEALTH_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// The longest `keepalive`.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The deployer's `PortConfig`: one ingress rule on binary instances.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct PortSpec {
    /// IP protocol, passed to EC2 as written (`tcp`, `udp`, …).
    #[schemars(extend("x-origin" = "deployer"))]
    pub protocol: String,
    /// The port opened (a single port, not a range).
    #[schemars(range(min = 1), extend("x-origin" = "deployer"))]
    pub port: u16,
    /// IPv4 or IPv6 CIDR block allowed in, e.g. `0.0.0.0/0`.
    #[schemars(extend("x-origin" = "deployer"))]
    pub cidr: String,
}

/// How the agent decides that the binary is healthy: `none`, `{http: {port, path}}` or
/// `{tcp: {port}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthCheck {
    /// `GET http://<ip>:<port><path>` answers 2xx.
    Http {
        /// The port the binary serves HTTP on.
        #[schemars(range(min = 1))]
        port: u16,
        /// The path to request; it starts with `/`.
        #[serde(default = "default_health_path")]
        #[schemars(pattern("^/"))]
        path: String,
    },
    /// A TCP connection to `<ip>:<port>` succeeds.
    Tcp {
        /// The port the binary listens on.
        #[schemars(range(min = 1))]
        port: u16,
    },
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
/// Written either as a bare policy (`restart: on-failure`) or as a mapping. This type's own
/// schema (used by manifests) has every field; the fleet schema describes both YAML forms
/// (see `restart_setting_schema` in this module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "When the agent restarts the binary, with a capped exponential backoff (with jitter)."
)]
pub struct RestartSpec {
    /// When to restart.
    pub policy: RestartPolicy,
    /// First delay before a restart, e.g. `250ms`. Doubles after each quick exit. At most 1h.
    #[serde(with = "crate::duration_serde")]
    #[schemars(with = "DurationText")]
    pub initial_backoff: Duration,
    /// Largest delay between restarts, e.g. `30s`. At most 1h.
    #[serde(with = "crate::duration_serde")]
    #[schemars(with = "DurationText")]
    pub max_backoff: Duration,
}

/// The schema of the `restart` key as YAML accepts it: a bare policy, or a mapping whose keys
/// are all optional (defaults: `always`, `250ms`, `30s`).
fn restart_setting_schema(generator: &mut SchemaGenerator) -> Schema {
    let policy = generator.subschema_for::<RestartPolicy>();
    let duration = generator.subschema_for::<DurationText>();
    json_schema!({
        "oneOf": [
            policy,
            {
                "type": "object",
                "description": "A policy with its backoff. Every key is optional.",
                "properties": {
                    "policy": {
                        "allOf": [policy],
                        "description": "When to restart.",
                        "default": "always"
                    },
                    "initial_backoff": {
                        "allOf": [duration],
                        "description": "First delay before a restart. Doubles after each quick exit; more than 0, at most `max_backoff` and at most 1h.",
                        "default": "250ms"
                    },
                    "max_backoff": {
                        "allOf": [duration],
                        "description": "Largest delay between restarts, at most 1h.",
                        "default": "30s"
                    }
                },
                "additionalProperties": false
            }
        ]
    })
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
#[serde(deny_unknown_fields)]
#[schemars(
    description = "How `update` rolls a new version out: in batches, each instance held to a health deadline and rolled back when it fails."
)]
pub struct UpdateSpec {
    /// Instances updated at once (at least 1). Exclusive with `max_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub batch_size: Option<u32>,
    /// Share of the fleet updated at once, written `N%` (1% to 100%). Exclusive with `batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "25%"))]
    pub max_unavailable: Option<Percent>,
    /// How long each instance of a batch has to become healthy on the new version; more than 0, at most 6h.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration_serde::option"
    )]
    #[schemars(with = "Option<DurationText>", extend("default" = "1m"))]
    pub health_deadline: Option<Duration>,
}

/// `heal`: how `flotilla watch` replaces machines that are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "How `flotilla watch` keeps the fleet at its spec: a machine gone (reclaimed, retired, or down past `replace_after`) is replaced under its name, within churn limits."
)]
pub struct HealSpec {
    /// How long a machine may be stopped, unreachable or unhealthy before it is replaced; one the cloud reports ended is replaced at once. More than 0, at most 1d.
    #[serde(with = "crate::duration_serde")]
    #[schemars(with = "DurationText", extend("default" = "2m"))]
    pub replace_after: Duration,
    /// Replacements under way at once (at least 1).
    #[schemars(range(min = 1), extend("default" = 2))]
    pub max_replacing: u32,
    /// Replacements started in any hour (at least 1); beyond it watch holds back and says why in its log and in `status`.
    #[schemars(range(min = 1), extend("default" = 10))]
    pub max_per_hour: u32,
    /// What a scheduled event (`instance-retirement`, `system-reboot`, `instance-stop`, …) does: `replace` the machine before its NotBefore (default), or `ignore` it.
    pub on_scheduled_event: OnScheduledEvent,
}

impl Default for HealSpec {
    fn default() -> Self {
        HealSpec {
            replace_after: Duration::from_secs(120),
            max_replacing: 2,
            max_per_hour: 10,
            on_scheduled_event: OnScheduledEvent::Replace,
        }
    }
}

impl HealSpec {
    pub fn is_default(&self) -> bool {
        *self == HealSpec::default()
    }
}

/// What `flotilla watch` does about a machine's scheduled event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnScheduledEvent {
    /// Replace it before the event's NotBefore: the replacement first, then the old one drained.
    #[default]
    Replace,
    /// Let the event happen.
    Ignore,
}

/// The longest `heal.replace_after`.
pub const MAX_REPLACE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A percentage written `N%`, 1..=100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent(pub u8);

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Serialized as written in YAML, `25%`, so that a serialized spec reads back the same.
impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(100|[1-9][0-9]?)%$"
        })
    }
}

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

/// The most machines one deployment may have on `provider`, monitoring not counted: 10,000 on
/// AWS (what one EC2 Fleet request may launch, and far beyond the default vCPU quotas), 1,000
/// locally (each machine is an agent and a binary process on this one computer).
pub fn max_machines(provider: ProviderKind) -> usize {
    match provider {
        ProviderKind::Aws => 10_000,
        ProviderKind::Local => 1_000,
    }
}

impl FleetSpec {
    /// Binary machines after `count` expansion (monitoring not counted).
    pub fn machine_count(&self) -> usize {
        self.instances.iter().map(|instance| instance.count.map_or(1, |n| n as usize)).sum()
    }

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
