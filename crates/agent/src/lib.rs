//! The flotilla agent: the daemon on every machine of a fleet. It supervises the user's binary,
//! installs new versions and rolls back the ones that fail, and serves an mTLS API and
//! Prometheus metrics.
//!
//! The agent's life, in the order a machine lives through it; its components start in order
//! and stop in reverse (`life`), each with an `AgentContext` (`context`: identity, instance
//! directory, log, bootstrap, stop signal) and its state in the instance directory, so that a
//! restarted agent resumes without redoing what is done.
//!
//! 1. **Entry** ([`run`]): reads the bootstrap config, sends the agent's own log lines where it
//!    says (`agent_log`: a file rotated like the binary's log, or stderr), builds a
//!    current-thread tokio runtime (the idle agent stays small), and runs until SIGTERM or
//!    SIGINT, then stops the components. [`start`] does the same inside a caller's runtime,
//!    without touching logging, and returns an [`AgentHandle`].
//! 2. **Instance directory** (`instance_dir`): creates `dir` 0700, takes an exclusive flock on
//!    `agent.lock` (a second agent is refused with the holder's pid) and writes `agent.pid`;
//!    opens the binary's log (`binary_log`, `log_file`).
//! 3. **Identity** (`identity`): waits for the identity bundle the deployer writes, through the
//!    [`Fetchers`] (`fetch`), and refuses a bundle of another deployment.
//! 4. **Ports**: the API and metrics listeners are bound here, so a taken port fails the start
//!    before anything runs, but answer only once their components start (6, 7).
//! 5. **Before the components**: `agent-state.json` is read (`state`), what a killed agent's
//!    binary left behind is killed (`process_group`), the spawner thread starts (`spawner`).
//! 6. **Components** (`life`), in order:
//!    1. *rehearsal IMDS* (`imds_rehearsal`), under the local provider only;
//!    2. *lifecycle* (`lifecycle`, `imds`): the manifest's `lifecycle:` hooks on the machine's
//!       events, and the IMDS poller; `started` once per machine (`lifecycle-state.json`);
//!    3. *supervisor* (`supervisor`, `output_capture`, `exit_description`, `health`,
//!       `backoff`, `deadline`): runs the binary in its own process group, dying with the
//!       agent, logs its output with rotation, checks its health (http, tcp or none, every
//!       second), restarts it with capped exponential backoff; every deadline saturates
//!       instead of overflowing. Before a version starts on an order, its boot additions run
//!       (`boot`): files, kernel settings, packages, commands once per boot; a failed critical
//!       step keeps it stopped;
//!    4. *versions* (`versions`, `artifacts`): restores the installed version, before the API
//!       answers, so no request races the restore; rollouts download, verify, start, hold to
//!       the health deadline, then keep the new version or roll back;
//!    5. *API server* (`api`, `tls`): HTTPS with client certificates required, over the
//!       deployment CA; one closed set of requests, [`flotilla_spec::api::Request`];
//!    6. *metrics server* (`metrics`): plain HTTP `GET /metrics`, one request per connection.
//!       On both ports a connection that has not proven itself yet (TLS handshake, request
//!       head) is *pending*, with a budget of its own where the newest pushes out the oldest
//!       (`admission`, `refusal_log`), so a flood of trickling connections cannot keep clients
//!       out;
//!    7. *GPU metrics* (`gpu`): each GPU's utilization, memory and temperature from
//!       `nvidia-smi`, when it is on `PATH`;
//!    8. *Loki shipper* ([`loki`]), when the bootstrap names a Loki server: the binary's log
//!       lines pushed to Loki's API, batched, retried and bounded in memory; it stops last.
//! 7. **Stop** (`life`): the lifecycle's `stopping` hooks while everything still runs, then the
//!    components in reverse order, then the instance directory is let go.
//! 8. **Death of a component** (`components`): whole-life tasks and each rollout are spawned so
//!    that a panic (or, for the whole-life ones, a return) is noticed; [`run`] then writes why
//!    into both logs, stops the components and returns [`AgentError::ComponentDied`], so the
//!    agent exits non-zero and its service manager restarts it. `failpoint` holds the test
//!    seams that make components die (cargo feature `failpoints`, tests only).
//! 9. **Errors** ([`AgentError`]): what stops the agent, with what to check. Times written
//!    down (records, logs) come from `time`.
//!
//! Not yet a component: `machine_cloud`, the seam the lifecycle engine will use for volumes,
//! records and notifications.
//!
//! Architecture Invariant: the agent is the only thing that runs user binaries, under every
//! provider; a provider only adds [`Fetcher`]s (such as `s3://`).

