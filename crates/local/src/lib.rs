//! The local provider: every machine is a flotilla agent process on its own loopback address.
//!
//! ```text
//! <deployment>/local/                 0700
//!   machines.json                     name → address, region, role, serial; written before any
//!                                     agent starts
//!   artifacts/<sha256>                the content-addressed store agents fetch from (file:// URLs)
//!   instances/                        0700
//!     <machine>/                      0700, the agent's directory (see the agent's layout),
//!                                     named by `names::machine_file_name`
//!       bootstrap.json                0600  the agent's bootstrap config
//!       identity.json                 0600  the machine's key and certificate
//!       agent.log                     0600  the agent's own log, rotated by the agent like
//!                                           its binary's log (`logs.agent_log`)
//!       agent.out                     0600  what the agent writes outside its log (a panic
//!                                           before its log is open), kept under 1 MiB
//! ```
//!
//! Every file is 0600 and every directory 0700: local binaries run with the operator's rights
//! (same user), so the operator's other files are theirs to read, but nothing of flotilla's is
//! readable by other users.
//!
//! Agents are started detached (each makes itself a session leader) and outlive the CLI;
//! `launch` adopts agents that run and starts those that do not, and the agent's own lock on its
//! directory makes a second agent for one machine exit at once, so no machine ever runs twice.
//! Agents get a cleared environment plus an allowlist ([`process::INHERITED_VARIABLES`]) and
//! the most generous resource limits this user may have ([`raise_resource_limits`]), so nothing
//! of the shell that ran `create` (a secret, `FLOTILLA_HOME`, a low file-size limit) reaches
//! them or their binaries. Addresses come from machine-wide leases ([`lease`]).
//!
//! Each agent `launch` starts is a new machine: its record takes a new serial first, so it has a
//! new [`Machine::id`] (`local:<name>:<serial>`). A machine whose agent is not running is gone
//! (killed, or stopped by its keepalive, as a cloud machine that powered off): the one `launch`
//! starts under its name starts afresh (what the dead one left running is killed, its
//! directory removed). `retire`
//! removes machines one by one as `destroy` removes them all (SIGTERM to the agent, which
//! drains; SIGKILL after a grace period and to what is left of its session), then their
//! directories and records, and releases a leased block no machine uses any more.
//!
//! `destroy` works from whatever is left: corrupt or missing records do not stop it, since the
//! agents are found from /proc by their command lines and the leases by their owner.

pub mod lease;
pub mod process;

use fs_err::os::unix::fs::OpenOptionsExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_core::client::error_chain;
use flotilla_core::monitoring::services::MonitoringTools;
use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::{Progress, checkpoints};
use flotilla_core::provider::{
    LocalArtifact, Machine, MachineState, Provider, ProviderError, Role,
};
use flotilla_core::state::{Deployment, ensure_private_dir, write_private};
use flotilla_spec::bootstrap::ImdsTarget;
use flotilla_spec::bootstrap::{
    AgentBootstrap, BootTarget, DEFAULT_API_PORT, DEFAULT_METRICS_PORT, LogRotation,
};
use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::imds::{REHEARSAL_NOTICES_FILE, RehearsalNotices};
use flotilla_spec::names::machine_file_name;
use serde::{Deserialize, Serialize};

use crate::lease::{Block, Leases};

/// How long an agent has to stop its binary and exit after SIGTERM before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(15);
/// How long the binary has after SIGTERM (the agent's `stop_grace`).
/// The port of each machine's rehearsal IMDS, on the machine's own address (the emulator's
/// and amazon-ec2-metadata-mock's port).
pub const REHEARSAL_IMDS_PORT: u16 = 1338;

const BINARY_STOP_GRACE: Duration = Duration::from_secs(10);

/// One machine's record in `machines.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MachineRecord {
    name: String,
    role: Role,
    region: String,
    address: Ipv4Addr,
    /// The machine's number in the deployment ([`Records::last_serial`]), taken anew each time
    /// `launch` starts an agent for the name: a machine that replaces a retired or dead one has
    /// another [`Machine::id`].
    #[serde(default)]
    serial: u64,
}

