//! The agent's life: its components, started in order and stopped in reverse.
//!
//! Before any component, [`start`] takes the instance directory (`instance_dir`: created 0700,
//! `agent.lock` held, `agent.pid` written, the binary's log opened), waits for the machine's
//! identity (`identity`), claims both ports (a taken port fails the start before anything runs;
//! nothing answers on them until the API and metrics components start), reads the installed
//! version from `agent-state.json`, kills what a killed agent's binary left behind
//! (`binary.pgid`) and starts the spawner thread, the binary's parent. That makes the
//! [`AgentContext`] every component is started with. Then, in order:
//!
//! | # | component | needs | its state in the instance directory |
//! |---|---|---|---|
//! | 1 | rehearsal IMDS (`imds_rehearsal`, local provider only) | | none: it serves the bootstrap's `imds.rehearsal_notices` file, which `flotilla notice` writes |
//! | 2 | lifecycle (`lifecycle`, `imds`, `domains`) | | `lifecycle-state.json`: `started` hooks ran on this machine; `lifecycle-holds.json`: volumes and records it holds |
//! | 3 | supervisor (`supervisor`, `boot`) | lifecycle | `binary.pgid`; `boot-commands.json`: boot commands that ran in this boot |
//! | 4 | versions (`versions`): restores the installed version | supervisor, lifecycle | `agent-state.json`, `versions/` |
//! | 4b | keepalive watcher (`keepalive`) | versions | `keepalive.json`: the last word from the deployment |
//! | 5 | API server (`api`, `tls`) | versions | |
//! | 6 | metrics server (`metrics`) | versions | |
//! | 6b | GPU metrics (`gpu`), when `nvidia-smi` is on `PATH` | | |
//! | 7 | Loki shipper (`loki`), when the bootstrap names a server | versions | none: lines not shipped yet are lost with the agent |
//!
//! The Loki shipper takes the binary's log lines from the moment the log opens (they wait in
//! its bounded queue), labelled with the version the supervisor runs; it starts sending last
//! and stops last, after the binary stopped, so that the binary's last lines get out.
//!
//! The lifecycle starts before the supervisor, which awaits its `starting` hooks, and gets the
//! supervisor's handle once it exists; the installed version is ordered to start before the
//! API answers, so a manifest applied at once cannot race the restore.
//!
//! Stopping ([`Life::stop`]) first runs the lifecycle's `stopping` hooks while everything still
//! runs, then turns the stop signal on, then stops each component in reverse order: the
//! servers end, a rollout under way is abandoned (the state file still names the version before
//! it), the supervisor stops the binary (SIGTERM, SIGKILL after the stop grace; when the
//! supervisor had died, what is left of the binary's process group is killed instead), the
//! lifecycle runs what was queued and undoes what its engine holds (records restored, volumes
//! unmounted and released), the rehearsal IMDS ends. Last, the instance directory is let
//! go.
//!
//! A restarted agent goes through the same list and resumes from the state files: it runs the
//! installed version without downloading it again, skips boot commands that ran in this boot
//! and `started` hooks that ran on this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_spec::bootstrap::AgentBootstrap;
use flotilla_spec::fleetd::Event;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::binary_log::BinaryLog;
use crate::boot::BootTarget;
use crate::components::{ComponentDeath, Components, Lifetime};
use crate::context::AgentContext;
use crate::error::AgentError;
use crate::failpoint::Failpoints;
use crate::fetch::Fetchers;
use crate::instance_dir::{InstanceDir, InstanceLock, create_private_dir};
use crate::lifecycle::{self, LifecycleContext, LifecycleHandle};
use crate::loki::{LokiSettings, LokiShipper};
use crate::metrics::{self, AgentMetrics};
use crate::services::{MakeServiceSupervisor, Supervisors};
use crate::spawner::Spawner;
use crate::state::AgentState;
use crate::supervisor::{BinaryEnvironment, Order, Role, SupervisorHandle, supervisor};
use crate::versions::Versions;
use crate::{api, identity, imds_rehearsal, keepalive, process_group, tls};

