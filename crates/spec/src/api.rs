//! The agent's API: every request the agent accepts is one variant of [`Request`].
//!
//! The agent serves it over HTTPS with mutual TLS; this module only maps requests to and from
//! HTTP method, path, query and body, so the server and the CLI's client share one definition.
//!
//! | request | HTTP | allowed |
//! |---|---|---|
//! | [`Request::Status`] | `GET /v1/status` | always |
//! | [`Request::Logs`] | `GET /v1/logs?lines=N&follow=BOOL` | always (empty before the first version) |
//! | [`Request::WaitRollout`] | `GET /v1/rollouts/<version>?timeout_ms=N` | always |
//! | [`Request::ApplyManifest`] | `PUT /v1/manifest` | when no rollout to another version is under way |
//! | [`Request::Restart`] | `POST /v1/restart` | when a version is installed and no rollout is under way |
//! | [`Request::Stop`] | `POST /v1/stop` | when no rollout is under way |
//! | [`Request::Keepalive`] | `POST /v1/keepalive` | always |
//! | [`Request::Drain`] | `POST /v1/drain` | when no rollout is under way |
//! | [`Request::Profile`] | `POST /v1/profile?duration_ms=N&frequency=F` | when the binary runs and no other profile is being recorded |
//! | [`Request::OpenTunnel`] | `POST /v1/tunnel/<port>` with `Upgrade: flotilla-tunnel` | for the telemetry ports of [`TUNNEL_PORTS`] only |
//!
//! Every request the agent answers counts as word from the deployment for the installed
//! version's `keepalive`; [`Request::Keepalive`] exists for a cron job that says nothing else.

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// Lines of log `logs` returns when the request does not say.
pub const DEFAULT_LOG_LINES: usize = 100;
/// The most lines one `logs` request may ask for.
pub const MAX_LOG_LINES: usize = 100_000;
/// The longest one `WaitRollout` request may wait.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The longest CPU profile one `Profile` request may record.
pub const MAX_PROFILE_MS: u64 = 300_000;
/// The sampling frequencies (Hz) a `Profile` request may ask for.
pub const PROFILE_FREQUENCIES: std::ops::RangeInclusive<u32> = 1..=10_000;

/// The protocol name of [`Request::OpenTunnel`]'s HTTP upgrade.
pub const TUNNEL_UPGRADE: &str = "flotilla-tunnel";

/// The ports [`Request::OpenTunnel`] may reach: the monitoring services' (the commonware
/// deployer's ports), and no other. Tempo's OTLP receiver (4318) is not among them: it takes
/// traces from binaries, it serves nothing to look at.
pub const TUNNEL_PORTS: &[(u16, &str)] = &[
    (3000, "grafana"),
    (9090, "prometheus"),
    (3100, "loki"),
    (4040, "pyroscope"),
    (3200, "tempo"),
];

/// The service [`TUNNEL_PORTS`] names for `port`, if a tunnel may reach it.
pub fn tunnel_service(port: u16) -> Option<&'static str> {
    TUNNEL_PORTS.iter().find(|(p, _)| *p == port).map(|(_, name)| *name)
}

