//! The flotilla agent: the daemon on every machine of a fleet. It supervises the user's binary,
//! installs new versions and rolls back the ones that fail, and serves an mTLS API and
//! Prometheus metrics.
//!
//! The components, in the order a machine lives through them:
//!
//! 1. **Entry** ([`run`]): reads the bootstrap config, sends the agent's own log lines where it
//!    says (`agent_log`: a file rotated like the binary's log, or stderr), builds a
//!    current-thread tokio runtime (the idle agent stays small), and runs until SIGTERM or
//!    SIGINT, then stops the binary gracefully. [`start`] does the same inside a caller's
//!    runtime, without touching logging, and returns an [`AgentHandle`].
//! 2. **Instance directory** (`instance_dir`): creates `dir` 0700, takes an exclusive flock on
//!    `agent.lock` (a second agent is refused with the holder's pid) and writes `agent.pid`.
//! 3. **Identity** (`identity`): waits for the identity bundle the deployer writes, through the
//!    [`Fetchers`] (`fetch`), and refuses a bundle of another deployment.
//! 4. **API** (`api`, `tls`): HTTPS with client certificates required, over the deployment CA;
//!    one closed set of requests, [`flotilla_spec::api::Request`].
//! 5. **Metrics** (`metrics`): plain HTTP `GET /metrics`, one request per connection. On both
//!    ports a connection that has not proven itself yet (TLS handshake, request head) is
//!    *pending*, with a budget of its own where the newest pushes out the oldest (`admission`),
//!    so a flood of trickling connections cannot keep clients out.
//! 6. **State** (`state`): `agent-state.json` says which version is installed; the agent starts
//!    it (`agent::Agent::restore`). Both listeners are bound before (so a taken port fails the
//!    start at once) but answer only after, so no request races the restore.
//! 7. **Supervision** (`supervisor`, `spawner`, `process_group`, `binary_log`, `log_file`,
//!    `backoff`, `deadline`): runs the binary in its own process group, dying with the agent
//!    (and what a killed agent's binary left behind is cleaned up at the next start), logs its
//!    output with rotation, restarts it with capped exponential backoff; every deadline
//!    saturates instead of overflowing.
//!    Before a version starts on an order, its boot additions run (`boot`): files, kernel
//!    settings, packages, commands once per boot; a failed critical step keeps it stopped.
//! 8. **Health** (`health`): http, tcp or none, every second.
//! 9. **Rollouts** (`agent`, `artifacts`): download, verify, start, hold to the health
//!    deadline, then keep the new version or roll back.
//! 10. **Components** (`components`): the supervisor, the servers and each rollout run as
//!     tasks whose panic (or, for the whole-life ones, return) is noticed; [`run`] then writes
//!     why into both logs, stops the binary and returns [`AgentError::ComponentDied`], so the
//!     agent exits non-zero and its service manager restarts it. `failpoint` holds the test
//!     seams that make components die (cargo feature `failpoints`, tests only).
//! 11. **Errors** ([`AgentError`]): what stops the agent, with what to check.
//!
//! Architecture Invariant: the agent is the only thing that runs user binaries, under every
//! provider; a provider only adds [`Fetcher`]s (such as `s3://`).

mod admission;
mod agent;
mod agent_log;
mod api;
mod artifacts;
mod backoff;
mod binary_log;
mod boot;
mod components;
mod deadline;
mod devices;
mod domains;
mod error;
#[cfg(feature = "failpoints")]
pub mod failpoint;
#[cfg(not(feature = "failpoints"))]
mod failpoint;
mod fetch;
pub mod fleetd_daemon;
mod health;
mod identity;
mod imds;
mod imds_rehearsal;
mod instance_dir;
mod lifecycle;
mod log_file;
mod machine_cloud;
mod machine_facts;
mod metrics;
mod notify;
mod process_group;
mod refusal_log;
mod spawner;
mod state;
mod supervisor;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_spec::bootstrap::AgentBootstrap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use agent_log::LogFilter;
pub use components::ComponentDeath;
pub use error::AgentError;
pub use fetch::{FetchError, FetchFuture, Fetcher, Fetchers, LocalFileFetcher};
pub use machine_cloud::{
    ClaimedVolume, CloudError, CloudFuture, MachineCloud, MachineFacts, Notification,
    PreviousRecord, RecordChange, RecordHold, Release, VolumeClaim,
};

