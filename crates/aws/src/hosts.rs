//! Dedicated hosts: the calls (`AllocateHosts`, `DescribeHosts`, `ReleaseHosts`, and
//! `RunInstances` with `Placement{Tenancy: host, HostId}`) and the driver that runs
//! flotilla-capacity's pool policy ([`HostPool`]) over them.
//!
//! The policy decides; this module only tells it what AWS says and does what it asks:
//!
//! 1. **What exists.** The deployment's hosts are described by its tag (crash-safe adoption:
//!    a host allocated by a command that died is found and used, never allocated twice), each
//!    with its pool ([`TAG_HOST_POOL`]), zone, state, allocation time and instances, and fed to
//!    the policy as [`Event::HostSeen`]: the allocation time is AWS's, so the 24-hour rule
//!    never rests on memory.
//! 2. **Machines wanted.** Each machine of the group without an instance is an
//!    [`Event::MachineWanted`] with the zones its entry accepts.
//! 3. **Actions.** [`Action::Allocate`] is an `AllocateHosts` of one host with a `ClientToken`
//!    (`InsufficientHostCapacity` is told as such, and the policy moves to the next zone);
//!    [`Action::Launch`] is a `RunInstances` onto the host through the group's launch template;
//!    [`Action::Scrub`] launches onto the idle host and terminates at once (its Mac host then
//!    scrubs, unbilled); [`Action::Release`] is a `ReleaseHosts` whose Unsuccessful items stay
//!    in the pool ([`Event::ReleaseFailed`]) with AWS's code and message logged.
//! 4. **Waits.** While machines wait for a host that is scrubbing or a zone that cools down, the
//!    hosts are described again every [`HOST_POLL`] (±10 %) and the policy ticked, until the
//!    launch deadline.
//!
//! `destroy` releases every host of the deployment it may ([`release_all`]); a Mac host inside
//! its 24 hours is returned with the time it may go, for a later `destroy` to finish.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{
    AllocationState, InstanceNetworkInterfaceSpecification, InstanceType,
    LaunchTemplateSpecification, Placement, ResourceType, Tenancy,
};
use flotilla_capacity::host_pool::{
    Action, AllocationId, Event, HostId, HostPool, MachineId, ObservedState, PoolConfig,
    ScrubPolicy, Time, Unservable, ZoneLimit, ZoneSet,
};
use flotilla_capacity::{Launched, Lifecycle};
use flotilla_core::plan::{GroupPlan, HostPoolPlan};
use flotilla_core::provider::{ErrorKind, HeldHost, ProviderError};
use flotilla_spec::host_pool::Scrubbing;
use rand::Rng;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::fleet::{FleetContext, subnet_for};
use crate::instances::sleep_with_jitter;
use crate::journal::Journal;
use crate::tags::{
    TAG_GROUP, TAG_HOST_POOL, TAG_REQUEST, TAG_ROLE, tag_filter, tag_spec, tagged, value_of,
};

/// How often a launch that waits for a host describes the pool's hosts again.
pub const HOST_POLL: Duration = Duration::from_secs(10);

/// A host's state as `DescribeHosts` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    Available,
    /// Just allocated, or scrubbing after a Mac instance.
    Pending,
    /// Under assessment or failed: counted, never used.
    Unusable,
    Released,
}

/// One dedicated host of the deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedHost {
    pub id: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub state: HostState,
    /// Unix seconds, as AWS reports it.
    pub allocated_at: u64,
    /// The instances on it.
    pub instances: Vec<String>,
    /// The pool it was allocated for ([`TAG_HOST_POOL`]).
    pub pool: Option<String>,
}

/// A host `ReleaseHosts` did not release, with AWS's Unsuccessful item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRelease {
    pub host: String,
    pub code: String,
    pub message: String,
}

/// What `ReleaseHosts` answered, host by host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseAnswer {
    pub released: Vec<String>,
    pub refused: Vec<RefusedRelease>,
}

/// Errors of the host pool that are not one AWS call's.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{region}: host pool `{pool}`: {machines} could not be launched: {reason}", machines = machines.join(", "))]
    Unserved { region: String, pool: String, machines: Vec<String>, reason: String },
    #[error("{region}: ReleaseHosts did not release {}", refused.iter().map(|r| format!("{} ({}: {})", r.host, r.code, r.message)).collect::<Vec<_>>().join(", "))]
    NotReleased { region: String, refused: Vec<RefusedRelease> },
}

