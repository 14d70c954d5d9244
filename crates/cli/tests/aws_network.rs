//! Existing networks (`network:`) against the emulator: a fleet launched into a VPC, subnets and
//! a security group the test made with plain EC2 calls; `destroy` leaving them; every wrong
//! reference reported at once before any change; the monitoring machine's reachability check.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use common::aws::AwsFleet;
use common::*;
use flotilla_emulator::control::Emulator;

/// The name of Canonical's Ubuntu 24.04 images, which every account sees.
const UBUNTU: &str = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-*";
/// Canonical's account.
const CANONICAL: &str = "099720109477";

/// What a test made in one region, as a user would have.
struct UserNetwork {
    vpc: String,
    /// (id, zone)
    subnets: Vec<(String, String)>,
    route_table: String,
    group: String,
}

fn tags(resource: ResourceType, key: &str, value: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key(key).value(value).build())
        .build()
}

/// A VPC `cidr` tagged `net=<label>`, with an internet gateway and the default route on its
/// main route table when `public`, a /24 subnet in each of `zones`, and a security group.
async fn user_network(
    ec2: &aws_sdk_ec2::Client,
    label: &str,
    cidr: &str,
    zones: &[&str],
    public: bool,
) -> UserNetwork {
    let vpc = ec2
        .create_vpc()
        .cidr_block(cidr)
        .tag_specifications(tags(ResourceType::Vpc, "net", label))
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_owned();
    let route_table = ec2
        .describe_route_tables()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .send()
        .await
        .unwrap()
        .route_tables()
        .iter()
        .find(|t| t.associations().iter().any(|a| a.main() == Some(true)))
        .and_then(|t| t.route_table_id())
        .unwrap()
        .to_owned();
    if public {
        let igw = ec2
            .create_internet_gateway()
            .send()
            .await
            .unwrap()
            .internet_gateway()
            .unwrap()
            .internet_gateway_id()
            .unwrap()
            .to_owned();
        ec2.attach_internet_gateway().internet_gateway_id(&igw).vpc_id(&vpc).send().await.unwrap();
        ec2.create_route()
            .route_table_id(&route_table)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(&igw)
            .send()
            .await
            .unwrap();
    }
    let prefix = cidr.trim_end_matches(".0.0/16");
    let mut subnets = Vec::new();
    for (index, zone) in zones.iter().enumerate() {
        let id = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .availability_zone(*zone)
            .cidr_block(format!("{prefix}.{}.0/24", index + 1))
            .tag_specifications(tags(ResourceType::Subnet, "net", label))
            .send()
            .await
            .unwrap()
            .subnet()
            .unwrap()
            .subnet_id()
            .unwrap()
            .to_owned();
        subnets.push((id, (*zone).to_owned()));
    }
    let group = ec2
        .create_security_group()
        .group_name(format!("user-{label}"))
        .description("the user's own group")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    UserNetwork { vpc, subnets, route_table, group }
}

/// Whether the user's VPC, its subnets and group all still exist.
async fn still_there(ec2: &aws_sdk_ec2::Client, network: &UserNetwork) -> (usize, usize, usize) {
    let by = |name: &str, values: Vec<String>| {
        Filter::builder().name(name).set_values(Some(values)).build()
    };
    let vpcs = ec2.describe_vpcs().filters(by("vpc-id", vec![network.vpc.clone()])).send();
    let subnets = ec2
        .describe_subnets()
        .filters(by("subnet-id", network.subnets.iter().map(|(id, _)| id.clone()).collect()))
        .send();
    let groups =
        ec2.describe_security_groups().filters(by("group-id", vec![network.group.clone()])).send();
    (
        vpcs.await.unwrap().vpcs().len(),
        subnets.await.unwrap().subnets().len(),
        groups.await.unwrap().security_groups().len(),
    )
}

fn spec(tag: &str, network: &str, instances: &str) -> String {
    format!(
        "tag: {tag}\nprovider: aws\nnetwork:\n{network}monitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n{instances}ports:\n- protocol: tcp\n  port: 9090\n  cidr: 0.0.0.0/0\n"
    )
}

