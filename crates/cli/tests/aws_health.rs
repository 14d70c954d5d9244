//! Health-aware rollouts against the emulator's AWS Health: an open EC2 issue in a region holds
//! `update` before the first batch with a machine there (and names the issue), the batches in
//! other regions roll; once the issue is closed, `update` finishes what is left;
//! `--ignore-health` rolls through an open issue; events that are not open EC2 issues, or in
//! regions the fleet does not use, hold nothing; an account without the support plan Health
//! needs gets a warning, not a held update; and the provider reads every open issue across
//! filters of at most 10 regions and pages of 100 events.

mod common;

use std::collections::BTreeMap;

use common::aws::AwsFleet;
use common::*;
use flotilla_emulator::control::{Emulator, FaultRule, HealthEventSpec};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// Two machines, one per region, in this order: with `--concurrency 1` batch 1 is `east-0`
/// (us-east-1) and batch 2 is `west-0` (us-west-2).
fn two_region_spec(tag: &str) -> String {
    let binary = fleet_app_bin();
    let instance = |name: &str, region: &str| {
        format!(
            "- {{name: {name}, region: {region}, instance_type: c7i.large, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\n",
            binary.display()
        )
    };
    format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n{}{}ports: []\n",
        instance("east", "us-east-1"),
        instance("west", "us-west-2"),
    )
}

fn app_config(greeting: &str) -> String {
    format!("port = 9090\ngreeting = \"{greeting}\"\ninterval = 300\n")
}

