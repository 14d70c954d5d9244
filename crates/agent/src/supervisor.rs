//! The supervisor: runs the selected version of the binary, captures its output
//! (`output_capture`), checks its health, restarts it when it exits (described by
//! `exit_description`), and stops it.
//!
//! It is one task that owns the child process and obeys [`Order`]s sent through a
//! [`SupervisorHandle`], one at a time and in the order they were sent; it publishes what it
//! sees as a [`SupervisorStatus`] on a watch channel, which the API, the metrics and rollouts
//! read.
//!
//! The binary runs as `<dir>/versions/<version>/binary --hosts=<dir>/hosts.yaml --config=…
//! <args…>` (hosts.yaml apart from the version: see `hosts`) in
//! `<dir>/work`, with the agent's environment plus `FLOTILLA_TAG`, `FLOTILLA_NAME`,
//! `FLOTILLA_REGION`, `FLOTILLA_IP`, `FLOTILLA_PRIVATE_IP`, then the manifest's `env`. It leads
//! its own process group. Stopping it sends SIGTERM to the group and SIGKILL after the
//! bootstrap's `stop_grace`; members of the group that outlive the binary are killed as well
//! (as systemd's `KillMode=control-group` does), so nothing holds its ports when it restarts.
//!
//! Before it starts a version on an order (`Run`, `Restart`), it runs the manifest's boot
//! additions ([`crate::boot`]) while it still obeys orders; a failed critical step leaves the
//! binary stopped, with the report in the status. Restarts after an exit skip them.
//!
//! After an exit it restarts per the manifest's `RestartSpec` (schedule in [`crate::backoff`]);
//! `on-failure` does not restart after exit status 0. Three exits in a row without becoming
//! healthy make the state `crash-looping` while the backoff runs out.
//!
//! The same supervisor runs each of the manifest's services ([`Role::Service`]): its program
//! from the manifest's `services` entry, with its own arguments (`{files}`, `{data}`,
//! `{address}` expanded), environment, health check and restart policy, its own log and its own
//! process-group file. A service has no boot additions, lifecycle hooks or keepalive: those
//! belong to the machine, and run with the binary.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use flotilla_spec::api::{BinaryState, BootReport, ExitInfo};
use flotilla_spec::fleet::HostsSignal;
use flotilla_spec::fleetd::Event;
use flotilla_spec::manifest::{Manifest, ServiceManifest, ServiceProgram, short_version};
use flotilla_spec::{HealthCheck, RestartPolicy};
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::artifacts::{BINARY_FILE, CONFIG_FILE, SERVICE_PROGRAM_FILE};
use crate::backoff::{CRASH_LOOP_EXITS, STABLE_RUN, restart_delay, restart_jitter};
use crate::binary_log::BinaryLog;
use crate::boot::{self, BootTarget};
use crate::deadline;
use crate::exit_description::describe_exit;
use crate::failpoint::{Failpoint, Failpoints};
use crate::health::{self, CHECK_INTERVAL, FIRST_CHECK_AFTER, NONE_HEALTHY_AFTER};
use crate::instance_dir::InstanceDir;
use crate::lifecycle::LifecycleHandle;
use crate::metrics::{AgentMetrics, MetricsSnapshot};
use crate::output_capture::{self, drain_output};
use crate::process_group::{self, signal_group};
use crate::spawner::{ProcessSpec, Spawner};
use crate::time::{format_duration, unix_now};

/// How long the agent waits for the binary to go after SIGKILL.
const AFTER_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the rest of the group may take to end once the binary was killed.
const GROUP_AFTER_KILL_WAIT: Duration = Duration::from_millis(500);
/// How often the agent looks whether the rest of the process group has gone.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Who the binary runs as: the machine's identity and its instance directory.
#[derive(Clone, Debug)]
pub(crate) struct BinaryEnvironment {
    pub(crate) dir: InstanceDir,
    pub(crate) tag: String,
    pub(crate) name: String,
    pub(crate) region: String,
    /// The identity's public address: `FLOTILLA_IP` when hosts.yaml has no entry for this
    /// machine (see [`crate::hosts::own_address`]).
    pub(crate) public_ip: IpAddr,
    pub(crate) private_ip: IpAddr,
    /// The region AWS SDKs in the binary default to (`AWS_REGION`, `AWS_DEFAULT_REGION`): the
    /// machine's own on a cloud machine, where the agent's environment names the deployment
    /// bucket's region instead; `None` elsewhere (the local provider), where nothing is set.
    pub(crate) aws_region: Option<String>,
    /// Where health checks connect: the agent's own listen address when it is a specific one
    /// (a machine whose public address is its own, as on loopback), else the private address
    /// (on EC2 the public address is NATed and belongs to no interface).
    pub(crate) health_address: IpAddr,
}

/// What a supervisor runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The user's binary: with boot additions, lifecycle hooks, keepalive and the agent's
    /// restart counter.
    Binary,
    /// The manifest's service of this name.
    Service(String),
}

impl Role {
    fn service<'a>(&self, manifest: &'a Manifest) -> Option<&'a ServiceManifest> {
        match self {
            Role::Binary => None,
            Role::Service(name) => manifest.services.iter().find(|s| &s.name == name),
        }
    }
}

