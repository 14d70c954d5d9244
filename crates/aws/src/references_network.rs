//! Existing VPCs, subnets and security groups named by the spec's `network`, and whether the
//! monitoring machine reaches every machine's metrics port (see `references.rs`; the rules are
//! in `existing.rs`).

use std::collections::BTreeMap;

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceProblem};

use crate::clients::Clients;
use crate::existing;

/// The problems, and group name → the zones its subnets cover (where it may launch).
pub(super) async fn check(
    clients: &Clients,
    plan: &DeploymentPlan,
    _progress: &dyn Progress,
) -> Result<(Vec<ReferenceProblem>, BTreeMap<String, Vec<String>>), ProviderError> {
    if existing::regions_with_networks(plan).is_empty() {
        return Ok((Vec::new(), BTreeMap::new()));
    }
    let snapshots = existing::read(clients, plan).await?;
    let (problems, resolved) = existing::evaluate(plan, &snapshots);
    let zones = resolved
        .groups
        .iter()
        .map(|(name, network)| (name.clone(), network.subnets.keys().cloned().collect()))
        .collect();
    Ok((problems, zones))
}
