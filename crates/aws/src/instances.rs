//! Instances: placing machines in zones, launching them in batches, waiting for them, finding
//! them again.
//!
//! Launches are batched, never one call per machine: the machines of a region that share a
//! type, a zone, a role and a root volume are one `RunInstances` with MinCount = MaxCount = n,
//! tagged at creation. Zones are spread as the deployer spreads them (machine `i` of the plan
//! starts at eligible zone `i mod n`), and machines of one `availability_zone_group` share the
//! first zone that offers all their types.
//!
//! A batch's names are journaled before its call, and each instance is named by its batch and
//! launch index, so a re-run after a crash adopts what was launched and launches nothing twice.
//!
//! Failures follow a written schedule. SDK retries are off for `RunInstances`: a capacity error
//! (`InsufficientInstanceCapacity` and kin) moves the batch to the type's next eligible zone
//! (creating its subnet); after every zone failed, it waits 1 s, doubling to 15 s, ±20 %
//! jitter, and scans again, until [`LAUNCH_DEADLINE`]. A throttling or 5xx answer may hide a
//! launch that happened, so before trying again the batch's tag is looked up; so may an instance
//! profile EC2 does not see yet, for up to [`PROPAGATION_DEADLINE`]. `Unsupported` in every zone
//! of the type is not a shortage and fails. Waits for instances retry throttling and ids not yet
//! visible until their deadline. An error that cannot heal (`UnauthorizedOperation`, a bad
//! parameter or image, a quota: [`Healing::Never`]) ends any of these loops at once, with its
//! code and ids.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceNetworkInterfaceSpecification, InstanceStateName, Placement, ResourceType,
    ShutdownBehavior, VolumeType,
};
use flotilla_core::plan::{DeploymentPlan, MachinePlan};
use flotilla_core::provider::{MachineState, ProviderError, Role};
use rand::Rng;
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::journal::Journal;
use crate::network::{self, RegionPlan, tag_filter, tag_spec};
use crate::records::{Batch, TAG_BATCH, TAG_ROLE};

/// How long a batch may keep looking for capacity.
pub const LAUNCH_DEADLINE: Duration = Duration::from_secs(600);
/// How long an error of eventual consistency (see [`Healing::Propagating`]) may keep a launch
/// waiting: AWS documents such delays in seconds.
pub const PROPAGATION_DEADLINE: Duration = Duration::from_secs(120);
/// When the first look at launched instances happens.
const FIRST_RUNNING_POLL: Duration = Duration::from_secs(3);
/// How long instances may take to run with a public address.
pub const RUNNING_DEADLINE: Duration = Duration::from_secs(600);

/// An instance of the deployment as EC2 describes it.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: String,
    pub region: String,
    pub state: MachineState,
    pub public_ip: Option<IpAddr>,
    pub private_ip: Option<IpAddr>,
    pub batch: Option<String>,
    pub role: Option<Role>,
    pub launch_index: i32,
    pub launch_time: i64,
    /// EC2's reason for the last state change (`StateReason`), e.g.
    /// `Server.SpotInstanceTermination: Spot instance termination`, when it gives one.
    pub state_reason: Option<String>,
}

impl Found {
    /// The machine this instance is: its batch's name at its launch index, when known.
    pub fn name_in<'r>(
        &self,
        records: &'r crate::records::Records,
    ) -> Option<(&'r Batch, &'r str)> {
        records.name_of(self.batch.as_deref()?, self.launch_index)
    }
}

fn machine_state(state: Option<&InstanceStateName>) -> MachineState {
    match state {
        Some(InstanceStateName::Running) => MachineState::Running,
        Some(InstanceStateName::Pending) => MachineState::Pending,
        Some(InstanceStateName::ShuttingDown) => MachineState::ShuttingDown,
        Some(InstanceStateName::Terminated) => MachineState::Terminated,
        _ => MachineState::Stopped,
    }
}

