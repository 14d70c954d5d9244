//! `create`: make the fleet a spec describes exist and run, converging on re-runs.
//!
//! Steps, each safe to repeat after a crash at any point:
//! 1. check the files the spec names (no side effect before this passes);
//! 2. record the deployment (metadata, status `creating`) and its CA, before the first
//!    mutating call;
//! 3. provider: prepare shared resources, then launch or adopt machines while the spec's
//!    binaries and configs are published (once per digest);
//! 4. an identity for every machine, while hosts.yaml (which names every machine's address)
//!    is published and the manifests are built;
//! 5. as soon as its agent answers, each binary machine installs its version and holds it to
//!    the health deadline;
//! 6. machines the deployment has but the spec no longer names (a re-run after `count` shrank)
//!    are drained and retired, as `update` does;
//! 7. status `created`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use flotilla_spec::{ProviderKind, SpecDocument};
use futures_util::StreamExt;

use super::{
    Departures, MANIFESTS_FILE, build_manifests, connect, install_identities, publish_files,
    save_spec, saved_manifests, wait_for_agent,
};
use crate::error::{CoreError, MachineFailure};
use crate::progress::{Progress, checkpoints};
use crate::provider::{Machine, Provider, ProviderError, Surveyor};
use crate::rollout::{apply_and_wait, deadline_after};
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

/// Creates (or converges) the deployment; returns every machine's status. `surveyor` reads
/// the provider's catalog and prices before anything is made (it needs no deployment).
pub async fn create<P: Provider>(
    home: &Home,
    request: CreateRequest<'_>,
    progress: &dyn Progress,
    surveyor: &impl Surveyor,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<Vec<StatusRow>, CoreError> {
    let document = request.document;
    let spec = &document.spec;
    // Every check that needs no change anywhere: the machine limit of `--provider`, the files,
    // the binaries' architectures, and the capacity keys against the provider's catalog.
    let (plan, survey) =
        super::resolve(document, request.provider, &request.cwd, surveyor, progress, false).await?;
    progress.notice(&super::plan_summary(&super::estimate(&plan, &survey)));

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
            usd_per_hour: None,
        },
        request.force,
    )?;
    let ca = deployment.certificate_authority()?;
    deployment.client_identity(&ca)?;
    progress.checkpoint(checkpoints::CREATE_RECORDED);
    let provider = make_provider(&deployment)?;

    provider.prepare(&plan, progress).await?;
    // The spec's files need no machine: they are published while instances launch.
    let (machines, files) = tokio::try_join!(
        async { provider.launch(&plan, progress).await.map_err(CoreError::from) },
        publish_files(&provider, spec, &request.cwd, progress),
    )?;
    progress.checkpoint(checkpoints::CREATE_LAUNCHED);
    let client = connect(&deployment, &machines)?;

    // hosts.yaml (it names every address) is published while the agents get their identities.
    let (manifests, ()) = tokio::try_join!(
        build_manifests(&provider, &deployment, spec, &request.cwd, &machines, &files, progress),
        // Every machine gets one, also on a re-run: no probe of agents that are not up yet
        // (on a cloud, a connect timeout each). A running agent keeps the identity it loaded;
        // the new one, from the same CA for the same name and addresses, serves its restarts.
        install_identities(&provider, &ca, &spec.tag, &machines, request.concurrency, progress),
    )?;

    // Each machine goes on as soon as its agent answers: none waits for the slowest agent.
    let mut recorded = saved_manifests(&deployment)?;
    let agents = progress.stage("waiting for agents", machines.len() as u64);
    let binaries = progress.stage("starting binaries", manifests.len() as u64);
    let deadline = deadline_after(Instant::now(), request.agent_timeout);
    let mut failures: Vec<MachineFailure> = Vec::new();
    let departures = Departures::default();
    let rollout_started = || progress.checkpoint(checkpoints::CREATE_ROLLOUT_STARTED);
    {
        let departures = &departures;
        let rollout_started = &rollout_started;
        let mut runs = futures_util::stream::iter(machines.iter().map(|machine| {
            let (provider, client, agents, binaries) = (&provider, &client, &agents, &binaries);
            let manifest = manifests.get(&machine.name);
            async move {
                wait_for_agent(
                    provider,
                    client,
                    machine,
                    deadline,
                    request.agent_timeout,
                    departures,
                )
                .await?;
                agents.advance(1);
                let Some(manifest) = manifest else {
                    return Ok(None);
                };
                let result = apply_and_wait(client, &machine.name, manifest, rollout_started).await;
                binaries.advance(1);
                result.map(|_| Some((machine.name.clone(), manifest.clone())))
            }
        }))
        .buffer_unordered(request.concurrency.max(1));
        let collect = async {
            while let Some(result) = runs.next().await {
                match result {
                    Ok(Some((name, manifest))) => {
                        recorded.insert(name, manifest);
                    }
                    Ok(None) => {}
                    Err(failure) => failures.push(failure),
                }
            }
        };
        // The provider is asked about machines whose agents have not answered until all have.
        tokio::select! {
            () = collect => {}
            () = departures.watch(&provider) => {}
        }
    }
    drop(binaries);
    drop(agents);
    recorded.retain(|name, _| manifests.contains_key(name));
    deployment.write_json(MANIFESTS_FILE, &recorded)?;
    super::save_machine_ids(&deployment, &machines, &recorded)?;

    if !failures.is_empty() {
        failures.sort_by(|a, b| a.name.cmp(&b.name));
        let count = failures.len();
        return Err(CoreError::Failed {
            summary: format!(
                "{count} of {} machines did not become healthy; fix the spec and run create again, or destroy",
                machines.len()
            ),
            failures,
        });
    }
    // A re-run with a spec that names fewer machines converges too: the others have their new
    // hosts.yaml now, so the machines the spec no longer names are drained and retired.
    let removed: Vec<Machine> = provider
        .machines()
        .await?
        .into_iter()
        .filter(|m| !machines.iter().any(|kept| kept.name == m.name))
        .collect();
    if !removed.is_empty() {
        let names: Vec<&str> = removed.iter().map(|m| m.name.as_str()).collect();
        progress
            .notice(&format!("removing machines the spec no longer names: {}", names.join(", ")));
        let client = connect(&deployment, &removed)?;
        super::update::drain(&client, &removed, progress).await;
        provider.retire(&removed, progress).await?;
        recorded.retain(|name, _| !removed.iter().any(|m| &m.name == name));
        deployment.write_json(MANIFESTS_FILE, &recorded)?;
    }
    save_spec(&deployment, document, &request.cwd)?;
    let rows = super::status::rows(&client, &machines, request.concurrency).await?;
    let mut metadata = deployment.set_status(DeploymentStatus::Created)?;
    metadata.usd_per_hour = super::status::price_per_hour(&rows);
    deployment.write_metadata(&metadata)?;
    Ok(rows)
}