impl MachineRecord {
    /// The id of the machine this record describes now: `local:<name>:<serial>`.
    fn id(&self) -> String {
        format!("local:{}:{}", self.name, self.serial)
    }
}

/// `machines.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Records {
    blocks: Vec<Block>,
    machines: Vec<MachineRecord>,
    /// The last machine serial handed out: every machine gets the next one, so no two machines
    /// of the deployment ever share an id, even under one name.
    #[serde(default)]
    last_serial: u64,
}

impl Records {
    fn next_serial(&mut self) -> u64 {
        self.last_serial += 1;
        self.last_serial
    }
}

/// The local provider for one deployment.
#[derive(Debug)]
pub struct LocalProvider {
    tag: String,
    root: PathBuf,
    agent_program: PathBuf,
    lease_dir: PathBuf,
    /// The monitoring programs this host has (its machines have what it has).
    monitoring_tools: MonitoringTools,
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> ProviderError {
    move |error| ProviderError::with_source(format!("{context}: {error}"), error)
}

impl LocalProvider {
    /// The provider for `deployment`, starting agents with `agent_program agent --bootstrap F`
    /// (normally the running `flotilla` executable).
    pub fn new(
        deployment: &Deployment,
        agent_program: PathBuf,
        lease_dir: PathBuf,
    ) -> Result<LocalProvider, ProviderError> {
        let root = deployment.provider_dir("local").map_err(|e| {
            ProviderError::with_source(format!("local state of {}", deployment.tag()), e)
        })?;
        Ok(LocalProvider {
            tag: deployment.tag().to_owned(),
            root,
            agent_program,
            lease_dir,
            monitoring_tools: MonitoringTools::none(
                "the local provider was not told which monitoring programs this host has",
            ),
        })
    }

    /// The provider whose machines run the monitoring programs `tools` (found on this host).
    pub fn with_monitoring_tools(mut self, tools: MonitoringTools) -> LocalProvider {
        self.monitoring_tools = tools;
        self
    }

    fn records_path(&self) -> PathBuf {
        self.root.join("machines.json")
    }

    fn records(&self) -> Result<Records, ProviderError> {
        let path = self.records_path();
        match fs_err::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::with_source(
                    format!(
                        "{} is corrupt; run `flotilla destroy --tag {}` (it finds the machines without it), then create again",
                        path.display(),
                        self.tag
                    ),
                    e,
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Records::default()),
            Err(error) => Err(io_error(format!("reading {}", path.display()))(error)),
        }
    }

    fn save_records(&self, records: &Records) -> Result<(), ProviderError> {
        let json = serde_json::to_vec_pretty(records).expect("records serialize to JSON");
        write_private(&self.records_path(), &json)
            .map_err(|e| ProviderError::with_source("writing machines.json", e))
    }

    fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        self.instances_dir().join(machine_file_name(name))
    }

    /// Serves `notices` from machine `name`'s rehearsal IMDS (replacing what it served):
    /// the notices file its agent reads on every poll, written atomically.
    pub fn serve_notices(
        &self,
        name: &str,
        notices: &RehearsalNotices,
    ) -> Result<PathBuf, ProviderError> {
        let records = self.records()?;
        if !records.machines.iter().any(|m| m.name == name && m.role == Role::Binary) {
            return Err(ProviderError::new(format!(
                "deployment `{}` has no machine `{name}`; `flotilla status` lists them",
                self.tag
            )));
        }
        let path = self.instance_dir(name).join(REHEARSAL_NOTICES_FILE);
        let json = serde_json::to_vec_pretty(notices).expect("notices serialize to JSON");
        write_private(&path, &json)
            .map_err(|e| ProviderError::with_source(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    fn bootstrap_path(&self, name: &str) -> PathBuf {
        self.instance_dir(name).join("bootstrap.json")
    }

    fn machine(&self, record: &MachineRecord, state: MachineState) -> Machine {
        let address = IpAddr::V4(record.address);
        Machine {
            name: record.name.clone(),
            role: record.role,
            region: record.region.clone(),
            id: record.id(),
            public_ip: address,
            private_ip: address,
            agent_endpoint: SocketAddr::new(address, DEFAULT_API_PORT),
            state,
            state_reason: None,
            placement: None,
        }
    }

    /// Assigns an address to every machine of `plan` that has none, leasing blocks as needed.
    fn assign_addresses(&self, plan: &DeploymentPlan) -> Result<Records, ProviderError> {
        let mut records = self.records()?;
        let leases = Leases::lock(&self.lease_dir).map_err(io_error(format!(
            "locking the lease directory {}",
            self.lease_dir.display()
        )))?;
        // Our blocks stay ours (their lease files may have been cleaned from /tmp).
        for block in &records.blocks {
            let owner = leases
                .reassert(&self.root, &self.tag, *block)
                .map_err(io_error("renewing address leases".into()))?;
            if let Some(other) = owner {
                return Err(ProviderError::new(format!(
                    "addresses {block} of deployment `{}` are now leased by {}; destroy one of the two deployments",
                    self.tag,
                    other.display()
                )));
            }
        }
        let mut used: Vec<Ipv4Addr> = records.machines.iter().map(|m| m.address).collect();
        let mut rejected: Vec<Block> = Vec::new();
        for machine in &plan.machines {
            if let Some(existing) = records.machines.iter_mut().find(|m| m.name == machine.name) {
                existing.region = machine.region.clone();
                existing.role = machine.role;
                continue;
            }
            let address = loop {
                let free = records
                    .blocks
                    .iter()
                    .flat_map(|block| (1..=254u8).map(|h| block.address(h)))
                    .find(|a| {
                        !used.contains(a)
                            && lease::is_free(*a, DEFAULT_API_PORT)
                            && lease::is_free(*a, DEFAULT_METRICS_PORT)
                    });
                if let Some(address) = free {
                    break address;
                }
                let mut skip = records.blocks.clone();
                skip.extend(&rejected);
                let block = leases
                    .lease_block(&self.root, &self.tag, &skip)
                    .map_err(io_error("leasing loopback addresses".into()))?;
                if lease::is_free(block.address(1), DEFAULT_API_PORT) {
                    records.blocks.push(block);
                } else {
                    // Something outside flotilla's leases uses this block.
                    leases
                        .release(&self.root, &[block])
                        .map_err(io_error("releasing a lease".into()))?;
                    rejected.push(block);
                }
            };
            used.push(address);
            let serial = records.next_serial();
            records.machines.push(MachineRecord {
                name: machine.name.clone(),
                role: machine.role,
                region: machine.region.clone(),
                address,
                serial,
            });
        }
        self.save_records(&records)?;
        Ok(records)
    }

    fn write_bootstrap(&self, record: &MachineRecord) -> Result<(), ProviderError> {
        let dir = self.instance_dir(&record.name);
        for dir in [self.instances_dir(), dir.clone()] {
            ensure_private_dir(&dir).map_err(|e| {
                ProviderError::with_source(format!("creating {}", dir.display()), e)
            })?;
        }
        let bootstrap = AgentBootstrap {
            tag: self.tag.clone(),
            dir: dir.clone(),
            listen: IpAddr::V4(record.address),
            api_port: DEFAULT_API_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            identity: dir.join("identity.json").display().to_string(),
            identity_timeout: Duration::from_secs(600),
            stop_grace: BINARY_STOP_GRACE,
            logs: LogRotation { agent_log: Some(dir.join("agent.log")), ..LogRotation::default() },
            boot: BootTarget {
                root: Some(dir.join("root")),
                system_settings: false,
                runs_on: "the local provider".to_owned(),
                ..BootTarget::default()
            },
            imds: Some(ImdsTarget {
                endpoint: format!("http://{}:{REHEARSAL_IMDS_PORT}", record.address),
                rehearsal_notices: Some(dir.join(REHEARSAL_NOTICES_FILE)),
            }),
            // A local machine is the operator's computer: a keepalive that runs out only ends
            // the agent, and the machine shows as stopped.
            power_off: Vec::new(),
            loki: None,
        };
        let json = serde_json::to_vec_pretty(&bootstrap).expect("a bootstrap config serializes");
        write_private(&self.bootstrap_path(&record.name), &json).map_err(|e| {
            ProviderError::with_source(format!("writing the bootstrap of {}", record.name), e)
        })
    }

    fn agent_pid(&self, name: &str) -> Option<u32> {
        process::running_agent(&self.instance_dir(name), &self.bootstrap_path(name))
    }

    fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Removes what is left of machine `name` once its agents (`sessions`) were stopped: what
    /// they and their binaries left running (killed), then its directory.
    fn clear_machine(&self, name: &str, sessions: &[u32]) -> Result<(), ProviderError> {
        let dir = self.instance_dir(name);
        let killed = process::kill_leftovers(&dir, &self.tag, sessions);
        if !killed.is_empty() {
            tracing::warn!(machine = %name, pids = ?killed, "processes the machine's agent and binary left were killed");
        }
        match fs_err::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(format!("removing {}", dir.display()))(error)),
        }
    }
}