/// A request to the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// The machine's identity, the binary's state and health, the installed version and the
    /// last rollout. Answers [`AgentStatus`].
    Status,
    /// The last `lines` lines of the binary's log; with `follow`, then every new line as it is
    /// written until the client disconnects. Answers `text/plain`.
    Logs { lines: usize, follow: bool },
    /// Wait until the rollout of `version` has finished (any outcome), or `timeout_ms` (at
    /// most [`MAX_WAIT_MS`]) has passed, then answer [`AgentStatus`]. Lets the CLI learn an
    /// outcome the moment it happens instead of polling `Status`.
    WaitRollout { version: String, timeout_ms: u64 },
    /// Install and start this version: download and verify the artifacts into a new version
    /// directory (the old one stays), stop the old binary, start the new one and hold it to the
    /// health deadline; on failure restore and restart the previous version. Answers
    /// [`ApplyResponse`] at once; the outcome appears in [`AgentStatus::rollout`].
    ApplyManifest(Box<Manifest>),
    /// Stop and start the installed version (restart count and backoff are reset).
    Restart,
    /// Stop the binary (SIGTERM to its process group, SIGKILL after the grace period) and keep
    /// it stopped until `Restart` or `ApplyManifest`.
    Stop,
    /// Nothing but word from the deployment: resets the keepalive. Answers [`KeepaliveReport`].
    Keepalive,
    /// The machine is leaving the deployment: run the lifecycle's `stopping` hooks, stop the
    /// binary as `Stop` does, and undo what the lifecycle holds (DNS records restored or
    /// removed, volumes unmounted and released). Answers [`AgentStatus`] when all of it is done;
    /// the agent keeps answering until the machine is removed.
    Drain,
    /// Record a CPU profile of the running binary (every thread, with call stacks) for
    /// `duration_ms` (at most [`MAX_PROFILE_MS`]) sampling at `frequency` Hz, and answer it as
    /// `perf script` text (`text/plain`), which the Firefox Profiler opens as it is.
    Profile { duration_ms: u64, frequency: u32 },
    /// A TCP stream to `port` of the machine's own address (the address the API listens on,
    /// or loopback when it listens on every address): the agent answers `101 Switching
    /// Protocols` ([`TUNNEL_UPGRADE`]) once it has connected, then carries raw bytes both ways
    /// until either side closes. Only the telemetry ports of [`TUNNEL_PORTS`] (Grafana,
    /// Prometheus, Loki, Pyroscope, Tempo) may be reached, so the mTLS API opens no other
    /// service of the machine. `flotilla monitoring` uses it, so Grafana is never open to the
    /// internet.
    OpenTunnel { port: u16 },
}

/// Where a machine's keepalive stands (see [`crate::manifest::Manifest::keepalive`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveReport {
    /// The installed version's keepalive in seconds; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_secs: Option<u64>,
    /// Unix seconds of the last word from the deployment (this request included).
    pub last_contact: u64,
}

/// What the agent answers to `ApplyManifest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ApplyResponse {
    /// A rollout to `version` started (or was already under way).
    Accepted { version: String },
    /// `version` is already installed and was healthy when last applied: nothing to do.
    Unchanged { version: String },
}

/// An error answer: HTTP status plus this JSON body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Why an HTTP request does not map to a [`Request`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("no such endpoint: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("bad query parameter `{name}`: {message}")]
    BadQuery { name: String, message: String },
    #[error("bad manifest: {0}")]
    BadManifest(String),
    #[error("a tunnel may reach only the telemetry ports ({}), not {port}", TUNNEL_PORTS.iter().map(|(p, n)| format!("{n} {p}")).collect::<Vec<_>>().join(", "))]
    PortNotAllowed { port: u16 },
}

