//! Choosing a provider at run time: one enum over the concrete providers.

use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{LocalArtifact, Machine, Provider, ProviderError};
use flotilla_core::state::Deployment;
use flotilla_local::LocalProvider;
use flotilla_spec::ProviderKind;
use flotilla_spec::identity::IdentityBundle;

/// The provider a deployment uses.
#[derive(Debug)]
pub enum AnyProvider {
    Local(LocalProvider),
}

/// Builds the provider of `kind` for `deployment`.
pub fn make(kind: ProviderKind, deployment: &Deployment) -> Result<AnyProvider, ProviderError> {
    match kind {
        ProviderKind::Local => {
            let program = std::env::current_exe().map_err(|e| {
                ProviderError::with_source("cannot find the flotilla executable to start agents", e)
            })?;
            let lease_dir = flotilla_local::lease::default_lease_dir();
            Ok(AnyProvider::Local(LocalProvider::new(deployment, program, lease_dir)?))
        }
        ProviderKind::Aws => Err(ProviderError::new(
            "this build of flotilla has no AWS provider yet; run the fleet on this machine with \
             `--provider local` (or `provider: local` in the spec)",
        )),
    }
}

impl Provider for AnyProvider {
    async fn prepare(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.prepare(plan, progress).await,
        }
    }

    async fn launch(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.launch(plan, progress).await,
        }
    }

    async fn install_identity(
        &self,
        machine: &Machine,
        bundle: &IdentityBundle,
    ) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.install_identity(machine, bundle).await,
        }
    }

    async fn publish(&self, artifact: &LocalArtifact) -> Result<String, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.publish(artifact).await,
        }
    }

    async fn machines(&self) -> Result<Vec<Machine>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.machines().await,
        }
    }

    async fn destroy(&self, progress: &dyn Progress) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.destroy(progress).await,
        }
    }
}