impl From<HostError> for ProviderError {
    fn from(error: HostError) -> ProviderError {
        let kind = match &error {
            HostError::Unserved { .. } => ErrorKind::Capacity,
            HostError::NotReleased { .. } => ErrorKind::Other,
        };
        ProviderError::with_source(error.to_string(), error).of_kind(kind)
    }
}

/// The Unix time now.
pub fn unix_now() -> Time {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Every host of deployment `tag` in `region` that is not released. Follows pagination.
pub async fn describe_hosts(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<Vec<DescribedHost>, AwsError> {
    let ec2 = clients.ec2(region);
    let mut hosts = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .describe_hosts()
            .filter(tag_filter(tag))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(region, "DescribeHosts", format!("deployment {tag}"), e)
            })?;
        for host in page.hosts() {
            // The filter is checked again: adopting another deployment's host must not happen.
            if !tagged(host.tags(), tag) {
                continue;
            }
            let state = match host.state() {
                Some(AllocationState::Available) => HostState::Available,
                Some(AllocationState::Pending) => HostState::Pending,
                Some(AllocationState::Released | AllocationState::ReleasedPermanentFailure) => {
                    HostState::Released
                }
                _ => HostState::Unusable,
            };
            if state == HostState::Released {
                continue;
            }
            let Some(id) = host.host_id() else { continue };
            hosts.push(DescribedHost {
                id: id.to_owned(),
                region: region.to_owned(),
                zone: host.availability_zone().unwrap_or_default().to_owned(),
                instance_type: host
                    .host_properties()
                    .and_then(|p| p.instance_type())
                    .unwrap_or_default()
                    .to_owned(),
                state,
                allocated_at: host.allocation_time().map(|t| t.secs().max(0) as u64).unwrap_or(0),
                instances: host
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_owned))
                    .collect(),
                pool: value_of(host.tags(), TAG_HOST_POOL).map(str::to_owned),
            });
        }
        token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(hosts);
        }
    }
}

/// `AllocateHosts` of one host of `instance_type` in `zone` for `pool`, tagged, with `token` as
/// its `ClientToken` (the same token answers the same host). Not retried by the SDK: the
/// policy decides what a refusal means.
pub async fn allocate_host(
    clients: &Clients,
    region: &str,
    tag: &str,
    pool: &str,
    zone: &str,
    instance_type: &str,
    token: &str,
) -> Result<String, AwsError> {
    let name = format!("flotilla-{tag}-{pool}");
    let resource = format!("1 × {instance_type} host in {zone} (pool {pool})");
    let answer = clients
        .ec2(region)
        .allocate_hosts()
        .availability_zone(zone)
        .instance_type(instance_type)
        .quantity(1)
        .client_token(token)
        .tag_specifications(tag_spec(
            ResourceType::DedicatedHost,
            tag,
            &name,
            &[(TAG_HOST_POOL, pool)],
        ))
        .customize()
        .config_override(crate::clients::no_retries())
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "AllocateHosts", resource.clone(), e))?;
    answer.host_ids().first().cloned().ok_or_else(|| {
        AwsError::other(region, "AllocateHosts", resource, "AWS answered no host id")
    })
}

/// `ReleaseHosts` of `ids`, with each host's outcome: AWS answers per host, and a host it did
/// not release is reported with its code and message, not lost.
pub async fn release_hosts(
    clients: &Clients,
    region: &str,
    ids: &[String],
) -> Result<ReleaseAnswer, AwsError> {
    if ids.is_empty() {
        return Ok(ReleaseAnswer::default());
    }
    let answer = clients
        .ec2(region)
        .release_hosts()
        .set_host_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "ReleaseHosts", ids.join(", "), e))?;
    let refused = answer
        .unsuccessful()
        .iter()
        .map(|item| RefusedRelease {
            host: item.resource_id().unwrap_or_default().to_owned(),
            code: item.error().and_then(|e| e.code()).unwrap_or_default().to_owned(),
            message: item.error().and_then(|e| e.message()).unwrap_or_default().to_owned(),
        })
        .collect();
    Ok(ReleaseAnswer { released: answer.successful().to_vec(), refused })
}

