//! The interface between the workflows and where machines run (`local`, `aws`).
//!
//! A provider makes machines exist and tells where they are; everything that happens on a
//! machine goes through its agent, the same way under every provider. The workflows call a
//! provider in this order:
//!
//! 1. [`Provider::prepare`]: shared resources (addresses, network, security groups, buckets,
//!    roles). Idempotent.
//! 2. [`Provider::launch`]: machines that do not exist are started, those that do are adopted;
//!    each boots an agent that waits for its identity.
//! 3. [`Provider::install_identity`]: the machine's key and certificate (issued by the workflow
//!    once the machine's addresses are known), stored where only that machine can read it.
//! 4. [`Provider::publish`]: artifacts, content-addressed, where agents can fetch them.
//! 5. [`Provider::machines`] at any time; [`Provider::retire`] when machines leave the
//!    deployment for good (the spec no longer names them, or they are gone and will be replaced
//!    under their names: a later [`Provider::launch`] starts a new machine, with a new id, for
//!    each name the plan still has), after [`Provider::launch_beside`] when the replacement
//!    comes first; [`Provider::destroy`] at the end.
//!
//! Before each batch of an `update`, [`Provider::open_health_issues`] (read-only; see
//! `crate::health`).
//!
//! `snapshot` and `image` (`crate::workflows::capture`) capture a running machine:
//! [`Provider::check_capture`] first; then with
//! `--stop`, the agent stops the binary, then [`Provider::stop_machine`]; then
//! [`Provider::snapshot_disks`] or [`Provider::create_image`]; then, whatever they answered,
//! [`Provider::start_machine`], after which the workflow has the agent start the binary again.
//! Each capture has an id ([`Capture::id`]) that a re-run after a crash reuses: what the
//! provider made for it is found by that id and not made twice.
//!
//! Every provider is also a [`Surveyor`]: where its monitoring machine runs
//! ([`Surveyor::monitoring_region`], asked first, when the deployment's plan is made), then
//! what its regions offer (the instance catalog and prices), read-only, asked before anything
//! is made so that a spec's capacity keys are checked against the account's real catalog, and
//! by `plan`.
//!
//! Architecture Invariant: every method is safe to call again after a crash at any point: it
//! finds what exists (by its records or tags) and creates nothing twice.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use flotilla_spec::identity::IdentityBundle;

use crate::plan::DeploymentPlan;
use crate::progress::Progress;

/// What an account offers in some regions: the instance catalog and prices, and what the survey
/// had to fall back from (no credentials, the Pricing API out of reach), which `plan` shows.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    pub catalog: flotilla_capacity::Catalog,
    pub prices: flotilla_capacity::PriceBook,
    pub notes: Vec<String>,
}

/// A reference of the spec to something the account already has (an image, a VPC, a subnet, a
/// security group, a policy, a key) that the account does not satisfy, or satisfies in a way
/// the user should hear about: reported at the spec field that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceProblem {
    /// The field path in the spec (`image`, `instances[2].network.us-east-1.subnets[0]`, …).
    pub field: String,
    /// Whether it stops the deployment (`Error`) or is only worth knowing (`Warning`).
    pub severity: flotilla_spec::Severity,
    pub message: String,
    /// How to fix it.
    pub help: String,
}

/// What the account said about the spec's references: the problems, and where each group may
/// launch when the account narrows it (an existing network's subnets cover some zones only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceCheck {
    pub problems: Vec<ReferenceProblem>,
    /// Group name → the zones its machines may launch in; a group not named is not narrowed.
    pub zones: std::collections::BTreeMap<String, Vec<String>>,
}

/// Reads what regions offer and what the account has. Read-only; a provider may cache what it
/// reads.
pub trait Surveyor: Sync {
    /// The region the monitoring machine runs in (the hub every other region's network joins
    /// on AWS; the provider's one region locally). Asked when the plan is made
    /// ([`DeploymentPlan::from_spec`]).
    fn monitoring_region(&self) -> &'static str;

