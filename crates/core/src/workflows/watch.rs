//! `watch`: a long-running reconciler that keeps a deployment at its spec. A machine that is
//! gone is replaced under its name, the others get the new hosts.yaml, and every machine hears
//! from the deployment (its keepalive is reset) on every round.
//!
//! Each round (every `interval`):
//! 1. the provider's machines, and each running binary machine's agent status, are read;
//! 2. a machine the spec names is **gone** when the provider no longer lists it, or lists it
//!    ended (terminated, shutting down: a spot reclaim, a retirement), or when it has been
//!    stopped, unreachable or not healthy for longer than `heal.replace_after` (an agent killed
//!    with -9, a binary that never comes back). A machine whose agent reports a spot
//!    interruption notice, a rebalance recommendation, or a scheduled event (unless
//!    `heal.on_scheduled_event: ignore`) is **at risk**: it still serves, so its replacement
//!    comes first and it is drained once the replacement is healthy, the way AWS advises
//!    (where the provider can run two machines under one name; locally it is retired first);
//!    after an interruption notice it is drained at the latest
//!    [`INTERRUPTION_DRAIN_AFTER_SECS`] after its agent saw the notice, healthy replacement or
//!    not, so that its `stopping` hooks fit in AWS's two minutes;
//! 3. gone machines are replaced, at most `max_replacing` at a time and `max_per_hour` in any
//!    hour, so that a broken image or a region outage does not churn the account; a machine
//!    held back by a limit is reported, once per reason;
//!    A machine a capture is working on (`flotilla snapshot`/`image --stop` stops it on
//!    purpose) is never gone: it is left alone and said so once ("stopped for a capture, left
//!    alone"), and its time down counts from when the capture is over;
//! 4. the deployment's lock is taken before anything is decided for good (a command holding it
//!    holds the replacements back until the next round), and the machines are listed again
//!    under it: one that was not running and runs now (a capture's stop that just ended) is
//!    not gone after all. A replacement is journaled (`watch-journal.json`: the name and the
//!    instance it replaces) before anything is done, then, still under the lock: gone
//!    machines are retired (drained when their agents still answer), the shared resources
//!    prepared once, machines at risk get their replacements launched beside them, and the
//!    deployment converges to the spec as `update` does: names without a machine are
//!    launched anew through the capacity policy with new identities, new machines started,
//!    and the other machines get the new hosts.yaml as their `on_hosts_change` says; last the
//!    machines at risk are drained and retired. Then the journal entry is cleared and the
//!    replacement counted. A name launched anew beyond the jobs (found gone after the round
//!    looked, by the launch beside or by the converge) is reported replaced and counted too. The
//!    spec is checked against the account once, at watch's start, not per replacement.
//!
//! 5. the deployment's dedicated host pools are tended ([`Provider::tend_host_pools`]): each
//!    pool's policy, kept across rounds, hears what the hosts are and releases those that may
//!    go (a Mac host past its 24 hours, idle for `release_idle_after`) and scrubs idle ones
//!    as its `scrubbing` says.
//!
//! Crash-safe: a watch killed at any point and started again first finishes the replacements
//! its journal names; the retire and the convergence find what was done and do nothing twice,
//! and names are stable, so a machine is never replaced twice for one loss. Two watches of one
//! deployment: the second refuses, naming the first ([`Deployment::watch_lock`]); `update`,
//! `status` and the others still run beside a watch (it takes the deployment's lock only while
//! it replaces).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use flotilla_spec::api::{AgentStatus, BinaryState};
use flotilla_spec::fleet::OnScheduledEvent;
use flotilla_spec::fleetd::Event;
use flotilla_spec::{ProviderKind, SpecDocument};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::update::{UpdateRequest, converge, drain};
use super::{SPEC_DIR_FILE, connect};
use crate::error::CoreError;
use crate::plan::DeploymentPlan;
use crate::progress::Progress;
use crate::provider::{Machine, MachineState, Provider, ProviderError, Role};
use crate::state::{Deployment, DeploymentLock, DeploymentStatus, Home, StateError, unix_now};