impl Request {
    /// Maps an HTTP request (method, path, raw query, body) to a request.
    pub fn from_http(
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Request, RequestError> {
        match (method, path) {
            ("GET", "/v1/status") => Ok(Request::Status),
            ("GET", "/v1/logs") => {
                let mut lines = DEFAULT_LOG_LINES;
                let mut follow = false;
                for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let bad = |message: &str| RequestError::BadQuery {
                        name: name.to_owned(),
                        message: message.to_owned(),
                    };
                    match name {
                        "lines" => {
                            lines = value
                                .parse::<usize>()
                                .ok()
                                .filter(|n| *n <= MAX_LOG_LINES)
                                .ok_or_else(|| bad("expected a number from 0 to 100000"))?;
                        }
                        "follow" => {
                            follow = match value {
                                "true" | "1" | "" => true,
                                "false" | "0" => false,
                                _ => return Err(bad("expected true or false")),
                            }
                        }
                        _ => return Err(bad("unknown parameter")),
                    }
                }
                Ok(Request::Logs { lines, follow })
            }
            ("GET", path) if path.starts_with("/v1/rollouts/") => {
                let version = &path["/v1/rollouts/".len()..];
                if version.is_empty() || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(RequestError::NotFound {
                        method: method.to_owned(),
                        path: path.to_owned(),
                    });
                }
                let mut timeout_ms = MAX_WAIT_MS;
                for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    match name {
                        "timeout_ms" => {
                            timeout_ms = value
                                .parse::<u64>()
                                .ok()
                                .filter(|t| *t <= MAX_WAIT_MS)
                                .ok_or_else(|| RequestError::BadQuery {
                                    name: name.to_owned(),
                                    message: format!(
                                        "expected milliseconds from 0 to {MAX_WAIT_MS}"
                                    ),
                                })?;
                        }
                        _ => {
                            return Err(RequestError::BadQuery {
                                name: name.to_owned(),
                                message: "unknown parameter".to_owned(),
                            });
                        }
                    }
                }
                Ok(Request::WaitRollout { version: version.to_owned(), timeout_ms })
            }
            ("PUT", "/v1/manifest") => serde_json::from_slice::<Manifest>(body)
                .map(|m| Request::ApplyManifest(Box::new(m)))
                .map_err(|e| RequestError::BadManifest(e.to_string())),
            ("POST", "/v1/restart") => Ok(Request::Restart),
            ("POST", "/v1/stop") => Ok(Request::Stop),
            ("POST", "/v1/keepalive") => Ok(Request::Keepalive),
            ("POST", "/v1/drain") => Ok(Request::Drain),
            ("POST", "/v1/profile") => {
                let (mut duration_ms, mut frequency) = (None, None);
                for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let bad =
                        |message: String| RequestError::BadQuery { name: name.to_owned(), message };
                    match name {
                        "duration_ms" => {
                            duration_ms = Some(
                                value
                                    .parse::<u64>()
                                    .ok()
                                    .filter(|d| (1..=MAX_PROFILE_MS).contains(d))
                                    .ok_or_else(|| {
                                        bad(format!(
                                            "expected milliseconds from 1 to {MAX_PROFILE_MS}"
                                        ))
                                    })?,
                            );
                        }
                        "frequency" => {
                            frequency = Some(
                                value
                                    .parse::<u32>()
                                    .ok()
                                    .filter(|f| PROFILE_FREQUENCIES.contains(f))
                                    .ok_or_else(|| {
                                        bad(format!(
                                            "expected Hz from {} to {}",
                                            PROFILE_FREQUENCIES.start(),
                                            PROFILE_FREQUENCIES.end()
                                        ))
                                    })?,
                            );
                        }
                        _ => return Err(bad("unknown parameter".to_owned())),
                    }
                }
                let missing = |name: &str| RequestError::BadQuery {
                    name: name.to_owned(),
                    message: "required".to_owned(),
                };
                Ok(Request::Profile {
                    duration_ms: duration_ms.ok_or_else(|| missing("duration_ms"))?,
                    frequency: frequency.ok_or_else(|| missing("frequency"))?,
                })
            }
            ("POST", path) if path.starts_with("/v1/tunnel/") => {
                let port = &path["/v1/tunnel/".len()..];
                let not_found =
                    || RequestError::NotFound { method: method.to_owned(), path: path.to_owned() };
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(not_found());
                }
                let port = port.parse::<u16>().map_err(|_| not_found())?;
                match tunnel_service(port) {
                    Some(_) => Ok(Request::OpenTunnel { port }),
                    None => Err(RequestError::PortNotAllowed { port }),
                }
            }
            _ => Err(RequestError::NotFound { method: method.to_owned(), path: path.to_owned() }),
        }
    }

    /// The HTTP method, path with query, and JSON body for this request.
    pub fn to_http(&self) -> (&'static str, String, Option<Vec<u8>>) {
        match self {
            Request::Status => ("GET", "/v1/status".to_owned(), None),
            Request::Logs { lines, follow } => {
                ("GET", format!("/v1/logs?lines={lines}&follow={follow}"), None)
            }
            Request::WaitRollout { version, timeout_ms } => {
                ("GET", format!("/v1/rollouts/{version}?timeout_ms={timeout_ms}"), None)
            }
            Request::ApplyManifest(manifest) => (
                "PUT",
                "/v1/manifest".to_owned(),
                Some(serde_json::to_vec(manifest).expect("a manifest serializes to JSON")),
            ),
            Request::Restart => ("POST", "/v1/restart".to_owned(), None),
            Request::Stop => ("POST", "/v1/stop".to_owned(), None),
            Request::Keepalive => ("POST", "/v1/keepalive".to_owned(), None),
            Request::Drain => ("POST", "/v1/drain".to_owned(), None),
            Request::Profile { duration_ms, frequency } => (
                "POST",
                format!("/v1/profile?duration_ms={duration_ms}&frequency={frequency}"),
                None,
            ),
            Request::OpenTunnel { port } => ("POST", format!("/v1/tunnel/{port}"), None),
        }
    }
}

