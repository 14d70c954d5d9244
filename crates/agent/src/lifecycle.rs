//! The lifecycle component: the manifest's `lifecycle:` (an ec2fleetd config) `exec` hooks, run
//! on the machine's events, and the IMDS poller that brings the events EC2 announces.
//!
//! Events and where they come from:
//! - `starting`: the supervisor awaits it before it starts a version on an order (after the
//!   boot additions, as part of the same interruptible step).
//! - `started`: the binary became healthy for the first time on this machine; recorded in
//!   `lifecycle-state.json`, so it never runs twice, not even after the agent restarts.
//! - `binary-exited`: the binary exited without being told to; `failed`: it is crash-looping.
//! - `interrupted`, `rebalance`, `scheduled-event`: IMDS notices (`imds.rs`). After the
//!   `interrupted` hooks the binary is stopped gracefully (SIGTERM, SIGKILL after the stop
//!   grace), before the notice's deadline.
//! - `stopping`: the agent shuts down; awaited before the binary is stopped.
//!
//! Hooks run one event at a time, in file order, lines one after the other, each without a
//! shell in the work directory, killed with its process group at its `timeout` (default
//! [`DEFAULT_LINE_TIMEOUT`]); a line whose exit code `ec` refuses fails, and the event's
//! remaining lines still run (each reported). Macros are expanded with the values known
//! (IMDS's metadata, the manifest's name and index, the event's); a macro without a value is
//! empty, as ec2fleetd's are.
//!
//! With a machine cloud registered (AWS, see `machine_cloud`), the engine (`domains`) runs
//! the rest of the config: at `starting`, after its hooks, every domain's volumes and records
//! come up (in parallel) and the hostname is set, before the binary starts; a domain that fails
//! keeps the binary stopped and runs the `failed` hooks and notifications with `{error}`.
//! Notifications (`notify`) go out on every event their `matrix` turns on. After `interrupted`
//! and at stop, once the binary is down, the engine undoes what it holds (records restored,
//! volumes unmounted and detached). Without a cloud (the local provider, where `validate` and
//! `create` refuse volumes, records and notifications), the status lists what does not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use flotilla_spec::Manifest;
use flotilla_spec::api::{
    BinaryState, HookOutcome, HookResult, LifecycleEventReport, LifecycleReport,
};
use flotilla_spec::fleetd::{Event, ExecLine, FleetdConfig, MACROS, expand_macros};
use flotilla_spec::manifest::ManifestLifecycle;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::binary_log::BinaryLog;
use crate::domains::domain_values;
use crate::domains::{Engine, EngineContext};
use crate::imds::{ImdsClient, Notice, NoticePoller};
use crate::instance_dir::write_file_atomically;
use crate::machine_cloud::{CallLog, MachineCloud, MachineFacts};
use crate::metrics::AgentMetrics;
use crate::supervisor::{Order, SupervisorHandle, SupervisorStatus};
use crate::time::unix_now;

/// A hook line without `timeout` is killed after this long.
pub(crate) const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(300);
/// Hook results kept for the status.
const KEPT_RESULTS: usize = 64;
/// Output kept of a hook line, for its report.
const KEPT_OUTPUT: usize = 1024;
const STATE_FILE: &str = "lifecycle-state.json";

/// What survives an agent restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    /// `started` hooks have run on this machine.
    started: bool,
}