/// What the supervisor sees, published after every change.
#[derive(Clone, Debug)]
pub(crate) struct SupervisorStatus {
    /// The selected version (running, restarting, or stopped).
    pub(crate) version: Option<String>,
    /// Counts orders: a rollout knows from it that what it sees is about its own start.
    pub(crate) generation: u64,
    pub(crate) state: BinaryState,
    pub(crate) pid: Option<u32>,
    pub(crate) started_at: Option<Instant>,
    /// Restarts after an exit since the version was selected or restarted by request.
    pub(crate) restarts: u64,
    /// Exits since the version was selected or restarted, while it never became healthy.
    pub(crate) exits_before_healthy: u32,
    /// Whether the binary became healthy since the version was selected or restarted.
    pub(crate) became_healthy: bool,
    /// Exits the binary made without being told to, since the agent started.
    pub(crate) exits: u64,
    pub(crate) last_exit: Option<ExitInfo>,
    /// How the last run ended, in words ("exited with code 1").
    pub(crate) last_exit_description: Option<String>,
    pub(crate) health_error: Option<String>,
    /// The boot additions of the selected version's last start on an order (unfinished while
    /// they run); `None` when it had none.
    pub(crate) boot: Option<BootReport>,
    /// The selected version's keepalive.
    pub(crate) keepalive: Option<Duration>,
}

impl SupervisorStatus {
    pub(crate) fn idle() -> SupervisorStatus {
        SupervisorStatus {
            version: None,
            generation: 0,
            state: BinaryState::Idle,
            pid: None,
            started_at: None,
            restarts: 0,
            exits_before_healthy: 0,
            became_healthy: false,
            exits: 0,
            last_exit: None,
            last_exit_description: None,
            health_error: None,
            boot: None,
            keepalive: None,
        }
    }

    /// What the metrics report of this status (reported, see [`Self::into_reported`]), with the
    /// installed version and the agent's uptime.
    pub(crate) fn metrics_snapshot(
        &self,
        version: Option<String>,
        agent_uptime: Duration,
    ) -> MetricsSnapshot {
        MetricsSnapshot {
            running: self.pid.is_some(),
            state: self.state,
            version,
            agent_uptime,
            binary_uptime: self.started_at.map(|started| started.elapsed()),
        }
    }

    /// The status as the API and the metrics report it. A state that claims a running binary
    /// (`healthy`, `unhealthy`) comes with its pid or not at all: without one it reads
    /// `stopped`. Once the supervisor has ended (`supervising` false), nothing runs or will be
    /// restarted: no pid, and `stopped` unless nothing was installed.
    pub(crate) fn into_reported(mut self, supervising: bool) -> SupervisorStatus {
        if !supervising {
            self.pid = None;
        }
        let claims_a_process = matches!(self.state, BinaryState::Healthy | BinaryState::Unhealthy);
        let waits_for_a_restart =
            matches!(self.state, BinaryState::Starting | BinaryState::CrashLooping);
        if self.pid.is_none() && (claims_a_process || (!supervising && waits_for_a_restart)) {
            self.state = BinaryState::Stopped;
        }
        if self.pid.is_none() {
            self.started_at = None;
        }
        self
    }
}

/// What the supervisor is told to do. Each order first stops the binary if it runs.
#[derive(Clone, Debug)]
pub(crate) enum Order {
    /// Select this version and start it (restart count and backoff reset).
    Run { version: String, manifest: Arc<Manifest> },
    /// Select this version but leave it stopped (it was stopped by request before).
    Hold { version: String, manifest: Arc<Manifest> },
    /// Start the selected version again (restart count and backoff reset).
    Restart,
    /// Stop the binary and keep it stopped.
    Stop,
    /// Stop the binary and forget the version: nothing is installed.
    Clear,
    /// Stop the binary and end the supervisor.
    Shutdown,
    /// Send the running binary (its process, not its group) this signal, for a hosts-only
    /// change; it keeps running. Nothing happens when it does not run.
    Signal(HostsSignal),
}

#[derive(Debug)]
struct Command {
    order: Order,
    done: oneshot::Sender<u64>,
}

/// Resolves once an order has been carried out.
#[derive(Debug)]
pub(crate) struct Completion(oneshot::Receiver<u64>);

impl Completion {
    /// The generation after the order, or `None` when the supervisor has ended.
    pub(crate) async fn wait(self) -> Option<u64> {
        self.0.await.ok()
    }
}

/// Sends orders to the supervisor and reads its status.
#[derive(Clone, Debug)]
pub(crate) struct SupervisorHandle {
    orders: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<SupervisorStatus>,
}

impl SupervisorHandle {
    /// Queues `order` at once (so orders keep the order of the calls); await the completion
    /// for it to be carried out.
    pub(crate) fn order(&self, order: Order) -> Completion {
        let (done, completion) = oneshot::channel();
        // When the supervisor has ended, `done` is dropped and the completion resolves to None.
        let _ = self.orders.send(Command { order, done });
        Completion(completion)
    }

    /// The status to report (see [`SupervisorStatus::into_reported`]), read once, so that the
    /// state, the pid and the uptime all come from the same moment.
    pub(crate) fn status(&self) -> SupervisorStatus {
        // The sender lives as long as the supervisor task: closed means it has ended.
        let supervising = self.status.has_changed().is_ok();
        self.status.borrow().clone().into_reported(supervising)
    }