/// The binary's state as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BinaryState {
    /// No version installed yet (the agent waits for a manifest).
    Idle,
    /// Running, not yet healthy.
    Starting,
    Healthy,
    /// Was healthy, now fails its health check.
    Unhealthy,
    /// Exited repeatedly; waiting out the restart backoff.
    CrashLooping,
    /// Not running and not going to be restarted (stopped by request, or exited under
    /// `on-failure` with status 0).
    Stopped,
}

impl BinaryState {
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryState::Idle => "idle",
            BinaryState::Starting => "starting",
            BinaryState::Healthy => "healthy",
            BinaryState::Unhealthy => "unhealthy",
            BinaryState::CrashLooping => "crash-looping",
            BinaryState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for BinaryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the binary last ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Unix time, seconds.
    pub at: u64,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutPhase {
    /// Downloading and verifying artifacts.
    Downloading,
    /// The new version is running and held to the health deadline.
    Starting,
    /// The new version became healthy: done.
    Healthy,
    /// The new version failed; the previous version was restored and restarted.
    RolledBack,
    /// The new version failed and there was no previous version to restore (first install),
    /// or restoring it failed too.
    Failed,
}

impl RolloutPhase {
    /// Whether the rollout has finished, one way or the other.
    pub fn is_done(self) -> bool {
        matches!(self, RolloutPhase::Healthy | RolloutPhase::RolledBack | RolloutPhase::Failed)
    }
}

/// The last rollout the agent ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version being installed (for a hosts-only change, the installed one).
    pub version: String,
    /// The hosts.yaml digest being installed; absent from agents that predate hosts-only
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Whether only hosts.yaml changed (the binary and its config stayed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hosts_only: bool,
    /// The version installed before, if any.
    pub previous: Option<String>,
    pub phase: RolloutPhase,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The failed version's last log lines, when it failed.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Unix time, seconds.
    pub started_at: u64,
    pub finished_at: Option<u64>,
}

/// The answer to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub tag: String,
    pub region: String,
    pub public_ip: std::net::IpAddr,
    pub private_ip: std::net::IpAddr,
    /// The agent's own version (flotilla's crate version).
    pub agent_version: String,
    pub state: BinaryState,
    /// The binary's process id, while it runs.
    pub pid: Option<u32>,
    /// Restarts of the current version since it was installed or last restarted by request.
    pub restarts: u64,
    /// Installed version id.
    pub version: Option<String>,
    /// The digest (SHA-256) of the hosts.yaml the binary reads, apart from the version: a
    /// membership change alters it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Seconds the binary has been running, while it runs.
    pub uptime_secs: Option<u64>,
    /// Seconds the agent has been running.
    pub agent_uptime_secs: u64,
    pub last_exit: Option<ExitInfo>,
    /// The last failed health check, while not healthy.
    pub health_error: Option<String>,
    pub rollout: Option<Rollout>,
    /// What the agent did before the binary last started (the manifest's `boot`), when the
    /// installed or applied version has boot additions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootReport>,
    /// The machine's lifecycle (hooks run on events), when its manifest has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleReport>,
    /// The keepalive, when the installed version has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepaliveReport>,
    /// The services beside the binary (node exporter, Prometheus, ...), in the manifest's
    /// order, when the version has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
}