/// One event with its macro values.
#[derive(Debug)]
struct Trigger {
    event: Event,
    detail: String,
    values: Vec<(&'static str, String)>,
    /// Told whether the event went well (for `starting`: the domains are up).
    done: Option<oneshot::Sender<bool>>,
}

#[derive(Debug, Default)]
struct Shared {
    lifecycle: Option<ManifestLifecycle>,
    report: LifecycleReport,
    metadata: Vec<(&'static str, String)>,
    imds_ok: Option<bool>,
    /// The engine, once `starting` made it (it holds volumes and records).
    engine: Option<Arc<Engine>>,
}

/// What the engine needs of the machine, beyond the component's context.
#[derive(Clone, Debug)]
pub(crate) struct MachineContext {
    /// The machine cloud the binary registered, logging its calls in `calls`; `None` under
    /// the local provider.
    pub(crate) cloud: Option<Arc<dyn MachineCloud>>,
    /// Every call made to the cloud, for `{transaction_log}`.
    pub(crate) calls: CallLog,
    pub(crate) name: String,
    pub(crate) region: String,
    pub(crate) public_ip: std::net::IpAddr,
    pub(crate) private_ip: std::net::IpAddr,
    /// Where devices and the mount table are (the boot root: `/` on AWS).
    pub(crate) device_root: PathBuf,
    /// Whether the agent may set the hostname (on its own machine, not the local provider).
    pub(crate) may_set_hostname: bool,
    pub(crate) metrics: Arc<AgentMetrics>,
}

/// Sends events to the lifecycle component and reads its report.
#[derive(Clone, Debug)]
pub(crate) struct LifecycleHandle {
    triggers: mpsc::UnboundedSender<Trigger>,
    shared: Arc<Mutex<Shared>>,
    not_applicable_on: String,
    has_cloud: bool,
    may_set_hostname: bool,
}

impl LifecycleHandle {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The manifest whose lifecycle applies from now on (`None`: nothing installed).
    pub(crate) fn select(&self, manifest: Option<&Manifest>) {
        let lifecycle = manifest.and_then(|m| m.lifecycle.clone());
        let mut shared = self.shared();
        shared.report.not_applicable = lifecycle
            .as_ref()
            .map(|l| {
                not_applicable(
                    &l.config,
                    &self.not_applicable_on,
                    self.has_cloud,
                    self.may_set_hostname,
                )
            })
            .unwrap_or_default();
        shared.lifecycle = lifecycle;
    }

    /// Whether the selected lifecycle has work on `event`: hooks, or at `starting` volumes,
    /// records or a hostname to bring up.
    pub(crate) fn has_hooks(&self, event: Event) -> bool {
        self.shared().lifecycle.as_ref().is_some_and(|l| {
            has_hooks(&l.config, event)
                || (event == Event::Starting
                    && ((self.has_cloud && crate::domains::needs_cloud_init(&l.config))
                        || (self.may_set_hostname && l.config.hostname.is_some())))
        })
    }

    /// Undoes what the engine holds (records, then volumes); the failures. Call once the
    /// binary is down.
    pub(crate) async fn undo(&self) -> Vec<String> {
        let engine = self.shared().engine.clone();
        match engine {
            Some(engine) => engine.undo().await,
            None => Vec::new(),
        }
    }

    /// Runs `event`'s hooks (and at `starting` brings the domains up); resolves once they ran,
    /// with whether the event went well (true at once when the component has ended).
    pub(crate) fn run(&self, event: Event, detail: &str) -> impl Future<Output = bool> + use<> {
        let (done, finished) = oneshot::channel();
        let _ = self.triggers.send(Trigger {
            event,
            detail: detail.to_owned(),
            values: Vec::new(),
            done: Some(done),
        });
        async move { finished.await.unwrap_or(true) }
    }

    /// Keeps an error for the status (the last few).
    fn push_error(&self, error: String) {
        let mut shared = self.shared();
        let errors = &mut shared.report.errors;
        errors.push(error);
        if errors.len() > KEPT_RESULTS {
            errors.remove(0);
        }
    }