/// Reports one event: the machine it is about, what happened, what watch did, the outcome.
type Emit<'a> = dyn Fn(Option<&str>, &str, &str, String) + Sync + 'a;

/// What watch does now, for `status`: written at the end of every round.
pub(crate) const STATE_FILE: &str = "watch-state.json";

/// How long [`STATE_FILE`] speaks for a watch after its last round (a watch that stopped says
/// nothing any more).
pub(crate) const STATE_FRESH_SECS: u64 = 600;

/// The content of [`STATE_FILE`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WatchState {
    /// Unix seconds of the round.
    pub(crate) at: u64,
    /// Machines being replaced.
    pub(crate) replacing: Vec<String>,
    /// Machine → why its replacement is held back.
    pub(crate) held: BTreeMap<String, String>,
}

/// The journal of decisions, in the deployment's directory.
const JOURNAL_FILE: &str = "watch-journal.json";
/// Replacements counted against `max_per_hour` are those of the last hour.
const HOUR: u64 = 3600;

/// What `watch` needs besides the provider.
#[derive(Debug)]
pub struct WatchRequest {
    pub document: SpecDocument,
    /// The directory the spec's relative paths start from.
    pub cwd: PathBuf,
    /// Time between rounds.
    pub interval: Duration,
    /// How long a machine may be stopped, unreachable or unhealthy before it is replaced.
    pub replace_after: Duration,
    /// Replacements in flight at once.
    pub max_replacing: usize,
    /// Replacements in any hour.
    pub max_per_hour: usize,
    /// How long a replacement's agent has to answer after launch.
    pub agent_timeout: Duration,
    /// Stop after this many rounds (tests, a cron-like single pass); `None`: until stopped.
    pub rounds: Option<u64>,
}

/// One thing watch saw or did, for the log and for `--output json` (one per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    /// Unix seconds.
    pub at: u64,
    /// The machine, when the event is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// What happened (`gone`, `replacing`, `replaced`, `held-back`, `round-failed`, …).
    pub what: String,
    /// What watch did about it.
    pub action: String,
    /// How it ended, or why not.
    pub outcome: String,
}

/// Decisions made before acting, kept across crashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    /// Name → the instance being replaced (the provider's id), for replacements under way.
    replacing: BTreeMap<String, String>,
    /// Those of `replacing` whose replacement is launched beside the old machine (which is
    /// drained after the new one is healthy).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    beside: BTreeSet<String>,
    /// Those of `beside` with a spot interruption notice: unix seconds by which the old
    /// machine is drained even when its replacement is not healthy yet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    drain_by: BTreeMap<String, u64>,
    /// Unix seconds of each replacement started in the last hour.
    started: Vec<u64>,
}

/// The spec a deployment was last created or updated with, and the directory its paths start
/// from, for `watch --tag`.
pub fn saved_spec(deployment: &Deployment) -> Result<(SpecDocument, PathBuf), CoreError> {
    let path = deployment.dir().join("spec.yaml");
    if !path.exists() {
        return Err(CoreError::Refused(format!(
            "deployment `{}` has no saved spec yet: run `flotilla create` with its spec first",
            deployment.tag()
        )));
    }
    let document = flotilla_spec::load_fleet_spec(&path).map_err(CoreError::Invalid)?;
    let cwd = fs_err::read_to_string(deployment.dir().join(SPEC_DIR_FILE))
        .map(PathBuf::from)
        .map_err(|error| {
            CoreError::Refused(format!(
                "deployment `{}` does not say where its spec's files are ({error}); run watch with --config instead",
                deployment.tag()
            ))
        })?;
    Ok((document, cwd))
}