/// Time the servers (and the lifecycle, the rehearsal IMDS) get to end after the stop signal.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the supervisor gets beyond the stop grace period to stop the binary.
const SUPERVISOR_STOP_MARGIN: Duration = Duration::from_secs(10);

/// A started agent: its components in the order they started, and how to stop them.
#[derive(Debug)]
pub(crate) struct Life {
    context: AgentContext,
    stop: watch::Sender<bool>,
    /// In start order; stopping pops them.
    running: Vec<Component>,
    lock: Option<InstanceLock>,
    /// Why the keepalive ran out, once it has.
    expired: mpsc::UnboundedReceiver<String>,
    pub(crate) api_address: SocketAddr,
    pub(crate) metrics_address: SocketAddr,
    /// The data disks the supervisor's boots mounted, unmounted once the binary stopped.
    mounted_disks: crate::disks::MountedDisks,
}

/// One started component, as the agent stops it.
#[derive(Debug)]
enum Component {
    /// A whole-life task that ends on the stop signal: the rehearsal IMDS, the API and metrics
    /// servers.
    Server { name: &'static str, task: JoinHandle<()> },
    /// The lifecycle: its `stopping` hooks run before anything stops; its task ends on the stop
    /// signal once the events already queued ran.
    Lifecycle { handle: LifecycleHandle, task: JoinHandle<()> },
    /// The supervisor: told to stop the binary and end.
    Supervisor { handle: SupervisorHandle, task: JoinHandle<()> },
    /// The services' supervisors: each told to stop its service and end.
    Services(Arc<Supervisors>),
    /// The versions: a rollout under way is abandoned.
    Versions(Arc<Versions>),
    /// The Loki shipper: told to stop (after everything else stopped) and given its last push.
    Shipper { stop: watch::Sender<bool>, task: JoinHandle<()> },
}

/// Starts the agent: everything before the components, then the components in order (see the
/// module's documentation). Returns once the API and the metrics answer; deaths of components
/// arrive on the returned receiver.
pub(crate) async fn start(
    bootstrap: AgentBootstrap,
    fetchers: Fetchers,
    failpoints: Failpoints,
) -> Result<(Life, mpsc::UnboundedReceiver<ComponentDeath>), AgentError> {
    let dir = InstanceDir::new(bootstrap.dir.clone());
    create_private_dir(dir.root())?;
    let lock = InstanceLock::acquire(&dir)?;
    for path in [dir.versions(), dir.work(), dir.logs()] {
        create_private_dir(&path)?;
    }
    let log = BinaryLog::open(&dir.logs(), &bootstrap.logs)
        .map_err(|source| AgentError::InstanceDir { path: dir.logs(), source })?;
    let log = Arc::new(log);
    let metrics = Arc::new(AgentMetrics::new());
    let shipper = bootstrap.loki.as_ref().map(|loki| {
        let shipper = LokiShipper::new(LokiSettings::new(&loki.url), metrics.loki_counters());
        log.ship_to(shipper.clone());
        shipper
    });
    log.event(&format!(
        "agent {} started (pid {}); identity from {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        bootstrap.identity
    ));

    let identity = identity::wait_for_identity(&bootstrap, &fetchers).await?;
    let tls = tls::server_config(&identity, &bootstrap.identity)?;
    let api_address = SocketAddr::new(bootstrap.listen, bootstrap.api_port);
    let metrics_address = SocketAddr::new(bootstrap.listen, bootstrap.metrics_port);
    let api_listener = bind("mTLS API", api_address).await?;
    let metrics_listener = bind("metrics", metrics_address).await?;
    let state = AgentState::load(&dir.state_file())?;
    let leftovers =
        process_group::kill_leftovers(&dir.binary_process_group(), &identity.tag, &identity.name);
    if !leftovers.is_empty() {
        log.event(&format!(
            "killed processes the previous agent's binary left behind: pids {leftovers:?}"
        ));
    }
    for (service, file) in service_process_group_files(&dir) {
        let leftovers = process_group::kill_leftovers(&file, &identity.tag, &identity.name);
        if !leftovers.is_empty() {
            log.event(&format!(
                "killed processes the previous agent's service {service} left behind: pids {leftovers:?}"
            ));
        }
    }
    let spawner =
        Spawner::start(tokio::runtime::Handle::current()).map_err(AgentError::SpawnerThread)?;

    let (stop, stop_receiver) = watch::channel(false);
    let (expire, expired) = mpsc::unbounded_channel();
    let (components, deaths) = Components::new(stop_receiver.clone());
    let context = AgentContext {
        bootstrap: Arc::new(bootstrap),
        identity: Arc::new(identity),
        dir,
        log,
        stop: stop_receiver,
        components,
        failpoints,
    };
    let mut life = Life {
        context: context.clone(),
        stop,
        running: Vec::new(),
        lock: Some(lock),
        expired,
        api_address,
        metrics_address,
        mounted_disks: crate::disks::MountedDisks::default(),
    };

    // 1. The rehearsal IMDS, which the lifecycle's poller may ask from its first poll.
    if let Some(rehearsal) = start_rehearsal_imds(&context).await? {
        life.running.push(rehearsal);
    }
    // 2. The lifecycle, whose task starts once the supervisor exists.
    let calls = crate::machine_cloud::CallLog::default();
    let (lifecycle, make_lifecycle) = lifecycle::lifecycle(LifecycleContext {
        dir: context.dir.root().to_path_buf(),
        work: context.dir.work(),
        log: context.log.clone(),
        imds_endpoint: context.bootstrap.imds.as_ref().map(|imds| imds.endpoint.clone()),
        runs_on: context.bootstrap.boot.runs_on.clone(),
        machine: lifecycle::MachineContext {
            cloud: fetchers
                .machine_cloud()
                .map(|cloud| crate::machine_cloud::logged(cloud, &calls)),
            calls: calls.clone(),
            name: context.identity.name.clone(),
            region: context.identity.region.clone(),
            public_ip: context.identity.public_ip,
            private_ip: context.identity.private_ip,
            device_root: boot_root(&context),
            may_set_hostname: context.bootstrap.boot.system_settings,
            metrics: metrics.clone(),
        },
    });
    // 3. The supervisor, which makes the data disks ready first in every boot.
    let disks = crate::disks::DiskAccess {
        cloud: fetchers.machine_cloud(),
        imds_endpoint: context.bootstrap.imds.as_ref().map(|imds| imds.endpoint.clone()),
        region: context.identity.region.clone(),
        device_wait: crate::devices::DEVICE_WAIT,
        mounted: life.mounted_disks.clone(),
    };
    let gpu_metrics = metrics.clone();
    let (supervisor, supervisor_task) =
        start_supervisor(&context, spawner.clone(), metrics.clone(), lifecycle.clone(), disks);
    let lifecycle_task = make_lifecycle(supervisor.clone()).run(context.stop.clone());
    life.running.push(Component::Lifecycle {
        handle: lifecycle.clone(),
        task: context.components.spawn("lifecycle", Lifetime::Agent, lifecycle_task),
    });
    life.running.push(Component::Supervisor { handle: supervisor.clone(), task: supervisor_task });
    // 3b. The services' supervisors, made as versions name them.
    let supervisors = Supervisors::new(
        supervisor,
        service_supervisor_factory(&context, spawner.clone(), metrics.clone(), lifecycle.clone()),
    );
    life.running.push(Component::Services(supervisors.clone()));
    // 4. The versions: the installed version is ordered to start before the API answers.
    let packages =
        crate::packages::ServicePackages { target: boot_target(&context, None), spawner };
    let versions = Arc::new(Versions::new(
        &context,
        state,
        supervisors,
        lifecycle,
        metrics,
        fetchers,
        packages,
    ));
    versions.restore().await;
    life.running.push(Component::Versions(versions.clone()));
    // 4b. The keepalive watcher, which ends the agent's life when the deployment goes silent.
    let watcher = keepalive::watch_keepalive(
        versions.keepalive.clone(),
        versions.supervisor_status(),
        context.log.clone(),
        expire,
        context.stop.clone(),
    );
    life.running.push(Component::Server {
        name: "keepalive",
        task: context.components.spawn("keepalive", Lifetime::UntilDone, watcher),
    });
    // 5. The API server.
    let api = api::serve_api(
        api_listener,
        tls,
        versions.clone(),
        context.stop.clone(),
        context.failpoints.clone(),
    );
    life.running.push(Component::Server {
        name: "API server",
        task: context.components.spawn("API server", Lifetime::Agent, api),
    });
    // 6. The metrics server.
    let page = {
        let versions = versions.clone();
        move || versions.metrics_text()
    };
    let metrics = metrics::serve_metrics(
        metrics_listener,
        page,
        context.stop.clone(),
        context.failpoints.clone(),
    );
    life.running.push(Component::Server {
        name: "metrics server",
        task: context.components.spawn("metrics server", Lifetime::Agent, metrics),
    });
    // 6b. The GPU metrics, when `nvidia-smi` is on PATH (the poller ends at once otherwise).
    let gpus =
        crate::gpu::poll_gpus(crate::gpu::NVIDIA_SMI.into(), gpu_metrics, context.stop.clone());
    life.running.push(Component::Server {
        name: "GPU metrics",
        task: context.components.spawn("GPU metrics", Lifetime::UntilDone, gpus),
    });
    // 7. The Loki shipper, stopped last (see the module's documentation).
    if let Some(shipper) = shipper {
        life.running.insert(0, start_shipper(&context, shipper, &versions));
    }
    tracing::info!("agent serving: API on {api_address}, metrics on {metrics_address}");
    Ok((life, deaths))
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(address).await.map_err(|source| AgentError::Listen { what, address, source })
}

/// The rehearsal IMDS, when the bootstrap asks for one (local provider).
async fn start_rehearsal_imds(context: &AgentContext) -> Result<Option<Component>, AgentError> {
    let Some(imds) = &context.bootstrap.imds else {
        return Ok(None);
    };
    let Some(notices) = &imds.rehearsal_notices else {
        return Ok(None);
    };
    let serve = imds_rehearsal::serve(
        &imds.endpoint,
        notices.clone(),
        &context.identity,
        context.stop.clone(),
    )
    .await?;
    let task = context.components.spawn("rehearsal IMDS", Lifetime::Agent, serve);
    Ok(Some(Component::Server { name: "rehearsal IMDS", task }))
}

/// The Loki shipper's task: it learns the labels (IMDS may be asked), follows the version the
/// supervisor runs, and sends until its own stop signal.
fn start_shipper(
    context: &AgentContext,
    shipper: Arc<LokiShipper>,
    versions: &Versions,
) -> Component {
    let (stop, stop_receiver) = watch::channel(false);
    let target = context.bootstrap.loki.clone().expect("a shipper exists only with a Loki target");
    let imds = context.bootstrap.imds.as_ref().map(|imds| imds.endpoint.clone());
    let identity = context.identity.clone();
    let mut status = versions.supervisor_status();
    let task = async move {
        let labels = crate::loki::labels(&identity, &target, imds.as_deref()).await;
        let follow = {
            let shipper = shipper.clone();
            async move {
                loop {
                    shipper.set_version(status.borrow_and_update().version.as_deref());
                    if status.changed().await.is_err() {
                        return std::future::pending::<()>().await;
                    }
                }
            }
        };
        tokio::select! {
            () = shipper.run(labels, stop_receiver) => {}
            () = follow => {}
        }
    };
    let task = context.components.spawn("Loki shipper", Lifetime::Agent, task);
    Component::Shipper { stop, task }
}

/// Where boot files land and the lifecycle finds devices: `/` on AWS, `<dir>/root` by default.
fn boot_root(context: &AgentContext) -> std::path::PathBuf {
    context.bootstrap.boot.root.clone().unwrap_or_else(|| context.dir.root().join("root"))
}

/// The supervisor of the binary, spawned: its handle and its task.
/// The services' process-group files left in the instance directory, with the service names.
fn service_process_group_files(dir: &InstanceDir) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = fs_err::read_dir(dir.root()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let name = file_name.to_str()?.strip_prefix("service-")?.strip_suffix(".pgid")?;
            Some((name.to_owned(), entry.path()))
        })
        .collect()
}