    /// The catalog (instance types, and the zones of each region that offer them) of
    /// `regions`, and the prices of the types `groups` may run on (a provider may read more).
    fn survey(
        &self,
        regions: &[String],
        groups: &[crate::plan::GroupPlan],
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Survey, ProviderError>> + Send;

    /// Every reference `plan` makes to what the account has (each group's
    /// [`crate::plan::GroupPlan::settings`] and the plan's IAM keys), checked at once and
    /// read-only, before anything is made: that each exists, is in the right region and
    /// account, and fits the rest (a subnet in the VPC, an image for the binary's
    /// architecture). Every problem is returned, not only the first, with the zones each group
    /// may launch in where the account narrows them; `Err` is for a check that could not be
    /// made at all (no credentials, the API out of reach).
    fn check_references(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<ReferenceCheck, ProviderError>> + Send;
}

/// What kind of failure a provider met, for callers that act on it (a capacity failure is
/// reported with the pools tried, a permission failure is not retried, …) rather than parse
/// messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Anything else.
    #[default]
    Other,
    /// No capacity in the pools that may be used (before the launch deadline).
    Capacity,
    /// An account quota (vCPUs, spot instances, …) is reached.
    Quota,
    /// The cloud's API kept refusing for its request rate.
    Throttled,
    /// The credentials may not do what was asked.
    Permission,
    /// Something the deployment needs does not exist (an image, a region, a resource).
    NotFound,
    /// The request is wrong for the cloud (a bad parameter, an unsupported combination).
    Invalid,
}

/// A provider's failure, with the context that helps.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub message: String,
    pub kind: ErrorKind,
    /// What the kind is about, for the hint the CLI prints: the quota for
    /// [`ErrorKind::Quota`] (its family, market and region), the action denied for
    /// [`ErrorKind::Permission`].
    pub subject: Option<String>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    pub fn new(message: impl Into<String>) -> Self {
        ProviderError {
            message: message.into(),
            kind: ErrorKind::Other,
            subject: None,
            source: None,
        }
    }

    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ProviderError {
            message: message.into(),
            kind: ErrorKind::Other,
            subject: None,
            source: Some(Box::new(source)),
        }
    }

    /// The same error, about `subject` (see [`ProviderError::subject`]).
    pub fn about(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The same error, of `kind`.
    pub fn of_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

/// What a machine is for (defined with the plan, which decides it).
pub use crate::plan::Role;

/// A machine's lifecycle as the provider sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Launched, not running yet.
    Pending,
    Running,
    /// Its agent (local) or instance (cloud) is stopped.
    Stopped,
    ShuttingDown,
    Terminated,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Pending => "pending",
            MachineState::Running => "running",
            MachineState::Stopped => "stopped",
            MachineState::ShuttingDown => "shutting-down",
            MachineState::Terminated => "terminated",
        }
    }
}

/// A machine of the deployment.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub name: String,
    pub role: Role,
    pub region: String,
    /// The provider's id of this machine, new for each machine started under a name (an EC2
    /// instance id; `local:<name>:<serial>` locally): a machine replaced under its name
    /// has another id.
    pub id: String,
    /// The address hosts.yaml gives for the machine.
    pub public_ip: IpAddr,
    pub private_ip: IpAddr,
    /// Where the CLI reaches the agent's API.
    pub agent_endpoint: SocketAddr,
    pub state: MachineState,
    /// Why the machine is in its state, when the provider knows (EC2's state reason: a spot
    /// reclaim, a failed boot): a machine that stops before its agent answers is reported with
    /// it instead of being waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Where and how it runs, when the provider knows: instance type, zone, market and price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// A dedicated host `destroy` could not release yet: a Mac host inside its 24-hour minimum
/// allocation period. A later `destroy` of the same tag releases it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldHost {
    pub id: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    /// The earliest release, Unix seconds (its allocation time + 24 hours, as AWS reports it).
    pub releasable_at: u64,
    /// The provider's answer, e.g. `Client.InvalidHost…: … cannot be released before …`.
    pub reason: String,
}

/// What `destroy` could not remove yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Dedicated hosts still held, each with when it may go.
    pub held_hosts: Vec<HeldHost>,
}

/// Where a cloud machine runs and what it costs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub instance_type: String,
    pub zone: String,
    pub market: flotilla_capacity::Lifecycle,
    /// The price per hour, when known, with its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<flotilla_capacity::Price>,
}

