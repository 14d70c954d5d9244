//! `status` and `logs`: what each machine runs and how it is doing, asked of its agent.

use std::io::Write;
use std::net::IpAddr;

use flotilla_spec::api::{AgentStatus, BootReport, KeepaliveReport, Rollout};
use futures_util::StreamExt;
use serde::Serialize;

use super::connect;
use crate::client::{AgentClient, ClientError};
use crate::error::CoreError;
use crate::provider::{Machine, Provider, ProviderError, Role};
use crate::state::{Deployment, Home};

/// One machine's status, as `status` prints it (`--output json` prints these fields).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusRow {
    pub name: String,
    /// The provider's id of the machine (an EC2 instance id; `local:<name>:<serial>` locally):
    /// a replacement under the same name has a new one.
    pub id: String,
    pub role: Role,
    pub region: String,
    /// The address hosts.yaml gives for the machine.
    pub ip: IpAddr,
    pub private_ip: IpAddr,
    /// The machine's state: the provider's (`pending`, `running`, …) or `unreachable` when it
    /// runs but its agent does not answer.
    pub state: String,
    /// The binary's state as its agent reports it: `idle`, `starting`, `healthy`,
    /// `unhealthy`, `crash-looping`, `stopped`.
    pub health: Option<String>,
    /// The installed version id (first 12 hex digits): the binary, its config and how it runs.
    pub version: Option<String>,
    /// The hosts.yaml the binary reads (first 12 hex digits of its SHA-256), apart from the
    /// version: a membership change alters it alone.
    pub hosts: Option<String>,
    pub restarts: Option<u64>,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    /// The last failed health check, while not healthy.
    pub health_error: Option<String>,
    /// The last rollout the agent ran.
    pub rollout: Option<Rollout>,
    /// What the agent did before the binary last started (the spec's `boot:`), step by step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootReport>,
    /// The lifecycle's last event and each hook's result, when the machine has a lifecycle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<flotilla_spec::api::LifecycleReport>,
    /// The keepalive (this status request was word from the deployment), when the machine has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepaliveReport>,
    /// The services beside the binary (node exporter; Prometheus on the monitoring machine),
    /// each with its state, pid and restarts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<flotilla_spec::api::ServiceStatus>,
    /// The alerts firing on the monitoring machine's Prometheus about this machine (those that
    /// name no machine are on the monitoring machine's row).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<super::alerts::FiringAlert>,
    /// Why the agent could not be asked.
    pub error: Option<String>,
    /// Why the machine is in its state, when the provider says (a spot reclaim, a failed boot,
    /// an agent that is not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// The instance type, zone and market (`spot` or `on-demand`) of a cloud machine.
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    pub market: Option<flotilla_capacity::Lifecycle>,
    /// Its price per hour, when known.
    pub usd_per_hour: Option<f64>,
    /// Where that price came from and when (`{source, as_of}` or `{source: built-in, date}`),
    /// as `plan` says it.
    pub price_source: Option<flotilla_capacity::PriceSource>,
    /// What `flotilla watch` does about the machine, when it does something: being replaced,
    /// or held back by a churn limit (and why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
}

impl StatusRow {
    fn new(machine: &Machine, answer: Result<AgentStatus, ClientError>) -> StatusRow {
        let mut row = StatusRow {
            name: machine.name.clone(),
            id: machine.id.clone(),
            role: machine.role,
            region: machine.region.clone(),
            ip: machine.public_ip,
            private_ip: machine.private_ip,
            state: machine.state.as_str().to_owned(),
            health: None,
            version: None,
            hosts: None,
            restarts: None,
            pid: None,
            uptime_secs: None,
            health_error: None,
            rollout: None,
            boot: None,
            lifecycle: None,
            keepalive: None,
            services: Vec::new(),
            alerts: Vec::new(),
            error: None,
            state_reason: machine.state_reason.clone(),
            instance_type: machine.placement.as_ref().map(|p| p.instance_type.clone()),
            zone: machine.placement.as_ref().map(|p| p.zone.clone()),
            market: machine.placement.as_ref().map(|p| p.market),
            usd_per_hour: machine
                .placement
                .as_ref()
                .and_then(|p| p.price.as_ref())
                .map(|price| price.usd_per_hour),
            price_source: machine
                .placement
                .as_ref()
                .and_then(|p| p.price.as_ref())
                .map(|price| price.source.clone()),
            watch: None,
        };
        match answer {
            Ok(status) => {
                row.health = Some(status.state.as_str().to_owned());
                row.version =
                    status.version.map(|v| flotilla_spec::manifest::short_version(&v).to_owned());
                row.hosts =
                    status.hosts.map(|h| flotilla_spec::manifest::short_version(&h).to_owned());
                row.restarts = Some(status.restarts);
                row.pid = status.pid;
                row.uptime_secs = status.uptime_secs;
                row.health_error = status.health_error;
                row.rollout = status.rollout;
                row.boot = status.boot;
                row.lifecycle = status.lifecycle;
                row.keepalive = status.keepalive;
                row.services = status.services;
            }
            Err(error) => {
                if machine.state == crate::provider::MachineState::Running {
                    row.state = "unreachable".to_owned();
                }
                row.error = Some(error.to_string());
            }
        }
        row
    }
}