/// The local provider has no instance catalog: machines are processes on this computer, and
/// instance types, zones and markets do not apply to them.
pub async fn survey() -> flotilla_core::provider::Survey {
    flotilla_core::provider::Survey {
        notes: vec![
            "the local provider runs every machine on this computer: instance types, zones and prices do not apply"
                .to_owned(),
        ],
        ..flotilla_core::provider::Survey::default()
    }
}

/// The local provider references nothing of an account: `image`, `network`, `tags`, the IAM
/// keys and `root_volume` describe cloud machines and are not used here (a spec written for AWS
/// runs locally unchanged), so there is nothing to check. `boot` applies; what of it does not
/// (kernel settings, packages) the agent reports in `status`.
pub fn check_references(_plan: &DeploymentPlan) -> flotilla_core::provider::ReferenceCheck {
    flotilla_core::provider::ReferenceCheck::default()
}

/// The one region of the local provider, where every machine runs (the monitoring machine
/// too).
pub const REGION: &str = "local";

impl flotilla_core::provider::Surveyor for LocalProvider {
    fn monitoring_region(&self) -> &'static str {
        REGION
    }

    async fn survey(
        &self,
        _regions: &[String],
        _groups: &[flotilla_core::plan::GroupPlan],
        _progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::Survey, ProviderError> {
        Ok(survey().await)
    }

    async fn check_references(
        &self,
        plan: &DeploymentPlan,
        _progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::ReferenceCheck, ProviderError> {
        Ok(check_references(plan))
    }
}

impl Provider for LocalProvider {
    fn monitoring_tools(&self, _spec: &flotilla_spec::FleetSpec) -> MonitoringTools {
        self.monitoring_tools.clone()
    }

    async fn prepare(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let _stage = progress.stage("assigning loopback addresses", 0);
        self.assign_addresses(plan)?;
        ensure_private_dir(&self.artifacts_dir())
            .map_err(|e| ProviderError::with_source("creating the artifact store", e))?;
        Ok(())
    }

    async fn launch(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        // `prepare` assigned every planned machine its address.
        let mut records = self.records()?;
        let stage = progress.stage("starting agents", plan.machines.len() as u64);
        raise_resource_limits();
        // One look at /proc: an agent that has not written its pid file yet still runs.
        let running = process::agent_bootstraps_under(&self.root);
        let mut machines = Vec::with_capacity(plan.machines.len());
        for planned in &plan.machines {
            let index =
                records.machines.iter().position(|m| m.name == planned.name).ok_or_else(|| {
                    ProviderError::new(format!(
                        "{} has no address: prepare must run before launch",
                        planned.name
                    ))
                })?;
            let runs = self.agent_pid(&planned.name).is_some()
                || running.contains(&self.bootstrap_path(&planned.name));
            if !runs {
                // Every machine started is a new machine with a new id, saved before its agent
                // starts, so no id is ever handed out twice (not even after a crash part-way
                // through a `retire` or this launch).
                records.machines[index].serial = records.next_serial();
                self.save_records(&records)?;
                if self.instance_dir(&planned.name).exists() {
                    // A machine lived here and is gone (its agent killed, or stopped by its
                    // keepalive): the one that replaces it starts afresh.
                    self.clear_machine(&planned.name, &[])?;
                    tracing::info!(machine = %planned.name, id = %records.machines[index].id(), "the machine's agent is gone; starting a new machine under its name");
                }
                let record = &records.machines[index];
                self.write_bootstrap(record)?;
                let dir = self.instance_dir(&record.name);
                let output = open_agent_output(&dir.join("agent.out"))
                    .map_err(io_error(format!("opening the agent output of {}", record.name)))?;
                let pid = process::spawn_agent(
                    &self.agent_program,
                    &self.bootstrap_path(&record.name),
                    &dir,
                    output,
                )
                .map_err(io_error(format!("starting the agent of {}", record.name)))?;
                tracing::debug!(machine = %record.name, pid, address = %record.address, "agent started");
            } else {
                tracing::debug!(machine = %planned.name, "agent already runs; adopted");
            }
            machines.push(self.machine(&records.machines[index], MachineState::Running));
            stage.advance(1);
        }
        Ok(machines)
    }

    async fn install_identity(
        &self,
        machine: &Machine,
        bundle: &IdentityBundle,
    ) -> Result<(), ProviderError> {
        let path = self.instance_dir(&machine.name).join("identity.json");
        let json = serde_json::to_vec(bundle).expect("an identity bundle serializes");
        write_private(&path, &json).map_err(|e| {
            ProviderError::with_source(format!("writing the identity of {}", machine.name), e)
        })
    }

    async fn publish(&self, artifact: &LocalArtifact) -> Result<String, ProviderError> {
        let dir = self.artifacts_dir();
        let target = dir.join(&artifact.sha256);
        if !target.exists() {
            let source = artifact.path.clone();
            let expected = artifact.sha256.clone();
            let target_for_copy = target.clone();
            tokio::task::spawn_blocking(move || {
                copy_verified(&source, &target_for_copy, &expected)
            })
            .await
            .map_err(|e| {
                ProviderError::new(format!("publishing {}: {e}", artifact.path.display()))
            })??;
        }
        Ok(format!("file://{}", target.display()))
    }

    async fn machines(&self) -> Result<Vec<Machine>, ProviderError> {
        let records = self.records()?;
        // One look at /proc for every agent: an agent that has not written its pid file yet
        // still counts as running.
        let running = process::agent_bootstraps_under(&self.root);
        Ok(records
            .machines
            .iter()
            .map(|record| {
                let bootstrap = self.bootstrap_path(&record.name);
                if running.contains(&bootstrap) {
                    return self.machine(record, MachineState::Running);
                }
                let mut machine = self.machine(record, MachineState::Stopped);
                let dir = self.instance_dir(&record.name);
                machine.state_reason = Some(format!(
                    "its agent is not running; see {} and {}",
                    dir.join("agent.log").display(),
                    dir.join("agent.out").display()
                ));
                machine
            })
            .collect())
    }

    /// A machine's directory, address and agent are its name's: two machines cannot run under
    /// one name here, so the caller replaces after retiring.
    async fn launch_beside(
        &self,
        _plan: &DeploymentPlan,
        _at_risk: &[Machine],
        _progress: &dyn Progress,
    ) -> Result<Option<Vec<Machine>>, ProviderError> {
        Ok(None)
    }

    async fn retire(
        &self,
        machines: &[Machine],
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let records = self.records()?;
        // A machine whose record is gone, or names another id now, is already gone.
        let retiring: Vec<String> = records
            .machines
            .iter()
            .filter(|r| machines.iter().any(|m| m.name == r.name && m.id == r.id()))
            .map(|r| r.name.clone())
            .collect();
        if retiring.is_empty() {
            return Ok(());
        }
        let stage = progress.stage("retiring machines", retiring.len() as u64);
        let dirs: Vec<PathBuf> = retiring.iter().map(|name| self.instance_dir(name)).collect();
        let agents = tokio::task::spawn_blocking(move || {
            let agents: Vec<u32> = dirs.iter().flat_map(|dir| process::agents_under(dir)).collect();
            // SIGTERM: each agent runs its `stopping` hooks and stops its binary, as at destroy.
            let stubborn = process::terminate(&agents, AGENT_STOP_GRACE);
            if !stubborn.is_empty() {
                tracing::warn!(pids = ?stubborn, "agents did not stop within the grace period and were killed");
            }
            agents
        })
        .await
        .map_err(|e| ProviderError::new(format!("stopping agents: {e}")))?;
        for name in &retiring {
            self.clear_machine(name, &agents)?;
            stage.advance(1);
        }
        // The records last: until they change, the machine is listed (stopped), and retiring it
        // again finishes the work.
        let leases = Leases::lock(&self.lease_dir).map_err(io_error(format!(
            "locking the lease directory {}",
            self.lease_dir.display()
        )))?;
        let mut records = self.records()?;
        records.machines.retain(|m| !retiring.contains(&m.name));
        let (kept, unused): (Vec<Block>, Vec<Block>) = records
            .blocks
            .iter()
            .partition(|block| records.machines.iter().any(|m| block.contains(m.address)));
        records.blocks = kept;
        self.save_records(&records)?;
        leases.release(&self.root, &unused).map_err(io_error("releasing address leases".into()))?;
        tracing::info!(machines = ?retiring, released = unused.len(), "machines retired");
        Ok(())
    }

    fn check_capture(&self, machine: &Machine) -> Result<(), ProviderError> {
        Err(no_volumes(machine, "snapshotted or made into an image"))
    }

    async fn stop_machine(
        &self,
        machine: &Machine,
        _progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        Err(no_volumes(machine, "stopped for a consistent capture"))
    }

    async fn start_machine(
        &self,
        machine: &Machine,
        _progress: &dyn Progress,
    ) -> Result<Machine, ProviderError> {
        Err(no_volumes(machine, "started after a capture"))
    }

    async fn snapshot_disks(
        &self,
        machine: &Machine,
        _capture: &flotilla_core::provider::Capture,
        _full: bool,
        _progress: &dyn Progress,
    ) -> Result<Vec<flotilla_core::provider::DiskSnapshot>, ProviderError> {
        Err(no_volumes(machine, "snapshotted"))
    }

    async fn create_image(
        &self,
        machine: &Machine,
        _request: &flotilla_core::provider::ImageRequest,
        _progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::MachineImage, ProviderError> {
        Err(no_volumes(machine, "made into an image"))
    }

    async fn destroy(
        &self,
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::Teardown, ProviderError> {
        // Whatever is readable: corrupt records must not strand the machines.
        let records = match self.records() {
            Ok(records) => Some(records),
            Err(error) => {
                tracing::warn!("{}; finding the machines without it", error_chain(&error));
                None
            }
        };
        let expected = records.as_ref().map_or(0, |r| r.machines.len());
        let stage = progress.stage("stopping agents", expected as u64);
        let mut agents: Vec<u32> = records
            .iter()
            .flat_map(|r| &r.machines)
            .filter_map(|m| self.agent_pid(&m.name))
            .collect();
        // Agents whose records or pid files are gone are found by their command lines.
        agents.extend(process::agents_under(&self.root));
        agents.sort_unstable();
        agents.dedup();
        let root = self.root.clone();
        let tag = self.tag.clone();
        let killed = tokio::task::spawn_blocking(move || {
            // Each agent leads its own session, which its binaries share.
            let sessions = agents.clone();
            let stubborn = process::terminate(&agents, AGENT_STOP_GRACE);
            let leftovers = process::kill_leftovers(&root, &tag, &sessions);
            (stubborn, leftovers)
        })
        .await
        .map_err(|e| ProviderError::new(format!("stopping agents: {e}")))?;
        if !killed.0.is_empty() {
            tracing::warn!(pids = ?killed.0, "agents did not stop within the grace period and were killed");
        }
        if !killed.1.is_empty() {
            tracing::warn!(pids = ?killed.1, "processes the deployment's agents and binaries left were killed");
        }
        stage.advance(expected as u64);
        progress.checkpoint(checkpoints::DESTROY_AGENTS_STOPPED);
        drop(stage);
        for dir in [self.instances_dir(), self.artifacts_dir()] {
            match fs_err::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(format!("removing {}", dir.display()))(error)),
            }
        }
        let leases = Leases::lock(&self.lease_dir)
            .map_err(io_error("locking the lease directory".into()))?;
        let mut blocks =
            leases.owned_by(&self.root).map_err(io_error("reading the address leases".into()))?;
        blocks.extend(records.iter().flat_map(|r| r.blocks.iter().copied()));
        blocks.sort();
        blocks.dedup();
        leases.release(&self.root, &blocks).map_err(io_error("releasing address leases".into()))?;
        match fs_err::remove_file(self.records_path()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("removing machines.json".into())(error)),
        }
        // Local machines hold no dedicated hosts.
        Ok(flotilla_core::provider::Teardown::default())
    }
}

