//! One region's network, created or adopted: VPC `10.<i>.0.0/16` (`i` = the region's index in
//! the sorted region set), an internet gateway, a default route on the VPC's main route table
//! (so subnets need no association), a subnet `10.<i>.<z>.0/24` per availability zone in use
//! (`z` = the zone's index among the region's zones that offer a needed type), and security
//! groups; then hub-and-spoke peering between the monitoring region and every other region.
//!
//! Everything is tagged at creation (TagSpecifications). A region this deployment never
//! touched is created without looking first (no resource of ours can exist there); a region it
//! touched before is looked up by tags first, so a re-run after a crash adopts what exists.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, ResourceType, Tag, TagSpecification};
use flotilla_core::provider::ProviderError;
use flotilla_spec::bootstrap::DEFAULT_API_PORT;
use flotilla_spec::fleet::PortSpec;
use flotilla_spec::names::{ec2_name_tag, security_group_name};
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::journal::Journal;
use crate::records::TAG_DEPLOYMENT;

/// What one region needs.
#[derive(Clone, Debug)]
pub struct RegionPlan {
    pub region: String,
    /// Index of the region in the sorted region set: the VPC is `10.<index>.0.0/16`.
    pub index: u8,
    /// Every zone of the region that offers a needed type, sorted: a zone's index here is the
    /// third octet of its subnet.
    pub zones: Vec<String>,
    /// Zones that get a subnet now.
    pub zones_in_use: Vec<String>,
    /// Architectures (`x86_64`, `arm64`) whose Ubuntu image is needed.
    pub architectures: Vec<String>,
    pub binary_group: bool,
    pub monitoring_group: bool,
}

/// The deployment-wide settings the network needs.
#[derive(Clone, Debug)]
pub struct NetworkSettings<'a> {
    pub tag: &'a str,
    pub deployer_ip: Ipv4Addr,
    pub ports: &'a [PortSpec],
}

/// The VPC CIDR of a region index.
pub fn vpc_cidr(index: u8) -> String {
    format!("10.{index}.0.0/16")
}

/// A tag specification with the deployment tag and a Name (`name`, shortened with a hash when it
/// is longer than a tag value may be).
pub fn tag_spec(
    resource: ResourceType,
    tag: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut spec = TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key(TAG_DEPLOYMENT).value(tag).build())
        .tags(Tag::builder().key("Name").value(ec2_name_tag(name)).build());
    for (key, value) in extra {
        spec = spec.tags(Tag::builder().key(*key).value(*value).build());
    }
    spec.build()
}