/// How long each machine has been seen down, in watch's memory (a restarted watch starts the
/// count again, which only delays a replacement).
#[derive(Debug, Default)]
struct Sightings {
    down_since: BTreeMap<String, (Instant, String)>,
    /// Machine → the reason it was last held back for, so each reason is reported once.
    held: BTreeMap<String, String>,
    /// Events watch let be (`on_scheduled_event: ignore`), by machine and time, reported once.
    ignored: BTreeSet<(String, u64)>,
    /// The spec resolved against the account at watch's start ([`resolve_once`]; forgotten
    /// when a replacement fails).
    resolved: Option<DeploymentPlan>,
}

/// What every step of a watch works with.
struct Watcher<'a, P> {
    deployment: &'a Deployment,
    provider_kind: ProviderKind,
    request: &'a WatchRequest,
    progress: &'a dyn Progress,
    provider: &'a P,
    emit: &'a Emit<'a>,
}

/// One machine to replace: its name, the machine it replaces (when the provider still lists
/// it), and whether the replacement comes first (the old one still serves).
#[derive(Clone, Debug)]
struct Job {
    name: String,
    old: Option<Machine>,
    beside: bool,
    /// Unix seconds by which the old machine is drained whatever the replacement's state (a
    /// spot interruption notice: the old one has two minutes).
    drain_by: Option<u64>,
}

/// A machine with a spot interruption notice is drained this long after its agent saw the
/// notice (AWS gives two minutes), unless its replacement is healthy before: the rest of the
/// two minutes is for its `stopping` hooks and the binary's graceful stop.
const INTERRUPTION_DRAIN_AFTER_SECS: u64 = 90;

/// Why a machine a capture is working on is not replaced (a `held` reason, shown by `status`).
const CAPTURE_LEFT_ALONE: &str = "stopped for a capture, left alone";