    pub(crate) fn watch(&self) -> watch::Receiver<SupervisorStatus> {
        self.status.clone()
    }
}

/// The supervisor: its handle, and the task to spawn (it runs until `Order::Shutdown` or until
/// every handle is gone).
#[expect(
    clippy::too_many_arguments,
    reason = "the supervisor's collaborators, each named; a struct of them is the next refactor"
)]
pub(crate) fn supervisor(
    role: Role,
    spawner: Spawner,
    log: Arc<BinaryLog>,
    metrics: Arc<AgentMetrics>,
    environment: BinaryEnvironment,
    boot_target: BootTarget,
    stop_grace: Duration,
    failpoints: Failpoints,
    lifecycle: LifecycleHandle,
) -> (SupervisorHandle, impl Future<Output = ()> + Send + 'static) {
    let (orders, receiver) = mpsc::unbounded_channel();
    let (status, status_receiver) = watch::channel(SupervisorStatus::idle());
    let supervisor = Supervisor {
        role,
        orders: receiver,
        status,
        spawner,
        log,
        metrics,
        environment,
        boot_target,
        stop_grace,
        selected: None,
        consecutive_failures: 0,
        warned_about_parent_death_signal: false,
        failpoints,
        lifecycle,
    };
    (SupervisorHandle { orders, status: status_receiver }, supervisor.run())
}

#[derive(Debug)]
struct Selected {
    version: String,
    manifest: Arc<Manifest>,
}

struct Supervisor {
    role: Role,
    orders: mpsc::UnboundedReceiver<Command>,
    status: watch::Sender<SupervisorStatus>,
    spawner: Spawner,
    log: Arc<BinaryLog>,
    metrics: Arc<AgentMetrics>,
    environment: BinaryEnvironment,
    boot_target: BootTarget,
    stop_grace: Duration,
    selected: Option<Selected>,
    consecutive_failures: u32,
    warned_about_parent_death_signal: bool,
    failpoints: Failpoints,
    lifecycle: LifecycleHandle,
}

type HealthCheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type BootFuture = Pin<Box<dyn Future<Output = Option<BootReport>> + Send>>;

/// The binary while it runs.
struct RunningBinary {
    child: tokio::process::Child,
    pid: u32,
    started_at: Instant,
    capture: Vec<JoinHandle<()>>,
    check: Option<HealthCheckFuture>,
    check_started_at: Instant,
    next_check_at: Instant,
    /// False once `none` has declared the binary healthy: nothing more to check.
    checking: bool,
    check_failures: u32,
    became_healthy: bool,
}

enum Activity {
    /// Nothing runs: waiting for an order.
    Waiting,
    /// The binary exited; it starts again at `until` unless an order comes first.
    BackingOff {
        until: Instant,
    },
    /// The boot additions of the selected version run; the binary starts when they succeed.
    Booting(BootFuture),
    Running(Box<RunningBinary>),
    Finished,
}

enum RunningEvent {
    Exited(io::Result<ExitStatus>),
    CheckDone(Result<(), String>),
    CheckDue,
    Order(Option<Command>),
}