    fn send(&self, event: Event, detail: String, values: Vec<(&'static str, String)>) {
        let _ = self.triggers.send(Trigger { event, detail, values, done: None });
    }

    /// The report for the status, when a lifecycle is selected or an event was seen.
    pub(crate) fn report(&self) -> Option<LifecycleReport> {
        let shared = self.shared();
        if shared.lifecycle.is_none() && shared.report.last_event.is_none() {
            return None;
        }
        let mut report = shared.report.clone();
        report.imds = shared.imds_ok.map(|ok| if ok { "ok" } else { "failing" }.to_owned());
        Some(report)
    }
}

/// The parts of `config` this agent does not run, for the status.
fn not_applicable(
    config: &FleetdConfig,
    runs_on: &str,
    has_cloud: bool,
    may_set_hostname: bool,
) -> Vec<String> {
    let mut parts = Vec::new();
    if config.hostname.is_some() && !may_set_hostname {
        parts.push(format!("set-hostname: not applicable on {runs_on}"));
    }
    if has_cloud {
        return parts;
    }
    for domain in &config.domains {
        for (key, present) in [
            ("attach-volume", !domain.attach_volume.is_empty()),
            ("update-route53", !domain.update_route53.is_empty()),
            ("notify", !domain.notify.is_empty()),
        ] {
            if present {
                parts.push(format!("domains.{}.{key}: not applicable on {runs_on}", domain.name));
            }
        }
    }
    parts
}

fn has_hooks(config: &FleetdConfig, event: Event) -> bool {
    config.domains.iter().any(|d| {
        !FleetdConfig::hooks_on(d, event).is_empty()
            || d.attach_volume
                .iter()
                .flat_map(|v| &v.exec)
                .any(|spec| spec.on.as_ref().is_some_and(|events| events.contains(&event)))
    })
}

/// What the component needs.
pub(crate) struct LifecycleContext {
    pub(crate) dir: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) log: Arc<BinaryLog>,
    pub(crate) imds_endpoint: Option<String>,
    pub(crate) runs_on: String,
    pub(crate) machine: MachineContext,
}

/// The handle, and a function that makes the component's task once the supervisor exists.
pub(crate) fn lifecycle(
    context: LifecycleContext,
) -> (LifecycleHandle, impl FnOnce(SupervisorHandle) -> LifecycleTask) {
    let (triggers, receiver) = mpsc::unbounded_channel();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let handle = LifecycleHandle {
        triggers: triggers.clone(),
        shared: shared.clone(),
        not_applicable_on: context.runs_on.clone(),
        has_cloud: context.machine.cloud.is_some(),
        may_set_hostname: context.machine.may_set_hostname,
    };
    let poller_handle = handle.clone();
    let make = move |supervisor: SupervisorHandle| LifecycleTask {
        context,
        receiver,
        handle: poller_handle,
        supervisor,
    };
    (handle, make)
}

/// The component's task (see [`LifecycleTask::run`]).
pub(crate) struct LifecycleTask {
    context: LifecycleContext,
    receiver: mpsc::UnboundedReceiver<Trigger>,
    handle: LifecycleHandle,
    supervisor: SupervisorHandle,
}

impl LifecycleTask {
    /// Runs hooks as events come, watches the supervisor for `started`, `binary-exited` and
    /// `failed`, and polls IMDS, until `shutdown`.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let state_path = self.context.dir.join(STATE_FILE);
        let mut persisted: PersistedState = fs_err::read(&state_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let poller = self.context.imds_endpoint.clone().map(|endpoint| {
            tokio::spawn(poll_imds(
                endpoint,
                self.handle.clone(),
                self.context.log.clone(),
                self.context.machine.metrics.clone(),
            ))
        });
        let mut status = self.supervisor.watch();
        let mut seen = status.borrow().clone();
        loop {
            tokio::select! {
                _ = crate::shutdown_signalled(&mut shutdown) => break,
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = status.borrow_and_update().clone();
                    for (event, detail) in events_between(&seen, &now) {
                        self.handle.send(event, detail, Vec::new());
                    }
                    seen = now;
                }
                trigger = self.receiver.recv() => {
                    let Some(trigger) = trigger else { break };
                    self.on_trigger(trigger, &mut persisted, &state_path).await;
                }
            }
        }
        // Events already queued (`stopping` among them) still run.
        while let Ok(trigger) = self.receiver.try_recv() {
            self.on_trigger(trigger, &mut persisted, &state_path).await;
        }
        if let Some(poller) = poller {
            poller.abort();
        }
    }

