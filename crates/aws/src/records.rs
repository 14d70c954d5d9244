//! The provider's journal in the deployment's state directory (`aws/records.json`).
//!
//! Tags on AWS resources are the truth; the journal only says what this machine has started,
//! so a first `create` can skip looking for resources that cannot exist yet, and so a launched
//! instance can be named: a batch's names are written here *before* its `RunInstances`, and an
//! instance's name is its batch's name at its `AmiLaunchIndex`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use flotilla_core::provider::Role;

/// Tag key naming the deployment on every resource.
pub const TAG_DEPLOYMENT: &str = "flotilla:deployment";
/// Tag key naming the launch batch on instances and volumes.
pub const TAG_BATCH: &str = "flotilla:batch";
/// Tag key naming the role (`binary` or `monitoring`) on instances.
pub const TAG_ROLE: &str = "flotilla:role";

/// What one region holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// Set before the first mutating call in the region.
    pub started: bool,
    pub vpc_id: Option<String>,
    pub internet_gateway_id: Option<String>,
    pub route_table_id: Option<String>,
    /// Availability zone → subnet id.
    #[serde(default)]
    pub subnets: BTreeMap<String, String>,
    pub binary_group_id: Option<String>,
    pub monitoring_group_id: Option<String>,
    /// Architecture → AMI id.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Peering connection to the monitoring region (spoke regions only).
    pub peering_id: Option<String>,
    /// The peering's routes exist on both sides.
    #[serde(default)]
    pub peering_routed: bool,
}

/// One `RunInstances` call's worth of machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    pub region: String,
    pub role: Role,
    pub instance_type: String,
    pub availability_zone: String,
    /// Names in launch-index order.
    pub names: Vec<String>,
}

/// `aws/records.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub bucket: Option<String>,
    pub deployer_ip: Option<Ipv4Addr>,
    pub role_name: Option<String>,
    /// The IAM role's id: the identity keys are `<role id>:<instance id>`, which is what the
    /// role's policy lets each instance read (`${aws:userid}`).
    pub role_id: Option<String>,
    /// Addresses `flotilla authorize` let in to the agent port, besides `deployer_ip`: every
    /// run of `prepare` keeps them in the security groups' rules; `authorize --revoke` removes
    /// them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub authorized: BTreeSet<Ipv4Addr>,
    #[serde(default)]
    pub regions: BTreeMap<String, RegionRecord>,
    #[serde(default)]
    pub batches: Vec<Batch>,
}

impl Records {
    pub fn region(&mut self, region: &str) -> &mut RegionRecord {
        self.regions.entry(region.to_owned()).or_default()
    }

    /// The machine name of an instance of `batch` at `launch_index`.
    pub fn name_of(&self, batch: &str, launch_index: i32) -> Option<(&Batch, &str)> {
        let batch = self.batches.iter().find(|b| b.id == batch)?;
        let name = batch.names.get(usize::try_from(launch_index).ok()?)?;
        Some((batch, name.as_str()))
    }
}
