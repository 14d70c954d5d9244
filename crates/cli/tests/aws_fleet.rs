//! End to end on the AWS path, against the shared emulator stack (moto with flotilla's
//! additions, the booter and per-instance IMDS): the real `flotilla` binary creates networks and
//! instances through the AWS SDK, instances boot from their user data into agents that fetch
//! their identity and artifacts from S3, and the CLI reaches them over mTLS on loopback.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::aws::AwsFleet;
use common::monitoring::{all_up, expected_targets, require_monitoring_programs};
use common::*;
use flotilla_emulator::control::{Emulator, FaultRule, PoolFilter};

/// The regions of the five-region fleet.
const FIVE_REGIONS: [&str; 5] =
    ["ap-northeast-1", "eu-central-1", "eu-west-1", "us-east-1", "us-west-2"];

/// A commonware deployer config, as the deployer writes it (serde_yaml style, no flotilla key):
/// six instances in five regions, two of them sharing a zone. The binary is the x86-64 fleet
/// app, so the binary machines are x86-64 (create refuses an arm64 type for it); the monitoring
/// machine (no binary) is arm64, so both architectures' images, agents and templates are used.
fn deployer_config(tag: &str, config: &str) -> String {
    let binary = fleet_app_bin();
    let binary = binary.display();
    let instance = |name: &str, region: &str, instance_type: &str, group: Option<&str>| {
        let group = group.map(|g| format!("  availability_zone_group: {g}\n")).unwrap_or_default();
        format!(
            "- name: {name}\n  region: {region}\n{group}  instance_type: {instance_type}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: {config}\n  profiling: false\n"
        )
    };
    let instances = [
        instance("east-a", "us-east-1", "m7i.large", Some("pair")),
        instance("east-b", "us-east-1", "c7i.large", Some("pair")),
        instance("west", "us-west-2", "m7i.large", None),
        instance("dublin", "eu-west-1", "t3.small", None),
        instance("frankfurt", "eu-central-1", "c7i.large", None),
        instance("tokyo", "ap-northeast-1", "m7i.large", None),
    ]
    .concat();
    format!(
        "tag: {tag}\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n{instances}ports:\n- protocol: tcp\n  port: 9090\n  cidr: 0.0.0.0/0\n"
    )
}

fn app_config(greeting: &str) -> String {
    format!("port = 9090\ngreeting = \"{greeting}\"\ninterval = 300\n")
}

/// create → every agent healthy over mTLS → every machine's hosts.yaml lists every host →
/// update → destroy → nothing left of any kind.
#[test]
fn a_deployer_config_in_five_regions_lives_and_leaves_nothing() {
    require_monitoring_programs();
    let fleet = AwsFleet::new("five-regions");
    let emulator = Emulator::require();
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("deployer.yaml", &deployer_config(&fleet.tag, "app.conf"));
    let spec = spec.display().to_string();

    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "198.51.100.7", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 7, "{rows:?}");
    for row in &rows {
        let expected = if row["role"] == "monitoring" { "idle" } else { "healthy" };
        assert_eq!(row["health"], expected, "{row}");
        assert!(ip_of(row).is_loopback(), "the emulator hands out loopback addresses: {row}");
    }
    let regions: BTreeSet<&str> = rows.iter().filter_map(|r| r["region"].as_str()).collect();
    assert_eq!(regions, FIVE_REGIONS.iter().copied().collect());

    // The instances as EC2 (the emulator) knows them, in this test's scope.
    let instances: Vec<_> = runtime()
        .block_on(emulator.instances())
        .unwrap()
        .into_iter()
        .filter(|i| i.scope == fleet.scope && i.state == "running")
        .collect();
    assert_eq!(instances.len(), 7);
    let zone_of = |name_ip: std::net::IpAddr| {
        instances
            .iter()
            .find(|i| i.public_ip.map(std::net::IpAddr::V4) == Some(name_ip))
            .and_then(|i| i.availability_zone.clone())
            .unwrap()
    };
    assert_eq!(
        zone_of(ip_of(row(&rows, "east-a"))),
        zone_of(ip_of(row(&rows, "east-b"))),
        "availability_zone_group puts both in one zone"
    );
    // No secret in user data, decoded.
    for instance in &instances {
        let script = decode_base64(instance.user_data.as_deref().expect("user data"));
        for secret in ["PRIVATE KEY", "BEGIN", "\"key\"", "X-Amz-Signature", "emulated"] {
            assert!(!script.contains(secret), "user data carries {secret}:\n{script}");
        }
        assert!(script.starts_with("#!/bin/sh"), "{script}");
    }

    // Every binary machine's hosts.yaml lists every host, with the addresses status shows.
    let booted = runtime().block_on(emulator.booted()).unwrap();
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        let ip = ip_of(row);
        let machine =
            booted.iter().find(|b| std::net::IpAddr::V4(b.public_ip) == ip).expect("booted");
        // One hosts.yaml per machine, apart from the versions.
        let hosts = machine.root.join("var/lib/flotilla/agent/hosts.yaml");
        let hosts = fs_err::read_to_string(&hosts).expect("the machine's hosts.yaml");
        for other in rows.iter().filter(|r| r["role"] == "binary") {
            let entry = format!(
                "- name: {}\n  region: {}\n  ip: {}\n",
                other["name"].as_str().unwrap(),
                other["region"].as_str().unwrap(),
                ip_of(other)
            );
            assert!(hosts.contains(&entry), "{} lacks {entry}:\n{hosts}", row["name"]);
        }
        assert!(
            hosts.starts_with(&format!(
                "monitoring:\n  public: {}\n",
                ip_of(row_named(&rows, "monitoring"))
            )),
            "{hosts}"
        );
    }

    // On flotilla's default image every machine runs Ubuntu's node exporter and the monitoring
    // machine Prometheus (the emulator's machines install nothing and run this host's): it
    // scrapes every machine of the five regions, labelled as AWS has them.
    let monitoring = row_named(&rows, "monitoring");
    let services: Vec<&str> = monitoring["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(services, ["prometheus", "node-exporter"], "{monitoring}");
    let binaries: Vec<String> = rows
        .iter()
        .filter(|r| r["role"] == "binary")
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    let series = wait_for("every target up in Prometheus", Duration::from_secs(60), || {
        all_up(ip_of(monitoring), &expected_targets(&binaries))
    });
    let tokyo = series
        .iter()
        .find(|s| s["metric"]["job"] == "binary" && s["metric"]["name"] == "tokyo")
        .expect("tokyo's binary target");
    for (label, value) in [
        ("deployment", fleet.tag.as_str()),
        ("region", "ap-northeast-1"),
        ("instance_type", "m7i.large"),
        ("market", "on-demand"),
    ] {
        assert_eq!(tokyo["metric"][label], value, "label {label} of {tokyo}");
    }

    // The agent port admits only the given /32; the spec's port is open as written; the scrape
    // ports admit the monitoring VPC (us-east-1 sorts fourth: 10.3.0.0/16) and the telemetry
    // ingest ports of the monitoring group every VPC of the deployment, nothing else.
    runtime().block_on(async {
        let every_vpc: Vec<String> = (0..5).map(|i| format!("10.{i}.0.0/16")).collect();
        for region in FIVE_REGIONS {
            let groups = fleet.security_groups(region).await;
            assert!(!groups.is_empty(), "{region}");
            for group in &groups {
                for permission in group.ip_permissions() {
                    let mut cidrs: Vec<&str> =
                        permission.ip_ranges().iter().filter_map(|r| r.cidr_ip()).collect();
                    cidrs.sort_unstable();
                    match permission.from_port() {
                        Some(7443) => assert_eq!(
                            cidrs,
                            ["198.51.100.7/32"],
                            "{region} {:?}",
                            group.group_name()
                        ),
                        Some(9090) => assert_eq!(cidrs, ["0.0.0.0/0", "10.3.0.0/16"]),
                        Some(9100 | 9101) => assert_eq!(cidrs, ["10.3.0.0/16"]),
                        Some(3100 | 4040 | 4318) => assert_eq!(cidrs, every_vpc, "{region}"),
                        other => panic!("{region}: unexpected rule on port {other:?}"),
                    }
                }
            }
        }
    });

    // authorize adds an address to every group of the deployment; --revoke takes it away.
    fleet.run_ok(&["authorize", "--tag", &fleet.tag, "--ip", "203.0.113.9"]);
    assert_eq!(agent_port_cidrs(&fleet, "203.0.113.9/32"), 6, "every group of the five regions");
    fleet.run_ok(&["authorize", "--tag", &fleet.tag, "--revoke", "203.0.113.9"]);
    assert_eq!(agent_port_cidrs(&fleet, "203.0.113.9/32"), 0);
    assert_eq!(agent_port_cidrs(&fleet, "198.51.100.7/32"), 6, "the create-time address stays");

    // Update with a new config: every machine runs the new version and serves the new greeting.
    fleet.write("app-v2.conf", &app_config("bonjour"));
    let v2 = fleet.write("deployer-v2.yaml", &deployer_config(&fleet.tag, "app-v2.conf"));
    let output =
        fleet.run_ok(&["update", "--config", &v2.display().to_string(), "--output", "json"]);
    let updated: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    for row in updated.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
        assert_ne!(row["version"], row_named(&rows, row["name"].as_str().unwrap())["version"]);
        let body = http_get(ip_of(row), 9090, "/health").expect("health answers");
        assert!(body.contains("greeting=bonjour"), "{body}");
    }

    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
    let left = runtime().block_on(fleet.leftovers(&FIVE_REGIONS));
    assert!(left.is_empty(), "destroy left: {left:?}");
    // Idempotent.
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}