fn found_from(region: &str, instance: &aws_sdk_ec2::types::Instance) -> Option<Found> {
    let tag = |key: &str| {
        instance
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    Some(Found {
        id: instance.instance_id()?.to_owned(),
        region: region.to_owned(),
        state: machine_state(instance.state().and_then(|s| s.name())),
        public_ip: instance.public_ip_address().and_then(|ip| ip.parse().ok()),
        private_ip: instance.private_ip_address().and_then(|ip| ip.parse().ok()),
        batch: tag(TAG_BATCH),
        role: tag(TAG_ROLE).and_then(|r| match r.as_str() {
            "monitoring" => Some(Role::Monitoring),
            "binary" => Some(Role::Binary),
            _ => None,
        }),
        launch_index: instance.ami_launch_index().unwrap_or(0),
        launch_time: instance.launch_time().map(|t| t.secs()).unwrap_or(0),
        state_reason: instance.state_reason().and_then(state_reason),
    })
}

/// `<code>: <message>` of EC2's state reason, or whichever of the two it gave.
fn state_reason(reason: &aws_sdk_ec2::types::StateReason) -> Option<String> {
    let code = reason.code().map(str::trim).filter(|c| !c.is_empty());
    let message = reason.message().map(str::trim).filter(|m| !m.is_empty());
    match (code, message) {
        // EC2's messages usually repeat the code: `Client.UserInitiatedShutdown: User …`.
        (Some(code), Some(message)) if message.starts_with(code) => Some(message.to_owned()),
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (Some(only), None) | (None, Some(only)) => Some(only.to_owned()),
        (None, None) => None,
    }
}

/// Every instance of deployment `tag` in `region` that is not terminated, optionally only those
/// of one batch or with given ids. Follows pagination.
pub async fn describe(
    clients: &Clients,
    region: &str,
    tag: &str,
    batch: Option<&str>,
    ids: Option<&[String]>,
) -> Result<Vec<Found>, AwsError> {
    let ec2 = clients.ec2(region);
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request =
            ec2.describe_instances().filters(tag_filter(tag)).set_next_token(token.clone());
        // Terminated instances linger in answers for an hour: leave them out of a search, but
        // not of a look at given ids, whose waiter must see an instance that ended (and why).
        if ids.is_none() {
            request = request.filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .values("shutting-down")
                    .build(),
            );
        }
        if let Some(batch) = batch {
            request = request
                .filters(Filter::builder().name(format!("tag:{TAG_BATCH}")).values(batch).build());
        }
        if let Some(ids) = ids {
            request = request.set_instance_ids(Some(ids.to_vec()));
        }
        let page = request.send().await.map_err(|e| {
            AwsError::from_sdk(region, "DescribeInstances", format!("deployment {tag}"), e)
        })?;
        for reservation in page.reservations() {
            // The tag is checked here too: terminating another deployment's instance because a
            // filter was ignored must not be possible.
            found.extend(
                reservation
                    .instances()
                    .iter()
                    .filter(|i| crate::teardown::tagged(i.tags(), tag))
                    .filter_map(|i| found_from(region, i)),
            );
        }
        token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if token.is_none() {
            if let Some(batch) = batch {
                found.retain(|f| f.batch.as_deref() == Some(batch));
            }
            return Ok(found);
        }
    }
}

/// Everything a launch needs to know, worked out by `prepare`.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    pub tag: String,
    pub profile_name: String,
    /// Region → its network plan.
    pub regions: HashMap<String, RegionPlan>,
    /// Instance type → architecture (`x86_64`, `arm64`).
    pub architectures: HashMap<String, String>,
    /// Architecture → user data (base64).
    pub user_data: HashMap<String, String>,
    /// Region → instance type → zones offering it, sorted.
    pub offerings: HashMap<String, HashMap<String, Vec<String>>>,
    /// Machine name → its zone.
    pub zones: HashMap<String, String>,
}

