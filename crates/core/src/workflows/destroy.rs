//! `destroy`: stop every machine, remove every resource, mark the tag destroyed. Idempotent:
//! after a crash, run it again.

use crate::error::CoreError;
use crate::progress::Progress;
use crate::provider::{Provider, ProviderError};
use crate::state::{Deployment, DeploymentStatus, Home};

/// What `destroy` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyOutcome {
    Destroyed,
    /// It had been destroyed before; nothing was done.
    AlreadyDestroyed,
}

pub async fn destroy<P: Provider>(
    home: &Home,
    tag: &str,
    progress: &dyn Progress,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<DestroyOutcome, CoreError> {
    let deployment = home.open(tag)?;
    if deployment.metadata()?.status == DeploymentStatus::Destroyed {
        return Ok(DestroyOutcome::AlreadyDestroyed);
    }
    let _lock = deployment.lock()?;
    deployment.set_status(DeploymentStatus::Destroying)?;
    let provider = make_provider(&deployment)?;
    provider.destroy(progress).await?;
    deployment.forget_credentials()?;
    deployment.set_status(DeploymentStatus::Destroyed)?;
    Ok(DestroyOutcome::Destroyed)
}
