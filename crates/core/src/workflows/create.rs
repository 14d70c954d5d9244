//! `create`: make the fleet a spec describes exist and run, converging on re-runs.
//!
//! Steps, each safe to repeat after a crash at any point:
//! 1. check the files the spec names (no side effect before this passes);
//! 2. record the deployment (metadata, status `creating`) and its CA, before the first
//!    mutating call;
//! 3. provider: prepare shared resources, launch or adopt machines;
//! 4. identities for the machines whose agents do not answer yet;
//! 5. hosts.yaml, artifacts and manifests, published once per digest;
//! 6. every binary machine's agent installs its version and holds it to the health deadline;
//! 7. status `created`.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_spec::{ProviderKind, SpecDocument};
use futures_util::StreamExt;

use super::{
    MANIFESTS_FILE, build_manifests, check_files, connect, install_identities, save_spec,
    saved_manifests, wait_for_agents,
};
use crate::error::{CoreError, MachineFailure};
use crate::plan::DeploymentPlan;
use crate::progress::Progress;
use crate::provider::{Provider, ProviderError};
use crate::rollout::apply_and_wait;
use crate::state::{Deployment, DeploymentStatus, Home, Metadata, unix_now};
use crate::workflows::StatusRow;

/// What `create` needs besides the provider.
#[derive(Debug)]
pub struct CreateRequest<'a> {
    pub document: &'a SpecDocument,
    pub provider: ProviderKind,
    /// Re-create a destroyed tag.
    pub force: bool,
    /// Machines handled at once.
    pub concurrency: usize,
    /// How long agents have to answer after launch.
    pub agent_timeout: Duration,
    /// The directory relative spec paths start from.
    pub cwd: PathBuf,
}

/// Creates (or converges) the deployment; returns every machine's status.
pub async fn create<P: Provider>(
    home: &Home,
    request: CreateRequest<'_>,
    progress: &dyn Progress,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<Vec<StatusRow>, CoreError> {
    let document = request.document;
    let spec = &document.spec;
    check_files(document, &request.cwd)?;
    let plan = DeploymentPlan::from_spec(spec, request.provider);

    let now = unix_now();
    let (deployment, _lock) = home.create_or_adopt(
        Metadata {
            tag: spec.tag.clone(),
            provider: request.provider,
            created_at: now,
            updated_at: now,
            regions: plan.regions(),
            instance_count: plan.binary_count(),
            status: DeploymentStatus::Creating,
        },
        request.force,
    )?;
    let ca = deployment.certificate_authority()?;
    deployment.client_identity(&ca)?;
    let provider = make_provider(&deployment)?;

    provider.prepare(&plan, progress).await?;
    let machines = provider.launch(&plan, progress).await?;
    let client = connect(&deployment, &machines)?;

    // Agents that already answer (a re-run) keep their identity; the others get one.
    let mut waiting = Vec::new();
    {
        let mut probes = futures_util::stream::iter(machines.iter().map(|machine| {
            let client = &client;
            async move { (machine, client.status(&machine.name).await.is_ok()) }
        }))
        .buffer_unordered(request.concurrency.max(1));
        while let Some((machine, answers)) = probes.next().await {
            if !answers {
                waiting.push(machine.clone());
            }
        }
    }
    install_identities(&provider, &ca, &spec.tag, &waiting, request.concurrency, progress).await?;
    wait_for_agents(&client, &machines, request.agent_timeout, request.concurrency, progress)
        .await?;

    let manifests =
        build_manifests(&provider, &deployment, spec, &request.cwd, &machines, progress).await?;
    let mut recorded = saved_manifests(&deployment)?;
    let stage = progress.stage("starting binaries", manifests.len() as u64);
    let mut failures: Vec<MachineFailure> = Vec::new();
    {
        let mut rollouts = futures_util::stream::iter(manifests.iter().map(|(name, manifest)| {
            let client = &client;
            async move { (name, manifest, apply_and_wait(client, name, manifest).await) }
        }))
        .buffer_unordered(request.concurrency.max(1));
        while let Some((name, manifest, result)) = rollouts.next().await {
            stage.advance(1);
            match result {
                Ok(_) => {
                    recorded.insert(name.clone(), manifest.clone());
                }
                Err(failure) => failures.push(failure),
            }
        }
    }
    drop(stage);
    recorded.retain(|name, _| manifests.contains_key(name));
    deployment.write_json(MANIFESTS_FILE, &recorded)?;

    if !failures.is_empty() {
        failures.sort_by(|a, b| a.name.cmp(&b.name));
        let count = failures.len();
        return Err(CoreError::Failed {
            summary: format!(
                "{count} of {} machines did not become healthy; fix the spec and run create again, or destroy",
                manifests.len()
            ),
            failures,
        });
    }
    save_spec(&deployment, document)?;
    deployment.set_status(DeploymentStatus::Created)?;
    super::status::rows(&client, &machines, request.concurrency).await
}