/// Who the binary and the services run as.
fn binary_environment(context: &AgentContext) -> BinaryEnvironment {
    let bootstrap = &context.bootstrap;
    let identity = &context.identity;
    BinaryEnvironment {
        dir: context.dir.clone(),
        tag: identity.tag.clone(),
        name: identity.name.clone(),
        region: identity.region.clone(),
        public_ip: identity.public_ip,
        private_ip: identity.private_ip,
        // A machine with an IMDS is a cloud machine: SDKs there find their region from it.
        aws_region: bootstrap.imds.as_ref().map(|_| identity.region.clone()),
        health_address: if bootstrap.listen.is_unspecified() {
            identity.private_ip
        } else {
            bootstrap.listen
        },
    }
}

/// Makes a service's supervisor: the binary's collaborators, its own log
/// (`logs/services/<name>/binary.log`), spawned as a whole-life component.
fn service_supervisor_factory(
    context: &AgentContext,
    spawner: Spawner,
    metrics: Arc<AgentMetrics>,
    lifecycle: LifecycleHandle,
) -> MakeServiceSupervisor {
    let context = context.clone();
    Box::new(move |name: &str| {
        let logs = context.dir.service_logs(name);
        let log = create_private_dir(&logs)
            .map_err(|error| error.to_string())
            .and_then(|()| {
                BinaryLog::open(&logs, &context.bootstrap.logs).map_err(|error| error.to_string())
            })
            .map(Arc::new)
            .unwrap_or_else(|error| {
                // The agent's own log stands in: the service's lines are still kept somewhere.
                context.log.event(&format!(
                    "could not open service {name}'s log under {}: {error}; its output goes here",
                    logs.display()
                ));
                context.log.clone()
            });
        let (handle, task) = supervisor(
            Role::Service(name.to_owned()),
            spawner.clone(),
            log,
            metrics.clone(),
            binary_environment(&context),
            boot_target(&context, None),
            context.bootstrap.stop_grace,
            context.failpoints.clone(),
            lifecycle.clone(),
        );
        let task = context.components.spawn(
            format!("supervisor of service {name}"),
            Lifetime::Agent,
            task,
        );
        (handle, task)
    })
}