/// Releases every host of deployment `tag` in `region` that AWS lets go now, after its
/// instances are gone (`destroy`). A Mac host inside its minimum allocation period is returned
/// with the time it may go; any other refusal is an error naming the hosts and AWS's codes.
pub async fn release_all(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<Vec<HeldHost>, ProviderError> {
    let hosts = describe_hosts(clients, region, tag).await?;
    let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
    let answer = release_hosts(clients, region, &ids).await?;
    for id in &answer.released {
        tracing::info!(%region, host = %id, "dedicated host released");
    }
    let mut held = Vec::new();
    let mut failed = Vec::new();
    for refused in answer.refused {
        let host = hosts.iter().find(|h| h.id == refused.host);
        let releasable_at = host.map(mac_releasable_at).unwrap_or(0);
        match host {
            // AWS's word decides, not this computer's clock: a Mac host it refuses for any
            // reason but instances on it (there are none left) or an unknown id waits out
            // its minimum allocation period.
            Some(host)
                if is_mac(&host.instance_type)
                    && !refused.code.ends_with("Occupied")
                    && !refused.code.ends_with("NotFound") =>
            {
                held.push(HeldHost {
                    id: host.id.clone(),
                    region: region.to_owned(),
                    zone: host.zone.clone(),
                    instance_type: host.instance_type.clone(),
                    releasable_at,
                    reason: format!("{}: {}", refused.code, refused.message),
                })
            }
            _ => failed.push(refused),
        }
    }
    if !failed.is_empty() {
        return Err(HostError::NotReleased { region: region.to_owned(), refused: failed }.into());
    }
    Ok(held)
}

/// When a Mac host may be released: its allocation time (AWS's) + 24 hours.
fn mac_releasable_at(host: &DescribedHost) -> u64 {
    host.allocated_at.saturating_add(flotilla_capacity::host_pool::MAC_MINIMUM_ALLOCATION)
}

/// Whether hosts of `instance_type` are Mac hosts (the 24-hour rule, a scrub per instance).
pub fn is_mac(instance_type: &str) -> bool {
    instance_type.starts_with("mac")
}

/// The policy's configuration for a pool as the spec writes it.
pub fn pool_config(pool: &HostPoolPlan) -> PoolConfig {
    let zones = pool
        .spec
        .zones_in_order()
        .map(|(name, zone)| ZoneLimit { name: name.to_owned(), max: zone.max })
        .collect();
    let mut config =
        PoolConfig::new(zones, pool.spec.effective_max(), is_mac(&pool.spec.instance_type));
    config.scrubbing = match pool.spec.scrubbing {
        Scrubbing::Off => ScrubPolicy::Off,
        Scrubbing::Auto => ScrubPolicy::Auto,
        Scrubbing::After(delay) => ScrubPolicy::After(delay.as_secs()),
    };
    config.release_idle_after = pool.spec.release_idle_after.map_or(0, |d| d.as_secs());
    config
}

/// The policy's numbers for AWS's ids (hosts, instances): a number per id, the same for the
/// provider's life.
#[derive(Debug)]
pub struct IdTable<T> {
    by_id: BTreeMap<String, T>,
    ids: Vec<String>,
    first: u64,
}

/// The policy's id types, as numbers.
pub trait Numbered: Copy {
    fn from_number(number: u64) -> Self;
    fn number(self) -> u64;
}

impl Numbered for HostId {
    fn from_number(number: u64) -> Self {
        HostId(number)
    }
    fn number(self) -> u64 {
        self.0
    }
}

impl Numbered for MachineId {
    fn from_number(number: u64) -> Self {
        MachineId(number)
    }
    fn number(self) -> u64 {
        self.0
    }
}

impl<T: Numbered> IdTable<T> {
    /// A table whose numbers start at `first`.
    pub fn starting_at(first: u64) -> Self {
        IdTable { by_id: BTreeMap::new(), ids: Vec::new(), first }
    }

    pub fn of(&mut self, id: &str) -> T {
        if let Some(known) = self.by_id.get(id) {
            return *known;
        }
        let number = T::from_number(self.first + self.ids.len() as u64);
        self.ids.push(id.to_owned());
        self.by_id.insert(id.to_owned(), number);
        number
    }

    pub fn aws(&self, number: T) -> &str {
        &self.ids[(number.number() - self.first) as usize]
    }
}

/// Machine numbers at and above this stand for instances a launch did not ask for (a host
/// busy with an instance from before): the policy counts the host as taken.
const OCCUPIED: u64 = 1 << 40;

/// One pool's hosts in one region, as the policy sees them, and the AWS calls it asks for.
#[derive(Debug)]
pub struct PoolDriver<'a> {
    pub clients: &'a Clients,
    pub region: &'a str,
    pub tag: &'a str,
    pub pool_name: String,
    pub instance_type: String,
    pub policy: HostPool,
    pub hosts: IdTable<HostId>,
    /// Instances found on hosts, as machines the policy did not ask for.
    occupants: IdTable<MachineId>,
    zones: BTreeMap<String, usize>,
    run: String,
    /// Seconds added to this computer's clock for the policy's time (0 but in tests, which
    /// move the emulator's clock and the policy's together).
    clock_offset: u64,
}

