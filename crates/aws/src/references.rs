//! The spec's references to what the account already has, checked read-only before anything
//! is made (see `Surveyor::check_references`). Two halves, each with its own module:
//! `references_account.rs` (images, IAM policies, KMS keys) and `references_network.rs`
//! (VPCs, subnets, security groups, and whether the monitoring machine reaches every machine).

use std::path::Path;

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceCheck};

use crate::clients::Clients;

#[path = "references_account.rs"]
mod account;
#[path = "references_network.rs"]
mod network;

/// Every problem of every reference `plan` makes, at once, in the order of the spec's fields,
/// and the zones of the groups in an existing network (those its subnets cover).
pub async fn check(
    clients: &Clients,
    home: &Path,
    plan: &DeploymentPlan,
    progress: &dyn Progress,
) -> Result<ReferenceCheck, ProviderError> {
    let (mut problems, (network, zones)) = tokio::try_join!(
        account::check(clients, home, plan, progress),
        network::check(clients, plan, progress),
    )?;
    problems.extend(network);
    problems.sort_by(|a, b| a.field.cmp(&b.field));
    Ok(ReferenceCheck { problems, zones })
}
