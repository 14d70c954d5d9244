//! The fleet mappings: the commonware deployer's config (the root, `monitoring`, `instances[]`,
//! `ports[]`) and flotilla's keys of an instance entry and of the root (`provider`, `update`,
//! `count`, `args`, `env`, `health`, `restart`, and through `decode_account`,
//! `decode_capacity`, `decode_host_pool` and `decode_fleetd` the account, capacity, host pool
//! and lifecycle keys), read with the
//! reader (`decode_reader`) into [`FleetSpec`]. The rules that span keys or entries are in
//! `decode_rules`.
//!
//! Unknown keys: in the mappings the deployer defines an unknown key is a warning, because the
//! deployer ignores it and a config it accepts must stay accepted. Inside flotilla's own
//! mappings (`update`, `restart`, `health`) there is no config to stay compatible with, so an
//! unknown key is an error, as a typo there would otherwise silently fall back to a default.
//!
//! The keys each mapping knows are listed in the `*_KEYS` tables below; a test checks that they
//! equal the JSON Schema's properties, so the decoder and the schema cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::reader::{
    Decoder, IntegerKind, KeySpec, Slot, UnknownKeys, deployer, deployer_optional, flotilla,
    flotilla_required, index_of, last_segment,
};
use super::rules::{InstanceName, check_cidr, machine_total_problem};
use crate::fleet::MAX_REPLACE_AFTER;
use crate::fleet::{
    FleetSpec, HealSpec, HealthCheck, HostsSignal, InstanceSpec, MAX_HEALTH_DEADLINE,
    MAX_KEEPALIVE, MAX_RESTART_BACKOFF, MonitoringSpec, OnHostsChange, OnScheduledEvent, Percent,
    PortSpec, ProviderKind, RestartPolicy, RestartSpec, UpdateSpec,
};
use crate::suggest::closest_match;
use crate::tree::{Node, NodeValue};

/// The help for a root that is not a mapping.
pub(super) const FLEET_ROOT_HELP: &str =
    "a fleet spec is a mapping with the keys `tag`, `monitoring`, `instances` and `ports`";

pub(crate) const FLEET_KEYS: &[KeySpec] = &[
    deployer("tag", "add `tag:` with the deployment's name, e.g. `tag: my-fleet`"),
    deployer(
        "monitoring",
        "add a `monitoring:` mapping with `instance_type`, `storage_size`, `storage_class` and `dashboard`",
    ),
    deployer("instances", "add `instances:` with the list of instances, or `instances: []`"),
    deployer("ports", "add `ports: []`: the deployer requires the key even when no port is opened"),
    flotilla("provider"),
    flotilla("update"),
    flotilla("heal"),
    flotilla("image"),
    flotilla("image_owners"),
    flotilla("network"),
    flotilla("tags"),
    flotilla("iam_policies"),
    flotilla("iam_statements"),
    flotilla("boot"),
    flotilla("root_volume"),
    flotilla("host_pools"),
];

pub(crate) const MONITORING_KEYS: &[KeySpec] = &[
    deployer("instance_type", "add `instance_type:`, e.g. `instance_type: t4g.small`"),
    deployer(
        "storage_size",
        "add `storage_size:` with the root volume's size in GiB, e.g. `storage_size: 10`",
    ),
    deployer("storage_class", "add `storage_class:`, e.g. `storage_class: gp3`"),
    deployer_optional("storage_iops"),
    deployer_optional("storage_throughput"),
    deployer("dashboard", "add `dashboard:` with the path of a Grafana dashboard JSON file"),
];

pub(crate) const INSTANCE_KEYS: &[KeySpec] = &[
    deployer("name", "add `name:`, e.g. `name: node-0`"),
    deployer("region", "add `region:`, e.g. `region: us-east-1`"),
    deployer_optional("availability_zone_group"),
    // Required as the deployer requires it, except in a spec with `provider:` whose entry has
    // `instance_types` or `requirements` (see `decode_instance`).
    deployer_optional("instance_type"),
    deployer(
        "storage_size",
        "add `storage_size:` with the root volume's size in GiB, e.g. `storage_size: 10`",
    ),
    deployer("storage_class", "add `storage_class:`, e.g. `storage_class: gp3`"),
    deployer_optional("storage_iops"),
    deployer_optional("storage_throughput"),
    deployer("binary", "add `binary:` with the path of the binary to run"),
    deployer("config", "add `config:` with the path of the binary's config file"),
    deployer("profiling", "add `profiling: false`: the deployer requires the key"),
    flotilla("count"),
    flotilla("args"),
    flotilla("env"),
    flotilla("health"),
    flotilla("restart"),
    flotilla("instance_types"),
    flotilla("requirements"),
    flotilla("market"),
    flotilla("zones"),
    flotilla("host_pool"),
    flotilla("disks"),
    flotilla("image"),
    flotilla("image_owners"),
    flotilla("network"),
    flotilla("tags"),
    flotilla("boot"),
    flotilla("root_volume"),
    flotilla("lifecycle"),
    flotilla("keepalive"),
    flotilla("on_hosts_change"),
];