impl<'a> PoolDriver<'a> {
    pub fn new(clients: &'a Clients, region: &'a str, tag: &'a str, pool: &HostPoolPlan) -> Self {
        PoolDriver::resume(clients, region, tag, pool, None)
    }

    /// A driver over a policy remembered from an earlier round, or a fresh one.
    pub fn resume(
        clients: &'a Clients,
        region: &'a str,
        tag: &'a str,
        pool: &HostPoolPlan,
        state: Option<PoolState>,
    ) -> Self {
        let config = pool_config(pool);
        let zones = config.zones.iter().enumerate().map(|(i, z)| (z.name.clone(), i)).collect();
        let state = state.unwrap_or_else(|| PoolState {
            policy: HostPool::new(config),
            hosts: IdTable::starting_at(0),
            machines: IdTable::starting_at(OCCUPIED),
        });
        PoolDriver {
            clients,
            region,
            tag,
            pool_name: pool.name.clone(),
            instance_type: pool.spec.instance_type.clone(),
            policy: state.policy,
            hosts: state.hosts,
            occupants: state.machines,
            zones,
            run: format!("{:08x}", rand::rng().random::<u32>()),
            clock_offset: 0,
        }
    }

    /// The policy's clock runs `offset` ahead of this computer's (for tests).
    pub fn set_clock_offset(&mut self, offset: Duration) {
        self.clock_offset = offset.as_secs();
    }

    /// The policy's time now: Unix seconds.
    pub fn now(&self) -> Time {
        unix_now().saturating_add(self.clock_offset)
    }

    /// What a later round needs of this driver.
    pub fn into_state(self) -> PoolState {
        PoolState { policy: self.policy, hosts: self.hosts, machines: self.occupants }
    }

    /// The zones a machine of `group` accepts, as the policy's set.
    pub fn zones_of(&self, group: &GroupPlan) -> ZoneSet {
        if group.zones.is_empty() {
            return ZoneSet::ALL;
        }
        let mut bits = 0u64;
        for zone in &group.zones {
            if let Some(index) = self.zones.get(zone) {
                bits |= 1 << index;
            }
        }
        ZoneSet(bits)
    }

    /// Describes the pool's hosts and tells the policy (step 1); returns what it asks.
    pub async fn refresh(&mut self, actions: &mut Vec<Action>) -> Result<(), AwsError> {
        let hosts = describe_hosts(self.clients, self.region, self.tag).await?;
        let now = self.now();
        for host in hosts.iter().filter(|h| h.pool.as_deref() == Some(self.pool_name.as_str())) {
            let Some(&zone) = self.zones.get(&host.zone) else { continue };
            let state = match host.state {
                HostState::Available if host.instances.is_empty() => ObservedState::Available(None),
                HostState::Available => {
                    ObservedState::Available(Some(self.occupants.of(&host.instances[0])))
                }
                HostState::Pending => ObservedState::Pending,
                HostState::Unusable => ObservedState::Unusable,
                HostState::Released => ObservedState::Released,
            };
            let event = Event::HostSeen {
                host: self.hosts.of(&host.id),
                zone,
                state,
                allocated_at: host.allocated_at,
            };
            self.policy.handle(now, event, actions);
        }
        Ok(())
    }

