//! One region's network, created or adopted: VPC `10.<i>.0.0/16` (`i` = the region's index in
//! the sorted region set), an internet gateway, a default route on the VPC's main route table
//! (so subnets need no association), a subnet `10.<i>.<z>.0/24` per availability zone in use
//! (`z` = the zone's index among the region's zones, so a zone's subnet is the same whatever
//! the spec asks), and security groups; then hub-and-spoke peering between the monitoring
//! region and every other region. A zone the launch planner moves machines to gets its subnet
//! when it is first asked for ([`create_subnet`]).
//!
//! In a region whose spec names an existing VPC (`network`, resolved by `existing.rs`), only
//! the security groups are made, in that VPC (the binary's also admits the metrics port from
//! the monitoring VPC's blocks); the VPC, its gateways, routes and subnets are the user's, never
//! journaled as flotilla's and never tagged, and no peering is made.
//!
//! Everything is tagged at creation (TagSpecifications). A region this deployment never
//! touched is created without looking first (no resource of ours can exist there); a region it
//! touched before is looked up by tags first, so a re-run after a crash adopts what exists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, SecurityGroup};
use flotilla_core::provider::ProviderError;
use flotilla_spec::bootstrap::DEFAULT_API_PORT;
use flotilla_spec::fleet::PortSpec;
use flotilla_spec::names::security_group_name;
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::journal::Journal;
use crate::tags::{filter, tag_filter, tag_spec, tagged};

/// What one region needs.
#[derive(Clone, Debug)]
pub struct RegionPlan {
    pub region: String,
    /// Index of the region in the sorted region set: the VPC is `10.<index>.0.0/16`.
    pub index: u8,
    /// Every zone of the region, sorted: a zone's index here is the third octet of its
    /// subnet.
    pub zones: Vec<String>,
    /// Zones that get a subnet now.
    pub zones_in_use: Vec<String>,
    /// Architectures (`x86_64`, `arm64`) whose Ubuntu image is needed.
    pub architectures: Vec<String>,
    pub binary_group: bool,
    pub monitoring_group: bool,
    /// The spec's existing VPC in this region (`network`), if it names one: flotilla then makes
    /// only its security groups there, and no gateway, route, subnet or peering.
    pub existing: Option<ExistingVpc>,
}

/// An existing VPC flotilla launches into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingVpc {
    pub vpc_id: String,
    /// The monitoring VPC's IPv4 blocks: flotilla's binary group admits the metrics port from
    /// them (see `existing.rs`).
    pub monitoring_blocks: Vec<String>,
}

/// The deployment-wide settings the network needs.
#[derive(Clone, Debug)]
pub struct NetworkSettings<'a> {
    pub tag: &'a str,
    pub deployer_ip: Ipv4Addr,
    /// Addresses `authorize` let in: they stay in the agent port's rules.
    pub authorized: &'a BTreeSet<Ipv4Addr>,
    pub ports: &'a [PortSpec],
    /// The block of the monitoring region's VPC when it is flotilla's: the binary groups of
    /// flotilla's VPCs admit the scrape ports ([`SCRAPE_PORTS`]) from it.
    pub monitoring_block: Option<String>,
    /// The blocks of every VPC of the deployment that is flotilla's: the monitoring group
    /// admits the telemetry ingest ports ([`INGEST_PORTS`]) from them.
    pub vpc_blocks: Vec<String>,
}

/// The ports Prometheus on the monitoring machine scrapes on every machine: the binary's
/// metrics (9090), node exporter (9100) and the agent's metrics (9101).
pub const SCRAPE_PORTS: [u16; 3] = [9090, 9100, 9101];

/// The ports machines push telemetry to on the monitoring machine (the commonware deployer's):
/// Loki (3100), Pyroscope (4040) and Tempo's OTLP receiver (4318). Grafana (3000), Prometheus
/// (9090) and the other services' own ports are opened to no one: `flotilla monitoring`
/// reaches them through the agent.
pub const INGEST_PORTS: [u16; 3] = [3100, 4040, 4318];

/// The VPC CIDR of a region index.
pub fn vpc_cidr(index: u8) -> String {
    format!("10.{index}.0.0/16")
}

/// Canonical's account, which publishes the Ubuntu images.
const CANONICAL: &str = "099720109477";

