//! Existing networks: the spec's `network` (a VPC, subnets and security groups the account
//! already has) resolved against what each region holds, read-only.
//!
//! [`read`] takes one snapshot per region (VPCs, subnets, route tables, the listed security
//! groups, every page); [`evaluate`] is pure: it resolves every group's network and returns
//! every problem at once, located at the spec field that caused it. The reference check
//! (`references_network.rs`) reports the problems; `prepare` evaluates again (the account may
//! have changed since) and launches into what was resolved.
//!
//! The rules, and why:
//! - A deployment uses existing VPCs in every region or in none. flotilla peers only the VPCs
//!   it makes (hub and spoke with us-east-1); routing between its own VPC and a user's would
//!   need changes to the user's route tables, which flotilla never makes.
//! - The groups of one region share one VPC (their subnets and security groups may differ):
//!   flotilla's security group, made once per region, lives in that VPC.
//! - A zone with several of a group's subnets launches into the first one listed (for a tag or
//!   no `subnets`, the lowest id); the choice is logged (`-v`).
//! - Every subnet used must route `0.0.0.0/0` to an internet gateway: machines get public
//!   addresses, and the CLI reaches their agents on them; without the route it would wait for
//!   agents that can never answer.
//! - The monitoring machine (us-east-1) scrapes every machine's metrics port
//!   ([`METRICS_PORT`]). In other regions that needs VPC blocks that do not overlap and a route
//!   each way, in the route table of every subnet involved, through a peering connection or a
//!   transit gateway. Each missing piece is an **error**, not a warning: the monitoring machine
//!   is part of every deployment, and a fleet whose dashboards stay empty without a word is the
//!   silent failure this check exists to prevent; the check is read-only and runs before
//!   anything is made, so fixing the route first costs nothing. The security-group half is
//!   flotilla's own: its group in an existing VPC admits the metrics port from the monitoring
//!   VPC's blocks.
//! - Network ACLs sit between subnets, in one VPC as across two, and are stateless: the
//!   scrape ports ([`SCRAPE_PORTS`]) must pass out of the monitoring machine's subnet and into
//!   each machine's, and the answers, to the scraper's ephemeral ports (Linux's 32768-60999),
//!   the other way. Rules are read as AWS applies them, lowest number first, the first that
//!   covers the traffic deciding; a deny that covers part of it (some ports, part of a block)
//!   before any allow of all of it counts as a deny. Each ACL that drops a scrape or its answer
//!   is an error naming the ACL, the direction, the ports, the block and the rule.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{NetworkAcl, RouteState, RouteTable, SecurityGroup, Subnet, Vpc};
use flotilla_core::plan::{DeploymentPlan, GroupPlan};

use crate::MONITORING_REGION;
use flotilla_core::provider::{ProviderError, ReferenceProblem, Role};
use flotilla_spec::Severity;
use flotilla_spec::account::{NetworkSpec, ResourceRef};

use crate::clients::Clients;
use crate::error::AwsError;
use crate::fanout::{Concurrency, fan_out};
use crate::network::SCRAPE_PORTS;

/// The port the deployer's monitoring machine scrapes on every machine.
pub const METRICS_PORT: u16 = 9090;

/// What one region holds, as far as networks go.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub route_tables: Vec<RouteTable>,
    /// The security groups the spec lists in this region (those that exist).
    pub security_groups: Vec<SecurityGroup>,
    pub network_acls: Vec<NetworkAcl>,
}

/// One group's network, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupNetwork {
    pub region: String,
    pub vpc_id: String,
    /// Zone → the subnet machines of that zone launch into.
    pub subnets: BTreeMap<String, String>,
    /// The spec's security groups, added to flotilla's own.
    pub security_groups: Vec<String>,
}

/// Every group's network, and what prepare needs besides.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// Group name → its network.
    pub groups: BTreeMap<String, GroupNetwork>,
    /// The IPv4 blocks of the monitoring machine's VPC: flotilla's group admits the metrics
    /// port from them.
    pub monitoring_blocks: Vec<String>,
    /// Choices worth a line in the `-v` log.
    pub notes: Vec<String>,
}

/// The regions whose groups name an existing network.
pub fn regions_with_networks(plan: &DeploymentPlan) -> BTreeSet<String> {
    plan.groups.iter().filter(|g| g.settings.network.is_some()).map(|g| g.region.clone()).collect()
}

/// Reads a snapshot of every region of `plan` that names an existing network, at once.
pub async fn read(
    clients: &Clients,
    plan: &DeploymentPlan,
) -> Result<BTreeMap<String, Snapshot>, ProviderError> {
    let regions = regions_with_networks(plan);
    let reads = regions.iter().map(|region| {
        let groups: BTreeSet<String> = plan
            .groups
            .iter()
            .filter(|g| &g.region == region)
            .filter_map(|g| g.settings.network.as_ref())
            .flat_map(|n| n.value.security_groups.iter().cloned())
            .collect();
        async move {
            let snapshot = read_region(clients, region, &groups).await?;
            Ok::<_, ProviderError>((region.clone(), snapshot))
        }
    });
    Ok(fan_out(Concurrency::REGIONS, reads).await?.into_iter().collect())
}

async fn read_region(
    clients: &Clients,
    region: &str,
    security_groups: &BTreeSet<String>,
) -> Result<Snapshot, ProviderError> {
    let ec2 = clients.ec2(region);
    let what = "existing network";
    let vpcs = async {
        let mut pages = ec2.describe_vpcs().into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk(region, "DescribeVpcs", what, e))?;
            found.extend(page.vpcs().iter().cloned());
        }
        Ok::<_, ProviderError>(found)
    };
    let subnets = async {
        let mut pages = ec2.describe_subnets().into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk(region, "DescribeSubnets", what, e))?;
            found.extend(page.subnets().iter().cloned());
        }
        Ok::<_, ProviderError>(found)
    };
    let route_tables = async {
        let mut pages = ec2.describe_route_tables().into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| AwsError::from_sdk(region, "DescribeRouteTables", what, e))?;
            found.extend(page.route_tables().iter().cloned());
        }
        Ok::<_, ProviderError>(found)
    };
    let groups = async {
        if security_groups.is_empty() {
            return Ok(Vec::new());
        }
        // By filter, not by GroupIds: an unknown id is reported with the others, located,
        // instead of failing the whole call.
        let ids: Vec<String> = security_groups.iter().cloned().collect();
        let mut pages = ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-id")
                    .set_values(Some(ids.clone()))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                AwsError::from_sdk(region, "DescribeSecurityGroups", ids.join(", "), e)
            })?;
            // The filter is checked here too: an emulator may ignore it.
            found.extend(
                page.security_groups()
                    .iter()
                    .filter(|g| g.group_id().is_some_and(|id| security_groups.contains(id)))
                    .cloned(),
            );
        }
        Ok::<_, ProviderError>(found)
    };
    let network_acls = async {
        let mut pages = ec2.describe_network_acls().into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| AwsError::from_sdk(region, "DescribeNetworkAcls", what, e))?;
            found.extend(page.network_acls().iter().cloned());
        }
        Ok::<_, ProviderError>(found)
    };
    let (vpcs, subnets, route_tables, security_groups, network_acls) =
        tokio::try_join!(vpcs, subnets, route_tables, groups, network_acls)?;
    Ok(Snapshot { vpcs, subnets, route_tables, security_groups, network_acls })
}

