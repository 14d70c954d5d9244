//! Existing VPCs, subnets and security groups named by the spec's `network`, and whether the
//! monitoring machine reaches every machine's metrics port (see `references.rs`).

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceProblem};

use crate::clients::Clients;

pub(super) async fn check(
    _clients: &Clients,
    _plan: &DeploymentPlan,
    _progress: &dyn Progress,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    Ok(Vec::new())
}
