//! The installed version and every change to it, as the API asks for them: `ApplyManifest` (a
//! rollout), `Restart`, `Stop`, `WaitRollout`, and restoring the installed version when the
//! agent starts; and the answers that read it, `Status` and the metrics page.
//!
//! Its state is `agent-state.json` in the instance directory ([`AgentState`]: installed,
//! previous, stopped) and the verified versions under `versions/`; a restarted agent runs what
//! the state file names and downloads nothing again.
//!
//! A rollout (on `ApplyManifest`) runs in the background:
//! 1. `downloading`: the artifacts go into `versions/<version>.partial/`, are verified and the
//!    directory is renamed into place. A failure here leaves the running version untouched.
//! 2. `starting`: the supervisor stops the old binary and starts the new one, which has until
//!    the manifest's `health_deadline` to become healthy; three exits before that, or an exit
//!    with status 0 under `on-failure`, fail it early.
//! 3. Success: `agent-state.json` records {installed: new, previous: old} (the only point where
//!    the state file changes), versions older than the previous one are removed, phase
//!    `healthy`. Failure: the reason and the new version's last log lines go into the rollout
//!    record, and the previous version is restored and restarted (`rolled-back`), or, on a
//!    first install, nothing runs (`failed`).
//!
//! A manifest whose version is the installed one but whose hosts.yaml differs is a hosts-only
//! change (`hosts`): the file is staged and swapped in place, then per the manifest's
//! `on_hosts_change` the binary is restarted and held to the health deadline (a failure puts
//! the old file back and restarts again: `rolled-back`), sent a signal, or left alone. A full
//! rollout that brings a new hosts.yaml swaps it just before the new version starts and puts the
//! old one back if it rolls back.
//!
//! `Drain` (the machine leaves the deployment) runs the `stopping` hooks, stops the binary as
//! `Stop` does and undoes what the lifecycle holds.
//!
//! Requests are allowed as [`flotilla_spec::api::Request`] documents; others get 409 Conflict.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_spec::HealthCheck;
use flotilla_spec::api::{
    AgentStatus, ApplyResponse, BinaryState, BootReport, Rollout, RolloutPhase,
};
use flotilla_spec::fleet::OnHostsChange;
use flotilla_spec::fleet::{MAX_HEALTH_DEADLINE, MAX_RESTART_BACKOFF};
use flotilla_spec::fleetd::Event;
use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::manifest::{
    Artifact, Manifest, ServiceManifest, ServiceProgram, is_sha256_hex, short_version,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::artifacts;
use crate::backoff::CRASH_LOOP_EXITS;
use crate::binary_log::BinaryLog;
use crate::components::{Components, Lifetime};
use crate::context::AgentContext;
use crate::deadline;
use crate::fetch::Fetchers;
use crate::hosts;
use crate::instance_dir::InstanceDir;
use crate::keepalive::KeepaliveHandle;
use crate::lifecycle::LifecycleHandle;
use crate::live_files;
use crate::metrics::AgentMetrics;
use crate::services::{Generations, Supervisors};
use crate::state::AgentState;
use crate::supervisor::{Order, SupervisorStatus};
use crate::time::{format_duration, unix_now};

/// Why a request was not carried out; the API turns it into a status code and an `ApiError`.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 409: not allowed now.
    Conflict(String),
    /// 400: the request itself is wrong.
    BadRequest(String),
    /// 500: the agent could not do it.
    Internal(String),
}

/// The last rollout, and whether one is under way.
#[derive(Debug, Default)]
struct RolloutSlot {
    last: Option<Rollout>,
    under_way: bool,
    task: Option<JoinHandle<()>>,
}

/// The installed version, the rollout under way, and what the API and the metrics read.
#[derive(Debug)]
pub(crate) struct Versions {
    pub(crate) identity: Arc<IdentityBundle>,
    pub(crate) dir: InstanceDir,
    pub(crate) log: Arc<BinaryLog>,
    metrics: Arc<AgentMetrics>,
    /// The binary's supervisor and the services'.
    supervisors: Arc<Supervisors>,
    fetchers: Fetchers,
    state: Mutex<AgentState>,
    /// The digest of the hosts.yaml in place (see `hosts`).
    hosts: Mutex<Option<String>>,
    /// This machine's address in the hosts.yaml of that digest (see [`Versions::own_address`]).
    own_address: Mutex<Option<(Option<String>, Option<std::net::IpAddr>)>>,
    rollout: Mutex<RolloutSlot>,
    /// Woken whenever a rollout finishes, for `WaitRollout`.
    rollout_finished: tokio::sync::Notify,
    started_at: Instant,
    /// Spawns rollouts, so that a rollout that panics takes the agent down.
    components: Components,
    /// The lifecycle component: hooks on events, and its report for the status.
    lifecycle: LifecycleHandle,
    /// Word from the deployment: every request the API answers.
    pub(crate) keepalive: KeepaliveHandle,
    /// Records CPU profiles of the binary, one at a time.
    profiler: crate::profile::Profiler,
    /// Makes the services' package programs ready while a version is prepared.
    packages: crate::packages::ServicePackages,
}

/// How long after a hosts-change signal an exit counts as the binary's answer to it.
const SIGNAL_SETTLE: Duration = Duration::from_millis(500);

