//! `watch`: a long-running reconciler that keeps a deployment at its spec. A machine that is
//! gone is replaced under its name, the others get the new hosts.yaml, and every machine hears
//! from the deployment (its keepalive is reset) on every round.
//!
//! Each round (every `interval`):
//! 1. the provider's machines, and each running binary machine's agent status, are read;
//! 2. a machine the spec names is **gone** when the provider no longer lists it, or lists it
//!    ended (terminated, shutting down: a spot reclaim, a retirement), or when it has been
//!    stopped, unreachable or not healthy for longer than `replace_after` (an agent killed
//!    with -9, a binary that never comes back);
//! 3. gone machines are replaced, at most `max_replacing` at a time and `max_per_hour` in any
//!    hour, so that a broken image or a region outage does not churn the account; a machine
//!    held back by a limit is reported, once per reason;
//! 4. a replacement is journaled (`watch-journal.json`: the name and the instance it replaces)
//!    before anything is done, then, under the deployment's lock: the old machine is retired
//!    (drained when its agent still answers), and the deployment converges to the spec as
//!    `update` does: the name is launched anew through the capacity policy with a new
//!    identity, and the other machines get the new hosts.yaml as their `on_hosts_change`
//!    says. Then the journal entry is cleared and the replacement counted.
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

use flotilla_spec::api::BinaryState;
use flotilla_spec::{ProviderKind, SpecDocument};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::update::{UpdateRequest, converge, drain};
use super::{SPEC_DIR_FILE, connect};
use crate::error::CoreError;
use crate::progress::Progress;
use crate::provider::{Machine, MachineState, Provider, ProviderError, Role};
use crate::state::{Deployment, DeploymentStatus, Home, unix_now};

/// Reports one event: the machine it is about, what happened, what watch did, the outcome.
type Emit<'a> = dyn Fn(Option<&str>, &str, &str, String) + Sync + 'a;

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
}

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
    emit(None, "started", "watching", format!("deployment `{}`", spec.tag));

    // Replacements a killed watch left under way come first.
    let journal: Journal = deployment.read_json(JOURNAL_FILE)?.unwrap_or_default();
    if !journal.replacing.is_empty() {
        let names: Vec<String> = journal.replacing.keys().cloned().collect();
        emit(None, "resumed", "finishing replacements", names.join(", "));
        let machines = provider.machines().await?;
        let gone: Vec<Machine> = names
            .iter()
            .filter_map(|name| {
                let id = &journal.replacing[name];
                machines.iter().find(|m| &m.name == name && &m.id == id).cloned()
            })
            .collect();
        replace(
            &deployment,
            metadata.provider,
            &request,
            progress,
            &provider,
            &names,
            &gone,
            &emit,
        )
        .await;
    }

    let mut sightings = Sightings::default();
    let mut round = 0u64;
    loop {
        if let Err(error) = one_round(
            &deployment,
            metadata.provider,
            &request,
            progress,
            &provider,
            &mut sightings,
            &emit,
        )
        .await
        {
            emit(None, "round-failed", "trying again next round", error.to_string());
        }
        round += 1;
        if request.rounds.is_some_and(|rounds| round >= rounds) {
            return Ok(());
        }
        tokio::time::sleep(request.interval).await;
    }
}

/// One round (steps 1 to 4 of the module documentation).
async fn one_round<P: Provider>(
    deployment: &Deployment,
    provider_kind: ProviderKind,
    request: &WatchRequest,
    progress: &dyn Progress,
    provider: &P,
    sightings: &mut Sightings,
    emit: &Emit<'_>,
) -> Result<(), CoreError> {
    let plan = crate::plan::DeploymentPlan::from_spec(&request.document.spec, provider_kind);
    let machines = provider.machines().await?;
    let client = connect(deployment, &machines)?;
    let now = Instant::now();

    // What each running binary machine's agent says; every answer is word from the deployment.
    let answers: BTreeMap<String, Result<flotilla_spec::api::AgentStatus, String>> =
        futures_util::stream::iter(
            machines.iter().filter(|m| m.state == MachineState::Running).map(|machine| {
                let client = &client;
                async move {
                    let answer = client.status(&machine.name).await.map_err(|e| e.to_string());
                    if answer.is_ok() {
                        // Status is word from the deployment already; this says so explicitly
                        // for agents that count only keepalives.
                        let _ = client.keepalive(&machine.name).await;
                    }
                    (machine.name.clone(), answer)
                }
            }),
        )
        .buffer_unordered(super::DEFAULT_CONCURRENCY)
        .collect()
        .await;

    let mut gone: Vec<(String, Option<Machine>, String)> = Vec::new();
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

    // The churn limits.
    let mut journal: Journal = deployment.read_json(JOURNAL_FILE)?.unwrap_or_default();
    let wall = unix_now();
    journal.started.retain(|at| wall.saturating_sub(*at) < HOUR);
    let mut accepted: Vec<(String, Option<Machine>)> = Vec::new();
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
                emit(Some(&name), &reason, "replacing", "journaled".to_owned());
                accepted.push((name, machine));
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
    for (name, _) in &accepted {
        recorded.remove(name);
    }
    deployment.write_json(super::MANIFESTS_FILE, &recorded)?;
    // Journaled before anything is done.
    for (name, machine) in &accepted {
        let id = machine.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        journal.replacing.insert(name.clone(), id);
        journal.started.push(wall);
    }
    deployment.write_json(JOURNAL_FILE, &journal)?;
    let names: Vec<String> = accepted.iter().map(|(name, _)| name.clone()).collect();
    let old: Vec<Machine> = accepted.into_iter().filter_map(|(_, machine)| machine).collect();
    replace(deployment, provider_kind, request, progress, provider, &names, &old, emit).await;
    for name in &names {
        sightings.down_since.remove(name);
        sightings.held.remove(name);
    }
    Ok(())
}

/// Step 4: retires `old` (the instances of `names` that are still listed), converges, and clears
/// the journal entries of `names`. Its outcome is reported as events.
#[allow(clippy::too_many_arguments)]
async fn replace<P: Provider>(
    deployment: &Deployment,
    provider_kind: ProviderKind,
    request: &WatchRequest,
    progress: &dyn Progress,
    provider: &P,
    names: &[String],
    old: &[Machine],
    emit: &Emit<'_>,
) {
    let outcome: Result<(), CoreError> = async {
        let _lock = deployment.lock()?;
        if !old.is_empty() {
            let client = connect(deployment, old)?;
            drain(&client, old, progress).await;
            provider.retire(old, progress).await?;
        }
        let update = UpdateRequest {
            document: &request.document,
            provider: None,
            batch_size: None,
            dry_run: false,
            agent_timeout: request.agent_timeout,
            cwd: request.cwd.clone(),
        };
        converge(deployment, provider_kind, &update, progress, provider).await.map(drop)
    }
    .await;
    let named: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let cleared = deployment.read_json::<Journal>(JOURNAL_FILE).map(|journal| {
        let mut journal = journal.unwrap_or_default();
        journal.replacing.retain(|name, _| !named.contains(name.as_str()));
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
    for name in names {
        match &outcome {
            Ok(()) => emit(Some(name), "replaced", "launched under its name", "healthy".to_owned()),
            Err(error) => {
                emit(Some(name), "replacement-failed", "will try again", error.to_string())
            }
        }
    }
}