/// Spreads machines over zones as the deployer does; grouped machines share a zone.
pub fn assign_zones(
    machines: &[MachinePlan],
    offerings: &HashMap<String, HashMap<String, Vec<String>>>,
) -> Result<HashMap<String, String>, String> {
    let mut groups: HashMap<(String, String), String> = HashMap::new();
    // Each group's zone: the first (sorted) offering every type of the group.
    let mut group_types: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for machine in machines {
        if let Some(group) = &machine.availability_zone_group {
            group_types
                .entry((machine.region.clone(), group.clone()))
                .or_default()
                .push(DeploymentPlan::first_type(machine).to_owned());
        }
    }
    for ((region, group), types) in group_types {
        let offered = offerings.get(&region).ok_or_else(|| format!("no offerings for {region}"))?;
        let mut candidates: Vec<String> = offered.get(&types[0]).cloned().unwrap_or_default();
        candidates
            .retain(|zone| types.iter().all(|t| offered.get(t).is_some_and(|z| z.contains(zone))));
        let zone = candidates.first().cloned().ok_or_else(|| {
            format!("{region}: no availability zone offers every type of availability_zone_group `{group}` ({})", types.join(", "))
        })?;
        groups.insert((region, group), zone);
    }
    let mut zones = HashMap::new();
    for (index, machine) in machines.iter().enumerate() {
        let zone = match &machine.availability_zone_group {
            Some(group) => groups[&(machine.region.clone(), group.clone())].clone(),
            None => {
                let eligible = offerings
                    .get(&machine.region)
                    .and_then(|o| o.get(DeploymentPlan::first_type(machine)))
                    .filter(|z| !z.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "{}: no availability zone offers {}",
                            machine.region,
                            DeploymentPlan::first_type(machine)
                        )
                    })?;
                eligible[index % eligible.len()].clone()
            }
        };
        zones.insert(machine.name.clone(), zone);
    }
    Ok(zones)
}

