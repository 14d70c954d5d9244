//! `launch` and `machines`: which instance is which machine, and the missing machines launched
//! as flotilla-capacity's launch planner directs.
//!
//! 1. **What exists.** In every region where the deployment may have instances (the journal
//!    names one of its machines there, or marked the region `launching` before its first fleet
//!    request), the deployment's instances are described by tag. A running (or pending)
//!    instance is the machine the journal names for its id, else the one its
//!    [`TAG_MACHINE`] tag names; an instance of a group that has neither (a crash came between
//!    `CreateFleet`'s answer and the journal) takes the group's first missing name. Nothing is
//!    launched for a machine that exists, so nothing is launched twice.
//! 2. **Launch.** Each group with missing machines runs its own
//!    [`LaunchPlanner`](flotilla_capacity::LaunchPlanner) (groups at once), with one
//!    unavailable-offerings cache shared by every group of the command and the launch deadline;
//!    each [`Step::Launch`] is made as `CreateFleet`s ([`crate::fleet`]), each answer recorded;
//!    each [`Step::Wait`] is slept (with up to 10 % jitter). Launched instances take the group's
//!    missing names in order: the names are journaled first, then each instance is tagged with
//!    its name. Every planner event goes to the log (`-v`); each group's summary is a notice.
//!    A machine whose journaled instance is gone or ending (terminated, shutting down,
//!    stopped: a spot reclaim, a retirement) is missing like one never launched: a new
//!    instance, with a new id, is launched under its name, and the old instance's identity
//!    object is deleted.
//!    A group on a dedicated host pool (`host_pool:`) launches through [`crate::hosts`]
//!    instead: the pool's policy allocates hosts and puts one machine on each.
//! 3. **Wait** until every machine runs with a public address, and hand them over in plan
//!    order, each with its placement (type, zone, market, price).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::Tag;
use flotilla_capacity::launch::{Event, LaunchFailure};
use flotilla_capacity::unavailable::quota_family;
use flotilla_capacity::{
    ErrorClass, GroupLaunch, LaunchPlanner, Launched, Lifecycle, PriceBook, Step, TypeOrder,
    UnavailableOfferings, classify,
};
use flotilla_core::plan::{DeploymentPlan, GroupPlan};
use flotilla_core::progress::{Progress, Stage};
use flotilla_core::provider::{ErrorKind, Machine, MachineState, Placement, ProviderError, Role};
use flotilla_spec::bootstrap::DEFAULT_API_PORT;
use flotilla_spec::names::ec2_name_tag;
use rand::Rng;

use crate::AwsProvider;
use crate::error::{AwsError, Healing, kind_of_code};
use crate::fanout::{Concurrency, fan_out};
use crate::fleet::{FleetContext, create_fleet};
use crate::guard::check_reachable;
use crate::instances::{Found, describe, sleep_with_jitter, wait_running};
use crate::prepare::LaunchSettings;
use crate::records::{MachineRecord, Records};
use crate::tags::{TAG_MACHINE, tag_of};
use crate::userdata;

/// How long tagging an instance with its name may wait for EC2 to see the instance.
const TAGGING_DEADLINE: Duration = Duration::from_secs(60);

/// One machine named: which instance it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    pub name: String,
    pub record: MachineRecord,
    /// The tags of the machine's data disk volumes beside the deployment's, by device.
    pub volume_tags: Vec<(String, Vec<(String, String)>)>,
}

/// What step 1 found: machines and their instances, and names to journal and tag.
#[derive(Debug, Default)]
pub struct Sorted {
    pub named: BTreeMap<String, Found>,
    /// Names known from a tag only, or adopted: journaled and tagged before anything launches.
    pub to_name: Vec<Naming>,
}