    async fn on_trigger(&self, trigger: Trigger, persisted: &mut PersistedState, path: &Path) {
        let Trigger { event, detail, values, done } = trigger;
        if event == Event::Started {
            if persisted.started {
                return;
            }
            persisted.started = true;
            let json = serde_json::to_vec(&*persisted).expect("a flag serializes to JSON");
            if let Err(error) = write_file_atomically(path, &json, 0o600) {
                self.context.log.event(&format!("lifecycle: could not record `started`: {error}"));
            }
        }
        let lifecycle = self.handle.shared().lifecycle.clone();
        {
            let mut shared = self.handle.shared();
            shared.report.last_event =
                Some(LifecycleEventReport { event, at: unix_now(), detail: detail.clone() });
        }
        let mut ok = true;
        if let Some(lifecycle) = lifecycle {
            let metadata = self.handle.shared().metadata.clone();
            let mut base = macro_values(&lifecycle, event, &self.context.work);
            for (name, value) in metadata.into_iter().chain(values) {
                base.insert(name.to_owned(), value);
            }
            // At `starting`, the engine (the machine's facts from IMDS) and the cloud's
            // clients are made while the hooks run: neither sends a change anywhere.
            let ready = async {
                if event == Event::Starting
                    && let Some(cloud) = &self.context.machine.cloud
                    && crate::domains::needs_cloud_init(&lifecycle.config)
                    && let Ok(engine) = self.engine(cloud, &lifecycle).await
                {
                    cloud.prepare(engine.region()).await;
                }
            };
            tokio::join!(self.run_hooks(&lifecycle.config, event, &base), ready);
            if event == Event::Starting
                && let Err(errors) = self.bring_up(&lifecycle, &base).await
            {
                ok = false;
                for error in &errors {
                    self.report_error(&format!("lifecycle: starting: {error}"));
                }
                let mut failed = base.clone();
                failed.insert("daemon_state".to_owned(), Event::Failed.as_str().to_owned());
                failed.insert("error".to_owned(), errors.join("; "));
                self.run_hooks(&lifecycle.config, Event::Failed, &failed).await;
                self.notify(&lifecycle.config, Event::Failed, &failed).await;
            }
            self.notify(&lifecycle.config, event, &base).await;
        }
        if event == Event::Interrupted {
            self.context.log.event("lifecycle: interrupted: stopping the binary");
            // Not awaited here: the supervisor may itself be waiting for `starting` hooks.
            // Once the binary is down, what the engine holds is undone.
            let stopped = self.supervisor.order(Order::Stop);
            let handle = self.handle.clone();
            let log = self.context.log.clone();
            tokio::spawn(async move {
                stopped.wait().await;
                for failure in handle.undo().await {
                    log.event(&format!("lifecycle: interrupted: undo: {failure}"));
                    handle.push_error(failure);
                }
            });
        }
        if let Some(done) = done {
            let _ = done.send(ok);
        }
    }

    /// Brings the domains up (volumes, records) and sets the hostname, at `starting`.
    async fn bring_up(
        &self,
        lifecycle: &ManifestLifecycle,
        base: &BTreeMap<String, String>,
    ) -> Result<(), Vec<String>> {
        let config = &lifecycle.config;
        let machine = &self.context.machine;
        if let Some(cloud) = &machine.cloud
            && crate::domains::needs_cloud_init(config)
        {
            let engine = self.engine(cloud, lifecycle).await.map_err(|e| vec![e])?;
            let outcome = engine.init(config, Event::Starting, base).await;
            for domain in &outcome.domains {
                for hook in &domain.hooks {
                    self.keep_hook(hook.clone());
                }
                for skipped in &domain.skipped {
                    self.report_error(&format!("lifecycle: domains.{}: {skipped}", domain.domain));
                }
            }
            if outcome.failed() {
                return Err(outcome.errors());
            }
            for error in outcome.errors() {
                self.report_error(&format!("lifecycle: {error}"));
            }
            self.context.log.event("lifecycle: the domains are up");
        }
        if machine.may_set_hostname
            && let Some(name) =
                crate::domains::wanted_hostname(config, base).map_err(|e| vec![e])?
        {
            crate::domains::set_hostname(&name).map_err(|e| vec![e])?;
            self.context.log.event(&format!("lifecycle: hostname set to {name}"));
        }
        Ok(())
    }