/// The IPv4 blocks of `vpc` (its primary and every associated one).
fn vpc_blocks(vpc: &Vpc) -> Vec<String> {
    let mut blocks: Vec<String> = vpc
        .cidr_block_association_set()
        .iter()
        .filter(|a| {
            a.cidr_block_state().and_then(|s| s.state()).is_none_or(|s| s.as_str() == "associated")
        })
        .filter_map(|a| a.cidr_block().map(str::to_owned))
        .collect();
    if let Some(primary) = vpc.cidr_block()
        && !blocks.iter().any(|b| b == primary)
    {
        blocks.insert(0, primary.to_owned());
    }
    blocks
}

/// An IPv4 block as (network address, prefix length).
fn parse_block(block: &str) -> Option<(u32, u32)> {
    let (address, prefix) = block.split_once('/')?;
    let address: std::net::Ipv4Addr = address.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some((u32::from(address) & mask, prefix))
}

/// Whether block `outer` contains all of `inner`.
fn contains(outer: &str, inner: &str) -> bool {
    let (Some((outer_net, outer_len)), Some((inner_net, inner_len))) =
        (parse_block(outer), parse_block(inner))
    else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - outer_len).unwrap_or(0);
    outer_len <= inner_len && inner_net & mask == outer_net
}

/// Whether two blocks share an address.
fn overlap(a: &str, b: &str) -> bool {
    contains(a, b) || contains(b, a)
}

/// The route table of `subnet`: its explicit association, else its VPC's main table.
fn route_table_of<'s>(snapshot: &'s Snapshot, subnet: &Subnet) -> Option<&'s RouteTable> {
    let id = subnet.subnet_id()?;
    snapshot
        .route_tables
        .iter()
        .find(|t| t.associations().iter().any(|a| a.subnet_id() == Some(id)))
        .or_else(|| {
            snapshot.route_tables.iter().find(|t| {
                t.vpc_id() == subnet.vpc_id()
                    && t.associations().iter().any(|a| a.main() == Some(true))
            })
        })
}

/// Where `table` sends `destination` (a block it must cover whole), if to a target that
/// `wanted` accepts and not into a black hole: the target's id.
fn route_to(
    table: &RouteTable,
    destination: &str,
    wanted: impl Fn(&aws_sdk_ec2::types::Route) -> Option<String>,
) -> Option<String> {
    table
        .routes()
        .iter()
        .filter(|r| r.state() != Some(&RouteState::Blackhole))
        .filter(|r| r.destination_cidr_block().is_some_and(|d| contains(d, destination)))
        .find_map(wanted)
}

/// The target of a black-hole route in `table` covering `destination` (its target is gone: a
/// deleted peering, a detached gateway), said after a missing route's message.
fn dead_route(table: Option<&RouteTable>, destination: &str) -> String {
    table
        .into_iter()
        .flat_map(|t| t.routes())
        .filter(|r| r.state() == Some(&RouteState::Blackhole))
        .filter(|r| r.destination_cidr_block().is_some_and(|d| contains(d, destination)))
        .find_map(|r| {
            r.vpc_peering_connection_id()
                .or_else(|| r.transit_gateway_id())
                .or_else(|| r.gateway_id())
                .or_else(|| r.nat_gateway_id())
        })
        .map(|target| format!(" (its route through {target} is a black hole: {target} is gone)"))
        .unwrap_or_default()
}

/// The network ACL of `subnet`: its association, else its VPC's default ACL. `None` when the
/// snapshot holds no ACL for it (then nothing is checked).
fn acl_of<'s>(snapshot: &'s Snapshot, subnet: &Subnet) -> Option<&'s NetworkAcl> {
    let id = subnet.subnet_id()?;
    snapshot
        .network_acls
        .iter()
        .find(|acl| acl.associations().iter().any(|a| a.subnet_id() == Some(id)))
        .or_else(|| {
            snapshot
                .network_acls
                .iter()
                .find(|acl| acl.vpc_id() == subnet.vpc_id() && acl.is_default() == Some(true))
        })
}

/// The ports of TCP traffic an ACL rule is asked about: `from..=to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpPorts {
    from: i32,
    to: i32,
}

impl TcpPorts {
    fn one(port: u16) -> TcpPorts {
        TcpPorts { from: i32::from(port), to: i32::from(port) }
    }

    /// The ports Linux connects from (`net.ipv4.ip_local_port_range`), where answers go.
    const EPHEMERAL: TcpPorts = TcpPorts { from: 32768, to: 60999 };
}

impl std::fmt::Display for TcpPorts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(formatter, "TCP {}", self.from)
        } else {
            write!(formatter, "TCP {}-{}", self.from, self.to)
        }
    }
}

/// The number of the rule of `acl` that drops TCP traffic on `ports` between its subnet and
/// `peer` (outbound when `egress`), or `None` when the rules let all of it pass: see the
/// module documentation for how the rules are read.
fn acl_denies(acl: &NetworkAcl, egress: bool, peer: &str, ports: TcpPorts) -> Option<i32> {
    let mut entries: Vec<_> = acl.entries().iter().filter(|e| e.egress() == Some(egress)).collect();
    entries.sort_by_key(|e| e.rule_number().unwrap_or(i32::MAX));
    for entry in entries {
        let Some(block) = entry.cidr_block() else { continue }; // IPv6 rules
        let protocol = entry.protocol().unwrap_or("-1");
        if protocol != "-1" && protocol != "6" {
            continue;
        }
        let (port_whole, port_some) = match (protocol, entry.port_range()) {
            ("6", Some(range)) => {
                let (from, to) = (range.from().unwrap_or(0), range.to().unwrap_or(65535));
                (from <= ports.from && ports.to <= to, from <= ports.to && ports.from <= to)
            }
            _ => (true, true),
        };
        let block_whole = contains(block, peer);
        let block_some = overlap(block, peer);
        if !port_some || !block_some {
            continue;
        }
        let deny = entry.rule_action().is_some_and(|a| a.as_str() == "deny");
        let rule = entry.rule_number().unwrap_or(i32::MAX);
        if deny {
            return Some(rule);
        }
        if port_whole && block_whole {
            return None;
        }
    }
    // No rule covers it: AWS's last rule (`*`) denies.
    Some(32767)
}

/// A rule number as the console shows it (`*` for the last).
fn rule_name(rule: i32) -> String {
    if rule == 32767 { "*".to_owned() } else { rule.to_string() }
}

/// An internet gateway target.
fn internet_gateway(route: &aws_sdk_ec2::types::Route) -> Option<String> {
    route.gateway_id().filter(|g| g.starts_with("igw-")).map(str::to_owned)
}

/// A target that joins two VPCs: a peering connection or a transit gateway.
fn between_vpcs(route: &aws_sdk_ec2::types::Route) -> Option<String> {
    route.vpc_peering_connection_id().or_else(|| route.transit_gateway_id()).map(str::to_owned)
}

/// The value of tag `key`.
fn tag_value<'t>(tags: &'t [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'t str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// A subnet chosen for a group, with the field that named it.
#[derive(Clone, Debug)]
struct Chosen {
    subnet: Subnet,
    field: String,
}

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<ReferenceProblem>);

