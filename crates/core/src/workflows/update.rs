//! `update`: roll a new version out in health-gated batches.
//!
//! Batches run one after another, machines within a batch at once. A batch passes when every
//! machine in it reports the new version healthy. At the first failed batch the update stops:
//! failed machines were already rolled back by their agents, and machines of that batch that
//! succeeded are rolled back to the version they ran before, so the batch ends as it began.
//! Machines already on the new version are left alone (the agent answers `unchanged`).

use std::path::PathBuf;

use flotilla_spec::{Manifest, ProviderKind, SpecDocument};
use futures_util::StreamExt;

use super::{
    MANIFESTS_FILE, build_manifests, check_files, connect, publish_files, save_spec,
    saved_manifests, spec_refusal,
};
use crate::error::{CoreError, MachineFailure};
use crate::progress::{Progress, checkpoints};
use crate::provider::{Provider, ProviderError, Role};
use crate::rollout::{Applied, apply_and_wait, plan_batches};
use crate::state::{Deployment, DeploymentStatus, Home};
use crate::workflows::StatusRow;

#[derive(Debug)]
pub struct UpdateRequest<'a> {
    pub document: &'a SpecDocument,
    /// `--provider`, if given: must match the deployment's.
    pub provider: Option<ProviderKind>,
    /// `--concurrency`: machines per batch, instead of the spec's `update` policy.
    pub batch_size: Option<usize>,
    pub cwd: PathBuf,
}

