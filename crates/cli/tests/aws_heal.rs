//! Fleets that change size and heal, on the AWS path against the shared emulator stack: a
//! `prefer-spot` fleet grown and shrunk by `update` without restarting a binary (hosts.yaml by
//! SIGHUP), two spot instances reclaimed at once and replaced by `watch` under their names, the
//! churn limit holding when every launch fails, a rebalance recommendation (the replacement
//! serves before the machine at risk is drained) and a scheduled retirement (replaced before its
//! `NotBefore`), and a watch killed with -9 in the middle of a
//! replacement that, started again, finishes it with one new instance, not two.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use common::aws::AwsFleet;
use common::events::Watch;
use common::*;
use flotilla_emulator::control::{Emulator, FaultRule, InstanceInfo, PoolFilter};
use serde_json::Value;

const REGION: &str = "us-east-1";

/// `count` fleet-app nodes on spot where a pool has room (two types, two zones), which reread
/// hosts.yaml on SIGHUP, and a small monitoring machine.
fn spec(tag: &str, count: usize) -> String {
    format!(
        "tag: {tag}
provider: aws
monitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}
instances:
- name: node
  count: {count}
  region: {REGION}
  zones: [{REGION}a, {REGION}b]
  market: prefer-spot
  instance_types: [m5.large, m6i.large]
  storage_size: 10
  storage_class: gp3
  binary: {binary}
  config: app.conf
  profiling: false
  health: {{http: {{port: 9090, path: /health}}}}
  on_hosts_change: {{signal: SIGHUP}}
ports: []
update: {{batch_size: 3, health_deadline: 60s}}
",
        binary = fleet_app_bin().display(),
    )
}

/// Writes the spec of `count` nodes and the app's config; returns the spec's path.
fn write_spec(fleet: &AwsFleet, count: usize) -> String {
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    fleet.write("spec.yaml", &spec(&fleet.tag, count)).display().to_string()
}

fn create(fleet: &AwsFleet, count: usize) -> Vec<Value> {
    let spec = write_spec(fleet, count);
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), count + 1, "{rows:?}");
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
    rows
}

fn update(fleet: &AwsFleet, count: usize) -> Vec<Value> {
    let spec = write_spec(fleet, count);
    let output = fleet.run_ok(&["update", "--config", &spec, "--output", "json"]);
    serde_json::from_slice(&output.stdout).unwrap()
}

fn node_names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("node-{i}")).collect()
}

/// Each node's binary pid, by name.
fn pids(rows: &[Value]) -> BTreeMap<String, u64> {
    rows.iter()
        .filter(|r| r["role"] == "binary")
        .map(|r| {
            let name = r["name"].as_str().unwrap().to_owned();
            (name, r["pid"].as_u64().expect("a running binary has a pid"))
        })
        .collect()
}

/// Every instance of the test's scope, in any state.
fn instances(fleet: &AwsFleet) -> Vec<InstanceInfo> {
    runtime()
        .block_on(Emulator::require().instances())
        .unwrap()
        .into_iter()
        .filter(|i| i.scope == fleet.scope)
        .collect()
}

fn machine_name(instance: &InstanceInfo) -> Option<&str> {
    instance.tags.get("flotilla:machine").map(String::as_str)
}

fn is_live(instance: &InstanceInfo) -> bool {
    !matches!(instance.state.as_str(), "terminated" | "shutting-down")
}

/// The one live instance tagged with each machine name; a machine with two fails the test.
fn live_by_name(fleet: &AwsFleet) -> BTreeMap<String, InstanceInfo> {
    let mut found = BTreeMap::new();
    for instance in instances(fleet).into_iter().filter(is_live) {
        let name = machine_name(&instance).expect("every live instance is named").to_owned();
        if let Some(other) = found.insert(name.clone(), instance.clone()) {
            panic!("{name} has two live instances: {} and {}", other.id, instance.id);
        }
    }
    found
}