impl Problems {
    fn error(&mut self, field: &str, message: String, help: String) {
        self.0.push(ReferenceProblem {
            field: field.to_owned(),
            severity: Severity::Error,
            message,
            help,
        });
    }
}

/// Resolves every group's network against `snapshots` (see the module documentation). The
/// problems come in the order of the spec's groups; an empty list means `Resolved` is whole.
pub fn evaluate(
    plan: &DeploymentPlan,
    snapshots: &BTreeMap<String, Snapshot>,
) -> (Vec<ReferenceProblem>, Resolved) {
    let mut problems = Problems::default();
    let mut resolved = Resolved::default();
    let networked: Vec<(&GroupPlan, &flotilla_spec::account::Located<NetworkSpec>)> =
        plan.groups.iter().filter_map(|g| g.settings.network.as_ref().map(|n| (g, n))).collect();
    let Some((_, first)) = networked.first() else {
        return (Vec::new(), resolved);
    };

    // Existing VPCs everywhere or nowhere.
    let regions = plan.regions();
    let without: Vec<&String> =
        regions.iter().filter(|r| !networked.iter().any(|(g, _)| &g.region == *r)).collect();
    if !without.is_empty() {
        let listed = without.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
        problems.error(
            &first.field,
            format!(
                "{listed} would run in a VPC flotilla makes while `{}` names an existing one: flotilla peers only the VPCs it makes, and never changes the route tables of yours",
                first.field
            ),
            format!("give `network` for {listed} too (existing VPCs everywhere), or remove every `network` (flotilla's own VPCs everywhere)"),
        );
    }
    // Inside a region: every group names a network, and they share one VPC.
    for region in &regions {
        let in_region: Vec<&GroupPlan> =
            plan.groups.iter().filter(|g| &g.region == region).collect();
        let Some(named) = in_region.iter().find_map(|g| g.settings.network.as_ref()) else {
            continue;
        };
        for group in in_region.iter().filter(|g| g.settings.network.is_none()) {
            let who = match group.role {
                Role::Monitoring => "the monitoring machine".to_owned(),
                Role::Binary => format!("instance entry `{}`", group.name),
            };
            problems.error(
                &named.field,
                format!(
                    "{who} in {region} has no `network` and would run in a VPC flotilla makes, while `{}` names an existing one: the groups of a region share one VPC",
                    named.field
                ),
                format!("give `network.{region}` at the top level (it applies to every entry in {region} and to the monitoring machine), or the same VPC on every entry in {region}"),
            );
        }
    }

    let empty = Snapshot::default();
    // Region → (the VPC its groups use, the field that named it first).
    let mut region_vpc: BTreeMap<String, (String, String)> = BTreeMap::new();
    // Group name → its chosen subnets.
    let mut chosen_of: BTreeMap<String, Vec<Chosen>> = BTreeMap::new();
    for (group, network) in &networked {
        let region = group.region.as_str();
        let snapshot = snapshots.get(region).unwrap_or(&empty);
        let field = network.field.as_str();
        let spec = &network.value;

        // The VPC.
        let vpc_field = format!("{field}.vpc");
        let vpc: Option<&Vpc> = match &spec.vpc {
            ResourceRef::Id(id) => {
                let found = snapshot.vpcs.iter().find(|v| v.vpc_id() == Some(id.as_str()));
                if found.is_none() {
                    problems.error(
                        &vpc_field,
                        format!("VPC {id} does not exist in {region}"),
                        format!("name a VPC of {region} (`aws ec2 describe-vpcs --region {region}`), or the VPC by a tag it carries (`KEY:VALUE`)"),
                    );
                }
                found
            }
            ResourceRef::Tag { key, value } => {
                let found: Vec<&Vpc> = snapshot
                    .vpcs
                    .iter()
                    .filter(|v| tag_value(v.tags(), key) == Some(value.as_str()))
                    .collect();
                match found.as_slice() {
                    [one] => Some(*one),
                    [] => {
                        problems.error(
                            &vpc_field,
                            format!("no VPC in {region} carries the tag {key}={value}"),
                            "tag the VPC, or name it by id (`vpc-…`)".to_owned(),
                        );
                        None
                    }
                    many => {
                        let ids: Vec<&str> = many.iter().filter_map(|v| v.vpc_id()).collect();
                        problems.error(
                            &vpc_field,
                            format!(
                                "{} VPCs in {region} carry the tag {key}={value} ({}): it must name exactly one",
                                ids.len(),
                                ids.join(", ")
                            ),
                            "name the VPC by id (`vpc-…`), or by a tag only it carries".to_owned(),
                        );
                        None
                    }
                }
            }
        };
        let vpc_id = vpc.and_then(|v| v.vpc_id()).map(str::to_owned);
        if let Some(id) = &vpc_id {
            match region_vpc.get(region) {
                Some((other, other_field)) if other != id => problems.error(
                    &vpc_field,
                    format!(
                        "the groups of {region} share one VPC, but this is {id} and `{other_field}` is {other}"
                    ),
                    format!("name the same VPC for every group in {region}; subnets and security groups may differ"),
                ),
                Some(_) => {}
                None => {
                    region_vpc.insert(region.to_owned(), (id.clone(), vpc_field.clone()));
                }
            }
        }

        // The subnets.
        let mut subnets: Vec<Chosen> = Vec::new();
        if spec.subnets.is_empty()
            && let Some(id) = &vpc_id
        {
            let mut all: Vec<&Subnet> =
                snapshot.subnets.iter().filter(|s| s.vpc_id() == Some(id.as_str())).collect();
            all.sort_by_key(|s| s.subnet_id().unwrap_or_default().to_owned());
            if all.is_empty() {
                problems.error(
                    field,
                    format!("VPC {id} in {region} has no subnet"),
                    "create subnets in the VPC, or name another VPC".to_owned(),
                );
            }
            subnets.extend(
                all.into_iter().map(|s| Chosen { subnet: s.clone(), field: field.to_owned() }),
            );
        }
        for (index, subnet_ref) in spec.subnets.iter().enumerate() {
            let subnet_field = format!("{field}.subnets[{index}]");
            match subnet_ref {
                ResourceRef::Id(id) => {
                    match snapshot.subnets.iter().find(|s| s.subnet_id() == Some(id.as_str())) {
                        None => problems.error(
                            &subnet_field,
                            format!("subnet {id} does not exist in {region}"),
                            format!("name a subnet of the VPC in {region} (`aws ec2 describe-subnets --region {region}`)"),
                        ),
                        Some(subnet) => {
                            let owner = subnet.vpc_id().unwrap_or("no VPC");
                            match &vpc_id {
                                Some(vpc) if owner != vpc => problems.error(
                                    &subnet_field,
                                    format!("subnet {id} is in VPC {owner}, not in {vpc}"),
                                    format!("name a subnet of {vpc}, or the VPC {owner}"),
                                ),
                                _ => subnets.push(Chosen { subnet: subnet.clone(), field: subnet_field }),
                            }
                        }
                    }
                }
                ResourceRef::Tag { key, value } => {
                    let Some(vpc) = &vpc_id else { continue };
                    let mut found: Vec<&Subnet> = snapshot
                        .subnets
                        .iter()
                        .filter(|s| s.vpc_id() == Some(vpc.as_str()))
                        .filter(|s| tag_value(s.tags(), key) == Some(value.as_str()))
                        .collect();
                    found.sort_by_key(|s| s.subnet_id().unwrap_or_default().to_owned());
                    if found.is_empty() {
                        problems.error(
                            &subnet_field,
                            format!("no subnet of {vpc} in {region} carries the tag {key}={value}"),
                            "tag the subnets, or name them by id (`subnet-…`)".to_owned(),
                        );
                    }
                    subnets.extend(
                        found
                            .into_iter()
                            .map(|s| Chosen { subnet: s.clone(), field: subnet_field.clone() }),
                    );
                }
            }
        }

        // The security groups.
        for (index, id) in spec.security_groups.iter().enumerate() {
            let group_field = format!("{field}.security_groups[{index}]");
            match snapshot.security_groups.iter().find(|g| g.group_id() == Some(id.as_str())) {
                None => problems.error(
                    &group_field,
                    format!("security group {id} does not exist in {region}"),
                    format!("name a security group of the VPC in {region} (`aws ec2 describe-security-groups --region {region}`)"),
                ),
                Some(found) => {
                    let owner = found.vpc_id().unwrap_or("no VPC");
                    if let Some(vpc) = &vpc_id
                        && owner != vpc
                    {
                        problems.error(
                            &group_field,
                            format!("security group {id} is in VPC {owner}, not in {vpc}"),
                            format!("name a security group of {vpc}: an instance's groups must be in its VPC"),
                        );
                    }
                }
            }
        }

        // One subnet per zone the group may use.
        let offered: BTreeSet<&str> = group.offered.keys().map(String::as_str).collect();
        let mut by_zone: BTreeMap<String, Vec<&Chosen>> = BTreeMap::new();
        for chosen in &subnets {
            let Some(zone) = chosen.subnet.availability_zone() else { continue };
            if offered.is_empty() || offered.contains(zone) {
                by_zone.entry(zone.to_owned()).or_default().push(chosen);
            }
        }
        if by_zone.is_empty() && !subnets.is_empty() {
            let zones: BTreeSet<&str> =
                subnets.iter().filter_map(|c| c.subnet.availability_zone()).collect();
            let at =
                if spec.subnets.is_empty() { field.to_owned() } else { format!("{field}.subnets") };
            problems.error(
                &at,
                format!(
                    "none of the subnets is in a zone where {} may run: the subnets are in {}, the group may use {}",
                    group.name,
                    zones.into_iter().collect::<Vec<_>>().join(", "),
                    offered.iter().copied().collect::<Vec<_>>().join(", ")
                ),
                "add a subnet in one of those zones, or allow the subnets' zones (`zones`, the instance types)".to_owned(),
            );
        }
        let mut used: Vec<Chosen> = Vec::new();
        let mut zone_map = BTreeMap::new();
        for (zone, candidates) in &by_zone {
            let pick = candidates[0];
            let id = pick.subnet.subnet_id().unwrap_or_default().to_owned();
            if candidates.len() > 1 {
                let others: Vec<&str> =
                    candidates[1..].iter().filter_map(|c| c.subnet.subnet_id()).collect();
                resolved.notes.push(format!(
                    "{region}: group {} launches into {id} in {zone} (the first of its subnets there; also {})",
                    group.name,
                    others.join(", ")
                ));
            }
            zone_map.insert(zone.clone(), id);
            used.push(pick.clone());
        }

        // Public addresses need a route to an internet gateway.
        for chosen in &used {
            let id = chosen.subnet.subnet_id().unwrap_or_default();
            let zone = chosen.subnet.availability_zone().unwrap_or_default();
            let table = route_table_of(snapshot, &chosen.subnet);
            if table.and_then(|t| route_to(t, "0.0.0.0/0", internet_gateway)).is_none() {
                let table_id = table.and_then(|t| t.route_table_id()).unwrap_or("none");
                let dead = dead_route(table, "0.0.0.0/0");
                problems.error(
                    &chosen.field,
                    format!(
                        "subnet {id} ({zone}) has no route from 0.0.0.0/0 to an internet gateway (route table {table_id}){dead}: its machines' public addresses would be unreachable, so the CLI could never reach their agents"
                    ),
                    format!("add the route 0.0.0.0/0 → igw-… to {table_id}, or name subnets that have one"),
                );
            }
        }

        if let Some(vpc_id) = vpc_id {
            resolved.groups.insert(
                group.name.clone(),
                GroupNetwork {
                    region: region.to_owned(),
                    vpc_id,
                    subnets: zone_map,
                    security_groups: spec.security_groups.clone(),
                },
            );
        }
        chosen_of.insert(group.name.clone(), used);
    }

    // The monitoring machine reaches every machine's metrics port.
    if let Some(monitoring) = networked.iter().find(|(g, _)| g.role == Role::Monitoring)
        && let Some(monitoring_net) = resolved.groups.get(&monitoring.0.name)
        && monitoring.0.region == MONITORING_REGION
    {
        let hub = snapshots.get(MONITORING_REGION).unwrap_or(&empty);
        let hub_vpc = hub.vpcs.iter().find(|v| v.vpc_id() == Some(monitoring_net.vpc_id.as_str()));
        let hub_blocks = hub_vpc.map(vpc_blocks).unwrap_or_default();
        resolved.monitoring_blocks = hub_blocks.clone();
        let hub_subnets = chosen_of.get(&monitoring.0.name).cloned().unwrap_or_default();
        let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
        let mut overlapping: BTreeSet<String> = BTreeSet::new();
        for (group, network) in &networked {
            if group.role == Role::Monitoring {
                continue;
            }
            let Some(resolved_group) = resolved.groups.get(&group.name) else { continue };
            if resolved_group.vpc_id == monitoring_net.vpc_id {
                continue; // One VPC: its local route joins every subnet.
            }
            let region = group.region.as_str();
            let snapshot = snapshots.get(region).unwrap_or(&empty);
            let Some(vpc) =
                snapshot.vpcs.iter().find(|v| v.vpc_id() == Some(resolved_group.vpc_id.as_str()))
            else {
                continue;
            };
            let blocks = vpc_blocks(vpc);
            let clashes: Vec<String> = blocks
                .iter()
                .flat_map(|b| {
                    hub_blocks.iter().filter(|h| overlap(b, h)).map(move |h| format!("{b} and {h}"))
                })
                .collect();
            if !clashes.is_empty() {
                if overlapping.insert(resolved_group.vpc_id.clone()) {
                    problems.error(
                        &format!("{}.vpc", network.field),
                        format!(
                            "VPC {} in {region} overlaps VPC {} in {MONITORING_REGION}, where the monitoring machine runs ({}): no route can join them, so the monitoring machine cannot reach port {METRICS_PORT} there",
                            resolved_group.vpc_id,
                            monitoring_net.vpc_id,
                            clashes.join("; ")
                        ),
                        "use VPCs whose address blocks do not overlap".to_owned(),
                    );
                }
                continue;
            }
            for chosen in chosen_of.get(&group.name).into_iter().flatten() {
                let Some(cidr) = chosen.subnet.cidr_block() else { continue };
                let subnet_id = chosen.subnet.subnet_id().unwrap_or_default();
                let table = route_table_of(snapshot, &chosen.subnet);
                let table_id = table.and_then(|t| t.route_table_id()).unwrap_or("none").to_owned();
                for hub_subnet in &hub_subnets {
                    let Some(hub_cidr) = hub_subnet.subnet.cidr_block() else { continue };
                    let hub_id = hub_subnet.subnet.subnet_id().unwrap_or_default();
                    // There: back to the monitoring machine.
                    if table.and_then(|t| route_to(t, hub_cidr, between_vpcs)).is_none()
                        && reported.insert((table_id.clone(), hub_cidr.to_owned()))
                    {
                        let dead = dead_route(table, hub_cidr);
                        problems.error(
                            &chosen.field,
                            format!(
                                "route table {table_id} (of subnet {subnet_id} in {region}) has no route to {hub_cidr} (subnet {hub_id} of the monitoring machine in {MONITORING_REGION}) through a peering connection or transit gateway{dead}: the monitoring machine cannot reach port {METRICS_PORT} there"
                            ),
                            format!("peer the VPCs (or attach both to a transit gateway) and add the route {hub_cidr} → pcx-…/tgw-… to {table_id}"),
                        );
                    }
                    // Here: from the monitoring machine.
                    let hub_table = route_table_of(hub, &hub_subnet.subnet);
                    let hub_table_id =
                        hub_table.and_then(|t| t.route_table_id()).unwrap_or("none").to_owned();
                    if hub_table.and_then(|t| route_to(t, cidr, between_vpcs)).is_none()
                        && reported.insert((hub_table_id.clone(), cidr.to_owned()))
                    {
                        let dead = dead_route(hub_table, cidr);
                        problems.error(
                            &hub_subnet.field,
                            format!(
                                "route table {hub_table_id} (of subnet {hub_id} in {MONITORING_REGION}, where the monitoring machine runs) has no route to {cidr} (subnet {subnet_id} in {region}) through a peering connection or transit gateway{dead}: the monitoring machine cannot reach port {METRICS_PORT} there"
                            ),
                            format!("add the route {cidr} → pcx-…/tgw-… to {hub_table_id}"),
                        );
                    }
                }
            }
        }
    }
    acl_problems(&networked, &resolved, &chosen_of, snapshots, &mut problems);
    (problems.0, resolved)
}

