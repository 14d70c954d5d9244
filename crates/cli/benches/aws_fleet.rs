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
//! cargo bench -p flotilla-cli --bench aws_fleet -- 50x5 500x10 capacity:1000x10
//! ```
//! (start-for-tests.sh looks for target/debug/flotilla-emulator: build that too.)
//!
//! `capacity:NxR` is the capacity shape: N machines in R regions, `prefer-spot` over
//! [`CAPACITY_TYPES`], every spot pool dry in the first half of each region's zones (so those
//! zones fall back to on-demand), 100 ms per call and the emulator's EC2 throttling model on. It
//! reports the launch calls by action, the `RequestLimitExceeded` answers received (the target
//! is none: the client-side buckets keep flotilla inside EC2's), the wall time, and the same
//! shape's launch under the deployer's structure, computed: one RunInstances per machine, serial
//! per region, a 15 s rescan after each capacity error.
//!
//! `plan:NxR` times `flotilla plan` of the capacity shape's spec at 100 ms per call: cold (an
//! empty `$FLOTILLA_HOME`, so the catalog and prices are read from the APIs) and then warm
//! (from the cache), with the calls each made.

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

/// The types of the capacity shape, all x86-64 and offered in most zones.
const CAPACITY_TYPES: [&str; 6] =
    ["m5.large", "m5a.large", "m6i.large", "c5.large", "c6i.large", "r5.large"];

fn main() {
    let prefixed = |prefix: &str| -> Vec<(usize, usize)> {
        std::env::args()
            .skip(1)
            .filter_map(|a| {
                let (n, r) = a.strip_prefix(prefix)?.split_once('x')?;
                Some((n.parse().unwrap(), r.parse().unwrap()))
            })
            .collect()
    };
    let capacity = prefixed("capacity:");
    let plans = prefixed("plan:");
    let shapes: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && !a.contains(':'))
        .map(|a| {
            let (n, r) = a.split_once('x').expect("shapes look like 50x5");
            (n.parse().unwrap(), r.parse().unwrap())
        })
        .collect();
    let shapes = if shapes.is_empty() && capacity.is_empty() && plans.is_empty() {
        vec![(50, 5), (500, 10)]
    } else {
        shapes
    };
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
    for (instances, regions) in capacity {
        bench_capacity(&emulator, &runtime, instances, regions);
    }
    for (instances, regions) in plans {
        bench_plan(&emulator, &runtime, instances, regions);
    }
}

/// Writes the capacity shape's spec (see the module documentation) as `spec.yaml` in `work`.
fn write_capacity_spec(work: &std::path::Path, tag: &str, instances: usize, regions: &[&str]) {
    let binary = work.join("sleeper.sh");
    fs_err::write(&binary, "#!/bin/sh\nexec sleep 100000\n").unwrap();
    Command::new("chmod").arg("755").arg(&binary).status().unwrap();
    fs_err::write(work.join("app.conf"), "setting = 1\n").unwrap();
    fs_err::write(work.join("dashboard.json"), "{}").unwrap();
    let types = CAPACITY_TYPES.join(", ");
    let mut spec = format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: {INSTANCE_TYPE}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n"
    );
    let per_region = instances / regions.len();
    for region in regions {
        spec.push_str(&format!(
            "- {{name: {region}, count: {per_region}, region: {region}, market: prefer-spot, instance_types: [{types}], storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\n",
            binary.display()
        ));
    }
    spec.push_str("ports: []\n");
    fs_err::write(work.join("spec.yaml"), spec).unwrap();
}