/// An artifact on this machine, to be published for agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalArtifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// An open issue the cloud's health service reports in a region (AWS Health: an event of
/// category `issue` for EC2, status `open`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthIssue {
    /// The service's code for it (`AWS_EC2_OPERATIONAL_ISSUE`, …).
    pub event_type: String,
    pub region: String,
    /// When it began, RFC 3339, when the service says.
    pub start_time: Option<String>,
    /// The service's id of the event (an ARN on AWS).
    pub arn: String,
}

/// What a provider's health service said about some regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthReading {
    /// The provider has no health service (the local one): nothing to check.
    NotApplicable,
    /// The service cannot be asked for a reason that is the account's, not the moment's (AWS
    /// Health without a Business or Enterprise support plan): said once, rollouts go on.
    Unavailable { reason: String },
    /// The open issues in the regions asked about (none: all clear).
    Issues(Vec<HealthIssue>),
}

/// One capture of a machine (`snapshot` or `image`): its id, the same when the command is run
/// again after a crash, so that the provider finds what it already made for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// `snapshot-<UTC time>` or `image-<UTC time>` (e.g. `image-20261204T143056Z`).
    pub id: String,
}

/// What `image` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRequest {
    pub capture: Capture,
    /// The image's name (checked by the workflow: `PREFIX-<UTC time>`).
    pub name: String,
    /// A key (id, ARN or `alias/NAME`): the image is copied encrypted with it and the
    /// unencrypted one it was copied from is removed with its snapshots.
    pub encrypt_key: Option<String>,
}

/// A snapshot made of one of a machine's disks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiskSnapshot {
    pub snapshot_id: String,
    pub volume_id: String,
    /// The device the disk is attached at (`/dev/sdf`; the root's for the root disk).
    pub device: String,
    pub root: bool,
    pub size_gib: i32,
}

/// An image made of a machine.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MachineImage {
    pub image_id: String,
    pub name: String,
    pub region: String,
    /// The snapshots that back it.
    pub snapshot_ids: Vec<String>,
    pub encrypted: bool,
    /// With a key: the unencrypted image it was copied from, removed (deregistered, its
    /// snapshots deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_intermediate: Option<String>,
}