/// The most an agent's output file keeps: it holds only what the agent writes outside its own
/// rotated log, so one earlier file is kept beside it when it grows past this.
const AGENT_OUTPUT_MAX_BYTES: u64 = 1024 * 1024;

/// Opens the agent's output file for appending, 0600; a file past [`AGENT_OUTPUT_MAX_BYTES`]
/// is moved to `<path>.1` first.
fn open_agent_output(path: &Path) -> std::io::Result<fs_err::File> {
    if fs_err::metadata(path).is_ok_and(|m| m.len() > AGENT_OUTPUT_MAX_BYTES) {
        let mut previous = path.as_os_str().to_owned();
        previous.push(".1");
        fs_err::rename(path, PathBuf::from(previous))?;
    }
    open_private_append(path)
}

/// Opens `path` for appending, creating it 0600 (and making an older file 0600).
fn open_private_append(path: &Path) -> std::io::Result<fs_err::File> {
    let file = fs_err::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Raises this process's soft resource limits to its hard ones (open files to at most 65536),
/// before agents are started: they inherit them, and a low limit of the shell that ran `create`
/// (a file size limit, say) would otherwise break every binary until a destroy.
fn raise_resource_limits() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    for resource in [Resource::Fsize, Resource::Data, Resource::As, Resource::Stack] {
        let limit = getrlimit(resource);
        if limit.current != limit.maximum {
            let raised = rustix::process::Rlimit { current: limit.maximum, ..limit };
            if let Err(error) = setrlimit(resource, raised) {
                tracing::debug!(?resource, %error, "could not raise a resource limit");
            }
        }
    }
    let files = getrlimit(Resource::Nofile);
    let wanted = files.maximum.map_or(65_536, |maximum| maximum.min(65_536));
    if files.current.is_some_and(|current| current < wanted) {
        let raised = rustix::process::Rlimit { current: Some(wanted), ..files };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%error, "could not raise the open file limit");
        }
    }
}