/// The keys of the deployment's identity objects in its bucket.
fn identity_keys(fleet: &AwsFleet) -> Vec<String> {
    let bucket = fs_err::read_to_string(fleet.home.path().join("aws-bucket")).unwrap();
    runtime().block_on(async {
        let config = fleet.sdk().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
        );
        let listed = s3
            .list_objects_v2()
            .bucket(bucket.trim())
            .prefix(format!("deployments/{}/identities/", fleet.tag))
            .send()
            .await
            .unwrap();
        listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
    })
}

fn has_identity(keys: &[String], instance_id: &str) -> bool {
    keys.iter().any(|k| k.ends_with(&format!(":{instance_id}.json")))
}

/// The peer names the fleet app of `row` reports.
fn peers_of(row: &Value) -> Option<Vec<String>> {
    let body = http_get(ip_of(row), 9090, "/peers")?;
    let peers: Value = serde_json::from_str(&body).ok()?;
    let mut names: Vec<String> = peers["peers"]
        .as_array()?
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Some(names)
}

/// `watch` every 200 ms, its events read by the test, its log (`-v`) in the work directory.
fn spawn_watch(fleet: &AwsFleet, spec: &str, extra: &[&str]) -> Watch {
    let mut args = vec!["watch", "-v", "--config", spec, "--interval", "200ms", "--output", "json"];
    args.extend_from_slice(extra);
    let log = fleet.path(&format!("watch-{}.log", next_serial()));
    let child = fleet
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(fs_err::File::create(&log).unwrap().into_parts().0)
        .spawn()
        .expect("watch starts");
    let mut watch = Watch::new(child, Some(log));
    watch.wait_for("watch's start", Duration::from_secs(60), |e| e["what"] == "started");
    watch
}

fn next_serial() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Waits until each of `names` is replaced; a failed replacement fails the test.
fn wait_replaced(watch: &mut Watch, names: &[&str]) {
    while names.iter().any(|name| watch.count(name, "what", "replaced") == 0) {
        let event = watch.wait_for("a replacement", Duration::from_secs(180), |e| {
            e["what"] == "replaced" || e["what"] == "replacement-failed"
        });
        assert_eq!(event["what"], "replaced", "{:#?}", watch.seen);
    }
}