fn boot_target(context: &AgentContext, disks: Option<crate::disks::DiskAccess>) -> BootTarget {
    let bootstrap = &context.bootstrap;
    BootTarget {
        disks,
        root: boot_root(context),
        system_settings: bootstrap.boot.system_settings,
        apt_lock_wait: bootstrap.boot.apt_lock_wait,
        runs_on: bootstrap.boot.runs_on.clone(),
        dir: context.dir.root().to_path_buf(),
    }
}

fn start_supervisor(
    context: &AgentContext,
    spawner: Spawner,
    metrics: Arc<AgentMetrics>,
    lifecycle: LifecycleHandle,
    disks: crate::disks::DiskAccess,
) -> (SupervisorHandle, JoinHandle<()>) {
    let bootstrap = &context.bootstrap;
    let environment = binary_environment(context);
    let boot_target = boot_target(context, Some(disks));
    let (handle, task) = supervisor(
        Role::Binary,
        spawner,
        context.log.clone(),
        metrics,
        environment,
        boot_target,
        bootstrap.stop_grace,
        context.failpoints.clone(),
        lifecycle,
    );
    (handle, context.components.spawn("supervisor", Lifetime::Agent, task))
}

impl Life {
    /// Resolves once the keepalive ran out, with why; never otherwise.
    pub(crate) async fn keepalive_expired(&mut self) -> String {
        match self.expired.recv().await {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// The command that powers the machine off (the bootstrap's `power_off`).
    pub(crate) fn power_off_command(&self) -> Vec<String> {
        self.context.bootstrap.power_off.clone()
    }

    /// The binary's log, where the agent writes its events.
    pub(crate) fn log(&self) -> &BinaryLog {
        &self.context.log
    }

    /// The instance directory.
    pub(crate) fn dir(&self) -> &InstanceDir {
        &self.context.dir
    }

    /// Stops the components in reverse order (see the module's documentation), then lets the
    /// instance directory go.
    pub(crate) async fn stop(mut self) {
        // `stopping` hooks run while the binary still runs, bounded like a stop.
        for component in self.running.iter().rev() {
            if let Component::Lifecycle { handle, .. } = component {
                run_stopping_hooks(handle).await;
            }
        }
        let _ = self.stop.send(true);
        while let Some(component) = self.running.pop() {
            self.stop_component(component).await;
        }
        self.context.log.event("agent stopped");
        if let Some(lock) = self.lock.take() {
            lock.release();
        }
    }

    async fn stop_component(&self, component: Component) {
        match component {
            Component::Server { name, task } => {
                if tokio::time::timeout(SERVER_STOP_TIMEOUT, task).await.is_err() {
                    tracing::warn!("the {name} did not stop within {SERVER_STOP_TIMEOUT:?}");
                }
            }
            Component::Lifecycle { handle, task } => {
                if tokio::time::timeout(SERVER_STOP_TIMEOUT, task).await.is_err() {
                    tracing::warn!("the lifecycle did not stop within {SERVER_STOP_TIMEOUT:?}");
                }
                // The binary is down (the supervisor stopped before): the lifecycle's records
                // are restored and its volumes unmounted and released.
                for failure in handle.undo().await {
                    self.context.log.event(&format!("lifecycle: stop: undo: {failure}"));
                }
            }
            Component::Versions(versions) => versions.abandon_rollout().await,
            Component::Services(supervisors) => {
                let limit =
                    self.context.bootstrap.stop_grace.saturating_add(SUPERVISOR_STOP_MARGIN);
                if tokio::time::timeout(limit, supervisors.shut_down_services()).await.is_err() {
                    tracing::warn!("the services did not stop within {limit:?}");
                }
            }
            Component::Shipper { stop, task } => {
                let _ = stop.send(true);
                let limit = crate::loki::FINAL_PUSH_TIMEOUT.saturating_add(SERVER_STOP_TIMEOUT);
                if tokio::time::timeout(limit, task).await.is_err() {
                    tracing::warn!("the Loki shipper did not stop within {limit:?}");
                }
            }
            Component::Supervisor { handle, task } => {
                self.stop_supervisor(&handle, task).await;
                // The binary is down: the data disks it mounted are unmounted.
                for failure in self.mounted_disks.unmount_all().await {
                    self.context.log.event(&format!("disks: stop: {failure}"));
                }
            }
        }
    }

    /// Stops the binary through the supervisor and waits for the supervisor to end. When the
    /// supervisor had ended without stopping the binary, the binary died with its spawner thread
    /// (parent-death signal) but its children did not: they are killed here.
    async fn stop_supervisor(&self, handle: &SupervisorHandle, task: JoinHandle<()>) {
        let context = &self.context;
        let stopped = handle.order(Order::Shutdown);
        let limit = context.bootstrap.stop_grace.saturating_add(SUPERVISOR_STOP_MARGIN);
        match tokio::time::timeout(limit, stopped.wait()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let killed = process_group::kill_leftovers(
                    &context.dir.binary_process_group(),
                    &context.identity.tag,
                    &context.identity.name,
                );
                context.log.event(&format!(
                    "the supervisor had ended: killed what was left of the binary's process group: pids {killed:?}"
                ));
            }
            Err(_) => tracing::warn!("the binary did not stop within {limit:?}"),
        }
        if tokio::time::timeout(SUPERVISOR_STOP_MARGIN, task).await.is_err() {
            tracing::warn!("the supervisor did not end within {SUPERVISOR_STOP_MARGIN:?}");
        }
    }
}

/// Runs the `stopping` hooks, when the selected lifecycle has any, for at most the default time
/// of one hook line.
async fn run_stopping_hooks(lifecycle: &LifecycleHandle) {
    if !lifecycle.has_hooks(Event::Stopping) {
        return;
    }
    let stopping = lifecycle.run(Event::Stopping, "the agent is stopping");
    if tokio::time::timeout(lifecycle::DEFAULT_LINE_TIMEOUT, stopping).await.is_err() {
        tracing::warn!("the stopping hooks did not end in time");
    }
}

impl Drop for Life {
    /// Without [`Life::stop`], the components are told to stop and the binary too, but nobody
    /// waits for them.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for component in &self.running {
            if let Component::Supervisor { handle, .. } = component {
                drop(handle.order(Order::Shutdown));
            }
        }
    }
}