/// Security groups of the deployment whose agent-port rule admits `cidr`.
fn agent_port_cidrs(fleet: &AwsFleet, cidr: &str) -> usize {
    runtime().block_on(async {
        let mut count = 0;
        for region in FIVE_REGIONS {
            count += fleet
                .security_groups(region)
                .await
                .iter()
                .filter(|g| {
                    g.ip_permissions().iter().any(|p| {
                        p.from_port() == Some(7443)
                            && p.ip_ranges().iter().any(|r| r.cidr_ip() == Some(cidr))
                    })
                })
                .count();
        }
        count
    })
}

fn row_named<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    row(rows, name)
}

fn decode_base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=' && !b.is_ascii_whitespace()) {
        let value = ALPHABET.iter().position(|c| *c == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    String::from_utf8(out).expect("a text script")
}

/// A smaller fleet for the tests below: three regions, four machines.
fn small_config(tag: &str) -> String {
    let binary = fleet_app_bin();
    let instance = |name: &str, region: &str| {
        format!(
            "- name: {name}\n  region: {region}\n  instance_type: c7i.large\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: app.conf\n  profiling: false\n",
            binary.display()
        )
    };
    format!(
        "tag: {tag}\nmonitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n{}{}{}ports: []\n",
        instance("n0", "us-east-1"),
        instance("n1", "us-west-2"),
        instance("n2", "eu-west-1")
    )
}

const SMALL_REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "us-west-2"];

/// Counts of live instances and VPCs per region, by direct queries.
fn instance_and_vpc_counts(fleet: &AwsFleet) -> Vec<(String, usize, usize)> {
    runtime().block_on(async {
        let mut counts = Vec::new();
        for region in SMALL_REGIONS {
            let ec2 = fleet.ec2(region).await;
            let instances =
                ec2.describe_instances().filters(fleet.tag_filter()).send().await.unwrap();
            let live = instances
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() != "terminated")
                })
                .count();
            let vpcs =
                ec2.describe_vpcs().filters(fleet.tag_filter()).send().await.unwrap().vpcs().len();
            counts.push((region.to_owned(), live, vpcs));
        }
        counts
    })
}

