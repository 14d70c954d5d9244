//! `flotilla plan` against the emulator: read-only (no mutating call), its on-demand prices
//! those of the Pricing API (the emulator serves the committed table), its spot prices the
//! zones' own, below on-demand.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use common::aws::AwsFleet;
use common::*;
use flotilla_emulator::control::Emulator;
use serde_json::Value;

/// The on-demand price of `instance_type` in us-east-1 in the committed table.
fn table_price(instance_type: &str) -> f64 {
    let table = include_str!("../../capacity/data/ondemand-us-east-1.csv");
    table
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{instance_type},")))
        .unwrap_or_else(|| panic!("{instance_type} is in the table"))
        .parse()
        .unwrap()
}

#[test]
fn plan_makes_no_change_and_prices_as_the_pricing_api_says() {
    let fleet = AwsFleet::new("plan-prices");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let binary = fleet_app_bin();
    let native = if std::env::consts::ARCH == "aarch64" { "m7g.large" } else { "m7i.large" };
    let spec = format!(
        "tag: plan-prices\nprovider: aws\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: web, count: 3, region: us-east-1, instance_types: [{native}], storage_size: 10, storage_class: gp3, binary: {b}, config: app.conf, profiling: false}}\n- {{name: batch, count: 4, region: eu-west-1, instance_types: [{native}], market: spot, storage_size: 10, storage_class: gp3, binary: {b}, config: app.conf, profiling: false}}\nports: []\n",
        b = binary.display()
    );
    fleet.write("app.conf", "port = 9090\n");
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    runtime.block_on(scope.reset_counts()).unwrap();

    let output = fleet.run_ok(&["plan", "--config", &spec, "--output", "json"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Read-only: every call was a Describe, Get or List.
    let counts = runtime.block_on(scope.counts()).unwrap();
    let mut calls = 0;
    for (service, actions) in &counts.0 {
        for (action, count) in actions {
            calls += count;
            assert!(
                ["Describe", "Get", "List", "Head"].iter().any(|p| action.starts_with(p)),
                "plan made a mutating call: {service} {action} × {count}"
            );
        }
    }
    assert!(calls > 0, "plan read the catalog: {counts:?}");
    assert!(!fleet.home.path().join("deployments").exists(), "plan writes no deployment");

    let group = |name: &str| -> Value {
        report["groups"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap().clone()
    };
    // On-demand in us-east-1: the table's price, from the Pricing API.
    let web = group("web");
    let on_demand = table_price(native);
    for placement in web["placements"].as_array().unwrap() {
        assert_eq!(placement["market"], "on-demand", "{placement}");
        assert_eq!(placement["price_source"]["source"], "pricing-api", "{placement}");
        let price = placement["usd_per_hour"].as_f64().unwrap();
        assert!((price - on_demand).abs() < 1e-6, "{price} vs {on_demand}");
    }
    let counts: u64 =
        web["placements"].as_array().unwrap().iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(counts, 3);
    assert!(web["zones"].as_array().unwrap().len() >= 3, "{web}");
    // Spot in eu-west-1: each zone's own price, below the region's on-demand price.
    let batch = group("batch");
    let eu_on_demand = on_demand * flotilla_capacity::prices::region_factor("eu-west-1");
    let mut zone_prices = Vec::new();
    for placement in batch["placements"].as_array().unwrap() {
        assert_eq!(placement["market"], "spot", "{placement}");
        assert_eq!(placement["price_source"]["source"], "spot-price-history", "{placement}");
        let price = placement["usd_per_hour"].as_f64().unwrap();
        assert!(price < eu_on_demand, "spot {price} below on-demand {eu_on_demand}");
        zone_prices.push(price);
    }
    assert!(zone_prices.windows(2).any(|w| w[0] != w[1]), "zones differ: {zone_prices:?}");
    assert!(batch["warnings"].to_string().contains("spot with 1 instance type"), "{batch}");
    let total: f64 = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["usd_per_hour"].as_f64().unwrap())
        .sum();
    assert!((report["usd_per_hour"].as_f64().unwrap() - total).abs() < 1e-3, "{report:#}");

    // Again: the catalog and prices come from the cache. With --refresh, from AWS again, and
    // the cache is rewritten.
    let reads = |counts: &flotilla_emulator::control::Counts| {
        [
            ("ec2", "DescribeInstanceTypes"),
            ("ec2", "DescribeInstanceTypeOfferings"),
            ("ec2", "DescribeSpotPriceHistory"),
            ("pricing", "GetProducts"),
        ]
        .map(|(service, action)| counts.get(service, action))
    };
    let cache = fleet.home.path().join("cache");
    let newest_write = || {
        walk_files(&cache).iter().map(|f| fs_err::metadata(f).unwrap().modified().unwrap()).max()
    };
    runtime.block_on(scope.reset_counts()).unwrap();
    fleet.run_ok(&["plan", "--config", &spec, "--output", "json"]);
    let warm = runtime.block_on(scope.counts()).unwrap();
    assert_eq!(reads(&warm), [0; 4], "a warm plan reads the cache: {warm:?}");
    let before = newest_write().expect("plan cached the catalog");
    runtime.block_on(scope.reset_counts()).unwrap();
    let refreshed = fleet.run_ok(&["plan", "--config", &spec, "--output", "json", "--refresh"]);
    let counts = runtime.block_on(scope.counts()).unwrap();
    assert!(reads(&counts).iter().all(|n| *n > 0), "--refresh reads everything: {counts:?}");
    assert!(newest_write().unwrap() > before, "--refresh rewrites the cache");
    let refreshed: Value = serde_json::from_slice(&refreshed.stdout).unwrap();
    assert_eq!(refreshed["usd_per_hour"], report["usd_per_hour"]);
    runtime.block_on(scope.reset_counts()).unwrap();
    fleet.run_ok(&["plan", "--config", &spec, "--output", "json"]);
    let warm = runtime.block_on(scope.counts()).unwrap();
    assert_eq!(reads(&warm), [0; 4], "the rewritten cache is used: {warm:?}");
}

/// Every file under `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs_err::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

async fn clients(fleet: &AwsFleet) -> flotilla_aws::Clients {
    flotilla_aws::Clients::from_config(
        fleet.sdk().await,
        std::env::var("AWS_ENDPOINT_URL").ok(),
        std::env::var(flotilla_aws::clients::ADDRESS_MAP_VARIABLE).ok(),
    )
}

#[test]
fn a_catalog_of_listed_types_reads_only_them_and_keeps_every_zone() {
    use flotilla_aws::survey::{CatalogScope, catalog};
    let fleet = AwsFleet::new("narrow-catalog");
    let scope = Emulator::require().scope(&fleet.scope);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let clients = runtime.block_on(clients(&fleet));
    let regions: Vec<String> =
        ["us-east-1", "eu-west-1", "ap-south-1"].iter().map(|r| r.to_string()).collect();
    let listed: std::collections::BTreeSet<String> =
        ["m7i.large", "m6i.large", "t3.small"].iter().map(|t| t.to_string()).collect();
    let narrow_home = tempfile::tempdir().unwrap();
    runtime.block_on(scope.reset_counts()).unwrap();

    let narrow = runtime
        .block_on(catalog(
            &clients,
            narrow_home.path(),
            &regions,
            &CatalogScope::Only(listed.clone()),
        ))
        .unwrap();
    let counts = runtime.block_on(scope.counts()).unwrap();
    assert_eq!(
        counts.get("ec2", "DescribeInstanceTypes"),
        1,
        "one call for three names: {counts:?}"
    );
    assert_eq!(narrow.types.keys().cloned().collect::<std::collections::BTreeSet<_>>(), listed);

    // The same zones and offerings of the listed types as the full catalog.
    let full_home = tempfile::tempdir().unwrap();
    let full = runtime
        .block_on(catalog(&clients, full_home.path(), &regions, &CatalogScope::Everything))
        .unwrap();
    assert!(full.types.len() > 100, "the full catalog has every type: {}", full.types.len());
    for region in &regions {
        assert!(!narrow.zones(region).is_empty(), "{region} has zones");
        assert_eq!(narrow.zones(region), full.zones(region), "every zone of {region}");
        for name in &listed {
            assert_eq!(
                narrow.zones_offering(region, name),
                full.zones_offering(region, name),
                "{name} in {region}"
            );
            assert_eq!(narrow.instance_type(name), full.instance_type(name), "{name}");
        }
    }

    // Cached: a second read makes no call.
    runtime.block_on(scope.reset_counts()).unwrap();
    runtime
        .block_on(catalog(&clients, narrow_home.path(), &regions, &CatalogScope::Only(listed)))
        .unwrap();
    let counts = runtime.block_on(scope.counts()).unwrap();
    assert!(counts.0.values().all(|actions| actions.is_empty()), "{counts:?}");

    // A name AWS does not know reads the full catalog, which "did you mean" needs.
    let typo: std::collections::BTreeSet<String> = ["m7i.lrage".to_string()].into_iter().collect();
    let fallback = runtime
        .block_on(catalog(
            &clients,
            tempfile::tempdir().unwrap().path(),
            &regions,
            &CatalogScope::Only(typo),
        ))
        .unwrap();
    assert_eq!(fallback.types.len(), full.types.len());
    assert_eq!(fallback.closest_name("m7i.lrage"), Some("m7i.large"));
}

#[test]
fn plan_of_a_misspelt_type_says_did_you_mean() {
    let fleet = AwsFleet::new("plan-typo");
    let binary = fleet_app_bin();
    let spec = format!(
        "tag: plan-typo\nprovider: aws\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: web, count: 1, region: us-east-1, instance_types: [m7i.lrage], storage_size: 10, storage_class: gp3, binary: {b}, config: app.conf, profiling: false}}\nports: []\n",
        b = binary.display()
    );
    fleet.write("app.conf", "port = 9090\n");
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    let output = fleet.run(&["plan", "--config", &spec]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a plan of an unknown type fails: {stderr}");
    assert!(stderr.contains("m7i.large"), "did you mean: {stderr}");
}
