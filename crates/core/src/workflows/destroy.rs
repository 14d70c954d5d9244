//! `destroy`: stop every machine, remove every resource, mark the tag destroyed. Idempotent:
//! after a crash, run it again.
//!
//! It works from whatever is readable: a deployment whose metadata is corrupt or missing is
//! destroyed from its directory (and, on AWS, from its resources' tags), with the provider
//! named by `--provider`, the metadata, or the provider records in the directory.

use flotilla_spec::ProviderKind;

use crate::error::CoreError;
use crate::progress::{Progress, checkpoints};
use crate::provider::{HeldHost, Provider, ProviderError};
use crate::state::{Deployment, DeploymentStatus, Home, Metadata, unix_now};

/// What `destroy` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestroyOutcome {
    Destroyed,
    /// It had been destroyed before; nothing was done.
    AlreadyDestroyed,
    /// Everything went but these dedicated hosts, which may not be released yet: the
    /// deployment stays `destroying` (its credentials kept), and `destroy` again after each
    /// host's time releases it.
    HostsHeld(Vec<HeldHost>),
}

/// Destroys deployment `tag`. `provider` (`--provider`) names the provider when the state
/// cannot (metadata and records lost); it must match the metadata when both are there.
pub async fn destroy<P: Provider>(
    home: &Home,
    tag: &str,
    provider: Option<ProviderKind>,
    progress: &dyn Progress,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<DestroyOutcome, CoreError> {
    let (deployment, metadata, kind) = home.recover(tag, provider)?;
    if let (Some(metadata), Some(asked)) = (&metadata, provider)
        && metadata.provider != asked
    {
        return Err(CoreError::Refused(format!(
            "deployment `{tag}` was created with the {} provider, not {asked}",
            metadata.provider
        )));
    }
    if metadata.as_ref().is_some_and(|m| m.status == DeploymentStatus::Destroyed) {
        return Ok(DestroyOutcome::AlreadyDestroyed);
    }
    let _lock = deployment.lock()?;
    // Metadata that could not be read is written afresh, so the deployment is listed as being
    // destroyed and a crash from here on is finished by the next destroy.
    let now = unix_now();
    let metadata = metadata.unwrap_or(Metadata {
        tag: tag.to_owned(),
        provider: kind,
        created_at: now,
        updated_at: now,
        regions: Vec::new(),
        instance_count: 0,
        status: DeploymentStatus::Destroying,
        usd_per_hour: None,
    });
    deployment.write_metadata(&Metadata {
        status: DeploymentStatus::Destroying,
        updated_at: now,
        ..metadata
    })?;
    progress.checkpoint(checkpoints::DESTROY_MARKED);
    let provider = make_provider(&deployment)?;
    let teardown = provider.destroy(progress).await?;
    if !teardown.held_hosts.is_empty() {
        return Ok(DestroyOutcome::HostsHeld(teardown.held_hosts));
    }
    deployment.forget_credentials()?;
    deployment.set_status(DeploymentStatus::Destroyed)?;
    Ok(DestroyOutcome::Destroyed)
}