use crate::agent::{Agent, RolloutSlot};
use crate::binary_log::BinaryLog;
use crate::boot::BootTarget;
use crate::components::{Components, Lifetime};
use crate::failpoint::Failpoints;
use crate::instance_dir::{InstanceDir, InstanceLock, create_private_dir};
use crate::metrics::AgentMetrics;
use crate::refusal_log::RefusalLog;
use crate::spawner::Spawner;
use crate::state::AgentState;
use crate::supervisor::{BinaryEnvironment, Order, supervisor};

/// Time the servers get to finish after shutdown was signalled.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the supervisor gets beyond the stop grace period to stop the binary.
const SUPERVISOR_STOP_MARGIN: Duration = Duration::from_secs(10);

/// Runs the agent for the bootstrap config at `bootstrap_path` until SIGTERM or SIGINT, then
/// stops the binary gracefully and returns. Builds its own current-thread runtime.
///
/// Installs the process's log subscriber first (see `agent_log`): `log_filter` says which lines,
/// the bootstrap's `logs.agent_log` where (a rotated file, or stderr without it). An error that
/// stops the agent is returned, not logged: the caller logs it, and it lands in the same place.
///
/// When a component dies (see [`ComponentDeath`]), the agent writes why into the binary's log
/// and its own, stops the binary and returns [`AgentError::ComponentDied`]: the caller exits
/// non-zero, so that a service manager restarts the agent.
pub fn run(
    bootstrap_path: &Path,
    fetchers: Fetchers,
    log_filter: &LogFilter,
) -> Result<(), AgentError> {
    run_armed(bootstrap_path, fetchers, log_filter, Failpoints::default())
}

/// [`run`] with `failpoints` armed: only for the agent's own tests (see `failpoint`).
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn run_with_failpoints(
    bootstrap_path: &Path,
    fetchers: Fetchers,
    log_filter: &LogFilter,
    failpoints: &[failpoint::Failpoint],
) -> Result<(), AgentError> {
    run_armed(bootstrap_path, fetchers, log_filter, Failpoints::armed(failpoints))
}

fn run_armed(
    bootstrap_path: &Path,
    fetchers: Fetchers,
    log_filter: &LogFilter,
    failpoints: Failpoints,
) -> Result<(), AgentError> {
    let bootstrap = match read_bootstrap(bootstrap_path) {
        Ok(bootstrap) => bootstrap,
        Err(error) => {
            agent_log::log_to_stderr(log_filter);
            return Err(error);
        }
    };
    agent_log::log_as_configured(log_filter, &bootstrap.logs)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Hashing artifacts and reading logs are the only blocking work: a few threads do.
        .max_blocking_threads(4)
        .thread_name("flotilla-agent")
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async move {
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| AgentError::Signal { signal: name, source })
        };
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
        // A signal while waiting for the identity ends the agent too: nothing runs yet.
        let mut handle = tokio::select! {
            handle = start_armed(bootstrap, fetchers, failpoints) => handle?,
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        };
        let death = tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping");
                None
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping");
                None
            }
            death = handle.component_death() => Some(death),
        };
        let Some(death) = death else {
            return handle.shutdown().await;
        };
        handle.agent.log.event(&format!(
            "{death}: stopping the agent, which exits with an error so that it is restarted"
        ));
        handle.shutdown().await?;
        Err(AgentError::ComponentDied(death))
    })
}

fn read_bootstrap(path: &Path) -> Result<AgentBootstrap, AgentError> {
    let text = fs_err::read_to_string(path)
        .map_err(|source| AgentError::ReadBootstrap { path: path.to_path_buf(), source })?;
    Ok(AgentBootstrap::parse(&text, &path.display().to_string())?)
}

/// Starts the agent inside the current tokio runtime: takes the instance directory, waits for
/// the identity, binds the API and metrics, restores the installed version and serves. Returns
/// once all of that is done; [`AgentHandle::shutdown`] stops it.
pub async fn start(
    bootstrap: AgentBootstrap,
    fetchers: Fetchers,
) -> Result<AgentHandle, AgentError> {
    start_armed(bootstrap, fetchers, Failpoints::default()).await
}

/// [`start`] with `failpoints` armed: only for the agent's own tests (see `failpoint`).
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub async fn start_with_failpoints(
    bootstrap: AgentBootstrap,
    fetchers: Fetchers,
    failpoints: &[failpoint::Failpoint],
) -> Result<AgentHandle, AgentError> {
    start_armed(bootstrap, fetchers, Failpoints::armed(failpoints)).await
}