fn entry(name: &str, count: usize, region: &str) -> String {
    format!(
        "- name: {name}\n  count: {count}\n  region: {region}\n  instance_type: m7i.large\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: app.conf\n  profiling: false\n",
        fleet_app_bin().display()
    )
}

/// The mutating EC2 calls counted in `scope` (every action but Describe/Get/List).
async fn mutating_calls(scope: &flotilla_emulator::control::Scope) -> Vec<(String, u64)> {
    let counts = scope.counts().await.unwrap();
    counts
        .0
        .iter()
        .flat_map(|(service, actions)| {
            actions.iter().map(move |(action, count)| (format!("{service} {action}"), *count))
        })
        .filter(|(action, _)| {
            let action = action.split_once(' ').map(|(_, a)| a).unwrap_or_default();
            !["Describe", "Get", "List", "Head"].iter().any(|p| action.starts_with(p))
        })
        .collect()
}

/// A fleet in a pre-made VPC with two subnets (named by the tag they carry) and a user security
/// group: healthy, spread over both subnets, the user's group on every instance, no VPC,
/// gateway, subnet, route or peering made; an entry with its own network in the same VPC keeps
/// to its one subnet and its own groups; `destroy` leaves the user's VPC, subnets and group and
/// nothing of flotilla's. On the way: an entry on another account's image found by name,
/// admitted by `image_owners`, and root volumes encrypted with keys named by id and by ARN.
#[test]
fn a_fleet_in_an_existing_vpc_uses_its_subnets_and_destroy_leaves_them() {
    let fleet = AwsFleet::new("net-existing");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let rt = runtime();
    let ec2 = rt.block_on(fleet.ec2("us-east-1"));
    let label = "flotilla-test-net-existing";
    let network =
        rt.block_on(user_network(&ec2, label, "10.91.0.0/16", &["us-east-1a", "us-east-1b"], true));
    // Two keys of the account: `web`'s root volumes name one by id, `db`'s the other by ARN.
    let kms = rt.block_on(async { aws_sdk_kms::Client::new(&fleet.sdk().await) });
    let (web_key, db_key) = rt.block_on(async {
        let web = kms.create_key().send().await.unwrap().key_metadata().unwrap().clone();
        let db = kms.create_key().send().await.unwrap().key_metadata().unwrap().clone();
        (web.key_id().to_owned(), db.arn().unwrap().to_owned())
    });
    fleet.write("app.conf", "port = 9090\ngreeting = \"hi\"\ninterval = 300\n");
    let text = spec(
        &fleet.tag,
        // The subnets by the tag both carry.
        &format!(
            "  us-east-1:\n    vpc: net:{label}\n    subnets: [\"net:{label}\"]\n    security_groups: [{}]\n",
            network.group
        ),
        // `web` runs Canonical's image found by name, admitted by `image_owners`. `db` has its
        // own network: the same VPC, one subnet by id, no user group.
        &(entry("web", 4, "us-east-1")
            + &format!(
                "  image: {{name: \"{UBUNTU}\"}}\n  image_owners: [\"{CANONICAL}\"]\n  root_volume: {{kms_key: {web_key}}}\n"
            )
            + &entry("db", 2, "us-east-1")
            + &format!("  root_volume: {{kms_key: \"{db_key}\"}}\n")
            + &format!(
                "  network:\n    us-east-1:\n      vpc: {}\n      subnets: [{}]\n",
                network.vpc, network.subnets[1].0
            )),
    );
    let spec = fleet.write("fleet.yaml", &text).display().to_string();

    // The plan places machines only in the zones of the subnets each entry may use.
    let output = fleet.run_ok(&["plan", "--config", &spec, "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let zones_of = |group: &str| -> Vec<String> {
        let group = report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .unwrap_or_else(|| panic!("{group} in {report}"));
        let mut zones: Vec<String> = group["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["zone"].as_str().unwrap().to_owned())
            .collect();
        zones.sort();
        zones.dedup();
        zones
    };
    assert_eq!(zones_of("web"), ["us-east-1a", "us-east-1b"], "{report}");
    assert_eq!(zones_of("db"), ["us-east-1b"], "{report}");
    rt.block_on(scope.reset_counts()).unwrap();

    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "198.51.100.7", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 7, "{rows:?}");
    for row in &rows {
        let expected = if row["role"] == "monitoring" { "idle" } else { "healthy" };
        assert_eq!(row["health"], expected, "{row}");
    }

    // Made nothing of the network but its own security groups.
    let calls = rt.block_on(mutating_calls(&scope));
    for made in [
        "CreateVpc",
        "CreateInternetGateway",
        "AttachInternetGateway",
        "CreateSubnet",
        "CreateRoute",
        "CreateRouteTable",
        "CreateVpcPeeringConnection",
    ] {
        assert!(
            !calls.iter().any(|(action, _)| action == &format!("ec2 {made}")),
            "{made} in an existing network: {calls:?}"
        );
    }
    assert_eq!(
        calls.iter().find(|(a, _)| a == "ec2 CreateSecurityGroup").map(|(_, n)| *n),
        Some(2),
        "the binary and monitoring groups: {calls:?}"
    );

    // Every instance in one of the user's subnets, both used, the user's group attached.
    let instances: Vec<_> = rt
        .block_on(ec2.describe_instances().filters(fleet.tag_filter()).send())
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| fleet.tagged(i.tags()))
        .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() == "running"))
        .cloned()
        .collect();
    assert_eq!(instances.len(), 7);
    let user_subnets: BTreeSet<&str> = network.subnets.iter().map(|(id, _)| id.as_str()).collect();
    let used: BTreeSet<&str> = instances.iter().filter_map(|i| i.subnet_id()).collect();
    assert!(used.is_subset(&user_subnets), "{used:?} in {user_subnets:?}");
    let web_subnets: BTreeSet<&str> = instances
        .iter()
        .filter(|i| {
            i.tags().iter().any(|t| t.key() == Some("flotilla:group") && t.value() == Some("web"))
        })
        .filter_map(|i| i.subnet_id())
        .collect();
    assert_eq!(web_subnets, user_subnets, "web spreads over both subnets");
    for instance in &instances {
        assert_eq!(instance.vpc_id(), Some(network.vpc.as_str()));
        let groups: BTreeSet<&str> = instance
            .network_interfaces()
            .iter()
            .flat_map(|n| n.groups())
            .chain(instance.security_groups())
            .filter_map(|g| g.group_id())
            .collect();
        let group = instance
            .tags()
            .iter()
            .find(|t| t.key() == Some("flotilla:group"))
            .and_then(|t| t.value())
            .unwrap();
        if group == "db" {
            assert_eq!(
                instance.subnet_id(),
                Some(network.subnets[1].0.as_str()),
                "db's own subnet"
            );
            assert!(!groups.contains(network.group.as_str()), "{groups:?}");
            assert_eq!(groups.len(), 1, "only flotilla's own group: {groups:?}");
        } else {
            assert!(groups.contains(network.group.as_str()), "{groups:?}");
            assert_eq!(groups.len(), 2, "flotilla's own group and the user's: {groups:?}");
        }
    }
    // web's machines run Canonical's image; each entry's root volumes are encrypted with the
    // key it names (by id, by ARN), the monitoring machine's not at all.
    rt.block_on(async {
        let web_images: BTreeSet<String> = instances
            .iter()
            .filter(|i| tags_of(i.tags()).get("flotilla:group").map(String::as_str) == Some("web"))
            .filter_map(|i| i.image_id().map(str::to_owned))
            .collect();
        let described = ec2
            .describe_images()
            .set_image_ids(Some(web_images.iter().cloned().collect()))
            .send()
            .await
            .unwrap();
        assert_eq!(described.images().len(), 1, "{described:?}");
        assert_eq!(described.images()[0].owner_id(), Some(CANONICAL), "{described:?}");
        let volumes = ec2.describe_volumes().filters(fleet.tag_filter()).send().await.unwrap();
        assert_eq!(volumes.volumes().len(), 7, "{volumes:?}");
        for volume in volumes.volumes() {
            let tags = tags_of(volume.tags());
            let key = volume.kms_key_id().unwrap_or_default();
            if tags.get("flotilla:group").map(String::as_str) != Some("monitoring") {
                assert_eq!(volume.encrypted(), Some(true), "{volume:?}");
                assert!(!key.is_empty(), "{volume:?}");
            }
            match tags.get("flotilla:group").map(String::as_str) {
                Some("web") => assert!(key.contains(&web_key), "{volume:?}"),
                Some("db") => {
                    assert!(db_key.ends_with(key.rsplit('/').next().unwrap()), "{volume:?}")
                }
                group => {
                    assert_eq!(group, Some("monitoring"), "{volume:?}");
                    assert_ne!(volume.encrypted(), Some(true), "{volume:?}");
                }
            }
        }
    });
    // flotilla's binary group admits the metrics port from the monitoring machine's VPC.
    let groups = rt.block_on(fleet.security_groups("us-east-1"));
    assert_eq!(groups.len(), 2, "{groups:?}");
    let metrics_from_vpc = groups.iter().any(|g| {
        g.vpc_id() == Some(network.vpc.as_str())
            && g.ip_permissions().iter().any(|p| {
                p.from_port() == Some(9090)
                    && p.ip_ranges().iter().any(|r| r.cidr_ip() == Some("10.91.0.0/16"))
            })
    });
    assert!(metrics_from_vpc, "{groups:?}");
    // Nothing of flotilla's network kinds in the region but its groups.
    let left = rt.block_on(fleet.leftovers(&["us-east-1"]));
    let kinds: BTreeSet<&str> = left.iter().map(|(kind, _, _)| kind.as_str()).collect();
    for kind in ["vpcs", "subnets", "internet gateways", "route tables", "peering connections"] {
        assert!(!kinds.contains(kind), "{kind} made in an existing network: {left:?}");
    }

    // The same fleet without `network`, one machine more: the new machine would go into a VPC
    // flotilla makes, apart from the running ones. Refused before any change, naming both.
    let own = text
        .replacen("count: 4", "count: 5", 1)
        .replace(&format!("network:\n  us-east-1:\n    vpc: net:{label}\n    subnets: [\"net:{label}\"]\n    security_groups: [{}]\n", network.group), "")
        .replace(&format!("  network:\n    us-east-1:\n      vpc: {}\n      subnets: [{}]\n", network.vpc, network.subnets[1].0), "");
    assert!(!own.contains("network:"), "{own}");
    let own = fleet.write("own-vpc.yaml", &own).display().to_string();
    rt.block_on(scope.reset_counts()).unwrap();
    let output = fleet.run(&["update", "--config", &own]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let moved = format!(
        "us-east-1: the machines run in your VPC {}, and the spec now puts them in a VPC flotilla makes",
        network.vpc
    );
    assert!(stderr.contains("cannot move between VPCs") && stderr.contains(&moved), "{stderr}");
    let mutated = rt.block_on(mutating_calls(&scope));
    assert!(
        mutated.iter().all(|(action, _)| action.starts_with("s3 ") || action.starts_with("iam "))
            && !mutated.iter().any(|(a, _)| a.starts_with("ec2 ")),
        "no EC2 change before the refusal: {mutated:?}"
    );

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    assert_eq!(rt.block_on(fleet.leftovers(&["us-east-1"])), Vec::new());
    assert_eq!(
        rt.block_on(still_there(&ec2, &network)),
        (1, 2, 1),
        "the user's VPC, subnets and group stay"
    );
    let vpc_tags = rt.block_on(ec2.describe_vpcs().vpc_ids(&network.vpc).send()).unwrap().vpcs()[0]
        .tags()
        .to_vec();
    assert!(
        vpc_tags.iter().all(|t| !t.key().unwrap_or_default().starts_with("flotilla:")),
        "the user's VPC is never tagged: {vpc_tags:?}"
    );
    let subnets = rt
        .block_on(
            ec2.describe_subnets()
                .set_subnet_ids(Some(network.subnets.iter().map(|(id, _)| id.clone()).collect()))
                .send(),
        )
        .unwrap();
    for subnet in subnets.subnets() {
        assert!(
            subnet.tags().iter().all(|t| !t.key().unwrap_or_default().starts_with("flotilla:")),
            "the user's subnets are never tagged: {:?}",
            subnet.tags()
        );
    }
}

