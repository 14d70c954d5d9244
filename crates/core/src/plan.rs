//! The deployment plan: the machines a spec asks for, in a provider-neutral form.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_capacity::Architecture;
use flotilla_capacity::select::{Problem, Wants, eligible};
use flotilla_spec::capacity::{InstanceRequirements, Market};
use flotilla_spec::fleet::{PortSpec, node_names};
use flotilla_spec::fleetd::{FleetdConfig, Lifecycle};
use flotilla_spec::{FleetSpec, ProviderKind};

use flotilla_spec::account::{IamKeys, MachineSettings};

use flotilla_capacity::{Catalog, PriceBook};

/// The name of the monitoring machine (never a valid instance name).
pub const MONITORING_NAME: &str = "monitoring";

/// What a machine is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the user's binary.
    Binary,
    /// The monitoring instance.
    Monitoring,
}

/// One machine to run.
#[derive(Clone, Debug, PartialEq)]
pub struct MachinePlan {
    pub name: String,
    pub role: Role,
    pub region: String,
    /// The listed instance types in preference order (`instance_type`, then `instance_types`);
    /// empty when only `requirements` choose.
    pub instance_types: Vec<String>,
    pub requirements: Option<InstanceRequirements>,
    pub market: Market,
    /// Allowed zones; empty means every zone.
    pub zones: Vec<String>,
    pub storage_size: i32,
    pub storage_class: String,
    pub storage_iops: Option<i32>,
    pub storage_throughput: Option<i32>,
    pub availability_zone_group: Option<String>,
    /// Index into the spec's `instances` for binary machines.
    pub instance_index: Option<usize>,
}

/// Every machine of a deployment: monitoring first, then the binary machines in spec order.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentPlan {
    pub tag: String,
    pub provider: ProviderKind,
    pub machines: Vec<MachinePlan>,
    /// The machines by capacity group: the monitoring machine, then one group per instance
    /// entry, in spec order.
    pub groups: Vec<GroupPlan>,
    pub ports: Vec<PortSpec>,
    /// What the deployment's role may do beyond flotilla's own statements.
    pub iam: IamKeys,
    /// The lifecycle config of each instance entry that has one, in spec order: the role gains
    /// what they need (volumes, records, notifications). [`DeploymentPlan::from_spec`] holds
    /// the inline ones; `workflows::plan::resolve` reads the ones named by path too.
    pub lifecycles: Vec<FleetdConfig>,
}

/// Machines that share their capacity keys: one instance entry, or the monitoring machine.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPlan {
    /// The entry's name (`monitoring` for the monitoring machine).
    pub name: String,
    pub role: Role,
    pub region: String,
    /// Index into the spec's `instances` for binary machines.
    pub instance_index: Option<usize>,
    /// The group's machine names, in index order.
    pub machines: Vec<String>,
    /// Listed types in preference order.
    pub instance_types: Vec<String>,
    pub requirements: Option<InstanceRequirements>,
    pub market: Market,
    /// Allowed zones; empty means every zone.
    pub zones: Vec<String>,
    pub availability_zone_group: Option<String>,
    /// The binary's architecture, read from its ELF header when it has one.
    pub architecture: Option<Architecture>,
    /// Zone → the group's eligible types offered there, in preference order: where a launch
    /// may put its machines. Filled by [`DeploymentPlan::resolve_capacity`]; empty before.
    pub offered: BTreeMap<String, Vec<String>>,
    /// Image, network, tags, boot additions and root volume, each with the spec field that
    /// gave it (for reporting a reference the account does not satisfy at its line).
    pub settings: MachineSettings,
    /// The dedicated host pool the group's machines launch onto (`host_pool:`), with its spec.
    pub host_pool: Option<HostPoolPlan>,
    /// The entry's data disks by device (`disks:`), created with each machine; the index of
    /// the entry is `instance_index`, so a disk's field is `instances[i].disks.DEVICE`.
    pub disks: BTreeMap<String, flotilla_spec::disk::DiskSpec>,
}

/// A group's dedicated host pool: its name under `host_pools` and its keys.
#[derive(Clone, Debug, PartialEq)]
pub struct HostPoolPlan {
    pub name: String,
    pub spec: flotilla_spec::host_pool::HostPoolSpec,
}

impl GroupPlan {
    /// The request the capacity policy sees for this group.
    pub fn wants(&self) -> Wants<'_> {
        Wants {
            instance_types: &self.instance_types,
            requirements: self.requirements.as_ref(),
            architecture: self.architecture,
            zones: &self.zones,
            market: self.market,
        }
    }
}

/// Why a group cannot run as its spec asks, found when its capacity was resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityProblem {
    /// Index into [`DeploymentPlan::groups`].
    pub group: usize,
    pub problem: Problem,
}

