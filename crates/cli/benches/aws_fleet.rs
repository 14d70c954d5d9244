//! Benchmark: AWS fleets on the emulator, with latency injected on every call.
//!
//! For each shape (instances × regions): `create` until every machine is healthy, then
//! `destroy`, counting the API calls of each (by service and Action, from the emulator) and
//! timing them, next to the commonware deployer's structural count for the same shape
//! (refs/commonware-deployer.md §11). Machines run a tiny binary (sleep) with no health check,
//! so the figures are the control plane's. Run it against an emulator whose agent seed is the
//! release build the benchmark runs:
//!
//! ```text
//! cargo build --release -p flotilla-cli -p flotilla-emulator
//! eval "$(CARGO_TARGET_DIR=target crates/emulator/start-for-tests.sh --parent-pid $$ --agent-seed target/release/flotilla)"
//! cargo bench -p flotilla-cli --bench aws_fleet -- 50x5 500x10
//! ```
//! (start-for-tests.sh looks for target/debug/flotilla-emulator: build that too.)

#![allow(clippy::print_stdout, clippy::unwrap_used)] // A benchmark prints its figures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_emulator::control::Emulator;

const REGIONS: [&str; 10] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "us-east-2",
    "us-west-1",
    "eu-west-2",
    "ap-southeast-1",
    "ap-southeast-2",
];
const INSTANCE_TYPE: &str = "m5.large";
const LATENCY: Duration = Duration::from_millis(100);

fn main() {
    let shapes: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| {
            let (n, r) = a.split_once('x').expect("shapes look like 50x5");
            (n.parse().unwrap(), r.parse().unwrap())
        })
        .collect();
    let shapes = if shapes.is_empty() { vec![(50, 5), (500, 10)] } else { shapes };
    let emulator = Emulator::require();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!(
        "machine: {} cores; latency injected on every call: {} ms",
        cores(),
        LATENCY.as_millis()
    );
    for (instances, regions) in shapes {
        bench(&emulator, &runtime, instances, regions);
    }
}

fn bench(
    emulator: &Emulator,
    runtime: &tokio::runtime::Runtime,
    instances: usize,
    region_count: usize,
) {
    let flotilla = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tag = format!("bench-{instances}x{region_count}");
    let scope_name = format!("BENCH{instances}X{region_count}{}", std::process::id());
    let scope = emulator.scope(&scope_name);
    runtime.block_on(scope.set_latency(LATENCY)).unwrap();
    runtime.block_on(scope.reset_counts()).unwrap();

    let binary = work.path().join("sleeper.sh");
    fs_err::write(&binary, "#!/bin/sh\nexec sleep 100000\n").unwrap();
    std::process::Command::new("chmod").arg("755").arg(&binary).status().unwrap();
    fs_err::write(work.path().join("app.conf"), "setting = 1\n").unwrap();
    fs_err::write(work.path().join("dashboard.json"), "{}").unwrap();
    let regions = &REGIONS[..region_count];
    let mut spec = format!(
        "tag: {tag}\nmonitoring: {{instance_type: {INSTANCE_TYPE}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n"
    );
    let per_region = instances / region_count;
    for region in regions {
        spec.push_str(&format!(
            "- {{name: {region}, count: {per_region}, region: {region}, instance_type: {INSTANCE_TYPE}, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\n",
            binary.display()
        ));
    }
    spec.push_str("ports: []\n");
    fs_err::write(work.path().join("spec.yaml"), spec).unwrap();

    // FLOTILLA_BENCH_LOGS=DIR keeps each command's log (with -v: every stage, timed) in DIR.
    let logs = std::env::var_os("FLOTILLA_BENCH_LOGS").map(PathBuf::from);
    let run = |args: &[&str]| {
        let started = Instant::now();
        let output = Command::new(&flotilla)
            .args(args)
            .args(logs.as_ref().map(|_| "-v"))
            .current_dir(work.path())
            .env("FLOTILLA_HOME", home.path())
            .env("AWS_ACCESS_KEY_ID", &scope_name)
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        if let Some(dir) = &logs {
            let file = dir.join(format!("{instances}x{}-{}.log", regions.len(), args[0]));
            fs_err::write(file, &output.stderr).unwrap();
        }
        assert!(
            output.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        elapsed
    };

    // The deployer makes a subnet in every zone that offers a needed type: count them.
    let zones = runtime.block_on(zones_offering(&scope_name, regions));
    runtime.block_on(scope.reset_counts()).unwrap();

    let create = run(&["create", "--config", "spec.yaml", "--ip", "127.0.0.1"]);
    let create_counts = runtime.block_on(scope.counts()).unwrap();
    runtime.block_on(scope.reset_counts()).unwrap();
    let destroy = run(&["destroy", "--tag", &tag]);
    let destroy_counts = runtime.block_on(scope.counts()).unwrap();
    runtime.block_on(scope.clear_latency()).unwrap();

    let shape = format!("{instances} in {region_count} regions");
    report(&shape, "create → all healthy", create, &create_counts.0);
    report(&shape, "destroy", destroy, &destroy_counts.0);
    // The deployer's structural count for this shape (refs §11), with one type, P = 1,
    // W_r = 2, W_s = 8 and S = the zones that offer the type.
    let r = region_count;
    let b = r - 1;
    let deployer = 1
        + 2
        + r
        + 5 * r
        + 2 * zones
        + 2
        + r
        + 2 * r
        + b * 5
        + r
        + (instances + 1)
        + 2 * r
        + 1
        + r
        + b
        + 1;
    println!(
        "{shape:>22}  deployer (structural)    {deployer} calls + {} DescribeInstanceStatus (one per instance per 15 s poll, ≈ 8 polls), launches serial per region",
        (instances + 1) * 8
    );
}

/// Zones offering the benchmark's type, summed over `regions` (the deployer's S).
async fn zones_offering(scope: &str, regions: &[&str]) -> usize {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(std::env::var("AWS_ENDPOINT_URL").unwrap())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            scope, "bench", None, None, "bench",
        ))
        .load()
        .await;
    let mut zones = 0;
    for region in regions {
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&config)
                .region(aws_config::Region::new(region.to_string()))
                .build(),
        );
        let offerings = ec2
            .describe_instance_type_offerings()
            .location_type(aws_sdk_ec2::types::LocationType::AvailabilityZone)
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-type")
                    .values(INSTANCE_TYPE)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        zones += offerings.instance_type_offerings().len();
    }
    zones
}

fn report(
    shape: &str,
    what: &str,
    elapsed: Duration,
    counts: &BTreeMap<String, BTreeMap<String, u64>>,
) {
    let total = |service: &str| counts.get(service).map(|a| a.values().sum::<u64>()).unwrap_or(0);
    println!(
        "{shape:>22}  {what:<22} {:>7.2} s   EC2 {} calls, S3 {}, IAM {}",
        elapsed.as_secs_f64(),
        total("ec2"),
        total("s3"),
        total("iam")
    );
    if let Some(ec2) = counts.get("ec2") {
        let actions: Vec<String> = ec2.iter().map(|(action, n)| format!("{action} {n}")).collect();
        println!("{:>22}    ec2: {}", "", actions.join(", "));
    }
    if let Some(s3) = counts.get("s3") {
        let actions: Vec<String> = s3.iter().map(|(action, n)| format!("{action} {n}")).collect();
        println!("{:>22}    s3: {}", "", actions.join(", "));
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