/// The network ACLs between the monitoring machine's subnets and every other group's (see
/// the module documentation), each problem once per ACL, direction and block.
fn acl_problems(
    networked: &[(&GroupPlan, &flotilla_spec::account::Located<NetworkSpec>)],
    resolved: &Resolved,
    chosen_of: &BTreeMap<String, Vec<Chosen>>,
    snapshots: &BTreeMap<String, Snapshot>,
    problems: &mut Problems,
) {
    let empty = Snapshot::default();
    let Some((monitoring, _)) = networked.iter().find(|(g, _)| g.role == Role::Monitoring) else {
        return;
    };
    if monitoring.region != MONITORING_REGION || !resolved.groups.contains_key(&monitoring.name) {
        return;
    }
    let hub = snapshots.get(MONITORING_REGION).unwrap_or(&empty);
    let hub_subnets = chosen_of.get(&monitoring.name).cloned().unwrap_or_default();
    let mut reported: BTreeSet<(String, bool, String, bool)> = BTreeSet::new();
    for (group, _) in networked.iter().filter(|(g, _)| g.role != Role::Monitoring) {
        if !resolved.groups.contains_key(&group.name) {
            continue;
        }
        let region = group.region.as_str();
        let snapshot = snapshots.get(region).unwrap_or(&empty);
        for chosen in chosen_of.get(&group.name).into_iter().flatten() {
            let (Some(cidr), Some(subnet_id)) =
                (chosen.subnet.cidr_block(), chosen.subnet.subnet_id())
            else {
                continue;
            };
            for hub_subnet in &hub_subnets {
                let (Some(hub_cidr), Some(hub_id)) =
                    (hub_subnet.subnet.cidr_block(), hub_subnet.subnet.subnet_id())
                else {
                    continue;
                };
                if hub_id == subnet_id {
                    continue; // One subnet: no ACL between.
                }
                let hub_named = format!(
                    "{hub_cidr} (subnet {hub_id} of the monitoring machine in {MONITORING_REGION})"
                );
                let named = format!("{cidr} (subnet {subnet_id} in {region})");
                let mut flows = Vec::new();
                if let Some(acl) = acl_of(snapshot, &chosen.subnet) {
                    let place = format!("of subnet {subnet_id} in {region}");
                    flows.push(AclFlow {
                        acl,
                        field: &chosen.field,
                        place: place.clone(),
                        egress: false,
                        peer: hub_cidr,
                        what: format!(
                            "from {hub_named}: the monitoring machine cannot scrape there"
                        ),
                        answers: false,
                    });
                    flows.push(AclFlow {
                        acl,
                        field: &chosen.field,
                        place,
                        egress: true,
                        peer: hub_cidr,
                        what: format!("to {hub_named}: the answers to its scrapes are dropped (network ACLs are stateless)"),
                        answers: true,
                    });
                }
                if let Some(acl) = acl_of(hub, &hub_subnet.subnet) {
                    let place = format!(
                        "of subnet {hub_id} in {MONITORING_REGION}, where the monitoring machine runs"
                    );
                    flows.push(AclFlow {
                        acl,
                        field: &hub_subnet.field,
                        place: place.clone(),
                        egress: true,
                        peer: cidr,
                        what: format!("to {named}: the monitoring machine cannot scrape there"),
                        answers: false,
                    });
                    flows.push(AclFlow {
                        acl,
                        field: &hub_subnet.field,
                        place,
                        egress: false,
                        peer: cidr,
                        what: format!("from {named}: the answers to the monitoring machine's scrapes are dropped (network ACLs are stateless)"),
                        answers: true,
                    });
                }
                for flow in flows {
                    let key = (
                        flow.acl.network_acl_id().unwrap_or_default().to_owned(),
                        flow.egress,
                        flow.peer.to_owned(),
                        flow.answers,
                    );
                    if !reported.contains(&key) && flow.report(problems) {
                        reported.insert(key);
                    }
                }
            }
        }
    }
}

