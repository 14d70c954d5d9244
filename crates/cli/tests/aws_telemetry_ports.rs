//! The security groups of a two-region deployment against the emulator: the telemetry ports
//! are open only between the deployment's own VPCs (the monitoring machine takes Loki,
//! Pyroscope and Tempo pushes from every VPC of the deployment; machines take scrapes from the
//! monitoring VPC only), Grafana and Prometheus are open to no one (`flotilla monitoring`
//! tunnels to them through the agent), and nothing is open to the internet that the spec's
//! `ports` do not say.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::aws::AwsFleet;
use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// Each of the deployment's groups in `region` by name → its (port, source block) rules.
fn rules(fleet: &AwsFleet, region: &str) -> BTreeMap<String, BTreeSet<(i32, String)>> {
    let groups = runtime().block_on(fleet.security_groups(region));
    groups
        .iter()
        .map(|group| {
            let mut rules = BTreeSet::new();
            for permission in group.ip_permissions() {
                assert_eq!(permission.from_port(), permission.to_port(), "one port per rule");
                let port = permission.from_port().unwrap_or(-1);
                for range in permission.ip_ranges() {
                    rules.insert((port, range.cidr_ip().unwrap_or_default().to_owned()));
                }
                for range in permission.ipv6_ranges() {
                    rules.insert((port, range.cidr_ipv6().unwrap_or_default().to_owned()));
                }
                assert!(permission.user_id_group_pairs().is_empty(), "no group references");
            }
            (group.group_name().unwrap_or_default().to_owned(), rules)
        })
        .collect()
}

fn from(port: i32, blocks: &[&str]) -> BTreeSet<(i32, String)> {
    blocks.iter().map(|b| (port, (*b).to_owned())).collect()
}

#[test]
fn telemetry_ports_are_open_only_between_the_deployments_vpcs() {
    let fleet = AwsFleet::new("telemetry-ports");
    fleet.write("app.conf", "port = 9090\ngreeting = \"hi\"\ninterval = 300\n");
    let binary = fleet_app_bin();
    let instance = |name: &str, region: &str| {
        format!(
            "- {{name: {name}, region: {region}, instance_type: c7i.large, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\n",
            binary.display()
        )
    };
    let spec = fleet.write(
        "spec.yaml",
        &format!(
            "tag: {}\nprovider: aws\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n{}{}ports: []\n",
            fleet.tag,
            instance("east", "us-east-1"),
            instance("west", "us-west-2"),
        ),
    );
    fleet.run_ok(&["create", "--config", &spec.display().to_string(), "--ip", "127.0.0.1"]);

    // Regions sorted: us-east-1 is VPC 10.0.0.0/16 (the monitoring VPC), us-west-2 10.1.0.0/16.
    let vpcs = ["10.0.0.0/16", "10.1.0.0/16"];
    let monitoring_vpc = ["10.0.0.0/16"];
    let deployer = ["127.0.0.1/32"];
    let monitoring_name = flotilla_spec::names::security_group_name(&fleet.tag, "monitoring");
    let binary_name = flotilla_spec::names::security_group_name(&fleet.tag, "binary");

    let east = rules(&fleet, "us-east-1");
    let mut expected_monitoring = from(7443, &deployer);
    for port in [3100, 4040, 4318] {
        expected_monitoring.extend(from(port, &vpcs));
    }
    assert_eq!(east[&monitoring_name], expected_monitoring, "{east:#?}");
    let mut expected_binary = from(7443, &deployer);
    for port in [9090, 9100, 9101] {
        expected_binary.extend(from(port, &monitoring_vpc));
    }
    assert_eq!(east[&binary_name], expected_binary, "{east:#?}");
    let west = rules(&fleet, "us-west-2");
    assert_eq!(west.keys().collect::<Vec<_>>(), [&binary_name], "{west:#?}");
    assert_eq!(west[&binary_name], expected_binary, "{west:#?}");

    // Said the other way round: no rule anywhere from the internet, and Grafana's and
    // Prometheus's ports on the monitoring machine from no one.
    for (name, rules) in east.iter().chain(west.iter()) {
        for (port, block) in rules {
            assert!(block != "0.0.0.0/0" && block != "::/0", "{name}: port {port} from {block}");
        }
    }
    assert!(
        east[&monitoring_name].iter().all(|(port, _)| ![3000, 9090, 3200].contains(port)),
        "{east:#?}"
    );

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}