    fn token(&self, request: AllocationId) -> String {
        format!("flotilla-{}-{}-{}", self.run, self.pool_name, request.0)
    }

    /// An `AllocateHosts` the policy asked for, and its answer told back.
    pub async fn allocate(
        &mut self,
        request: AllocationId,
        zone: usize,
        actions: &mut Vec<Action>,
    ) -> Option<AwsError> {
        let zone_name = self.policy.config().zones[zone].name.clone();
        let token = self.token(request);
        let answer = allocate_host(
            self.clients,
            self.region,
            self.tag,
            &self.pool_name,
            &zone_name,
            &self.instance_type,
            &token,
        )
        .await;
        let now = self.now();
        match answer {
            Ok(id) => {
                tracing::info!(region = self.region, pool = %self.pool_name, host = %id, zone = %zone_name, "dedicated host allocated");
                let host = self.hosts.of(&id);
                self.policy.handle(
                    now,
                    Event::HostAllocated { request, host, allocated_at: now },
                    actions,
                );
                None
            }
            Err(error) if error.code_is("InsufficientHostCapacity") => {
                tracing::warn!(%error, "no host capacity in the zone; the pool tries the next");
                self.policy.handle(now, Event::InsufficientCapacity { request }, actions);
                Some(error)
            }
            Err(error) => {
                tracing::warn!(%error, "allocating a host failed");
                self.policy.handle(now, Event::AllocationFailed { request }, actions);
                Some(error)
            }
        }
    }

    /// A `ReleaseHosts` the policy asked for, each host's answer told back.
    pub async fn release(
        &mut self,
        hosts: &[HostId],
        actions: &mut Vec<Action>,
    ) -> Result<(), AwsError> {
        let ids: Vec<String> = hosts.iter().map(|h| self.hosts.aws(*h).to_owned()).collect();
        let answer = release_hosts(self.clients, self.region, &ids).await;
        let now = self.now();
        match answer {
            Ok(answer) => {
                for id in &answer.released {
                    tracing::info!(region = self.region, pool = %self.pool_name, host = %id, "dedicated host released");
                    let host = self.hosts.of(id);
                    self.policy.handle(now, Event::HostReleased { host }, actions);
                }
                for refused in &answer.refused {
                    tracing::warn!(region = self.region, host = %refused.host, code = %refused.code, message = %refused.message, "the host was not released; the pool keeps it and tries again");
                    let host = self.hosts.of(&refused.host);
                    self.policy.handle(now, Event::ReleaseFailed { host }, actions);
                }
                Ok(())
            }
            Err(error) => {
                for host in hosts {
                    self.policy.handle(now, Event::ReleaseFailed { host: *host }, actions);
                }
                Err(error)
            }
        }
    }
}