/// What the machines of `rows` cost per hour in all, when any price is known.
pub fn price_per_hour(rows: &[StatusRow]) -> Option<f64> {
    let prices: Vec<f64> = rows.iter().filter_map(|row| row.usd_per_hour).collect();
    (!prices.is_empty()).then(|| (prices.iter().sum::<f64>() * 10_000.0).round() / 10_000.0)
}

/// Asks every machine's agent for its status, `concurrency` at a time, in machine order.
pub(super) async fn rows(
    client: &AgentClient,
    machines: &[Machine],
    concurrency: usize,
) -> Result<Vec<StatusRow>, CoreError> {
    let answers: Vec<StatusRow> = futures_util::stream::iter(
        machines
            .iter()
            .map(|machine| async { StatusRow::new(machine, client.status(&machine.name).await) }),
    )
    .buffered(concurrency.max(1))
    .collect()
    .await;
    Ok(answers)
}

/// The status of every machine of deployment `tag`.
pub async fn status<P: Provider>(
    home: &Home,
    tag: &str,
    concurrency: usize,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<Vec<StatusRow>, CoreError> {
    let deployment = home.open(tag)?;
    let provider = make_provider(&deployment)?;
    let machines = provider.machines().await?;
    if machines.is_empty() {
        return Ok(Vec::new());
    }
    let client = connect(&deployment, &machines)?;
    let mut rows = rows(&client, &machines, concurrency).await?;
    add_watch_notes(&deployment, &mut rows)?;
    add_alerts(&client, &mut rows).await;
    Ok(rows)
}

/// The alerts firing on the monitoring machine's Prometheus, on the rows they name, when its
/// Prometheus runs; nothing (and a line in the debug log) when it cannot be asked.
async fn add_alerts(client: &AgentClient, rows: &mut [StatusRow]) {
    use crate::monitoring::services::PROMETHEUS;
    let Some(monitoring) = rows.iter().find(|row| {
        row.role == Role::Monitoring
            && row.services.iter().any(|s| {
                s.name == PROMETHEUS && s.state == flotilla_spec::api::BinaryState::Healthy
            })
    }) else {
        return;
    };
    let monitoring = monitoring.name.clone();
    let alerts = match super::alerts::firing_alerts(client, &monitoring).await {
        Ok(alerts) => alerts,
        Err(error) => {
            tracing::debug!("could not ask Prometheus on {monitoring} for its alerts: {error}");
            return;
        }
    };
    for (name, alert) in alerts {
        let name = name.filter(|name| rows.iter().any(|row| &row.name == name));
        let name = name.unwrap_or_else(|| monitoring.clone());
        if let Some(row) = rows.iter_mut().find(|row| row.name == name) {
            row.alerts.push(alert);
        }
    }
}

/// What the deployment's `flotilla watch` last said it does (`watch-state.json`): each row's
/// `watch`, and a row for a machine that is gone (the provider no longer lists it) while watch
/// replaces it or holds its replacement back.
fn add_watch_notes(deployment: &Deployment, rows: &mut Vec<StatusRow>) -> Result<(), CoreError> {
    let Some(state) = deployment.read_json::<super::watch::WatchState>(super::watch::STATE_FILE)?
    else {
        return Ok(());
    };
    // A watch that stopped says nothing any more.
    if crate::state::unix_now().saturating_sub(state.at) > super::watch::STATE_FRESH_SECS {
        return Ok(());
    }
    let notes: Vec<(String, String)> =
        state
            .replacing
            .iter()
            .map(|name| (name.clone(), "being replaced by watch".to_owned()))
            .chain(state.held.iter().map(|(name, why)| {
                (name.clone(), format!("watch holds its replacement back: {why}"))
            }))
            .collect();
    for (name, note) in notes {
        match rows.iter_mut().find(|row| row.name == name) {
            Some(row) => row.watch = Some(note),
            None => rows.push(StatusRow::gone(&name, note)),
        }
    }
    Ok(())
}

impl StatusRow {
    /// A machine the provider no longer lists.
    fn gone(name: &str, watch: String) -> StatusRow {
        let nowhere = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        StatusRow {
            name: name.to_owned(),
            id: String::new(),
            role: Role::Binary,
            region: String::new(),
            ip: nowhere,
            private_ip: nowhere,
            state: "gone".to_owned(),
            health: None,
            version: None,
            hosts: None,
            restarts: None,
            pid: None,
            uptime_secs: None,
            health_error: None,
            rollout: None,
            boot: None,
            lifecycle: None,
            keepalive: None,
            services: Vec::new(),
            alerts: Vec::new(),
            error: None,
            state_reason: None,
            instance_type: None,
            zone: None,
            market: None,
            usd_per_hour: None,
            price_source: None,
            watch: Some(watch),
        }
    }
}

/// One machine's answer to `keepalive`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeepaliveRow {
    pub name: String,
    /// Where the keepalive stands now; absent when the agent could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepaliveReport>,
    /// Why the agent could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `keepalive`: word from the deployment to every binary machine's agent, `concurrency` at a
/// time, in machine order (for a cron job that keeps a fleet with `keepalive:` alive).
pub async fn keepalive<P: Provider>(
    home: &Home,
    tag: &str,
    concurrency: usize,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<Vec<KeepaliveRow>, CoreError> {
    let deployment = home.open(tag)?;
    let provider = make_provider(&deployment)?;
    let machines = provider.machines().await?;
    let machines: Vec<Machine> =
        machines.into_iter().filter(|machine| machine.role == Role::Binary).collect();
    if machines.is_empty() {
        return Ok(Vec::new());
    }
    let client = connect(&deployment, &machines)?;
    let rows = futures_util::stream::iter(machines.iter().map(|machine| {
        let client = &client;
        async move {
            match client.keepalive(&machine.name).await {
                Ok(report) => KeepaliveRow {
                    name: machine.name.clone(),
                    keepalive: Some(report),
                    error: None,
                },
                Err(error) => KeepaliveRow {
                    name: machine.name.clone(),
                    keepalive: None,
                    error: Some(error.to_string()),
                },
            }
        }
    }))
    .buffered(concurrency.max(1))
    .collect()
    .await;
    Ok(rows)
}

/// Machine `name` of `machines` (deployment `tag`), or an error listing the names there are.
fn machine_named<'a>(
    machines: &'a [Machine],
    name: &str,
    tag: &str,
) -> Result<&'a Machine, CoreError> {
    machines.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
        CoreError::Refused(format!(
            "no machine named `{name}` in deployment `{tag}`; its machines are: {}",
            known.join(", ")
        ))
    })
}