/// One service as its supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: BinaryState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Restarts since the version was installed or last restarted by request.
    pub restarts: u64,
    /// The last failed health check, while not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// How the last run ended, in words, when it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// What the lifecycle component saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleReport {
    /// The last event hooks ran on, when there has been one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LifecycleEventReport>,
    /// Each hook line's result, in the order they ran, for the last few events.
    #[serde(default)]
    pub hooks: Vec<HookResult>,
    /// Parts of the config this agent does not run here (volumes, records, notifications),
    /// each with the reason.
    #[serde(default)]
    pub not_applicable: Vec<String>,
    /// Whether the last IMDS poll was answered: `ok`, or what went wrong; absent without IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<String>,
    /// What went wrong with volumes, records, the hostname and notifications (the last few),
    /// rollback failures included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One event the lifecycle reacted to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEventReport {
    pub event: crate::fleetd::Event,
    /// Unix seconds.
    pub at: u64,
    /// What it was, e.g. `spot terminate at 2026-12-03T07:02:00Z`.
    pub detail: String,
}

/// How one hook line went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    pub event: crate::fleetd::Event,
    pub domain: String,
    /// The argv as run, macros expanded.
    pub argv: Vec<String>,
    pub outcome: HookOutcome,
    /// The exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Why it failed, or the end of its output.
    #[serde(default)]
    pub message: String,
    pub duration_ms: u64,
}

/// A hook line's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookOutcome {
    Succeeded,
    /// It exited with a code its `ec` does not accept, or by a signal.
    Failed,
    /// It overran its `timeout` and was killed.
    TimedOut,
    /// It could not be started (no such program, …).
    NotStarted,
}

/// The kinds of boot step, in the order the agent runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootStepKind {
    /// A data disk formatted (when empty) and mounted; the target is its mount point.
    Disk,
    File,
    Sysctl,
    Packages,
    Command,
}

impl BootStepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BootStepKind::Disk => "disk",
            BootStepKind::File => "file",
            BootStepKind::Sysctl => "sysctl",
            BootStepKind::Packages => "packages",
            BootStepKind::Command => "command",
        }
    }
}

/// How one boot step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOutcome {
    /// Done now: a file written, a setting applied, packages installed, a command that
    /// succeeded.
    Applied,
    /// Nothing to do: the file, setting or packages were already as asked, or the command
    /// already succeeded since the machine booted.
    Unchanged,
    /// Does not apply where the agent runs (kernel settings and packages on the local
    /// provider); `message` says why. Not a failure.
    NotApplicable,
    /// Failed; `message` says how, `output` holds what a command printed last.
    Failed,
}

impl BootOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BootOutcome::Applied => "applied",
            BootOutcome::Unchanged => "unchanged",
            BootOutcome::NotApplicable => "not-applicable",
            BootOutcome::Failed => "failed",
        }
    }
}

/// One step of the boot additions: a file, the kernel settings, the packages or a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStep {
    pub kind: BootStepKind,
    /// What the step is about: the file's path, a setting's key, the packages, a command's
    /// argv joined with spaces.
    pub target: String,
    pub outcome: BootOutcome,
    /// Whether a failure of this step keeps the binary from starting.
    pub critical: bool,
    /// How it went, in words ("exited with code 3", "not applicable on the local provider",
    /// "owner not applied: the agent does not run as root").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A command's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last bytes (at most 4 KiB) of what a command wrote to stdout and stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The boot additions of one version, as the agent last ran them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    /// The version whose boot additions these are.
    pub version: String,
    /// Whether a critical step failed, so the binary was not started.
    pub blocked: bool,
    pub steps: Vec<BootStep>,
    /// Unix time, seconds.
    pub started_at: u64,
    pub finished_at: Option<u64>,
}