/// Launches `names` of `group` onto its pool's hosts (see the module documentation) and
/// returns them, each with its instance.
pub async fn launch_on_pool(
    context: &FleetContext<'_>,
    group: &GroupPlan,
    pool: &HostPoolPlan,
    names: Vec<String>,
    deadline: std::time::Instant,
) -> Result<Vec<(String, Launched)>, ProviderError> {
    let region = context.region.region.as_str();
    let mut driver = PoolDriver::new(context.clients, region, context.tag, pool);
    let zones = driver.zones_of(group);
    let mut actions = Vec::new();
    driver.refresh(&mut actions).await?;
    let now = driver.now();
    // Hosts found idle are for the machines about to be wanted, not to release (the policy
    // releases an idle host it may at once): each such release is told back as not made, so
    // the host is idle again when the machines ask.
    for action in std::mem::take(&mut actions) {
        match action {
            Action::Release { hosts } => {
                for host in hosts {
                    driver.policy.handle(now, Event::ReleaseFailed { host }, &mut actions);
                }
            }
            other => actions.push(other),
        }
    }
    for index in 0..names.len() {
        let wanted = Event::MachineWanted { machine: MachineId(index as u64), zones };
        driver.policy.handle(now, wanted, &mut actions);
    }
    let mut launched: Vec<(String, Launched)> = Vec::new();
    let mut last_error: Option<String> = None;
    let mut unserved: Vec<(String, Unservable)> = Vec::new();
    loop {
        while !actions.is_empty() {
            let batch = std::mem::take(&mut actions);
            for action in batch {
                match action {
                    Action::Allocate { request, zone } => {
                        if let Some(error) = driver.allocate(request, zone, &mut actions).await {
                            if error.healing() == Healing::Never && !error.is_capacity() {
                                return Err(error.into());
                            }
                            last_error = Some(error.to_string());
                        }
                    }
                    Action::Launch { machine, host } => {
                        let name = &names[machine.0 as usize];
                        let host_id = driver.hosts.aws(host).to_owned();
                        let zone = host_zone(&driver, host);
                        match run_on_host(context, group, &host_id, &zone, name).await {
                            Ok(instance) => launched.push((name.clone(), instance)),
                            Err(error) => {
                                if error.healing() == Healing::Never && !error.is_capacity() {
                                    return Err(error.into());
                                }
                                tracing::warn!(%error, machine = %name, "launching onto the host failed; the machine waits again");
                                last_error = Some(error.to_string());
                                driver.policy.handle(
                                    driver.now(),
                                    Event::LaunchFailed { machine },
                                    &mut actions,
                                );
                            }
                        }
                    }
                    Action::Scrub { host } => {
                        let host_id = driver.hosts.aws(host).to_owned();
                        let zone = host_zone(&driver, host);
                        let scrubbed = scrub_host(
                            context.clients,
                            context.journal,
                            region,
                            context.tag,
                            &host_id,
                            &zone,
                            &pool.spec.instance_type,
                        )
                        .await;
                        if let Err(error) = scrubbed {
                            tracing::warn!(%error, host = %host_id, "scrubbing the idle host failed");
                        }
                    }
                    Action::Release { hosts } => {
                        if let Err(error) = driver.release(&hosts, &mut actions).await {
                            tracing::warn!(%error, "releasing hosts failed; the pool tries again");
                        }
                    }
                    Action::Report { machine, reason } => {
                        unserved.push((names[machine.0 as usize].clone(), reason));
                    }
                }
            }
        }
        if !unserved.is_empty() {
            let reason = match unserved[0].1 {
                Unservable::NoZone => {
                    "none of the zones the entry accepts is one of the pool's".to_owned()
                }
                Unservable::WaitedTooLong => "no host came free in time".to_owned(),
            };
            return Err(HostError::Unserved {
                region: region.to_owned(),
                pool: pool.name.clone(),
                machines: unserved.into_iter().map(|(name, _)| name).collect(),
                reason,
            }
            .into());
        }
        if driver.policy.waiting() == 0 && driver.policy.allocations_in_flight() == 0 {
            return Ok(launched);
        }
        if std::time::Instant::now() >= deadline {
            let waiting: Vec<String> = driver
                .policy
                .waiting_machines()
                .map(|(m, _)| names[m.0 as usize].clone())
                .collect();
            let full = driver.policy.host_count() as u32 >= pool.spec.effective_max();
            let reason = match (&last_error, full) {
                (Some(error), _) => format!("no host within the launch deadline; last: {error}"),
                (None, true) => format!(
                    "the pool holds its maximum of {} hosts and none came free within the launch deadline",
                    pool.spec.effective_max()
                ),
                (None, false) => "no host came free within the launch deadline".to_owned(),
            };
            return Err(HostError::Unserved {
                region: region.to_owned(),
                pool: pool.name.clone(),
                machines: waiting,
                reason,
            }
            .into());
        }
        // Waiting: for a scrub to end (seen by describing the hosts) or a zone to cool down.
        let until_timer = driver
            .policy
            .next_deadline()
            .map(|at| Duration::from_secs(at.saturating_sub(driver.now())))
            .unwrap_or(HOST_POLL);
        let wait = until_timer
            .min(HOST_POLL)
            .min(deadline.saturating_duration_since(std::time::Instant::now()));
        sleep_with_jitter(wait).await;
        driver.refresh(&mut actions).await?;
        driver.policy.handle(driver.now(), Event::Tick, &mut actions);
    }
}

fn host_zone(driver: &PoolDriver<'_>, host: HostId) -> String {
    driver
        .policy
        .hosts()
        .find(|(id, _)| *id == host)
        .map(|(_, h)| driver.policy.config().zones[h.zone].name.clone())
        .unwrap_or_default()
}