    /// The engine, made at the first `starting` from IMDS's facts.
    async fn engine(
        &self,
        cloud: &Arc<dyn MachineCloud>,
        lifecycle: &ManifestLifecycle,
    ) -> Result<Arc<Engine>, String> {
        if let Some(engine) = self.handle.shared().engine.clone() {
            return Ok(engine);
        }
        let endpoint = self.context.imds_endpoint.as_deref().ok_or(
            "the agent has no IMDS endpoint, so the instance id and zone volumes and records need are unknown",
        )?;
        let mut client = ImdsClient::new(endpoint);
        let facts = crate::machine_facts::read_facts(&mut client)
            .await
            .map_err(|e| format!("reading the machine's facts from IMDS: {e}"))?;
        let machine = &self.context.machine;
        let engine = Arc::new(Engine::new(EngineContext {
            cloud: cloud.clone(),
            calls: machine.calls.clone(),
            facts: MachineFacts {
                instance_id: facts.instance_id,
                region: facts.region,
                zone: facts.zone,
                index: Some(lifecycle.instance_index),
                transaction_id: format!("{}-{}", machine.name, crate::machine_facts::boot_id()),
            },
            public_ip: Some(machine.public_ip),
            private_ip: Some(machine.private_ip),
            device_root: machine.device_root.clone(),
            holds_file: self.context.dir.join(crate::domains::HOLDS_FILE),
            work: self.context.work.clone(),
            volume_wait: crate::domains::VOLUME_WAIT,
            device_wait: crate::devices::DEVICE_WAIT,
        }));
        self.handle.shared().engine = Some(engine.clone());
        Ok(engine)
    }

    /// Sends `event`'s notifications; failures are logged, counted and reported.
    async fn notify(&self, config: &FleetdConfig, event: Event, base: &BTreeMap<String, String>) {
        let Some(cloud) = &self.context.machine.cloud else { return };
        if !config.domains.iter().any(|d| d.notify.iter().any(|n| n.sends_on(event))) {
            return;
        }
        let outcome = crate::notify::send_notifications(
            cloud,
            config,
            event,
            |domain| domain_values(base, domain, &self.context.machine.calls),
            &self.context.machine.region,
            crate::notify::NOTIFY_DEADLINE,
        )
        .await;
        for failure in outcome.failed {
            self.context.machine.metrics.count_notification_failure();
            self.report_error(&format!("lifecycle: {event} notification: {failure}"));
        }
    }

    fn report_error(&self, line: &str) {
        self.context.log.event(line);
        self.handle.push_error(line.to_owned());
    }

    fn keep_hook(&self, result: HookResult) {
        let mut shared = self.handle.shared();
        let hooks = &mut shared.report.hooks;
        hooks.push(result);
        if hooks.len() > KEPT_RESULTS {
            hooks.remove(0);
        }
    }

    async fn run_hooks(
        &self,
        config: &FleetdConfig,
        event: Event,
        base: &BTreeMap<String, String>,
    ) {
        let engine = self.handle.shared().engine.clone();
        for domain in &config.domains {
            let values = domain_values(base, &domain.name, &self.context.machine.calls);
            for line in FleetdConfig::hooks_on(domain, event) {
                let result = run_line(line, &values, &self.context.work).await;
                self.report_hook(HookResult { event, domain: domain.name.clone(), ..result });
            }
            if let Some(engine) = &engine {
                for result in engine.volume_hooks(domain, event, base).await {
                    self.report_hook(result);
                }
            }
        }
    }

