//! The provider's journal in the deployment's state directory (`aws/records.json`).
//!
//! Tags on AWS resources are the truth; the journal only says what this machine has started,
//! so a first `create` can skip looking for resources that cannot exist yet, and which instance
//! is which machine: a launched instance's name is written here *before* the instance is tagged
//! with it ([`crate::tags::TAG_MACHINE`]), and a region is marked `launching` before its first
//! fleet request, so a re-run after a crash knows where to look for instances of its groups
//! that were never named.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use flotilla_core::provider::Role;

/// What one region holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// Set before the first mutating call in the region.
    pub started: bool,
    /// The VPC flotilla made in the region.
    pub vpc_id: Option<String>,
    /// The user's VPC (the spec's `network`) the region's machines launch into, when it is not
    /// flotilla's: recorded so that a spec naming another VPC later is refused while machines
    /// run here (a machine cannot move between VPCs); never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_vpc_id: Option<String>,
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
    /// Launch templates: name → id.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// Set before the first fleet request in the region: instances of the deployment may
    /// exist there.
    #[serde(default)]
    pub launching: bool,
}

/// Which instance a machine is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub region: String,
    pub role: Role,
    /// The capacity group (instance entry, or `monitoring`).
    pub group: String,
    pub instance_id: String,
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
    /// Managed policies (ARNs) flotilla attached to the role for the spec's `iam_policies`,
    /// written before each attach: `prepare` detaches those the spec no longer names, and only
    /// those (a policy someone else attached stays).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub attached_policies: BTreeSet<String>,
    #[serde(default)]
    pub regions: BTreeMap<String, RegionRecord>,
    /// Machine name → its instance.
    #[serde(default)]
    pub machines: BTreeMap<String, MachineRecord>,
    /// Instances a new instance was launched beside, under the same name (a rebalance
    /// recommendation, a scheduled retirement): no machine's any more, adopted by no name and
    /// listed by no `machines()`, until they are drained and retired.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retiring: BTreeSet<String>,
}

impl Records {
    pub fn region(&mut self, region: &str) -> &mut RegionRecord {
        self.regions.entry(region.to_owned()).or_default()
    }

    /// The machine instance `instance_id` is, by the journal.
    pub fn name_of(&self, instance_id: &str) -> Option<&str> {
        self.machines
            .iter()
            .find(|(_, machine)| machine.instance_id == instance_id)
            .map(|(name, _)| name.as_str())
    }
}
