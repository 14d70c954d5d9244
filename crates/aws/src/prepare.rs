//! `prepare`: the reads that check the account, then everything the machines share, created or
//! adopted: bucket and agent uploads, the role, every region's network and the peerings, and
//! the launch templates of every capacity group.
//!
//! Three independent chains run at once (bucket then uploads; the role; networks then
//! peerings), since under API latency the longest chain of dependent calls sets the wall time;
//! the templates need all three (the agent's digest and the role id are in the user data, the
//! security group and image in the template).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_capacity::placement::balanced_targets;
use flotilla_capacity::{Catalog, PriceBook};
use flotilla_core::plan::{DeploymentPlan, GroupPlan};
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, Role};
use flotilla_spec::names::iam_role_name;

use crate::fanout::{Concurrency, fan_out};
use crate::images::{self, ImageFacts};
use crate::network::{self, NetworkSettings, RegionPlan};
use crate::tags::{self, UserTags};
use crate::templates::{RootVolume, TemplateSpec};
use crate::{AwsProvider, address, agents, disks, existing, iam, kms, s3, survey, templates};

/// Everything a launch needs to know, worked out by `prepare`.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    /// Region → its network plan.
    pub regions: HashMap<String, RegionPlan>,
    /// Group name → what its fleet requests name.
    pub groups: BTreeMap<String, GroupSettings>,
    /// Prices as the survey cached them (for each machine's placement).
    pub prices: PriceBook,
    /// Image id → its name, for every image the templates boot: named when a machine's agent
    /// never answers ([`crate::silent_agent`]).
    pub image_names: BTreeMap<String, String>,
}

/// What one capacity group's fleet requests name.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub region: String,
    pub role: Role,
    /// Instance type → the id of the launch template of its architecture.
    pub templates: BTreeMap<String, String>,
    /// In an existing network (`network`): zone → the user's subnet machines there launch
    /// into; only these zones are used. `None`: flotilla's own subnets.
    pub subnets: Option<BTreeMap<String, String>>,
    /// The security groups its templates give the primary interface (flotilla's, then the
    /// user's): a launch that names its own interface (`RunInstances` onto a dedicated host)
    /// gives them again.
    pub security_groups: Vec<String>,
}

impl GroupSettings {
    /// Where `group` may launch: its offered zones, in an existing network only those with one
    /// of its subnets.
    pub fn offered(&self, group: &GroupPlan) -> BTreeMap<String, Vec<String>> {
        match &self.subnets {
            None => group.offered.clone(),
            Some(subnets) => group
                .offered
                .iter()
                .filter(|(zone, _)| subnets.contains_key(*zone))
                .map(|(zone, types)| (zone.clone(), types.clone()))
                .collect(),
        }
    }
}

/// The types a group may launch, in any zone.
fn group_types(group: &GroupPlan) -> BTreeSet<&str> {
    group.offered.values().flatten().map(String::as_str).collect()
}

/// The zones that get machines of `group` when every pool is open: they get their subnets now,
/// the others when the launch planner first asks for them.
fn zones_in_use(group: &GroupPlan) -> Vec<String> {
    let zones: Vec<String> = group.offered.keys().cloned().collect();
    balanced_targets(group.machines.len(), &zones, &BTreeMap::new()).into_keys().collect()
}