/// Writes machine `name`'s log to `out`: the last `lines` lines, then with `follow` every new
/// line until the agent closes the stream.
pub async fn logs<P: Provider>(
    home: &Home,
    tag: &str,
    name: &str,
    lines: usize,
    follow: bool,
    out: &mut (dyn Write + Send),
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<(), CoreError> {
    let deployment = home.open(tag)?;
    let provider = make_provider(&deployment)?;
    let machines = provider.machines().await?;
    let machine = machine_named(&machines, name, tag)?;
    let client = connect(&deployment, std::slice::from_ref(machine))?;
    let mut stream = client.logs(name, lines, follow).await?;
    while let Some(chunk) = stream.next_chunk().await? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}

/// A CPU profile of machine `name`'s binary (see the agent's `profile`), as `perf script` text.
pub async fn profile<P: Provider>(
    home: &Home,
    tag: &str,
    name: &str,
    duration: std::time::Duration,
    frequency: u32,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<Vec<u8>, CoreError> {
    let max = std::time::Duration::from_millis(flotilla_spec::api::MAX_PROFILE_MS);
    if duration.is_zero() || duration > max {
        return Err(CoreError::Refused(format!(
            "--duration must be longer than 0s and at most {}",
            humantime::format_duration(max)
        )));
    }
    if !flotilla_spec::api::PROFILE_FREQUENCIES.contains(&frequency) {
        return Err(CoreError::Refused(format!(
            "--frequency must be from {} to {} samples per second",
            flotilla_spec::api::PROFILE_FREQUENCIES.start(),
            flotilla_spec::api::PROFILE_FREQUENCIES.end()
        )));
    }
    let deployment = home.open(tag)?;
    let provider = make_provider(&deployment)?;
    let machines = provider.machines().await?;
    let machine = machine_named(&machines, name, tag)?;
    let client = connect(&deployment, std::slice::from_ref(machine))?;
    Ok(client.profile(name, duration, frequency).await?)
}