impl BootReport {
    /// The first failed critical step, or else the first failed step.
    pub fn first_failure(&self) -> Option<&BootStep> {
        let failed = |step: &&BootStep| step.outcome == BootOutcome::Failed;
        self.steps
            .iter()
            .filter(failed)
            .find(|step| step.critical)
            .or_else(|| self.steps.iter().find(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips_through_http() {
        let manifest: Manifest = serde_json::from_str(
            r#"{"binary":{"url":"file:///b","sha256":"aa","size":1},
                "config":{"url":"file:///c","sha256":"bb","size":1},
                "hosts":{"url":"file:///h","sha256":"cc","size":1},
                "health_deadline":"30s"}"#,
        )
        .unwrap();
        for request in [
            Request::Status,
            Request::Logs { lines: 7, follow: true },
            Request::WaitRollout { version: "ab12".into(), timeout_ms: 2500 },
            Request::ApplyManifest(Box::new(manifest)),
            Request::Restart,
            Request::Stop,
            Request::Profile { duration_ms: 30_000, frequency: 99 },
            Request::Keepalive,
            Request::Drain,
            Request::OpenTunnel { port: 3000 },
            Request::OpenTunnel { port: 9090 },
        ] {
            let (method, path_and_query, body) = request.to_http();
            let (path, query) = match path_and_query.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path_and_query.as_str(), None),
            };
            let back =
                Request::from_http(method, path, query, body.as_deref().unwrap_or(b"")).unwrap();
            assert_eq!(back, request);
        }
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(matches!(
            Request::from_http("DELETE", "/v1/status", None, b""),
            Err(RequestError::NotFound { .. })
        ));
        assert_eq!(
            Request::from_http("GET", "/v1/logs", Some("lines=abc"), b"").unwrap_err().to_string(),
            "bad query parameter `lines`: expected a number from 0 to 100000"
        );
        assert!(matches!(
            Request::from_http("GET", "/v1/rollouts/../etc", None, b""),
            Err(RequestError::NotFound { .. })
        ));
        assert!(matches!(
            Request::from_http("GET", "/v1/rollouts/ab", Some("timeout_ms=999999"), b""),
            Err(RequestError::BadQuery { .. })
        ));
        assert!(matches!(
            Request::from_http("PUT", "/v1/manifest", None, b"{}"),
            Err(RequestError::BadManifest(_))
        ));
        // A tunnel reaches the telemetry ports only.
        for port in ["22", "7443", "9100", "9101", "4318", "65535", "0"] {
            let error = Request::from_http("POST", &format!("/v1/tunnel/{port}"), None, b"");
            assert_eq!(
                error,
                Err(RequestError::PortNotAllowed { port: port.parse().unwrap() }),
                "{port}"
            );
        }
        for path in ["/v1/tunnel/", "/v1/tunnel/+3000", "/v1/tunnel/65536", "/v1/tunnel/30a"] {
            assert!(
                matches!(
                    Request::from_http("POST", path, None, b""),
                    Err(RequestError::NotFound { .. })
                ),
                "{path}"
            );
        }
        assert_eq!(
            Request::from_http("POST", "/v1/tunnel/22", None, b"").unwrap_err().to_string(),
            "a tunnel may reach only the telemetry ports (grafana 3000, prometheus 9090, loki 3100, pyroscope 4040, tempo 3200), not 22"
        );
        assert_eq!(
            Request::from_http("POST", "/v1/profile", Some("duration_ms=300001&frequency=99"), b"")
                .unwrap_err()
                .to_string(),
            "bad query parameter `duration_ms`: expected milliseconds from 1 to 300000"
        );
        assert_eq!(
            Request::from_http("POST", "/v1/profile", Some("duration_ms=1000"), b"")
                .unwrap_err()
                .to_string(),
            "bad query parameter `frequency`: required"
        );
        assert_eq!(
            Request::from_http("GET", "/v1/logs", None, b"").unwrap(),
            Request::Logs { lines: DEFAULT_LOG_LINES, follow: false }
        );
    }
}