/// Groups machines that can share one `RunInstances`.
pub fn plan_batches(machines: &[&MachinePlan], zones: &HashMap<String, String>) -> Vec<Batch> {
    let mut batches: Vec<(BatchKey, Batch)> = Vec::new();
    for machine in machines {
        let key = BatchKey::of(machine, &zones[&machine.name]);
        match batches.iter_mut().find(|(k, _)| *k == key) {
            Some((_, batch)) => batch.names.push(machine.name.clone()),
            None => {
                let id = format!("b{:08x}", rand::rng().random::<u32>());
                batches.push((
                    key,
                    Batch {
                        id,
                        region: machine.region.clone(),
                        role: machine.role,
                        instance_type: DeploymentPlan::first_type(machine).to_owned(),
                        availability_zone: zones[&machine.name].clone(),
                        names: vec![machine.name.clone()],
                    },
                ));
            }
        }
    }
    batches.into_iter().map(|(_, batch)| batch).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct BatchKey {
    region: String,
    role: Role,
    instance_type: String,
    zone: String,
    storage: (i32, String, Option<i32>, Option<i32>),
}

impl BatchKey {
    fn of(machine: &MachinePlan, zone: &str) -> BatchKey {
        BatchKey {
            region: machine.region.clone(),
            role: machine.role,
            instance_type: DeploymentPlan::first_type(machine).to_owned(),
            zone: zone.to_owned(),
            storage: (
                machine.storage_size,
                machine.storage_class.clone(),
                machine.storage_iops,
                machine.storage_throughput,
            ),
        }
    }
}

/// Launches `batch` (whose names are journaled), moving zones on capacity errors. Returns the
/// instance ids.
pub async fn run_batch(
    clients: &Clients,
    journal: &Journal,
    settings: &LaunchSettings,
    batch: &Batch,
    machine: &MachinePlan,
) -> Result<Vec<String>, ProviderError> {
    let region = batch.region.as_str();
    let plan = &settings.regions[region];
    let architecture = &settings.architectures[&batch.instance_type];
    let zones = settings.offerings[region].get(&batch.instance_type).cloned().unwrap_or_default();
    let grouped = machine.availability_zone_group.is_some();
    let deadline = Instant::now() + LAUNCH_DEADLINE;
    let mut backoff = Duration::from_secs(1);
    let mut zone = batch.availability_zone.clone();
    let mut failed_zones: Vec<String> = Vec::new();
    // Whether every zone of this scan refused with `Unsupported` (not a shortage: the type).
    let mut only_unsupported = true;
    let mut propagating_since: Option<Instant> = None;
    loop {
        let subnet = subnet_for(clients, journal, settings, plan, &zone).await?;
        let records = journal.read();
        let record = &records.regions[region];
        let group = match batch.role {
            Role::Binary => record.binary_group_id.clone(),
            Role::Monitoring => record.monitoring_group_id.clone(),
        }
        .ok_or_else(|| {
            ProviderError::new(format!("{region}: the security group is missing; run create again"))
        })?;
        let image = record.images.get(architecture).cloned().ok_or_else(|| {
            ProviderError::new(format!(
                "{region}: no Ubuntu image for {architecture}; run create again"
            ))
        })?;
        let count = batch.names.len() as i32;
        let result = clients
            .ec2(region)
            .run_instances()
            .image_id(image)
            .instance_type(batch.instance_type.as_str().into())
            .min_count(count)
            .max_count(count)
            .placement(Placement::builder().availability_zone(&zone).build())
            .network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(&subnet)
                    .groups(group)
                    .associate_public_ip_address(true)
                    .delete_on_termination(true)
                    .build(),
            )
            .iam_instance_profile(
                IamInstanceProfileSpecification::builder().name(&settings.profile_name).build(),
            )
            .user_data(&settings.user_data[architecture])
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_put_response_hop_limit(1)
                    .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .block_device_mappings(root_volume(machine))
            .tag_specifications(instance_tags(&settings.tag, batch, ResourceType::Instance))
            .tag_specifications(instance_tags(&settings.tag, batch, ResourceType::Volume))
            .customize()
            .config_override(crate::clients::no_retries())
            .send()
            .await;
        let error = match result {
            Ok(answer) => {
                return Ok(answer
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_owned))
                    .collect());
            }
            Err(e) => AwsError::from_sdk(
                region,
                "RunInstances",
                format!("{} × {} in {zone}", count, batch.instance_type),
                e,
            ),
        };
        let healing = error.healing();
        if healing == Healing::Never {
            return Err(error.into());
        }
        if Instant::now() >= deadline {
            return Err(ProviderError::with_source(
                format!(
                    "gave up launching {} after {}: {error}",
                    batch.names.join(", "),
                    humantime::format_duration(LAUNCH_DEADLINE)
                ),
                error,
            ));
        }
        if healing == Healing::Capacity {
            tracing::warn!(%error, "no capacity; trying another zone");
            failed_zones.push(zone.clone());
            only_unsupported &= error.code_is("Unsupported");
            let next = if grouped {
                None
            } else {
                zones.iter().find(|z| !failed_zones.contains(z)).cloned()
            };
            match next {
                Some(next) => zone = next,
                None if only_unsupported => {
                    // Every zone said the type is not supported there: waiting will not help.
                    return Err(ProviderError::with_source(
                        format!(
                            "{region}: no zone supports launching {} × {} ({}); choose another type or region",
                            count,
                            batch.instance_type,
                            failed_zones.join(", ")
                        ),
                        error,
                    ));
                }
                None => {
                    // Every zone refused: wait, then scan again from the batch's own zone.
                    sleep_with_jitter(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                    failed_zones.clear();
                    only_unsupported = true;
                    zone = batch.availability_zone.clone();
                }
            }
            journal.update(|r| {
                if let Some(b) = r.batches.iter_mut().find(|b| b.id == batch.id) {
                    b.availability_zone = zone.clone();
                }
            })?;
            continue;
        }
        // Transient or propagating. A new instance profile EC2 does not see yet heals within
        // seconds; one that stays invisible for PROPAGATION_DEADLINE is not coming.
        if healing == Healing::Propagating {
            let since = *propagating_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= PROPAGATION_DEADLINE {
                return Err(ProviderError::with_source(
                    format!(
                        "{region}: still refused after {}: {error}",
                        humantime::format_duration(PROPAGATION_DEADLINE)
                    ),
                    error,
                ));
            }
        }
        // The launch may have happened: look before trying again.
        let launched = describe(clients, region, &settings.tag, Some(&batch.id), None).await?;
        if !launched.is_empty() {
            return Ok(launched.into_iter().map(|f| f.id).collect());
        }
        tracing::warn!(%error, "RunInstances failed; trying again");
        sleep_with_jitter(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

async fn subnet_for(
    clients: &Clients,
    journal: &Journal,
    settings: &LaunchSettings,
    plan: &RegionPlan,
    zone: &str,
) -> Result<String, ProviderError> {
    let records = journal.read();
    let record = &records.regions[&plan.region];
    if let Some(subnet) = record.subnets.get(zone) {
        return Ok(subnet.clone());
    }
    let vpc = record.vpc_id.clone().ok_or_else(|| {
        ProviderError::new(format!("{}: the VPC is missing; run create again", plan.region))
    })?;
    let subnet =
        network::create_subnet(clients, &plan.region, &settings.tag, &vpc, plan, zone).await?;
    journal.update(|r| r.region(&plan.region).subnets.insert(zone.to_owned(), subnet.clone()))?;
    Ok(subnet)
}

async fn sleep_with_jitter(delay: Duration) {
    let jitter = rand::rng().random_range(0.8..1.2);
    tokio::time::sleep(delay.mul_f64(jitter)).await;
}

fn instance_tags(
    tag: &str,
    batch: &Batch,
    resource: ResourceType,
) -> aws_sdk_ec2::types::TagSpecification {
    let role = match batch.role {
        Role::Binary => "binary",
        Role::Monitoring => "monitoring",
    };
    tag_spec(
        resource,
        tag,
        &format!("flotilla-{tag}-{role}"),
        &[(TAG_BATCH, &batch.id), (TAG_ROLE, role)],
    )
}

fn root_volume(machine: &MachinePlan) -> BlockDeviceMapping {
    let mut ebs = EbsBlockDevice::builder()
        .volume_size(machine.storage_size)
        .volume_type(VolumeType::from(machine.storage_class.as_str()))
        .delete_on_termination(true);
    if let Some(iops) = machine.storage_iops {
        ebs = ebs.iops(iops);
    }
    if let Some(throughput) = machine.storage_throughput {
        ebs = ebs.throughput(throughput);
    }
    BlockDeviceMapping::builder().device_name("/dev/sda1").ebs(ebs.build()).build()
}

/// Waits until every instance in `ids` of `region` runs with a public address; returns them.
/// Polls 3 s after the launch (an instance is rarely running sooner; +0–10 % jitter), then 1 s
/// later, then every 1.5× longer up to 5 s, ±20 % jitter.
pub async fn wait_running(
    clients: &Clients,
    region: &str,
    tag: &str,
    ids: &[String],
) -> Result<Vec<Found>, ProviderError> {
    let deadline = Instant::now() + RUNNING_DEADLINE;
    let mut delay = FIRST_RUNNING_POLL;
    loop {
        if delay == FIRST_RUNNING_POLL {
            // Jitter only later: an early first look finds instances still pending.
            let first = delay.mul_f64(rand::rng().random_range(1.0..1.1));
            tokio::time::sleep(first).await;
        } else {
            sleep_with_jitter(delay).await;
        }
        let mut found = Vec::new();
        let mut looked = Ok(());
        for chunk in ids.chunks(1000) {
            match describe(clients, region, tag, None, Some(chunk)).await {
                Ok(some) => found.extend(some),
                Err(error) => {
                    looked = Err(error);
                    break;
                }
            }
        }
        if let Err(error) = looked {
            // New ids are not visible to every call at once; throttling passes.
            if !can_wait_out(&error) || Instant::now() >= deadline {
                return Err(error.into());
            }
            tracing::debug!(%error, "describing new instances; trying again");
            delay = next_running_poll(delay);
            continue;
        }
        if let Some(gone) = found
            .iter()
            .find(|f| matches!(f.state, MachineState::ShuttingDown | MachineState::Terminated))
        {
            let reason = gone.state_reason.as_deref().unwrap_or("EC2 gave no reason");
            return Err(ProviderError::new(format!(
                "{region}: instance {} ended while starting ({}: {reason})",
                gone.id,
                gone.state.as_str()
            )));
        }
        let ready = found.len() == ids.len()
            && found.iter().all(|f| f.state == MachineState::Running && f.public_ip.is_some());
        if ready {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<&str> = ids
                .iter()
                .filter(|id| {
                    !found.iter().any(|f| &f.id == *id && f.state == MachineState::Running)
                })
                .map(String::as_str)
                .collect();
            return Err(ProviderError::new(format!(
                "{region}: instances {} did not run with a public address within {}",
                waiting.join(", "),
                humantime::format_duration(RUNNING_DEADLINE)
            )));
        }
        delay = next_running_poll(delay);
    }
}

/// The poll after one `delay` long: 1 s after the first, then 1.5× longer up to 5 s.
fn next_running_poll(delay: Duration) -> Duration {
    if delay == FIRST_RUNNING_POLL {
        Duration::from_secs(1)
    } else {
        (delay * 3 / 2).min(Duration::from_secs(5))
    }
}

/// Whether a wait may call again after `error`: throttling and eventual consistency pass, an
/// error that cannot heal ends the wait at once.
fn can_wait_out(error: &AwsError) -> bool {
    matches!(error.healing(), Healing::Transient | Healing::Propagating)
}

/// Terminates every instance of the deployment in `region` and waits until they are gone.
pub async fn terminate_all(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<usize, ProviderError> {
    let found = describe(clients, region, tag, None, None).await?;
    let ids: Vec<String> = found
        .iter()
        .filter(|f| f.state != MachineState::Terminated)
        .map(|f| f.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    for chunk in ids.chunks(1000) {
        clients
            .ec2(region)
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(
                    region,
                    "TerminateInstances",
                    format!("{} instances", chunk.len()),
                    e,
                )
            })?;
    }
    let deadline = Instant::now() + RUNNING_DEADLINE;
    let mut delay = Duration::from_secs(1);
    loop {
        sleep_with_jitter(delay).await;
        let left = match describe(clients, region, tag, None, None).await {
            Ok(left) => left,
            Err(error) if can_wait_out(&error) && Instant::now() < deadline => {
                tracing::debug!(%error, "describing terminating instances; trying again");
                delay = (delay * 3 / 2).min(Duration::from_secs(5));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if left.is_empty() {
            return Ok(ids.len());
        }
        if Instant::now() >= deadline {
            return Err(ProviderError::new(format!(
                "{region}: {} instances did not terminate within {}",
                left.len(),
                humantime::format_duration(RUNNING_DEADLINE)
            )));
        }
        delay = (delay * 3 / 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, region: &str, instance_type: &str, group: Option<&str>) -> MachinePlan {
        MachinePlan {
            name: name.into(),
            role: Role::Binary,
            region: region.into(),
            instance_types: vec![instance_type.into()],
            requirements: None,
            market: flotilla_spec::capacity::Market::OnDemand,
            zones: Vec::new(),
            storage_size: 10,
            storage_class: "gp3".into(),
            storage_iops: None,
            storage_throughput: None,
            availability_zone_group: group.map(str::to_owned),
            instance_index: Some(0),
        }
    }

    fn offerings() -> HashMap<String, HashMap<String, Vec<String>>> {
        let zones = |list: &[&str]| list.iter().map(|z| (*z).to_owned()).collect::<Vec<_>>();
        HashMap::from([(
            "r".to_owned(),
            HashMap::from([
                ("a.large".to_owned(), zones(&["r-a", "r-b", "r-c"])),
                ("b.large".to_owned(), zones(&["r-b", "r-c"])),
            ]),
        )])
    }

    #[test]
    fn an_instance_carries_ec2s_state_reason() {
        use aws_sdk_ec2::types::{Instance, InstanceState, StateReason, Tag};
        let instance = |reason: Option<StateReason>| {
            Instance::builder()
                .instance_id("i-0123")
                .state(InstanceState::builder().name(InstanceStateName::Stopped).build())
                .set_state_reason(reason)
                .tags(Tag::builder().key(TAG_BATCH).value("b1").build())
                .build()
        };
        let spot = StateReason::builder()
            .code("Server.SpotInstanceTermination")
            .message("Server.SpotInstanceTermination: Spot instance termination")
            .build();
        let found = found_from("r", &instance(Some(spot))).unwrap();
        assert_eq!(
            found.state_reason.as_deref(),
            Some("Server.SpotInstanceTermination: Spot instance termination")
        );
        assert_eq!(found.state, MachineState::Stopped);
        let bare =
            StateReason::builder().code("Server.InternalError").message("boot failed").build();
        let found = found_from("r", &instance(Some(bare))).unwrap();
        assert_eq!(found.state_reason.as_deref(), Some("Server.InternalError: boot failed"));
        let empty = StateReason::builder().code("").message("").build();
        assert_eq!(found_from("r", &instance(Some(empty))).unwrap().state_reason, None);
        assert_eq!(found_from("r", &instance(None)).unwrap().state_reason, None);
    }

    #[test]
    fn zones_spread_round_robin_and_groups_share_one() {
        let machines = [
            machine("m0", "r", "a.large", None),
            machine("m1", "r", "a.large", None),
            machine("m2", "r", "a.large", None),
            machine("m3", "r", "a.large", None),
            machine("g0", "r", "a.large", Some("g")),
            machine("g1", "r", "b.large", Some("g")),
        ];
        let zones = assign_zones(&machines, &offerings()).unwrap();
        assert_eq!(zones["m0"], "r-a");
        assert_eq!(zones["m1"], "r-b");
        assert_eq!(zones["m2"], "r-c");
        assert_eq!(zones["m3"], "r-a");
        assert_eq!(zones["g0"], "r-b", "the first zone offering both types");
        assert_eq!(zones["g1"], "r-b");
    }

    #[test]
    fn a_group_no_zone_can_hold_is_refused() {
        let machines =
            [machine("g0", "r", "a.large", Some("g")), machine("g1", "r", "c.large", Some("g"))];
        let error = assign_zones(&machines, &offerings()).unwrap_err();
        assert!(error.contains("availability_zone_group `g`"), "{error}");
    }

    #[test]
    fn batches_group_by_type_zone_and_volume_in_plan_order() {
        let machines = [
            machine("m0", "r", "a.large", None),
            machine("m1", "r", "a.large", None),
            machine("m2", "r", "a.large", None),
            machine("m3", "r", "b.large", None),
        ];
        let zones: HashMap<String, String> =
            [("m0", "r-a"), ("m1", "r-a"), ("m2", "r-b"), ("m3", "r-a")]
                .iter()
                .map(|(n, z)| ((*n).into(), (*z).into()))
                .collect();
        let refs: Vec<&MachinePlan> = machines.iter().collect();
        let batches = plan_batches(&refs, &zones);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].names, ["m0", "m1"]);
        assert_eq!(batches[1].names, ["m2"]);
        assert_eq!(batches[2].names, ["m3"]);
        assert_ne!(batches[0].id, batches[1].id);
    }
}