/// Step 1 (see the module documentation), on what `describe` found.
pub fn sort_found(plan: &DeploymentPlan, records: &Records, mut found: Vec<Found>) -> Sorted {
    let planned: BTreeMap<&str, &GroupPlan> = plan
        .groups
        .iter()
        .flat_map(|g| g.machines.iter().map(move |name| (name.as_str(), g)))
        .collect();
    // The oldest first: when two instances claim one name, the first launched keeps it.
    found.sort_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
    let mut sorted = Sorted::default();
    let mut unnamed: BTreeMap<(String, String), Vec<Found>> = BTreeMap::new();
    for instance in
        found.into_iter().filter(Found::alive).filter(|f| !records.retiring.contains(&f.id))
    {
        match instance.name_in(records).map(str::to_owned) {
            Some(name)
                if planned.get(name.as_str()).is_some_and(|g| g.region == instance.region)
                    && !sorted.named.contains_key(&name) =>
            {
                let journaled = records.machines.get(&name).map(|m| m.instance_id.as_str());
                if journaled != Some(instance.id.as_str()) {
                    let group = planned[name.as_str()];
                    sorted.to_name.push(naming(&name, group, &instance.id));
                }
                sorted.named.insert(name, instance);
            }
            Some(name) => {
                tracing::warn!(instance = %instance.id, region = %instance.region, %name, "an instance of this deployment is a machine the plan does not need; destroy removes it");
            }
            None => match instance.group.clone() {
                Some(group) => {
                    unnamed.entry((instance.region.clone(), group)).or_default().push(instance);
                }
                None => {
                    tracing::warn!(instance = %instance.id, region = %instance.region, "an instance of this deployment has no group; destroy removes it");
                }
            },
        }
    }
    for group in &plan.groups {
        let Some(pool) = unnamed.remove(&(group.region.clone(), group.name.clone())) else {
            continue;
        };
        let missing: Vec<&String> =
            group.machines.iter().filter(|name| !sorted.named.contains_key(*name)).collect();
        let mut pool = pool.into_iter();
        for name in missing {
            let Some(instance) = pool.next() else { break };
            tracing::info!(instance = %instance.id, %name, "adopting an instance launched before a crash");
            sorted.to_name.push(naming(name, group, &instance.id));
            sorted.named.insert(name.clone(), instance);
        }
        for instance in pool {
            tracing::warn!(instance = %instance.id, group = %group.name, "an unnamed instance the group does not need; destroy removes it");
        }
    }
    sorted
}

fn naming(name: &str, group: &GroupPlan, instance_id: &str) -> Naming {
    Naming {
        name: name.to_owned(),
        record: MachineRecord {
            region: group.region.clone(),
            role: group.role,
            group: group.name.clone(),
            instance_id: instance_id.to_owned(),
        },
        volume_tags: group
            .disks
            .keys()
            .map(|device| (device.clone(), crate::disks::volume_tags(group, device)))
            .collect(),
    }
}

/// Marks the spot pool of every instance that EC2 reclaimed (state reason
/// `Server.SpotInstanceTermination`) in the provider's unavailable-offerings cache, so the
/// replacement asks other pools first (flotilla-capacity's `record_reclaim`).
pub(crate) fn note_reclaims(provider: &AwsProvider, found: &[Found]) {
    let now = std::time::Instant::now();
    let mut cache = provider.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for instance in found
        .iter()
        .filter(|f| f.lifecycle == Lifecycle::Spot && is_reclaim(f.state_reason.as_deref()))
    {
        let pool = flotilla_capacity::Pool {
            lifecycle: Lifecycle::Spot,
            instance_type: instance.instance_type.clone(),
            zone: instance.zone.clone(),
        };
        tracing::info!(instance = %instance.id, %pool, "a reclaimed spot pool is not asked again for a while");
        cache.record_reclaim(&pool, now);
    }
}

/// Whether EC2's state reason says a spot interruption ended the instance.
pub(crate) fn is_reclaim(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.contains("SpotInstanceTermination"))
}

/// Journals `namings`, then tags each instance with its name.
async fn name_instances(provider: &AwsProvider, namings: &[Naming]) -> Result<(), ProviderError> {
    if namings.is_empty() {
        return Ok(());
    }
    provider.journal.update(|r| {
        for naming in namings {
            r.machines.insert(naming.name.clone(), naming.record.clone());
        }
    })?;
    fan_out(Concurrency::INSTANCES, namings.iter().map(|naming| tag_instance(provider, naming)))
        .await?;
    Ok(())
}