pub async fn prepare(
    provider: &AwsProvider,
    plan: &DeploymentPlan,
    progress: &dyn Progress,
) -> Result<LaunchSettings, ProviderError> {
    let clients = &provider.clients;
    let journal = &provider.journal;
    let tag = provider.tag.as_str();
    let home = provider.options.home.as_path();

    tags::set_user_tags(tag, user_tags(plan));
    crate::s3::warn_of_object_tags_left_off(tag);
    // Reads that check the account, all at once, before anything changes.
    let stage = progress.stage("checking the account", 0);
    let regions = plan.regions();
    let networks = async {
        if existing::regions_with_networks(plan).is_empty() {
            return Ok(existing::Resolved::default());
        }
        // Checked again: the account may have changed since the reference check.
        let snapshots = existing::read(clients, plan).await?;
        let (problems, resolved) = existing::evaluate(plan, &snapshots);
        let errors: Vec<String> = problems
            .iter()
            .filter(|p| p.severity == flotilla_spec::Severity::Error)
            .map(|p| format!("{}: {} ({})", p.field, p.message, p.help))
            .collect();
        if !errors.is_empty() {
            return Err(ProviderError::new(format!(
                "the spec's existing network does not fit the account:\n  {}",
                errors.join("\n  ")
            )));
        }
        for note in &resolved.notes {
            tracing::info!("{note}");
        }
        Ok::<_, ProviderError>(resolved)
    };
    let scope = survey::CatalogScope::of_groups(&plan.groups);
    let (enabled, catalog, deployer_ip, role_owner, existing_networks) = tokio::join!(
        survey::check_regions(clients, &regions),
        survey::catalog(clients, home, &regions, &scope),
        address::for_prepare(
            provider.options.deployer_ip,
            journal.read().deployer_ip,
            provider.options.ip_discovery_url.as_deref(),
        ),
        iam::check_ownership(clients, tag),
        networks
    );
    enabled?;
    let existing_networks = existing_networks?;
    refuse_network_moves(tag, &journal.read(), plan, &existing_networks)?;
    role_owner?;
    let catalog: Catalog = catalog?;
    let deployer_ip = deployer_ip?;
    // Core resolves every group's capacity against the survey before `prepare` (create and
    // update alike); a group without a zone would be a bug there.
    for group in &plan.groups {
        if group.offered.is_empty() {
            return Err(ProviderError::new(format!(
                "{}: group {} has no zone offering a type it may run; run `flotilla plan` to see why",
                group.region, group.name
            )));
        }
    }
    // The architecture of every type a group may launch.
    let mut architectures: BTreeMap<String, &'static str> = BTreeMap::new();
    for group in &plan.groups {
        for instance_type in group_types(group) {
            let architecture = survey::machine_architecture(&catalog, instance_type)?;
            architectures.insert(instance_type.to_owned(), architecture);
        }
    }
    let needed: BTreeSet<String> = architectures.values().map(|a| (*a).to_owned()).collect();
    let agents =
        agents::agents(&needed, &provider.options.this_executable, &provider.options.agent_builds)?;
    drop(stage);

    // From here on, calls change the account.
    let bucket = match journal.read().bucket {
        Some(bucket) => bucket,
        None => s3::bucket_name(home)?,
    };
    journal.update(|r| {
        r.bucket = Some(bucket.clone());
        r.deployer_ip = Some(deployer_ip);
    })?;
    let region_plans: HashMap<String, RegionPlan> = regions
        .iter()
        .enumerate()
        .map(|(index, region)| {
            let groups: Vec<&GroupPlan> =
                plan.groups.iter().filter(|g| &g.region == region).collect();
            let zones: Vec<String> = catalog.zones(region).into_iter().map(str::to_owned).collect();
            let in_use: BTreeSet<String> = groups.iter().flat_map(|g| zones_in_use(g)).collect();
            let region_architectures: BTreeSet<String> = groups
                .iter()
                .flat_map(|g| group_types(g))
                .map(|t| architectures[t].to_owned())
                .collect();
            let plan = RegionPlan {
                region: region.clone(),
                index: u8::try_from(index).expect("fewer than 256 regions"),
                zones,
                zones_in_use: in_use.into_iter().collect(),
                architectures: region_architectures.into_iter().collect(),
                binary_group: groups.iter().any(|g| g.role == Role::Binary),
                monitoring_group: groups.iter().any(|g| g.role == Role::Monitoring),
                existing: groups.iter().find_map(|g| existing_networks.groups.get(&g.name)).map(
                    |n| network::ExistingVpc {
                        vpc_id: n.vpc_id.clone(),
                        monitoring_blocks: existing_networks.monitoring_blocks.clone(),
                    },
                ),
            };
            (region.clone(), plan)
        })
        .collect();

    let stage = progress.stage("creating networks", regions.len() as u64);
    let storage = async {
        s3::ensure_bucket(clients, &bucket).await?;
        for (architecture, agent) in &agents {
            s3::put_file_once(clients, &bucket, &format!("agents/{}", agent.sha256), &agent.path)
                .await
                .map_err(|e| {
                    ProviderError::with_source(format!("uploading the {architecture} agent"), e)
                })?;
        }
        Ok::<(), ProviderError>(())
    };
    let mounts_disks =
        plan.groups.iter().any(|group| group.disks.values().any(|disk| disk.mount.is_some()));
    let role = async {
        let role_id = iam::ensure_role(
            clients,
            journal,
            tag,
            &bucket,
            &plan.iam,
            &plan.lifecycles,
            mounts_disks,
        )
        .await?;
        journal.update(|r| {
            r.role_name = Some(iam_role_name(tag));
            r.role_id = Some(role_id.clone());
        })?;
        Ok::<String, ProviderError>(role_id)
    };
    let authorized = journal.read().authorized;
    let own_vpc = |region: &str| {
        region_plans
            .get(region)
            .filter(|p| p.existing.is_none())
            .map(|p| network::vpc_cidr(p.index))
    };
    let settings = NetworkSettings {
        tag,
        deployer_ip,
        authorized: &authorized,
        ports: &plan.ports,
        monitoring_block: own_vpc(crate::MONITORING_REGION),
        vpc_blocks: regions.iter().filter_map(|r| own_vpc(r)).collect(),
    };
    let networks = async {
        let settings = &settings;
        let stage = &stage;
        let fresh: BTreeSet<String> = fan_out(
            Concurrency::REGIONS,
            region_plans.values().map(|region_plan| async move {
                let fresh = network::ensure_region(clients, journal, settings, region_plan).await?;
                stage.advance(1);
                Ok::<_, ProviderError>((region_plan.region.clone(), fresh))
            }),
        )
        .await?
        .into_iter()
        .filter(|(_, fresh)| *fresh)
        .map(|(region, _)| region)
        .collect();
        let hub = crate::MONITORING_REGION;
        let hub_index = region_plans[hub].index;
        // Only between VPCs flotilla made: an existing VPC is joined by the user's own routes
        // (checked by `existing::evaluate`).
        let hub_existing = region_plans[hub].existing.is_some();
        let spokes = region_plans
            .values()
            .filter(|p| p.region != hub && p.existing.is_none() && !hub_existing);
        let peerings = spokes.map(|spoke| {
            let spoke_fresh = fresh.contains(&spoke.region);
            network::ensure_peering(
                clients,
                journal,
                tag,
                (hub, hub_index),
                (&spoke.region, spoke.index),
                spoke_fresh,
            )
        });
        futures_util::future::try_join_all(peerings).await?;
        Ok::<BTreeSet<String>, ProviderError>(fresh)
    };
    let (stored, role_id, fresh) = tokio::join!(storage, role, networks);
    stored?;
    let role_id = role_id?;
    let fresh = fresh?;
    drop(stage);

    // Launch templates: per region, group and architecture.
    let stage = progress.stage("creating launch templates", regions.len() as u64);
    let user_data = provider.user_data(&bucket, &role_id, &agents);
    let records = journal.read();
    let mut wanted: BTreeMap<String, Vec<(String, TemplateSpec)>> = BTreeMap::new();
    let mut images_seen = HashMap::new();
    for group in &plan.groups {
        let record = &records.regions[&group.region];
        let security_group = match group.role {
            Role::Binary => record.binary_group_id.clone(),
            Role::Monitoring => record.monitoring_group_id.clone(),
        }
        .ok_or_else(|| {
            ProviderError::new(format!(
                "{}: the security group is missing; run create again",
                group.region
            ))
        })?;
        let machine =
            plan.machines.iter().find(|m| group.machines.first() == Some(&m.name)).ok_or_else(
                || ProviderError::new(format!("group {} has no machine", group.name)),
            )?;
        let encryption = group.settings.root_volume.as_ref().map(|v| &v.value);
        let kms_key_id = match encryption.and_then(|v| v.kms_key.as_deref()) {
            Some(key) if encryption.is_some_and(|v| v.encrypted) => {
                Some(kms::resolve(clients, &group.region, key).await?.ok_or_else(|| {
                    ProviderError::new(format!(
                        "{}: the KMS key {key} does not exist; run `flotilla plan` to check the spec",
                        group.region
                    ))
                })?)
            }
            _ => None,
        };
        let root_volume = RootVolume {
            size_gib: machine.storage_size,
            class: machine.storage_class.clone(),
            iops: machine.storage_iops,
            throughput: machine.storage_throughput,
            encrypted: encryption.is_some_and(|v| v.encrypted),
            kms_key_id,
        };
        let data_disks = if group.disks.is_empty() {
            Vec::new()
        } else {
            disks::resolve(clients, group).await?.map_err(|problems| {
                let said: Vec<String> =
                    problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
                ProviderError::new(format!(
                    "{}: {}; run `flotilla plan` to check the spec",
                    group.region,
                    said.join("; ")
                ))
            })?
        };
        let group_architectures: BTreeSet<&str> =
            group_types(group).into_iter().map(|t| architectures[t]).collect();
        for architecture in group_architectures {
            let image = image_of(clients, group, record, architecture, &mut images_seen).await?;
            let spec = TemplateSpec {
                group: group.name.clone(),
                architecture: architecture.to_owned(),
                image_id: image.id,
                root_device_name: image.root_device_name,
                user_data: user_data[architecture].clone(),
                instance_profile: iam_role_name(tag),
                security_group: security_group.clone(),
                extra_security_groups: existing_networks
                    .groups
                    .get(&group.name)
                    .map(|n| n.security_groups.clone())
                    .unwrap_or_default(),
                root_volume: root_volume.clone(),
                data_disks: data_disks.clone(),
            };
            wanted.entry(group.region.clone()).or_default().push((group.name.clone(), spec));
        }
    }
    let stage_ref = &stage;
    let fresh = &fresh;
    let made = fan_out(
        Concurrency::REGIONS,
        wanted.iter().map(|(region, specs)| async move {
            let only: Vec<TemplateSpec> = specs.iter().map(|(_, s)| s.clone()).collect();
            let ids =
                templates::ensure(clients, journal, tag, region, fresh.contains(region), &only)
                    .await?;
            stage_ref.advance(1);
            Ok::<_, ProviderError>((region.clone(), ids))
        }),
    )
    .await?;
    let ids: BTreeMap<String, BTreeMap<String, String>> = made.into_iter().collect();
    drop(stage);

    let mut groups = BTreeMap::new();
    for group in &plan.groups {
        let region_ids = &ids[&group.region];
        let specs = &wanted[&group.region];
        let mut by_type = BTreeMap::new();
        for instance_type in group_types(group) {
            let architecture = architectures[instance_type];
            let (_, spec) = specs
                .iter()
                .find(|(name, spec)| *name == group.name && spec.architecture == architecture)
                .expect("every architecture of the group has its template");
            let id = region_ids[&spec.name(tag)].clone();
            by_type.insert(instance_type.to_owned(), id);
        }
        let security_groups = specs
            .iter()
            .find(|(name, _)| *name == group.name)
            .map(|(_, spec)| {
                std::iter::once(spec.security_group.clone())
                    .chain(spec.extra_security_groups.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        groups.insert(
            group.name.clone(),
            GroupSettings {
                security_groups,
                region: group.region.clone(),
                role: group.role,
                templates: by_type,
                subnets: existing_networks.groups.get(&group.name).map(|n| n.subnets.clone()),
            },
        );
    }
    Ok(LaunchSettings {
        regions: region_plans,
        groups,
        prices: crate::prices::cached_book(&survey::cache_dir(home, clients), &regions),
        image_names: images_seen.into_values().map(|image| (image.id, image.name)).collect(),
    })
}

/// The spec's extra tags: the top-level ones (the monitoring machine's) on what the deployment
/// shares, each group's merged ones on its own resources.
fn user_tags(plan: &DeploymentPlan) -> UserTags {
    let shared = plan
        .groups
        .iter()
        .find(|g| g.role == Role::Monitoring)
        .map(|g| g.settings.tag_pairs())
        .unwrap_or_default();
    let groups = plan.groups.iter().map(|g| (g.name.clone(), g.settings.tag_pairs())).collect();
    UserTags { shared, groups }
}

/// The image a machine of `group` boots with on `architecture`: the spec's `image`, or the
/// Ubuntu image `network::ensure_region` journaled; each looked up once per region.
async fn image_of(
    clients: &crate::clients::Clients,
    group: &GroupPlan,
    record: &crate::records::RegionRecord,
    architecture: &str,
    seen: &mut HashMap<String, ImageFacts>,
) -> Result<ImageFacts, ProviderError> {
    let region = &group.region;
    let ec2 = clients.ec2(region);
    let key = format!(
        "{region}\n{:?}\n{:?}\n{architecture}",
        group.settings.image, group.settings.image_owners.value
    );
    if let Some(known) = seen.get(&key) {
        return Ok(known.clone());
    }
    let facts = match &group.settings.image {
        Some(image) => {
            let owners = &group.settings.image_owners.value;
            match images::resolve(&ec2, region, &image.value, owners, architecture).await? {
                Ok(facts) => facts,
                Err(problem) => {
                    let (message, help) =
                        problem.describe(&image.value, region, architecture, owners);
                    return Err(ProviderError::new(format!("{}: {message}; {help}", image.field))
                        .of_kind(flotilla_core::provider::ErrorKind::Invalid));
                }
            }
        }
        None => {
            let id = record.images.get(architecture).ok_or_else(|| {
                ProviderError::new(format!(
                    "{region}: no Ubuntu image for {architecture}; run create again"
                ))
            })?;
            images::by_id(&ec2, region, id).await?
        }
    };
    seen.insert(key, facts.clone());
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zones_in_use_are_those_a_balanced_group_fills() {
        let group = |count: usize| GroupPlan {
            name: "worker".into(),
            role: Role::Binary,
            region: "r".into(),
            instance_index: Some(0),
            machines: (0..count).map(|i| format!("worker-{i}")).collect(),
            instance_types: vec!["m5.large".into()],
            requirements: None,
            market: flotilla_spec::capacity::Market::OnDemand,
            zones: Vec::new(),
            availability_zone_group: None,
            architecture: None,
            offered: ["r-a", "r-b", "r-c"]
                .iter()
                .map(|z| ((*z).to_owned(), vec!["m5.large".to_owned()]))
                .collect(),
            settings: Default::default(),
            host_pool: None,
            disks: BTreeMap::new(),
        };
        assert_eq!(zones_in_use(&group(1)), ["r-a"]);
        assert_eq!(zones_in_use(&group(2)), ["r-a", "r-b"]);
        assert_eq!(zones_in_use(&group(7)), ["r-a", "r-b", "r-c"]);
    }
}

/// Where a region's machines run: flotilla's VPC, or the user's.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RegionVpc {
    Own(Option<String>),
    User(String),
}

impl std::fmt::Display for RegionVpc {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionVpc::Own(Some(id)) => write!(formatter, "flotilla's VPC {id}"),
            RegionVpc::Own(None) => write!(formatter, "a VPC flotilla makes"),
            RegionVpc::User(id) => write!(formatter, "your VPC {id}"),
        }
    }
}