impl Supervisor {
    async fn run(mut self) {
        let mut activity = Activity::Waiting;
        loop {
            activity = match activity {
                Activity::Finished => break,
                Activity::Waiting => {
                    let command = self.orders.recv().await;
                    self.obey(command, None).await
                }
                Activity::BackingOff { until } => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {
                            if self.role == Role::Binary {
                                self.metrics.count_restart();
                            }
                            self.status.send_modify(|status| status.restarts += 1);
                            self.start_selected().await
                        }
                        command = self.orders.recv() => match command {
                            Some(Command { order: Order::Signal(signal), done }) => {
                                // Between runs: the next start reads the new file.
                                self.log.event(&format!(
                                    "hosts.yaml changed while the binary waits to restart; it starts with the new file, so it is not sent {}",
                                    signal.name()
                                ));
                                let _ = done.send(self.status.borrow().generation);
                                Activity::BackingOff { until }
                            }
                            command => self.obey(command, None).await,
                        },
                    }
                }
                Activity::Booting(mut boot) => {
                    tokio::select! {
                        report = &mut boot => self.after_boot(report).await,
                        command = self.orders.recv() => match command {
                            Some(Command { order: Order::Signal(signal), done }) => {
                                // Not started yet: it reads the new file when it starts.
                                self.log.event(&format!(
                                    "hosts.yaml changed while booting; the binary starts with it, so it is not sent {}",
                                    signal.name()
                                ));
                                let _ = done.send(self.status.borrow().generation);
                                Activity::Booting(boot)
                            }
                            command => {
                                // Dropping the boot step kills the command it runs, if any.
                                drop(boot);
                                self.log.event("boot additions interrupted by an order");
                                self.obey(command, None).await
                            }
                        },
                    }
                }
                Activity::Running(mut running) => {
                    let event = next_event(&mut running, &mut self.orders).await;
                    self.on_event(running, event).await
                }
            };
        }
    }

    fn short_selected(&self) -> String {
        self.selected.as_ref().map(|s| short_version(&s.version).to_owned()).unwrap_or_default()
    }

    /// Carries out one order (`None`: every handle is gone, the agent is going away).
    async fn obey(
        &mut self,
        command: Option<Command>,
        running: Option<Box<RunningBinary>>,
    ) -> Activity {
        let Some(Command { order, done }) = command else {
            if let Some(running) = running {
                self.stop_binary(running, "the agent is going away").await;
            }
            return Activity::Finished;
        };
        if matches!(order, Order::Restart)
            && self.failpoints.is_armed(Failpoint::SupervisorPanicsOnRestart)
        {
            panic!("failpoint {:?}", Failpoint::SupervisorPanicsOnRestart);
        }
        if let Some(running) = running {
            let reason = match &order {
                Order::Run { version, .. } | Order::Hold { version, .. } => {
                    format!("switching to version {}", short_version(version))
                }
                Order::Restart => "restart requested".to_owned(),
                Order::Stop => "stop requested".to_owned(),
                Order::Clear => "its version is being removed".to_owned(),
                Order::Shutdown => "the agent is stopping".to_owned(),
                // Handled while the binary runs (see `on_event`), so never here with a binary.
                Order::Signal(_) => "a signal was ordered".to_owned(),
            };
            self.stop_binary(running, &reason).await;
        }
        let next = match order {
            Order::Run { version, manifest } => {
                self.select_lifecycle(Some(&manifest));
                self.selected = Some(Selected { version, manifest });
                self.begin_run();
                self.boot_then_start().await
            }
            Order::Hold { version, manifest } => {
                self.select_lifecycle(Some(&manifest));
                self.selected = Some(Selected { version, manifest });
                self.begin_run();
                self.status.send_modify(|status| status.state = BinaryState::Stopped);
                self.log.event(&format!(
                    "version {} stays stopped: it was stopped by request",
                    self.short_selected()
                ));
                Activity::Waiting
            }
            Order::Restart if self.selected.is_some() => {
                self.begin_run();
                self.boot_then_start().await
            }
            Order::Restart => Activity::Waiting,
            Order::Stop => {
                let state =
                    if self.selected.is_some() { BinaryState::Stopped } else { BinaryState::Idle };
                self.status.send_modify(|status| {
                    status.generation += 1;
                    status.state = state;
                });
                Activity::Waiting
            }
            Order::Clear => {
                self.select_lifecycle(None);
                self.selected = None;
                self.status.send_modify(|status| {
                    status.generation += 1;
                    status.version = None;
                    status.keepalive = None;
                    status.state = BinaryState::Idle;
                    status.health_error = None;
                });
                Activity::Waiting
            }
            Order::Signal(signal) => {
                self.log.event(&format!(
                    "hosts.yaml changed; the binary is not running, so it is not sent {}",
                    signal.name()
                ));
                Activity::Waiting
            }
            Order::Shutdown => {
                if self.selected.is_some() {
                    self.status.send_modify(|status| status.state = BinaryState::Stopped);
                }
                Activity::Finished
            }
        };
        // The requester may have stopped waiting; the order is carried out all the same.
        let _ = done.send(self.status.borrow().generation);
        next
    }

    /// Tells the lifecycle which manifest the binary runs (services leave it alone).
    fn select_lifecycle(&self, manifest: Option<&Manifest>) {
        if self.role == Role::Binary {
            self.lifecycle.select(manifest);
        }
    }

    /// The selected version's health check and restart policy for this role.
    fn policy(&self, selected: &Selected) -> (HealthCheck, flotilla_spec::RestartSpec) {
        match self.role.service(&selected.manifest) {
            Some(service) => (service.health.clone(), service.restart),
            None => (selected.manifest.health.clone(), selected.manifest.restart),
        }
    }

    /// The file that records the running process's group.
    fn process_group_file(&self) -> std::path::PathBuf {
        match &self.role {
            Role::Binary => self.environment.dir.binary_process_group(),
            Role::Service(name) => self.environment.dir.service_process_group(name),
        }
    }

    /// Resets the counters for a new run of the selected version.
    fn begin_run(&mut self) {
        self.log.begin_run();
        self.consecutive_failures = 0;
        let version = self.selected.as_ref().map(|s| s.version.clone());
        let keepalive = self
            .selected
            .as_ref()
            .filter(|_| self.role == Role::Binary)
            .and_then(|s| s.manifest.keepalive);
        self.status.send_modify(|status| {
            status.generation += 1;
            status.version = version;
            status.keepalive = keepalive;
            status.restarts = 0;
            status.exits_before_healthy = 0;
            status.became_healthy = false;
            status.health_error = None;
            status.boot = None;
        });
    }

    /// Runs the selected version's boot additions and `starting` hooks first, when it has any,
    /// else starts it.
    async fn boot_then_start(&mut self) -> Activity {
        let Some(selected) = self.selected.as_ref() else {
            return Activity::Waiting;
        };
        if self.role != Role::Binary {
            return self.start_selected().await;
        }
        let boots =
            boot::has_work(&selected.manifest.boot, &selected.manifest.disks, &self.boot_target);
        let starting = self.lifecycle.has_hooks(Event::Starting);
        if !boots && !starting {
            return self.start_selected().await;
        }
        let manifest = selected.manifest.clone();
        let version = selected.version.clone();
        let env = self.binary_env(selected);
        let target = self.boot_target.clone();
        let spawner = self.spawner.clone();
        let log = self.log.clone();
        let lifecycle = self.lifecycle.clone();
        self.status.send_modify(|status| {
            status.state = BinaryState::Starting;
            if boots {
                status.boot = Some(BootReport {
                    version: version.clone(),
                    blocked: false,
                    steps: Vec::new(),
                    started_at: unix_now(),
                    finished_at: None,
                });
            }
        });
        Activity::Booting(Box::pin(async move {
            let report = if boots {
                Some(
                    boot::run(
                        &manifest.boot,
                        &manifest.disks,
                        &version,
                        &target,
                        env,
                        &spawner,
                        &log,
                    )
                    .await,
                )
            } else {
                None
            };
            if starting
                && !report.as_ref().is_some_and(|r| r.blocked)
                && !lifecycle.run(Event::Starting, "the binary is about to start").await
            {
                // The lifecycle's domains failed (its errors are in the lifecycle report): the
                // binary stays stopped, as after a failed critical boot step.
                let mut blocked = report.unwrap_or_else(|| BootReport {
                    version: version.clone(),
                    blocked: false,
                    steps: Vec::new(),
                    started_at: unix_now(),
                    finished_at: None,
                });
                blocked.blocked = true;
                blocked.finished_at = Some(unix_now());
                return Some(blocked);
            }
            report
        }))
    }

    /// Starts the binary after its boot additions, unless a critical step failed.
    async fn after_boot(&mut self, report: Option<BootReport>) -> Activity {
        let Some(report) = report else {
            return self.start_selected().await;
        };
        let blocked = report.blocked;
        self.status.send_modify(|status| {
            status.boot = Some(report);
            if blocked {
                status.state = BinaryState::Stopped;
            }
        });
        if blocked {
            return Activity::Waiting;
        }
        self.start_selected().await
    }

    /// The binary's environment: the agent's plus the machine's `FLOTILLA_*`, then the
    /// manifest's `env`.
    fn binary_env(&self, selected: &Selected) -> Vec<(OsString, OsString)> {
        let environment = &self.environment;
        // The address hosts.yaml gives this machine now, which a stop and start changes.
        let public_ip = crate::hosts::own_address(&environment.dir, &environment.name)
            .unwrap_or(environment.public_ip);
        let mut env: Vec<(OsString, OsString)> = [
            ("FLOTILLA_TAG", environment.tag.clone()),
            ("FLOTILLA_NAME", environment.name.clone()),
            ("FLOTILLA_REGION", environment.region.clone()),
            ("FLOTILLA_IP", public_ip.to_string()),
            ("FLOTILLA_PRIVATE_IP", environment.private_ip.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (OsString::from(name), OsString::from(value)))
        .collect();
        if let Some(region) = &environment.aws_region {
            for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
                env.push((OsString::from(name), OsString::from(region)));
            }
        }
        let own_env = match self.role.service(&selected.manifest) {
            Some(service) => &service.env,
            None => &selected.manifest.env,
        };
        env.extend(own_env.iter().map(|(n, v)| (OsString::from(n), OsString::from(v))));
        env
    }

    /// How a service is started: its program, its arguments with the agent's places expanded,
    /// in its data directory (made on first use).
    fn service_process_spec(&self, selected: &Selected, service: &ServiceManifest) -> ProcessSpec {
        let environment = &self.environment;
        let files =
            environment.dir.version(&selected.version).join(service_files_dir(&service.name));
        let data = environment.dir.service_data(&service.name);
        if let Err(error) = crate::instance_dir::create_private_dir(&data) {
            self.log
                .event(&format!("could not make the data directory {}: {error}", data.display()));
        }
        let program = match &service.program {
            ServiceProgram::System(path) => std::path::PathBuf::from(path),
            ServiceProgram::Package(program) => std::path::PathBuf::from(&program.path),
            ServiceProgram::Artifact(_) => files.join(SERVICE_PROGRAM_FILE),
        };
        let address = environment.health_address.to_string();
        let live = crate::live_files::live_dir(&environment.dir, &service.name);
        let args = service
            .args
            .iter()
            .map(|arg| {
                OsString::from(
                    arg.replace("{files}", &files.to_string_lossy())
                        .replace("{live}", &live.to_string_lossy())
                        .replace("{data}", &data.to_string_lossy())
                        .replace("{address}", &address),
                )
            })
            .collect();
        ProcessSpec { program, args, cwd: data, env: self.binary_env(selected) }
    }

    fn process_spec(&self, selected: &Selected) -> ProcessSpec {
        if let Some(service) = self.role.service(&selected.manifest) {
            return self.service_process_spec(selected, service);
        }
        let environment = &self.environment;
        let version_dir = environment.dir.version(&selected.version);
        let flag = |name: &str, file: &str| {
            let mut flag = OsString::from(name);
            flag.push(version_dir.join(file));
            flag
        };
        let mut hosts = OsString::from("--hosts=");
        hosts.push(environment.dir.hosts());
        let mut args = vec![hosts, flag("--config=", CONFIG_FILE)];
        args.extend(selected.manifest.args.iter().map(OsString::from));
        let env = self.binary_env(selected);
        ProcessSpec {
            program: version_dir.join(BINARY_FILE),
            args,
            cwd: environment.dir.work(),
            env,
        }
    }

    /// Starts the selected version; a failure to start counts as an exit.
    async fn start_selected(&mut self) -> Activity {
        let Some(selected) = self.selected.as_ref() else {
            return Activity::Waiting;
        };
        let runs_nothing = match &self.role {
            Role::Binary => selected.manifest.binary.is_none(),
            Role::Service(_) => self.role.service(&selected.manifest).is_none(),
        };
        if runs_nothing {
            // A version without a binary (a machine of services only), or without this service.
            self.status.send_modify(|status| status.state = BinaryState::Idle);
            return Activity::Waiting;
        }
        let spec = self.process_spec(selected);
        let (check, _) = self.policy(selected);
        let short = short_version(&selected.version).to_owned();
        if !self.spawner.has_parent_death_signal() && !self.warned_about_parent_death_signal {
            self.warned_about_parent_death_signal = true;
            self.log.event(
                "setpriv (util-linux) was not found: the binary will not die with the agent if the agent is killed with SIGKILL",
            );
        }
        match self.spawner.spawn(&spec).await {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                let mut capture = Vec::with_capacity(2);
                if let Some(stdout) = child.stdout.take() {
                    capture.push(output_capture::capture(stdout, self.log.clone()));
                }
                if let Some(stderr) = child.stderr.take() {
                    capture.push(output_capture::capture(stderr, self.log.clone()));
                }
                self.log.event(&format!("started version {short} pid {pid}"));
                process_group::record(&self.process_group_file(), pid);
                let now = Instant::now();
                self.status.send_modify(|status| {
                    status.state = BinaryState::Starting;
                    status.pid = Some(pid);
                    status.started_at = Some(now);
                });
                let first_check = match check {
                    HealthCheck::None => NONE_HEALTHY_AFTER,
                    HealthCheck::Http { .. } | HealthCheck::Tcp { .. } => FIRST_CHECK_AFTER,
                };
                Activity::Running(Box::new(RunningBinary {
                    child,
                    pid,
                    started_at: now,
                    capture,
                    check: None,
                    check_started_at: now,
                    next_check_at: deadline::after(now, first_check),
                    checking: true,
                    check_failures: 0,
                    became_healthy: false,
                }))
            }
            Err(error) => {
                let description = format!("could not be started: {error}");
                self.log.event(&format!("version {short} {description}"));
                let exit = ExitInfo { code: None, signal: None, at: unix_now() };
                let (next, decision) =
                    self.after_exit(exit, description, Duration::ZERO, false, None);
                if let Some(decision) = decision {
                    self.log.event(&decision);
                }
                next
            }
        }
    }

    async fn on_event(&mut self, mut running: Box<RunningBinary>, event: RunningEvent) -> Activity {
        match event {
            RunningEvent::Order(Some(Command { order: Order::Signal(signal), done })) => {
                self.signal_binary(&running, signal);
                // The requester may have stopped waiting.
                let _ = done.send(self.status.borrow().generation);
                Activity::Running(running)
            }
            RunningEvent::Order(command) => self.obey(command, Some(running)).await,
            RunningEvent::Exited(result) => self.on_exit(running, result).await,
            RunningEvent::CheckDue => {
                let check = self.selected.as_ref().map(|s| self.policy(s).0);
                match check {
                    Some(HealthCheck::None) | None => {
                        running.checking = false;
                        self.on_check_result(&mut running, Ok(()));
                    }
                    Some(check) => {
                        running.check_started_at = Instant::now();
                        running.check =
                            Some(Box::pin(health::probe(check, self.environment.health_address)));
                    }
                }
                Activity::Running(running)
            }
            RunningEvent::CheckDone(result) => {
                running.check = None;
                running.next_check_at = deadline::after(running.check_started_at, CHECK_INTERVAL);
                self.on_check_result(&mut running, result);
                Activity::Running(running)
            }
        }
    }

    /// Sends `signal` to the running binary's own process.
    fn signal_binary(&self, running: &RunningBinary, signal: HostsSignal) {
        let number = match signal {
            HostsSignal::Hup => Signal::HUP,
            HostsSignal::Usr1 => Signal::USR1,
            HostsSignal::Usr2 => Signal::USR2,
            HostsSignal::Winch => Signal::WINCH,
            HostsSignal::Int => Signal::INT,
            HostsSignal::Quit => Signal::QUIT,
        };
        let sent = i32::try_from(running.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .map(|pid| rustix::process::kill_process(pid, number));
        match sent {
            Some(Ok(())) => self.log.event(&format!(
                "hosts.yaml changed; sent {} to the binary (pid {})",
                signal.name(),
                running.pid
            )),
            Some(Err(error)) => self.log.event(&format!(
                "hosts.yaml changed, but {} could not be sent to the binary (pid {}): {error}",
                signal.name(),
                running.pid
            )),
            None => {}
        }
    }

    fn on_check_result(&mut self, running: &mut RunningBinary, result: Result<(), String>) {
        let succeeded = result.is_ok();
        match &result {
            Ok(()) => running.check_failures = 0,
            Err(_) => running.check_failures += 1,
        }
        let before = self.status.borrow().state;
        let after = health::state_after_check(before, succeeded, running.check_failures);
        if after == BinaryState::Healthy {
            running.became_healthy = true;
            self.consecutive_failures = 0;
        }
        self.status.send_modify(|status| {
            status.state = after;
            status.health_error = result.clone().err();
            if after == BinaryState::Healthy {
                status.became_healthy = true;
            }
        });
        let short = self.short_selected();
        let pid = running.pid;
        match (before, after) {
            (BinaryState::Starting, BinaryState::Healthy) => {
                self.log.event(&format!("version {short} pid {pid} is healthy"));
            }
            (BinaryState::Unhealthy, BinaryState::Healthy) => {
                self.log.event(&format!("version {short} pid {pid} is healthy again"));
            }
            (BinaryState::Healthy, BinaryState::Unhealthy) => {
                let error = result.err().unwrap_or_default();
                self.log.event(&format!("version {short} pid {pid} is unhealthy: {error}"));
            }
            _ => {}
        }
    }

    async fn on_exit(
        &mut self,
        running: Box<RunningBinary>,
        result: io::Result<ExitStatus>,
    ) -> Activity {
        let RunningBinary { pid, started_at, capture, became_healthy, .. } = *running;
        let ran_for = started_at.elapsed();
        // What is left of the group goes too, so that the next start finds its ports free and
        // the output pipes close.
        signal_group(pid, Signal::KILL);
        let (exit, description) = describe_exit(&result);
        let code = result.ok().and_then(|status| status.code());
        // Published before the output drains: nothing may report the pid that exited.
        let (next, decision) =
            self.after_exit(exit, description.clone(), ran_for, became_healthy, code);
        drain_output(capture).await;
        process_group::forget(&self.process_group_file());
        self.log.event(&format!(
            "version {} pid {pid} {description} after {}",
            self.short_selected(),
            format_duration(ran_for)
        ));
        if let Some(decision) = decision {
            self.log.event(&decision);
        }
        next
    }

    /// Decides what follows an exit (or a failed start): restart after the backoff, or stay
    /// stopped under `on-failure` after status 0. Publishes the exit and the state that follows
    /// it in one change, so that no reader sees a state that claims a process without its pid;
    /// returns the decision in words, for the log.
    fn after_exit(
        &mut self,
        exit: ExitInfo,
        description: String,
        ran_for: Duration,
        became_healthy: bool,
        code: Option<i32>,
    ) -> (Activity, Option<String>) {
        if became_healthy || ran_for >= STABLE_RUN {
            self.consecutive_failures = 0;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let (state, next, decision) = match self.selected.as_ref() {
            None => (BinaryState::Idle, Activity::Waiting, None),
            Some(selected)
                if self.policy(selected).1.policy == RestartPolicy::OnFailure
                    && code == Some(0) =>
            {
                let decision = "not restarting: the binary exited with status 0 and the restart policy is on-failure";
                (BinaryState::Stopped, Activity::Waiting, Some(decision.to_owned()))
            }
            Some(selected) => {
                let restart = self.policy(selected).1;
                let delay = restart_delay(&restart, self.consecutive_failures, restart_jitter());
                let crash_looping = self.consecutive_failures >= CRASH_LOOP_EXITS;
                let state =
                    if crash_looping { BinaryState::CrashLooping } else { BinaryState::Starting };
                let decision = format!(
                    "restarting in {} (failure {} in a row{})",
                    format_duration(delay),
                    self.consecutive_failures,
                    if crash_looping { ", none of them healthy: crash-looping" } else { "" }
                );
                (state, Activity::BackingOff { until: deadline::from_now(delay) }, Some(decision))
            }
        };
        self.status.send_modify(|status| {
            status.state = state;
            status.pid = None;
            status.started_at = None;
            status.last_exit = Some(exit);
            status.last_exit_description = Some(description);
            status.exits = status.exits.saturating_add(1);
            if !status.became_healthy {
                status.exits_before_healthy = status.exits_before_healthy.saturating_add(1);
            }
        });
        (next, decision)
    }

    /// Stops the binary: SIGTERM to its group, SIGKILL after the grace period, and SIGKILL to
    /// members of the group still there when the grace period is over.
    async fn stop_binary(&mut self, running: Box<RunningBinary>, reason: &str) {
        let RunningBinary { mut child, pid, started_at, capture, .. } = *running;
        let short = self.short_selected();
        let grace = self.stop_grace;
        let deadline = deadline::from_now(grace);
        self.log.event(&format!(
            "stopping version {short} pid {pid} ({reason}): SIGTERM to its process group"
        ));
        signal_group(pid, Signal::TERM);
        let result = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(result) => result,
            Err(_) => {
                self.log.event(&format!(
                    "pid {pid} did not exit within {}: SIGKILL to its process group",
                    format_duration(grace)
                ));
                signal_group(pid, Signal::KILL);
                match tokio::time::timeout(AFTER_KILL_TIMEOUT, child.wait()).await {
                    Ok(result) => result,
                    Err(_) => Err(io::Error::other("it did not exit even after SIGKILL")),
                }
            }
        };
        // Published the moment the binary is gone, before the rest of its group is waited for
        // and its output drained: nothing may report the pid that exited, or call it healthy.
        // The order being carried out sets the state that follows.
        let (exit, description) = describe_exit(&result);
        self.status.send_modify(|status| {
            status.state = BinaryState::Stopped;
            status.pid = None;
            status.started_at = None;
            status.last_exit = Some(exit);
            status.last_exit_description = Some(description.clone());
        });
        // The rest of the group gets what is left of the grace period, and at least a moment to
        // end after a SIGKILL.
        let group_deadline = deadline.max(deadline::from_now(GROUP_AFTER_KILL_WAIT));
        if !wait_for_group_to_end(pid, group_deadline).await {
            self.log.event(&format!(
                "processes of pid {pid}'s group were still there after {}: SIGKILL to the group",
                format_duration(grace)
            ));
            signal_group(pid, Signal::KILL);
        }
        drain_output(capture).await;
        process_group::forget(&self.process_group_file());
        self.log.event(&format!(
            "version {short} pid {pid} {description} after {}",
            format_duration(started_at.elapsed())
        ));
    }
}