async fn start_armed(
    bootstrap: AgentBootstrap,
    fetchers: Fetchers,
    failpoints: Failpoints,
) -> Result<AgentHandle, AgentError> {
    let dir = InstanceDir::new(bootstrap.dir.clone());
    create_private_dir(dir.root())?;
    let lock = InstanceLock::acquire(&dir)?;
    for path in [dir.versions(), dir.work(), dir.logs()] {
        create_private_dir(&path)?;
    }
    let log = BinaryLog::open(&dir.logs(), &bootstrap.logs)
        .map_err(|source| AgentError::InstanceDir { path: dir.logs(), source })?;
    let log = Arc::new(log);
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
    let bind = |what: &'static str, address: SocketAddr| async move {
        TcpListener::bind(address).await.map_err(|source| AgentError::Listen {
            what,
            address,
            source,
        })
    };
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

    let spawner =
        Spawner::start(tokio::runtime::Handle::current()).map_err(AgentError::SpawnerThread)?;
    let metrics = Arc::new(AgentMetrics::new());
    let environment = BinaryEnvironment {
        dir: dir.clone(),
        tag: identity.tag.clone(),
        name: identity.name.clone(),
        region: identity.region.clone(),
        public_ip: identity.public_ip,
        private_ip: identity.private_ip,
        health_address: if bootstrap.listen.is_unspecified() {
            identity.private_ip
        } else {
            bootstrap.listen
        },
    };
    let (shutdown, shutdown_receiver) = watch::channel(false);
    let (components, deaths) = Components::new(shutdown_receiver.clone());
    let boot_target = BootTarget {
        root: bootstrap.boot.root.clone().unwrap_or_else(|| dir.root().join("root")),
        system_settings: bootstrap.boot.system_settings,
        runs_on: bootstrap.boot.runs_on.clone(),
        dir: dir.root().to_path_buf(),
    };
    let rehearsal = match &bootstrap.imds {
        Some(imds) => match &imds.rehearsal_notices {
            Some(notices) => Some(
                imds_rehearsal::serve(
                    &imds.endpoint,
                    notices.clone(),
                    &identity,
                    shutdown_receiver.clone(),
                )
                .await?,
            ),
            None => None,
        },
        None => None,
    };
    let (lifecycle_handle, make_lifecycle) = lifecycle::lifecycle(lifecycle::LifecycleContext {
        dir: dir.root().to_path_buf(),
        work: dir.work(),
        log: log.clone(),
        imds_endpoint: bootstrap.imds.as_ref().map(|imds| imds.endpoint.clone()),
        runs_on: bootstrap.boot.runs_on.clone(),
        machine: lifecycle::MachineContext {
            cloud: fetchers.machine_cloud(),
            name: identity.name.clone(),
            region: identity.region.clone(),
            public_ip: identity.public_ip,
            private_ip: identity.private_ip,
            device_root: boot_target.root.clone(),
            may_set_hostname: bootstrap.boot.system_settings,
            metrics: metrics.clone(),
        },
    });
    let (supervisor, supervisor_task) = supervisor(
        spawner,
        log.clone(),
        metrics.clone(),
        environment,
        boot_target,
        bootstrap.stop_grace,
        failpoints.clone(),
        lifecycle_handle.clone(),
    );
    let supervisor_task = components.spawn("supervisor", Lifetime::Agent, supervisor_task);
    let lifecycle_task = make_lifecycle(supervisor.clone()).run(shutdown_receiver.clone());
    let mut background = vec![components.spawn("lifecycle", Lifetime::Agent, lifecycle_task)];
    if let Some(rehearsal) = rehearsal {
        background.push(components.spawn("rehearsal IMDS", Lifetime::Agent, rehearsal));
    }
    let stop_grace = bootstrap.stop_grace;
    let agent = Arc::new(Agent {
        identity,
        dir,
        log,
        metrics,
        supervisor,
        fetchers,
        state: Mutex::new(state),
        rollout: Mutex::new(RolloutSlot::default()),
        rollout_finished: tokio::sync::Notify::new(),
        started_at: tokio::time::Instant::now(),
        components: components.clone(),
        lifecycle: lifecycle_handle,
    });

    // The installed version is ordered to start before the API answers: a manifest applied at
    // once cannot race the restore.
    agent.restore().await;
    let api = api::serve_api(
        api_listener,
        tls,
        agent.clone(),
        shutdown_receiver.clone(),
        failpoints.clone(),
    );
    let metrics =
        metrics::serve_metrics(metrics_listener, agent.clone(), shutdown_receiver, failpoints);
    let mut servers = vec![
        components.spawn("API server", Lifetime::Agent, api),
        components.spawn("metrics server", Lifetime::Agent, metrics),
    ];
    servers.extend(background);
    tracing::info!("agent serving: API on {api_address}, metrics on {metrics_address}");
    Ok(AgentHandle {
        agent,
        shutdown,
        servers,
        supervisor_task: Some(supervisor_task),
        deaths,
        lock: Some(lock),
        api_address,
        metrics_address,
        stop_grace,
    })
}