/// The CLI killed at several points of create and of destroy, then run again: no duplicate
/// instance or VPC, full convergence, nothing left.
#[test]
fn create_and_destroy_converge_after_the_cli_is_killed() {
    let fleet = AwsFleet::new("crash");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    // Slow every call a little, so the kills land inside create's phases.
    runtime().block_on(scope.set_latency(Duration::from_millis(40))).unwrap();
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &small_config(&fleet.tag)).display().to_string();
    for delay_ms in [300u64, 900, 1800, 3500] {
        let mut child =
            fleet.command(&["create", "--config", &spec, "--ip", "127.0.0.1"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
    let counts = instance_and_vpc_counts(&fleet);
    assert_eq!(
        counts,
        vec![
            ("eu-west-1".to_owned(), 1, 1),
            ("us-east-1".to_owned(), 2, 1),
            ("us-west-2".to_owned(), 1, 1)
        ],
        "one instance per machine, one VPC per region"
    );

    for delay_ms in [200u64, 1200] {
        let mut child = fleet.command(&["destroy", "--tag", &fleet.tag]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
    let left = runtime().block_on(fleet.leftovers(&SMALL_REGIONS));
    assert!(left.is_empty(), "destroy left: {left:?}");
    runtime().block_on(scope.clear_latency()).unwrap();
}

/// 10 % throttling and internal errors on every call, and no capacity for the type in one
/// zone: create still converges within its deadline, and destroy still leaves nothing.
#[test]
fn create_converges_through_throttling_errors_and_a_zone_without_capacity() {
    let fleet = AwsFleet::new("faults");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &small_config(&fleet.tag)).display().to_string();
    runtime()
        .block_on(
            scope.set_faults(&[
                FaultRule::new("*", "*", "RequestLimitExceeded").probability(0.05),
                FaultRule::new("*", "*", "InternalError").probability(0.05),
                // No c7i.large capacity in half of us-east-1's zones, n0's first choice among them.
                FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity")
                    .pool(PoolFilter::new("c7i.large", "us-east-1a", "on-demand")),
                FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity")
                    .pool(PoolFilter::new("c7i.large", "us-east-1b", "on-demand")),
                FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity")
                    .pool(PoolFilter::new("c7i.large", "us-east-1c", "on-demand")),
            ]),
        )
        .unwrap();
    let started = Instant::now();
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    let elapsed = started.elapsed();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
    let faults = runtime().block_on(scope.faults()).unwrap();
    assert!(faults.iter().map(|f| f.hits).sum::<u64>() > 0, "faults were injected: {faults:?}");
    let capacity_errors: u64 =
        faults.iter().filter(|f| f.code == "InsufficientInstanceCapacity").map(|f| f.hits).sum();
    assert!(capacity_errors >= 1, "the launch met the capacity error: {faults:?}");
    let instances = runtime().block_on(emulator.instances()).unwrap();
    let n0 = instances
        .iter()
        .find(|i| {
            i.scope == fleet.scope
                && i.instance_type == "c7i.large"
                && i.region == "us-east-1"
                && i.state == "running"
        })
        .expect("n0 runs");
    let zone = n0.availability_zone.as_deref().unwrap_or_default();
    assert!(
        !["us-east-1a", "us-east-1b", "us-east-1c"].contains(&zone),
        "n0 moved to a zone with capacity: {zone}"
    );
    assert!(elapsed < Duration::from_secs(600), "within the launch deadline: {elapsed:?}");

    // Destroy meets dependencies that AWS releases a moment late, and waits them out.
    runtime()
        .block_on(
            scope.add_fault(&FaultRule::new("ec2", "DeleteSubnet", "DependencyViolation").count(2)),
        )
        .unwrap();
    runtime()
        .block_on(scope.add_fault(
            &FaultRule::new("ec2", "DeleteSecurityGroup", "DependencyViolation").count(2),
        ))
        .unwrap();
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
    let faults = runtime().block_on(scope.faults()).unwrap();
    let violations: u64 =
        faults.iter().filter(|f| f.code == "DependencyViolation").map(|f| f.hits).sum();
    assert_eq!(violations, 4, "each injected violation was met and retried: {faults:?}");
    runtime().block_on(scope.clear_faults()).unwrap();
    let left = runtime().block_on(fleet.leftovers(&SMALL_REGIONS));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// A permanent error fails fast with a clear message, and destroy removes what was made.
#[test]
fn a_permanent_error_fails_fast_and_destroy_cleans_up() {
    let fleet = AwsFleet::new("unauthorized");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &small_config(&fleet.tag)).display().to_string();
    runtime()
        .block_on(
            scope.set_faults(&[FaultRule::new("ec2", "CreateFleet", "UnauthorizedOperation")
                .message("You are not authorized to perform this operation.")]),
        )
        .unwrap();
    let started = Instant::now();
    let output = fleet.run(&["create", "--config", &spec, "--ip", "127.0.0.1"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "a permission failure: {stderr}");
    assert!(stderr.contains("UnauthorizedOperation"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("hint: allow CreateFleet in ")),
        "the hint names the action denied: {stderr}"
    );
    assert!(stderr.contains("CreateFleet"), "names the call: {stderr}");
    assert!(
        stderr.contains("us-east-1")
            || stderr.contains("us-west-2")
            || stderr.contains("eu-west-1"),
        "names the region: {stderr}"
    );
    // Retried, it would last the launch deadline (10 minutes); the margin is for a loaded CI
    // machine, not a timing target.
    assert!(elapsed < Duration::from_secs(240), "fails fast: {elapsed:?}");
    runtime().block_on(scope.clear_faults()).unwrap();

    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
    let left = runtime().block_on(fleet.leftovers(&SMALL_REGIONS));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// Without an agent baked into the image, a machine downloads it from S3 with its instance
/// role (curl with SigV4, keys on stdin) and checks its digest.
#[test]
fn machines_download_their_agent_with_the_instance_role() {
    let fleet = AwsFleet::new("download");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    runtime().block_on(scope.set_agent_seed(false)).unwrap();
    fleet.write("app.conf", &app_config("hello"));
    let binary = fleet_app_bin();
    let spec = fleet.write(
        "spec.yaml",
        &format!(
            "tag: {}\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: only, region: us-east-1, instance_type: t3.small, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\nports: []\n",
            fleet.tag,
            binary.display()
        ),
    );
    let rows = fleet.create_rows(&spec);
    assert_eq!(row(&rows, "only")["health"], "healthy");
    let counts = runtime().block_on(scope.counts()).unwrap();
    assert!(counts.get("s3", "GetObject") >= 2, "agents and identities came from S3: {counts:?}");

    // clean refuses while a deployment uses the bucket, and deletes it afterwards.
    let output = fleet.run(&["clean"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("download"), "names the deployment");
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
    let bucket = fs_err::read_to_string(fleet.home.path().join("aws-bucket")).unwrap();
    let output = fleet.run_ok(&["clean"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains(bucket.trim()));
    assert!(!fleet.home.path().join("aws-bucket").exists());
    let exists = runtime().block_on(async {
        let config = fleet.sdk().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
        );
        s3.head_bucket().bucket(bucket.trim()).send().await.is_ok()
    });
    assert!(!exists, "the bucket is gone");
}

/// Serves one HTTP answer with `body` to every connection, on loopback, until dropped.
struct EchoServer {
    address: std::net::SocketAddr,
}

impl EchoServer {
    fn start(body: &'static str) -> EchoServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        EchoServer { address }
    }
}

/// Without --ip, the deployer's address is asked of an echo service, as the deployer does; when
/// it cannot be found, create stops before changing anything and says to pass --ip.
#[test]
fn the_deployer_address_is_discovered_or_the_error_says_how_to_give_it() {
    let fleet = AwsFleet::new("discovery");
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write(
        "spec.yaml",
        &format!(
            "tag: {}\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: only, region: us-east-1, instance_type: t3.small, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\nports: []\n",
            fleet.tag,
            fleet_app_bin().display()
        ),
    );
    let spec = spec.display().to_string();

    let output = fleet
        .command(&["create", "--config", &spec])
        .env("FLOTILLA_IP_DISCOVERY_URL", "http://127.0.0.1:1/")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot find this machine's public IPv4 address")
            && stderr.contains("--ip"),
        "{stderr}"
    );
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "nothing was created before the address was known: {left:?}");

    let echo = EchoServer::start("203.0.113.44\n");
    let output = fleet
        .command(&["create", "--config", &spec])
        .env("FLOTILLA_IP_DISCOVERY_URL", format!("http://{}/", echo.address))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let admitted: Vec<String> = runtime()
        .block_on(fleet.security_groups("us-east-1"))
        .iter()
        .flat_map(|g| g.ip_permissions())
        .filter(|p| p.from_port() == Some(7443))
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip().map(str::to_owned))
        .collect();
    assert!(
        !admitted.is_empty() && admitted.iter().all(|c| c == "203.0.113.44/32"),
        "{admitted:?}"
    );
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}

/// One machine in us-east-1 and the monitoring instance, with `ports` (YAML flow list) open.
fn one_machine_config(tag: &str, ports: &str) -> String {
    format!(
        "tag: '{tag}'\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: only, region: us-east-1, instance_type: t3.small, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\nports: {ports}\n",
        fleet_app_bin().display()
    )
}

/// Creates `fleet` from [`one_machine_config`] with the deployer address 127.0.0.1.
fn create_one_machine(fleet: &AwsFleet, ports: &str) -> Vec<serde_json::Value> {
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &one_machine_config(&fleet.tag, ports));
    let spec = spec.display().to_string();
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The deployment tag an IAM role carries, or `None` when the role does not exist.
fn role_owner(fleet: &AwsFleet, role: &str) -> Option<Option<String>> {
    runtime().block_on(async {
        let iam = fleet.iam().await;
        match iam.get_role().role_name(role).send().await {
            Ok(found) => Some(found.role().and_then(|r| {
                r.tags()
                    .iter()
                    .find(|t| t.key() == "flotilla:deployment")
                    .map(|t| t.value().to_owned())
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_entity_exception()) => None,
            Err(e) => panic!("GetRole {role}: {e:?}"),
        }
    })
}

/// The role's inline policy document (URL-decoded as IAM returns it), if it has one.
fn role_policy(fleet: &AwsFleet, role: &str) -> Option<String> {
    runtime().block_on(async {
        let iam = fleet.iam().await;
        let answer = iam
            .get_role_policy()
            .role_name(role)
            .policy_name("flotilla-agent")
            .send()
            .await
            .ok()?;
        Some(percent_decode(answer.policy_document()))
    })
}

/// `text` with its `%XX` escapes decoded (IAM returns policy documents URL-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("a UTF-8 policy")
}

/// How many roles IAM lists under `name`.
fn roles_named(fleet: &AwsFleet, name: &str) -> usize {
    runtime().block_on(async {
        let iam = fleet.iam().await;
        let mut count = 0;
        let mut marker = None;
        loop {
            let page = iam.list_roles().set_marker(marker).send().await.unwrap();
            count += page.roles().iter().filter(|r| r.role_name() == name).count();
            marker = page.marker().map(str::to_owned);
            if !page.is_truncated() {
                return count;
            }
        }
    })
}

/// Two deployments whose 70-character tags share their first 60 characters (and start with
/// `-`, which the deployer accepts) get two roles, each tagged with its deployment; destroying
/// one leaves the other's role and policy as they were. A role of the deployment's name that is
/// not its own is refused before anything is created, and destroy leaves it alone.
#[test]
fn long_tags_get_their_own_roles_and_a_foreign_role_is_refused() {
    let shared = format!("-long{}", "x".repeat(55));
    let first = AwsFleet::new(&format!("{shared}-first-001"));
    let second = AwsFleet::new(&format!("{shared}-second-02"));
    assert_eq!((first.tag.len(), second.tag.len()), (70, 70));
    let (first_role, second_role) = (first.role_name(), second.role_name());
    assert_ne!(first_role, second_role);

    for fleet in [&first, &second] {
        let rows = create_one_machine(fleet, "[]");
        assert_eq!(row(&rows, "only")["health"], "healthy", "{rows:?}");
    }
    for (fleet, role) in [(&first, &first_role), (&second, &second_role)] {
        assert_eq!(roles_named(fleet, role), 1, "{role}");
        assert_eq!(role_owner(fleet, role), Some(Some(fleet.tag.clone())), "{role}");
        let policy = role_policy(fleet, role).expect("the role has its policy");
        assert!(policy.contains(&format!("deployments/{}/artifacts/*", fleet.tag)), "{policy}");
    }
    let second_policy = role_policy(&second, &second_role);

    first.run_ok(&["destroy", &first.tag_arg()]);
    assert_eq!(roles_named(&first, &first_role), 0, "the first deployment's role is gone");
    assert_eq!(roles_named(&second, &second_role), 1, "the second deployment's role stays");
    assert_eq!(role_policy(&second, &second_role), second_policy, "with its policy as it was");
    assert_eq!(row(&second.status(), "only")["health"], "healthy");
    second.run_ok(&["destroy", &second.tag_arg()]);
    let left = runtime().block_on(second.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");

    // A role with the name flotilla would give this deployment's, not tagged for it.
    let foreign = AwsFleet::new("foreign-role");
    let role = foreign.role_name();
    runtime().block_on(async {
        let iam = foreign.iam().await;
        iam.create_role()
            .role_name(&role)
            .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
            .send()
            .await
            .unwrap();
    });
    foreign.write("app.conf", &app_config("hello"));
    let spec = foreign.write("spec.yaml", &one_machine_config(&foreign.tag, "[]"));
    let output =
        foreign.run(&["create", "--config", &spec.display().to_string(), "--ip", "127.0.0.1"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&role) && stderr.contains("is not deployment `foreign-role`'s"),
        "{stderr}"
    );
    let left: Vec<_> = runtime()
        .block_on(foreign.leftovers(&["us-east-1"]))
        .into_iter()
        .filter(|(kind, _, _)| kind != "iam roles")
        .collect();
    assert!(left.is_empty(), "nothing was created: {left:?}");
    assert_eq!(role_policy(&foreign, &role), None, "the foreign role was not touched");
    foreign.run_ok(&["destroy", &foreign.tag_arg()]);
    assert_eq!(role_owner(&foreign, &role), Some(None), "destroy leaves a role it does not own");
    runtime().block_on(async {
        foreign.iam().await.delete_role().role_name(&role).send().await.unwrap();
    });
}

/// `(protocol, port, cidr)` of one ingress rule.
type IngressRule = (String, i32, String);

/// The ingress rules of each security group of the deployment in `region`, by group name, IPv4
/// and IPv6 alike, as DescribeSecurityGroups reports them.
fn ingress_rules(fleet: &AwsFleet, region: &str) -> BTreeMap<String, BTreeSet<IngressRule>> {
    runtime().block_on(async {
        let mut groups = BTreeMap::new();
        for group in fleet.security_groups(region).await {
            let mut rules = BTreeSet::new();
            for permission in group.ip_permissions() {
                let protocol = permission.ip_protocol().unwrap_or_default().to_owned();
                let port = permission.from_port().unwrap_or(-1);
                let v4 = permission.ip_ranges().iter().filter_map(|r| r.cidr_ip());
                let v6 = permission.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6());
                for cidr in v4.chain(v6) {
                    rules.insert((protocol.clone(), port, cidr.to_owned()));
                }
                assert!(permission.user_id_group_pairs().is_empty(), "{permission:?}");
            }
            let name = group.group_name().unwrap().to_owned();
            assert!(groups.insert(name, rules).is_none(), "two groups of one name");
        }
        groups
    })
}

fn rules(list: &[(&str, i32, &str)]) -> BTreeSet<IngressRule> {
    list.iter().map(|(p, port, c)| ((*p).to_owned(), *port, (*c).to_owned())).collect()
}

/// Security groups reconcile both ways. A re-run after a crash between creating the groups and
/// journaling them adopts them, IPv6 rule included, without `InvalidPermission.Duplicate`;
/// changed `ports` are applied exactly when `create` (and so `prepare`) runs again; an address
/// let in with `authorize` survives both, and `authorize --revoke` removes it for good.
#[test]
fn security_groups_converge_on_the_spec_and_keep_authorized_addresses() {
    let fleet = AwsFleet::new("sg-reconcile");
    let first_ports = "[{protocol: tcp, port: 9090, cidr: 0.0.0.0/0}, {protocol: tcp, port: 9090, cidr: '::/0'}, {protocol: udp, port: 9000, cidr: 10.0.0.0/8}]";
    create_one_machine(&fleet, first_ports);
    fleet.run_ok(&["authorize", &fleet.tag_arg(), "--ip", "203.0.113.9"]);
    let agent = [("tcp", 7443, "127.0.0.1/32"), ("tcp", 7443, "203.0.113.9/32")];
    let binary_group = "sg-reconcile-binary".to_owned();
    let monitoring_group = "sg-reconcile-monitoring".to_owned();
    // Besides the agent port and the spec's ports: the scrape ports from the monitoring VPC
    // (10.0.0.0/16, the only region) and the telemetry ingest ports of the monitoring group
    // from the deployment's VPCs.
    let scrape =
        [("tcp", 9090, "10.0.0.0/16"), ("tcp", 9100, "10.0.0.0/16"), ("tcp", 9101, "10.0.0.0/16")];
    let ingest =
        [("tcp", 3100, "10.0.0.0/16"), ("tcp", 4040, "10.0.0.0/16"), ("tcp", 4318, "10.0.0.0/16")];
    let expected = |ports: &[(&str, i32, &str)]| {
        let binary: Vec<_> = agent.iter().chain(&scrape).chain(ports).copied().collect();
        let monitoring: Vec<_> = agent.iter().chain(&ingest).copied().collect();
        BTreeMap::from([
            (binary_group.clone(), rules(&binary)),
            (monitoring_group.clone(), rules(&monitoring)),
        ])
    };
    let first_rules =
        expected(&[("tcp", 9090, "0.0.0.0/0"), ("tcp", 9090, "::/0"), ("udp", 9000, "10.0.0.0/8")]);
    assert_eq!(ingress_rules(&fleet, "us-east-1"), first_rules);

    // The CLI died after CreateSecurityGroup and its rules, before the journal said so.
    let records_path =
        fleet.home.path().join("deployments").join(&fleet.tag).join("aws/records.json");
    let mut records: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&records_path).unwrap()).unwrap();
    let region = records["regions"]["us-east-1"].as_object_mut().unwrap();
    assert!(
        region.remove("binary_group_id").is_some()
            && region.remove("monitoring_group_id").is_some()
    );
    fs_err::write(&records_path, serde_json::to_vec(&records).unwrap()).unwrap();
    let spec = fleet.path("spec.yaml").display().to_string();
    fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1"]);
    assert_eq!(ingress_rules(&fleet, "us-east-1"), first_rules, "adopted as they were");

    // The spec's ports change: create runs prepare again, which makes the rules exactly so.
    fleet.write(
        "spec.yaml",
        &one_machine_config(&fleet.tag, "[{protocol: tcp, port: 9191, cidr: '::/0'}]"),
    );
    fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1"]);
    assert_eq!(ingress_rules(&fleet, "us-east-1"), expected(&[("tcp", 9191, "::/0")]));

    // A revoked address is gone, and stays gone when prepare runs again.
    fleet.run_ok(&["authorize", &fleet.tag_arg(), "--revoke", "203.0.113.9"]);
    fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1"]);
    let groups = ingress_rules(&fleet, "us-east-1");
    let binary: Vec<_> =
        [agent[0]].iter().chain(&scrape).chain(&[("tcp", 9191, "::/0")]).copied().collect();
    let monitoring: Vec<_> = [agent[0]].iter().chain(&ingest).copied().collect();
    assert_eq!(groups[&binary_group], rules(&binary));
    assert_eq!(groups[&monitoring_group], rules(&monitoring));

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// Retry loops keep going through eventual consistency and stop at once at an error that cannot
/// heal, naming its code and call: instance ids not visible yet to DescribeInstances are waited
/// out; `Unsupported` in every zone of a type fails the launch at once, naming the pools;
/// `UnauthorizedOperation` ends destroy's dependency retries at once.
#[test]
fn retries_wait_out_eventual_consistency_and_stop_at_errors_that_cannot_heal() {
    let fleet = AwsFleet::new("healing");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &one_machine_config(&fleet.tag, "[]"));
    let spec = spec.display().to_string();

    // New instance ids that DescribeInstances does not know yet.
    runtime()
        .block_on(scope.set_faults(&[
            FaultRule::new("ec2", "DescribeInstances", "InvalidInstanceID.NotFound").count(2),
        ]))
        .unwrap();
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(row(&rows, "only")["health"], "healthy");
    let faults = runtime().block_on(scope.faults()).unwrap();
    assert_eq!(faults.iter().map(|f| f.hits).sum::<u64>(), 2, "both were met: {faults:?}");

    runtime()
        .block_on(scope.set_faults(&[FaultRule::new(
            "ec2",
            "DeleteSubnet",
            "UnauthorizedOperation",
        )]))
        .unwrap();
    let started = Instant::now();
    let output = fleet.run(&["destroy", &fleet.tag_arg()]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "a permission failure: {stderr}");
    assert!(
        stderr.contains("\nhint: allow DeleteSubnet in us-east-1 to these credentials"),
        "{stderr}"
    );
    assert!(
        stderr.contains("UnauthorizedOperation")
            && stderr.contains("DeleteSubnet")
            && stderr.contains("subnet-"),
        "names the code, the call and the subnet: {stderr}"
    );
    // Retried, it would last the launch deadline (10 minutes); the margin is for a loaded CI
    // machine, not a timing target.
    assert!(elapsed < Duration::from_secs(240), "fails fast: {elapsed:?}");
    runtime().block_on(scope.clear_faults()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");

    // A type no zone supports: a fresh deployment, so that its launch is the first. Every pool
    // is marked unavailable, nothing is open, and the launch fails at its deadline (shortened
    // for the test) naming every pool it tried.
    let fleet = AwsFleet::new("unsupported");
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &one_machine_config(&fleet.tag, "[]"));
    let spec = spec.display().to_string();
    runtime()
        .block_on(
            scope.set_faults(&[FaultRule::new("ec2", "CreateFleet", "Unsupported")
                .message("The requested configuration is currently not supported.")]),
        )
        .unwrap();
    let started = Instant::now();
    // No short test deadline: the launch must not wait for its 10 minutes.
    let output =
        fleet.command(&["create", "--config", &spec, "--ip", "127.0.0.1"]).output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "a capacity failure: {stderr}");
    // Which zone the first launch picks varies (balanced placement breaks ties either way);
    // every zone that was tried is named with its reason.
    assert!(
        stderr.contains("could not be launched: no pool that may run them is left")
            && stderr.matches("on-demand t3.small in us-east-1").count() >= 4
            && stderr.matches("(Unsupported)").count() >= 4,
        "{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(240),
        "fails at once, not at its 10 minutes: {elapsed:?}"
    );

    runtime().block_on(scope.clear_faults()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// A spec of capacity entries: `(name, region, count, extra keys)` each, the fleet app's binary
/// and config, a small monitoring machine. `extra` is YAML flow-mapping text
/// (`market: spot, instance_types: [...]`).
fn capacity_config(tag: &str, entries: &[(&str, &str, usize, &str)]) -> String {
    let binary = fleet_app_bin();
    let mut spec = format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n"
    );
    for (name, region, count, extra) in entries {
        spec.push_str(&format!(
            "- {{name: {name}, region: {region}, count: {count}, {extra}, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\n",
            binary.display()
        ));
    }
    spec.push_str("ports: []\n");
    spec
}

/// The scope's instances as the emulator knows them, not terminated.
fn live_instances(fleet: &AwsFleet) -> Vec<flotilla_emulator::control::InstanceInfo> {
    runtime()
        .block_on(Emulator::require().instances())
        .unwrap()
        .into_iter()
        .filter(|i| i.scope == fleet.scope && !matches!(i.state.as_str(), "terminated"))
        .collect()
}

const PREFER_SPOT_TYPES: &str = "instance_types: [m5.large, m6i.large, c5.large, c6i.large]";

/// `prefer-spot` over 4 types, 20 machines in 3 regions, with every spot pool dry in 2 of the 3
/// zones of each region: all 20 run and are healthy, spot wherever a spot pool was open and
/// on-demand in the dry zones, balanced over the zones, each named once.
#[test]
fn prefer_spot_falls_back_to_on_demand_zone_by_zone_and_stays_balanced() {
    let fleet = AwsFleet::new("prefer-spot");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let regions = [("us-east-1", 7), ("us-west-2", 7), ("eu-west-1", 6)];
    let entries: Vec<(String, String)> = regions
        .iter()
        .map(|(region, _)| {
            let zones = format!("zones: [{region}a, {region}b, {region}c]");
            (format!("w-{region}"), format!("market: prefer-spot, {PREFER_SPOT_TYPES}, {zones}"))
        })
        .collect();
    let entries: Vec<(&str, &str, usize, &str)> = regions
        .iter()
        .zip(&entries)
        .map(|((region, count), (name, extra))| (name.as_str(), *region, *count, extra.as_str()))
        .collect();
    let spec = fleet.write("spec.yaml", &capacity_config(&fleet.tag, &entries));
    let mut rules = Vec::new();
    for (region, _) in regions {
        for zone in ["a", "b"] {
            rules.push(FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity").pool(
                PoolFilter {
                    availability_zone: Some(format!("{region}{zone}")),
                    market: Some("spot".into()),
                    ..PoolFilter::default()
                },
            ));
        }
    }
    runtime().block_on(scope.set_faults(&rules)).unwrap();

    let rows = fleet.create_rows(&spec);
    assert_eq!(rows.len(), 21, "{rows:?}");
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }

    let instances = live_instances(&fleet);
    assert_eq!(instances.len(), 21, "one instance per machine");
    let mut names = BTreeSet::new();
    for (region, count) in regions {
        let here: Vec<_> = instances
            .iter()
            .filter(|i| {
                i.region == region
                    && i.tags.get("flotilla:role").map(String::as_str) == Some("binary")
            })
            .collect();
        assert_eq!(here.len(), count, "{region}");
        let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
        for instance in &here {
            let zone = instance.availability_zone.clone().unwrap();
            let expected = if zone.ends_with('c') { "spot" } else { "on-demand" };
            assert_eq!(instance.lifecycle, expected, "{region}: {} in {zone}", instance.id);
            assert!(
                ["m5.large", "m6i.large", "c5.large", "c6i.large"]
                    .contains(&instance.instance_type.as_str()),
                "{}",
                instance.instance_type
            );
            *per_zone.entry(zone).or_insert(0) += 1;
            let name = instance.tags.get("flotilla:machine").cloned().expect("named");
            assert!(names.insert(name.clone()), "{name} named twice");
            assert!(
                instance.tags.get("Name").is_some_and(|n| n.contains(&name)),
                "{:?}",
                instance.tags
            );
        }
        assert_eq!(per_zone.len(), 3, "{region}: every zone used: {per_zone:?}");
        let (min, max) = (per_zone.values().min().unwrap(), per_zone.values().max().unwrap());
        assert!(max - min <= 1, "{region}: balanced: {per_zone:?}");
    }
    assert_eq!(names.len(), 20);
    // `status` shows each machine where it landed and what it costs, as the emulator has it.
    let status = fleet.status();
    assert_eq!(status.len(), 21);
    let mut total = 0.0;
    for row in &status {
        let instance = instances
            .iter()
            .find(|i| row["id"] == i.id.as_str())
            .unwrap_or_else(|| panic!("an instance of {row}"));
        assert_eq!(row["instance_type"], instance.instance_type.as_str(), "{row}");
        assert_eq!(row["zone"], instance.availability_zone.clone().unwrap().as_str(), "{row}");
        assert_eq!(row["market"], instance.lifecycle.as_str(), "{row}");
        let price = row["usd_per_hour"].as_f64().unwrap_or_else(|| panic!("priced: {row}"));
        assert!(price > 0.0, "{row}");
        total += price;
        let source = row["price_source"]["source"].as_str().unwrap_or_default();
        let dated = |key: &str| row["price_source"][key].as_str().is_some_and(|d| d.len() >= 10);
        match instance.lifecycle.as_str() {
            "spot" => assert!(source == "spot-price-history" && dated("as_of"), "{row}"),
            _ => assert!(source == "pricing-api" && dated("as_of"), "{row}"),
        }
    }
    // `list` shows the deployment's price per hour: the sum of its machines'.
    let listed = fleet.run_ok(&["list", "--output", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let ours = listed.iter().find(|d| d["tag"] == fleet.tag.as_str()).expect("listed");
    let listed_price = ours["usd_per_hour"].as_f64().expect("list has the price");
    assert!((listed_price - total).abs() < 0.001, "{listed_price} vs {total}");

    runtime().block_on(scope.clear_faults()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let regions: Vec<&str> = regions.iter().map(|(r, _)| *r).collect();
    let left = runtime().block_on(fleet.leftovers(&regions));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// Attribute-based selection end to end: an on-demand entry with `requirements:` only (2 vCPU,
/// 8 GiB, Intel, not burstable, no m5) lands every machine on a type the emulator's catalog says
/// matches, through an EC2 Fleet that asks for `lowest-price` (there is no listed order to keep).
#[test]
fn requirements_alone_launch_matching_types_at_the_lowest_price() {
    let fleet = AwsFleet::new("requirements");
    let _emulator = Emulator::require();
    fleet.write("app.conf", &app_config("hello"));
    let requirements = "requirements: {vcpu_count: {min: 2, max: 2}, memory_mib: {min: 8192, max: 8192}, cpu_manufacturers: [intel], burstable_performance: excluded, excluded_instance_types: [\"m5.*\"]}";
    let spec = fleet
        .write("spec.yaml", &capacity_config(&fleet.tag, &[("web", "us-east-1", 3, requirements)]));
    let rows = fleet.create_rows(&spec);
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
    let types: BTreeSet<String> = live_instances(&fleet)
        .into_iter()
        .filter(|i| i.tags.get("flotilla:role").map(String::as_str) == Some("binary"))
        .map(|i| i.instance_type)
        .collect();
    assert!(!types.is_empty());
    let ec2 = runtime().block_on(fleet.ec2("us-east-1"));
    runtime().block_on(async {
        let described = ec2
            .describe_instance_types()
            .set_instance_types(Some(
                types.iter().map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str())).collect(),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(described.instance_types().len(), types.len(), "{types:?}");
        for info in described.instance_types() {
            let name = info.instance_type().unwrap().as_str();
            assert!(!name.starts_with("m5."), "{name} is excluded");
            assert_eq!(info.v_cpu_info().and_then(|v| v.default_v_cpus()), Some(2), "{name}");
            assert_eq!(info.memory_info().and_then(|m| m.size_in_mib()), Some(8192), "{name}");
            assert_eq!(info.burstable_performance_supported(), Some(false), "{name}");
            let manufacturer = info.processor_info().and_then(|p| p.manufacturer()).unwrap_or("");
            assert!(manufacturer.to_lowercase().contains("intel"), "{name}: {manufacturer}");
        }
        // The emulator answers every scope's fleets, unfiltered: this deployment's binary
        // fleets are picked by their tags.
        let fleets = ec2.describe_fleets().send().await.unwrap();
        let strategies: BTreeSet<String> = fleets
            .fleets()
            .iter()
            .filter(|f| {
                let tags = tags_of(f.tags());
                tags.get("flotilla:deployment") == Some(&fleet.tag)
                    && tags.get("flotilla:role").map(String::as_str) == Some("binary")
            })
            .filter_map(|f| f.on_demand_options()?.allocation_strategy())
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(strategies, BTreeSet::from(["lowest-price".to_owned()]));
    });
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// A `spot` entry whose every spot pool is dry fails at its launch deadline, naming the pools
/// it tried; destroy then leaves nothing.
#[test]
fn spot_with_every_pool_dry_fails_at_the_deadline_naming_the_pools() {
    let fleet = AwsFleet::new("spot-dry");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write(
        "spec.yaml",
        &capacity_config(
            &fleet.tag,
            &[(
                "w",
                "us-west-2",
                2,
                "market: spot, instance_types: [m5.large, m6i.large], zones: [us-west-2a, us-west-2b]",
            )],
        ),
    );
    runtime()
        .block_on(
            scope.set_faults(&[FaultRule::new(
                "ec2",
                "CreateFleet",
                "InsufficientInstanceCapacity",
            )
            .pool(PoolFilter { market: Some("spot".into()), ..PoolFilter::default() })]),
        )
        .unwrap();
    let started = Instant::now();
    let output = fleet
        .command(&["create", "--config", &spec.display().to_string(), "--ip", "127.0.0.1"])
        .env("FLOTILLA_TEST_LAUNCH_DEADLINE", "15s")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "a capacity failure: {stderr}");
    assert!(
        stderr.contains("\nhint: try more instance_types or zones, or market: prefer-spot"),
        "{stderr}"
    );
    assert!(stderr.contains("w: 2 of the spot machines in us-west-2 could not be launched before the launch deadline"), "{stderr}");
    for pool in [
        "spot m5.large in us-west-2a (InsufficientInstanceCapacity)",
        "spot m6i.large in us-west-2a (InsufficientInstanceCapacity)",
        "spot m5.large in us-west-2b (InsufficientInstanceCapacity)",
        "spot m6i.large in us-west-2b (InsufficientInstanceCapacity)",
    ] {
        assert!(stderr.contains(pool), "names {pool}: {stderr}");
    }
    assert!(elapsed < Duration::from_secs(90), "within its deadline: {elapsed:?}");
    assert!(
        live_instances(&fleet).iter().all(|i| i.region != "us-west-2"),
        "no spot machine launched"
    );

    runtime().block_on(scope.clear_faults()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1", "us-west-2"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// A vCPU quota error on one type marks its whole quota family in the region: the type of the
/// same family that had capacity in the other zone is not tried again, so two CreateFleet calls
/// (one per zone) are all the group makes before it fails at its deadline.
#[test]
fn a_quota_error_is_not_retried_on_other_types_of_its_family() {
    let fleet = AwsFleet::new("quota");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write(
        "spec.yaml",
        &capacity_config(
            &fleet.tag,
            &[(
                "w",
                "us-west-2",
                2,
                "instance_types: [m5.large, m6i.large], zones: [us-west-2a, us-west-2b]",
            )],
        ),
    );
    runtime()
        .block_on(
            scope.set_faults(&[
                FaultRule::new("ec2", "CreateFleet", "VcpuLimitExceeded").pool(PoolFilter {
                    instance_type: Some("m5.large".into()),
                    market: Some("on-demand".into()),
                    ..PoolFilter::default()
                }),
                FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity")
                    .pool(PoolFilter::new("m6i.large", "us-west-2a", "on-demand")),
            ]),
        )
        .unwrap();
    runtime().block_on(scope.reset_counts()).unwrap();
    let output = fleet
        .command(&["create", "--config", &spec.display().to_string(), "--ip", "127.0.0.1"])
        .env("FLOTILLA_TEST_LAUNCH_DEADLINE", "10s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "a quota failure: {stderr}");
    assert!(stderr.contains("on-demand m5.large in us-west-2a (VcpuLimitExceeded)"), "{stderr}");
    assert!(
        stderr.contains(
            "\nhint: request a quota increase: the standard on-demand vCPU quota in us-west-2\n"
        ),
        "{stderr}"
    );
    let counts = runtime().block_on(scope.counts()).unwrap();
    // One for the monitoring machine (us-east-1), one per zone of `w`.
    assert_eq!(counts.get("ec2", "CreateFleet"), 3, "{counts:?}");
    let faults = runtime().block_on(scope.faults()).unwrap();
    let hits = |code: &str| faults.iter().filter(|f| f.code == code).map(|f| f.hits).sum::<u64>();
    assert_eq!(hits("VcpuLimitExceeded"), 2, "m5.large once per zone: {faults:?}");
    assert_eq!(hits("InsufficientInstanceCapacity"), 1, "{faults:?}");
    let w: Vec<_> =
        live_instances(&fleet).into_iter().filter(|i| i.region == "us-west-2").collect();
    assert_eq!(w.len(), 1, "only the first answer's m6i.large in us-west-2b: {w:?}");

    runtime().block_on(scope.clear_faults()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1", "us-west-2"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// A spot machine that EC2 reclaims is shown by `status` with EC2's reason.
#[test]
fn a_reclaimed_spot_machine_shows_why_in_status() {
    let fleet = AwsFleet::new("reclaim");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write(
        "spec.yaml",
        &capacity_config(
            &fleet.tag,
            &[("w", "us-east-1", 1, "market: spot, instance_types: [m5.large, m6i.large]")],
        ),
    );
    fleet.run_ok(&["create", "--config", &spec.display().to_string(), "--ip", "127.0.0.1"]);
    let spot: Vec<String> = live_instances(&fleet)
        .into_iter()
        .filter(|i| i.lifecycle == "spot")
        .map(|i| i.id)
        .collect();
    assert_eq!(spot.len(), 1, "the machine runs on spot");
    runtime()
        .block_on(scope.set_timing(flotilla_emulator::control::StateTiming {
            pending: Duration::from_millis(0),
            shutting_down: Duration::from_secs(20),
        }))
        .unwrap();
    runtime().block_on(emulator.reclaim_spot(&spot, Some(Duration::ZERO))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let row = loop {
        let status = fleet.status();
        let row = row(&status, "w-0").clone();
        if row["state"] != "running" || Instant::now() > deadline {
            break row;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(row["state"], "shutting-down", "{row}");
    assert!(
        row["state_reason"].as_str().is_some_and(|r| r.contains("Server.SpotInstanceTermination")),
        "{row}"
    );
    runtime().block_on(scope.clear_timing()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// The CLI killed (SIGKILL) right after a CreateFleet answered, before the names were
/// journaled, then run again: the instances of that answer are adopted by their group tag and
/// nothing is launched twice.
#[test]
fn a_create_killed_after_a_fleet_answered_launches_nothing_twice() {
    let fleet = AwsFleet::new("fleet-crash");
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write(
        "spec.yaml",
        &capacity_config(&fleet.tag, &[("w", "us-east-1", 3, "instance_type: m5.large")]),
    );
    let spec = spec.display().to_string();
    let output = fleet
        .command(&["create", "--config", &spec, "--ip", "127.0.0.1"])
        .env("FLOTILLA_TEST_HALT_AT", "create:fleet-answered")
        .output()
        .unwrap();
    assert!(!output.status.success(), "halted: {}", String::from_utf8_lossy(&output.stderr));
    let before = live_instances(&fleet);
    assert!(!before.is_empty(), "a fleet answered before the halt");
    assert!(before.iter().all(|i| !i.tags.contains_key("flotilla:machine")), "none named yet");

    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
    let after = live_instances(&fleet);
    assert_eq!(after.len(), 4, "one instance per machine: {after:?}");
    for instance in &before {
        assert!(after.iter().any(|i| i.id == instance.id), "{} was adopted", instance.id);
    }
    let names: BTreeSet<&str> =
        after.iter().filter_map(|i| i.tags.get("flotilla:machine").map(String::as_str)).collect();
    assert_eq!(names, BTreeSet::from(["monitoring", "w-0", "w-1", "w-2"]));
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// The agent polls the IMDS the user data gave it (the emulator's, per instance): a spot
/// interruption the emulator announces runs the `interrupted` hook, with the instance's id from
/// IMDS among its macros, then the binary stops; `status` shows the event and the hook.
/// `flotilla notice` refuses the AWS deployment with the Fault Injection Service guidance.
#[test]
fn a_spot_interruption_notice_from_imds_runs_the_interrupted_hooks_and_stops_the_binary() {
    let fleet = AwsFleet::new("spot-notice");
    let emulator = Emulator::require();
    fleet.write("app.conf", &app_config("hello"));
    let spec = format!(
        "tag: '{tag}'\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: only\n  region: us-east-1\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: app.conf\n  profiling: false\n  lifecycle:\n    domains:\n      app:\n        exec:\n        - on: [interrupted]\n          lines:\n          - argv: [sh, -c, 'echo \"$*\"', hook, '{{daemon_state}}', '{{interrupt_action}}', '{{instance_id}}']\nports: []\n",
        tag = fleet.tag,
        binary = fleet_app_bin().display(),
    );
    let spec = fleet.write("spec.yaml", &spec);
    let rows = fleet.create_rows(&spec);
    assert_eq!(row(&rows, "only")["health"], "healthy", "{rows:?}");
    let instances = live_instances(&fleet);
    let id = instances
        .iter()
        .find(|i| {
            i.public_ip.map(|ip| ip.to_string()).as_deref() == row(&rows, "only")["ip"].as_str()
        })
        .map(|i| i.id.clone())
        .unwrap_or_else(|| panic!("the machine's instance: {instances:?}"));

    let interruption = flotilla_emulator::control::SpotInterruption {
        action: flotilla_emulator::control::SpotAction::Terminate,
        time: None,
    };
    runtime().block_on(emulator.trigger_spot_interruption(&id, &interruption)).unwrap();
    let only = wait_for("the binary stopped by the notice", Duration::from_secs(60), || {
        let status = fleet.status();
        let only = row(&status, "only").clone();
        (only["health"] == "stopped").then_some(only)
    });
    let lifecycle = &only["lifecycle"];
    assert_eq!(lifecycle["last_event"]["event"], "interrupted", "{only}");
    assert_eq!(lifecycle["imds"], "ok", "{only}");
    let hook = &lifecycle["hooks"][0];
    assert_eq!(hook["outcome"], "succeeded", "{only}");
    assert_eq!(hook["message"], format!("interrupted terminate {id}"), "{only}");
    assert_eq!(only["pid"], serde_json::Value::Null, "{only}");

    // `flotilla notice` serves only local machines; on AWS it names Fault Injection Service.
    let output = fleet.run(&["notice", &fleet.tag_arg(), "only", "spot", "--output", "json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("runs on the aws provider"), "{stderr}");
    assert!(stderr.contains("aws:ec2:send-spot-instance-interruptions"), "{stderr}");
    assert!(stderr.contains("aws fis start-experiment"), "{stderr}");

    runtime().block_on(emulator.clear_spot_interruption(&id)).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}