    /// Logs a hook's result and keeps it in the report.
    fn report_hook(&self, result: HookResult) {
        self.context.log.event(&format!(
            "lifecycle: {} hook {:?}: {:?}{}",
            result.event,
            result.argv,
            result.outcome,
            if result.message.is_empty() { String::new() } else { format!(": {}", result.message) }
        ));
        self.keep_hook(result);
    }
}

/// The events a change of the supervisor's status means.
fn events_between(before: &SupervisorStatus, after: &SupervisorStatus) -> Vec<(Event, String)> {
    let mut events = Vec::new();
    if after.exits > before.exits {
        let detail = after.last_exit_description.clone().unwrap_or_default();
        events.push((Event::BinaryExited, detail));
    }
    if after.state == BinaryState::Healthy && !before.became_healthy && after.became_healthy {
        events.push((Event::Started, "the binary is healthy".to_owned()));
    }
    if after.state == BinaryState::CrashLooping && before.state != BinaryState::CrashLooping {
        events.push((Event::Failed, "the binary is crash-looping".to_owned()));
    }
    events
}

/// The macro values of `event` on this machine; every macro flotilla knows is present, empty
/// where there is no value.
fn macro_values(
    lifecycle: &ManifestLifecycle,
    event: Event,
    work: &Path,
) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> =
        MACROS.iter().map(|(name, _)| ((*name).to_owned(), String::new())).collect();
    values.insert("name".to_owned(), lifecycle.name.clone());
    values.insert("instance_index".to_owned(), lifecycle.instance_index.to_string());
    values.insert("ami-i".to_owned(), lifecycle.instance_index.to_string());
    values.insert("daemon_state".to_owned(), event.as_str().to_owned());
    values
        .insert("ts".to_owned(), humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    values.insert("pid".to_owned(), std::process::id().to_string());
    values.insert("cwd".to_owned(), work.display().to_string());
    values
}

/// Runs one line; the result without its event and domain.
pub(crate) async fn run_line(
    line: &ExecLine,
    values: &BTreeMap<String, String>,
    work: &Path,
) -> HookResult {
    let started = Instant::now();
    let argv: Vec<String> = line
        .argv
        .iter()
        .map(|arg| expand_macros(arg, values).unwrap_or_else(|_| arg.clone()))
        .collect();
    let result = |outcome, exit_code, message: String| HookResult {
        event: Event::Starting,
        domain: String::new(),
        argv: argv.clone(),
        outcome,
        exit_code,
        message,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let Some((program, args)) = argv.split_first() else {
        return result(HookOutcome::NotStarted, None, "the line has no argv".to_owned());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return result(HookOutcome::NotStarted, None, format!("{program}: {error}")),
    };
    let pid = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let output = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.read_to_end(&mut out).await;
        }
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_end(&mut err).await;
        }
        out.extend(err);
        out
    };
    let timeout = line.timeout.unwrap_or(DEFAULT_LINE_TIMEOUT);
    let finished = tokio::time::timeout(timeout, async {
        let (output, status) = tokio::join!(output, child.wait());
        (output, status)
    })
    .await;
    match finished {
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            result(
                HookOutcome::TimedOut,
                None,
                format!("killed after its timeout of {}", humantime::format_duration(timeout)),
            )
        }
        Ok((_, Err(error))) => result(HookOutcome::Failed, None, error.to_string()),
        Ok((output, Ok(status))) => {
            let tail = &output[output.len().saturating_sub(KEPT_OUTPUT)..];
            let tail = String::from_utf8_lossy(tail).trim().to_owned();
            let code = status.code().map(i64::from);
            if line.ec.accepts(code) {
                result(HookOutcome::Succeeded, code, tail)
            } else {
                let why = match code {
                    Some(code) => format!("exit code {code}, accepted: {}", line.ec.describe()),
                    None => "killed by a signal".to_owned(),
                };
                let message = if tail.is_empty() { why } else { format!("{why}: {tail}") };
                result(HookOutcome::Failed, code, message)
            }
        }
    }
}

/// Polls IMDS (see [`NoticePoller`]), sending each new notice as an event.
async fn poll_imds(
    endpoint: String,
    handle: LifecycleHandle,
    log: Arc<BinaryLog>,
    metrics: Arc<AgentMetrics>,
) {
    let mut poller = NoticePoller::new(ImdsClient::new(&endpoint));
    let metadata = crate::imds::metadata_macros(poller.client()).await;
    handle.shared().metadata = metadata;
    loop {
        let round = poller.next_round().await;
        metrics.count_imds_polls(round.polled, round.failed);
        if round.answered.is_some() {
            handle.shared().imds_ok = round.answered;
        }
        for line in round.log_lines {
            tracing::warn!("{line}");
        }
        for notice in round.notices {
            metrics.count_notice(match notice {
                Notice::Spot { .. } => "spot",
                Notice::Rebalance { .. } => "rebalance",
                Notice::Scheduled { .. } => "scheduled",
            });
            let (event, detail, values) = notice_event(&notice);
            log.event(&format!("lifecycle: IMDS: {detail}"));
            handle.send(event, detail, values);
        }
    }
}