impl DeploymentPlan {
    /// The plan of `spec` on `provider`, whose monitoring machine runs in `monitoring_region`
    /// (the provider's [`crate::provider::Surveyor::monitoring_region`]).
    pub fn from_spec(
        spec: &FleetSpec,
        provider: ProviderKind,
        monitoring_region: &str,
    ) -> DeploymentPlan {
        let monitoring = &spec.monitoring;
        let mut machines = vec![MachinePlan {
            name: MONITORING_NAME.to_owned(),
            role: Role::Monitoring,
            region: monitoring_region.to_owned(),
            instance_types: vec![monitoring.instance_type.clone()],
            requirements: None,
            market: Market::OnDemand,
            zones: Vec::new(),
            storage_size: monitoring.storage_size,
            storage_class: monitoring.storage_class.clone(),
            storage_iops: monitoring.storage_iops,
            storage_throughput: monitoring.storage_throughput,
            availability_zone_group: None,
            instance_index: None,
        }];
        for (name, index) in spec.nodes() {
            let instance = &spec.instances[index];
            machines.push(MachinePlan {
                name,
                role: Role::Binary,
                region: instance.region.clone(),
                instance_types: instance.listed_types(),
                requirements: instance.requirements.clone(),
                market: instance.market,
                zones: instance.zones.clone(),
                storage_size: instance.storage_size,
                storage_class: instance.storage_class.clone(),
                storage_iops: instance.storage_iops,
                storage_throughput: instance.storage_throughput,
                availability_zone_group: instance.availability_zone_group.clone(),
                instance_index: Some(index),
            });
        }
        let mut groups = vec![GroupPlan {
            name: MONITORING_NAME.to_owned(),
            role: Role::Monitoring,
            region: monitoring_region.to_owned(),
            instance_index: None,
            machines: vec![MONITORING_NAME.to_owned()],
            instance_types: vec![monitoring.instance_type.clone()],
            requirements: None,
            market: Market::OnDemand,
            zones: Vec::new(),
            availability_zone_group: None,
            architecture: None,
            offered: BTreeMap::new(),
            settings: spec.monitoring_settings(monitoring_region),
            host_pool: None,
            disks: BTreeMap::new(),
        }];
        for (index, instance) in spec.instances.iter().enumerate() {
            let host_pool = instance.host_pool.as_ref().and_then(|name| {
                let pool = spec.host_pools.get(name)?;
                Some(HostPoolPlan { name: name.clone(), spec: pool.clone() })
            });
            // An entry on a pool runs the pool's type (the spec refuses another).
            let instance_types = match &host_pool {
                Some(pool) => vec![pool.spec.instance_type.clone()],
                None => instance.listed_types(),
            };
            groups.push(GroupPlan {
                name: instance.name.clone(),
                role: Role::Binary,
                region: instance.region.clone(),
                instance_index: Some(index),
                machines: node_names(instance),
                instance_types,
                requirements: instance.requirements.clone(),
                market: instance.market,
                zones: instance.zones.clone(),
                availability_zone_group: instance.availability_zone_group.clone(),
                architecture: None,
                offered: BTreeMap::new(),
                settings: spec.settings_of(index),
                host_pool,
                disks: instance.disks.clone(),
            });
        }
        DeploymentPlan {
            tag: spec.tag.clone(),
            provider,
            machines,
            groups,
            ports: spec.ports.clone(),
            iam: spec.iam.clone(),
            lifecycles: spec
                .instances
                .iter()
                .filter_map(|instance| match &instance.lifecycle {
                    Some(Lifecycle::Inline(config)) => Some(config.clone()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Decides, from the catalog and prices, which types may run each group in which zones
    /// ([`GroupPlan::offered`]); every problem of every group when some cannot run. Groups that
    /// share an `availability_zone_group` in a region are put in one zone, the first (by name)
    /// that offers an eligible type to each of them.
    pub fn resolve_capacity(
        &mut self,
        catalog: &Catalog,
        prices: &PriceBook,
    ) -> Result<(), Vec<CapacityProblem>> {
        let mut problems = Vec::new();
        for (index, group) in self.groups.iter_mut().enumerate() {
            match eligible(catalog, &group.region, &group.wants(), prices) {
                Ok(found) => {
                    group.offered = found
                        .zones
                        .iter()
                        .map(|zone| {
                            let types: Vec<String> = found
                                .types
                                .iter()
                                .filter(|name| {
                                    catalog
                                        .zones_offering(&group.region, name)
                                        .contains(&zone.as_str())
                                })
                                .cloned()
                                .collect();
                            (zone.clone(), types)
                        })
                        .filter(|(_, types)| !types.is_empty())
                        .collect();
                }
                Err(found) => {
                    problems.extend(
                        found.into_iter().map(|problem| CapacityProblem { group: index, problem }),
                    );
                }
            }
        }
        // One zone per availability zone group and region.
        let mut shared: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (index, group) in self.groups.iter().enumerate() {
            if let Some(name) = &group.availability_zone_group {
                shared.entry((group.region.clone(), name.clone())).or_default().push(index);
            }
        }
        for ((region, name), members) in shared {
            let common = members
                .iter()
                .map(|i| self.groups[*i].offered.keys().cloned().collect::<BTreeSet<String>>())
                .reduce(|a, b| a.intersection(&b).cloned().collect())
                .unwrap_or_default();
            match common.into_iter().next() {
                Some(zone) => {
                    for i in &members {
                        self.groups[*i].offered.retain(|z, _| *z == zone);
                    }
                }
                None if members.iter().all(|i| !self.groups[*i].offered.is_empty()) => {
                    problems.push(CapacityProblem {
                        group: members[0],
                        problem: Problem::NoCommonZone { group: name, region },
                    });
                }
                None => {}
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// Regions of all machines, sorted, without duplicates.
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = self.machines.iter().map(|m| m.region.clone()).collect();
        regions.sort();
        regions.dedup();
        regions
    }

    /// Binary machines (not monitoring).
    pub fn binary_count(&self) -> usize {
        self.machines.iter().filter(|m| m.role == Role::Binary).count()
    }
}