/// Where a service's files are in its version's directory.
pub(crate) fn service_files_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new("services").join(name)
}

/// Waits for whatever happens first while the binary runs.
async fn next_event(
    running: &mut RunningBinary,
    orders: &mut mpsc::UnboundedReceiver<Command>,
) -> RunningEvent {
    let RunningBinary { child, check, next_check_at, checking, .. } = running;
    let check_pending = check.is_none();
    tokio::select! {
        result = child.wait() => RunningEvent::Exited(result),
        result = async {
            match check.as_mut() {
                Some(check) => check.await,
                None => std::future::pending().await,
            }
        } => RunningEvent::CheckDone(result),
        () = tokio::time::sleep_until(*next_check_at), if *checking && check_pending => {
            RunningEvent::CheckDue
        }
        command = orders.recv() => RunningEvent::Order(command),
    }
}

/// Waits until no live process is left in the group led by `pid`, up to `deadline`; says
/// whether the group is gone.
async fn wait_for_group_to_end(pid: u32, deadline: Instant) -> bool {
    loop {
        if !process_group::has_live_members(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_that_claims_a_process_comes_with_its_pid() {
        let status = |state, pid| SupervisorStatus {
            state,
            pid,
            started_at: pid.map(|_| Instant::now()),
            ..SupervisorStatus::idle()
        };
        let reported = |state, pid, supervising| {
            let reported = status(state, pid).into_reported(supervising);
            assert_eq!(reported.pid.is_some(), reported.started_at.is_some());
            (reported.state, reported.pid)
        };
        use BinaryState::*;
        // A healthy binary whose exit was published without the state that follows (as
        // `after_exit` did before a panic in `restart_delay`) is not reported healthy.
        assert_eq!(reported(Healthy, None, true), (Stopped, None));
        assert_eq!(reported(Unhealthy, None, true), (Stopped, None));
        for state in [Healthy, Unhealthy, Starting] {
            assert_eq!(reported(state, Some(7), true), (state, Some(7)));
        }
        for state in [Starting, CrashLooping, Stopped, Idle] {
            assert_eq!(reported(state, None, true), (state, None), "{state}");
        }
        // A supervisor that has ended supervises nothing.
        for state in [Healthy, Unhealthy, Starting, CrashLooping, Stopped] {
            assert_eq!(reported(state, Some(7), false), (Stopped, None), "{state}");
        }
        assert_eq!(reported(Idle, None, false), (Idle, None));
    }

    #[tokio::test]
    async fn an_ended_supervisor_reports_no_binary() {
        let (sender, receiver) = watch::channel(SupervisorStatus {
            state: BinaryState::Healthy,
            pid: Some(7),
            started_at: Some(Instant::now()),
            ..SupervisorStatus::idle()
        });
        let (orders, _) = mpsc::unbounded_channel();
        let handle = SupervisorHandle { orders, status: receiver };
        assert_eq!((handle.status().state, handle.status().pid), (BinaryState::Healthy, Some(7)));
        drop(sender);
        assert_eq!((handle.status().state, handle.status().pid), (BinaryState::Stopped, None));
    }

    #[test]
    fn binary_up_and_the_health_state_come_from_one_status() {
        let metrics = AgentMetrics::new();
        let status = |state, pid| SupervisorStatus {
            state,
            pid,
            started_at: pid.map(|_| tokio::time::Instant::now()),
            ..SupervisorStatus::idle()
        };
        let render = |status: SupervisorStatus| {
            metrics.render(&status.metrics_snapshot(None, Duration::from_secs(1)))
        };
        let healthy = render(status(BinaryState::Healthy, Some(7)).into_reported(true));
        assert!(healthy.contains("flotilla_binary_up 1\n"), "{healthy}");
        assert!(healthy.contains("{state=\"healthy\"} 1\n"), "{healthy}");
        // The exit was published, the next state was not (a supervisor that panicked in
        // between), or the supervisor has ended: down, and not healthy.
        for reported in [
            status(BinaryState::Healthy, None).into_reported(true),
            status(BinaryState::Healthy, Some(7)).into_reported(false),
        ] {
            let text = render(reported);
            assert!(text.contains("flotilla_binary_up 0\n"), "{text}");
            assert!(text.contains("{state=\"healthy\"} 0\n"), "{text}");
            assert!(text.contains("{state=\"stopped\"} 1\n"), "{text}");
            assert!(text.contains("flotilla_binary_uptime_seconds 0.0\n"), "{text}");
        }
    }
}