/// `flotilla plan` of the capacity shape, cold and warm (see the module documentation).
fn bench_plan(
    emulator: &Emulator,
    runtime: &tokio::runtime::Runtime,
    instances: usize,
    region_count: usize,
) {
    let flotilla = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tag = format!("plan-{instances}x{region_count}");
    let scope_name = format!("PLAN{instances}X{region_count}{}", std::process::id());
    let scope = emulator.scope(&scope_name);
    write_capacity_spec(work.path(), &tag, instances, &REGIONS[..region_count]);
    runtime.block_on(scope.set_latency(LATENCY)).unwrap();
    let shape = format!("plan {instances} in {region_count} regions");
    for run in ["cold", "warm", "warm"] {
        runtime.block_on(scope.reset_counts()).unwrap();
        let started = Instant::now();
        let output = Command::new(&flotilla)
            .args(["plan", "--config", "spec.yaml", "--output", "json"])
            .current_dir(work.path())
            .env("FLOTILLA_HOME", home.path())
            .env("AWS_ACCESS_KEY_ID", &scope_name)
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        assert!(
            output.status.success(),
            "flotilla plan: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let counts = runtime.block_on(scope.counts()).unwrap();
        report(&shape, &format!("plan, {run} cache"), elapsed, &counts.0);
        let pricing: u64 = counts.0.get("pricing").map(|a| a.values().sum()).unwrap_or(0);
        println!("{:>22}    pricing: {pricing} calls", "");
    }
    runtime.block_on(scope.clear_latency()).unwrap();
}

/// The capacity shape (see the module documentation).
fn bench_capacity(
    emulator: &Emulator,
    runtime: &tokio::runtime::Runtime,
    instances: usize,
    region_count: usize,
) {
    use flotilla_emulator::control::{FaultRule, PoolFilter};

    let flotilla = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tag = format!("capacity-{instances}x{region_count}");
    let scope_name = format!("CAPACITY{instances}X{region_count}{}", std::process::id());
    let scope = emulator.scope(&scope_name);
    let regions = &REGIONS[..region_count];
    write_capacity_spec(work.path(), &tag, instances, regions);
    let per_region = instances / region_count;

    // Spot is dry in the first half of each region's zones (by name), for every type.
    let zones = runtime.block_on(zones_of(&scope_name, regions));
    let mut rules = Vec::new();
    let mut dry_zones = BTreeMap::new();
    for (region, zones) in &zones {
        let dry: Vec<String> = zones.iter().take((zones.len() / 2).max(1)).cloned().collect();
        for zone in &dry {
            rules.push(FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity").pool(
                PoolFilter {
                    availability_zone: Some(zone.clone()),
                    market: Some("spot".into()),
                    ..PoolFilter::default()
                },
            ));
        }
        dry_zones.insert(region.clone(), (dry.len(), zones.len()));
    }
    runtime.block_on(scope.set_faults(&rules)).unwrap();
    runtime.block_on(scope.set_latency(LATENCY)).unwrap();
    runtime.block_on(scope.set_throttling(true)).unwrap();
    runtime.block_on(scope.reset_counts()).unwrap();

    let logs = std::env::var_os("FLOTILLA_BENCH_LOGS").map(PathBuf::from);
    if let Some(dir) = &logs {
        fs_err::create_dir_all(dir).unwrap();
    }
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
            let file = dir.join(format!("capacity-{instances}x{region_count}-{}.log", args[0]));
            fs_err::write(file, &output.stderr).unwrap();
        }
        assert!(
            output.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (elapsed, output)
    };
    let (create, output) =
        run(&["create", "--config", "spec.yaml", "--ip", "127.0.0.1", "--output", "json"]);
    let counts = runtime.block_on(scope.counts()).unwrap();
    let throttled = runtime.block_on(scope.throttling()).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let healthy = rows.iter().filter(|r| r["role"] == "binary" && r["health"] == "healthy").count();
    let spot = runtime
        .block_on(emulator.instances())
        .unwrap()
        .into_iter()
        .filter(|i| i.scope == scope_name && i.state == "running" && i.lifecycle == "spot")
        .count();
    runtime.block_on(scope.clear_faults()).unwrap();
    runtime.block_on(scope.reset_counts()).unwrap();
    let (destroy, _) = run(&["destroy", "--tag", &tag]);
    let destroy_counts = runtime.block_on(scope.counts()).unwrap();
    runtime.block_on(scope.clear_latency()).unwrap();
    runtime.block_on(scope.clear_throttling()).unwrap();

    let shape = format!("capacity {instances} in {region_count} regions");
    report(&shape, "create → all healthy", create, &counts.0);
    println!(
        "{:>22}    {healthy} of {} machines healthy, {spot} on spot; RequestLimitExceeded received: {} ({:?})",
        "",
        per_region * region_count,
        throttled.throttled.values().sum::<u64>(),
        throttled.throttled
    );
    report(&shape, "destroy", destroy, &destroy_counts.0);
    // The deployer's structure on the same shape: machine i of a region goes to zone i mod z
    // on the first type; a machine whose pool is dry costs a capacity error, a 15 s rescan and
    // a second RunInstances; launches are serial within a region.
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    for (dry, zones) in dry_zones.values() {
        let errors = (0..per_region).filter(|i| i % zones < *dry).count();
        let region_calls = per_region + errors;
        calls += region_calls;
        let wall = LATENCY * region_calls as u32 + Duration::from_secs(15) * errors as u32;
        slowest = slowest.max(wall);
    }
    println!(
        "{shape:>22}  deployer (structural)    {calls} RunInstances (one per machine, plus one after each capacity error), serial per region: the slowest region's launches alone take {:.0} s",
        slowest.as_secs_f64()
    );
}

/// Each region's zones (that offer the first capacity type), by name.
async fn zones_of(scope: &str, regions: &[&str]) -> BTreeMap<String, Vec<String>> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(std::env::var("AWS_ENDPOINT_URL").unwrap())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            scope, "bench", None, None, "bench",
        ))
        .load()
        .await;
    let mut zones = BTreeMap::new();
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
                    .values(CAPACITY_TYPES[0])
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut names: Vec<String> = offerings
            .instance_type_offerings()
            .iter()
            .filter_map(|o| o.location().map(str::to_owned))
            .collect();
        names.sort();
        zones.insert((*region).to_owned(), names);
    }
    zones
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
    if let Some(dir) = &logs {
        fs_err::create_dir_all(dir).unwrap();
    }
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