pub(crate) const PORT_KEYS: &[KeySpec] = &[
    deployer("protocol", "add `protocol:`, e.g. `protocol: tcp`"),
    deployer("port", "add `port:`, e.g. `port: 8080`"),
    deployer("cidr", "add `cidr:`, e.g. `cidr: 0.0.0.0/0`"),
];

pub(crate) const UPDATE_KEYS: &[KeySpec] =
    &[flotilla("batch_size"), flotilla("max_unavailable"), flotilla("health_deadline")];

pub(crate) const ON_HOSTS_CHANGE_KEYS: &[KeySpec] =
    &[flotilla_required("signal", "add `signal:` with a signal name, e.g. `signal: SIGHUP`")];

pub(crate) const HEAL_KEYS: &[KeySpec] = &[
    flotilla("replace_after"),
    flotilla("max_replacing"),
    flotilla("max_per_hour"),
    flotilla("on_scheduled_event"),
];

pub(crate) const RESTART_KEYS: &[KeySpec] =
    &[flotilla("policy"), flotilla("initial_backoff"), flotilla("max_backoff")];

/// The kinds of health check, as the keys of the `health` mapping. Exactly one is given.
pub(crate) const HEALTH_KINDS: &[KeySpec] = &[flotilla("http"), flotilla("tcp")];

pub(crate) const HEALTH_HTTP_KEYS: &[KeySpec] = &[
    flotilla_required("port", "add `port:` with the port the binary serves HTTP on"),
    flotilla("path"),
];

pub(crate) const HEALTH_TCP_KEYS: &[KeySpec] =
    &[flotilla_required("port", "add `port:` with the port the binary listens on")];