/// A subnet of another VPC, a missing subnet, a subnet tag matching nothing, a missing group, a
/// VPC id that does not exist and a VPC tag matching nothing (entries with networks of their
/// own): every error at once, each at its field and line, and not one mutating call.
#[test]
fn every_wrong_network_reference_is_reported_at_once_before_any_change() {
    let fleet = AwsFleet::new("net-wrong");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let rt = runtime();
    let ec2 = rt.block_on(fleet.ec2("us-east-1"));
    let ours = rt.block_on(user_network(
        &ec2,
        "flotilla-test-net-wrong-a",
        "10.92.0.0/16",
        &["us-east-1a"],
        true,
    ));
    let other = rt.block_on(user_network(
        &ec2,
        "flotilla-test-net-wrong-b",
        "10.93.0.0/16",
        &["us-east-1b"],
        true,
    ));
    fleet.write("app.conf", "port = 9090\n");
    // Two entries with networks of their own: a VPC id that does not exist, a VPC tag that
    // matches nothing.
    let ghost = format!(
        "{}  network:\n    us-east-1:\n      vpc: vpc-0000dead\n",
        entry("ghost", 1, "us-east-1")
    );
    let untagged = format!(
        "{}  network:\n    us-east-1:\n      vpc: \"net:nothing-{}\"\n",
        entry("untagged", 1, "us-east-1"),
        fleet.tag
    );
    let text = spec(
        &fleet.tag,
        &format!(
            "  us-east-1:\n    vpc: {}\n    subnets: [{}, {}, subnet-0000dead, \"tier:nothing-{}\"]\n    security_groups: [sg-0000dead, {}]\n",
            ours.vpc, ours.subnets[0].0, other.subnets[0].0, fleet.tag, other.group
        ),
        &format!("{}{ghost}{untagged}", entry("web", 2, "us-east-1")),
    );
    let spec = fleet.write("fleet.yaml", &text).display().to_string();
    rt.block_on(scope.reset_counts()).unwrap();

    let output = fleet.run(&["create", "--config", &spec, "--ip", "198.51.100.7"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for (field, message) in [
        (
            "network.us-east-1.subnets[1]",
            format!("subnet {} is in VPC {}, not in {}", other.subnets[0].0, other.vpc, ours.vpc),
        ),
        (
            "network.us-east-1.subnets[2]",
            "subnet subnet-0000dead does not exist in us-east-1".to_owned(),
        ),
        (
            "network.us-east-1.security_groups[0]",
            "security group sg-0000dead does not exist in us-east-1".to_owned(),
        ),
        (
            "network.us-east-1.security_groups[1]",
            format!("security group {} is in VPC {}, not in {}", other.group, other.vpc, ours.vpc),
        ),
        (
            "network.us-east-1.subnets[3]",
            format!(
                "no subnet of {} in us-east-1 carries the tag tier=nothing-{}",
                ours.vpc, fleet.tag
            ),
        ),
        (
            "instances[1].network.us-east-1.vpc",
            "VPC vpc-0000dead does not exist in us-east-1".to_owned(),
        ),
        (
            "instances[2].network.us-east-1.vpc",
            format!("no VPC in us-east-1 carries the tag net=nothing-{}", fleet.tag),
        ),
    ] {
        assert!(stderr.contains(field), "{field} missing:\n{stderr}");
        assert!(stderr.contains(&message), "{message} missing:\n{stderr}");
    }
    // Each at its line.
    let lines: Vec<&str> = text.lines().collect();
    for (needle, message) in [
        ("vpc-0000dead", "VPC vpc-0000dead does not exist"),
        ("net:nothing-", "no VPC in us-east-1 carries"),
        ("tier:nothing-", "no subnet of"),
    ] {
        let line = lines.iter().position(|l| l.contains(needle)).unwrap() + 1;
        let at = format!("fleet.yaml:{line}:");
        assert!(
            stderr.lines().any(|l| l.contains(&at)) && stderr.contains(message),
            "{message} at {at}:\n{stderr}"
        );
    }
    assert_eq!(
        rt.block_on(mutating_calls(&scope)),
        Vec::new(),
        "no change before the check:\n{stderr}"
    );
    assert!(!fleet.home.path().join("deployments").join(&fleet.tag).join("aws").exists());
}

/// The monitoring machine (us-east-1) and a machine in eu-west-1, each in its own existing VPC:
/// without routes between them the check names each route table and the block it lacks; with
/// a peering routed both ways it passes.
#[test]
fn the_reachability_check_names_each_missing_route() {
    let fleet = AwsFleet::new("net-reach");
    let rt = runtime();
    let east = rt.block_on(fleet.ec2("us-east-1"));
    let west = rt.block_on(fleet.ec2("eu-west-1"));
    let hub = rt.block_on(user_network(
        &east,
        "flotilla-test-net-reach",
        "10.94.0.0/16",
        &["us-east-1a"],
        true,
    ));
    let spoke = rt.block_on(user_network(
        &west,
        "flotilla-test-net-reach",
        "10.95.0.0/16",
        &["eu-west-1a"],
        true,
    ));
    fleet.write("app.conf", "port = 9090\n");
    let text = spec(
        &fleet.tag,
        "  us-east-1:\n    vpc: net:flotilla-test-net-reach\n  eu-west-1:\n    vpc: net:flotilla-test-net-reach\n",
        &entry("dublin", 1, "eu-west-1"),
    );
    let spec = fleet.write("fleet.yaml", &text).display().to_string();

    let output = fleet.run(&["plan", "--config", &spec]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let there = format!(
        "route table {} (of subnet {} in eu-west-1) has no route to 10.94.1.0/24 (subnet {} of the monitoring machine in us-east-1)",
        spoke.route_table, spoke.subnets[0].0, hub.subnets[0].0
    );
    let here = format!(
        "route table {} (of subnet {} in us-east-1, where the monitoring machine runs) has no route to 10.95.1.0/24",
        hub.route_table, hub.subnets[0].0
    );
    assert!(stderr.contains(&there), "{there}\n{stderr}");
    assert!(stderr.contains(&here), "{here}\n{stderr}");
    assert!(
        stderr.contains("network.eu-west-1") && stderr.contains("network.us-east-1"),
        "{stderr}"
    );

    // Peered and routed both ways: the check passes.
    rt.block_on(async {
        let peering = east
            .create_vpc_peering_connection()
            .vpc_id(&hub.vpc)
            .peer_vpc_id(&spoke.vpc)
            .peer_region("eu-west-1")
            .send()
            .await
            .unwrap()
            .vpc_peering_connection()
            .unwrap()
            .vpc_peering_connection_id()
            .unwrap()
            .to_owned();
        west.accept_vpc_peering_connection()
            .vpc_peering_connection_id(&peering)
            .send()
            .await
            .unwrap();
        for (ec2, table, destination) in
            [(&east, &hub.route_table, "10.95.0.0/16"), (&west, &spoke.route_table, "10.94.0.0/16")]
        {
            ec2.create_route()
                .route_table_id(table)
                .destination_cidr_block(destination)
                .vpc_peering_connection_id(&peering)
                .send()
                .await
                .unwrap();
        }
    });
    fleet.run_ok(&["plan", "--config", &spec]);

    // A network ACL rule that drops node exporter's port from the monitoring VPC into the
    // spoke's subnet, before the default ACL's allow: named with its ACL, port and rule.
    let acl = rt.block_on(async {
        use aws_sdk_ec2::types::{Filter, PortRange, RuleAction};
        let acls = west
            .describe_network_acls()
            .filters(Filter::builder().name("vpc-id").values(&spoke.vpc).build())
            .send()
            .await
            .unwrap();
        let acl = acls.network_acls()[0].network_acl_id().unwrap().to_owned();
        west.create_network_acl_entry()
            .network_acl_id(&acl)
            .rule_number(50)
            .protocol("6")
            .rule_action(RuleAction::Deny)
            .egress(false)
            .cidr_block("10.94.0.0/16")
            .port_range(PortRange::builder().from(9100).to(9100).build())
            .send()
            .await
            .unwrap();
        acl
    });
    let output = fleet.run(&["plan", "--config", &spec]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let dropped = format!(
        "network ACL {acl} (of subnet {} in eu-west-1) drops inbound TCP 9100 (rule 50) from 10.94.1.0/24",
        spoke.subnets[0].0
    );
    assert!(stderr.contains(&dropped), "{dropped}\n{stderr}");
    rt.block_on(
        west.delete_network_acl_entry().network_acl_id(&acl).rule_number(50).egress(false).send(),
    )
    .unwrap();
    fleet.run_ok(&["plan", "--config", &spec]);

    // The peering deleted, its routes left behind: black holes (the emulator marks them as AWS
    // does), named as such.
    rt.block_on(async {
        let peerings = east.describe_vpc_peering_connections().send().await.unwrap();
        let peering = peerings
            .vpc_peering_connections()
            .iter()
            .find(|p| p.requester_vpc_info().and_then(|v| v.vpc_id()) == Some(hub.vpc.as_str()))
            .and_then(|p| p.vpc_peering_connection_id())
            .unwrap()
            .to_owned();
        east.delete_vpc_peering_connection()
            .vpc_peering_connection_id(peering)
            .send()
            .await
            .unwrap();
    });
    let output = fleet.run(&["plan", "--config", &spec]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&there) && stderr.contains(&here), "{stderr}");
    assert_eq!(stderr.matches("is a black hole").count(), 2, "{stderr}");
}

/// The CLI killed right after a fleet request answered, and its journal lost: `destroy` finds
/// flotilla's instances, templates and security group by their tags and removes them, and the
/// user's VPC, subnets and group (which never carry flotilla's tags) stay.
#[test]
fn a_crashed_create_in_an_existing_vpc_is_destroyed_without_touching_the_users_network() {
    let fleet = AwsFleet::new("net-crash");
    let rt = runtime();
    let ec2 = rt.block_on(fleet.ec2("us-east-1"));
    let label = "flotilla-test-net-crash";
    let network =
        rt.block_on(user_network(&ec2, label, "10.96.0.0/16", &["us-east-1a", "us-east-1b"], true));
    fleet.write("app.conf", "port = 9090\n");
    let text = spec(
        &fleet.tag,
        &format!(
            "  us-east-1:\n    vpc: {}\n    security_groups: [{}]\n",
            network.vpc, network.group
        ),
        &entry("web", 2, "us-east-1"),
    );
    let spec = fleet.write("fleet.yaml", &text).display().to_string();
    let output = fleet
        .command(&["create", "--config", &spec, "--ip", "127.0.0.1"])
        .env("FLOTILLA_TEST_HALT_AT", "create:fleet-answered")
        .output()
        .unwrap();
    assert!(!output.status.success(), "halted: {}", String::from_utf8_lossy(&output.stderr));
    let left = rt.block_on(fleet.leftovers(&["us-east-1"]));
    let kinds: BTreeSet<&str> = left.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert!(
        kinds.contains("instances (not terminated)") && kinds.contains("security groups"),
        "{left:?}"
    );
    let records = fleet.home.path().join("deployments").join(&fleet.tag).join("aws/records.json");
    fs_err::remove_file(&records).unwrap();

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    assert_eq!(rt.block_on(fleet.leftovers(&["us-east-1"])), Vec::new());
    assert_eq!(rt.block_on(still_there(&ec2, &network)), (1, 2, 1));
}