/// Each binary machine's installed version, from `status`.
fn versions(fleet: &AwsFleet) -> BTreeMap<String, String> {
    fleet
        .status()
        .iter()
        .filter(|r| r["role"] == "binary")
        .map(|r| {
            let name = r["name"].as_str().expect("a name").to_owned();
            (name, r["version"].as_str().expect("a version").to_owned())
        })
        .collect()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_open_ec2_issue_holds_the_update_in_its_region_only_until_it_is_closed() {
    let fleet = AwsFleet::new("health");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let rt = runtime();
    fleet.write("app.conf", &app_config("hello"));
    let spec = fleet.write("spec.yaml", &two_region_spec(&fleet.tag)).display().to_string();
    fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1"]);
    let created = versions(&fleet);
    assert_eq!(created.keys().collect::<Vec<_>>(), ["east", "west"]);
    let update = |extra: &[&str]| {
        let mut args = vec!["update", "--config", spec.as_str(), "--concurrency", "1"];
        args.extend_from_slice(extra);
        fleet.run(&args)
    };

    // An open EC2 issue in us-west-2; beside it, events that must hold nothing: a scheduled
    // change in us-east-1, an issue of another service in us-east-1, an EC2 issue in a region
    // the fleet does not use, and a closed EC2 issue in us-east-1.
    let west_issue = rt.block_on(scope.open_health_event(&HealthEventSpec::ec2_issue("us-west-2")));
    let west_issue = west_issue.expect("open the us-west-2 issue");
    let harmless = [
        HealthEventSpec::ec2_issue("us-east-1").category("scheduledChange"),
        HealthEventSpec { service: "S3".to_owned(), ..HealthEventSpec::ec2_issue("us-east-1") },
        HealthEventSpec::ec2_issue("eu-west-1"),
    ];
    for event in &harmless {
        rt.block_on(scope.open_health_event(event)).expect("open an event");
    }
    let closed = rt.block_on(scope.open_health_event(&HealthEventSpec::ec2_issue("us-east-1")));
    let closed = closed.expect("open an event");
    rt.block_on(scope.close_health_event(&closed.arn)).expect("close it");

    fleet.write("app.conf", &app_config("bonjour"));
    let held = update(&[]);
    let message = stderr(&held);
    assert_eq!(held.status.code(), Some(1), "a held update exits 1: {message}");
    assert!(
        message.contains("update held before batch 2 of 2: 1 open health issue in us-west-2 (region held: us-west-2)"),
        "{message}"
    );
    assert!(message.contains(&west_issue.arn), "the issue's ARN is named: {message}");
    assert!(message.contains("AWS_EC2_OPERATIONAL_ISSUE in us-west-2 since 20"), "{message}");
    assert!(message.contains("--ignore-health"), "{message}");
    assert!(!message.contains(&closed.arn), "a closed issue holds nothing: {message}");
    assert!(!message.contains("eu-west-1"), "{message}");
    // Batch 1 (us-east-1) rolled; batch 2 (us-west-2) was not touched.
    let after_held = versions(&fleet);
    assert_ne!(after_held["east"], created["east"], "east-0's batch rolled: {after_held:?}");
    assert_eq!(after_held["west"], created["west"], "west-0's batch was held: {after_held:?}");
    let counts = rt.block_on(scope.counts()).expect("counts");
    assert_eq!(counts.get("health", "DescribeEvents"), 2, "one DescribeEvents per batch asked");

    // The issue closes: update finishes the held batch and leaves the rolled one alone.
    let closed_west = rt.block_on(scope.close_health_event(&west_issue.arn)).expect("close");
    assert_eq!(closed_west.status_code, "closed");
    fleet.run_ok(&["update", "--config", &spec, "--concurrency", "1"]);
    let finished = versions(&fleet);
    assert_eq!(finished["east"], after_held["east"], "east-0 keeps the version it rolled to");
    assert_eq!(finished["west"], finished["east"], "west-0 now runs the new version too");

    // An issue in us-east-1 holds the first batch: nothing rolls.
    let east_issue = rt.block_on(scope.open_health_event(&HealthEventSpec::ec2_issue("us-east-1")));
    let east_issue = east_issue.expect("open the us-east-1 issue");
    fleet.write("app.conf", &app_config("hola"));
    let held = update(&[]);
    let message = stderr(&held);
    assert_eq!(held.status.code(), Some(1), "{message}");
    assert!(message.contains("update held before batch 1 of 2"), "{message}");
    assert!(message.contains(&east_issue.arn), "{message}");
    assert_eq!(versions(&fleet), finished, "nothing rolled");

    // --ignore-health rolls through it, without asking.
    rt.block_on(scope.reset_counts()).expect("reset counts");
    fleet.run_ok(&["update", "--config", &spec, "--concurrency", "1", "--ignore-health"]);
    let ignored = versions(&fleet);
    for name in ["east", "west"] {
        assert_ne!(ignored[name], finished[name], "{name} rolled with --ignore-health");
    }
    let counts = rt.block_on(scope.counts()).expect("counts");
    assert_eq!(counts.get("health", "DescribeEvents"), 0, "--ignore-health does not ask");

    // An account without the support plan Health needs: a warning, and the update goes on
    // (the us-east-1 issue is still open, but Health cannot say so).
    rt.block_on(scope.add_fault(
        &FaultRule::new("health", "DescribeEvents", "SubscriptionRequiredException").status(400),
    ))
    .expect("fault");
    fleet.write("app.conf", &app_config("ciao"));
    let unchecked = fleet.run_ok(&["update", "--config", &spec, "--concurrency", "1"]);
    let message = stderr(&unchecked);
    assert_eq!(
        message.matches("health not checked before the batches").count(),
        1,
        "one warning per update, naming the support plan: {message}"
    );
    assert!(message.contains("Business or Enterprise support plan"), "{message}");
    let rolled = versions(&fleet);
    for name in ["east", "west"] {
        assert_ne!(rolled[name], ignored[name], "{name} rolled");
    }
    rt.block_on(scope.clear_faults()).expect("clear faults");

    // Health that cannot be asked at all (an outage of the endpoint) holds the update.
    rt.block_on(scope.add_fault(
        &FaultRule::new("health", "DescribeEvents", "AccessDeniedException").status(403),
    ))
    .expect("fault");
    fleet.write("app.conf", &app_config("hej"));
    let refused = update(&[]);
    let message = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "update stopped before batch 1 of 2: could not ask the health service about us-east-1"
        ),
        "{message}"
    );
    assert!(message.contains("AccessDeniedException"), "{message}");
    assert_eq!(versions(&fleet), rolled, "nothing rolled");
    rt.block_on(scope.clear_faults()).expect("clear faults");

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// The provider's Health reading over many regions and pages: every open EC2 issue of the
/// regions asked about, across 12 regions (two filters: a filter names at most 10) and more
/// events than one page holds, and nothing of other regions, categories or closed events.
#[test]
fn every_open_issue_is_read_across_region_chunks_and_pages() {
    let fleet = AwsFleet::new("health-pages");
    let scope = Emulator::require().scope(&fleet.scope);
    let rt = runtime();
    let regions: Vec<String> = [
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "eu-central-1",
        "eu-north-1",
        "ap-south-1",
        "ap-northeast-1",
        "ap-southeast-2",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut expected = std::collections::BTreeSet::new();
    // 110 issues in us-east-1 (more than a page of 100) and one in each other region.
    for index in 0..110 + regions.len() - 1 {
        let region = if index < 110 { "us-east-1" } else { &regions[index - 109] };
        let event = rt.block_on(scope.open_health_event(&HealthEventSpec::ec2_issue(region)));
        expected.insert(event.expect("open an issue").arn);
    }
    // Not issues to read: another category, a closed one, a region not asked about.
    let other = HealthEventSpec::ec2_issue("us-east-1").category("accountNotification");
    rt.block_on(scope.open_health_event(&other)).expect("open");
    let closed = rt.block_on(scope.open_health_event(&HealthEventSpec::ec2_issue("eu-west-1")));
    rt.block_on(scope.close_health_event(&closed.expect("open").arn)).expect("close");
    rt.block_on(scope.open_health_event(&HealthEventSpec::ec2_issue("sa-east-1"))).expect("open");

    let clients = rt.block_on(async {
        flotilla_aws::Clients::from_config(
            fleet.sdk().await,
            std::env::var("AWS_ENDPOINT_URL").ok(),
            std::env::var(flotilla_aws::clients::ADDRESS_MAP_VARIABLE).ok(),
        )
    });
    let reading = rt
        .block_on(flotilla_aws::health::open_ec2_issues(&clients, &regions))
        .expect("Health answers");
    let flotilla_core::provider::HealthReading::Issues(issues) = reading else {
        panic!("issues expected, got {reading:?}");
    };
    let read: std::collections::BTreeSet<String> = issues.iter().map(|i| i.arn.clone()).collect();
    assert_eq!(read, expected);
    assert!(issues.iter().all(|i| i.event_type == "AWS_EC2_OPERATIONAL_ISSUE"));
    assert!(issues.iter().all(|i| i.start_time.as_deref().is_some_and(|t| t.ends_with('Z'))));
    // Two filters of regions; the first holds 110 issues of us-east-1: two pages.
    let counts = rt.block_on(scope.counts()).expect("counts");
    assert_eq!(counts.get("health", "DescribeEvents"), 3);
}