/// A place machines run. See the module documentation for the call order.
pub trait Provider: Surveyor {
    /// Creates or adopts the resources the machines share.
    fn prepare(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Starts the machines of `plan` that do not exist and adopts those that do. Returns every
    /// machine of the plan, in plan order, once each is running with its addresses known.
    fn launch(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Vec<Machine>, ProviderError>> + Send;

    /// Stores `bundle` where only `machine` can read it; its agent is waiting for it.
    fn install_identity(
        &self,
        machine: &Machine,
        bundle: &IdentityBundle,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Stores an artifact once per digest; returns the URL agents fetch it from.
    fn publish(
        &self,
        artifact: &LocalArtifact,
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;

    /// The deployment's machines that exist now (not terminated, not retired).
    fn machines(&self) -> impl Future<Output = Result<Vec<Machine>, ProviderError>> + Send;

    /// Launches a new machine under the name of each of `at_risk` (machines that still run but
    /// will not for long: a rebalance recommendation, a scheduled retirement) while they keep
    /// running, and returns the new machines: from then on [`Provider::machines`] lists the new
    /// ones under the names, and the old ones are the caller's to drain and [`Provider::retire`].
    /// `Ok(None)` from a provider that cannot run two machines under one name (the local one):
    /// the caller retires the old machine first and launches after. Safe to call again: an
    /// at-risk machine already replaced is not replaced twice.
    fn launch_beside(
        &self,
        plan: &DeploymentPlan,
        at_risk: &[Machine],
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Option<Vec<Machine>>, ProviderError>> + Send;

    /// Removes `machines` for good (the spec no longer names them, or they are gone and will be
    /// replaced under their names): each machine is stopped (its agent drains, as at destroy)
    /// and its own resources are freed (local: agent processes, address lease, directory;
    /// cloud: the instance, terminated and waited for until it no longer counts, and its
    /// identity object). Shared resources stay. A machine already gone is success; safe to
    /// call again after a crash.
    ///
    /// A machine is known by its [`Machine::id`]: a machine whose name now belongs to another
    /// id (it was replaced since) is already gone, and its replacement is left alone.
    fn retire(
        &self,
        machines: &[Machine],
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Where the monitoring programs (Prometheus, node exporter) come from on the machines of
    /// `spec` (whose image, for example, decides what they have); a program a provider cannot
    /// give is missing, with why and how to get it, and its service is left out. Asked once per
    /// command, before manifests are built; the same spec gets the same answer, so that a
    /// command run again builds the same manifests.
    fn monitoring_tools(
        &self,
        spec: &flotilla_spec::FleetSpec,
    ) -> crate::monitoring::services::MonitoringTools {
        let _ = spec;
        crate::monitoring::services::MonitoringTools::none(
            "this provider gives its machines no monitoring programs",
        )
    }

    /// The address the monitoring machine scrapes `machine` at: its private address, which the
    /// deployment's networks route between its regions. A provider whose private addresses
    /// lead nowhere (an emulator's) gives one that does.
    fn scrape_address(&self, machine: &Machine) -> IpAddr {
        machine.private_ip
    }

    /// The open issues the cloud's health service reports in `regions`, asked before each
    /// batch of an update. Read-only. A provider without a health service keeps this default.
    fn open_health_issues(
        &self,
        regions: &[String],
    ) -> impl Future<Output = Result<HealthReading, ProviderError>> + Send {
        let _ = regions;
        std::future::ready(Ok(HealthReading::NotApplicable))
    }

    /// What the provider can tell about `machine`, whose agent never answered while the
    /// machine ran: what it booted (the image, by id and name) and what that must hold for
    /// flotilla's boot to start an agent, and how to look at the boot. Read-only; asked once
    /// per such machine, after the wait ran out. `None` when the provider has nothing to add
    /// (the local provider starts the agent itself).
    fn explain_silent_agent(
        &self,
        machine: &Machine,
    ) -> impl Future<Output = Option<String>> + Send {
        let _ = machine;
        std::future::ready(None)
    }

    /// One round of upkeep for the dedicated host pools of `plan` (`watch` calls it every
    /// round): hosts that may go are released, idle hosts scrubbed as the pool's policy says.
    /// Returns a line per thing done. A provider without dedicated hosts does nothing.
    fn tend_host_pools(
        &self,
        plan: &DeploymentPlan,
    ) -> impl Future<Output = Result<Vec<String>, ProviderError>> + Send {
        let _ = plan;
        async { Ok(Vec::new()) }
    }

    /// Whether this provider can capture `machine` (`snapshot`, `image`): asked before
    /// anything is stopped or made, so that a provider without volumes or images refuses
    /// while the binary still runs. Read-only.
    fn check_capture(&self, machine: &Machine) -> Result<(), ProviderError>;

    /// Stops `machine` (its instance, not only its binary) and waits until it is stopped, so
    /// that its disks hold still. A machine already stopped is success.
    fn stop_machine(
        &self,
        machine: &Machine,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Starts `machine` again after [`Provider::stop_machine`] and waits until it runs;
    /// returns it with its addresses now (a cloud machine may come back with another public
    /// address). A machine already running is success.
    fn start_machine(
        &self,
        machine: &Machine,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Machine, ProviderError>> + Send;

    /// Snapshots of `machine`'s data disks (and with `full`, its root disk), each tagged so
    /// that a later spec's `clone: TAG:VALUE` can start a disk from it (the disk's own tags: the
    /// deployment's, its label, flotilla's), waited for until complete. Safe to call again
    /// with the same `capture`: a disk already snapshotted for it is not snapshotted twice.
    fn snapshot_disks(
        &self,
        machine: &Machine,
        capture: &Capture,
        full: bool,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Vec<DiskSnapshot>, ProviderError>> + Send;

    /// An image of `machine` (every disk), tagged as the machine is, waited for until
    /// available; with a key, an encrypted copy, and the unencrypted one removed. Safe to call
    /// again with the same request: the image of that name is found, not made twice.
    fn create_image(
        &self,
        machine: &Machine,
        request: &ImageRequest,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<MachineImage, ProviderError>> + Send;

    /// Removes every machine and resource of the deployment, and returns what cannot go yet
    /// (dedicated hosts inside their minimum allocation period). Idempotent: called again, it
    /// removes what it may then.
    fn destroy(
        &self,
        progress: &dyn Progress,
    ) -> impl Future<Output = Result<Teardown, ProviderError>> + Send;
}