/// `RunInstances` of machine `name` of `group` onto `host` in `zone`, through the group's
/// launch template, tagged as a fleet's instances are; the caller names it.
pub async fn run_on_host(
    context: &FleetContext<'_>,
    group: &GroupPlan,
    host: &str,
    zone: &str,
    name: &str,
) -> Result<Launched, AwsError> {
    let region = context.region.region.as_str();
    let instance_type = group.instance_types.first().cloned().unwrap_or_default();
    let template = context.settings.templates.get(&instance_type).cloned().ok_or_else(|| {
        AwsError::other(
            region,
            "RunInstances",
            name,
            format!("no launch template for {instance_type}; run create again"),
        )
    })?;
    let subnet = subnet_for(context, zone)
        .await
        .map_err(|e| AwsError::other(region, "RunInstances", name, e.to_string()))?;
    let token = format!("flotilla-{:016x}", rand::rng().random::<u64>());
    let role = match context.settings.role {
        flotilla_core::provider::Role::Binary => "binary",
        flotilla_core::provider::Role::Monitoring => "monitoring",
    };
    let label = format!("flotilla-{}-{}", context.tag, context.group);
    let extra = [(TAG_ROLE, role), (TAG_GROUP, context.group), (TAG_REQUEST, token.as_str())];
    let answer = context
        .clients
        .ec2(region)
        .run_instances()
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(&template)
                .version("$Latest")
                .build(),
        )
        .instance_type(InstanceType::from(instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .client_token(&token)
        .placement(
            Placement::builder()
                .tenancy(Tenancy::Host)
                .host_id(host)
                .availability_zone(zone)
                .build(),
        )
        .network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(&subnet)
                .associate_public_ip_address(true)
                .delete_on_termination(true)
                .set_groups(Some(context.settings.security_groups.clone()))
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Instance, context.tag, &label, &extra))
        .tag_specifications(tag_spec(ResourceType::Volume, context.tag, &label, &extra))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk(region, "RunInstances", format!("{name} on host {host}"), e)
        })?;
    let instance = answer
        .instances()
        .first()
        .ok_or_else(|| AwsError::other(region, "RunInstances", name, "AWS answered no instance"))?;
    let instance_id = instance.instance_id().unwrap_or_default().to_owned();
    tracing::info!(%region, machine = %name, instance = %instance_id, %host, "launched onto the dedicated host");
    Ok(Launched {
        instance_id,
        instance_type,
        zone: zone.to_owned(),
        lifecycle: Lifecycle::OnDemand,
    })
}

/// Scrubs an idle Mac host: an instance launched onto it and terminated at once; AWS then
/// scrubs the host (`pending`, not billed) and makes it `available` again. The instance needs
/// nothing of a machine: the region's image for the host's architecture, the zone's subnet and
/// the deployment's binary security group, all from the journal, and no user data.
pub async fn scrub_host(
    clients: &Clients,
    journal: &Journal,
    region: &str,
    tag: &str,
    host: &str,
    zone: &str,
    instance_type: &str,
) -> Result<(), AwsError> {
    let records = journal.read();
    let record = records.regions.get(region).cloned().unwrap_or_default();
    let missing = |what: &str| {
        AwsError::other(
            region,
            "RunInstances",
            format!("scrub of {host}"),
            format!("no {what} in the journal; run create again"),
        )
    };
    let architecture = flotilla_capacity::guess_architecture(instance_type);
    let keys: Vec<String> = match architecture {
        Some(a) => {
            let name = a.to_string();
            let base = name.trim_end_matches("_mac").to_owned();
            vec![name, base]
        }
        None => Vec::new(),
    };
    let image = keys
        .iter()
        .find_map(|key| record.images.get(key))
        .or_else(|| (record.images.len() == 1).then(|| record.images.values().next()).flatten())
        .ok_or_else(|| missing("image for the host's architecture"))?;
    let subnet = record.subnets.get(zone).ok_or_else(|| missing("subnet in the host's zone"))?;
    let group = record.binary_group_id.as_ref().ok_or_else(|| missing("security group"))?;
    let label = format!("flotilla-{tag}-scrub");
    let answer = clients
        .ec2(region)
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::from(instance_type))
        .min_count(1)
        .max_count(1)
        .placement(
            Placement::builder()
                .tenancy(Tenancy::Host)
                .host_id(host)
                .availability_zone(zone)
                .build(),
        )
        .subnet_id(subnet)
        .security_group_ids(group)
        .tag_specifications(tag_spec(ResourceType::Instance, tag, &label, &[(TAG_ROLE, "scrub")]))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "RunInstances", format!("scrub of {host}"), e))?;
    let ids: Vec<String> =
        answer.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    clients
        .ec2(region)
        .terminate_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "TerminateInstances", ids.join(", "), e))?;
    tracing::info!(%region, %host, "idle host scrubbed");
    Ok(())
}

