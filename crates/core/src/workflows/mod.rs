//! The commands' workflows, one file each, generic over the [`Provider`].
//!
//! They share the steps in this file: checking the files a spec names, issuing identities,
//! publishing artifacts and building each machine's manifest, and waiting for agents.

mod alerts;
mod capture;
mod create;
mod destroy;
pub mod lifecycle;
mod list;
mod monitoring;
mod plan;
mod status;
mod update;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use alerts::FiringAlert;
pub use capture::{CaptureKind, CaptureReport, CaptureRequest, capture};
pub use create::{CreateRequest, create};
pub use destroy::{DestroyOutcome, destroy};
use flotilla_spec::diagnostic::{Diagnostic, Severity, SpecErrors};
use flotilla_spec::fleet::resolve_path;
use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::{Artifact, FleetSpec, Manifest, SpecDocument};
use futures_util::StreamExt;
pub use lifecycle::unsupported_keys as unsupported_lifecycle_keys;
pub use list::list;
pub use monitoring::{BoundForward, Forward, monitoring};
pub use plan::{
    GroupEstimate, HOURS_PER_MONTH, PlacementEstimate, PlanReport, PoolEstimate, estimate, plan,
    resolve, summary as plan_summary,
};
pub use status::{KeepaliveRow, StatusRow, keepalive, logs, profile, status};
use tokio::time::Instant;
pub use update::{MembershipChange, UpdateOutcome, UpdateRequest, update};
pub use watch::{WatchEvent, WatchRequest, saved_spec, watch};

use crate::artifacts::{HostEntry, hash_file, render_hosts_yaml};
use crate::client::AgentClient;
use crate::error::{CoreError, MachineFailure};
use crate::pki::CertificateAuthority;
use crate::progress::Progress;
use crate::provider::{LocalArtifact, Machine, MachineState, Provider, Role};
use crate::rollout::PollSchedule;
use crate::state::Deployment;

/// Requests in flight at once when a command talks to many agents.
pub const DEFAULT_CONCURRENCY: usize = 128;
/// Artifacts uploaded at once.
const PUBLISH_CONCURRENCY: usize = 8;

/// Checks what the spec names on this machine: the files exist and the binary is executable.
/// Every problem is reported, at the line of the field that names the file.
pub fn check_files(document: &SpecDocument, cwd: &Path) -> Result<(), CoreError> {
    let spec = &document.spec;
    let mut diagnostics = Vec::new();
    let mut check = |field: String, path: &str, executable: bool| {
        let resolved = resolve_path(cwd, path);
        let problem = match fs_err::metadata(&resolved) {
            Err(_) => Some((
                format!("{} does not exist", resolved.display()),
                "build it, or fix the path (relative paths start at the current directory, as in the deployer)",
            )),
            Ok(meta) if !meta.is_file() => {
                Some((format!("{} is not a file", resolved.display()), "point it at a file"))
            }
            Ok(meta) if executable && meta.permissions().mode() & 0o111 == 0 => Some((
                format!("{} is not executable", resolved.display()),
                "chmod +x it, or point at the built binary",
            )),
            Ok(_) => None,
        };
        if let Some((message, help)) = problem {
            diagnostics.push(document.diagnostic(Severity::Error, &field, message).with_help(help));
        }
    };
    check("monitoring.dashboard".to_owned(), &spec.monitoring.dashboard, false);
    for (index, instance) in spec.instances.iter().enumerate() {
        check(format!("instances[{index}].binary"), &instance.binary, true);
        check(format!("instances[{index}].config"), &instance.config, false);
    }
    // A `lifecycle` named by path is an ec2fleetd config of its own: its errors are reported in
    // that file, with its lines, after the spec's own.
    let mut other_files = Vec::new();
    for (index, instance) in spec.instances.iter().enumerate() {
        let Some(flotilla_spec::fleetd::Lifecycle::File(path)) = &instance.lifecycle else {
            continue;
        };
        let resolved = resolve_path(cwd, path);
        if let Err(errors) = flotilla_spec::fleetd::load_fleetd_config(&resolved) {
            diagnostics.push(
                document
                    .diagnostic(
                        Severity::Error,
                        &format!("instances[{index}].lifecycle"),
                        format!("the ec2fleetd config {} is not valid (below)", resolved.display()),
                    )
                    .with_help("fix the config, or check it with `flotilla fleetd check-config`"),
            );
            other_files.extend(errors.diagnostics);
        }
    }
    if diagnostics.is_empty() {
        return Ok(());
    }
    diagnostics.extend(document.warnings.iter().cloned());
    diagnostics.sort_by_key(|d| d.location);
    diagnostics.extend(other_files);
    Err(CoreError::Invalid(SpecErrors { diagnostics }))
}