/// TCP traffic in one direction through one network ACL, for [`acl_problems`].
struct AclFlow<'a> {
    acl: &'a NetworkAcl,
    /// The spec field of the subnet the ACL guards.
    field: &'a str,
    /// Which subnet, in words.
    place: String,
    egress: bool,
    /// The block at the other end.
    peer: &'a str,
    /// What the traffic is and what dropping it breaks.
    what: String,
    /// The answers to Linux's ephemeral ports, else the scrape ports.
    answers: bool,
}

impl AclFlow<'_> {
    /// Reports the ACL's rules that drop this traffic; whether there were any.
    fn report(&self, problems: &mut Problems) -> bool {
        let asked: Vec<TcpPorts> = if self.answers {
            vec![TcpPorts::EPHEMERAL]
        } else {
            SCRAPE_PORTS.iter().map(|p| TcpPorts::one(*p)).collect()
        };
        let drops: Vec<(TcpPorts, i32)> = asked
            .into_iter()
            .filter_map(|ports| {
                acl_denies(self.acl, self.egress, self.peer, ports).map(|r| (ports, r))
            })
            .collect();
        if drops.is_empty() {
            return false;
        }
        let acl_id = self.acl.network_acl_id().unwrap_or("an unnamed ACL");
        let direction = if self.egress { "outbound" } else { "inbound" };
        let ports: Vec<String> = drops
            .iter()
            .map(|(ports, rule)| format!("{ports} (rule {})", rule_name(*rule)))
            .collect();
        let first_rule = drops.iter().map(|(_, rule)| *rule).min().unwrap_or(32767);
        let wanted = if self.answers {
            "TCP 1024-65535".to_owned()
        } else {
            drops.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(", ")
        };
        let toward = if self.egress { "to" } else { "from" };
        problems.error(
            self.field,
            format!("network ACL {acl_id} ({}) drops {direction} {} {}", self.place, ports.join(", "), self.what),
            format!(
                "add an {direction} rule allowing {wanted} {toward} {} to {acl_id}, numbered below {}",
                self.peer,
                rule_name(first_rule)
            ),
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use aws_sdk_ec2::types::{Route, RouteTableAssociation, Tag, VpcCidrBlockAssociation};
    use flotilla_spec::fleet::ProviderKind;

    use super::*;

    /// A plan of `spec_tail` (the keys after `instances`), every group offered zones a and b
    /// of its region.
    fn plan(top: &str, instances: &str) -> DeploymentPlan {
        let source = format!(
            "tag: t\nprovider: aws\n{top}monitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: d.json\ninstances:\n{instances}ports: []\n"
        );
        let document = flotilla_spec::parse_fleet_spec(&source, Path::new("fleet.yaml"))
            .expect("the test spec parses");
        let mut plan =
            DeploymentPlan::from_spec(&document.spec, ProviderKind::Aws, crate::MONITORING_REGION);
        for group in &mut plan.groups {
            group.offered = ["a", "b"]
                .iter()
                .map(|z| (format!("{}{z}", group.region), vec!["m7i.large".to_owned()]))
                .collect();
        }
        plan
    }

    fn entry(name: &str, region: &str, extra: &str) -> String {
        format!(
            "- name: {name}\n  count: 2\n  region: {region}\n  instance_type: m7i.large\n  storage_size: 10\n  storage_class: gp3\n  binary: b\n  config: c\n  profiling: false\n{extra}"
        )
    }

    fn vpc(id: &str, cidr: &str, tags: &[(&str, &str)]) -> Vpc {
        let mut vpc = Vpc::builder().vpc_id(id).cidr_block(cidr).cidr_block_association_set(
            VpcCidrBlockAssociation::builder().cidr_block(cidr).build(),
        );
        for (k, v) in tags {
            vpc = vpc.tags(Tag::builder().key(*k).value(*v).build());
        }
        vpc.build()
    }

    fn subnet(id: &str, vpc: &str, zone: &str, cidr: &str) -> Subnet {
        Subnet::builder().subnet_id(id).vpc_id(vpc).availability_zone(zone).cidr_block(cidr).build()
    }

    fn group(id: &str, vpc: &str) -> SecurityGroup {
        SecurityGroup::builder().group_id(id).vpc_id(vpc).build()
    }

    /// The main route table of `vpc` with `routes` (destination, target).
    fn main_table(id: &str, vpc: &str, routes: &[(&str, &str)]) -> RouteTable {
        let mut table = RouteTable::builder()
            .route_table_id(id)
            .vpc_id(vpc)
            .associations(RouteTableAssociation::builder().main(true).build());
        for (destination, target) in routes {
            let route = Route::builder().destination_cidr_block(*destination);
            let route = if target.starts_with("pcx-") {
                route.vpc_peering_connection_id(*target)
            } else if target.starts_with("tgw-") {
                route.transit_gateway_id(*target)
            } else {
                route.gateway_id(*target)
            };
            table = table.routes(route.build());
        }
        table.build()
    }

    fn problems_of(
        plan: &DeploymentPlan,
        snapshots: &BTreeMap<String, Snapshot>,
    ) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> =
            evaluate(plan, snapshots).0.into_iter().map(|p| (p.field, p.message)).collect();
        problems.sort(); // As references.rs orders them.
        problems
    }

    fn east() -> Snapshot {
        Snapshot {
            vpcs: vec![
                vpc("vpc-00000001", "10.50.0.0/16", &[("team", "infra")]),
                vpc("vpc-00000002", "10.60.0.0/16", &[]),
            ],
            subnets: vec![
                subnet("subnet-000000a1", "vpc-00000001", "us-east-1a", "10.50.1.0/24"),
                subnet("subnet-000000a2", "vpc-00000001", "us-east-1a", "10.50.2.0/24"),
                subnet("subnet-000000b1", "vpc-00000001", "us-east-1b", "10.50.3.0/24"),
                subnet("subnet-0000000f", "vpc-00000002", "us-east-1a", "10.60.1.0/24"),
            ],
            route_tables: vec![
                main_table(
                    "rtb-1",
                    "vpc-00000001",
                    &[("10.50.0.0/16", "local"), ("0.0.0.0/0", "igw-1")],
                ),
                main_table("rtb-2", "vpc-00000002", &[("10.60.0.0/16", "local")]),
            ],
            security_groups: vec![
                group("sg-00000001", "vpc-00000001"),
                group("sg-00000002", "vpc-00000002"),
            ],
            network_acls: Vec::new(),
        }
    }

    #[test]
    fn every_wrong_reference_is_reported_at_its_field_at_once() {
        let plan = plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n    subnets: [subnet-000000a1, subnet-0000000f, subnet-0000dead]\n    security_groups: [sg-00000001, sg-00000002, sg-0000dead]\n",
            &entry("web", "us-east-1", ""),
        );
        let snapshots = BTreeMap::from([("us-east-1".to_owned(), east())]);
        let problems = problems_of(&plan, &snapshots);
        let fields: BTreeSet<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            BTreeSet::from([
                "network.us-east-1.subnets[1]",
                "network.us-east-1.subnets[2]",
                "network.us-east-1.security_groups[1]",
                "network.us-east-1.security_groups[2]",
            ]),
            "{problems:#?}"
        );
        let text = format!("{problems:?}");
        assert!(
            text.contains("subnet subnet-0000000f is in VPC vpc-00000002, not in vpc-00000001"),
            "{text}"
        );
        assert!(text.contains("subnet subnet-0000dead does not exist in us-east-1"), "{text}");
        assert!(
            text.contains("security group sg-00000002 is in VPC vpc-00000002, not in vpc-00000001"),
            "{text}"
        );
        assert!(text.contains("security group sg-0000dead does not exist in us-east-1"), "{text}");
    }

    #[test]
    fn a_vpc_by_tag_must_match_exactly_one() {
        let mut snapshot = east();
        let tagged = |s: &mut Snapshot| {
            s.vpcs.push(vpc("vpc-00000003", "10.70.0.0/16", &[("team", "infra")]))
        };
        let plan =
            plan("network:\n  us-east-1:\n    vpc: team:infra\n", &entry("web", "us-east-1", ""));
        let one = BTreeMap::from([("us-east-1".to_owned(), snapshot.clone())]);
        let (problems, resolved) = evaluate(&plan, &one);
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(resolved.groups["web"].vpc_id, "vpc-00000001");
        tagged(&mut snapshot);
        let two = BTreeMap::from([("us-east-1".to_owned(), snapshot)]);
        let problems = problems_of(&plan, &two);
        assert_eq!(problems.len(), 2, "both groups of the region name it: {problems:#?}");
        assert_eq!(problems[0].0, "network.us-east-1.vpc");
        assert!(
            problems[0].1.contains(
                "2 VPCs in us-east-1 carry the tag team=infra (vpc-00000001, vpc-00000003)"
            )
        );
    }

    #[test]
    fn subnets_map_to_the_zones_the_group_may_use_the_first_listed_winning() {
        let plan = plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n    subnets: [subnet-000000a2, subnet-000000b1, subnet-000000a1]\n",
            &entry("web", "us-east-1", ""),
        );
        let snapshots = BTreeMap::from([("us-east-1".to_owned(), east())]);
        let (problems, resolved) = evaluate(&plan, &snapshots);
        assert!(problems.is_empty(), "{problems:#?}");
        let web = &resolved.groups["web"];
        assert_eq!(
            web.subnets,
            BTreeMap::from([
                ("us-east-1a".to_owned(), "subnet-000000a2".to_owned()),
                ("us-east-1b".to_owned(), "subnet-000000b1".to_owned())
            ])
        );
        assert!(
            resolved.notes.iter().any(|n| n.contains("subnet-000000a2 in us-east-1a")
                && n.contains("also subnet-000000a1")),
            "{:?}",
            resolved.notes
        );

        // Without `subnets`: every subnet of the VPC, the lowest id in a shared zone.
        let plan = super::tests::plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n",
            &entry("web", "us-east-1", ""),
        );
        let (_, resolved) = evaluate(&plan, &snapshots);
        assert_eq!(resolved.groups["web"].subnets["us-east-1a"], "subnet-000000a1");

        // A group limited to zone c: no subnet fits.
        let mut plan = plan;
        for group in &mut plan.groups {
            group.offered =
                BTreeMap::from([("us-east-1c".to_owned(), vec!["m7i.large".to_owned()])]);
        }
        let problems = problems_of(&plan, &snapshots);
        assert_eq!(problems[0].0, "network.us-east-1");
        assert!(problems[0].1.contains("none of the subnets is in a zone where"), "{problems:#?}");
    }

    #[test]
    fn a_subnet_without_a_route_to_an_internet_gateway_is_an_error_naming_it() {
        let mut snapshot = east();
        snapshot.route_tables.push(
            RouteTable::builder()
                .route_table_id("rtb-private")
                .vpc_id("vpc-00000001")
                .associations(RouteTableAssociation::builder().subnet_id("subnet-000000b1").build())
                .routes(
                    Route::builder()
                        .destination_cidr_block("0.0.0.0/0")
                        .nat_gateway_id("nat-1")
                        .build(),
                )
                .build(),
        );
        let plan = plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n    subnets: [subnet-000000a1, subnet-000000b1]\n",
            &entry("web", "us-east-1", ""),
        );
        let problems = problems_of(&plan, &BTreeMap::from([("us-east-1".to_owned(), snapshot)]));
        assert_eq!(problems.len(), 2, "one per group using it: {problems:#?}");
        assert_eq!(problems[0].0, "network.us-east-1.subnets[1]");
        assert!(problems[0].1.contains("subnet subnet-000000b1 (us-east-1b) has no route from 0.0.0.0/0 to an internet gateway (route table rtb-private)"), "{problems:#?}");
    }

    fn west(routes: &[(&str, &str)], cidr: &str) -> Snapshot {
        let mut all = vec![("0.0.0.0/0", "igw-9")];
        all.extend_from_slice(routes);
        Snapshot {
            vpcs: vec![vpc("vpc-0000000e", cidr, &[])],
            subnets: vec![subnet(
                "subnet-0000000e",
                "vpc-0000000e",
                "eu-west-1a",
                &cidr.replace(".0.0/16", ".1.0/24"),
            )],
            route_tables: vec![main_table("rtb-w", "vpc-0000000e", &all)],
            security_groups: Vec::new(),
            network_acls: Vec::new(),
        }
    }

    #[test]
    fn the_monitoring_machine_must_reach_every_vpc_and_each_missing_route_is_named() {
        let plan = plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n    subnets: [subnet-000000a1]\n  eu-west-1:\n    vpc: vpc-0000000e\n",
            &(entry("web", "us-east-1", "") + &entry("dublin", "eu-west-1", "")),
        );
        // No route either way.
        let snapshots = BTreeMap::from([
            ("us-east-1".to_owned(), east()),
            ("eu-west-1".to_owned(), west(&[], "10.80.0.0/16")),
        ]);
        let problems = problems_of(&plan, &snapshots);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[1].0, "network.us-east-1.subnets[0]");
        assert!(problems[1].1.contains("route table rtb-1 (of subnet subnet-000000a1 in us-east-1, where the monitoring machine runs) has no route to 10.80.1.0/24"), "{problems:#?}");
        assert_eq!(problems[0].0, "network.eu-west-1");
        assert!(problems[0].1.contains("route table rtb-w (of subnet subnet-0000000e in eu-west-1) has no route to 10.50.1.0/24"), "{problems:#?}");

        // Routed both ways (a peering one way, a transit gateway the other): fine, and the
        // monitoring VPC's block is what flotilla's group admits.
        let mut hub = east();
        hub.route_tables[0] = main_table(
            "rtb-1",
            "vpc-00000001",
            &[("0.0.0.0/0", "igw-1"), ("10.80.0.0/16", "pcx-1")],
        );
        let routed = BTreeMap::from([
            ("us-east-1".to_owned(), hub.clone()),
            ("eu-west-1".to_owned(), west(&[("10.0.0.0/8", "tgw-1")], "10.80.0.0/16")),
        ]);
        let (problems, resolved) = evaluate(&plan, &routed);
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(resolved.monitoring_blocks, ["10.50.0.0/16"]);

        // A route left behind by a deleted peering is a black hole: missing, and said so.
        let mut dead = hub.clone();
        dead.route_tables[0] = RouteTable::builder()
            .route_table_id("rtb-1")
            .vpc_id("vpc-00000001")
            .associations(RouteTableAssociation::builder().main(true).build())
            .routes(
                Route::builder().destination_cidr_block("0.0.0.0/0").gateway_id("igw-1").build(),
            )
            .routes(
                Route::builder()
                    .destination_cidr_block("10.80.0.0/16")
                    .vpc_peering_connection_id("pcx-1")
                    .state(RouteState::Blackhole)
                    .build(),
            )
            .build();
        let problems = problems_of(
            &plan,
            &BTreeMap::from([
                ("us-east-1".to_owned(), dead),
                ("eu-west-1".to_owned(), west(&[("10.0.0.0/8", "tgw-1")], "10.80.0.0/16")),
            ]),
        );
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].1.contains("no route to 10.80.1.0/24")
                && problems[0].1.contains("its route through pcx-1 is a black hole"),
            "{problems:#?}"
        );

        // Overlapping blocks: said once, at the VPC.
        let overlapping = BTreeMap::from([
            ("us-east-1".to_owned(), hub),
            ("eu-west-1".to_owned(), west(&[], "10.50.0.0/16")),
        ]);
        let problems = problems_of(&plan, &overlapping);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].0, "network.eu-west-1.vpc");
        assert!(
            problems[0]
                .1
                .contains("VPC vpc-0000000e in eu-west-1 overlaps VPC vpc-00000001 in us-east-1"),
            "{problems:#?}"
        );
    }

    #[test]
    fn existing_vpcs_are_used_everywhere_or_nowhere_and_a_region_shares_one() {
        let plan = plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n",
            &(entry("web", "us-east-1", "") + &entry("dublin", "eu-west-1", "")),
        );
        let snapshots = BTreeMap::from([("us-east-1".to_owned(), east())]);
        let problems = problems_of(&plan, &snapshots);
        assert_eq!(problems[0].0, "network.us-east-1");
        assert!(
            problems[0].1.starts_with("eu-west-1 would run in a VPC flotilla makes"),
            "{problems:#?}"
        );

        // An entry's own network in the monitoring region, none for the monitoring machine.
        let plan = super::tests::plan(
            "",
            &entry("web", "us-east-1", "  network:\n    us-east-1:\n      vpc: vpc-00000001\n"),
        );
        let problems = problems_of(&plan, &snapshots);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].0, "instances[0].network.us-east-1");
        assert!(
            problems[0].1.starts_with("the monitoring machine in us-east-1 has no `network`"),
            "{problems:#?}"
        );

        // Two VPCs in one region.
        let plan = super::tests::plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n",
            &entry("web", "us-east-1", "  network:\n    us-east-1:\n      vpc: vpc-00000002\n"),
        );
        let problems = problems_of(&plan, &snapshots);
        assert!(
            problems
                .iter()
                .any(|(f, m)| f == "instances[0].network.us-east-1.vpc"
                    && m.contains("share one VPC")),
            "{problems:#?}"
        );
    }

    /// (number, egress, protocol, action, ports, block)
    type Rule<'r> = (i32, bool, &'r str, &'r str, Option<(i32, i32)>, &'r str);

    fn acl(id: &str, vpc: &str, default: bool, subnets: &[&str], rules: &[Rule<'_>]) -> NetworkAcl {
        use aws_sdk_ec2::types::{NetworkAclAssociation, NetworkAclEntry, PortRange, RuleAction};
        let mut acl = NetworkAcl::builder().network_acl_id(id).vpc_id(vpc).is_default(default);
        for subnet in subnets {
            acl = acl.associations(NetworkAclAssociation::builder().subnet_id(*subnet).build());
        }
        for (number, egress, protocol, action, ports, block) in rules {
            let mut entry = NetworkAclEntry::builder()
                .rule_number(*number)
                .egress(*egress)
                .protocol(*protocol)
                .rule_action(if *action == "deny" { RuleAction::Deny } else { RuleAction::Allow })
                .cidr_block(*block);
            if let Some((from, to)) = ports {
                entry = entry.port_range(PortRange::builder().from(*from).to(*to).build());
            }
            acl = acl.entries(entry.build());
        }
        acl.build()
    }

    /// AWS's default ACL: everything in and out (rule 100), then `*`.
    fn open_acl(id: &str, vpc: &str) -> NetworkAcl {
        acl(
            id,
            vpc,
            true,
            &[],
            &[
                (100, false, "-1", "allow", None, "0.0.0.0/0"),
                (32767, false, "-1", "deny", None, "0.0.0.0/0"),
                (100, true, "-1", "allow", None, "0.0.0.0/0"),
                (32767, true, "-1", "deny", None, "0.0.0.0/0"),
            ],
        )
    }

    #[test]
    fn network_acls_between_the_monitoring_machine_and_the_machines_are_read_rule_by_rule() {
        let plan = plan(
            "network:\n  us-east-1:\n    vpc: vpc-00000001\n    subnets: [subnet-000000a1, subnet-000000b1]\n",
            &entry("web", "us-east-1", ""),
        );
        let mut snapshot = east();
        snapshot.network_acls = vec![open_acl("acl-default", "vpc-00000001")];
        let open = BTreeMap::from([("us-east-1".to_owned(), snapshot.clone())]);
        let (problems, _) = evaluate(&plan, &open);
        assert!(problems.is_empty(), "the default ACL lets everything pass: {problems:#?}");

        // Subnet b1 admits only 9090 from the VPC, and nothing else comes in: the other scrape
        // ports are dropped into b1, and so are the answers to the scraper in b1.
        snapshot.network_acls.push(acl(
            "acl-locked",
            "vpc-00000001",
            false,
            &["subnet-000000b1"],
            &[
                (100, false, "6", "allow", Some((9090, 9090)), "10.50.0.0/16"),
                (200, false, "-1", "deny", None, "0.0.0.0/0"),
                (100, true, "-1", "allow", None, "0.0.0.0/0"),
            ],
        ));
        let locked = BTreeMap::from([("us-east-1".to_owned(), snapshot.clone())]);
        let problems = problems_of(&plan, &locked);
        let text = format!("{problems:#?}");
        assert_eq!(problems.len(), 2, "{text}");
        assert!(problems.iter().all(|(f, _)| f == "network.us-east-1.subnets[1]"), "{text}");
        assert!(text.contains("network ACL acl-locked (of subnet subnet-000000b1 in us-east-1) drops inbound TCP 9100 (rule 200), TCP 9101 (rule 200) from 10.50.1.0/24 (subnet subnet-000000a1 of the monitoring machine in us-east-1)"), "{text}");
        assert!(text.contains("network ACL acl-locked (of subnet subnet-000000b1 in us-east-1, where the monitoring machine runs) drops inbound TCP 32768-60999 (rule 200) from 10.50.1.0/24"), "{text}");

        // A deny of part of the ports before the allow of all of them still drops them; an
        // allow of the whole VPC's block covers each subnet.
        snapshot.network_acls[1] = acl(
            "acl-locked",
            "vpc-00000001",
            false,
            &["subnet-000000b1"],
            &[
                (50, false, "6", "deny", Some((9100, 9200)), "10.50.1.0/24"),
                (100, false, "-1", "allow", None, "10.50.0.0/16"),
                (100, true, "-1", "allow", None, "0.0.0.0/0"),
            ],
        );
        let partial = BTreeMap::from([("us-east-1".to_owned(), snapshot.clone())]);
        let problems = problems_of(&plan, &partial);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].1.contains("drops inbound TCP 9100 (rule 50), TCP 9101 (rule 50)"),
            "{problems:#?}"
        );

        // Outbound only to the internet on 443: the answers to the scraper are dropped, and the
        // scraper in b1 cannot send; no rule covers them but `*`.
        snapshot.network_acls[1] = acl(
            "acl-locked",
            "vpc-00000001",
            false,
            &["subnet-000000b1"],
            &[
                (100, false, "-1", "allow", None, "0.0.0.0/0"),
                (100, true, "6", "allow", Some((443, 443)), "0.0.0.0/0"),
            ],
        );
        let outbound = BTreeMap::from([("us-east-1".to_owned(), snapshot)]);
        let problems = problems_of(&plan, &outbound);
        let text = format!("{problems:#?}");
        assert_eq!(problems.len(), 2, "{text}");
        assert!(text.contains("drops outbound TCP 32768-60999 (rule *) to 10.50.1.0/24"), "{text}");
        assert!(text.contains("drops outbound TCP 9090 (rule *), TCP 9100 (rule *), TCP 9101 (rule *) to 10.50.1.0/24"), "{text}");
        let (problems, _) = evaluate(&plan, &outbound);
        assert!(
            problems.iter().any(|p| p.help
                == "add an outbound rule allowing TCP 1024-65535 to 10.50.1.0/24 to acl-locked, numbered below *"),
            "{problems:#?}"
        );
    }
}