/// Updates deployment `document.spec.tag` to the spec; returns every machine's status.
pub async fn update<P: Provider>(
    home: &Home,
    request: UpdateRequest<'_>,
    progress: &dyn Progress,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<Vec<StatusRow>, CoreError> {
    let document = request.document;
    let spec = &document.spec;
    check_files(document, &request.cwd)?;
    let deployment = home.open(&spec.tag)?;
    let metadata = deployment.metadata()?;
    let requested = spec.provider_kind(request.provider);
    if requested != metadata.provider {
        return Err(spec_refusal(
            document,
            "provider",
            format!(
                "deployment `{}` runs on the {} provider, this spec says {requested}",
                spec.tag, metadata.provider
            ),
            "use the spec the deployment was created with, or destroy and create it again",
        ));
    }
    match metadata.status {
        DeploymentStatus::Created => {}
        DeploymentStatus::Creating => {
            return Err(CoreError::Refused(format!(
                "deployment `{}` has not finished being created; run `flotilla create` again first",
                spec.tag
            )));
        }
        DeploymentStatus::Destroying | DeploymentStatus::Destroyed => {
            return Err(CoreError::Refused(format!("deployment `{}` was destroyed", spec.tag)));
        }
    }
    let _lock = deployment.lock()?;
    let provider = make_provider(&deployment)?;
    // The shared resources prepare converges (launch templates among them) depend on the
    // capacity of each group and on the account's references (image, network, policies),
    // checked against the account as create checks them, before anything changes.
    let (plan, _survey) =
        super::resolve(document, metadata.provider, &request.cwd, &provider, progress, false)
            .await?;
    // Shared resources converge to the spec too (a changed `ports` reaches the security
    // groups); prepare is idempotent and creates nothing that exists.
    provider.prepare(&plan, progress).await?;
    let machines = provider.machines().await?;

    // Membership cannot change in an update: hosts.yaml would change under running machines.
    let planned: Vec<&str> = plan.machines.iter().map(|m| m.name.as_str()).collect();
    let missing: Vec<&str> =
        planned.iter().copied().filter(|n| !machines.iter().any(|m| m.name == *n)).collect();
    let extra: Vec<&str> =
        machines.iter().map(|m| m.name.as_str()).filter(|n| !planned.contains(n)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut message = String::from("update cannot change which machines exist;");
        if !missing.is_empty() {
            message.push_str(&format!(" not running: {};", missing.join(", ")));
        }
        if !extra.is_empty() {
            message.push_str(&format!(" not in the spec: {};", extra.join(", ")));
        }
        message.push_str(" run `flotilla create` with this spec to add machines, or destroy and create to remove them");
        return Err(CoreError::Refused(message));
    }

    let client = connect(&deployment, &machines)?;
    let files = publish_files(&provider, spec, &request.cwd, progress).await?;
    let manifests =
        build_manifests(&provider, &deployment, spec, &request.cwd, &machines, &files, progress)
            .await?;
    let mut recorded = saved_manifests(&deployment)?;
    let names: Vec<String> =
        machines.iter().filter(|m| m.role == Role::Binary).map(|m| m.name.clone()).collect();
    let batch = request.batch_size.unwrap_or_else(|| spec.update.batch().for_total(names.len()));
    let batches = plan_batches(&names, batch);
    let stage = progress.stage("updating", names.len() as u64);
    let rollout_started = || progress.checkpoint(checkpoints::UPDATE_ROLLOUT_STARTED);
    let no_checkpoint = || {};

    for (number, batch) in batches.iter().enumerate() {
        stage.note(&format!("batch {} of {}", number + 1, batches.len()));
        let results: Vec<(String, Result<Applied, MachineFailure>)> =
            futures_util::stream::iter(batch.iter().map(|name| {
                let client = &client;
                let manifest = &manifests[name];
                let rollout_started = &rollout_started;
                async move {
                    (name.clone(), apply_and_wait(client, name, manifest, rollout_started).await)
                }
            }))
            .buffer_unordered(batch.len().max(1))
            .collect()
            .await;
        stage.advance(batch.len() as u64);
        let mut failures = Vec::new();
        let mut succeeded = Vec::new();
        for (name, result) in results {
            match result {
                Ok(Applied::Updated) => succeeded.push(name),
                Ok(Applied::Unchanged) => {
                    recorded.insert(name.clone(), manifests[&name].clone());
                }
                Err(failure) => failures.push(failure),
            }
        }
        if failures.is_empty() {
            for name in succeeded {
                recorded.insert(name.clone(), manifests[&name].clone());
            }
            deployment.write_json(MANIFESTS_FILE, &recorded)?;
            continue;
        }

        // Roll the rest of the batch back to what it ran before.
        let rollbacks: Vec<(String, Option<Manifest>)> =
            succeeded.iter().map(|name| (name.clone(), recorded.get(name).cloned())).collect();
        let rollback_results: Vec<(String, Result<(), MachineFailure>)> =
            futures_util::stream::iter(rollbacks.into_iter().map(|(name, previous)| {
                let client = &client;
                let no_checkpoint = &no_checkpoint;
                async move {
                    let result = match previous {
                        Some(previous) => {
                            apply_and_wait(client, &name, &previous, no_checkpoint).await.map(drop)
                        }
                        None => Err(MachineFailure {
                            name: name.clone(),
                            reason: "no record of its previous version; it keeps the new one"
                                .into(),
                            log_tail: Vec::new(),
                            rolled_back: false,
                        }),
                    };
                    (name, result)
                }
            }))
            .buffer_unordered(batch.len().max(1))
            .collect()
            .await;
        for (name, result) in rollback_results {
            if let Err(mut failure) = result {
                failure.reason = format!("rolling back after the batch failed: {}", failure.reason);
                failures.push(failure);
            } else {
                tracing::info!(machine = %name, "rolled back to its previous version");
            }
        }
        deployment.write_json(MANIFESTS_FILE, &recorded)?;
        failures.sort_by(|a, b| a.name.cmp(&b.name));
        let failed: Vec<&str> = failures.iter().map(|f| f.name.as_str()).collect();
        return Err(CoreError::Failed {
            summary: format!(
                "update stopped at batch {} of {}: {} failed; that batch was rolled back and later batches were not touched",
                number + 1,
                batches.len(),
                failed.join(", ")
            ),
            failures,
        });
    }
    drop(stage);
    save_spec(&deployment, document)?;
    let rows = super::status::rows(&client, &machines, super::DEFAULT_CONCURRENCY).await?;
    let mut metadata = deployment.metadata()?;
    metadata.usd_per_hour = super::status::price_per_hour(&rows);
    deployment.write_metadata(&metadata)?;
    Ok(rows)
}