async fn tag_instance(provider: &AwsProvider, naming: &Naming) -> Result<(), ProviderError> {
    let region = &naming.record.region;
    let id = &naming.record.instance_id;
    let tags: Vec<Tag> = vec![
        tag_of(TAG_MACHINE, &naming.name),
        tag_of("Name", &ec2_name_tag(&format!("flotilla-{}-{}", provider.tag, naming.name))),
    ];
    create_tags(provider, region, id, &tags).await?;
    if !naming.volume_tags.is_empty() {
        tag_data_disks(provider, naming).await?;
    }
    Ok(())
}

/// Tags each data disk volume of a new machine with its machine, device, mount point and
/// label: a launch template tags every volume alike, so a disk's own tags come after. A volume
/// EC2 does not show yet is asked for again, up to [`TAGGING_DEADLINE`].
async fn tag_data_disks(provider: &AwsProvider, naming: &Naming) -> Result<(), ProviderError> {
    let region = &naming.record.region;
    let id = &naming.record.instance_id;
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    let volumes = loop {
        let answer = provider
            .clients
            .ec2(region)
            .describe_volumes()
            .filters(crate::tags::filter("attachment.instance-id", id))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "DescribeVolumes", id, e))?;
        let by_device: BTreeMap<String, String> = answer
            .volumes()
            .iter()
            .filter_map(|volume| {
                let device = volume
                    .attachments()
                    .iter()
                    .find(|a| a.instance_id() == Some(id.as_str()))?
                    .device()?;
                Some((device.to_owned(), volume.volume_id()?.to_owned()))
            })
            .collect();
        let missing: Vec<&str> = naming
            .volume_tags
            .iter()
            .map(|(device, _)| device.as_str())
            .filter(|device| !by_device.contains_key(*device))
            .collect();
        if missing.is_empty() {
            break by_device;
        }
        if started.elapsed() >= TAGGING_DEADLINE {
            return Err(AwsError::other(
                region,
                "DescribeVolumes",
                id,
                format!(
                    "the data disks at {} of {} are not attached",
                    missing.join(", "),
                    naming.name
                ),
            )
            .into());
        }
        sleep_with_jitter(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    for (device, extra) in &naming.volume_tags {
        let mut tags = vec![tag_of(TAG_MACHINE, &naming.name)];
        tags.extend(extra.iter().map(|(key, value)| tag_of(key, value)));
        create_tags(provider, region, &volumes[device], &tags).await?;
    }
    Ok(())
}

/// CreateTags on one resource, asked again while EC2 does not know the new resource yet.
async fn create_tags(
    provider: &AwsProvider,
    region: &str,
    id: &str,
    tags: &[Tag],
) -> Result<(), ProviderError> {
    let tags = tags.to_vec();
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        let result = provider
            .clients
            .ec2(region)
            .create_tags()
            .resources(id)
            .set_tags(Some(tags.clone()))
            .send()
            .await;
        let error = match result {
            Ok(_) => return Ok(()),
            Err(e) => AwsError::from_sdk(region, "CreateTags", id, e),
        };
        let healing = error.healing();
        if matches!(healing, Healing::Propagating | Healing::Transient)
            && started.elapsed() < TAGGING_DEADLINE
        {
            tracing::debug!(%error, "tagging a new instance; trying again");
            sleep_with_jitter(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue;
        }
        return Err(error.into());
    }
}