/// Creates or adopts `plan.region`'s network. Returns whether the region was fresh: never
/// touched by this deployment before this run, so nothing of it existed there.
pub async fn ensure_region(
    clients: &Clients,
    journal: &Journal,
    settings: &NetworkSettings<'_>,
    plan: &RegionPlan,
) -> Result<bool, ProviderError> {
    let region = plan.region.as_str();
    let ec2 = clients.ec2(region);
    let tag = settings.tag;
    let fresh = journal.update(|r| {
        let record = r.region(region);
        let fresh = !record.started;
        record.started = true;
        fresh
    })?;
    let record = journal.read().regions[region].clone();

    // VPC.
    let cidr = vpc_cidr(plan.index);
    let vpc_id = match (&plan.existing, record.vpc_id) {
        // The user's: never journaled as flotilla's, never tagged; recorded as the user's.
        (Some(existing), _) => {
            let id = existing.vpc_id.clone();
            journal.update(|r| r.region(region).existing_vpc_id = Some(id.clone()))?;
            id
        }
        (None, Some(id)) => id,
        (None, None) => {
            let existing = if fresh {
                None
            } else {
                let found = ec2
                    .describe_vpcs()
                    .filters(tag_filter(tag))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(region, "DescribeVpcs", &cidr, e))?;
                found
                    .vpcs()
                    .iter()
                    .filter(|v| tagged(v.tags(), tag))
                    .find_map(|v| v.vpc_id().map(str::to_owned))
            };
            let id = match existing {
                Some(id) => id,
                None => {
                    let created = ec2
                        .create_vpc()
                        .cidr_block(&cidr)
                        .tag_specifications(tag_spec(
                            ResourceType::Vpc,
                            tag,
                            &format!("flotilla-{tag}"),
                            &[],
                        ))
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk(region, "CreateVpc", &cidr, e))?;
                    created
                        .vpc()
                        .and_then(|v| v.vpc_id())
                        .ok_or_else(|| {
                            AwsError::other(region, "CreateVpc", &cidr, "no VPC id in the answer")
                        })?
                        .to_owned()
                }
            };
            journal.update(|r| r.region(region).vpc_id = Some(id.clone()))?;
            id
        }
    };

    // After the VPC, four independent chains run at once: the gateway and default route, the
    // subnets, the security groups, the images.
    let routing = async {
        if plan.existing.is_some() {
            return Ok(()); // The user's VPC routes as the user made it.
        }
        // Internet gateway, attached.
        let igw_id = match record.internet_gateway_id {
            Some(id) => id,
            None => {
                let mut attached = false;
                let mut existing = None;
                if !fresh {
                    let found = ec2
                        .describe_internet_gateways()
                        .filters(tag_filter(tag))
                        .send()
                        .await
                        .map_err(|e| {
                            AwsError::from_sdk(region, "DescribeInternetGateways", &vpc_id, e)
                        })?;
                    if let Some(igw) =
                        found.internet_gateways().iter().find(|g| tagged(g.tags(), tag))
                    {
                        attached =
                            igw.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id.as_str()));
                        existing = igw.internet_gateway_id().map(str::to_owned);
                    }
                }
                let id = match existing {
                    Some(id) => id,
                    None => ec2
                        .create_internet_gateway()
                        .tag_specifications(tag_spec(
                            ResourceType::InternetGateway,
                            tag,
                            &format!("flotilla-{tag}"),
                            &[],
                        ))
                        .send()
                        .await
                        .map_err(|e| {
                            AwsError::from_sdk(region, "CreateInternetGateway", &vpc_id, e)
                        })?
                        .internet_gateway()
                        .and_then(|g| g.internet_gateway_id())
                        .ok_or_else(|| {
                            AwsError::other(
                                region,
                                "CreateInternetGateway",
                                &vpc_id,
                                "no id in the answer",
                            )
                        })?
                        .to_owned(),
                };
                if !attached {
                    match ec2
                        .attach_internet_gateway()
                        .internet_gateway_id(&id)
                        .vpc_id(&vpc_id)
                        .send()
                        .await
                    {
                        Ok(_) => {}
                        Err(e) => {
                            let error = AwsError::from_sdk(region, "AttachInternetGateway", &id, e);
                            if !error.code_is("Resource.AlreadyAssociated") {
                                return Err(error.into());
                            }
                        }
                    }
                }
                journal.update(|r| r.region(region).internet_gateway_id = Some(id.clone()))?;
                id
            }
        };
        // The main route table's default route.
        if record.route_table_id.is_none() {
            let tables = ec2
                .describe_route_tables()
                .filters(filter("vpc-id", &vpc_id))
                .filters(filter("association.main", "true"))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "DescribeRouteTables", &vpc_id, e))?;
            let table = tables
                .route_tables()
                .first()
                .and_then(|t| t.route_table_id())
                .ok_or_else(|| {
                    AwsError::other(
                        region,
                        "DescribeRouteTables",
                        &vpc_id,
                        "the VPC has no main route table",
                    )
                })?
                .to_owned();
            // The main table comes with the VPC, untagged: tag it as the rest of the network
            // (it goes with the VPC, so destroy never deletes it by this tag).
            let tags = tag_spec(ResourceType::RouteTable, tag, &format!("flotilla-{tag}"), &[]);
            ec2.create_tags()
                .resources(&table)
                .set_tags(Some(tags.tags().to_vec()))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "CreateTags", &table, e))?;
            create_route(&ec2, region, &table, "0.0.0.0/0", Route::Gateway(&igw_id)).await?;
            journal.update(|r| r.region(region).route_table_id = Some(table.clone()))?;
        }
        Ok::<(), ProviderError>(())
    };
    let subnets = async {
        if plan.existing.is_some() {
            return Ok(()); // Machines launch into the user's subnets.
        }
        // Subnets in the zones in use.
        let mut known = record.subnets.clone();
        let missing: Vec<&String> =
            plan.zones_in_use.iter().filter(|z| !known.contains_key(*z)).collect();
        if !missing.is_empty() && !fresh {
            let found = ec2
                .describe_subnets()
                .filters(tag_filter(tag))
                .filters(filter("vpc-id", &vpc_id))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "DescribeSubnets", &vpc_id, e))?;
            for subnet in found.subnets().iter().filter(|s| tagged(s.tags(), tag)) {
                if let (Some(zone), Some(id)) = (subnet.availability_zone(), subnet.subnet_id()) {
                    known.insert(zone.to_owned(), id.to_owned());
                }
            }
            let adopted = known.clone();
            journal.update(|r| r.region(region).subnets.extend(adopted))?;
        }
        let creations =
            plan.zones_in_use.iter().filter(|zone| !known.contains_key(*zone)).map(|zone| {
                let vpc_id = &vpc_id;
                async move {
                    let id = create_subnet(clients, region, tag, vpc_id, plan, zone).await?;
                    journal.update(|r| r.region(region).subnets.insert(zone.clone(), id))?;
                    Ok::<(), ProviderError>(())
                }
            });
        futures_util::future::try_join_all(creations).await?;
        Ok::<(), ProviderError>(())
    };
    let groups = async {
        // Security groups: the agent's port from the deployer and the addresses `authorize`
        // let in, and the spec's ports; reconciled both ways on every run.
        let agent_rules = agent_rules(settings);
        let mut wanted = Vec::new();
        if plan.binary_group {
            let mut rules = agent_rules.clone();
            rules.extend(port_rules(settings.ports));
            match &plan.existing {
                Some(existing) => rules.extend(metrics_rules(&existing.monitoring_blocks)),
                None => rules.extend(metrics_rules(settings.monitoring_block.as_slice())),
            }
            wanted.push((GroupRole::Binary, rules));
        }
        if plan.monitoring_group {
            let mut rules = agent_rules;
            rules.extend(ingest_rules(&settings.vpc_blocks));
            wanted.push((GroupRole::Monitoring, rules));
        }
        let names: Vec<String> = wanted.iter().map(|(role, _)| role.name(tag)).collect();
        let found = if fresh {
            Vec::new() // No group of ours can exist in a VPC made in this run.
        } else {
            find_groups(&ec2, region, &vpc_id, &names).await?
        };
        for (role, rules) in &wanted {
            let name = role.name(tag);
            let existing = found.iter().find(|g| g.group_name() == Some(name.as_str()));
            // A group just created has no ingress rules; one adopted has what it has.
            let (id, existing) = match existing.and_then(|g| Some((g.group_id()?, g))) {
                Some((id, group)) => (id.to_owned(), group.clone()),
                None => create_group(&ec2, region, tag, &vpc_id, &name, role.description()).await?,
            };
            journal.update(|r| match role {
                GroupRole::Binary => r.region(region).binary_group_id = Some(id.clone()),
                GroupRole::Monitoring => r.region(region).monitoring_group_id = Some(id.clone()),
            })?;
            reconcile_group(&ec2, region, &id, &existing, rules).await?;
        }
        Ok::<(), ProviderError>(())
    };
    let images = async {
        // Ubuntu 24.04 images.
        for architecture in &plan.architectures {
            if record.images.contains_key(architecture) {
                continue;
            }
            let image = find_image(&ec2, region, architecture).await?;
            journal.update(|r| r.region(region).images.insert(architecture.clone(), image))?;
        }
        Ok::<(), ProviderError>(())
    };
    let (routing, subnets, groups, images) = tokio::join!(routing, subnets, groups, images);
    routing?;
    subnets?;
    groups?;
    images?;
    Ok(fresh)
}