/// Locks a mutex whose data stays consistent even if a holder panicked (plain values).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Versions {
    /// The versions of the agent started with `context`, whose installed version is `state`
    /// (read from `agent-state.json`); nothing runs until [`Versions::restore`].
    pub(crate) fn new(
        context: &AgentContext,
        state: AgentState,
        supervisors: Arc<Supervisors>,
        lifecycle: LifecycleHandle,
        metrics: Arc<AgentMetrics>,
        fetchers: Fetchers,
        packages: crate::packages::ServicePackages,
    ) -> Versions {
        Versions {
            identity: context.identity.clone(),
            dir: context.dir.clone(),
            log: context.log.clone(),
            metrics,
            supervisors,
            fetchers,
            state: Mutex::new(state),
            hosts: Mutex::new(live_files::membership(&context.dir)),
            own_address: Mutex::new(None),
            rollout: Mutex::new(RolloutSlot::default()),
            rollout_finished: tokio::sync::Notify::new(),
            started_at: Instant::now(),
            components: context.components.clone(),
            lifecycle,
            keepalive: KeepaliveHandle::open(context.dir.root()),
            profiler: crate::profile::Profiler::default(),
            packages,
        }
    }

    /// The supervisor's status as it changes (the selected version's keepalive among it).
    pub(crate) fn supervisor_status(&self) -> tokio::sync::watch::Receiver<SupervisorStatus> {
        self.supervisors.binary().watch()
    }

    /// This machine's address as the hosts.yaml in place gives it (else the identity's), read
    /// again only when the file changed: `Status` is asked often, and the file names every
    /// machine of the deployment.
    fn own_address(&self) -> std::net::IpAddr {
        let digest = lock(&self.hosts).clone();
        let mut known = lock(&self.own_address);
        if known.as_ref().is_none_or(|(seen, _)| *seen != digest) {
            let address = hosts::own_address(&self.dir, &self.identity.name);
            *known = Some((digest, address));
        }
        known.as_ref().and_then(|(_, address)| *address).unwrap_or(self.identity.public_ip)
    }

    /// The answer to `Status`.
    pub(crate) fn status(&self) -> AgentStatus {
        let supervisor = self.supervisors.binary().status();
        let version = lock(&self.state).installed.clone();
        let rollout = lock(&self.rollout).last.clone();
        AgentStatus {
            name: self.identity.name.clone(),
            tag: self.identity.tag.clone(),
            region: self.identity.region.clone(),
            public_ip: self.own_address(),
            private_ip: self.identity.private_ip,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            state: supervisor.state,
            pid: supervisor.pid,
            restarts: supervisor.restarts,
            version,
            hosts: lock(&self.hosts).clone(),
            uptime_secs: supervisor.started_at.map(|started| started.elapsed().as_secs()),
            agent_uptime_secs: self.started_at.elapsed().as_secs(),
            last_exit: supervisor.last_exit,
            health_error: supervisor
                .health_error
                .filter(|_| supervisor.state != BinaryState::Healthy),
            rollout,
            boot: supervisor.boot,
            lifecycle: self.lifecycle.report(),
            keepalive: Some(self.keepalive.report()).filter(|k| k.limit_secs.is_some()),
            services: self.supervisors.service_statuses(),
        }
    }

    /// The metrics page.
    pub(crate) fn metrics_text(&self) -> String {
        let version = lock(&self.state).installed.clone();
        let last_phase = lock(&self.rollout).last.as_ref().map(|rollout| rollout.phase);
        self.metrics.set_rollout_failed(matches!(
            last_phase,
            Some(RolloutPhase::RolledBack | RolloutPhase::Failed)
        ));
        let snapshot =
            self.supervisors.binary().status().metrics_snapshot(version, self.started_at.elapsed());
        self.metrics.render(&snapshot)
    }

    /// `ApplyManifest`: answers at once; the rollout (or hosts-only change) runs in the
    /// background.
    pub(crate) fn apply(self: &Arc<Self>, manifest: Manifest) -> Result<ApplyResponse, Refusal> {
        check_manifest(&manifest, &self.fetchers).map_err(Refusal::BadRequest)?;
        let version = manifest.version();
        let hosts = manifest.hosts_version();
        let mut slot = lock(&self.rollout);
        if slot.under_way {
            let current = slot.last.as_ref().expect("a rollout under way has a record");
            if current.version == version && current.hosts.as_deref() == Some(hosts.as_str()) {
                return Ok(ApplyResponse::Accepted { version });
            }
            return Err(Refusal::Conflict(format!(
                "a rollout to version {} is under way (phase {}); apply again when it is done",
                short_version(&current.version),
                phase_name(current.phase)
            )));
        }
        let installed = lock(&self.state).installed.clone();
        let same_version = installed.as_deref() == Some(version.as_str());
        if same_version && lock(&self.hosts).as_deref() == Some(hosts.as_str()) {
            return Ok(ApplyResponse::Unchanged { version });
        }
        slot.under_way = true;
        slot.last = Some(Rollout {
            version: version.clone(),
            hosts: Some(hosts.clone()),
            hosts_only: same_version,
            previous: installed,
            phase: RolloutPhase::Downloading,
            reason: None,
            log_tail: Vec::new(),
            started_at: unix_now(),
            finished_at: None,
        });
        let versions = self.clone();
        let rollout_version = version.clone();
        let manifest = Arc::new(manifest);
        let task = if same_version {
            let component = format!("hosts.yaml change to {}", short_version(&hosts));
            self.components.spawn(component, Lifetime::UntilDone, async move {
                versions.change_hosts(manifest).await;
            })
        } else {
            let component = format!("rollout of version {}", short_version(&version));
            self.components.spawn(component, Lifetime::UntilDone, async move {
                versions.roll_out(rollout_version, manifest).await;
            })
        };
        slot.task = Some(task);
        Ok(ApplyResponse::Accepted { version })
    }

    /// `Restart`: allowed when a version is installed and no rollout is under way.
    pub(crate) async fn restart(&self) -> Result<AgentStatus, Refusal> {
        let completion = {
            let slot = lock(&self.rollout);
            refuse_during_rollout(&slot, "restart")?;
            let mut state = lock(&self.state);
            if state.installed.is_none() {
                return Err(Refusal::Conflict(
                    "no version is installed, so there is nothing to restart: apply a manifest first"
                        .to_owned(),
                ));
            }
            if state.stopped {
                let started = AgentState { stopped: false, ..state.clone() };
                self.save_state(&started).map_err(Refusal::Internal)?;
                *state = started;
            }
            self.log.event("restart requested");
            self.supervisors.order(Order::Restart)
        };
        completion.wait().await;
        Ok(self.status())
    }

    /// `Stop`: allowed when no rollout is under way; the binary stays stopped, also across
    /// agent restarts, until `Restart` or a new version.
    pub(crate) async fn stop(&self) -> Result<AgentStatus, Refusal> {
        let completion = {
            let slot = lock(&self.rollout);
            refuse_during_rollout(&slot, "stop")?;
            let mut state = lock(&self.state);
            if state.installed.is_some() && !state.stopped {
                let stopped = AgentState { stopped: true, ..state.clone() };
                self.save_state(&stopped).map_err(Refusal::Internal)?;
                *state = stopped;
            }
            self.supervisors.order(Order::Stop)
        };
        completion.wait().await;
        Ok(self.status())
    }

    /// `Drain`: the machine leaves the deployment. The `stopping` hooks run while the binary
    /// still serves, then it is stopped as by `Stop` (and stays stopped), then the lifecycle
    /// undoes what it holds; the failures of the undo are logged and kept in the status.
    pub(crate) async fn drain(&self) -> Result<AgentStatus, Refusal> {
        refuse_during_rollout(&lock(&self.rollout), "drain")?;
        self.log.event("draining: this machine is leaving the deployment");
        if self.lifecycle.has_hooks(Event::Stopping) {
            let stopping = self.lifecycle.run(Event::Stopping, "the machine is being drained");
            if tokio::time::timeout(crate::lifecycle::DEFAULT_LINE_TIMEOUT, stopping).await.is_err()
            {
                self.log.event("draining: the stopping hooks did not end in time");
            }
        }
        self.stop().await?;
        for failure in self.lifecycle.undo().await {
            self.log.event(&format!("draining: undo: {failure}"));
        }
        self.log.event("drained: the binary is stopped and the lifecycle undone");
        Ok(self.status())
    }

    /// `Profile`: a CPU profile of the running binary (see `profile`), as `perf script` text.
    pub(crate) async fn profile(
        &self,
        duration: Duration,
        frequency: u32,
    ) -> Result<Vec<u8>, Refusal> {
        let Some(pid) = self.supervisors.binary().status().pid else {
            return Err(Refusal::Conflict(
                "the binary is not running, so there is nothing to profile".to_owned(),
            ));
        };
        self.log.event(&format!(
            "recording a CPU profile of pid {pid} for {} at {frequency} Hz",
            format_duration(duration)
        ));
        let profile = self.profiler.record(&self.dir, pid, duration, frequency).await;
        match &profile {
            Ok(text) => self.log.event(&format!("profile recorded: {} bytes", text.len())),
            Err(Refusal::Conflict(why) | Refusal::BadRequest(why) | Refusal::Internal(why)) => {
                self.log.event(&format!("profile not recorded: {why}"));
            }
        }
        profile
    }

    fn save_state(&self, state: &AgentState) -> Result<(), String> {
        state
            .save(&self.dir.state_file())
            .map_err(|error| format!("could not record the agent state: {error}"))
    }

    /// Stops a rollout under way (the agent is shutting down); the state file still names the
    /// version installed before it, so the next start runs that one.
    pub(crate) async fn abandon_rollout(&self) {
        let task = lock(&self.rollout).task.take();
        if let Some(task) = task {
            task.abort();
            // A cancelled task is the expected outcome.
            let _ = task.await;
        }
    }

    /// Starts the installed version at agent start. A version that no longer verifies is
    /// replaced by the previous one when that one does, and the reason is reported as a rollout.
    pub(crate) async fn restore(self: &Arc<Self>) {
        let state = lock(&self.state).clone();
        let keep: Vec<&str> =
            state.installed.iter().chain(state.previous.iter()).map(String::as_str).collect();
        artifacts::remove_versions_except(&self.dir, &keep);
        let Some(installed) = state.installed.clone() else {
            self.log.event("no version installed yet: waiting for a manifest");
            return;
        };
        let order = |version: String, manifest: Manifest| {
            let manifest = Arc::new(manifest);
            if state.stopped {
                Order::Hold { version, manifest }
            } else {
                Order::Run { version, manifest }
            }
        };
        let error = match artifacts::load_version(&self.dir, &installed).await {
            Ok(manifest) => {
                self.supervisors.order(order(installed, manifest)).wait().await;
                return;
            }
            Err(error) => error,
        };
        let mut reason =
            format!("version {} could not be restored: {error}", short_version(&installed));
        let mut fallback = None;
        if let Some(previous) = &state.previous {
            match artifacts::load_version(&self.dir, previous).await {
                Ok(manifest) => fallback = Some((previous.clone(), manifest)),
                Err(error) => reason.push_str(&format!(
                    "; the previous version {} could not be restored either: {error}",
                    short_version(previous)
                )),
            }
        }
        let new_state = AgentState {
            installed: fallback.as_ref().map(|(version, _)| version.clone()),
            previous: None,
            stopped: state.stopped,
        };
        if let Err(message) = self.save_state(&new_state) {
            self.log.event(&message);
        }
        *lock(&self.state) = new_state;
        artifacts::remove_version(&self.dir, &installed).await;
        let phase = match fallback {
            Some((previous, manifest)) => {
                self.log.event(&format!(
                    "{reason}; running version {} instead",
                    short_version(&previous)
                ));
                self.supervisors.order(order(previous, manifest)).wait().await;
                RolloutPhase::RolledBack
            }
            None => {
                self.log.event(&format!("{reason}; nothing runs until a manifest is applied"));
                RolloutPhase::Failed
            }
        };
        let now = unix_now();
        lock(&self.rollout).last = Some(Rollout {
            version: installed,
            hosts: lock(&self.hosts).clone(),
            hosts_only: false,
            previous: lock(&self.state).installed.clone(),
            phase,
            reason: Some(reason),
            log_tail: Vec::new(),
            started_at: now,
            finished_at: Some(now),
        });
    }

    async fn roll_out(self: Arc<Self>, version: String, manifest: Arc<Manifest>) {
        let state = lock(&self.state).clone();
        let short = short_version(&version).to_owned();
        let previous_description = match &state.installed {
            Some(previous) => format!("version {}", short_version(previous)),
            None => "no version".to_owned(),
        };
        self.log.event(&format!(
            "rollout of version {short} started: downloading (installed: {previous_description})"
        ));
        let swap_hosts = match self.prepare_rollout(&version, &manifest).await {
            Ok(swapped) => swapped,
            Err((step, reason)) => {
                artifacts::remove_version(&self.dir, &version).await;
                let phase = match state.installed {
                    Some(_) => RolloutPhase::RolledBack,
                    None => RolloutPhase::Failed,
                };
                self.log.event(&format!(
                    "rollout of version {short} failed {step}: {reason}; {previous_description} is left as it was"
                ));
                self.finish_rollout(phase, reason, Vec::new());
                return;
            }
        };
        let run = Order::Run { version: version.clone(), manifest: manifest.clone() };
        let Some(generation) = self.supervisors.order(run).wait().await else {
            return;
        };
        let outcome = self.hold_to_deadline(generation, manifest.health_deadline).await;
        let outcome = outcome.and_then(|()| {
            let installed = AgentState {
                installed: Some(version.clone()),
                previous: state.installed.clone(),
                stopped: false,
            };
            self.save_state(&installed)?;
            *lock(&self.state) = installed;
            Ok(())
        });
        match outcome {
            Ok(()) => {
                let keep: Vec<&str> = [Some(version.as_str()), state.installed.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                artifacts::remove_versions_except(&self.dir, &keep);
                self.log.event(&format!(
                    "rollout of version {short} succeeded: it is installed (previous: {previous_description})"
                ));
                self.finish_rollout(RolloutPhase::Healthy, String::new(), Vec::new());
            }
            Err(reason) => {
                if swap_hosts {
                    self.put_previous_hosts_back();
                }
                self.roll_back(&version, &state, reason).await;
            }
        }
    }

    /// Whether the binary exits (more than `exits_before` exits in all) within `window`.
    async fn exited_within(&self, exits_before: u64, window: Duration) -> bool {
        let mut watch = self.supervisors.binary().watch();
        let deadline = deadline::from_now(window);
        loop {
            if watch.borrow_and_update().exits > exits_before {
                return true;
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return false },
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// What a rollout does before the new version starts, none of which touches what runs: the
    /// version's artifacts downloaded and verified, and, when hosts.yaml changes with it, the new
    /// file staged and then swapped in (phase `starting`). Whether hosts.yaml was swapped, or
    /// the step that failed and why.
    async fn prepare_rollout(
        &self,
        version: &str,
        manifest: &Manifest,
    ) -> Result<bool, (&'static str, String)> {
        artifacts::install_version(&self.fetchers, &self.dir, version, manifest)
            .await
            .map_err(|reason| ("while downloading", reason))?;
        self.packages
            .prepare(version, manifest, &self.log)
            .await
            .map_err(|reason| ("while installing packages", reason))?;
        let new_hosts = manifest.hosts_version();
        let swap_hosts = lock(&self.hosts).as_deref() != Some(new_hosts.as_str());
        if swap_hosts {
            hosts::stage(&self.fetchers, &self.dir, &manifest.hosts)
                .await
                .map_err(|reason| ("while downloading", reason))?;
            if let Err(reason) = live_files::install(&self.fetchers, &self.dir, manifest).await {
                hosts::discard_staged(&self.dir);
                return Err(("while downloading", reason));
            }
        }
        self.set_phase(RolloutPhase::Starting);
        if swap_hosts {
            if let Err(error) = hosts::swap(&self.dir) {
                hosts::discard_staged(&self.dir);
                let reason = format!("could not put the new hosts.yaml in place: {error}");
                return Err(("before it started", reason));
            }
            if let Err(error) = live_files::record_membership(&self.dir, manifest) {
                self.log.event(&error);
            }
            *lock(&self.hosts) = Some(new_hosts);
        }
        Ok(swap_hosts)
    }

    /// Puts the hosts.yaml from before a failed change back in place.
    fn put_previous_hosts_back(&self) {
        if let Err(error) = hosts::restore_previous(&self.dir) {
            self.log.event(&format!("could not put the previous hosts.yaml back: {error}"));
        }
        live_files::forget_membership(&self.dir);
        *lock(&self.hosts) = hosts::digest(&self.dir);
    }

    /// A hosts-only change: the installed version stays; hosts.yaml is swapped in place, then
    /// the binary is restarted (health-gated), signalled or left alone, as `on_hosts_change`
    /// says.
    async fn change_hosts(self: Arc<Self>, manifest: Arc<Manifest>) {
        let new_hosts = manifest.hosts_version();
        let old_hosts = lock(&self.hosts).clone();
        let describe = |digest: Option<&str>| match digest {
            Some(digest) => short_version(digest).to_owned(),
            None => "none".to_owned(),
        };
        let change = format!(
            "hosts.yaml change {} → {}",
            describe(old_hosts.as_deref()),
            describe(Some(&new_hosts))
        );
        self.log.event(&format!("{change} started: the version stays"));
        let staged = match hosts::stage(&self.fetchers, &self.dir, &manifest.hosts).await {
            Ok(()) => live_files::install(&self.fetchers, &self.dir, &manifest)
                .await
                .inspect_err(|_| hosts::discard_staged(&self.dir)),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = staged {
            self.log.event(&format!(
                "{change} failed while downloading: {reason}; the file is left as it was"
            ));
            self.finish_rollout(RolloutPhase::RolledBack, reason, Vec::new());
            return;
        }
        if let Err(error) = hosts::swap(&self.dir) {
            hosts::discard_staged(&self.dir);
            let reason = format!("could not put the new hosts.yaml in place: {error}");
            self.log.event(&format!("{change} failed: {reason}"));
            self.finish_rollout(RolloutPhase::RolledBack, reason, Vec::new());
            return;
        }
        if let Err(error) = live_files::record_membership(&self.dir, &manifest) {
            self.log.event(&error);
        }
        *lock(&self.hosts) = Some(new_hosts);
        let stopped = lock(&self.state).stopped;
        match manifest.on_hosts_change {
            _ if manifest.binary.is_none() => {
                self.log.event(&format!("{change} done: this machine runs no binary to tell"));
            }
            OnHostsChange::None => {
                self.log.event(&format!(
                    "{change} done: the binary was left alone (on_hosts_change: none)"
                ));
            }
            OnHostsChange::Signal(signal) => {
                let exits_before = self.supervisors.binary().status().exits;
                self.supervisors.binary().order(Order::Signal(signal)).wait().await;
                if self.exited_within(exits_before, SIGNAL_SETTLE).await {
                    // The binary does not handle the signal (its default action ends it): the
                    // supervisor restarts it per its policy, with the new file.
                    self.log.event(&format!(
                        "{change}: the binary exited on {} (does it handle it?); it restarts per its restart policy",
                        signal.name()
                    ));
                } else {
                    self.log
                        .event(&format!("{change} done: the binary was sent {}", signal.name()));
                }
            }
            OnHostsChange::Restart if stopped => {
                self.log.event(&format!(
                    "{change} done: the binary is stopped by request, so it is not restarted"
                ));
            }
            OnHostsChange::Restart => {
                self.set_phase(RolloutPhase::Starting);
                let Some(generation) = self.supervisors.binary().order(Order::Restart).wait().await
                else {
                    return;
                };
                let generation = Generations::binary_only(generation);
                if let Err(reason) =
                    self.hold_to_deadline(generation, manifest.health_deadline).await
                {
                    let reason =
                        reason.replacen("the new version", "the binary with the new hosts.yaml", 1);
                    let log_tail = self.log.recent_lines();
                    self.log.event(&format!(
                        "{change} failed: {reason}; putting the previous file back and restarting"
                    ));
                    self.put_previous_hosts_back();
                    let mut reason = reason;
                    if let Some(generation) =
                        self.supervisors.binary().order(Order::Restart).wait().await
                        && let Err(error) = self
                            .hold_to_deadline(
                                Generations::binary_only(generation),
                                manifest.health_deadline,
                            )
                            .await
                    {
                        let error = error.replacen("the new version", "the binary", 1);
                        reason.push_str(&format!(
                            "; after putting the previous hosts.yaml back, {error}"
                        ));
                    }
                    self.finish_rollout(RolloutPhase::RolledBack, reason, log_tail);
                    return;
                }
                self.log
                    .event(&format!("{change} done: the binary restarted with it and is healthy"));
            }
        }
        self.finish_rollout(RolloutPhase::Healthy, String::new(), Vec::new());
    }

    /// Watches the new version until it is healthy, fails, or the deadline passes: its binary
    /// (when it runs one), then each service, all to the same deadline.
    async fn hold_to_deadline(
        &self,
        generations: Generations,
        health_deadline: Duration,
    ) -> Result<(), String> {
        let deadline = deadline::from_now(health_deadline);
        if let Some(generation) = generations.binary {
            let watch = self.supervisors.binary().watch();
            hold_one(watch, generation, deadline, health_deadline, "the new version").await?;
        }
        for (name, generation) in generations.services {
            let Some(watch) = self.supervisors.service_watch(&name) else {
                continue;
            };
            let subject = format!("the new version's service {name}");
            hold_one(watch, generation, deadline, health_deadline, &subject).await?;
        }
        Ok(())
    }

    async fn roll_back(&self, version: &str, state: &AgentState, reason: String) {
        let log_tail = self.log.recent_lines();
        let short = short_version(version);
        let mut reason = reason;
        let phase = match &state.installed {
            Some(previous) => match artifacts::load_version(&self.dir, previous).await {
                Ok(manifest) => {
                    let manifest = Arc::new(manifest);
                    let version = previous.clone();
                    let health_deadline = manifest.health_deadline;
                    let order = if state.stopped {
                        Order::Hold { version, manifest }
                    } else {
                        Order::Run { version, manifest }
                    };
                    self.log.event(&format!(
                        "rollout of version {short} failed: {reason}; rolling back to version {}",
                        short_version(previous)
                    ));
                    let generation = self.supervisors.order(order).wait().await;
                    // The rollout ends when the previous version serves again (or its own
                    // health deadline passed), so whoever waits for the verdict finds it serving.
                    if let Some(generation) = generation.filter(|_| !state.stopped)
                        && let Err(error) = self.hold_to_deadline(generation, health_deadline).await
                    {
                        let error = error.replacen("the new version", "the previous version", 1);
                        reason.push_str(&format!("; after the rollback, {error}"));
                    }
                    RolloutPhase::RolledBack
                }
                Err(error) => {
                    reason.push_str(&format!(
                        "; the previous version {} could not be restored: {error}",
                        short_version(previous)
                    ));
                    self.log.event(&format!("rollout of version {short} failed: {reason}"));
                    self.supervisors.order(Order::Clear).wait().await;
                    RolloutPhase::Failed
                }
            },
            None => {
                self.log.event(&format!(
                    "rollout of version {short} failed: {reason}; there is no previous version to go back to"
                ));
                self.supervisors.order(Order::Clear).wait().await;
                RolloutPhase::Failed
            }
        };
        artifacts::remove_version(&self.dir, version).await;
        self.finish_rollout(phase, reason, log_tail);
    }

    fn set_phase(&self, phase: RolloutPhase) {
        if let Some(rollout) = lock(&self.rollout).last.as_mut() {
            rollout.phase = phase;
        }
    }

    fn finish_rollout(&self, phase: RolloutPhase, reason: String, log_tail: Vec<String>) {
        {
            let mut slot = lock(&self.rollout);
            slot.under_way = false;
            slot.task = None;
            if let Some(rollout) = slot.last.as_mut() {
                rollout.phase = phase;
                rollout.reason = (!reason.is_empty()).then_some(reason);
                rollout.log_tail = log_tail;
                rollout.finished_at = Some(unix_now());
            }
        }
        self.rollout_finished.notify_waiters();
    }

    /// `WaitRollout`: the status once the rollout of `version` has finished, or when `timeout`
    /// has passed, whichever comes first.
    pub(crate) async fn wait_rollout(&self, version: &str, timeout: Duration) -> AgentStatus {
        let deadline = deadline::from_now(timeout);
        loop {
            // Registered before looking, so a rollout finishing in between still wakes us.
            let finished = self.rollout_finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let done = lock(&self.rollout)
                .last
                .as_ref()
                .is_some_and(|r| r.version == version && r.phase.is_done());
            if done || Instant::now() >= deadline {
                return self.status();
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return self.status();
            }
        }
    }
}

/// Watches one supervisor (`subject` in messages) until what it runs is healthy, fails, or
/// `deadline` passes.
async fn hold_one(
    mut watch: tokio::sync::watch::Receiver<SupervisorStatus>,
    generation: u64,
    deadline: Instant,
    health_deadline: Duration,
    subject: &str,
) -> Result<(), String> {
    loop {
        {
            let status = watch.borrow_and_update();
            let last_exit = status.last_exit_description.clone().unwrap_or_default();
            if status.generation != generation {
                return Err("the rollout was interrupted by another order".to_owned());
            }
            if status.became_healthy {
                return Ok(());
            }
            if let Some(boot) = status.boot.as_ref().filter(|boot| boot.blocked) {
                return Err(describe_blocked_boot(boot));
            }
            if status.exits_before_healthy >= CRASH_LOOP_EXITS {
                return Err(format!(
                    "{subject} exited {} times without becoming healthy; the last time it {last_exit}",
                    status.exits_before_healthy
                ));
            }
            if status.state == BinaryState::Stopped {
                return Err(format!(
                    "{subject} {last_exit} before it became healthy, and its restart policy on-failure does not restart it"
                ));
            }
        }
        tokio::select! {
            changed = watch.changed() => if changed.is_err() {
                return Err("the agent is stopping".to_owned());
            },
            () = tokio::time::sleep_until(deadline) => {
                let status = watch.borrow();
                let mut reason = format!(
                    "{subject} did not become healthy within its health deadline of {}",
                    format_duration(health_deadline)
                );
                if let Some(error) = &status.health_error {
                    reason.push_str(&format!("; last health check: {error}"));
                } else if let Some(exit) = &status.last_exit_description {
                    reason.push_str(&format!("; the last time it {exit}"));
                }
                return Err(reason);
            }
        }
    }
}

/// Why a version whose boot additions failed did not start: the failed step, how, and the last
/// line of its output.
fn describe_blocked_boot(boot: &BootReport) -> String {
    let Some(step) = boot.first_failure() else {
        return "a critical boot step failed, so the new version was not started".to_owned();
    };
    let mut reason = format!(
        "the boot {} `{}` failed{}, so the new version was not started",
        step.kind.as_str(),
        step.target,
        step.message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default()
    );
    if let Some(last) =
        step.output.as_deref().and_then(|o| o.lines().rev().find(|l| !l.trim().is_empty()))
    {
        reason.push_str(&format!("; its output ends: {}", last.trim()));
    }
    reason
}

fn refuse_during_rollout(slot: &RolloutSlot, what: &str) -> Result<(), Refusal> {
    match slot.last.as_ref().filter(|_| slot.under_way) {
        Some(rollout) => Err(Refusal::Conflict(format!(
            "cannot {what} while the rollout to version {} is under way (phase {}); try again when it is done",
            short_version(&rollout.version),
            phase_name(rollout.phase)
        ))),
        None => Ok(()),
    }
}

/// A phase as the API writes it.
fn phase_name(phase: RolloutPhase) -> &'static str {
    match phase {
        RolloutPhase::Downloading => "downloading",
        RolloutPhase::Starting => "starting",
        RolloutPhase::Healthy => "healthy",
        RolloutPhase::RolledBack => "rolled-back",
        RolloutPhase::Failed => "failed",
    }
}

/// Refuses a manifest the agent could not run as asked, before anything changes.
fn check_manifest(manifest: &Manifest, fetchers: &Fetchers) -> Result<(), String> {
    if manifest.binary.is_some() != manifest.config.is_some() {
        return Err("`binary` and `config` come together: both, or neither on a machine that runs only services".to_owned());
    }
    let mut artifacts: Vec<(String, &Artifact)> = [
        ("binary", manifest.binary.as_ref()),
        ("config", manifest.config.as_ref()),
        ("hosts", Some(&manifest.hosts)),
    ]
    .into_iter()
    .filter_map(|(name, artifact)| Some((name.to_owned(), artifact?)))
    .collect();
    let mut names = std::collections::BTreeSet::new();
    for (index, service) in manifest.services.iter().enumerate() {
        let at = format!("services[{index}]");
        if !ServiceManifest::name_is_valid(&service.name) {
            return Err(format!(
                "`{at}.name` {:?} must be lower-case letters, digits and `-`, starting with a letter, at most 40",
                service.name
            ));
        }
        if !names.insert(service.name.as_str()) {
            return Err(format!("`{at}.name` {:?} names a service twice", service.name));
        }
        match &service.program {
            ServiceProgram::System(path) if !path.starts_with('/') || path.contains('\0') => {
                return Err(format!("`{at}.program.system` {path:?} must be an absolute path"));
            }
            ServiceProgram::System(_) => {}
            ServiceProgram::Package(program)
                if !flotilla_spec::manifest::PackageProgram::name_is_valid(&program.package) =>
            {
                return Err(format!(
                    "`{at}.program.package.package` {:?} is not a Debian package name",
                    program.package
                ));
            }
            ServiceProgram::Package(program)
                if !program.path.starts_with('/') || program.path.contains('\0') =>
            {
                return Err(format!(
                    "`{at}.program.package.path` {:?} must be an absolute path",
                    program.path
                ));
            }
            ServiceProgram::Package(_) => {}
            ServiceProgram::Artifact(program) => {
                artifacts.push((format!("{at}.program.artifact"), program));
            }
        }
        for (file_name, file) in &service.files {
            let plain = !file_name.is_empty()
                && file_name != "."
                && file_name != ".."
                && file_name != crate::artifacts::SERVICE_PROGRAM_FILE
                && !file_name.contains(['/', '\0']);
            if !plain {
                return Err(format!(
                    "`{at}.files` {file_name:?} must be a plain file name (no `/`), not `program`"
                ));
            }
            artifacts.push((format!("{at}.files.{file_name}"), file));
        }
        for (file_name, file) in &service.live_files {
            if file_name.is_empty()
                || file_name.starts_with('.')
                || file_name.ends_with(".partial")
                || file_name.contains(['/', '\0'])
            {
                return Err(format!(
                    "`{at}.live_files` {file_name:?} must be a plain file name (no `/`, not hidden, not `.partial`)"
                ));
            }
            artifacts.push((format!("{at}.live_files.{file_name}"), file));
        }
        if service.args.iter().chain(service.env.values()).any(|arg| arg.contains('\0'))
            || service.env.keys().any(|key| key.is_empty() || key.contains(['=', '\0']))
        {
            return Err(format!("`{at}`: args and env must not contain NUL, env names no `=`"));
        }
        let restart = &service.restart;
        if restart.initial_backoff.is_zero()
            || restart.max_backoff < restart.initial_backoff
            || restart.max_backoff > MAX_RESTART_BACKOFF
        {
            return Err(format!(
                "`{at}.restart`: initial_backoff must be longer than 0s, max_backoff at least initial_backoff and at most {}",
                format_duration(MAX_RESTART_BACKOFF)
            ));
        }
    }
    for (name, artifact) in artifacts {
        if !is_sha256_hex(&artifact.sha256) {
            return Err(format!("`{name}.sha256` must be 64 lower-case hex digits"));
        }
        fetchers.fetcher_for(&artifact.url).map_err(|error| format!("`{name}.url`: {error}"))?;
    }
    for (key, value) in &manifest.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!(
                "`env.{key}`: names must be non-empty without `=` or NUL, values without NUL"
            ));
        }
    }
    if manifest.args.iter().any(|arg| arg.contains('\0')) {
        return Err("`args` must not contain NUL".to_owned());
    }
    if manifest.health_deadline.is_zero() || manifest.health_deadline > MAX_HEALTH_DEADLINE {
        return Err(format!(
            "`health_deadline` must be longer than 0s and at most {}",
            format_duration(MAX_HEALTH_DEADLINE)
        ));
    }
    let restart = &manifest.restart;
    if restart.initial_backoff.is_zero() || restart.max_backoff < restart.initial_backoff {
        return Err(
            "`restart`: initial_backoff must be longer than 0s and max_backoff at least initial_backoff"
                .to_owned(),
        );
    }
    if restart.max_backoff > MAX_RESTART_BACKOFF {
        return Err(format!(
            "`restart`: initial_backoff and max_backoff must be at most {}",
            format_duration(MAX_RESTART_BACKOFF)
        ));
    }
    if let HealthCheck::Http { path, .. } = &manifest.health
        && (!path.starts_with('/') || path.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        return Err(format!("`health.path` {path:?} must start with `/` and have no spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::manifest::Artifact;
    use flotilla_spec::{RestartPolicy, RestartSpec};

    fn manifest() -> Manifest {
        let artifact = |name: &str| Artifact {
            url: format!("file:///artifacts/{name}"),
            sha256: "a".repeat(64),
            size: 1,
        };
        Manifest {
            binary: Some(artifact("binary")),
            config: Some(artifact("config")),
            hosts: artifact("hosts"),
            args: Vec::new(),
            env: Default::default(),
            health: HealthCheck::None,
            restart: RestartSpec::default(),
            health_deadline: Duration::from_secs(60),
            boot: Default::default(),
            lifecycle: None,
            keepalive: None,
            on_hosts_change: OnHostsChange::Restart,
            services: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn manifests_with_durations_past_the_spec_bounds_are_refused() {
        let fetchers = Fetchers::default();
        assert_eq!(check_manifest(&manifest(), &fetchers), Ok(()));
        let huge = Duration::from_secs(580_000_000_000 * 31_557_600);

        let mut bounded = manifest();
        bounded.health_deadline = MAX_HEALTH_DEADLINE;
        bounded.restart = RestartSpec {
            policy: RestartPolicy::Always,
            initial_backoff: MAX_RESTART_BACKOFF,
            max_backoff: MAX_RESTART_BACKOFF,
        };
        assert_eq!(check_manifest(&bounded, &fetchers), Ok(()));

        for deadline in [huge, Duration::MAX, MAX_HEALTH_DEADLINE + Duration::from_millis(1)] {
            let mut long = manifest();
            long.health_deadline = deadline;
            let error = check_manifest(&long, &fetchers).unwrap_err();
            assert_eq!(error, "`health_deadline` must be longer than 0s and at most 6h");
        }
        for (initial, max) in [
            (huge, huge),
            (Duration::from_secs(1), Duration::MAX),
            (Duration::from_secs(1), MAX_RESTART_BACKOFF + Duration::from_millis(1)),
        ] {
            let mut long = manifest();
            long.restart.initial_backoff = initial;
            long.restart.max_backoff = max;
            let error = check_manifest(&long, &fetchers).unwrap_err();
            assert_eq!(error, "`restart`: initial_backoff and max_backoff must be at most 1h");
        }
    }
}