mod admission;
mod agent_log;
mod api;
mod artifacts;
mod backoff;
mod binary_log;
mod boot;
mod components;
mod context;
mod deadline;
mod devices;
mod disks;
mod domains;
mod error;
mod exit_description;
#[cfg(feature = "failpoints")]
pub mod failpoint;
#[cfg(not(feature = "failpoints"))]
mod failpoint;
mod fetch;
pub mod fleetd_daemon;
mod gpu;
mod health;
mod hosts;
mod identity;
mod imds;
mod imds_rehearsal;
pub mod imds_server;
mod instance_dir;
mod keepalive;
mod life;
mod lifecycle;
mod live_files;
mod log_file;
pub mod loki;
mod machine_cloud;
mod machine_facts;
mod metrics;
mod notify;
mod output_capture;
mod packages;
mod process_group;
mod profile;
mod refusal_log;
mod services;
mod spawner;
mod state;
mod supervisor;
mod time;
mod tls;
mod tunnel;
mod versions;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flotilla_spec::bootstrap::AgentBootstrap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

pub use agent_log::LogFilter;
pub use components::ComponentDeath;
pub use error::AgentError;
pub use fetch::{FetchError, FetchFuture, Fetcher, Fetchers, LocalFileFetcher};
pub use machine_cloud::{
    AttachedVolume, ClaimedVolume, CloudError, CloudFuture, MachineCloud, MachineFacts,
    Notification, PreviousRecord, RecordChange, RecordHold, Release, VolumeClaim,
};

use crate::failpoint::Failpoints;
use crate::life::Life;
use crate::refusal_log::RefusalLog;

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
            ending = handle.death_or_expiry() => match ending {
                Ok(death) => Some(death),
                Err(reason) => {
                tracing::warn!("{reason}");
                let power_off = handle.life().power_off_command();
                handle.shutdown().await?;
                power_off_machine(&power_off);
                return Ok(());
                }
            },
        };
        let Some(death) = death else {
            return handle.shutdown().await;
        };
        handle.life().log().event(&format!(
            "{death}: stopping the agent, which exits with an error so that it is restarted"
        ));
        handle.shutdown().await?;
        Err(AgentError::ComponentDied(death))
    })
}

/// Runs the bootstrap's `power_off` command, once everything stopped; without one the agent
/// only exits. A failure is logged: there is nothing left to fall back to.
fn power_off_machine(command: &[String]) {
    let Some((program, args)) = command.split_first() else {
        tracing::info!("keepalive: no power-off command here; the agent exits");
        return;
    };
    match std::process::Command::new(program).args(args).status() {
        Ok(status) if status.success() => tracing::info!("keepalive: powering off ({command:?})"),
        Ok(status) => tracing::error!("keepalive: {command:?} failed: {status}"),
        Err(error) => tracing::error!("keepalive: could not run {command:?}: {error}"),
    }
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
    let (life, deaths) = life::start(bootstrap, fetchers, failpoints).await?;
    Ok(AgentHandle { life: Some(life), deaths })
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
    /// `None` once shut down.
    life: Option<Life>,
    deaths: tokio::sync::mpsc::UnboundedReceiver<ComponentDeath>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("AgentHandle");
        if let Some(life) = &self.life {
            debug
                .field("dir", &life.dir().root())
                .field("api_address", &life.api_address)
                .field("metrics_address", &life.metrics_address);
        }
        debug.finish_non_exhaustive()
    }
}

impl AgentHandle {
    fn life(&self) -> &Life {
        self.life.as_ref().expect("an agent handle has its life until shutdown consumes it")
    }

    /// Where the mTLS API listens.
    pub fn api_address(&self) -> SocketAddr {
        self.life().api_address
    }

    /// Where the metrics listen.
    pub fn metrics_address(&self) -> SocketAddr {
        self.life().metrics_address
    }

    /// Resolves when a component died (`Ok`) or the installed version's keepalive ran out
    /// (`Err` with why; see `keepalive`). [`run`] stops the agent on either, and powers the
    /// machine off on the second.
    async fn death_or_expiry(&mut self) -> Result<ComponentDeath, String> {
        let life = self.life.as_mut().expect("an agent handle has its life until shutdown");
        tokio::select! {
            death = self.deaths.recv() => match death {
                Some(death) => Ok(death),
                None => std::future::pending().await,
            },
            reason = life.keepalive_expired() => Err(reason),
        }
    }

    /// Resolves when a component of the agent has died (see [`ComponentDeath`]); never while
    /// all is well. [`run`] then shuts the agent down and exits with an error.
    pub async fn component_death(&mut self) -> ComponentDeath {
        match self.deaths.recv().await {
            Some(death) => death,
            // Every component holds a sender, and so do the components this handle keeps.
            None => std::future::pending().await,
        }
    }

    /// Runs the `stopping` hooks, stops serving, abandons a rollout under way (the state file
    /// still names the version before it), stops the binary (SIGTERM, SIGKILL after the stop
    /// grace period) and releases the instance directory: the components stopped in reverse
    /// order (see `life`). When the supervisor has died, what is left of the binary's process
    /// group is killed instead.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        if let Some(life) = self.life.take() {
            life.stop().await;
        }
        Ok(())
    }
}
