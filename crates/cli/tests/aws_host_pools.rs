//! Dedicated host pools on AWS, against the emulator.
//!
//! Through the CLI, with a pool of a Linux type (`m5.metal`; machines of Mac types do not boot
//! flotilla's Linux agent, and `create` refuses them): a machine launches onto a host the pool
//! allocated (`Placement{Tenancy: host, HostId}`), a re-run adopts that host instead of
//! allocating another, a round of `watch` releases an idle host of the pool, `InsufficientHostCapacity` in one zone moves the pool to the next, and
//! `destroy` reports a Mac host AWS does not release before 24 hours, which a later `destroy`
//! releases once the scope's clock has moved a day on.
//!
//! Through the provider's pool driver, with a Mac pool: the host scrubs after its instance and
//! comes back, and a release the policy asks for too early (its clock moved, AWS's not) is
//! refused, kept, and made once AWS's clock has passed the 24 hours.

mod common;

use std::time::Duration;

use common::aws::AwsFleet;
use common::*;
use flotilla_aws::Clients;
use flotilla_aws::hosts::{PoolDriver, allocate_host};
use flotilla_capacity::host_pool::{Action, Event, HostState, MachineId, ZoneSet};
use flotilla_core::plan::HostPoolPlan;
use flotilla_emulator::control::{Emulator, FaultRule, HostInfo, PoolFilter, Scope, StateTiming};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A spec with one machine on pool `metal` (m5.metal hosts, zones us-east-1a then us-east-1b).
fn pool_spec(fleet: &AwsFleet) -> String {
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let spec = fleet.write(
        "spec.yaml",
        &format!(
            "tag: {}\nprovider: aws\nhost_pools:\n  metal: {{instance_type: m5.metal, zones: {{us-east-1a: {{max: 1}}, us-east-1b: {{max: 1}}}}}}\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: db, region: us-east-1, count: 1, host_pool: metal, instance_type: m5.metal, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\nports: []\n",
            fleet.tag,
            fleet_app_bin().display()
        ),
    );
    spec.display().to_string()
}

fn create(fleet: &AwsFleet, spec: &str) -> Vec<serde_json::Value> {
    let output =
        fleet.run_ok(&["create", "--config", spec, "--ip", "127.0.0.1", "--output", "json"]);
    serde_json::from_slice(&output.stdout).expect("JSON rows")
}

fn destroy(fleet: &AwsFleet) -> serde_json::Value {
    let output = fleet.run_ok(&["destroy", &fleet.tag_arg(), "--output", "json"]);
    serde_json::from_slice(&output.stdout).expect("destroy's JSON")
}

fn scope(fleet: &AwsFleet) -> Scope {
    Emulator::require().scope(&fleet.scope)
}

async fn hosts(fleet: &AwsFleet) -> Vec<HostInfo> {
    let scope = scope(fleet);
    scope.emulator().hosts(Some(&scope)).await.expect("the emulator's hosts")
}

async fn clients(fleet: &AwsFleet) -> Clients {
    Clients::from_config(
        fleet.sdk().await,
        std::env::var("AWS_ENDPOINT_URL").ok(),
        std::env::var(flotilla_aws::clients::ADDRESS_MAP_VARIABLE).ok(),
    )
}

