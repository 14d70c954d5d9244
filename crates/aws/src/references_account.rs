//! Images, IAM policies and KMS keys named by the spec (see `references.rs`).

use std::path::Path;

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceProblem};

use crate::clients::Clients;

pub(super) async fn check(
    _clients: &Clients,
    _home: &Path,
    _plan: &DeploymentPlan,
    _progress: &dyn Progress,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    Ok(Vec::new())
}