/// The filter matching resources of deployment `tag`.
pub fn tag_filter(tag: &str) -> Filter {
    Filter::builder().name(format!("tag:{TAG_DEPLOYMENT}")).values(tag).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
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
    let vpc_id = match record.vpc_id {
        Some(id) => id,
        None => {
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
                    .filter(|v| crate::teardown::tagged(v.tags(), tag))
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
                    if let Some(igw) = found
                        .internet_gateways()
                        .iter()
                        .find(|g| crate::teardown::tagged(g.tags(), tag))
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
            create_route(&ec2, region, &table, "0.0.0.0/0", Route::Gateway(&igw_id)).await?;
            journal.update(|r| r.region(region).route_table_id = Some(table.clone()))?;
        }
        Ok::<(), ProviderError>(())
    };
    let subnets = async {
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
            for subnet in found.subnets().iter().filter(|s| crate::teardown::tagged(s.tags(), tag))
            {
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
        // Security groups: the agent's port from the deployer only, and the spec's ports.
        let deployer = format!("{}/32", settings.deployer_ip);
        if plan.binary_group && record.binary_group_id.is_none() {
            let mut rules = vec![(
                String::from("tcp"),
                DEFAULT_API_PORT,
                deployer.clone(),
                "flotilla agent API (deployer)".to_owned(),
            )];
            for port in settings.ports {
                rules.push((
                    port.protocol.clone(),
                    port.port,
                    port.cidr.clone(),
                    "spec ports".to_owned(),
                ));
            }
            let id = ensure_group(
                &ec2,
                region,
                tag,
                &vpc_id,
                &security_group_name(tag, "binary"),
                "flotilla binary instances",
                &rules,
                fresh,
            )
            .await?;
            journal.update(|r| r.region(region).binary_group_id = Some(id))?;
        }
        if plan.monitoring_group && record.monitoring_group_id.is_none() {
            let rules = vec![(
                String::from("tcp"),
                DEFAULT_API_PORT,
                deployer.clone(),
                "flotilla agent API (deployer)".to_owned(),
            )];
            let id = ensure_group(
                &ec2,
                region,
                tag,
                &vpc_id,
                &security_group_name(tag, "monitoring"),
                "flotilla monitoring instance",
                &rules,
                fresh,
            )
            .await?;
            journal.update(|r| r.region(region).monitoring_group_id = Some(id))?;
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

/// `(protocol, port, cidr, description)`.
type Rule = (String, u16, String, String);

#[allow(clippy::too_many_arguments)] // One call site per group kind; a struct would only rename them.
async fn ensure_group(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    tag: &str,
    vpc_id: &str,
    name: &str,
    description: &str,
    rules: &[Rule],
    fresh: bool,
) -> Result<String, ProviderError> {
    let mut existing_rules: Vec<(String, u16, String)> = Vec::new();
    let mut id = None;
    if !fresh {
        let found = ec2
            .describe_security_groups()
            .filters(filter("vpc-id", vpc_id))
            .filters(filter("group-name", name))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "DescribeSecurityGroups", name, e))?;
        if let Some(group) = found.security_groups().first() {
            id = group.group_id().map(str::to_owned);
            for permission in group.ip_permissions() {
                for range in permission.ip_ranges() {
                    existing_rules.push((
                        permission.ip_protocol().unwrap_or_default().to_owned(),
                        permission.from_port().unwrap_or_default() as u16,
                        range.cidr_ip().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
    }
    let id = match id {
        Some(id) => id,
        None => ec2
            .create_security_group()
            .group_name(name)
            .description(description)
            .vpc_id(vpc_id)
            .tag_specifications(tag_spec(ResourceType::SecurityGroup, tag, name, &[]))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "CreateSecurityGroup", name, e))?
            .group_id()
            .ok_or_else(|| {
                AwsError::other(region, "CreateSecurityGroup", name, "no id in the answer")
            })?
            .to_owned(),
    };
    let missing: Vec<IpPermission> = rules
        .iter()
        .filter(|(protocol, port, cidr, _)| {
            !existing_rules.iter().any(|(p, from, c)| p == protocol && from == port && c == cidr)
        })
        .map(|(protocol, port, cidr, description)| permission(protocol, *port, cidr, description))
        .collect();
    if !missing.is_empty() {
        ec2.authorize_security_group_ingress()
            .group_id(&id)
            .set_ip_permissions(Some(missing))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "AuthorizeSecurityGroupIngress", &id, e))?;
    }
    Ok(id)
}

/// An ingress rule for one port from one CIDR.
pub fn permission(protocol: &str, port: u16, cidr: &str, description: &str) -> IpPermission {
    let range = IpRange::builder().cidr_ip(cidr).description(description).build();
    let mut permission = IpPermission::builder()
        .ip_protocol(protocol)
        .from_port(i32::from(port))
        .to_port(i32::from(port));
    if cidr.contains(':') {
        permission = permission.ipv6_ranges(
            aws_sdk_ec2::types::Ipv6Range::builder()
                .cidr_ipv6(cidr)
                .description(description)
                .build(),
        );
    } else {
        permission = permission.ip_ranges(range);
    }
    permission.build()
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
                        && crate::teardown::tagged(p.tags(), tag)
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
    use super::*;

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