/// The running instance of machine `name`: its id, the host it runs on and its tenancy.
async fn placement(fleet: &AwsFleet, name: &str) -> (String, Option<String>, Option<String>) {
    let answer = fleet
        .ec2("us-east-1")
        .await
        .describe_instances()
        .filters(fleet.tag_filter())
        .filters(
            aws_sdk_ec2::types::Filter::builder().name("tag:flotilla:machine").values(name).build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .values("pending")
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let instance = answer.reservations()[0].instances()[0].clone();
    let placement = instance.placement().cloned().expect("a placement");
    (
        instance.instance_id().unwrap_or_default().to_owned(),
        placement.host_id().map(str::to_owned),
        placement.tenancy().map(|t| t.as_str().to_owned()),
    )
}

#[test]
fn a_machine_runs_on_its_pools_host_and_destroy_waits_out_a_mac_hosts_day() {
    let fleet = AwsFleet::new("hostpool");
    let spec = pool_spec(&fleet);
    let rt = runtime();
    // Instances end at once: a host holds its instance while it shuts down, and the re-run
    // below would rightly allocate another host for the machine.
    let instant = StateTiming { pending: Duration::ZERO, shutting_down: Duration::ZERO };
    rt.block_on(scope(&fleet).set_timing(instant)).unwrap();

    let rows = create(&fleet, &spec);
    assert!(rows.iter().any(|r| r["name"] == "db-0"), "{rows:?}");
    let pool_hosts = rt.block_on(hosts(&fleet));
    assert_eq!(pool_hosts.len(), 1, "one host for one machine: {pool_hosts:?}");
    let host = pool_hosts[0].clone();
    assert_eq!(host.availability_zone, "us-east-1a", "the first zone of the pool");
    assert_eq!(host.instance_type.as_deref(), Some("m5.metal"));
    assert_eq!(host.tags.get("flotilla:host-pool").map(String::as_str), Some("metal"));
    let (instance, on, tenancy) = rt.block_on(placement(&fleet, "db-0"));
    assert_eq!(on.as_deref(), Some(host.id.as_str()), "the machine runs on the pool's host");
    assert_eq!(tenancy.as_deref(), Some("host"));
    assert_eq!(host.instances, std::slice::from_ref(&instance));

    // The instance ends; create again: the machine comes back on the same host, adopted by
    // its tags, and no host is allocated.
    rt.block_on(async {
        let ec2 = fleet.ec2("us-east-1").await;
        ec2.terminate_instances().instance_ids(&instance).send().await.expect("terminate");
    });
    create(&fleet, &spec);
    let after = rt.block_on(hosts(&fleet));
    assert_eq!(after.len(), 1, "the host is adopted, not allocated again: {after:?}");
    let (again, on, _) = rt.block_on(placement(&fleet, "db-0"));
    assert_ne!(again, instance);
    assert_eq!(on.as_deref(), Some(host.id.as_str()));

    // A second host of the pool, idle (a machine that left it): one round of watch releases
    // it (a Linux host may go at once), and keeps the machine's.
    let spare = rt.block_on(async {
        let clients = clients(&fleet).await;
        allocate_host(
            &clients,
            "us-east-1",
            &fleet.tag,
            "metal",
            "us-east-1b",
            "m5.metal",
            "t-spare",
        )
        .await
        .expect("a spare host")
    });
    let watch = fleet.run_ok(&[
        "watch",
        "--config",
        &spec,
        "--interval",
        "200ms",
        "--rounds",
        "1",
        "--output",
        "json",
    ]);
    let events = String::from_utf8_lossy(&watch.stdout);
    assert!(events.contains("host-pool") && events.contains(&spare), "{events}");
    let states: Vec<(String, String)> =
        rt.block_on(hosts(&fleet)).into_iter().map(|h| (h.id, h.state)).collect();
    assert!(states.contains(&(spare.clone(), "released".to_owned())), "{states:?}");
    assert!(states.contains(&(host.id.clone(), "available".to_owned())), "{states:?}");

    // A Mac host of the deployment (a pool's, from an earlier spec), allocated now.
    let mac = rt.block_on(async {
        let clients = clients(&fleet).await;
        allocate_host(
            &clients,
            "us-east-1",
            &fleet.tag,
            "macs",
            "us-east-1c",
            "mac2.metal",
            "t-mac",
        )
        .await
        .expect("a Mac host")
    });

    // destroy: the m5.metal host goes with its instance; the Mac host is young, so AWS keeps
    // it and destroy says until when, leaving the deployment `destroying`.
    let answer = destroy(&fleet);
    assert_eq!(answer["result"], "hosts-held", "{answer}");
    let held = answer["held_hosts"].as_array().expect("held hosts");
    assert_eq!(held.len(), 1, "{answer}");
    assert_eq!(held[0]["id"], mac.as_str());
    let allocated = rt.block_on(hosts(&fleet)).into_iter().find(|h| h.id == mac).expect("the host");
    let releasable_at = held[0]["releasable_at"].as_u64().expect("a time");
    assert_eq!(releasable_at, allocated.allocation_time as u64 + DAY.as_secs(), "{answer}");
    assert!(held[0]["reason"].as_str().unwrap_or_default().starts_with("Client.InvalidHost"));
    let states: Vec<(String, String)> =
        rt.block_on(hosts(&fleet)).into_iter().map(|h| (h.id, h.state)).collect();
    assert!(states.contains(&(host.id.clone(), "released".to_owned())), "{states:?}");
    assert!(states.contains(&(mac.clone(), "available".to_owned())), "{states:?}");
    let table = fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let told = String::from_utf8_lossy(&table.stderr);
    assert!(told.contains(&mac) && told.contains("can go at"), "{told}");

    // A day later on the scope's clock, destroy finishes.
    rt.block_on(scope(&fleet).set_clock_offset(DAY + Duration::from_secs(60))).unwrap();
    let answer = destroy(&fleet);
    assert_eq!(answer["result"], "destroyed", "{answer}");
    assert!(rt.block_on(hosts(&fleet)).iter().all(|h| h.state == "released"));
    assert_eq!(destroy(&fleet)["result"], "already-destroyed");
}

#[test]
fn insufficient_host_capacity_in_the_first_zone_moves_the_pool_to_the_next() {
    let fleet = AwsFleet::new("hostpoolice");
    let spec = pool_spec(&fleet);
    let rt = runtime();
    let dry =
        PoolFilter { availability_zone: Some("us-east-1a".to_owned()), ..PoolFilter::default() };
    let rule = FaultRule::new("ec2", "AllocateHosts", "InsufficientHostCapacity").pool(dry);
    rt.block_on(scope(&fleet).set_faults(&[rule])).unwrap();

    create(&fleet, &spec);
    let pool_hosts = rt.block_on(hosts(&fleet));
    assert_eq!(pool_hosts.len(), 1, "{pool_hosts:?}");
    assert_eq!(pool_hosts[0].availability_zone, "us-east-1b", "the next zone of the pool");
    let faults = rt.block_on(scope(&fleet).faults()).unwrap();
    assert_eq!(faults[0].hits, 1, "the first zone was asked once and refused: {faults:?}");
    let (_, on, _) = rt.block_on(placement(&fleet, "db-0"));
    assert_eq!(on.as_deref(), Some(pool_hosts[0].id.as_str()));
    assert_eq!(destroy(&fleet)["result"], "destroyed");
    assert_eq!(rt.block_on(hosts(&fleet))[0].state, "released");
}

/// A Mac pool's plan as the spec writes it: mac2.metal in us-east-1a.
fn mac_pool() -> HostPoolPlan {
    let document = flotilla_spec::parse_host_pools(
        "host_pools:\n  macs: {instance_type: mac2.metal, zones: {us-east-1a: {max: 1}}}\n",
        std::path::Path::new("pools.yaml"),
    )
    .expect("the pool parses");
    let (name, spec) = document.into_iter().next().expect("one pool");
    HostPoolPlan { name, spec }
}

#[test]
fn a_mac_host_scrubs_after_its_instance_and_an_early_release_is_kept_and_made_after_the_day() {
    let fleet = AwsFleet::new("hostpoolmac");
    let rt = runtime();
    rt.block_on(async {
        let scope = scope(&fleet);
        scope.set_host_scrub(Duration::from_secs(3000)).await.unwrap();
        // Instances end at once: the host holds its instance while it shuts down.
        let instant = StateTiming { pending: Duration::ZERO, shutting_down: Duration::ZERO };
        scope.set_timing(instant).await.unwrap();
        let clients = clients(&fleet).await;
        let pool = mac_pool();
        let mut driver = PoolDriver::new(&clients, "us-east-1", &fleet.tag, &pool);
        let mut actions = Vec::new();
        let machine = MachineId(0);
        let wanted = Event::MachineWanted { machine, zones: ZoneSet::ALL };
        driver.policy.handle(driver.now(), wanted, &mut actions);
        let [Action::Allocate { request, zone }] = actions[..] else {
            panic!("one allocation: {actions:?}")
        };
        actions.clear();
        assert!(driver.allocate(request, zone, &mut actions).await.is_none());
        let [Action::Launch { host, .. }] = actions[..] else { panic!("a launch: {actions:?}") };
        actions.clear();
        let host_id = driver.hosts.aws(host).to_owned();

        // The machine's instance, as the provider launches it: onto the host.
        let ec2 = fleet.ec2("us-east-1").await;
        let launched = ec2
            .run_instances()
            .image_id("ami-1")
            .instance_type(aws_sdk_ec2::types::InstanceType::from("mac2.metal"))
            .min_count(1)
            .max_count(1)
            .placement(
                aws_sdk_ec2::types::Placement::builder()
                    .tenancy(aws_sdk_ec2::types::Tenancy::Host)
                    .host_id(&host_id)
                    .build(),
            )
            .send()
            .await
            .expect("RunInstances onto the host");
        let instance = launched.instances()[0].instance_id().unwrap().to_owned();
        ec2.terminate_instances().instance_ids(&instance).send().await.expect("terminate");
        driver.policy.handle(driver.now(), Event::MachineReleased { machine }, &mut actions);

        // AWS scrubs the host: pending, then available once the scrub's time has passed.
        driver.refresh(&mut actions).await.expect("DescribeHosts");
        let state = |driver: &PoolDriver<'_>| driver.policy.hosts().next().map(|(_, h)| h.state);
        assert_eq!(state(&driver), Some(HostState::Scrubbing));
        scope.set_clock_offset(Duration::from_secs(3001)).await.unwrap();
        driver.refresh(&mut actions).await.expect("DescribeHosts");
        assert!(matches!(state(&driver), Some(HostState::Idle { .. })), "{:?}", state(&driver));
        assert!(actions.is_empty(), "nothing to do inside the day: {actions:?}");

        // The policy's clock passes the day, AWS's does not: the release is refused and the
        // host stays in the pool.
        driver.set_clock_offset(DAY + Duration::from_secs(60));
        driver.policy.handle(driver.now(), Event::Tick, &mut actions);
        let [Action::Release { ref hosts }] = actions[..] else { panic!("a release: {actions:?}") };
        let hosts = hosts.clone();
        actions.clear();
        driver.release(&hosts, &mut actions).await.expect("ReleaseHosts answers");
        assert!(matches!(state(&driver), Some(HostState::Idle { .. })), "kept after a refusal");
        let emulated = scope.emulator().hosts(Some(&scope)).await.unwrap();
        assert_eq!(emulated[0].state, "available");

        // AWS's clock passes the day too; the retry comes after the policy's retry delay.
        scope.set_clock_offset(DAY + Duration::from_secs(120)).await.unwrap();
        driver.set_clock_offset(DAY + Duration::from_secs(60 + 301));
        driver.policy.handle(driver.now(), Event::Tick, &mut actions);
        let [Action::Release { ref hosts }] = actions[..] else {
            panic!("the release again: {actions:?}")
        };
        let hosts = hosts.clone();
        actions.clear();
        driver.release(&hosts, &mut actions).await.expect("ReleaseHosts answers");
        assert_eq!(driver.policy.host_count(), 0, "released and gone from the pool");
        let emulated = scope.emulator().hosts(Some(&scope)).await.unwrap();
        assert_eq!(emulated[0].state, "released");
    });
}