/// `launch`: steps 1 to 3 of the module documentation.
pub async fn launch(
    provider: &AwsProvider,
    settings: &LaunchSettings,
    plan: &DeploymentPlan,
    progress: &dyn Progress,
) -> Result<Vec<Machine>, ProviderError> {
    let clients = &provider.clients;
    let tag = provider.tag.as_str();
    let stage = progress.stage("launching instances", plan.machines.len() as u64);

    // 1. What exists.
    let records = provider.journal.read();
    let look: Vec<String> = plan
        .regions()
        .into_iter()
        .filter(|region| {
            records.regions.get(region).is_some_and(|r| r.launching)
                || records.machines.values().any(|m| &m.region == region)
        })
        .collect();
    let found: Vec<Found> = fan_out(
        Concurrency::REGIONS,
        look.iter().map(|region| describe(clients, region, tag, None, None)),
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    let alive: BTreeSet<String> =
        found.iter().filter(|f| f.alive()).map(|f| f.id.clone()).collect();
    note_reclaims(provider, &found);
    let Sorted { mut named, to_name } = sort_found(plan, &records, found);
    // Machines the journal names whose instance is gone or ending (a reclaimed spot instance,
    // a retired one, one that stopped): a new instance is launched under each name below, and
    // the old instance's identity object is deleted once it has.
    let replaced: Vec<(String, String)> = plan
        .machines
        .iter()
        .filter(|m| !named.contains_key(&m.name))
        .filter_map(|m| Some((m.name.clone(), records.machines.get(&m.name)?.instance_id.clone())))
        .filter(|(_, id)| !alive.contains(id))
        .collect();
    for (name, id) in &replaced {
        tracing::info!(machine = %name, instance = %id, "the machine's instance is gone; launching a new one under its name");
    }
    name_instances(provider, &to_name).await?;
    stage.advance(named.len() as u64);

    // 2. Launch the missing machines, group by group.
    let missing: Vec<(&GroupPlan, Vec<String>)> = plan
        .groups
        .iter()
        .map(|group| {
            let names: Vec<String> =
                group.machines.iter().filter(|n| !named.contains_key(*n)).cloned().collect();
            (group, names)
        })
        .filter(|(_, names)| !names.is_empty())
        .collect();
    let launching: Vec<String> = missing.iter().map(|(g, _)| g.region.clone()).collect();
    if !launching.is_empty() {
        provider.journal.update(|r| {
            for region in &launching {
                r.region(region).launching = true;
            }
        })?;
    }
    let deadline = std::time::Instant::now() + provider.launch_deadline();
    let stage_ref: &dyn Stage = stage.as_ref();
    let cache_ref = &provider.unavailable;
    let named_ref = &named;
    let launched: Vec<(String, Launched)> = fan_out(
        Concurrency::GROUPS,
        missing.into_iter().map(|(group, names)| async move {
            let group_settings = settings.groups.get(&group.name).ok_or_else(|| {
                ProviderError::new(format!("group {} was not prepared", group.name))
            })?;
            let context = FleetContext {
                clients,
                journal: &provider.journal,
                tag,
                group: &group.name,
                settings: group_settings,
                region: &settings.regions[&group.region],
            };
            let existing: BTreeMap<String, usize> = group
                .machines
                .iter()
                .filter_map(|n| named_ref.get(n))
                .fold(BTreeMap::new(), |mut counts, found| {
                    *counts.entry(found.zone.clone()).or_insert(0) += 1;
                    counts
                });
            if let Some(pool) = &group.host_pool {
                // One machine per dedicated host, on the hosts the pool's policy chooses.
                let launched =
                    crate::hosts::launch_on_pool(&context, group, pool, names, deadline).await?;
                let namings: Vec<Naming> =
                    launched.iter().map(|(name, l)| naming(name, group, &l.instance_id)).collect();
                name_instances(provider, &namings).await?;
                stage_ref.advance(launched.len() as u64);
                return Ok(launched);
            }
            launch_group(
                provider, &context, group, names, existing, cache_ref, deadline, progress,
                stage_ref,
            )
            .await
        }),
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    drop(stage);
    forget_identities(provider, &replaced).await;

    // 3. Wait for new and still-pending instances to run with an address.
    let stage = progress.stage("waiting for instances", plan.machines.len() as u64);
    let mut waiting: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut names_by_id: BTreeMap<String, String> = BTreeMap::new();
    for (name, instance) in &launched {
        let region = &plan_group_region(plan, name);
        waiting.entry(region.clone()).or_default().push(instance.instance_id.clone());
        names_by_id.insert(instance.instance_id.clone(), name.clone());
    }
    for (name, found) in &named {
        if found.state != MachineState::Running || found.public_ip.is_none() {
            waiting.entry(found.region.clone()).or_default().push(found.id.clone());
            names_by_id.insert(found.id.clone(), name.clone());
        }
    }
    let ready: Vec<Found> = fan_out(
        Concurrency::REGIONS,
        waiting.iter().map(|(region, ids)| wait_running(clients, region, tag, ids)),
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    for instance in ready {
        if let Some(name) = names_by_id.get(&instance.id) {
            named.insert(name.clone(), instance);
        }
    }
    stage.advance(plan.machines.len() as u64);
    drop(stage);

    plan.machines
        .iter()
        .map(|machine| {
            let found = named.get(&machine.name).ok_or_else(|| {
                ProviderError::new(format!(
                    "{}: machine {} was launched but not found; run create again",
                    machine.region, machine.name
                ))
            })?;
            let machine = machine_from(found, &machine.name, machine.role, &settings.prices);
            check_reachable(clients.endpoint(), clients.address_map(), &machine)?;
            Ok(machine)
        })
        .collect()
}

/// Deletes the identity objects of `replaced` instances (machine name, instance id), whose
/// names were launched again. Best effort: an object left behind is harmless (no instance of
/// that id will run again) and `destroy` removes it.
async fn forget_identities(provider: &AwsProvider, replaced: &[(String, String)]) {
    let records = provider.journal.read();
    let (Some(bucket), Some(role_id)) = (provider.bucket(), records.role_id) else { return };
    for (name, id) in replaced {
        let key = userdata::identity_key(&provider.tag, &role_id, id);
        if let Err(error) = crate::s3::delete_object(&provider.clients, &bucket, &key).await {
            tracing::warn!(machine = %name, instance = %id, %error, "the replaced instance's identity object was left behind");
        }
    }
}

fn plan_group_region(plan: &DeploymentPlan, name: &str) -> String {
    plan.machines.iter().find(|m| m.name == name).map(|m| m.region.clone()).unwrap_or_default()
}

/// One group's planner loop (step 2); returns the machines it launched, named.
#[allow(clippy::too_many_arguments)] // The loop's context, each used.
async fn launch_group(
    provider: &AwsProvider,
    context: &FleetContext<'_>,
    group: &GroupPlan,
    names: Vec<String>,
    existing: BTreeMap<String, usize>,
    cache: &Mutex<UnavailableOfferings>,
    deadline: std::time::Instant,
    progress: &dyn Progress,
    stage: &dyn Stage,
) -> Result<Vec<(String, Launched)>, ProviderError> {
    let mut planner = LaunchPlanner::new(
        GroupLaunch {
            group: group.name.clone(),
            region: group.region.clone(),
            market: group.market,
            offered: context.settings.offered(group),
            count: names.len(),
            existing,
            order: if group.instance_types.is_empty() {
                TypeOrder::Matched
            } else {
                TypeOrder::Listed
            },
        },
        deadline,
    );
    let names = Mutex::new(VecDeque::from(names));
    let mut launched = Vec::new();
    loop {
        let step = {
            let cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            planner.next(&cache, std::time::Instant::now())
        };
        log_events(group, planner.take_events());
        match step {
            Step::Launch(requests) => {
                let names = &names;
                let answers = fan_out(
                    Concurrency::FLEET_REQUESTS,
                    requests.iter().map(|request| async move {
                        let answer = create_fleet(context, request).await?;
                        if answer.launched.is_empty() {
                            return Ok::<_, ProviderError>((request, answer, Vec::new()));
                        }
                        progress.checkpoint(flotilla_core::progress::checkpoints::CREATE_FLEET_ANSWERED);
                        let taken: Vec<(String, Launched)> = {
                            let mut names =
                                names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            answer
                                .launched
                                .iter()
                                .filter_map(|l| Some((names.pop_front()?, l.clone())))
                                .collect()
                        };
                        if taken.len() < answer.launched.len() {
                            tracing::warn!(group = %group.name, "a fleet launched more instances than asked; destroy removes the extra");
                        }
                        let namings: Vec<Naming> = taken
                            .iter()
                            .map(|(name, l)| naming(name, group, &l.instance_id))
                            .collect();
                        name_instances(provider, &namings).await?;
                        stage.advance(taken.len() as u64);
                        Ok((request, answer, taken))
                    }),
                )
                .await?;
                let now = std::time::Instant::now();
                let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (request, answer, taken) in answers {
                    planner.record(request, &answer, &mut cache, now);
                    launched.extend(taken);
                }
            }
            Step::Wait(until) => {
                let wait = until.saturating_duration_since(std::time::Instant::now());
                let wait = wait.mul_f64(rand::rng().random_range(1.0..1.1));
                tracing::debug!(group = %group.name, wait_ms = wait.as_millis() as u64, "waiting before asking again");
                tokio::time::sleep(wait).await;
            }
            Step::Done => break,
            Step::Failed => {
                log_events(group, planner.take_events());
                progress.notice(&planner.summary());
                return Err(failure_error(&planner.failure()));
            }
        }
    }
    log_events(group, planner.take_events());
    progress.notice(&planner.summary());
    Ok(launched)
}

/// A launch failure as a provider error: capacity, or a quota when a pool tried answered with
/// one, or the fatal error's kind; about the quotas met, or the call denied.
pub fn failure_error(failure: &LaunchFailure) -> ProviderError {
    let kind = match &failure.fatal {
        Some(fatal) => match kind_of_code(&fatal.code) {
            ErrorKind::Other => ErrorKind::Invalid,
            kind => kind,
        },
        // A quota closes a whole family and does not come back by waiting, as capacity does:
        // it is what the user must act on.
        None if failure.tried.iter().any(|(_, code)| classify(code) == ErrorClass::Quota) => {
            ErrorKind::Quota
        }
        None => ErrorKind::Capacity,
    };
    let error = ProviderError::new(failure.to_string()).of_kind(kind);
    match kind {
        ErrorKind::Quota => match quota_subject(failure) {
            Some(quota) => error.about(quota),
            None => error,
        },
        ErrorKind::Permission => error.about(format!("CreateFleet in {}", failure.region)),
        _ => error,
    }
}

/// The quotas a failure met, for the hint: "the standard on-demand vCPU quota in us-west-2"
/// (each family and market once, in the order tried).
fn quota_subject(failure: &LaunchFailure) -> Option<String> {
    let mut quotas: Vec<String> = Vec::new();
    let mut add = |lifecycle: Option<Lifecycle>, instance_type: Option<&str>| {
        let family = instance_type.map(quota_family).unwrap_or("standard");
        let quota = match lifecycle {
            Some(lifecycle) => format!("the {family} {lifecycle} vCPU quota"),
            None => format!("the {family} vCPU quota"),
        };
        if !quotas.contains(&quota) {
            quotas.push(quota);
        }
    };
    for (pool, code) in &failure.tried {
        if classify(code) == ErrorClass::Quota {
            add(Some(pool.lifecycle), Some(&pool.instance_type));
        }
    }
    if let Some(fatal) = &failure.fatal
        && kind_of_code(&fatal.code) == ErrorKind::Quota
    {
        add(None, fatal.instance_type.as_deref());
    }
    (!quotas.is_empty()).then(|| format!("{} in {}", quotas.join(", "), failure.region))
}

/// Every planner event as a structured log line (`-v`).
fn log_events(group: &GroupPlan, events: Vec<Event>) {
    let (group, region) = (group.name.as_str(), group.region.as_str());
    for event in events {
        match event {
            Event::Requested { zone, lifecycle, count, instance_types } => tracing::info!(
                group, region, %zone, %lifecycle, count, types = %instance_types.join(","),
                "capacity: fleet requested"
            ),
            Event::Landed { zone, lifecycle, instance_type, count } => tracing::info!(
                group, region, %zone, %lifecycle, %instance_type, count,
                "capacity: machines landed"
            ),
            Event::Unavailable { pool, code, message } => tracing::info!(
                group, region, zone = %pool.zone, lifecycle = %pool.lifecycle,
                instance_type = %pool.instance_type, %code, %message,
                "capacity: pool unavailable"
            ),
            Event::FellBack { zone, from, to } => tracing::info!(
                group, region, %zone, %from, %to, "capacity: fell back to another market"
            ),
            Event::Moved { from, to, count } => tracing::info!(
                group, region, %from, %to, count, "capacity: machines moved to another zone"
            ),
            Event::Throttled { code, wait_ms } => tracing::info!(
                group, region, %code, wait_ms, "capacity: throttled, backing off"
            ),
            Event::Waiting { wait_ms } => {
                tracing::info!(group, region, wait_ms, "capacity: every pool unavailable, waiting")
            }
        }
    }
}

/// A machine from its instance, with its placement priced from `prices`.
pub fn machine_from(found: &Found, name: &str, role: Role, prices: &PriceBook) -> Machine {
    let public_ip = found.public_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let placement = (!found.instance_type.is_empty()).then(|| Placement {
        instance_type: found.instance_type.clone(),
        zone: found.zone.clone(),
        market: found.lifecycle,
        price: prices.machine(
            &found.region,
            &found.zone,
            &found.instance_type,
            found.lifecycle == Lifecycle::Spot,
        ),
    });
    Machine {
        name: name.to_owned(),
        role,
        region: found.region.clone(),
        id: found.id.clone(),
        public_ip,
        private_ip: found.private_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        agent_endpoint: SocketAddr::new(public_ip, DEFAULT_API_PORT),
        state: found.state,
        placement,
        state_reason: found.state_reason.clone(),
    }
}

/// `machines`: every machine of the deployment whose instance exists (not terminated), by the
/// journal (or its name tag), monitoring first, then by name.
pub async fn machines(provider: &AwsProvider) -> Result<Vec<Machine>, ProviderError> {
    let clients = &provider.clients;
    let records = provider.journal.read();
    let regions = provider.known_regions();
    let found: Vec<Found> = fan_out(
        Concurrency::REGIONS,
        regions.iter().map(|region| describe(clients, region, &provider.tag, None, None)),
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    let prices = crate::prices::cached_book(
        &crate::survey::cache_dir(&provider.options.home, clients),
        &regions,
    );
    let mut by_name: BTreeMap<String, Found> = BTreeMap::new();
    for instance in found {
        if records.retiring.contains(&instance.id) {
            continue;
        }
        let Some(name) = instance.name_in(&records).map(str::to_owned) else { continue };
        let journaled = records.machines.get(&name).map(|m| m.instance_id.as_str());
        let better = match by_name.get(&name) {
            None => true,
            // The journal's instance wins; else a live one over one that ended.
            Some(kept) => {
                journaled == Some(instance.id.as_str())
                    || (journaled != Some(kept.id.as_str()) && instance.alive() && !kept.alive())
            }
        };
        if better {
            by_name.insert(name, instance);
        }
    }
    let mut machines = Vec::new();
    for (name, instance) in &by_name {
        let role =
            records.machines.get(name).map(|m| m.role).or(instance.role).unwrap_or(Role::Binary);
        let machine = machine_from(instance, name, role, &prices);
        check_reachable(clients.endpoint(), clients.address_map(), &machine)?;
        machines.push(machine);
    }
    machines.sort_by(|a, b| {
        (a.role != Role::Monitoring, &a.name).cmp(&(b.role != Role::Monitoring, &b.name))
    });
    Ok(machines)
}

#[cfg(test)]
mod tests {
    use flotilla_spec::capacity::Market;

    use super::*;

    fn group(name: &str, machines: &[&str]) -> GroupPlan {
        GroupPlan {
            name: name.into(),
            role: Role::Binary,
            region: "r".into(),
            instance_index: Some(0),
            machines: machines.iter().map(|m| (*m).to_owned()).collect(),
            instance_types: vec!["m5.large".into()],
            requirements: None,
            market: Market::OnDemand,
            zones: Vec::new(),
            availability_zone_group: None,
            architecture: None,
            offered: BTreeMap::new(),
            settings: Default::default(),
            host_pool: None,
            disks: BTreeMap::new(),
        }
    }

    fn instance(id: &str, group: Option<&str>, machine: Option<&str>, time: i64) -> Found {
        Found {
            id: id.into(),
            region: "r".into(),
            state: MachineState::Running,
            public_ip: None,
            private_ip: None,
            role: Some(Role::Binary),
            group: group.map(str::to_owned),
            machine: machine.map(str::to_owned),
            request: None,
            instance_type: "m5.large".into(),
            zone: "r-a".into(),
            lifecycle: Lifecycle::OnDemand,
            launch_time: time,
            state_reason: None,
            image_id: None,
        }
    }

    /// A crash between CreateFleet's answer and the journal leaves instances only their group
    /// tag names: they take the group's missing names in order, so the re-run launches only
    /// the rest; a name known by its tag alone is journaled again; an ended instance is not a
    /// machine.
    #[test]
    fn instances_of_a_crashed_launch_are_adopted_and_named_once() {
        let plan = DeploymentPlan {
            lifecycles: Vec::new(),
            tag: "t".into(),
            provider: flotilla_spec::ProviderKind::Aws,
            machines: Vec::new(),
            groups: vec![group("w", &["w-0", "w-1", "w-2", "w-3"])],
            ports: Vec::new(),
            iam: Default::default(),
        };
        let mut records = Records::default();
        records.machines.insert(
            "w-0".into(),
            MachineRecord {
                region: "r".into(),
                role: Role::Binary,
                group: "w".into(),
                instance_id: "i-0".into(),
            },
        );
        let mut ended = instance("i-9", Some("w"), None, 0);
        ended.state = MachineState::ShuttingDown;
        let found = vec![
            instance("i-3", Some("w"), None, 5),
            instance("i-0", Some("w"), Some("w-0"), 1),
            instance("i-1", Some("w"), Some("w-1"), 2),
            instance("i-2", Some("w"), None, 4),
            ended,
        ];
        let sorted = sort_found(&plan, &records, found);
        let named: Vec<(&str, &str)> =
            sorted.named.iter().map(|(n, f)| (n.as_str(), f.id.as_str())).collect();
        assert_eq!(named, [("w-0", "i-0"), ("w-1", "i-1"), ("w-2", "i-2"), ("w-3", "i-3")]);
        let to_name: Vec<(&str, &str)> = sorted
            .to_name
            .iter()
            .map(|n| (n.name.as_str(), n.record.instance_id.as_str()))
            .collect();
        assert_eq!(to_name, [("w-1", "i-1"), ("w-2", "i-2"), ("w-3", "i-3")]);
    }

    #[test]
    fn a_failure_is_a_capacity_error_unless_a_quota_or_a_refusal_stopped_it() {
        use flotilla_capacity::{FleetError, Pool};
        let pool = |t: &str| Pool {
            lifecycle: Lifecycle::Spot,
            instance_type: t.into(),
            zone: "r-a".into(),
        };
        let mut failure = LaunchFailure {
            group: "w".into(),
            region: "r".into(),
            market: Market::Spot,
            missing: 2,
            tried: vec![(pool("m5.large"), "InsufficientInstanceCapacity".into())],
            fatal: None,
            nothing_left: false,
        };
        let error = failure_error(&failure);
        assert_eq!(error.kind, ErrorKind::Capacity);
        assert!(error.message.contains("spot m5.large in r-a (InsufficientInstanceCapacity)"));
        assert_eq!(error.subject, None);
        failure.tried = vec![
            (pool("m5.large"), "MaxSpotInstanceCountExceeded".into()),
            (pool("c5.large"), "VcpuLimitExceeded".into()),
            (pool("p3.2xlarge"), "VcpuLimitExceeded".into()),
        ];
        let quota = failure_error(&failure);
        assert_eq!(quota.kind, ErrorKind::Quota);
        assert_eq!(
            quota.subject.as_deref(),
            Some("the standard spot vCPU quota, the p spot vCPU quota in r")
        );
        failure.tried.insert(0, (pool("m6i.large"), "InsufficientInstanceCapacity".into()));
        assert_eq!(failure_error(&failure).kind, ErrorKind::Quota, "a quota among capacity");
        let mut denied = failure.clone();
        denied.fatal = Some(FleetError {
            instance_type: None,
            code: "UnauthorizedOperation".into(),
            message: "no".into(),
        });
        let denied = failure_error(&denied);
        assert_eq!(denied.kind, ErrorKind::Permission);
        assert_eq!(denied.subject.as_deref(), Some("CreateFleet in r"));
        failure.fatal = Some(FleetError {
            instance_type: None,
            code: "InvalidParameterValue".into(),
            message: "bad".into(),
        });
        assert_eq!(failure_error(&failure).kind, ErrorKind::Invalid);
    }
}