/// Issues each machine's identity and installs it (concurrently, `concurrency` at a time).
async fn install_identities<P: Provider>(
    provider: &P,
    ca: &CertificateAuthority,
    tag: &str,
    machines: &[Machine],
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<(), CoreError> {
    let stage = progress.stage("issuing identities", machines.len() as u64);
    let mut installs = futures_util::stream::iter(machines.iter().map(|machine| async move {
        let addresses: Vec<IpAddr> = vec![machine.public_ip, machine.private_ip];
        let issued = ca.issue_agent(&machine.name, tag, &addresses)?;
        let bundle = IdentityBundle {
            name: machine.name.clone(),
            tag: tag.to_owned(),
            region: machine.region.clone(),
            public_ip: machine.public_ip,
            private_ip: machine.private_ip,
            ca_cert: ca.cert_pem().to_owned(),
            cert: issued.cert_pem,
            key: issued.key_pem,
        };
        provider.install_identity(machine, &bundle).await?;
        Ok::<(), CoreError>(())
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some(result) = installs.next().await {
        result?;
        stage.advance(1);
    }
    Ok(())
}

/// How often the provider is asked whether machines whose agents have not answered yet still
/// exist, and how many sightings in a row of a machine that is down make it gone.
const MACHINE_STATE_POLL: Duration = Duration::from_secs(5);
const DOWN_SIGHTINGS: u32 = 2;

/// Machines the provider reports down (stopped, shutting down, terminated) while their agents
/// are waited for: a machine that died before its agent answered is reported at once, with
/// the provider's reason, instead of being waited for until the deadline.
#[derive(Debug, Default)]
struct Departures {
    /// Name → (sightings in a row, what the provider said).
    down: std::sync::Mutex<HashMap<String, (u32, String)>>,
    /// Agents being waited for now: the provider is asked only while there are some.
    waiting: std::sync::atomic::AtomicUsize,
}

impl Departures {
    fn record(&self, machines: &[Machine]) {
        let mut down = self.down.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut seen = HashMap::new();
        for machine in machines {
            if !matches!(
                machine.state,
                MachineState::Stopped | MachineState::ShuttingDown | MachineState::Terminated
            ) {
                continue;
            }
            let sightings = down.get(&machine.name).map_or(0, |(count, _)| *count) + 1;
            let mut what = format!("the machine is {}", machine.state.as_str());
            if let Some(reason) = &machine.state_reason {
                what.push_str(&format!(": {reason}"));
            }
            seen.insert(machine.name.clone(), (sightings, what));
        }
        *down = seen;
    }

    /// Why `name` is gone, once it was seen down often enough.
    fn gone(&self, name: &str) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        down.get(name).filter(|(count, _)| *count >= DOWN_SIGHTINGS).map(|(_, what)| what.clone())
    }

    /// Asks `provider` for its machines every [`MACHINE_STATE_POLL`], forever (the caller
    /// drops it when the agents have answered).
    async fn watch<P: Provider>(&self, provider: &P) {
        loop {
            tokio::time::sleep(MACHINE_STATE_POLL).await;
            if self.waiting.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                continue;
            }
            match provider.machines().await {
                Ok(machines) => self.record(&machines),
                Err(error) => tracing::debug!("asking for the machines' states: {error}"),
            }
        }
    }
}

/// Waits until `machine`'s agent answers `Status`, polling on a [`PollSchedule`] until
/// `deadline` (`timeout` after the wait began, named in the failure). Gives up at once on a
/// failure no wait mends ([`crate::client::ClientError::is_permanent`]) and on a machine the
/// provider reports gone. An agent that never answered a machine that still runs is reported
/// with the machine's id and what the provider can tell about it
/// ([`Provider::explain_silent_agent`]: on AWS its image, and that flotilla's boot needs
/// cloud-init and systemd there).
async fn wait_for_agent<P: Provider>(
    provider: &P,
    client: &AgentClient,
    machine: &Machine,
    deadline: Instant,
    timeout: Duration,
    departures: &Departures,
) -> Result<(), MachineFailure> {
    use std::sync::atomic::Ordering;
    let name = machine.name.as_str();
    let mut schedule = PollSchedule::default();
    departures.waiting.fetch_add(1, Ordering::Relaxed);
    let error = loop {
        match client.status(name).await {
            Ok(_) => {
                departures.waiting.fetch_sub(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(error) if error.is_permanent() => break error.to_string(),
            Err(error) if Instant::now() >= deadline => {
                let mut reason = format!(
                    "the agent of machine {} did not answer within {}: {error}",
                    machine.id,
                    humantime::format_duration(timeout)
                );
                if let Some(explanation) = provider.explain_silent_agent(machine).await {
                    reason.push_str(&format!("; {explanation}"));
                }
                break reason;
            }
            Err(error) => {
                if let Some(gone) = departures.gone(name) {
                    break format!("{gone}; its agent never answered ({error})");
                }
                tokio::time::sleep(schedule.next_delay()).await;
            }
        }
    };
    departures.waiting.fetch_sub(1, Ordering::Relaxed);
    Err(MachineFailure {
        name: name.to_owned(),
        reason: error,
        log_tail: Vec::new(),
        rolled_back: false,
    })
}

/// The spec's files (binaries and configs), each hashed once and published once per digest.
struct PublishedFiles {
    /// Every file by its resolved path.
    by_path: HashMap<PathBuf, LocalArtifact>,
    /// The URL agents fetch each digest from.
    urls: HashMap<String, String>,
}

impl PublishedFiles {
    fn artifact(&self, artifact: &LocalArtifact) -> Artifact {
        Artifact {
            url: self.urls[&artifact.sha256].clone(),
            sha256: artifact.sha256.clone(),
            size: artifact.size,
        }
    }
}

/// Hashes and publishes every binary and config the spec names. It needs no machine, so
/// `create` runs it while instances launch.
async fn publish_files<P: Provider>(
    provider: &P,
    spec: &FleetSpec,
    cwd: &Path,
    progress: &dyn Progress,
) -> Result<PublishedFiles, CoreError> {
    // Hash each distinct file once (many replicas share one binary).
    let mut paths: Vec<PathBuf> = Vec::new();
    for instance in &spec.instances {
        for path in [&instance.binary, &instance.config] {
            let resolved = resolve_path(cwd, path);
            if !paths.contains(&resolved) {
                paths.push(resolved);
            }
        }
    }
    let hashed = tokio::task::spawn_blocking(move || {
        paths.into_iter().map(|p| hash_file(&p)).collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| CoreError::Io(format!("hashing artifacts: {e}")))??;
    let by_path: HashMap<PathBuf, LocalArtifact> =
        hashed.into_iter().map(|a| (a.path.clone(), a)).collect();
    let mut by_digest: BTreeMap<&str, &LocalArtifact> = BTreeMap::new();
    for artifact in by_path.values() {
        by_digest.entry(artifact.sha256.as_str()).or_insert(artifact);
    }
    // Publish each distinct digest once, several at a time.
    let stage = progress.stage("publishing artifacts", by_digest.len() as u64);
    let mut urls: HashMap<String, String> = HashMap::new();
    let mut uploads =
        futures_util::stream::iter(by_digest.into_values().map(|artifact| async move {
            provider.publish(artifact).await.map(|url| (artifact.sha256.clone(), url))
        }))
        .buffer_unordered(PUBLISH_CONCURRENCY);
    while let Some(result) = uploads.next().await {
        let (digest, url) = result?;
        urls.insert(digest, url);
        stage.advance(1);
    }
    drop(uploads);
    Ok(PublishedFiles { by_path, urls })
}

/// The manifests of the machines: writes and publishes hosts.yaml (it names every machine's
/// address), then pairs it with the published files of each machine's instance; node exporter
/// runs beside each binary, and the monitoring machine runs Prometheus (with targets labelled
/// by each machine's new version) and node exporter, where the provider's machines have them
/// (see [`crate::monitoring::services`]; what is missing is said once, and left out).
async fn build_manifests<P: Provider>(
    provider: &P,
    deployment: &Deployment,
    spec: &FleetSpec,
    cwd: &Path,
    machines: &[Machine],
    files: &PublishedFiles,
    progress: &dyn Progress,
) -> Result<BTreeMap<String, Manifest>, CoreError> {
    let monitoring = monitoring_machine(machines)?;
    let hosts = publish_hosts(provider, deployment, machines, progress).await?;

    let tools = provider.monitoring_tools(spec);
    for missing in tools.missing() {
        progress.notice(&format!("monitoring: {missing}"));
    }
    let node_exporter = crate::monitoring::services::node_exporter(&tools);
    let mut manifests = BTreeMap::new();
    let nodes = spec.nodes();
    for machine in machines.iter().filter(|m| m.role == Role::Binary) {
        let Some((_, index)) = nodes.iter().find(|(name, _)| *name == machine.name) else {
            continue;
        };
        let instance = &spec.instances[*index];
        let binary = &files.by_path[&resolve_path(cwd, &instance.binary)];
        let config = &files.by_path[&resolve_path(cwd, &instance.config)];
        manifests.insert(
            machine.name.clone(),
            Manifest {
                binary: Some(files.artifact(binary)),
                config: Some(files.artifact(config)),
                hosts: hosts.clone(),
                args: instance.args.clone(),
                env: instance.env.clone(),
                health: instance.health.clone(),
                restart: instance.restart,
                health_deadline: spec.update.health_deadline(),
                boot: spec.settings_of(*index).boot,
                lifecycle: lifecycle::manifest_lifecycle(instance, &machine.name, cwd)?,
                keepalive: instance.keepalive,
                on_hosts_change: instance.on_hosts_change,
                services: node_exporter.iter().cloned().collect(),
                disks: manifest_disks(instance),
            },
        );
    }
    if let Some(manifest) = monitoring_manifest(
        provider,
        deployment,
        spec,
        machines,
        &manifests,
        &tools,
        hosts,
        node_exporter,
    )
    .await?
    {
        manifests.insert(monitoring.name.clone(), manifest);
    }
    Ok(manifests)
}

/// The monitoring machine among `machines`.
fn monitoring_machine(machines: &[Machine]) -> Result<&Machine, CoreError> {
    machines
        .iter()
        .find(|m| m.role == Role::Monitoring)
        .ok_or_else(|| CoreError::Refused("the provider reported no monitoring machine".into()))
}

/// Writes hosts.yaml of `machines` (every binary machine's public address, and the monitoring
/// machine's) into the deployment's directory and publishes it.
async fn publish_hosts<P: Provider>(
    provider: &P,
    deployment: &Deployment,
    machines: &[Machine],
    progress: &dyn Progress,
) -> Result<Artifact, CoreError> {
    let monitoring = monitoring_machine(machines)?;
    let hosts: Vec<HostEntry> = machines
        .iter()
        .filter(|m| m.role == Role::Binary)
        .map(|m| HostEntry { name: m.name.clone(), region: m.region.clone(), ip: m.public_ip })
        .collect();
    let hosts_yaml = render_hosts_yaml(monitoring.public_ip, monitoring.private_ip, &hosts);
    deployment.write_file("hosts.yaml", hosts_yaml.as_bytes())?;
    let hosts_artifact = hash_file(&deployment.dir().join("hosts.yaml"))?;
    let stage = progress.stage("publishing hosts.yaml", 1);
    let hosts = Artifact {
        url: provider.publish(&hosts_artifact).await?,
        sha256: hosts_artifact.sha256,
        size: hosts_artifact.size,
    };
    stage.advance(1);
    Ok(hosts)
}

/// The disks of `instance` the agent mounts: those with a mount point, in device order.
fn manifest_disks(
    instance: &flotilla_spec::InstanceSpec,
) -> Vec<flotilla_spec::manifest::ManifestDisk> {
    instance
        .disks
        .iter()
        .filter_map(|(device, disk)| {
            Some(flotilla_spec::manifest::ManifestDisk {
                device: device.clone(),
                mount: disk.mount.clone()?,
                filesystem: disk.filesystem.unwrap_or_default(),
            })
        })
        .collect()
}

/// The monitoring machine's manifest: no binary; Prometheus with flotilla's configuration,
/// rules and every machine's targets, and node exporter, as far as the provider's machines
/// have them. `None` when they have neither.
#[expect(
    clippy::too_many_arguments,
    reason = "what the monitoring machine's manifest is made of, each named"
)]
async fn monitoring_manifest<P: Provider>(
    provider: &P,
    deployment: &Deployment,
    spec: &FleetSpec,
    machines: &[Machine],
    manifests: &BTreeMap<String, Manifest>,
    tools: &crate::monitoring::services::MonitoringTools,
    hosts: Artifact,
    node_exporter: Option<flotilla_spec::manifest::ServiceManifest>,
) -> Result<Option<Manifest>, CoreError> {
    use crate::monitoring::services::{self, PROMETHEUS_CONFIG_FILE, RULES_FILE};
    use crate::monitoring::{MonitoredMachine, prometheus, rules};
    let mut services = Vec::new();
    if !matches!(tools.prometheus, services::Tool::Missing(_)) {
        let monitored: Vec<MonitoredMachine> = machines
            .iter()
            .map(|machine| MonitoredMachine {
                name: machine.name.clone(),
                region: machine.region.clone(),
                instance_type: machine
                    .placement
                    .as_ref()
                    .map_or_else(|| "local".to_owned(), |p| p.instance_type.clone()),
                market: machine
                    .placement
                    .as_ref()
                    .map_or_else(|| "local".to_owned(), |p| p.market.as_str().to_owned()),
                version: manifests
                    .get(&machine.name)
                    .map(|m| flotilla_spec::manifest::short_version(&m.version()).to_owned()),
                address: provider.scrape_address(machine),
                runs_binary: machine.role == Role::Binary,
            })
            .collect();
        let settings = prometheus::PrometheusSettings {
            deployment: spec.tag.clone(),
            targets_dir: services::TARGETS_FROM_CONFIG.to_owned(),
            rule_files: vec![RULES_FILE.to_owned()],
            scrape_interval: services::SCRAPE_INTERVAL,
        };
        let config =
            prometheus::render_prometheus_config(&prometheus::prometheus_config(&settings));
        let rules = rules::render_rules(&rules::flotilla_rules());
        let mut files = BTreeMap::new();
        for (name, text) in [(PROMETHEUS_CONFIG_FILE, config), (RULES_FILE, rules)] {
            files.insert(name.to_owned(), publish_text(provider, deployment, name, &text).await?);
        }
        let mut targets = BTreeMap::new();
        let ports = prometheus::Ports::default();
        for (name, text) in prometheus::targets_files(&spec.tag, &monitored, ports) {
            targets.insert(name.to_owned(), publish_text(provider, deployment, name, &text).await?);
        }
        services.extend(services::prometheus(tools, files, targets));
    }
    services.extend(node_exporter);
    if services.is_empty() {
        return Ok(None);
    }
    Ok(Some(Manifest {
        binary: None,
        config: None,
        hosts,
        on_hosts_change: flotilla_spec::fleet::OnHostsChange::None,
        args: Vec::new(),
        env: BTreeMap::new(),
        health: flotilla_spec::HealthCheck::None,
        restart: flotilla_spec::RestartSpec::default(),
        health_deadline: spec.update.health_deadline(),
        boot: Default::default(),
        lifecycle: None,
        keepalive: None,
        services,
        disks: Vec::new(),
    }))
}

/// Writes `text` into the deployment's directory as `monitoring-<name>` and publishes it.
async fn publish_text<P: Provider>(
    provider: &P,
    deployment: &Deployment,
    name: &str,
    text: &str,
) -> Result<Artifact, CoreError> {
    let file_name = format!("monitoring-{name}");
    deployment.write_file(&file_name, text.as_bytes())?;
    let local = hash_file(&deployment.dir().join(&file_name))?;
    Ok(Artifact { url: provider.publish(&local).await?, sha256: local.sha256, size: local.size })
}

/// Builds a client for the deployment's agents.
fn connect(deployment: &Deployment, machines: &[Machine]) -> Result<AgentClient, CoreError> {
    let (ca_pem, identity) = deployment.client_credentials()?;
    Ok(AgentClient::new(deployment.tag(), &ca_pem, &identity, machines)?)
}

/// The manifests machines run, as recorded after the last successful rollout of each.
const MANIFESTS_FILE: &str = "manifests.json";

fn saved_manifests(deployment: &Deployment) -> Result<BTreeMap<String, Manifest>, CoreError> {
    Ok(deployment.read_json(MANIFESTS_FILE)?.unwrap_or_default())
}

/// The machine (the provider's id) each recorded manifest runs on, beside [`MANIFESTS_FILE`]:
/// a name whose machine changed since was launched anew by something other than the command
/// that recorded it (a launch that relaunched every missing name while replacing another), so
/// it is a new machine, however its manifest is recorded.
const MACHINE_IDS_FILE: &str = "machine-ids.json";

fn saved_machine_ids(deployment: &Deployment) -> Result<BTreeMap<String, String>, CoreError> {
    Ok(deployment.read_json(MACHINE_IDS_FILE)?.unwrap_or_default())
}

/// Records the machines of `machines` whose manifests are recorded.
fn save_machine_ids(
    deployment: &Deployment,
    machines: &[Machine],
    recorded: &BTreeMap<String, Manifest>,
) -> Result<(), CoreError> {
    let ids: BTreeMap<&str, &str> = machines
        .iter()
        .filter(|m| recorded.contains_key(&m.name))
        .map(|m| (m.name.as_str(), m.id.as_str()))
        .collect();
    deployment.write_json(MACHINE_IDS_FILE, &ids)?;
    Ok(())
}

/// Keeps the spec of the last successful create or update, and the directory its relative
/// paths start from, for commands that name the deployment by its tag (`watch --tag`).
fn save_spec(
    deployment: &Deployment,
    document: &SpecDocument,
    cwd: &Path,
) -> Result<(), CoreError> {
    let source = fs_err::read(&document.path)?;
    deployment.write_file("spec.yaml", &source)?;
    deployment.write_file(SPEC_DIR_FILE, cwd.as_os_str().as_encoded_bytes())?;
    Ok(())
}

/// The directory the saved spec's relative paths start from.
const SPEC_DIR_FILE: &str = "spec-dir";

/// Diagnostics of a spec that was refused for a reason outside the file's syntax.
pub fn spec_refusal(
    document: &SpecDocument,
    field: &str,
    message: String,
    help: &str,
) -> CoreError {
    let diagnostic: Diagnostic =
        document.diagnostic(Severity::Error, field, message).with_help(help.to_owned());
    CoreError::Invalid(SpecErrors { diagnostics: vec![diagnostic] })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;

    fn machine(name: &str, state: MachineState, reason: Option<&str>) -> Machine {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Machine {
            name: name.to_owned(),
            role: Role::Binary,
            region: "r".to_owned(),
            id: name.to_owned(),
            public_ip: ip,
            private_ip: ip,
            agent_endpoint: SocketAddr::new(ip, 7443),
            state,
            state_reason: reason.map(str::to_owned),
            placement: None,
        }
    }

    #[test]
    fn a_machine_seen_down_twice_in_a_row_is_gone_with_its_reason() {
        let departures = Departures::default();
        let reason = Some("Server.InternalError: cannot boot");
        departures.record(&[
            machine("a", MachineState::Terminated, reason),
            machine("b", MachineState::Running, None),
        ]);
        assert_eq!(departures.gone("a"), None, "one sighting may be a machine still starting");
        departures.record(&[
            machine("a", MachineState::Terminated, reason),
            machine("b", MachineState::Stopped, None),
        ]);
        assert_eq!(
            departures.gone("a").as_deref(),
            Some("the machine is terminated: Server.InternalError: cannot boot")
        );
        assert_eq!(departures.gone("b"), None);
        // Up again in between: the count starts over.
        departures.record(&[machine("b", MachineState::Running, None)]);
        departures.record(&[machine("b", MachineState::Stopped, None)]);
        assert_eq!(departures.gone("b"), None);
    }
}