/// The next connection of a server; `None` once `shutdown` turns true. Accepting never waits
/// for room (see `admission`). An accept error is logged and retried 100 ms later. While it
/// waits, the server's refusals not logged yet are logged at each tick of `refusals_due`.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    server: &str,
    refusals: &RefusalLog,
    refusals_due: &mut tokio::time::Interval,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = refusals_due.tick() => refusals.flush(),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    tracing::warn!("{server}: could not accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown_signalled(shutdown) => return None,
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in the caller's future.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A running agent started with [`start`].
pub struct AgentHandle {
    agent: Arc<Agent>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    supervisor_task: Option<JoinHandle<()>>,
    deaths: tokio::sync::mpsc::UnboundedReceiver<ComponentDeath>,
    lock: Option<InstanceLock>,
    api_address: SocketAddr,
    metrics_address: SocketAddr,
    stop_grace: Duration,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("dir", &self.agent.dir.root())
            .field("api_address", &self.api_address)
            .field("metrics_address", &self.metrics_address)
            .finish_non_exhaustive()
    }
}

impl AgentHandle {
    /// Where the mTLS API listens.
    pub fn api_address(&self) -> SocketAddr {
        self.api_address
    }

    /// Where the metrics listen.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    /// Resolves when a component of the agent has died (see [`ComponentDeath`]); never while
    /// all is well. [`run`] then shuts the agent down and exits with an error.
    pub async fn component_death(&mut self) -> ComponentDeath {
        match self.deaths.recv().await {
            Some(death) => death,
            // Every component holds a sender, and so does the agent this handle keeps.
            None => std::future::pending().await,
        }
    }

    /// Stops serving, abandons a rollout under way (the state file still names the version
    /// before it), stops the binary (SIGTERM, SIGKILL after the stop grace period) and releases
    /// the instance directory. When the supervisor has died, what is left of the binary's
    /// process group is killed instead.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        // `stopping` hooks run while the binary still runs, bounded like a stop.
        if self.agent.lifecycle.has_hooks(flotilla_spec::fleetd::Event::Stopping) {
            let stopping = self
                .agent
                .lifecycle
                .run(flotilla_spec::fleetd::Event::Stopping, "the agent is stopping");
            if tokio::time::timeout(lifecycle::DEFAULT_LINE_TIMEOUT, stopping).await.is_err() {
                tracing::warn!("the stopping hooks did not end in time");
            }
        }
        let _ = self.shutdown.send(true);
        self.agent.abandon_rollout().await;
        let stopped = self.agent.supervisor.order(Order::Shutdown);
        let limit = self.stop_grace.saturating_add(SUPERVISOR_STOP_MARGIN);
        match tokio::time::timeout(limit, stopped.wait()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                // The supervisor had ended without stopping the binary: the binary died with
                // its spawner thread (parent-death signal), its children did not.
                let agent = &self.agent;
                let group = agent.dir.binary_process_group();
                let killed = process_group::kill_leftovers(
                    &group,
                    &agent.identity.tag,
                    &agent.identity.name,
                );
                agent.log.event(&format!(
                    "the supervisor had ended: killed what was left of the binary's process group: pids {killed:?}"
                ));
            }
            Err(_) => tracing::warn!("the binary did not stop within {limit:?}"),
        }
        if let Some(task) = self.supervisor_task.take()
            && tokio::time::timeout(SUPERVISOR_STOP_MARGIN, task).await.is_err()
        {
            tracing::warn!("the supervisor did not end within {SUPERVISOR_STOP_MARGIN:?}");
        }
        // The binary is down: the lifecycle's records and volumes are undone.
        for failure in self.agent.lifecycle.undo().await {
            self.agent.log.event(&format!("lifecycle: stop: undo: {failure}"));
        }
        for server in self.servers.drain(..) {
            if tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await.is_err() {
                tracing::warn!("a server did not stop within {SERVER_STOP_TIMEOUT:?}");
            }
        }
        self.agent.log.event("agent stopped");
        if let Some(lock) = self.lock.take() {
            lock.release();
        }
        Ok(())
    }
}

impl Drop for AgentHandle {
    /// Without [`AgentHandle::shutdown`], the servers stop and the binary is told to stop, but
    /// nobody waits for it.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if self.supervisor_task.is_some() {
            drop(self.agent.supervisor.order(Order::Shutdown));
        }
    }
}