/// Runs the reconciler until `request.rounds` rounds have passed (or forever).
pub async fn watch<P: Provider>(
    home: &Home,
    request: WatchRequest,
    progress: &dyn Progress,
    events: &(dyn Fn(WatchEvent) + Sync),
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<(), CoreError> {
    let spec = &request.document.spec;
    let deployment = home.open(&spec.tag)?;
    let metadata = deployment.metadata()?;
    if metadata.status != DeploymentStatus::Created {
        return Err(CoreError::Refused(format!(
            "deployment `{}` is {}; watch keeps a created deployment at its spec: run `flotilla create` first",
            spec.tag,
            metadata.status.as_str()
        )));
    }
    let _watching = deployment.watch_lock()?;
    let provider = make_provider(&deployment)?;
    let emit = |machine: Option<&str>, what: &str, action: &str, outcome: String| {
        let event = WatchEvent {
            at: unix_now(),
            machine: machine.map(str::to_owned),
            what: what.to_owned(),
            action: action.to_owned(),
            outcome,
        };
        events(event);
    };
    let watcher = Watcher {
        deployment: &deployment,
        provider_kind: metadata.provider,
        request: &request,
        progress,
        provider: &provider,
        emit: &emit,
    };
    let mut sightings = Sightings::default();
    // Resolved now, so that the first replacement does not wait for the account's check; a
    // failure here is tried again by the first replacement.
    if let Err(error) = resolve_once(&watcher, &mut sightings.resolved).await {
        emit(None, "resolve-failed", "trying again at the first replacement", with_hint(&error));
    }
    emit(None, "started", "watching", format!("deployment `{}`", spec.tag));
    // Replacements a killed watch left under way come first.
    let journal: Journal = deployment.read_json(JOURNAL_FILE)?.unwrap_or_default();
    if !journal.replacing.is_empty() {
        let names: Vec<String> = journal.replacing.keys().cloned().collect();
        emit(None, "resumed", "finishing replacements", names.join(", "));
        // An old machine a replacement was launched beside is no longer listed by its name:
        // it is found by the id the journal kept.
        let machines = provider.machines().await?;
        let jobs: Vec<Job> = names
            .iter()
            .map(|name| {
                let id = &journal.replacing[name];
                let old = machines.iter().find(|m| &m.name == name && &m.id == id).cloned();
                Job {
                    name: name.clone(),
                    old,
                    beside: journal.beside.contains(name),
                    drain_by: journal.drain_by.get(name).copied(),
                }
            })
            .collect();
        match deployment.lock() {
            Ok(lock) => replace(&watcher, &jobs, &mut sightings.resolved, &lock).await,
            Err(error) => {
                clear_journal(&deployment, &emit, &names);
                for name in &names {
                    emit(Some(name), "replacement-failed", "will try again", error.to_string());
                }
            }
        }
    }

    let mut round = 0u64;
    loop {
        // A deployment destroyed under a watch ends it.
        let status = deployment.metadata()?.status;
        if matches!(status, DeploymentStatus::Destroying | DeploymentStatus::Destroyed) {
            emit(
                None,
                "destroyed",
                "stopping",
                format!("deployment `{}` is {}", spec.tag, status.as_str()),
            );
            return Ok(());
        }
        if let Err(error) = one_round(&watcher, &mut sightings).await {
            emit(None, "round-failed", "trying again next round", with_hint(&error));
        }
        // The dedicated host pools: hosts that may go are released, idle ones scrubbed.
        let plan = DeploymentPlan::from_spec(spec, metadata.provider, provider.monitoring_region());
        match provider.tend_host_pools(&plan).await {
            Ok(notes) => {
                for note in notes {
                    emit(None, "host-pool", "tended", note);
                }
            }
            Err(error) => emit(
                None,
                "host-pool-failed",
                "trying again next round",
                with_hint(&CoreError::from(error)),
            ),
        }
        let journal: Journal = deployment.read_json(JOURNAL_FILE)?.unwrap_or_default();
        let state = WatchState {
            at: unix_now(),
            replacing: journal.replacing.keys().cloned().collect(),
            held: sightings.held.clone(),
        };
        deployment.write_json(STATE_FILE, &state)?;
        round += 1;
        if request.rounds.is_some_and(|rounds| round >= rounds) {
            return Ok(());
        }
        tokio::time::sleep(request.interval).await;
    }
}

/// The notice the machine's agent last reacted to, when it is one watch acts on: a spot
/// interruption, a rebalance recommendation, a scheduled event (event, unix seconds, detail).
fn notice_of(status: &AgentStatus) -> Option<(Event, u64, String)> {
    let event = status.lifecycle.as_ref()?.last_event.as_ref()?;
    matches!(event.event, Event::Interrupted | Event::Rebalance | Event::ScheduledEvent)
        .then(|| (event.event, event.at, event.detail.clone()))
}

/// One round (steps 1 to 4 of the module documentation).
async fn one_round<P: Provider>(
    watcher: &Watcher<'_, P>,
    sightings: &mut Sightings,
) -> Result<(), CoreError> {
    let Watcher { deployment, provider_kind, request, progress: _, provider, emit } = *watcher;
    let plan = crate::plan::DeploymentPlan::from_spec(
        &request.document.spec,
        provider_kind,
        provider.monitoring_region(),
    );
    let machines = provider.machines().await?;
    let client = connect(deployment, &machines)?;
    let now = Instant::now();
    // The machine a capture is working on: stopped on purpose, never replaced meanwhile.
    let capturing = super::capture::capture_in_progress(deployment)?;

    // What each running binary machine's agent says; every answer is word from the deployment.
    let answers: BTreeMap<String, Result<flotilla_spec::api::AgentStatus, String>> =
        futures_util::stream::iter(
            machines.iter().filter(|m| m.state == MachineState::Running).map(|machine| {
                let client = &client;
                async move {
                    // The agent counts the status request as word for its keepalive.
                    let answer = client.status(&machine.name).await.map_err(|e| e.to_string());
                    (machine.name.clone(), answer)
                }
            }),
        )
        .buffer_unordered(super::DEFAULT_CONCURRENCY)
        .collect()
        .await;

    let mut gone: Vec<(String, Option<Machine>, String)> = Vec::new();
    // Machines at risk that still serve, whose replacement comes first → when the old machine
    // is drained at the latest (a spot interruption notice), if ever.
    let mut beside: BTreeMap<String, Option<u64>> = BTreeMap::new();
    for planned in &plan.machines {
        let listed = machines.iter().find(|m| m.name == planned.name);
        let down = match listed {
            None => Some(("gone".to_owned(), true)),
            Some(machine)
                if matches!(
                    machine.state,
                    MachineState::Terminated | MachineState::ShuttingDown
                ) =>
            {
                let reason = machine.state_reason.clone().unwrap_or_default();
                Some((format!("{} {reason}", machine.state.as_str()).trim().to_owned(), true))
            }
            Some(machine) if machine.state != MachineState::Running => Some((
                format!(
                    "{}{}",
                    machine.state.as_str(),
                    machine.state_reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                ),
                false,
            )),
            Some(machine) if machine.role == Role::Binary => match answers.get(&machine.name) {
                Some(Ok(status)) if notice_of(status).is_some() => {
                    let (event, at, detail) = notice_of(status).expect("checked");
                    match event {
                        Event::Interrupted => {
                            // The replacement is launched at once; the old machine serves
                            // until it is healthy or the notice's time is nearly up.
                            let by = at + INTERRUPTION_DRAIN_AFTER_SECS;
                            beside.insert(machine.name.clone(), Some(by));
                            Some((format!("spot interruption notice: {detail}"), true))
                        }
                        Event::Rebalance => {
                            beside.insert(machine.name.clone(), None);
                            Some((format!("rebalance recommendation: {detail}"), true))
                        }
                        _ if request.document.spec.heal.on_scheduled_event
                            == OnScheduledEvent::Ignore =>
                        {
                            if sightings.ignored.insert((machine.name.clone(), at)) {
                                emit(
                                    Some(&machine.name),
                                    &format!("scheduled event: {detail}"),
                                    "let be",
                                    "on_scheduled_event: ignore".to_owned(),
                                );
                            }
                            None
                        }
                        _ => {
                            beside.insert(machine.name.clone(), None);
                            Some((format!("scheduled event: {detail}"), true))
                        }
                    }
                }
                Some(Ok(status)) if status.state == BinaryState::Healthy => None,
                // A binary stopped by request (`flotilla stop`, a drain) is not a failure.
                Some(Ok(status)) if status.state == BinaryState::Stopped => None,
                Some(Ok(status)) => {
                    Some((format!("its binary is {}", status.state.as_str()), false))
                }
                Some(Err(error)) => Some((format!("its agent does not answer: {error}"), false)),
                None => None,
            },
            Some(_) => None,
        };
        match down {
            None => {
                sightings.down_since.remove(&planned.name);
                sightings.held.remove(&planned.name);
            }
            Some((reason, _)) if capturing.as_deref() == Some(planned.name.as_str()) => {
                // Its time down starts when the capture is over.
                sightings.down_since.remove(&planned.name);
                let why = CAPTURE_LEFT_ALONE.to_owned();
                if sightings.held.get(&planned.name) != Some(&why) {
                    emit(Some(&planned.name), "stopped for a capture", "left alone", reason);
                    sightings.held.insert(planned.name.clone(), why);
                }
            }
            Some((reason, at_once)) => {
                let since = sightings
                    .down_since
                    .entry(planned.name.clone())
                    .or_insert_with(|| (now, reason.clone()))
                    .0;
                if at_once || now.duration_since(since) >= request.replace_after {
                    gone.push((planned.name.clone(), listed.cloned(), reason));
                }
            }
        }
    }
    if gone.is_empty() {
        return Ok(());
    }
    // Nothing is decided for good without the deployment's lock: a command at work (a
    // capture that just began, an update) holds the replacements back until it is done.
    let lock = match deployment.lock() {
        Ok(lock) => lock,
        Err(error @ StateError::Locked { .. }) => {
            let why = format!("{error}; trying again next round");
            for (name, _, reason) in gone {
                if sightings.held.get(&name) != Some(&why) {
                    emit(Some(&name), &reason, "held back", why.clone());
                    sightings.held.insert(name, why.clone());
                }
            }
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    // Listed again under the lock: a machine that was not running and runs now (a capture's
    // stop that ended between the listing and the lock) is not gone after all.
    let relisted = provider.machines().await?;
    gone.retain(|(name, listed, _)| {
        let Some(listed) = listed.as_ref().filter(|m| m.state != MachineState::Running) else {
            return true;
        };
        let back = relisted
            .iter()
            .any(|m| m.id == listed.id && m.name == *name && m.state == MachineState::Running);
        if back {
            sightings.down_since.remove(name);
        }
        !back
    });
    if gone.is_empty() {
        return Ok(());
    }

    // The churn limits.
    let mut journal: Journal = deployment.read_json(JOURNAL_FILE)?.unwrap_or_default();
    let wall = unix_now();
    journal.started.retain(|at| wall.saturating_sub(*at) < HOUR);
    let mut accepted: Vec<Job> = Vec::new();
    for (name, machine, reason) in gone {
        let in_flight = journal.replacing.len() + accepted.len();
        let this_hour = journal.started.len() + accepted.len();
        let held = if in_flight >= request.max_replacing {
            Some(format!(
                "{in_flight} replacements under way already (max_replacing {})",
                request.max_replacing
            ))
        } else if this_hour >= request.max_per_hour {
            Some(format!(
                "{this_hour} replacements in the last hour already (max_per_hour {})",
                request.max_per_hour
            ))
        } else {
            None
        };
        match held {
            Some(why) => {
                if sightings.held.get(&name) != Some(&why) {
                    emit(Some(&name), &reason, "held back", why.clone());
                    sightings.held.insert(name, why);
                }
            }
            None => {
                let first = beside.contains_key(&name);
                let how = if first { "replacing, the new machine first" } else { "replacing" };
                emit(Some(&name), &reason, how, "journaled".to_owned());
                let drain_by = beside.get(&name).copied().flatten();
                accepted.push(Job { beside: first, name, old: machine, drain_by });
            }
        }
    }
    if accepted.is_empty() {
        return Ok(());
    }
    // The names being replaced forget their old machines' manifests first, so that however a
    // replacement is interrupted, a new instance that never ran a version under the name is
    // converged as a new machine (its identity written, then started) and not rolled out to
    // as one that has its identity already. Done before the journal: a crash in between
    // leaves only a gone machine without a manifest, which the next round replaces.
    let mut recorded = super::saved_manifests(deployment)?;
    for job in &accepted {
        recorded.remove(&job.name);
    }
    deployment.write_json(super::MANIFESTS_FILE, &recorded)?;
    // Journaled before anything is done.
    for job in &accepted {
        let id = job.old.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        journal.replacing.insert(job.name.clone(), id);
        if job.beside {
            journal.beside.insert(job.name.clone());
        }
        if let Some(by) = job.drain_by {
            journal.drain_by.insert(job.name.clone(), by);
        }
        journal.started.push(wall);
    }
    deployment.write_json(JOURNAL_FILE, &journal)?;
    replace(watcher, &accepted, &mut sightings.resolved, &lock).await;
    let names: Vec<String> = accepted.iter().map(|job| job.name.clone()).collect();
    for name in &names {
        sightings.down_since.remove(name);
        sightings.held.remove(name);
    }
    Ok(())
}

/// The spec resolved against the account: once in watch's life (at its start, or at the first
/// replacement after a failure), as `update` does it; later replacements reuse it.
async fn resolve_once<P: Provider>(
    watcher: &Watcher<'_, P>,
    resolved: &mut Option<DeploymentPlan>,
) -> Result<DeploymentPlan, CoreError> {
    if let Some(plan) = resolved {
        return Ok(plan.clone());
    }
    let Watcher { provider_kind, request, progress, provider, .. } = *watcher;
    let (plan, _survey) =
        super::resolve(&request.document, provider_kind, &request.cwd, provider, progress, false)
            .await?;
    *resolved = Some(plan.clone());
    Ok(plan)
}

/// Drains `machines` (those whose agents still answer), each reported as `drained` with `why`.
async fn drain_reported<P: Provider>(
    watcher: &Watcher<'_, P>,
    machines: &[Machine],
    why: &str,
) -> Result<(), CoreError> {
    let client = connect(watcher.deployment, machines)?;
    drain(&client, machines, watcher.progress).await;
    for machine in machines {
        (watcher.emit)(Some(&machine.name), "drained", why, machine.id.clone());
    }
    Ok(())
}

/// Drains `machines` (those whose agents still answer) and retires them.
async fn retire<P: Provider>(
    deployment: &Deployment,
    provider: &P,
    machines: &[Machine],
    progress: &dyn Progress,
) -> Result<(), CoreError> {
    if machines.is_empty() {
        return Ok(());
    }
    let client = connect(deployment, machines)?;
    drain(&client, machines, progress).await;
    provider.retire(machines, progress).await?;
    Ok(())
}

/// Step 4 for `jobs`, then clears their journal entries; the outcome is reported as events.
///
/// Replacements that come first (`beside`) are launched beside the old machines
/// ([`Provider::launch_beside`]); the others' old machines are drained and retired. Then the
/// deployment converges as `update` does (the missing names launched, the new machines started,
/// hosts.yaml to everyone), and last the old machines that were left serving are drained and
/// retired.
async fn replace<P: Provider>(
    watcher: &Watcher<'_, P>,
    jobs: &[Job],
    resolved: &mut Option<DeploymentPlan>,
    _lock: &DeploymentLock,
) {
    let Watcher { deployment, provider_kind, request, progress, provider, emit } = *watcher;
    let names: Vec<String> = jobs.iter().map(|job| job.name.clone()).collect();
    let outcome: Result<(), CoreError> = async {
        let plan = resolve_once(watcher, resolved).await?;
        // Every launch of this replacement comes after this listing: `launch_beside` and
        // `converge` both launch, under its name, a machine found gone after this round looked
        // (two machines reclaimed at once, the second noticed a moment later), and what they
        // launch beyond the jobs is reported as replaced too, and counted.
        let before: BTreeMap<String, String> =
            provider.machines().await?.into_iter().map(|m| (m.name, m.id)).collect();
        let at_risk: Vec<Machine> =
            jobs.iter().filter(|job| job.beside).filter_map(|job| job.old.clone()).collect();
        let mut serving_old: Vec<Machine> = Vec::new();
        let retire_first: Vec<Machine> =
            jobs.iter().filter(|job| !job.beside).filter_map(|job| job.old.clone()).collect();
        // Machines that are gone go first (they serve nothing; their names become free),
        // then one `prepare` for the launches that follow.
        retire(deployment, provider, &retire_first, progress).await?;
        provider.prepare(&plan, progress).await?;
        if !at_risk.is_empty() {
            match provider.launch_beside(&plan, &at_risk, progress).await? {
                // Their names forgot their manifests before they were journaled, so
                // `converge` starts the new machines as new ones.
                Some(launched) => {
                    for machine in &launched {
                        emit(
                            Some(&machine.name),
                            "launched-beside",
                            "launched the replacement beside the machine at risk",
                            machine.id.clone(),
                        );
                    }
                    serving_old = at_risk;
                }
                // One machine per name (local): the old one goes first, and its name is
                // prepared again.
                None => {
                    retire(deployment, provider, &at_risk, progress).await?;
                    provider.prepare(&plan, progress).await?;
                }
            }
        }
        let update = UpdateRequest {
            document: &request.document,
            provider: None,
            batch_size: None,
            dry_run: false,
            agent_timeout: request.agent_timeout,
            cwd: request.cwd.clone(),
            prepared: Some(&plan),
            // A replacement heals the fleet: it does not wait for the cloud's own recovery.
            health: crate::health::HealthGate::Ignore,
        };
        // Old machines with an interruption notice are drained by their deadline even when
        // the replacements are not healthy by then; converging goes on meanwhile.
        let deadline = jobs
            .iter()
            .filter(|job| serving_old.iter().any(|m| m.name == job.name))
            .filter_map(|job| job.drain_by)
            .min()
            .map(|by| Instant::now() + Duration::from_secs(by.saturating_sub(unix_now())));
        let converging = converge(deployment, provider_kind, &update, progress, provider);
        tokio::pin!(converging);
        let mut drained_early: Vec<Machine> = Vec::new();
        let converged = tokio::select! {
            converged = &mut converging => converged,
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() =>
            {
                drained_early = serving_old
                    .iter()
                    .filter(|m| jobs.iter().any(|j| j.name == m.name && j.drain_by.is_some()))
                    .cloned()
                    .collect();
                let why = "drained the interrupted machine before its time was up";
                drain_reported(watcher, &drained_early, why).await?;
                converging.await
            }
        };
        converged?;
        let relaunched: Vec<(String, String)> = provider
            .machines()
            .await?
            .into_iter()
            .filter(|m| m.role == Role::Binary && m.state == MachineState::Running)
            .filter(|m| !names.contains(&m.name) && before.get(&m.name) != Some(&m.id))
            .map(|m| (m.name, m.id))
            .collect();
        if !relaunched.is_empty() {
            let mut journal: Journal = deployment.read_json(JOURNAL_FILE)?.unwrap_or_default();
            for (name, id) in &relaunched {
                emit(
                    Some(name),
                    "replaced",
                    &format!(
                        "launched under its name ({id}), found gone while another replacement converged"
                    ),
                    "healthy".to_owned(),
                );
                journal.started.push(unix_now());
            }
            deployment.write_json(JOURNAL_FILE, &journal)?;
        }
        if !serving_old.is_empty() {
            // The replacements are healthy: the machines they replace go now.
            let to_drain: Vec<Machine> = serving_old
                .iter()
                .filter(|m| !drained_early.iter().any(|d| d.id == m.id))
                .cloned()
                .collect();
            let why = "drained the machine at risk, its replacement healthy";
            drain_reported(watcher, &to_drain, why).await?;
            provider.retire(&serving_old, progress).await?;
        }
        Ok(())
    }
    .await;
    if outcome.is_err() {
        // What failed may be what was resolved (a network or image changed under the watch).
        *resolved = None;
    }
    clear_journal(deployment, emit, &names);
    for name in &names {
        match &outcome {
            Ok(()) => emit(Some(name), "replaced", "launched under its name", "healthy".to_owned()),
            Err(error) => {
                emit(Some(name), "replacement-failed", "will try again", with_hint(error))
            }
        }
    }
}

/// The error, and what to do about it when its kind says
/// ([`CoreError::hint`]: a quota to raise, an action to allow), as `create` prints it.
fn with_hint(error: &CoreError) -> String {
    match error.hint() {
        Some(hint) => format!("{error} (hint: {hint})"),
        None => error.to_string(),
    }
}

/// Clears the journal entries of `names` (replacements done, or failed and left to a later
/// round).
fn clear_journal(deployment: &Deployment, emit: &Emit<'_>, names: &[String]) {
    let named: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let cleared = deployment.read_json::<Journal>(JOURNAL_FILE).map(|journal| {
        let mut journal = journal.unwrap_or_default();
        journal.replacing.retain(|name, _| !named.contains(name.as_str()));
        journal.beside.retain(|name| !named.contains(name.as_str()));
        journal.drain_by.retain(|name, _| !named.contains(name.as_str()));
        journal
    });
    match cleared {
        Ok(journal) => {
            if let Err(error) = deployment.write_json(JOURNAL_FILE, &journal) {
                emit(None, "journal", "clearing finished replacements", error.to_string());
            }
        }
        Err(error) => emit(None, "journal", "clearing finished replacements", error.to_string()),
    }
}