/// Copies `source` to `target` (mode 0500, read-only) while hashing; refuses a copy whose hash
/// differs from `expected` (the file changed after it was hashed).
fn copy_verified(source: &Path, target: &Path, expected: &str) -> Result<(), ProviderError> {
    let temp = target.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<String> {
        let mut input = fs_err::File::open(source)?;
        let mut output = fs_err::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)?;
        let (digest, _size) = flotilla_core::artifacts::copy_hashing(&mut input, &mut output)?;
        output.sync_all()?;
        output.set_permissions(std::fs::Permissions::from_mode(0o500))?;
        Ok(digest)
    })();
    let digest = match result {
        Ok(digest) => digest,
        Err(error) => {
            let _ = fs_err::remove_file(&temp);
            return Err(io_error(format!("publishing {}", source.display()))(error));
        }
    };
    if digest != expected {
        let _ = fs_err::remove_file(&temp);
        return Err(ProviderError::new(format!(
            "{} changed while it was being published (sha256 {digest}, expected {expected}); run the command again",
            source.display()
        )));
    }
    fs_err::rename(&temp, target).map_err(io_error(format!("publishing {}", source.display())))?;
    Ok(())
}

/// The local provider's answer to `snapshot` and `image`: its machines are processes in
/// directories of this host, with no volumes or images to capture.
fn no_volumes(machine: &Machine, what: &str) -> ProviderError {
    ProviderError::new(format!(
        "machine `{}` runs on the local provider, which has no volumes or images: it cannot be {what}; snapshots and images are for aws deployments",
        machine.name
    ))
    .of_kind(flotilla_core::provider::ErrorKind::Invalid)
}