/// Six `prefer-spot` nodes with SIGHUP: `update` grows them to 8 and shrinks them to 5 (the
/// removed instances terminated, their identities deleted, no binary restarted), then under
/// `watch` two spot instances reclaimed at once are replaced under their names with new
/// instances, and the others get the new hosts.yaml without restarting.
#[test]
fn a_spot_fleet_grows_shrinks_and_heals_two_reclaims_without_restarting_the_others() {
    let fleet = AwsFleet::new("heal-grow");
    let emulator = Emulator::require();
    let rows = create(&fleet, 6);
    let before = pids(&rows);
    let version = row(&rows, "node-0")["version"].clone();
    let first_hosts = row(&rows, "node-0")["hosts"].clone();
    for name in node_names(0..6) {
        assert_eq!(live_by_name(&fleet)[&name].lifecycle, "spot", "{name}: no pool was dry");
    }

    // Grow to 8: two launched, the six signalled.
    let rows = update(&fleet, 8);
    assert_eq!(rows.len(), 9, "{rows:?}");
    let grown_hosts = row(&rows, "node-7")["hosts"].clone();
    assert_ne!(grown_hosts, first_hosts);
    for name in node_names(0..8) {
        let row = row(&rows, &name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["version"], version, "{row}");
        assert_eq!(row["hosts"], grown_hosts, "{row}");
    }
    for (name, pid) in &before {
        let row = row(&rows, name);
        assert_eq!(row["pid"].as_u64(), Some(*pid), "{name} was signalled, not restarted");
        assert_eq!(row["restarts"], 0, "{row}");
        assert_eq!(row["rollout"]["hosts_only"], true, "{row}");
    }
    let grown = live_by_name(&fleet);
    assert_eq!(grown.len(), 9, "{grown:?}");

    // Shrink to 5: node-5 … node-7 go, their instances terminated and identities deleted.
    let rows = update(&fleet, 5);
    assert_eq!(rows.len(), 6, "{rows:?}");
    let all = instances(&fleet);
    let keys = identity_keys(&fleet);
    for name in node_names(5..8) {
        let id = &grown[&name].id;
        let instance = all.iter().find(|i| &i.id == id).unwrap();
        assert_eq!(instance.state, "terminated", "{name}'s instance {id}");
        assert!(!has_identity(&keys, id), "{name}'s identity is deleted: {keys:?}");
    }
    let shrunk = live_by_name(&fleet);
    assert_eq!(shrunk.keys().cloned().collect::<BTreeSet<_>>(), {
        let mut names: BTreeSet<String> = node_names(0..5).into_iter().collect();
        names.insert("monitoring".into());
        names
    });
    for name in node_names(0..5) {
        assert!(has_identity(&keys, &shrunk[&name].id), "{name} keeps its identity: {keys:?}");
    }
    let status = fleet.status();
    let shrunk_hosts = row(&status, "node-0")["hosts"].clone();
    assert_ne!(shrunk_hosts, grown_hosts);
    for name in node_names(0..5) {
        let row = row(&status, &name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["pid"].as_u64(), Some(before[&name]), "{name} never restarted");
        assert_eq!(row["hosts"], shrunk_hosts, "{row}");
        let expected: Vec<String> = node_names(0..5).into_iter().filter(|n| n != &name).collect();
        wait_for(&format!("{name} to see the shrunk fleet"), Duration::from_secs(20), || {
            (peers_of(row)? == expected).then_some(())
        });
    }

    // Under watch, two spot instances reclaimed at once.
    let spec = write_spec(&fleet, 5);
    let mut watch = spawn_watch(&fleet, &spec, &[]);
    let reclaimed = ["node-1", "node-3"];
    let old: Vec<String> = reclaimed.iter().map(|n| shrunk[*n].id.clone()).collect();
    runtime().block_on(emulator.reclaim_spot(&old, Some(Duration::from_millis(500)))).unwrap();
    wait_replaced(&mut watch, &reclaimed);
    // Each replaced once. Both are usually seen in one round and journaled; when the second
    // is noticed a moment after the round looked, the first one's launch beside (or its
    // converge) launches it and it is reported replaced without a journal entry of its own.
    for name in reclaimed {
        assert_eq!(watch.count(name, "what", "replaced"), 1, "{:#?}", watch.seen);
        assert!(watch.count(name, "outcome", "journaled") <= 1, "{:#?}", watch.seen);
    }
    let seen = watch.kill();

    let healed = live_by_name(&fleet);
    assert_eq!(healed.len(), 6, "{healed:?}");
    for (name, old_id) in reclaimed.iter().zip(&old) {
        let instance = &healed[*name];
        assert_ne!(&instance.id, old_id, "{name} runs on a new instance");
        assert_eq!(instance.state, "running");
    }
    let status = fleet.status();
    let healed_hosts = row(&status, "node-1")["hosts"].clone();
    assert_ne!(healed_hosts, shrunk_hosts, "the replacements have new addresses");
    for name in node_names(0..5) {
        let row = row(&status, &name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["hosts"], healed_hosts, "{name} has the new hosts.yaml: {seen:#?}");
        if !reclaimed.contains(&name.as_str()) {
            assert_eq!(row["pid"].as_u64(), Some(before[&name]), "{name} was not restarted");
        }
    }

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime().block_on(fleet.leftovers(&[REGION]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}

/// Every pool dry while a machine is gone: watch tries twice (`--max-per-hour 2`), then holds
/// the machine back and says why, and asks EC2 for nothing more, even when started again;
/// with the pools open and a higher limit the machine is replaced.
#[test]
fn with_every_launch_failing_the_hourly_limit_holds_replacements_back() {
    let fleet = AwsFleet::new("heal-churn");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    create(&fleet, 2);
    let spec = write_spec(&fleet, 2);
    let node1 = live_by_name(&fleet)["node-1"].id.clone();

    let dry = FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity")
        .pool(PoolFilter::default());
    let refused = FaultRule::new("ec2", "RunInstances", "InsufficientInstanceCapacity");
    runtime().block_on(scope.set_faults(&[dry, refused])).unwrap();
    runtime().block_on(scope.reset_counts()).unwrap();

    let log = fleet.path("watch-churn.log");
    let child = fleet
        .command(&[
            "watch",
            "-v",
            "--config",
            &spec,
            "--interval",
            "200ms",
            "--output",
            "json",
            "--max-per-hour",
            "2",
        ])
        .env("FLOTILLA_TEST_LAUNCH_DEADLINE", "3s")
        .stdout(Stdio::piped())
        .stderr(fs_err::File::create(&log).unwrap().into_parts().0)
        .spawn()
        .expect("watch starts");
    let mut watch = Watch::new(child, Some(log));
    watch.wait_for("watch's start", Duration::from_secs(60), |e| e["what"] == "started");
    runtime().block_on(emulator.reclaim_spot(&[node1], Some(Duration::from_millis(200)))).unwrap();
    let held = watch.wait_for("node-1 held back", Duration::from_secs(180), |e| {
        e["machine"] == "node-1" && e["action"] == "held back"
    });
    assert_eq!(
        held["outcome"], "2 replacements in the last hour already (max_per_hour 2)",
        "{held}"
    );
    assert_eq!(watch.count("node-1", "outcome", "journaled"), 2, "{:#?}", watch.seen);
    assert_eq!(watch.count("node-1", "what", "replacement-failed"), 2, "{:#?}", watch.seen);
    assert_eq!(watch.count("node-1", "what", "replaced"), 0, "{:#?}", watch.seen);
    // The first attempt names EC2's answer; the provider keeps the pools it found dry marked
    // for its life, so a later attempt of the same watch may not ask them again and end at the
    // launch deadline instead.
    let failures: Vec<&serde_json::Value> =
        watch.seen.iter().filter(|e| e["what"] == "replacement-failed").collect();
    let first = failures[0]["outcome"].as_str().unwrap();
    assert!(first.contains("InsufficientInstanceCapacity"), "names the cause: {first}");
    assert!(
        first.contains("(hint: try more instance_types or zones"),
        "says what to do about a capacity failure: {first}"
    );
    for failed in &failures[1..] {
        let outcome = failed["outcome"].as_str().unwrap();
        assert!(
            outcome.contains("InsufficientInstanceCapacity")
                || outcome.contains("could not be launched before the launch deadline"),
            "{failed}"
        );
    }
    let counts = runtime().block_on(scope.counts()).unwrap();
    let launches = counts.get("ec2", "CreateFleet") + counts.get("ec2", "RunInstances");
    assert!(launches >= 2, "each attempt asked EC2: {counts:?}");
    watch.kill();

    // Started again, the limit still holds (the journal keeps the hour's attempts): five
    // rounds, the machine held back with the reason, not one launch.
    let output = fleet
        .command(
            &[
                &["watch", "--config", &spec, "--interval", "200ms", "--rounds", "5"][..],
                &["--output", "json", "--max-per-hour", "2"][..],
            ]
            .concat(),
        )
        .env("FLOTILLA_TEST_LAUNCH_DEADLINE", "3s")
        .output()
        .unwrap();
    let output = succeeded(&["watch"], output);
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e["machine"] == "node-1"
            && e["action"] == "held back"
            && e["outcome"] == "2 replacements in the last hour already (max_per_hour 2)"),
        "{events:#?}"
    );
    assert!(!events.iter().any(|e| e["outcome"] == "journaled"), "{events:#?}");
    let after = runtime().block_on(scope.counts()).unwrap();
    assert_eq!(after.get("ec2", "CreateFleet"), counts.get("ec2", "CreateFleet"), "{after:?}");
    assert_eq!(after.get("ec2", "RunInstances"), counts.get("ec2", "RunInstances"), "{after:?}");

    // The pools open again and the limit is raised: one round replaces it.
    runtime().block_on(scope.clear_faults()).unwrap();
    let output = fleet.run_ok(&[
        "watch",
        "--config",
        &spec,
        "--rounds",
        "1",
        "--max-per-hour",
        "3",
        "--output",
        "json",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("\"machine\":\"node-1\",\"what\":\"replaced\""), "{text}");
    let status = fleet.status();
    assert_eq!(row(&status, "node-1")["health"], "healthy", "{status:?}");
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// Watch killed with -9 once the replacement's instance exists (after `replacing`, before
/// `replaced`) and started again: it resumes from its journal and the name ends up with one
/// new instance; no second instance is launched for it.
#[test]
fn a_watch_killed_in_the_middle_of_a_replacement_finishes_it_once() {
    let fleet = AwsFleet::new("heal-crash");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let rows = create(&fleet, 3);
    let before = pids(&rows);
    let spec = write_spec(&fleet, 3);
    let original: BTreeSet<String> = instances(&fleet).into_iter().map(|i| i.id).collect();
    let node1 = live_by_name(&fleet)["node-1"].id.clone();
    // 100 ms a call widens the replacement, so the kill lands inside it.
    runtime().block_on(scope.set_latency(Duration::from_millis(100))).unwrap();

    let mut watch = spawn_watch(&fleet, &spec, &[]);
    runtime()
        .block_on(
            emulator.reclaim_spot(std::slice::from_ref(&node1), Some(Duration::from_millis(300))),
        )
        .unwrap();
    watch.wait_for("node-1's replacement", Duration::from_secs(120), |e| {
        e["machine"] == "node-1" && e["outcome"] == "journaled"
    });
    let launched = wait_for("the replacement's instance", Duration::from_secs(120), || {
        instances(&fleet).into_iter().find(|i| !original.contains(&i.id))
    });
    let seen = watch.kill();
    let journal = fs_err::read_to_string(
        fleet.home.path().join("deployments").join(&fleet.tag).join("watch-journal.json"),
    )
    .unwrap();
    assert!(
        !seen.iter().any(|e| e["what"] == "replaced"),
        "killed before the replacement ended: {seen:#?}"
    );
    assert!(journal.contains("node-1"), "the journal names the replacement: {journal}");

    let mut watch = spawn_watch(&fleet, &spec, &[]);
    let resumed =
        watch.wait_for("the journal's replacement", Duration::from_secs(60), |e| e["what"] != "");
    assert_eq!(resumed["what"], "resumed", "first the journal: {:#?}", watch.seen);
    assert_eq!(resumed["outcome"], "node-1", "{resumed}");
    wait_replaced(&mut watch, &["node-1"]);
    watch.kill();
    runtime().block_on(scope.clear_latency()).unwrap();

    let new: Vec<InstanceInfo> =
        instances(&fleet).into_iter().filter(|i| !original.contains(&i.id)).collect();
    assert_eq!(new.len(), 1, "one instance launched for the loss, not two: {new:#?}");
    assert_eq!(new[0].id, launched.id, "the crashed launch's instance was adopted");
    assert_eq!(machine_name(&new[0]), Some("node-1"), "{new:#?}");
    assert_eq!(new[0].state, "running");
    // The scope outlives a run: instances of earlier runs are among `original`, terminated.
    let named = instances(&fleet).into_iter().filter(|i| {
        machine_name(i) == Some("node-1") && (i.id == node1 || !original.contains(&i.id))
    });
    assert_eq!(named.count(), 2, "node-1's instances: the reclaimed one and its replacement");
    let status = fleet.status();
    let replaced = row(&status, "node-1");
    assert_eq!(replaced["health"], "healthy", "{status:?}");
    for name in ["node-0", "node-2"] {
        let row = row(&status, name);
        assert_eq!(row["pid"].as_u64(), Some(before[name]), "{name} was not restarted");
        assert_eq!(row["hosts"], replaced["hosts"], "{name} has the new hosts.yaml: {row}");
    }
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// When each moment was first seen by [`sample_replacement`].
#[derive(Debug, Default)]
struct Moments {
    /// The replacement's binary answered its health check.
    new_healthy: Option<std::time::Instant>,
    /// The machine at risk's binary stopped answering (drained).
    old_down: Option<std::time::Instant>,
}

/// Samples every 50 ms, from outside flotilla, the binaries of `name`: the old instance's
/// (`old_id`) and any new instance's, until both moments are seen or `stop` is set.
fn sample_replacement(
    scope: String,
    name: &'static str,
    old_id: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Moments> {
    std::thread::spawn(move || {
        let runtime = runtime();
        let emulator = Emulator::require();
        let mut moments = Moments::default();
        let mut old_ip = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let all = runtime.block_on(emulator.instances()).unwrap_or_default();
            let named = all.iter().filter(|i| i.scope == scope && machine_name(i) == Some(name));
            for instance in named {
                let Some(ip) = instance.public_ip else { continue };
                let healthy = http_get(ip.into(), 9090, "/health").is_some();
                if instance.id == old_id {
                    old_ip = Some(ip);
                } else if healthy && is_live(instance) && moments.new_healthy.is_none() {
                    moments.new_healthy = Some(std::time::Instant::now());
                }
            }
            if let Some(ip) = old_ip
                && moments.old_down.is_none()
                && http_get(ip.into(), 9090, "/health").is_none()
            {
                moments.old_down = Some(std::time::Instant::now());
            }
            if moments.new_healthy.is_some() && moments.old_down.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        moments
    })
}

/// Under `watch`, a rebalance recommendation on node-1: its replacement is launched beside it
/// and serves (seen from outside, by its health check) before node-1's binary is drained; a
/// scheduled `instance-retirement` on node-2 ten minutes ahead: node-2 is replaced long before
/// its `NotBefore`; node-0 is never restarted.
#[test]
fn a_rebalance_replaces_first_and_a_scheduled_retirement_is_replaced_before_not_before() {
    use flotilla_emulator::control::{RebalanceRecommendation, ScheduledEvent};
    let fleet = AwsFleet::new("heal-notice");
    let emulator = Emulator::require();
    let rows = create(&fleet, 3);
    let before = pids(&rows);
    let spec = write_spec(&fleet, 3);
    let live = live_by_name(&fleet);
    let (node1, node2) = (live["node-1"].id.clone(), live["node-2"].id.clone());
    let mut watch = spawn_watch(&fleet, &spec, &[]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_replacement(fleet.scope.clone(), "node-1", node1.clone(), stop.clone());
    let notice = RebalanceRecommendation { notice_time: None };
    runtime().block_on(emulator.trigger_rebalance(&node1, &notice)).unwrap();
    wait_replaced(&mut watch, &["node-1"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moments = sampler.join().unwrap();
    let new_healthy = moments.new_healthy.expect("the replacement was seen healthy");
    let old_down = moments.old_down.expect("node-1's old binary was seen drained");
    assert!(new_healthy < old_down, "the replacement served before the old one was drained");
    let event = watch.seen.iter().find(|e| e["machine"] == "node-1" && e["action"] != "").unwrap();
    assert_eq!(event["action"], "replacing, the new machine first", "{:#?}", watch.seen);
    let old = instances(&fleet).into_iter().find(|i| i.id == node1).unwrap();
    assert_eq!(old.state, "terminated", "the machine at risk is gone once drained");

    let not_before = std::time::SystemTime::now() + Duration::from_secs(600);
    let retirement = ScheduledEvent {
        code: "instance-retirement".to_owned(),
        description: Some("The instance is running on degraded hardware".to_owned()),
        event_id: None,
        not_before: Some(humantime::format_rfc3339_seconds(not_before).to_string()),
        not_after: None,
        state: None,
    };
    runtime().block_on(emulator.set_scheduled_events(&node2, &[retirement])).unwrap();
    wait_replaced(&mut watch, &["node-2"]);
    assert!(std::time::SystemTime::now() < not_before, "replaced before NotBefore");
    let event = watch.seen.iter().find(|e| e["machine"] == "node-2" && e["action"] != "").unwrap();
    assert!(event["what"].as_str().unwrap().contains("instance-retirement"), "{event}");
    let seen = watch.kill();

    let healed = live_by_name(&fleet);
    assert_ne!(healed["node-1"].id, node1, "{seen:#?}");
    assert_ne!(healed["node-2"].id, node2, "{seen:#?}");
    let status = fleet.status();
    let hosts = row(&status, "node-0")["hosts"].clone();
    for name in node_names(0..3) {
        let row = row(&status, &name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["hosts"], hosts, "{name} has the newest hosts.yaml");
    }
    assert_eq!(row(&status, "node-0")["pid"].as_u64(), Some(before["node-0"]), "never restarted");
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}