/// Creates a subnet for `zone` (used for zones in use and for capacity fallback).
pub async fn create_subnet(
    clients: &Clients,
    region: &str,
    tag: &str,
    vpc_id: &str,
    plan: &RegionPlan,
    zone: &str,
) -> Result<String, ProviderError> {
    let index = plan.zones.iter().position(|z| z == zone).ok_or_else(|| {
        AwsError::other(region, "CreateSubnet", zone, "the zone offers none of the needed types")
    })?;
    let cidr = format!("10.{}.{index}.0/24", plan.index);
    let created = clients
        .ec2(region)
        .create_subnet()
        .vpc_id(vpc_id)
        .availability_zone(zone)
        .cidr_block(&cidr)
        .tag_specifications(tag_spec(
            ResourceType::Subnet,
            tag,
            &format!("flotilla-{tag}-{zone}"),
            &[],
        ))
        .send()
        .await;
    match created {
        Ok(answer) => Ok(answer
            .subnet()
            .and_then(|s| s.subnet_id())
            .ok_or_else(|| AwsError::other(region, "CreateSubnet", &cidr, "no id in the answer"))?
            .to_owned()),
        Err(e) => {
            let error = AwsError::from_sdk(region, "CreateSubnet", &cidr, e);
            if !error.code_is("InvalidSubnet.Conflict") {
                return Err(error.into());
            }
            // A crash after CreateSubnet and before the journal: adopt it.
            let found = clients
                .ec2(region)
                .describe_subnets()
                .filters(filter("vpc-id", vpc_id))
                .filters(filter("cidr-block", &cidr))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "DescribeSubnets", &cidr, e))?;
            Ok(found
                .subnets()
                .first()
                .and_then(|s| s.subnet_id())
                .ok_or_else(|| {
                    AwsError::other(
                        region,
                        "DescribeSubnets",
                        &cidr,
                        "conflicting subnet not found",
                    )
                })?
                .to_owned())
        }
    }
}

