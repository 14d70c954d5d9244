//! The deployment plan: the machines a spec asks for, in a provider-neutral form.

use flotilla_spec::capacity::{InstanceRequirements, Market};
use flotilla_spec::fleet::PortSpec;
use flotilla_spec::{FleetSpec, ProviderKind};

use crate::provider::Role;

/// The name of the monitoring machine (never a valid instance name).
pub const MONITORING_NAME: &str = "monitoring";
/// The region of the monitoring machine on AWS, as the deployer places it.
pub const AWS_MONITORING_REGION: &str = "us-east-1";
/// The region the local provider reports for the monitoring machine.
pub const LOCAL_REGION: &str = "local";

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
    pub ports: Vec<PortSpec>,
}

impl DeploymentPlan {
    pub fn from_spec(spec: &FleetSpec, provider: ProviderKind) -> DeploymentPlan {
        let monitoring_region = match provider {
            ProviderKind::Local => LOCAL_REGION,
            ProviderKind::Aws => AWS_MONITORING_REGION,
        };
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
        DeploymentPlan { tag: spec.tag.clone(), provider, machines, ports: spec.ports.clone() }
    }

    /// Regions of all machines, sorted, without duplicates.
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = self.machines.iter().map(|m| m.region.clone()).collect();
        regions.sort();
        regions.dedup();
        regions
    }

    /// The first listed instance type of `machine`, for paths that launch one type.
    pub fn first_type(machine: &MachinePlan) -> &str {
        machine.instance_types.first().map_or("", String::as_str)
    }

    /// Binary machines (not monitoring).
    pub fn binary_count(&self) -> usize {
        self.machines.iter().filter(|m| m.role == Role::Binary).count()
    }
}
