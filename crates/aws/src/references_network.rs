//! Existing VPCs, subnets and security groups named by the spec's `network`, and whether the
//! monitoring machine reaches every machine's metrics port (see `references.rs`; the rules are
//! in `existing.rs`).

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceProblem};

use crate::clients::Clients;
use crate::existing;

pub(super) async fn check(
    clients: &Clients,
    plan: &DeploymentPlan,
    _progress: &dyn Progress,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    if existing::regions_with_networks(plan).is_empty() {
        return Ok(Vec::new());
    }
    let snapshots = existing::read(clients, plan).await?;
    let (problems, _) = existing::evaluate(plan, &snapshots);
    Ok(problems)
}