/// The two kinds of security group of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupRole {
    Binary,
    Monitoring,
}

impl GroupRole {
    fn name(self, tag: &str) -> String {
        match self {
            GroupRole::Binary => security_group_name(tag, "binary"),
            GroupRole::Monitoring => security_group_name(tag, "monitoring"),
        }
    }

    fn description(self) -> &'static str {
        match self {
            GroupRole::Binary => "flotilla binary instances",
            GroupRole::Monitoring => "flotilla monitoring instance",
        }
    }
}

/// The description of the agent port's rules.
pub const AGENT_RULE_DESCRIPTION: &str = "flotilla agent API (deployer)";

/// One ingress rule: a protocol, a port range (absent for all protocols) and one source block,
/// in the form EC2 describes them (see [`Rule::new`]), so rules compare equal when EC2 would
/// call them the same.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    /// An IPv4 or IPv6 CIDR block, its address masked to the prefix.
    pub cidr: String,
}

impl Rule {
    /// The rule for `port` of `protocol` from `cidr`, normalized as EC2 reports it: protocol
    /// names in lower case (numbers of tcp, udp, icmp and icmpv6 as names), no ports for all
    /// protocols (`-1`), the block's address masked to its prefix.
    pub fn new(protocol: &str, from_port: Option<i32>, to_port: Option<i32>, cidr: &str) -> Rule {
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "6" => "tcp".to_owned(),
            "17" => "udp".to_owned(),
            "1" => "icmp".to_owned(),
            "58" => "icmpv6".to_owned(),
            "all" => "-1".to_owned(),
            other => other.to_owned(),
        };
        let (from_port, to_port) =
            if protocol == "-1" { (None, None) } else { (from_port, to_port) };
        Rule { protocol, from_port, to_port, cidr: canonical_cidr(cidr) }
    }

    /// This rule as an EC2 permission.
    fn permission(&self, description: Option<&str>) -> IpPermission {
        let mut permission = IpPermission::builder()
            .ip_protocol(&self.protocol)
            .set_from_port(self.from_port)
            .set_to_port(self.to_port);
        if self.cidr.contains(':') {
            permission = permission.ipv6_ranges(
                aws_sdk_ec2::types::Ipv6Range::builder()
                    .cidr_ipv6(&self.cidr)
                    .set_description(description.map(str::to_owned))
                    .build(),
            );
        } else {
            permission = permission.ip_ranges(
                IpRange::builder()
                    .cidr_ip(&self.cidr)
                    .set_description(description.map(str::to_owned))
                    .build(),
            );
        }
        permission.build()
    }
}

/// `cidr` with its address masked to its prefix (`10.1.2.3/8` → `10.0.0.0/8`, IPv6 in its
/// canonical lower-case form); as written when it is not a CIDR block.
fn canonical_cidr(cidr: &str) -> String {
    let Some((address, prefix)) = cidr.trim().split_once('/') else {
        return cidr.trim().to_owned();
    };
    let (Ok(address), Ok(prefix)) = (address.parse::<std::net::IpAddr>(), prefix.parse::<u32>())
    else {
        return cidr.trim().to_owned();
    };
    match address {
        std::net::IpAddr::V4(v4) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            format!("{}/{prefix}", Ipv4Addr::from(u32::from(v4) & mask))
        }
        std::net::IpAddr::V6(v6) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            format!("{}/{prefix}", std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
        _ => cidr.trim().to_owned(),
    }
}

/// Desired rules with their descriptions.
type Rules = BTreeMap<Rule, &'static str>;