/// What the pools of a long-running command (`watch`) remember between rounds: each pool's
/// policy, so that idle times and retries carry over.
#[derive(Debug, Default)]
pub struct PoolMemory {
    pools: BTreeMap<(String, String), PoolState>,
}

/// One pool's remembered policy and names.
#[derive(Debug)]
pub struct PoolState {
    policy: HostPool,
    hosts: IdTable<HostId>,
    machines: IdTable<MachineId>,
}

/// One round of `watch` for every pool of `plan`: the hosts described and told to the pool's
/// policy, then the policy ticked and its releases and scrubs made. Returns a line per thing
/// done, for watch's events.
pub async fn tend(
    clients: &Clients,
    journal: &Journal,
    tag: &str,
    plan: &flotilla_core::plan::DeploymentPlan,
    memory: &std::sync::Mutex<PoolMemory>,
) -> Result<Vec<String>, ProviderError> {
    let mut pools: BTreeMap<(String, String), &HostPoolPlan> = BTreeMap::new();
    for group in &plan.groups {
        if let Some(pool) = &group.host_pool {
            pools.insert((group.region.clone(), pool.name.clone()), pool);
        }
    }
    let mut notes = Vec::new();
    for ((region, name), pool) in pools {
        let key = (region.clone(), name.clone());
        let state =
            memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pools.remove(&key);
        let mut driver = PoolDriver::resume(clients, &region, tag, pool, state);
        let mut actions = Vec::new();
        let outcome = async {
            driver.refresh(&mut actions).await?;
            driver.policy.handle(driver.now(), Event::Tick, &mut actions);
            while !actions.is_empty() {
                for action in std::mem::take(&mut actions) {
                    match action {
                        Action::Release { hosts } => {
                            let ids: Vec<String> = hosts.iter().map(|h| driver.hosts.aws(*h).to_owned()).collect();
                            driver.release(&hosts, &mut actions).await?;
                            notes.push(format!("pool {name} ({region}): released or tried to release {}", ids.join(", ")));
                        }
                        Action::Scrub { host } => {
                            let id = driver.hosts.aws(host).to_owned();
                            let zone = host_zone(&driver, host);
                            match scrub_host(clients, journal, &region, tag, &id, &zone, &driver.instance_type).await {
                                Ok(()) => notes.push(format!("pool {name} ({region}): scrubbing idle host {id}")),
                                Err(error) => notes.push(format!("pool {name} ({region}): scrubbing idle host {id} failed: {error}")),
                            }
                        }
                        // No machine is wanted between launches: nothing is allocated or launched.
                        Action::Allocate { .. } | Action::Launch { .. } | Action::Report { .. } => {}
                    }
                }
            }
            Ok::<(), AwsError>(())
        }
        .await;
        memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pools
            .insert(key, driver.into_state());
        outcome?;
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_stable_numbers_for_the_run() {
        let mut ids: IdTable<HostId> = IdTable::starting_at(0);
        let a = ids.of("h-0a");
        let b = ids.of("h-0b");
        assert_ne!(a, b);
        assert_eq!(ids.of("h-0a"), a);
        assert_eq!(ids.aws(b), "h-0b");
    }

    #[test]
    fn a_mac_host_may_go_a_day_after_its_allocation_as_aws_reports_it() {
        let host = DescribedHost {
            id: "h-1".into(),
            region: "us-east-1".into(),
            zone: "us-east-1a".into(),
            instance_type: "mac2.metal".into(),
            state: HostState::Available,
            allocated_at: 1_000,
            instances: Vec::new(),
            pool: None,
        };
        assert_eq!(mac_releasable_at(&host), 1_000 + 24 * 3600);
        assert!(is_mac(&host.instance_type));
        assert!(!is_mac("m7i.metal-24xl"));
    }
}