/// Refuses, before anything changes, a spec that would put a region's machines in another
/// VPC than the one its running machines are in (flotilla's and the user's, or two of the
/// user's): a machine cannot move between VPCs, and new machines beside old ones in another
/// VPC could not reach them. A region without machines may switch.
fn refuse_network_moves(
    tag: &str,
    records: &crate::records::Records,
    plan: &DeploymentPlan,
    existing: &existing::Resolved,
) -> Result<(), ProviderError> {
    let mut moves = Vec::new();
    for region in plan.regions() {
        if !records.machines.values().any(|m| m.region == region) {
            continue;
        }
        let Some(record) = records.regions.get(&region) else { continue };
        let before = match (&record.existing_vpc_id, &record.vpc_id) {
            (Some(user), _) => RegionVpc::User(user.clone()),
            (None, Some(own)) => RegionVpc::Own(Some(own.clone())),
            (None, None) => continue, // Not known (a journal from before this record).
        };
        let after = plan
            .groups
            .iter()
            .filter(|g| g.region == region)
            .find_map(|g| existing.groups.get(&g.name))
            .map_or(RegionVpc::Own(None), |n| RegionVpc::User(n.vpc_id.clone()));
        let same = match (&before, &after) {
            (RegionVpc::Own(_), RegionVpc::Own(_)) => true,
            (RegionVpc::User(a), RegionVpc::User(b)) => a == b,
            _ => false,
        };
        if !same {
            moves.push(format!(
                "{region}: the machines run in {before}, and the spec now puts them in {after}"
            ));
        }
    }
    if moves.is_empty() {
        return Ok(());
    }
    Err(ProviderError::new(format!(
        "deployment `{tag}` cannot move between VPCs while its machines run (a machine cannot change VPC, and new machines in another VPC could not reach the old ones):\n  {}\nkeep each region's network as it was, or move the deployment: `flotilla destroy --tag {tag}`, then `flotilla create` with the new spec",
        moves.join("\n  ")
    ))
    .of_kind(flotilla_core::provider::ErrorKind::Invalid))
}