/// The event, its detail and its macro values for a notice.
pub(crate) fn notice_event(notice: &Notice) -> (Event, String, Vec<(&'static str, String)>) {
    match notice {
        Notice::Spot { action, time, time_text } => {
            let left = crate::imds::time_left(*time, SystemTime::now());
            (
                Event::Interrupted,
                format!("spot {action} at {time_text} (in {}s)", left.as_secs()),
                vec![("interrupt_action", action.clone()), ("interrupt_time", time_text.clone())],
            )
        }
        Notice::Rebalance { time_text, .. } => {
            (Event::Rebalance, format!("rebalance recommended at {time_text}"), Vec::new())
        }
        Notice::Scheduled { code, event_id, not_before, not_after } => (
            Event::ScheduledEvent,
            format!("{code} ({event_id}) not before {not_before}"),
            vec![
                ("event_code", code.clone()),
                ("event_not_before", not_before.clone()),
                ("event_not_after", not_after.clone()),
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle() -> ManifestLifecycle {
        let config = flotilla_spec::fleetd::parse_fleetd_config(
            r#"{domains: {d: {exec: [{on: ["started"], lines: [{argv: ["echo", "{name}"]}]}],
                notify: [{backend: "aws-sns", options: {region: "us-east-1", topic: "arn:aws:sns:us-east-1:1:t"}}]}}}"#,
            Path::new("c.json5"),
        )
        .unwrap()
        .config;
        ManifestLifecycle { config, name: "node-3".into(), instance_index: 3 }
    }

    #[test]
    fn macro_values_cover_every_macro_and_fill_what_is_known() {
        let values = macro_values(&lifecycle(), Event::Rebalance, Path::new("/w"));
        for (name, _) in MACROS {
            assert!(values.contains_key(*name), "{name}");
        }
        assert_eq!(values["name"], "node-3");
        assert_eq!(values["instance_index"], "3");
        assert_eq!(values["daemon_state"], "rebalance");
        assert_eq!(values["cwd"], "/w");
        assert_eq!(values["instance_id"], "");
        assert_eq!(expand_macros("{ami-i}/{name}/{error}.", &values).unwrap(), "3/node-3/.");
    }

    #[test]
    fn what_the_agent_does_not_run_is_listed() {
        let parts = not_applicable(&lifecycle().config, "the local provider", false, false);
        assert_eq!(parts, vec!["domains.d.notify: not applicable on the local provider"]);
    }

    #[test]
    fn supervisor_changes_mean_events() {
        let idle = SupervisorStatus::idle();
        let mut healthy = idle.clone();
        healthy.state = BinaryState::Healthy;
        healthy.became_healthy = true;
        assert_eq!(events_between(&idle, &healthy)[0].0, Event::Started);
        assert!(events_between(&healthy, &healthy).is_empty());
        let mut exited = healthy.clone();
        exited.exits = 1;
        exited.state = BinaryState::CrashLooping;
        let events: Vec<Event> =
            events_between(&healthy, &exited).into_iter().map(|e| e.0).collect();
        assert_eq!(events, vec![Event::BinaryExited, Event::Failed]);
    }

    #[tokio::test]
    async fn a_line_is_killed_at_its_timeout_and_exit_codes_are_checked() {
        let values = BTreeMap::new();
        let line = |argv: &[&str], timeout: Option<Duration>| ExecLine {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            ec: Default::default(),
            timeout,
        };
        let slow = run_line(
            &line(&["sleep", "30"], Some(Duration::from_millis(100))),
            &values,
            Path::new("/"),
        )
        .await;
        assert_eq!(slow.outcome, HookOutcome::TimedOut);
        assert!(slow.duration_ms < 5_000);
        let failed =
            run_line(&line(&["sh", "-c", "echo no; exit 3"], None), &values, Path::new("/")).await;
        assert_eq!((failed.outcome, failed.exit_code), (HookOutcome::Failed, Some(3)));
        assert!(failed.message.contains("no"), "{}", failed.message);
        let missing = run_line(&line(&["/nonexistent/x"], None), &values, Path::new("/")).await;
        assert_eq!(missing.outcome, HookOutcome::NotStarted);
    }
}
