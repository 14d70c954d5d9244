//! `update`: bring a deployment to a spec: membership first, then versions in health-gated
//! batches.
//!
//! Steps, each safe to repeat after a crash at any point:
//! 1. check the spec and the account as `create` does; converge the shared resources;
//! 2. compare the spec's machines with the provider's ([`MembershipChange`]): names are stable,
//!    so growing `count` from 5 to 8 adds `worker-5` … `worker-7` and shrinking removes the
//!    highest indexes. `--dry-run` stops here and reports what would change;
//! 3. machines the spec adds are launched (through the capacity policy) and get identities, as
//!    at `create`; so does any machine that never ran a version (a crash after its launch);
//! 4. hosts.yaml is built from the spec's machines only and published with the files;
//! 5. new machines install their version (they serve nothing yet, so all at once);
//! 6. the machines that stay get their manifests in batches. A machine whose version is
//!    unchanged but whose hosts.yaml differs gets a hosts-only change, which its agent applies
//!    in place as `on_hosts_change` says (a restart, a signal, or nothing). At the first failed
//!    batch the update stops: failed machines were already rolled back by their agents, and
//!    machines of that batch that succeeded are rolled back to what they ran before;
//! 7. machines the spec no longer names are drained (their `stopping` hooks, the binary stopped,
//!    DNS records and volumes released) and retired by the provider.
//!
//! Before each batch of step 6 the provider's health service is asked about the batch's
//! regions, and an open issue there holds the update ([`crate::health`]).
//!
//! Machines already on their manifest are left alone (the agent answers `unchanged`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_spec::{Manifest, ProviderKind, SpecDocument};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use super::{
    Departures, MANIFESTS_FILE, build_manifests, check_files, connect, install_identities,
    publish_files, save_spec, saved_manifests, spec_refusal, wait_for_agent,
};
use crate::client::AgentClient;
use crate::error::{CoreError, MachineFailure};
use crate::health::{BatchHealthCheck, HealthGate};
use crate::plan::DeploymentPlan;
use crate::progress::{Progress, checkpoints};
use crate::provider::{Machine, MachineState, Provider, ProviderError, Role};
use crate::rollout::{Applied, apply_and_wait, deadline_after, plan_batches};
use crate::state::{Deployment, DeploymentStatus, Home};
use crate::workflows::StatusRow;

#[derive(Debug)]
pub struct UpdateRequest<'a> {
    pub document: &'a SpecDocument,
    /// `--provider`, if given: must match the deployment's.
    pub provider: Option<ProviderKind>,
    /// `--concurrency`: machines per batch, instead of the spec's `update` policy.
    pub batch_size: Option<usize>,
    /// `--dry-run`: report what would change, change nothing.
    pub dry_run: bool,
    /// How long the agents of machines the spec adds have to answer after launch.
    pub agent_timeout: Duration,
    pub cwd: PathBuf,
    /// The document's plan, resolved against the account by this process already (`watch`
    /// does it once in its life, not once per replacement) and prepared by the caller just
    /// before: converge neither checks the account again nor prepares. `None`: it does both.
    pub prepared: Option<&'a DeploymentPlan>,
    /// Whether the cloud's health service is asked before each batch (`--ignore-health`
    /// says no); see [`crate::health`].
    pub health: HealthGate,
}

/// What an update did, or with `--dry-run` would do.
#[derive(Debug)]
pub enum UpdateOutcome {
    /// `--dry-run`: the changes, nothing done.
    Planned(MembershipChange),
    /// Every machine's status after the update, and the membership change it made.
    Done { rows: Vec<StatusRow>, change: MembershipChange },
}

/// How the spec's machines differ from the deployment's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MembershipChange {
    /// Named by the spec, not running: launched.
    pub added: Vec<String>,
    /// Running, not named by the spec: drained and retired.
    pub removed: Vec<String>,
    /// In both; each gets the new hosts.yaml when membership changes.
    pub kept: Vec<String>,
}

impl MembershipChange {
    /// Compares the machines a plan names (in plan order) with those that exist (removed ones
    /// come in the provider's order).
    pub fn between(planned: &[String], existing: &[Machine]) -> MembershipChange {
        let mut change = MembershipChange::default();
        for name in planned {
            if existing.iter().any(|m| &m.name == name) {
                change.kept.push(name.clone());
            } else {
                change.added.push(name.clone());
            }
        }
        for machine in existing {
            if !planned.contains(&machine.name) && !change.removed.contains(&machine.name) {
                change.removed.push(machine.name.clone());
            }
        }
        change
    }