/// The agent port from the deployer's address and from every address `authorize` let in.
fn agent_rules(settings: &NetworkSettings<'_>) -> Rules {
    let port = Some(i32::from(DEFAULT_API_PORT));
    std::iter::once(settings.deployer_ip)
        .chain(settings.authorized.iter().copied())
        .map(|ip| (Rule::new("tcp", port, port, &format!("{ip}/32")), AGENT_RULE_DESCRIPTION))
        .collect()
}

/// The spec's `ports`.
fn port_rules(ports: &[PortSpec]) -> Rules {
    ports
        .iter()
        .map(|p| {
            let port = Some(i32::from(p.port));
            (Rule::new(&p.protocol, port, port, &p.cidr), "spec ports")
        })
        .collect()
}

/// The scrape ports ([`SCRAPE_PORTS`]) from the monitoring VPC's blocks: only the deployment's
/// own monitoring machine scrapes, over the peering, never the internet.
fn metrics_rules(blocks: &[String]) -> Rules {
    blocks
        .iter()
        .flat_map(|block| {
            SCRAPE_PORTS.iter().map(move |port| {
                let port = Some(i32::from(*port));
                (Rule::new("tcp", port, port, block), "metrics (monitoring machine)")
            })
        })
        .collect()
}

/// The telemetry ingest ports ([`INGEST_PORTS`]) of the monitoring group from the deployment's
/// VPC blocks: machines push logs, profiles and traces over the peering, never the internet.
fn ingest_rules(blocks: &[String]) -> Rules {
    blocks
        .iter()
        .flat_map(|block| {
            INGEST_PORTS.iter().map(move |port| {
                let port = Some(i32::from(*port));
                (Rule::new("tcp", port, port, block), "telemetry (deployment's machines)")
            })
        })
        .collect()
}

/// The ingress rules `group` has: its CIDR rules, and permissions of other kinds (other groups,
/// prefix lists) that flotilla never makes, which do not belong in the set and are revoked.
fn ingress_of(group: &SecurityGroup) -> (BTreeSet<Rule>, Vec<IpPermission>) {
    let mut rules = BTreeSet::new();
    let mut others = Vec::new();
    for permission in group.ip_permissions() {
        let protocol = permission.ip_protocol().unwrap_or("-1");
        let (from, to) = (permission.from_port(), permission.to_port());
        for range in permission.ip_ranges() {
            if let Some(cidr) = range.cidr_ip() {
                rules.insert(Rule::new(protocol, from, to, cidr));
            }
        }
        for range in permission.ipv6_ranges() {
            if let Some(cidr) = range.cidr_ipv6() {
                rules.insert(Rule::new(protocol, from, to, cidr));
            }
        }
        if !permission.user_id_group_pairs().is_empty() || !permission.prefix_list_ids().is_empty()
        {
            others.push(
                IpPermission::builder()
                    .ip_protocol(protocol)
                    .set_from_port(from)
                    .set_to_port(to)
                    .set_user_id_group_pairs(Some(permission.user_id_group_pairs().to_vec()))
                    .set_prefix_list_ids(Some(permission.prefix_list_ids().to_vec()))
                    .build(),
            );
        }
    }
    (rules, others)
}

/// The security groups named `names` in `vpc_id`.
async fn find_groups(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    vpc_id: &str,
    names: &[String],
) -> Result<Vec<SecurityGroup>, ProviderError> {
    let found = ec2
        .describe_security_groups()
        .filters(filter("vpc-id", vpc_id))
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-name")
                .set_values(Some(names.to_vec()))
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "DescribeSecurityGroups", names.join(", "), e))?;
    // The filters are checked here too: an emulator may ignore them.
    Ok(found
        .security_groups()
        .iter()
        .filter(|g| {
            g.vpc_id() == Some(vpc_id)
                && g.group_name().is_some_and(|n| names.iter().any(|name| name == n))
        })
        .cloned()
        .collect())
}

/// Creates the group `name` in `vpc_id`; one that exists already (a crash after its creation,
/// or a run at the same time) is adopted. Returns its id and what it is now.
async fn create_group(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    tag: &str,
    vpc_id: &str,
    name: &str,
    description: &str,
) -> Result<(String, SecurityGroup), ProviderError> {
    let created = ec2
        .create_security_group()
        .group_name(name)
        .description(description)
        .vpc_id(vpc_id)
        .tag_specifications(tag_spec(ResourceType::SecurityGroup, tag, name, &[]))
        .send()
        .await;
    let error = match created {
        Ok(answer) => {
            let id = answer.group_id().ok_or_else(|| {
                AwsError::other(region, "CreateSecurityGroup", name, "no id in the answer")
            })?;
            // New: no ingress rules yet.
            let group = SecurityGroup::builder().group_id(id).group_name(name).build();
            return Ok((id.to_owned(), group));
        }
        Err(e) => AwsError::from_sdk(region, "CreateSecurityGroup", name, e),
    };
    if !error.code_is("InvalidGroup.Duplicate") {
        return Err(error.into());
    }
    let found = find_groups(ec2, region, vpc_id, &[name.to_owned()]).await?;
    match found.into_iter().find_map(|g| Some((g.group_id()?.to_owned(), g))) {
        Some(adopted) => Ok(adopted),
        None => Err(error.into()),
    }
}