impl Decoder<'_> {
    pub(crate) fn decode_fleet(&mut self, root: &Node) -> Option<FleetSpec> {
        self.locations.insert(String::new(), root.location);
        let fields = self.open_mapping(root, "", FLEET_KEYS, UnknownKeys::Warn)?;
        self.has_provider_key = fields.found.contains_key("provider");
        let tag = self.required(&fields, "tag", |decoder, node, field| {
            let tag = decoder.read_string(node, field)?;
            decoder.check_name(node.location, field, &tag, "tag", "my-fleet").then_some(tag)
        });
        let monitoring = self.required(&fields, "monitoring", Self::decode_monitoring);
        let instances = self.required(&fields, "instances", |decoder, node, field| {
            decoder.read_sequence(node, field, Self::decode_instance)
        });
        self.check_instance_names();
        let ports = self.required(&fields, "ports", |decoder, node, field| {
            decoder.read_sequence(node, field, Self::decode_port)
        });
        let provider = self.optional_or_null(&fields, "provider", Self::read_provider);
        if let (Slot::Present(instances, location), false) =
            (&instances, matches!(provider, Slot::Invalid))
        {
            let kind = provider.value().copied().unwrap_or(ProviderKind::Aws);
            if let Some((message, help)) = machine_total_problem(instances, kind) {
                self.error(*location, "instances", message, help);
            }
        }
        let update = self.optional(&fields, "update", Self::decode_update);
        let heal = self.optional(&fields, "heal", Self::decode_heal);
        let account = self.decode_account(&fields, None);
        if let (Some(account), Slot::Present(instances, _)) = (&account, &instances) {
            self.check_account_across_entries(&account.keys, instances, provider.value().copied());
        }
        let host_pools = self.optional(&fields, "host_pools", Self::read_host_pools);
        if let Slot::Present(instances, _) = &instances
            && !matches!(host_pools, Slot::Invalid)
        {
            let no_pools = BTreeMap::new();
            self.check_host_pool_references(instances, host_pools.value().unwrap_or(&no_pools));
        }
        let account = account?;
        Some(FleetSpec {
            tag: tag.into_required()?,
            monitoring: monitoring.into_required()?,
            instances: instances.into_required()?,
            ports: ports.into_required()?,
            provider: provider.into_optional()?,
            update: update.into_optional()?.unwrap_or_default(),
            heal: heal.into_optional()?.unwrap_or_default(),
            account: account.keys,
            iam: account.iam,
            host_pools: host_pools.into_optional()?.unwrap_or_default(),
        })
    }

    fn decode_monitoring(&mut self, node: &Node, field: &str) -> Option<MonitoringSpec> {
        let fields = self.open_mapping(node, field, MONITORING_KEYS, UnknownKeys::Warn)?;
        let instance_type = self.required(&fields, "instance_type", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "an EC2 instance type, e.g. `t4g.small`")
        });
        let storage = self.decode_storage(&fields);
        let dashboard = self.required(&fields, "dashboard", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "the path of a Grafana dashboard JSON file")
        });
        let storage = storage?;
        Some(MonitoringSpec {
            instance_type: instance_type.into_required()?,
            storage_size: storage.size,
            storage_class: storage.class,
            storage_iops: storage.iops,
            storage_throughput: storage.throughput,
            dashboard: dashboard.into_required()?,
        })
    }

    fn decode_instance(&mut self, node: &Node, field: &str) -> Option<InstanceSpec> {
        self.refuse_top_level_only(node, field);
        let fields = self.open_mapping(node, field, INSTANCE_KEYS, UnknownKeys::Warn)?;
        let name = self.required(&fields, "name", |decoder, node, field| {
            let name = decoder.read_string(node, field)?;
            decoder
                .check_name(node.location, field, &name, "instance name", "node-0")
                .then_some(name)
        });
        let region = self.required(&fields, "region", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "an AWS region, e.g. `us-east-1`")
        });
        let availability_zone_group =
            self.optional_or_null(&fields, "availability_zone_group", Self::read_string);
        let instance_type =
            self.optional_or_null(&fields, "instance_type", |decoder, node, field| {
                decoder.read_non_empty_string(node, field, "an EC2 instance type, e.g. `c7g.large`")
            });
        let instance_types = self.optional(&fields, "instance_types", Self::read_instance_types);
        let requirements = self.optional(&fields, "requirements", Self::read_requirements);
        let market = self.optional(&fields, "market", Self::read_market);
        let zones = self.optional(&fields, "zones", |decoder, node, field| {
            decoder.read_zones(node, field, region.value().map(String::as_str))
        });
        let host_pool = self.optional(&fields, "host_pool", Self::read_host_pool_name);
        let disks = self.optional(&fields, "disks", Self::read_disks);
        if matches!(instance_type, Slot::Absent) {
            let has_alternatives =
                !matches!(instance_types, Slot::Absent) || !matches!(requirements, Slot::Absent);
            if !(self.has_provider_key && has_alternatives) {
                let help = if has_alternatives {
                    "add `instance_type:` (the deployer requires it), or add `provider: aws` at the top so that `instance_types` or `requirements` may stand for it"
                } else if self.has_provider_key {
                    "add `instance_type:`, `instance_types:` or `requirements:`"
                } else {
                    "add `instance_type:`, e.g. `instance_type: c7g.large`"
                };
                self.error(
                    fields.location,
                    &fields.child("instance_type"),
                    "missing required key `instance_type`".to_owned(),
                    help,
                );
            }
        }
        let storage = self.decode_storage(&fields);
        let binary = self.required(&fields, "binary", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "the path of the binary to run")
        });
        let config = self.required(&fields, "config", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "the path of the binary's config file")
        });
        let profiling = self.required(&fields, "profiling", Self::read_bool);
        let count = self.optional_or_null(&fields, "count", Self::read_count);
        let args = self.optional(&fields, "args", Self::read_args);
        let env = self.optional(&fields, "env", Self::read_env);
        let health = self.optional(&fields, "health", Self::read_health);
        let restart = self.optional(&fields, "restart", Self::read_restart);
        let account = self.decode_account(&fields, region.value().map(String::as_str));
        let lifecycle = self.optional_or_null(&fields, "lifecycle", Self::read_lifecycle);
        let keepalive = self.optional_or_null(&fields, "keepalive", |decoder, node, field| {
            decoder.read_duration(node, field, MAX_KEEPALIVE)
        });
        let on_hosts_change = self.optional(&fields, "on_hosts_change", Self::read_on_hosts_change);

        if let (Some(name_value), Some(location)) = (name.value(), name.location())
            && !matches!(count, Slot::Invalid)
        {
            self.instance_names.push(InstanceName {
                index: index_of(field),
                name: name_value.clone(),
                count: count.value().copied(),
                location,
            });
        }

        let storage = storage?;
        Some(InstanceSpec {
            name: name.into_required()?,
            region: region.into_required()?,
            availability_zone_group: availability_zone_group.into_optional()?,
            instance_type: instance_type.into_optional()?,
            storage_size: storage.size,
            storage_class: storage.class,
            storage_iops: storage.iops,
            storage_throughput: storage.throughput,
            binary: binary.into_required()?,
            config: config.into_required()?,
            profiling: profiling.into_required()?,
            count: count.into_optional()?,
            args: args.into_optional()?.unwrap_or_default(),
            env: env.into_optional()?.unwrap_or_default(),
            health: health.into_optional()?.unwrap_or_default(),
            restart: restart.into_optional()?.unwrap_or_default(),
            instance_types: instance_types.into_optional()?.unwrap_or_default(),
            requirements: requirements.into_optional()?,
            market: market.into_optional()?.unwrap_or_default(),
            zones: zones.into_optional()?.unwrap_or_default(),
            host_pool: host_pool.into_optional()?,
            disks: disks.into_optional()?.unwrap_or_default(),
            account: account?.keys,
            lifecycle: lifecycle.into_optional()?,
            keepalive: keepalive.into_optional()?,
            on_hosts_change: on_hosts_change.into_optional()?.unwrap_or_default(),
        })
    }

    fn decode_port(&mut self, node: &Node, field: &str) -> Option<PortSpec> {
        let fields = self.open_mapping(node, field, PORT_KEYS, UnknownKeys::Warn)?;
        let protocol = self.required(&fields, "protocol", |decoder, node, field| {
            decoder.read_non_empty_string(
                node,
                field,
                "an IP protocol, e.g. `tcp` or `udp` (EC2 takes it as written)",
            )
        });
        let port = self.required(&fields, "port", Self::read_port);
        let cidr = self.required(&fields, "cidr", |decoder, node, field| {
            let cidr = decoder.read_string(node, field)?;
            match check_cidr(&cidr) {
                Ok(()) => Some(cidr),
                Err(problem) => {
                    decoder.error(node.location, field, problem.message, problem.help);
                    None
                }
            }
        });
        Some(PortSpec {
            protocol: protocol.into_required()?,
            port: port.into_required()?,
            cidr: cidr.into_required()?,
        })
    }

    fn read_provider(&mut self, node: &Node, field: &str) -> Option<ProviderKind> {
        let text = self.read_string(node, field)?;
        match text.as_str() {
            "local" => Some(ProviderKind::Local),
            "aws" => Some(ProviderKind::Aws),
            _ => {
                let help = match closest_match(&text, ["local", "aws"]) {
                    Some(known) => format!("did you mean `{known}`?"),
                    None => "write `provider: local` or `provider: aws`".to_owned(),
                };
                self.error(node.location, field, format!("unknown provider `{text}`"), help);
                None
            }
        }
    }

    fn read_count(&mut self, node: &Node, field: &str) -> Option<u32> {
        let count = self.read_integer(node, field, IntegerKind::Count)?;
        Some(u32::try_from(count).expect("read_integer checked the count range"))
    }

    fn read_args(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        self.read_sequence(node, field, |decoder, item, item_field| {
            let text = decoder.read_string(item, item_field)?;
            decoder.check_no_nul(item.location, item_field, &text, "an argument").then_some(text)
        })
    }

    fn read_env(&mut self, node: &Node, field: &str) -> Option<BTreeMap<String, String>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of names to values, found {}", node.describe()),
                "write one `NAME: value` per line, indented under `env:`",
            );
            return None;
        };
        let mut env = BTreeMap::new();
        let mut first_lines: HashMap<&str, usize> = HashMap::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(key) = entry.key.as_scalar() else {
                self.error(
                    entry.key.location,
                    field,
                    format!(
                        "an environment variable name must be a string, found {}",
                        entry.key.describe()
                    ),
                    "write `NAME: value`",
                );
                all_valid = false;
                continue;
            };
            let name = key.text.as_str();
            let variable_field = format!("{field}.{name}");
            self.locations.insert(variable_field.clone(), entry.value.location);
            if let Some(first_line) = first_lines.get(name) {
                self.error(
                    entry.key.location,
                    &variable_field,
                    format!("`{name}` is given twice (first on line {first_line})"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            first_lines.insert(name, entry.key.location.line);
            if !is_valid_env_name(name) {
                self.error(
                    entry.key.location,
                    &variable_field,
                    format!("`{name}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
                all_valid = false;
                continue;
            }
            let Some(value) = self.read_string(&entry.value, &variable_field) else {
                all_valid = false;
                continue;
            };
            if !self.check_no_nul(entry.value.location, &variable_field, &value, "a value") {
                all_valid = false;
                continue;
            }
            env.insert(name.to_owned(), value);
        }
        all_valid.then_some(env)
    }

    fn read_health(&mut self, node: &Node, field: &str) -> Option<HealthCheck> {
        const FORMS: &str = "write `health: none`, `health: {http: {port: 8080, path: /health}}` \
                             or `health: {tcp: {port: 8080}}`";
        if let Some(scalar) = node.as_scalar() {
            if scalar.text == "none" {
                return Some(HealthCheck::None);
            }
            let message = match scalar.text.as_str() {
                "http" | "tcp" => format!("a `{}` health check needs its port", scalar.text),
                _ => format!("expected `none` or a mapping, found {}", scalar.describe()),
            };
            self.error(node.location, field, message, FORMS);
            return None;
        }
        let fields = self.open_mapping(node, field, HEALTH_KINDS, UnknownKeys::Refuse)?;
        let http = self.optional(&fields, "http", |decoder, node, field| {
            let fields =
                decoder.open_mapping(node, field, HEALTH_HTTP_KEYS, UnknownKeys::Refuse)?;
            let port = decoder.required(&fields, "port", Self::read_port);
            let path = decoder.optional(&fields, "path", |decoder, node, field| {
                let path = decoder.read_string(node, field)?;
                if !path.starts_with('/') {
                    decoder.error(
                        node.location,
                        field,
                        format!("the health check path must start with `/`, found `{path}`"),
                        format!("write `path: /{}`", path.trim_start_matches('/')),
                    );
                    return None;
                }
                Some(path)
            });
            Some(HealthCheck::Http {
                port: port.into_required()?,
                path: path.into_optional()?.unwrap_or_else(|| "/health".to_owned()),
            })
        });
        let tcp = self.optional(&fields, "tcp", |decoder, node, field| {
            let fields = decoder.open_mapping(node, field, HEALTH_TCP_KEYS, UnknownKeys::Refuse)?;
            let port = decoder.required(&fields, "port", Self::read_port);
            Some(HealthCheck::Tcp { port: port.into_required()? })
        });
        match (http, tcp) {
            (Slot::Absent, Slot::Absent) => {
                // Other keys were reported as unknown; an empty mapping gets its own error.
                if matches!(&node.value, NodeValue::Mapping(entries) if entries.is_empty()) {
                    self.error(
                        node.location,
                        field,
                        "a health check mapping needs `http` or `tcp`".to_owned(),
                        FORMS,
                    );
                }
                None
            }
            (Slot::Present(check, _), Slot::Absent) | (Slot::Absent, Slot::Present(check, _)) => {
                Some(check)
            }
            (Slot::Invalid, _) | (_, Slot::Invalid) => None,
            (Slot::Present(_, http_location), Slot::Present(_, tcp_location)) => {
                self.error(
                    http_location.max(tcp_location),
                    field,
                    "a health check is `http` or `tcp`, not both".to_owned(),
                    "keep one of them",
                );
                None
            }
        }
    }

    fn read_restart(&mut self, node: &Node, field: &str) -> Option<RestartSpec> {
        if node.as_scalar().is_some() {
            let policy = self.read_restart_policy(node, field)?;
            return Some(RestartSpec { policy, ..RestartSpec::default() });
        }
        let fields = self.open_mapping(node, field, RESTART_KEYS, UnknownKeys::Refuse)?;
        let policy = self.optional(&fields, "policy", Self::read_restart_policy);
        let backoff = |decoder: &mut Self, node: &Node, field: &str| {
            decoder.read_duration(node, field, MAX_RESTART_BACKOFF)
        };
        let initial = self.optional(&fields, "initial_backoff", backoff);
        let max = self.optional(&fields, "max_backoff", backoff);
        let defaults = RestartSpec::default();
        let spec = RestartSpec {
            policy: policy.into_optional()?.unwrap_or(defaults.policy),
            initial_backoff: initial.value().copied().unwrap_or(defaults.initial_backoff),
            max_backoff: max.value().copied().unwrap_or(defaults.max_backoff),
        };
        if matches!(initial, Slot::Invalid) || matches!(max, Slot::Invalid) {
            return None;
        }
        if spec.initial_backoff > spec.max_backoff {
            let location = initial.location().or(max.location()).unwrap_or(fields.location);
            let describe = |slot: &Slot<Duration>, duration: Duration| match slot {
                Slot::Present(..) => format!("`{}`", humantime::format_duration(duration)),
                _ => format!("`{}` (the default)", humantime::format_duration(duration)),
            };
            self.error(
                location,
                &fields.child("initial_backoff"),
                format!(
                    "initial_backoff {} is longer than max_backoff {}",
                    describe(&initial, spec.initial_backoff),
                    describe(&max, spec.max_backoff)
                ),
                "make initial_backoff at most max_backoff",
            );
            return None;
        }
        Some(spec)
    }

    fn read_on_hosts_change(&mut self, node: &Node, field: &str) -> Option<OnHostsChange> {
        const WRITE: &str = "write `restart`, `none`, or a mapping `{signal: SIGHUP}`";
        if node.as_scalar().is_some() {
            let text = self.read_string(node, field)?;
            return match text.as_str() {
                "restart" => Some(OnHostsChange::Restart),
                "none" => Some(OnHostsChange::None),
                _ => {
                    let help = match closest_match(&text, ["restart", "none"]) {
                        Some(known) => format!("did you mean `{known}`?"),
                        None if HostsSignal::parse(&text).is_some() => {
                            format!("a signal is written as a mapping: `{{signal: {text}}}`")
                        }
                        None => WRITE.to_owned(),
                    };
                    self.error(
                        node.location,
                        field,
                        format!("unknown on_hosts_change `{text}`"),
                        help,
                    );
                    None
                }
            };
        }
        let fields = self.open_mapping(node, field, ON_HOSTS_CHANGE_KEYS, UnknownKeys::Refuse)?;
        let signal = self.required(&fields, "signal", |decoder, node, field| {
            let text = decoder.read_string(node, field)?;
            let signal = HostsSignal::parse(&text);
            if signal.is_none() {
                let names: Vec<&str> = HostsSignal::ALL.iter().map(|(_, name)| *name).collect();
                decoder.error(
                    node.location,
                    field,
                    format!("`{text}` is not a signal a binary may be sent on a hosts change"),
                    format!(
                        "use one of {}; SIGTERM, SIGKILL and SIGSTOP would stop the binary",
                        names.join(", ")
                    ),
                );
            }
            signal
        });
        Some(OnHostsChange::Signal(signal.into_required()?))
    }

    fn read_restart_policy(&mut self, node: &Node, field: &str) -> Option<RestartPolicy> {
        let text = self.read_string(node, field)?;
        match text.as_str() {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            _ => {
                let help = match closest_match(&text, ["always", "on-failure"]) {
                    Some(known) => format!("did you mean `{known}`?"),
                    None => "write `always` or `on-failure`, or a mapping \
                             `{policy: on-failure, initial_backoff: 250ms, max_backoff: 30s}`"
                        .to_owned(),
                };
                self.error(node.location, field, format!("unknown restart policy `{text}`"), help);
                None
            }
        }
    }

    fn decode_update(&mut self, node: &Node, field: &str) -> Option<UpdateSpec> {
        let fields = self.open_mapping(node, field, UPDATE_KEYS, UnknownKeys::Refuse)?;
        let batch_size = self.optional_or_null(&fields, "batch_size", |decoder, node, field| {
            let size = decoder.read_u32(node, field)?;
            if size == 0 {
                decoder.error(
                    node.location,
                    field,
                    "batch_size must be at least 1".to_owned(),
                    "give the number of instances updated at once, e.g. `batch_size: 2`",
                );
                return None;
            }
            Some(size)
        });
        let max_unavailable = self.optional_or_null(&fields, "max_unavailable", Self::read_percent);
        let health_deadline =
            self.optional_or_null(&fields, "health_deadline", |decoder, node, field| {
                decoder.read_duration(node, field, MAX_HEALTH_DEADLINE)
            });
        if let (Some(batch_location), Some(share_location)) =
            (batch_size.location(), max_unavailable.location())
        {
            let later = batch_location.max(share_location);
            let later_field = fields.child(if later == batch_location {
                "batch_size"
            } else {
                "max_unavailable"
            });
            self.error(
                later,
                &later_field,
                "`batch_size` and `max_unavailable` both set the batch size".to_owned(),
                "keep `batch_size: N` for a fixed number of instances, or `max_unavailable: N%` \
                 for a share of the fleet",
            );
            return None;
        }
        Some(UpdateSpec {
            batch_size: batch_size.into_optional()?,
            max_unavailable: max_unavailable.into_optional()?,
            health_deadline: health_deadline.into_optional()?,
        })
    }

    fn decode_heal(&mut self, node: &Node, field: &str) -> Option<HealSpec> {
        let fields = self.open_mapping(node, field, HEAL_KEYS, UnknownKeys::Refuse)?;
        let defaults = HealSpec::default();
        // A duration of 0 is refused by the reader.
        let replace_after = self.optional(&fields, "replace_after", |decoder, node, field| {
            decoder.read_duration(node, field, MAX_REPLACE_AFTER)
        });
        let at_least_one = |what: &'static str, example: &'static str| {
            move |decoder: &mut Self, node: &Node, field: &str| {
                let value = decoder.read_u32(node, field)?;
                if value == 0 {
                    decoder.error(
                        node.location,
                        field,
                        format!("{what} must be at least 1"),
                        format!("e.g. `{what}: {example}`"),
                    );
                    return None;
                }
                Some(value)
            }
        };
        let max_replacing =
            self.optional(&fields, "max_replacing", at_least_one("max_replacing", "2"));
        let max_per_hour =
            self.optional(&fields, "max_per_hour", at_least_one("max_per_hour", "10"));
        let on_scheduled_event =
            self.optional(&fields, "on_scheduled_event", |decoder, node, field| {
                let text = decoder.read_string(node, field)?;
                match text.as_str() {
                    "replace" => Some(OnScheduledEvent::Replace),
                    "ignore" => Some(OnScheduledEvent::Ignore),
                    _ => {
                        let help = match closest_match(&text, ["replace", "ignore"]) {
                            Some(known) => format!("did you mean `{known}`?"),
                            None => "write `replace` or `ignore`".to_owned(),
                        };
                        decoder.error(
                            node.location,
                            field,
                            format!("unknown on_scheduled_event `{text}`"),
                            help,
                        );
                        None
                    }
                }
            });
        Some(HealSpec {
            replace_after: replace_after.into_optional()?.unwrap_or(defaults.replace_after),
            max_replacing: max_replacing.into_optional()?.unwrap_or(defaults.max_replacing),
            max_per_hour: max_per_hour.into_optional()?.unwrap_or(defaults.max_per_hour),
            on_scheduled_event: on_scheduled_event
                .into_optional()?
                .unwrap_or(defaults.on_scheduled_event),
        })
    }

    fn read_percent(&mut self, node: &Node, field: &str) -> Option<Percent> {
        let text = self.read_string(node, field)?;
        let Some(number) = text.strip_suffix('%') else {
            self.error(
                node.location,
                field,
                format!("`{text}` is not a percentage"),
                format!("write it with a percent sign, e.g. `{}: 25%`", last_segment(field)),
            );
            return None;
        };
        match number.parse::<u8>() {
            Ok(percent @ 1..=100) if number.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Percent(percent))
            }
            _ => {
                self.error(
                    node.location,
                    field,
                    format!("`{text}` is out of range (1% to 100%)"),
                    format!("write a share from 1% to 100%, e.g. `{}: 25%`", last_segment(field)),
                );
                None
            }
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: the names a shell and `env` accept.
fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for good in ["A", "_x", "RUST_LOG", "a1"] {
            assert!(is_valid_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert!(!is_valid_env_name(bad), "{bad}");
        }
    }
}