    pub fn changes_membership(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }

    /// One line for the person at the terminal.
    pub fn summary(&self) -> String {
        if !self.changes_membership() {
            return format!("membership unchanged ({} machines)", self.kept.len());
        }
        let list = |names: &[String]| {
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        };
        format!(
            "adding {} ({}), removing {} ({}), keeping {}",
            self.added.len(),
            list(&self.added),
            self.removed.len(),
            list(&self.removed),
            self.kept.len()
        )
    }
}

/// Updates deployment `document.spec.tag` to the spec.
pub async fn update<P: Provider>(
    home: &Home,
    request: UpdateRequest<'_>,
    progress: &dyn Progress,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<UpdateOutcome, CoreError> {
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
    converge(&deployment, metadata.provider, &request, progress, &provider).await
}

/// Steps 2 to 7 of the module documentation, for a caller that holds the deployment's lock
/// (`update`, and `watch` when it replaces machines).
pub(crate) async fn converge<P: Provider>(
    deployment: &Deployment,
    provider_kind: ProviderKind,
    request: &UpdateRequest<'_>,
    progress: &dyn Progress,
    provider: &P,
) -> Result<UpdateOutcome, CoreError> {
    let document = request.document;
    let spec = &document.spec;
    let deployment = deployment.clone();
    // The shared resources prepare converges (launch templates among them) depend on the
    // capacity of each group and on the account's references (image, network, policies),
    // checked against the account as create checks them, before anything changes.
    let plan = match request.prepared {
        Some(plan) => plan.clone(),
        None => {
            super::resolve(document, provider_kind, &request.cwd, provider, progress, false)
                .await?
                .0
        }
    };
    let existing = provider.machines().await?;
    let planned: Vec<String> = plan.machines.iter().map(|m| m.name.clone()).collect();
    let change = MembershipChange::between(&planned, &existing);
    if request.dry_run {
        return Ok(UpdateOutcome::Planned(change));
    }
    progress.notice(&change.summary());
    // Shared resources converge to the spec too (a changed `ports` reaches the security
    // groups); prepare is idempotent and creates nothing that exists.
    if request.prepared.is_none() {
        provider.prepare(&plan, progress).await?;
    }

    let mut recorded = saved_manifests(&deployment)?;
    let (machines, files) = tokio::try_join!(
        async {
            // A machine still pending (launched by a command that crashed before it ran) has
            // no address yet: launch adopts it and waits until it runs, as for an added one.
            if change.added.is_empty() && all_running(&plan, &existing) {
                Ok(plan_machines(&plan, &existing))
            } else {
                provider.launch(&plan, progress).await.map_err(CoreError::from)
            }
        },
        publish_files(provider, spec, &request.cwd, progress),
    )?;
    progress.checkpoint(checkpoints::UPDATE_LAUNCHED);
    // A machine that never ran a version may never have had its identity either (a crash
    // between its launch and its identity): it is handled as a new one, as is a name whose
    // machine is not the one its manifest was recorded on.
    let ids = super::saved_machine_ids(&deployment)?;
    let fresh: Vec<String> = machines
        .iter()
        .filter(|m| m.role == Role::Binary)
        .filter(|m| {
            change.added.contains(&m.name)
                || !recorded.contains_key(&m.name)
                || ids.get(&m.name).is_some_and(|id| id != &m.id)
        })
        .map(|m| m.name.clone())
        .collect();
    let removed: Vec<Machine> =
        existing.iter().filter(|m| change.removed.contains(&m.name)).cloned().collect();
    let everyone: Vec<Machine> = machines.iter().chain(removed.iter()).cloned().collect();
    let client = connect(&deployment, &everyone)?;
    let new_machines: Vec<Machine> = machines
        .iter()
        .filter(|m| {
            change.added.contains(&m.name) || (m.role == Role::Binary && fresh.contains(&m.name))
        })
        .cloned()
        .collect();
    if !new_machines.is_empty() {
        let ca = deployment.certificate_authority()?;
        install_identities(
            provider,
            &ca,
            &spec.tag,
            &new_machines,
            super::DEFAULT_CONCURRENCY,
            progress,
        )
        .await?;
    }
    let manifests =
        build_manifests(provider, &deployment, spec, &request.cwd, &machines, &files, progress)
            .await?;

    // New machines first: they serve nothing yet, so they start all at once.
    if !new_machines.is_empty() {
        start_new_machines(
            provider,
            &client,
            &new_machines,
            &manifests,
            request.agent_timeout,
            &mut recorded,
            progress,
        )
        .await?;
        deployment.write_json(MANIFESTS_FILE, &recorded)?;
    }

    // Then the machines that stay, in batches.
    let names: Vec<String> = machines
        .iter()
        .filter(|m| m.role == Role::Binary && !new_machines.iter().any(|n| n.name == m.name))
        .map(|m| m.name.clone())
        .collect();
    let mut health = BatchHealthCheck::new(provider, request.health, &machines);
    roll_out_batches(
        &deployment,
        &client,
        &names,
        &manifests,
        &mut recorded,
        (request, progress),
        &mut health,
    )
    .await?;

    // The monitoring machine after them: its targets carry every machine's new version. New,
    // it started with the new machines; its Prometheus rereads targets without a restart.
    let monitoring = machines
        .iter()
        .filter(|m| m.role == Role::Monitoring && !new_machines.iter().any(|n| n.name == m.name));
    for machine in monitoring {
        let Some(manifest) = manifests.get(&machine.name) else {
            continue;
        };
        match apply_and_wait(&client, &machine.name, manifest, &|| {}).await {
            Ok(_) => {
                recorded.insert(machine.name.clone(), manifest.clone());
                deployment.write_json(MANIFESTS_FILE, &recorded)?;
            }
            Err(failure) => {
                return Err(CoreError::Failed {
                    summary: "the monitoring machine did not take its new services; the fleet's machines are updated: run update again".to_owned(),
                    failures: vec![failure],
                });
            }
        }
    }

    // Last, the machines the spec no longer names.
    if !removed.is_empty() {
        drain(&client, &removed, progress).await;
        progress.checkpoint(checkpoints::UPDATE_DRAINED);
        let stage = progress.stage("retiring removed machines", removed.len() as u64);
        provider.retire(&removed, progress).await?;
        stage.advance(removed.len() as u64);
        drop(stage);
        recorded.retain(|name, _| !change.removed.contains(name));
        deployment.write_json(MANIFESTS_FILE, &recorded)?;
    }

    super::save_machine_ids(&deployment, &machines, &recorded)?;
    save_spec(&deployment, document, &request.cwd)?;
    let rows = super::status::rows(&client, &machines, super::DEFAULT_CONCURRENCY).await?;
    let mut metadata = deployment.metadata()?;
    metadata.usd_per_hour = super::status::price_per_hour(&rows);
    metadata.instance_count = plan.binary_count();
    deployment.write_metadata(&metadata)?;
    Ok(UpdateOutcome::Done { rows, change })
}

/// The machines of `plan` among those that exist, in plan order.
fn plan_machines(plan: &DeploymentPlan, existing: &[Machine]) -> Vec<Machine> {
    plan.machines
        .iter()
        .filter_map(|planned| existing.iter().find(|m| m.name == planned.name).cloned())
        .collect()
}

/// Whether every machine of `plan` exists and runs.
fn all_running(plan: &DeploymentPlan, existing: &[Machine]) -> bool {
    plan.machines.iter().all(|planned| {
        existing.iter().any(|m| m.name == planned.name && m.state == MachineState::Running)
    })
}

/// Waits for each new machine's agent and installs its version, all at once; every failure is
/// reported together.
async fn start_new_machines<P: Provider>(
    provider: &P,
    client: &AgentClient,
    machines: &[Machine],
    manifests: &BTreeMap<String, Manifest>,
    agent_timeout: Duration,
    recorded: &mut BTreeMap<String, Manifest>,
    progress: &dyn Progress,
) -> Result<(), CoreError> {
    let stage = progress.stage("starting new machines", machines.len() as u64);
    let deadline = deadline_after(Instant::now(), agent_timeout);
    let departures = Departures::default();
    let mut failures: Vec<MachineFailure> = Vec::new();
    let no_checkpoint = || {};
    {
        let (departures, no_checkpoint, stage) = (&departures, &no_checkpoint, &stage);
        let mut runs = futures_util::stream::iter(machines.iter().map(|machine| async move {
            wait_for_agent(provider, client, machine, deadline, agent_timeout, departures).await?;
            let Some(manifest) = manifests.get(&machine.name) else {
                stage.advance(1);
                return Ok(None);
            };
            let result = apply_and_wait(client, &machine.name, manifest, no_checkpoint).await;
            stage.advance(1);
            result.map(|_| Some((machine.name.clone(), manifest.clone())))
        }))
        .buffer_unordered(super::DEFAULT_CONCURRENCY);
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
        tokio::select! {
            () = collect => {}
            () = departures.watch(provider) => {}
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort_by(|a, b| a.name.cmp(&b.name));
    Err(CoreError::Failed {
        summary: format!(
            "{} of {} new machines did not become healthy; the machines already running were not touched: fix the spec and run update again",
            failures.len(),
            machines.len()
        ),
        failures,
    })
}

/// Applies `manifests` to `names` in batches (see the module's documentation), each after
/// `health` let it through.
async fn roll_out_batches<P: Provider>(
    deployment: &Deployment,
    client: &AgentClient,
    names: &[String],
    manifests: &BTreeMap<String, Manifest>,
    recorded: &mut BTreeMap<String, Manifest>,
    (request, progress): (&UpdateRequest<'_>, &dyn Progress),
    health: &mut BatchHealthCheck<'_, P>,
) -> Result<(), CoreError> {
    let spec = &request.document.spec;
    let batch = request.batch_size.unwrap_or_else(|| spec.update.batch().for_total(names.len()));
    let batches = plan_batches(names, batch);
    let stage = progress.stage("updating", names.len() as u64);
    let rollout_started = || progress.checkpoint(checkpoints::UPDATE_ROLLOUT_STARTED);
    let no_checkpoint = || {};

    for (number, batch) in batches.iter().enumerate() {
        health.before_batch(batch, (number + 1, batches.len()), progress).await?;
        stage.note(&format!("batch {} of {}", number + 1, batches.len()));
        let results: Vec<(String, Result<Applied, MachineFailure>)> =
            futures_util::stream::iter(batch.iter().map(|name| {
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
            deployment.write_json(MANIFESTS_FILE, &*recorded)?;
            continue;
        }

        // Roll the rest of the batch back to what it ran before.
        let rollbacks: Vec<(String, Option<Manifest>)> =
            succeeded.iter().map(|name| (name.clone(), recorded.get(name).cloned())).collect();
        let rollback_results: Vec<(String, Result<(), MachineFailure>)> =
            futures_util::stream::iter(rollbacks.into_iter().map(|(name, previous)| {
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
        deployment.write_json(MANIFESTS_FILE, &*recorded)?;
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
    Ok(())
}

/// Drains each machine through its agent, all at once. A machine whose agent does not answer
/// (it is gone already) is retired all the same: nothing of it can be saved by waiting.
pub(crate) async fn drain(client: &AgentClient, machines: &[Machine], progress: &dyn Progress) {
    let stage = progress.stage("draining removed machines", machines.len() as u64);
    let stage = &stage;
    futures_util::stream::iter(machines.iter().map(|machine| async move {
        match client.drain(&machine.name).await {
            Ok(()) => tracing::info!(machine = %machine.name, "drained"),
            Err(error) => tracing::warn!(
                machine = %machine.name,
                "could not drain it ({error}); it is retired without draining"
            ),
        }
        stage.advance(1);
    }))
    .buffer_unordered(super::DEFAULT_CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::provider::MachineState;

    fn machine(name: &str) -> Machine {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Machine {
            name: name.to_owned(),
            role: Role::Binary,
            region: "r".to_owned(),
            id: name.to_owned(),
            public_ip: ip,
            private_ip: ip,
            agent_endpoint: SocketAddr::new(ip, 7443),
            state: MachineState::Running,
            state_reason: None,
            placement: None,
        }
    }

    fn plan_of(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn growing_adds_the_next_indexes_and_shrinking_removes_the_highest() {
        let existing: Vec<Machine> = ["w-0", "w-1", "w-2"].map(machine).to_vec();
        let grow =
            MembershipChange::between(&plan_of(&["w-0", "w-1", "w-2", "w-3", "w-4"]), &existing);
        assert_eq!(grow.added, ["w-3", "w-4"]);
        assert!(grow.removed.is_empty());
        assert_eq!(grow.kept, ["w-0", "w-1", "w-2"]);

        let shrink = MembershipChange::between(&plan_of(&["w-0"]), &existing);
        assert_eq!(shrink.removed, ["w-1", "w-2"]);
        assert!(shrink.added.is_empty());
        assert!(shrink.changes_membership());
        assert_eq!(shrink.summary(), "adding 0 (none), removing 2 (w-1, w-2), keeping 1");

        let same = MembershipChange::between(&plan_of(&["w-0", "w-1", "w-2"]), &existing);
        assert!(!same.changes_membership());
        assert_eq!(same.summary(), "membership unchanged (3 machines)");
    }
}