/// Makes the ingress rules of group `id` exactly `desired`: authorizes what is missing first
/// (so the deployer is never locked out in between), then revokes what is not desired.
async fn reconcile_group(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    id: &str,
    existing: &SecurityGroup,
    desired: &Rules,
) -> Result<(), ProviderError> {
    let (missing, extra) = ingress_changes(existing, desired);
    change_ingress(ec2, region, id, Change::Authorize, missing).await?;
    change_ingress(ec2, region, id, Change::Revoke, extra).await
}

/// What turns the ingress rules of `existing` into exactly `desired`: the permissions to
/// authorize and those to revoke.
fn ingress_changes(
    existing: &SecurityGroup,
    desired: &Rules,
) -> (Vec<IpPermission>, Vec<IpPermission>) {
    let (present, others) = ingress_of(existing);
    let missing = desired
        .iter()
        .filter(|(rule, _)| !present.contains(rule))
        .map(|(rule, description)| rule.permission(Some(description)))
        .collect();
    let mut extra: Vec<IpPermission> = present
        .iter()
        .filter(|rule| !desired.contains_key(rule))
        .map(|rule| rule.permission(None))
        .collect();
    extra.extend(others);
    (missing, extra)
}

/// Adding or removing ingress rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Authorize,
    Revoke,
}

/// Authorizes or revokes `permissions` on group `id` in one call. When the call is refused
/// because one of them is there already (or gone already: another run got there first), each
/// is sent alone and those are skipped.
pub async fn change_ingress(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    id: &str,
    change: Change,
    permissions: Vec<IpPermission>,
) -> Result<(), ProviderError> {
    if permissions.is_empty() {
        return Ok(());
    }
    let (operation, done_already) = match change {
        Change::Authorize => ("AuthorizeSecurityGroupIngress", "InvalidPermission.Duplicate"),
        Change::Revoke => ("RevokeSecurityGroupIngress", "InvalidPermission.NotFound"),
    };
    let send = |permissions: Vec<IpPermission>| async move {
        let result = match change {
            Change::Authorize => ec2
                .authorize_security_group_ingress()
                .group_id(id)
                .set_ip_permissions(Some(permissions))
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, operation, id, e)),
            Change::Revoke => ec2
                .revoke_security_group_ingress()
                .group_id(id)
                .set_ip_permissions(Some(permissions))
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, operation, id, e)),
        };
        match result {
            Err(error) if error.code_is(done_already) => Ok(false),
            Err(error) => Err(error),
            Ok(()) => Ok(true),
        }
    };
    if permissions.len() > 1 && send(permissions.clone()).await? {
        return Ok(());
    }
    // One permission, or a batch refused as a whole because one of them was done already.
    for permission in permissions {
        send(vec![permission]).await?;
    }
    Ok(())
}

/// An ingress rule for one port from one CIDR.
pub fn permission(protocol: &str, port: u16, cidr: &str, description: &str) -> IpPermission {
    let port = Some(i32::from(port));
    Rule::new(protocol, port, port, cidr).permission(Some(description))
}

/// Where a route goes.
#[derive(Clone, Copy, Debug)]
pub enum Route<'a> {
    Gateway(&'a str),
    Peering(&'a str),
}

/// Creates a route; one that exists already is fine.
pub async fn create_route(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    table: &str,
    destination: &str,
    target: Route<'_>,
) -> Result<(), ProviderError> {
    let request = ec2.create_route().route_table_id(table).destination_cidr_block(destination);
    let request = match target {
        Route::Gateway(id) => request.gateway_id(id),
        Route::Peering(id) => request.vpc_peering_connection_id(id),
    };
    match request.send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let error =
                AwsError::from_sdk(region, "CreateRoute", format!("{table} {destination}"), e);
            if error.code_is("RouteAlreadyExists") { Ok(()) } else { Err(error.into()) }
        }
    }
}

/// The newest Ubuntu 24.04 (noble) image of `architecture` (`x86_64` or `arm64`).
async fn find_image(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    architecture: &str,
) -> Result<String, ProviderError> {
    let name_arch = if architecture == "arm64" { "arm64" } else { "amd64" };
    let pattern = format!("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{name_arch}-server-*");
    let found = ec2
        .describe_images()
        .owners(CANONICAL)
        .filters(filter("name", &pattern))
        .filters(filter("root-device-type", "ebs"))
        .filters(filter("state", "available"))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "DescribeImages", &pattern, e))?;
    let newest = found
        .images()
        .iter()
        .filter(|i| i.image_id().is_some())
        .max_by(|a, b| {
            a.creation_date().unwrap_or_default().cmp(b.creation_date().unwrap_or_default())
        })
        .and_then(|i| i.image_id())
        .ok_or_else(|| {
            AwsError::other(
                region,
                "DescribeImages",
                &pattern,
                "no Ubuntu 24.04 image found in this region",
            )
        })?;
    Ok(newest.to_owned())
}

/// How long a spoke region's peering has to reach `pending-acceptance`.
const PEERING_DEADLINE: Duration = Duration::from_secs(120);

/// Peers `spoke` with the monitoring region `hub` and routes both ways. `spoke_fresh`: the
/// spoke's VPC was made in this run, so no peering to it can exist yet.
pub async fn ensure_peering(
    clients: &Clients,
    journal: &Journal,
    tag: &str,
    hub: (&str, u8),
    spoke: (&str, u8),
    spoke_fresh: bool,
) -> Result<(), ProviderError> {
    let (hub_region, hub_index) = hub;
    let (spoke_region, spoke_index) = spoke;
    let records = journal.read();
    let spoke_record = records.regions.get(spoke_region).cloned().unwrap_or_default();
    if spoke_record.peering_routed {
        return Ok(());
    }
    let hub_record = records.regions.get(hub_region).cloned().unwrap_or_default();
    let (Some(hub_vpc), Some(spoke_vpc), Some(hub_table), Some(spoke_table)) = (
        hub_record.vpc_id.clone(),
        spoke_record.vpc_id.clone(),
        hub_record.route_table_id.clone(),
        spoke_record.route_table_id.clone(),
    ) else {
        return Err(ProviderError::new(format!(
            "peering {hub_region} with {spoke_region}: a VPC or route table is missing; run the command again"
        )));
    };
    let hub_ec2 = clients.ec2(hub_region);
    let spoke_ec2 = clients.ec2(spoke_region);
    let id = match spoke_record.peering_id {
        Some(id) => id,
        None => {
            let found = if spoke_fresh {
                None
            } else {
                Some(
                    hub_ec2
                        .describe_vpc_peering_connections()
                        .filters(tag_filter(tag))
                        .filters(filter("requester-vpc-info.vpc-id", &hub_vpc))
                        .filters(filter("accepter-vpc-info.vpc-id", &spoke_vpc))
                        .send()
                        .await
                        .map_err(|e| {
                            AwsError::from_sdk(
                                hub_region,
                                "DescribeVpcPeeringConnections",
                                &spoke_vpc,
                                e,
                            )
                        })?,
                )
            };
            // The VPC filters are checked here too: an emulator may ignore them, and adopting
            // another spoke's peering would never be accepted.
            let live = found.as_ref().and_then(|found| {
                found.vpc_peering_connections().iter().find(|p| {
                    p.requester_vpc_info().and_then(|v| v.vpc_id()) == Some(hub_vpc.as_str())
                        && p.accepter_vpc_info().and_then(|v| v.vpc_id())
                            == Some(spoke_vpc.as_str())
                        && tagged(p.tags(), tag)
                        && p.status().and_then(|s| s.code()).is_some_and(|c| {
                            !matches!(
                                c.as_str(),
                                "deleted" | "deleting" | "rejected" | "failed" | "expired"
                            )
                        })
                })
            });
            let id = match live.and_then(|p| p.vpc_peering_connection_id()) {
                Some(id) => id.to_owned(),
                None => hub_ec2
                    .create_vpc_peering_connection()
                    .vpc_id(&hub_vpc)
                    .peer_vpc_id(&spoke_vpc)
                    .peer_region(spoke_region)
                    .tag_specifications(tag_spec(
                        ResourceType::VpcPeeringConnection,
                        tag,
                        &format!("flotilla-{tag}-{spoke_region}"),
                        &[],
                    ))
                    .send()
                    .await
                    .map_err(|e| {
                        AwsError::from_sdk(hub_region, "CreateVpcPeeringConnection", &spoke_vpc, e)
                    })?
                    .vpc_peering_connection()
                    .and_then(|p| p.vpc_peering_connection_id())
                    .ok_or_else(|| {
                        AwsError::other(
                            hub_region,
                            "CreateVpcPeeringConnection",
                            &spoke_vpc,
                            "no id in the answer",
                        )
                    })?
                    .to_owned(),
            };
            journal.update(|r| r.region(spoke_region).peering_id = Some(id.clone()))?;
            id
        }
    };
    // Accept in the spoke region; the request may take a moment to arrive there.
    let deadline = Instant::now() + PEERING_DEADLINE;
    let mut delay = Duration::from_millis(500);
    loop {
        match spoke_ec2.accept_vpc_peering_connection().vpc_peering_connection_id(&id).send().await
        {
            Ok(_) => break,
            Err(e) => {
                let error = AwsError::from_sdk(spoke_region, "AcceptVpcPeeringConnection", &id, e);
                let settled = error.code_is("InvalidStateTransition")
                    || error.code_is("OperationNotPermitted");
                if settled {
                    // Already active (a re-run), or accepted by an earlier attempt.
                    break;
                }
                // The request not arrived yet, or throttling: wait. Anything else is final.
                let arriving = matches!(error.healing(), Healing::Propagating | Healing::Transient);
                if !arriving || Instant::now() >= deadline {
                    return Err(error.into());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    create_route(&hub_ec2, hub_region, &hub_table, &vpc_cidr(spoke_index), Route::Peering(&id))
        .await?;
    create_route(&spoke_ec2, spoke_region, &spoke_table, &vpc_cidr(hub_index), Route::Peering(&id))
        .await?;
    journal.update(|r| r.region(spoke_region).peering_routed = true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{Ipv6Range, UserIdGroupPair};

    use super::*;

    fn port(protocol: &str, port: u16, cidr: &str) -> PortSpec {
        PortSpec { protocol: protocol.into(), port, cidr: cidr.into() }
    }

    /// `(protocol, from, cidr)` of each range of `permissions`.
    fn summary(permissions: &[IpPermission]) -> Vec<(String, Option<i32>, String)> {
        let mut rules: Vec<_> = permissions
            .iter()
            .flat_map(|p| {
                let v4 = p.ip_ranges().iter().filter_map(|r| r.cidr_ip());
                let v6 = p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6());
                v4.chain(v6).map(|c| {
                    (p.ip_protocol().unwrap_or_default().to_owned(), p.from_port(), c.to_owned())
                })
            })
            .collect();
        rules.sort();
        rules
    }

    #[test]
    fn rules_compare_as_ec2_reports_them() {
        let tcp = Some(9090);
        assert_eq!(
            Rule::new("TCP", tcp, tcp, "10.1.2.3/8"),
            Rule::new("6", tcp, tcp, "10.0.0.0/8")
        );
        assert_eq!(
            Rule::new("tcp", tcp, tcp, "2001:DB8:0:0::1/32").cidr,
            "2001:db8::/32",
            "IPv6 in EC2's canonical form"
        );
        assert_eq!(Rule::new("-1", tcp, tcp, "::/0"), Rule::new("-1", None, None, "::/0"));
        assert_ne!(Rule::new("udp", tcp, tcp, "::/0"), Rule::new("tcp", tcp, tcp, "::/0"));
    }

    /// A group left by a crash after its creation (its IPv6 rule included), whose spec then
    /// changed: what is there is kept, the rest added, what the spec dropped revoked, and an
    /// address `authorize` let in stays.
    #[test]
    fn a_group_converges_on_the_desired_rules_both_ways() {
        let authorized = BTreeSet::from([Ipv4Addr::new(203, 0, 113, 9)]);
        let ports = [port("tcp", 9090, "0.0.0.0/0"), port("tcp", 9090, "::/0")];
        let settings = NetworkSettings {
            tag: "t",
            deployer_ip: Ipv4Addr::new(198, 51, 100, 7),
            authorized: &authorized,
            ports: &ports,
            monitoring_block: None,
            vpc_blocks: Vec::new(),
        };
        let mut desired = agent_rules(&settings);
        desired.extend(port_rules(settings.ports));
        let existing = SecurityGroup::builder()
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(9090)
                    .to_port(9090)
                    .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                    .ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
                    .build(),
            )
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("udp")
                    .from_port(9000)
                    .to_port(9000)
                    .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/8").build())
                    .build(),
            )
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(7443)
                    .to_port(7443)
                    .ip_ranges(IpRange::builder().cidr_ip("198.51.100.7/32").build())
                    .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-other").build())
                    .build(),
            )
            .build();
        let (missing, extra) = ingress_changes(&existing, &desired);
        assert_eq!(
            summary(&missing),
            [("tcp".to_owned(), Some(7443), "203.0.113.9/32".to_owned())],
            "only the authorized address is missing; the IPv6 rule is not sent again"
        );
        assert_eq!(summary(&extra), [("udp".to_owned(), Some(9000), "10.0.0.0/8".to_owned())]);
        assert_eq!(extra.len(), 2, "the other group's rule goes too: {extra:?}");
        assert_eq!(extra[1].user_id_group_pairs().len(), 1);

        let (missing, extra) = ingress_changes(&SecurityGroup::builder().build(), &desired);
        assert_eq!(missing.len(), desired.len());
        assert!(extra.is_empty());
    }

    #[test]
    fn every_name_sent_to_ec2_fits_for_the_longest_tag() {
        let tag = "t".repeat(flotilla_spec::names::MAX_TAG_BYTES);
        let spec = tag_spec(ResourceType::Subnet, &tag, &format!("flotilla-{tag}-us-east-1a"), &[]);
        for t in spec.tags() {
            assert!(t.value().unwrap_or_default().len() <= 256, "{:?}", t.key());
        }
        for role in ["binary", "monitoring"] {
            assert!(security_group_name(&tag, role).len() <= 255);
        }
    }
}
