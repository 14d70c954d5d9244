//! `flotilla snapshot` and `flotilla image` against the emulator: snapshots of a machine's data
//! disks carry the disk's tags (the deployment's, its label, flotilla's) so that a later
//! fleet's `clone: TAG:VALUE` starts from the newest of them; `--full` adds the root disk; a
//! re-run of a finished capture makes a new one, and a re-run of an unfinished one makes
//! nothing twice; `image` makes a tagged AMI, with a key an encrypted copy whose unencrypted
//! source is gone; `--stop` leaves the instance running and the binary healthy; a machine
//! stopped for a capture is left alone by `watch`, and its new address reaches the other
//! machines' hosts.yaml; a capture that fails while the machine is stopped starts it and its
//! binary again and says what failed and what was done; the local provider refuses, naming
//! itself.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::aws::AwsFleet;
use common::events::Watch;
use common::*;
use flotilla_emulator::control::{Emulator, FaultRule, StateTiming};
use serde_json::Value;

/// A spec of one `db` machine whose `/dev/sdf` is `disk` (YAML flow mapping).
fn spec(fleet: &AwsFleet, tag: &str, disk: &str) -> String {
    format!(
        "tag: {tag}\nprovider: aws\ntags: {{Team: data}}\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: db\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: {config}\n  profiling: false\n  disks:\n    /dev/sdf: {disk}\nports: []\n",
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = fleet_app_bin().display(),
        config = fleet.path("app.conf").display(),
    )
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("JSON: {e}\nstderr: {}", String::from_utf8_lossy(&output.stderr))
    })
}

/// One machine with a labelled data disk: `snapshot` makes one tagged snapshot of it, `--full`
/// two (root too); a fleet created later with `clone: backup:<tag>` starts from the newest.
/// `image --stop` makes a tagged AMI and the machine serves again; `image --encrypt-key`
/// leaves only the encrypted copy.
#[test]
fn snapshots_and_images_of_a_machine_are_tagged_clonable_and_leave_it_serving() {
    let fleet = AwsFleet::new("snaps");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let runtime = runtime();
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    let config = runtime.block_on(fleet.sdk());
    let kms = aws_sdk_kms::Client::new(&config);
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let label = format!("\"backup:{},role:data\"", fleet.tag);
    let text =
        spec(&fleet, &fleet.tag, &format!("{{type: gp3, size: 12, label: {label}, mount: /data}}"));
    let path = fleet.write("fleet.yaml", &text).display().to_string();
    fleet.run_ok(&["create", "--config", &path, "--ip", "198.51.100.7", "--output", "json"]);

    // Data disks only.
    let first = json(&fleet.run_ok(&["snapshot", &fleet.tag_arg(), "db", "--output", "json"]));
    let snapshots = first["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "{first}");
    assert_eq!(snapshots[0]["device"], "/dev/sdf");
    assert_eq!(snapshots[0]["size_gib"], 12);
    let first_id = snapshots[0]["snapshot_id"].as_str().unwrap().to_owned();
    runtime.block_on(async {
        let found = ec2.describe_snapshots().snapshot_ids(&first_id).send().await.unwrap();
        let tags = tags_of(found.snapshots()[0].tags());
        for (key, value) in [
            ("backup", fleet.tag.as_str()),
            ("role", "data"),
            ("Team", "data"),
            ("flotilla:deployment", fleet.tag.as_str()),
            ("flotilla:machine", "db"),
            ("flotilla:device", "/dev/sdf"),
            ("flotilla:mount", "/data"),
            ("flotilla:capture", first["capture"].as_str().unwrap()),
        ] {
            assert_eq!(tags.get(key).map(String::as_str), Some(value), "{key}: {tags:?}");
        }
    });

    // EC2 answers start times to the second: the next capture is a newer one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let full =
        json(&fleet.run_ok(&["snapshot", &fleet.tag_arg(), "db", "--full", "--output", "json"]));
    let devices: Vec<(&str, bool)> = full["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["device"].as_str().unwrap(), s["root"].as_bool().unwrap()))
        .collect();
    assert_eq!(devices.len(), 2, "{full}");
    assert!(devices.contains(&("/dev/sdf", false)) && devices.iter().any(|d| d.1), "{devices:?}");
    let newest = full["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device"] == "/dev/sdf")
        .unwrap()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(newest, first_id, "a finished capture run again is a new one");

    // An image with --stop: tagged, and the machine serves again.
    let image = json(&fleet.run_ok(&[
        "image",
        &fleet.tag_arg(),
        "db",
        "--name",
        "snaps-db",
        "--stop",
        "--output",
        "json",
    ]));
    let image_id = image["image"]["image_id"].as_str().unwrap().to_owned();
    assert!(image["image"]["name"].as_str().unwrap().starts_with("snaps-db-"), "{image}");
    assert_eq!(image["stopped"], true);
    let rows = fleet.status();
    let db = rows.iter().find(|r| r["name"] == "db").unwrap();
    assert_eq!(db["health"], "healthy", "{db}");
    runtime.block_on(async {
        let found = ec2.describe_images().image_ids(&image_id).send().await.unwrap();
        let image = &found.images()[0];
        let tags = tags_of(image.tags());
        assert_eq!(tags.get("flotilla:machine").map(String::as_str), Some("db"), "{tags:?}");
        assert_eq!(tags.get("Team").map(String::as_str), Some("data"), "{tags:?}");
        let snapshot = image.block_device_mappings()[0].ebs().unwrap().snapshot_id().unwrap();
        let found = ec2.describe_snapshots().snapshot_ids(snapshot).send().await.unwrap();
        let tags = tags_of(found.snapshots()[0].tags());
        assert_eq!(tags.get("flotilla:deployment"), Some(&fleet.tag), "{tags:?}");
    });

    // With a key: only the encrypted copy is left.
    let key_id = runtime.block_on(async {
        let key = kms.create_key().send().await.unwrap();
        key.key_metadata().unwrap().key_id().to_owned()
    });
    // The first try fails deleting the unencrypted image's snapshot, after deregistering the
    // image: run again, the capture finishes and deletes what was left.
    let fault = FaultRule::new("ec2", "DeleteSnapshot", "UnauthorizedOperation")
        .message("injected: not allowed")
        .count(1);
    runtime.block_on(scope.set_faults(&[fault])).unwrap();
    let args = ["image", &fleet.tag_arg(), "db", "--encrypt-key", &key_id, "--output", "json"]
        .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let failed = fleet.run(&args);
    let stderr = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(!failed.status.success() && stderr.contains("DeleteSnapshot"), "{stderr}");
    runtime.block_on(scope.set_faults(&[])).unwrap();
    let encrypted = json(&fleet.run_ok(&args));
    let copy = &encrypted["image"];
    assert_eq!(copy["encrypted"], true, "{encrypted}");
    let capture = encrypted["capture"].as_str().unwrap().to_owned();
    let copy_snapshots: Vec<String> = copy["snapshot_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    runtime.block_on(async {
        let left = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(Filter::builder().name("tag:flotilla:capture").values(&capture).build())
            .send()
            .await
            .unwrap();
        let left: Vec<String> =
            left.snapshots().iter().filter_map(|s| s.snapshot_id().map(str::to_owned)).collect();
        assert_eq!(left, copy_snapshots, "only the encrypted copy's snapshots are left");
    });
    runtime.block_on(async {
        let found = ec2
            .describe_images()
            .image_ids(copy["image_id"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let ebs = found.images()[0].block_device_mappings()[0].ebs().unwrap().clone();
        assert_eq!(ebs.encrypted(), Some(true));
        assert!(ebs.kms_key_id().is_some_and(|k| k.contains(&key_id)), "{ebs:?}");
        let mine = ec2
            .describe_images()
            .owners("self")
            .filters(
                Filter::builder()
                    .name("name")
                    .values(format!("{}-source", copy["name"].as_str().unwrap()))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert!(mine.images().is_empty(), "the unencrypted image is gone");
    });

    // A later fleet's clone picks the newest snapshot carrying the label.
    let clone_tag = format!("{}-clone", fleet.tag);
    let text = spec(&fleet, &clone_tag, &format!("{{type: gp3, clone: \"backup:{}\"}}", fleet.tag));
    let clone_path = fleet.write("clone.yaml", &text).display().to_string();
    fleet.run_ok(&["create", "--config", &clone_path, "--ip", "198.51.100.7", "--output", "json"]);
    runtime.block_on(async {
        let volumes = ec2
            .describe_volumes()
            .filters(Filter::builder().name("tag:flotilla:deployment").values(&clone_tag).build())
            .filters(Filter::builder().name("tag:flotilla:device").values("/dev/sdf").build())
            .send()
            .await
            .unwrap();
        let cloned: Vec<_> = volumes.volumes().iter().filter_map(|v| v.snapshot_id()).collect();
        assert_eq!(cloned, [newest.as_str()], "the newest snapshot of the disk");
    });
    fleet.run_ok(&["destroy", &format!("--tag={clone_tag}")]);
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// A capture interrupted before it finished is run again under the same id: the snapshot it
/// made is found, not made twice.
#[test]
fn an_unfinished_capture_run_again_makes_nothing_twice() {
    let fleet = AwsFleet::new("snaps-rerun");
    let _emulator = Emulator::require();
    let runtime = runtime();
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let text = spec(&fleet, &fleet.tag, "{type: gp3, size: 5}");
    let path = fleet.write("fleet.yaml", &text).display().to_string();
    fleet.run_ok(&["create", "--config", &path, "--ip", "198.51.100.7", "--output", "json"]);
    let first = json(&fleet.run_ok(&["snapshot", &fleet.tag_arg(), "db", "--output", "json"]));
    let capture = first["capture"].as_str().unwrap();
    // As a crash after the snapshot was made leaves it: the capture still recorded.
    let deployment = fleet.home.path().join("deployments").join(&fleet.tag);
    assert!(deployment.is_dir(), "{}", deployment.display());
    let time = capture.strip_prefix("snapshot-").unwrap();
    fs_err::write(
        deployment.join("capture.json"),
        format!(
            "{{\"machine\":\"db\",\"kind\":\"snapshot\",\"id\":\"{capture}\",\"time\":\"{time}\"}}"
        ),
    )
    .unwrap();
    let again = json(&fleet.run_ok(&["snapshot", &fleet.tag_arg(), "db", "--output", "json"]));
    assert_eq!(again["capture"], capture);
    assert_eq!(again["snapshots"], first["snapshots"], "the same snapshot, found again");
    runtime.block_on(async {
        let found = ec2
            .describe_snapshots()
            .filters(Filter::builder().name("tag:flotilla:capture").values(capture).build())
            .filters(fleet.tag_filter())
            .send()
            .await
            .unwrap();
        assert_eq!(found.snapshots().len(), 1);
    });
    assert!(!deployment.join("capture.json").exists(), "a finished capture is forgotten");
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// `count` fleet-app nodes (hosts.yaml reread on SIGHUP) without data disks, and the
/// monitoring machine. No HTTP health check: after a stop and start the app listens at its new
/// address (`FLOTILLA_IP`), while in the emulator the agent, whose process outlives the
/// instance's stop, still checks health at the loopback address it listens on.
fn nodes_spec(fleet: &AwsFleet, count: usize) -> String {
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let text = format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: node\n  count: {count}\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: app.conf\n  profiling: false\n  on_hosts_change: {{signal: SIGHUP}}\nports: []\n",
        tag = fleet.tag,
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = fleet_app_bin().display(),
    );
    fleet.write("fleet.yaml", &text).display().to_string()
}

/// The address the fleet app of `row` has for `peer` in the hosts.yaml it read last.
fn peer_address(row: &Value, peer: &str) -> Option<String> {
    let body = http_get(ip_of(row), 9090, "/peers")?;
    let peers: Value = serde_json::from_str(&body).ok()?;
    peers["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)
        .and_then(|p| p["ip"].as_str().map(str::to_owned))
}

/// `watch` (rounds every 200 ms, a machine down 200 ms replaced) with its events read by the
/// test.
fn spawn_watch(fleet: &AwsFleet, spec: &str) -> Watch {
    let args = [
        "watch",
        "-v",
        "--config",
        spec,
        "--interval",
        "200ms",
        "--replace-after",
        "200ms",
        "--output",
        "json",
    ];
    let log = fleet.path("watch.log");
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

/// Unix seconds of watch's last round (`watch-state.json`).
fn last_round(fleet: &AwsFleet) -> Option<u64> {
    let path = fleet.home.path().join("deployments").join(&fleet.tag).join("watch-state.json");
    let state: Value = serde_json::from_slice(&fs_err::read(path).ok()?).ok()?;
    state["at"].as_u64()
}

/// Two nodes under `watch`, which replaces a machine down for 200 ms; `image --stop node-0`
/// keeps node-0 stopped for longer (each stop takes 1.5 s here). Watch leaves it alone and
/// says so, also in the rounds after the capture; node-0 comes back on its own instance at a
/// new address, which node-1's binary reads from its new hosts.yaml (a SIGHUP, no restart),
/// and `status` reaches node-0 there, healthy.
#[test]
fn a_machine_stopped_for_a_capture_is_left_alone_by_watch_and_its_new_address_published() {
    let fleet = AwsFleet::new("snaps-watch");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let runtime = runtime();
    let spec = nodes_spec(&fleet, 2);
    fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
    let before = fleet.status();
    let (node0, node1) = (row(&before, "node-0").clone(), row(&before, "node-1").clone());
    let stop = Duration::from_millis(1500);
    runtime
        .block_on(
            scope.set_timing(StateTiming {
                pending: Duration::from_millis(300),
                shutting_down: stop,
            }),
        )
        .unwrap();

    let mut watch = spawn_watch(&fleet, &spec);
    let image =
        json(&fleet.run_ok(&["image", &fleet.tag_arg(), "node-0", "--stop", "--output", "json"]));
    let new_ip = image["public_ip"].as_str().unwrap().to_owned();
    assert_ne!(
        new_ip,
        node0["ip"].as_str().unwrap(),
        "a stopped and started instance has a new address"
    );
    let left = watch.wait_for("node-0 left alone", Duration::from_secs(30), |e| {
        e["machine"] == "node-0" && e["what"] == "stopped for a capture"
    });
    assert_eq!(left["action"], "left alone", "{left}");
    // Rounds after the capture: node-0 runs, nothing to replace.
    let done =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    wait_for("two rounds after the capture", Duration::from_secs(30), || {
        (last_round(&fleet)? >= done + 2).then_some(())
    });
    let seen = watch.kill();
    let about_node0: Vec<&Value> = seen.iter().filter(|e| e["machine"] == "node-0").collect();
    assert!(
        about_node0.iter().all(|e| e["what"] == "stopped for a capture"),
        "watch did nothing else about node-0: {about_node0:#?}"
    );

    let after = fleet.status();
    let (now0, now1) = (row(&after, "node-0"), row(&after, "node-1"));
    assert_eq!(now0["id"], node0["id"], "node-0 kept its instance");
    assert_eq!(now0["ip"], new_ip.as_str(), "{now0}");
    assert_eq!(now0["health"], "healthy", "{now0}");
    assert_eq!(now1["health"], "healthy", "{now1}");
    assert_ne!(now1["hosts"], node1["hosts"], "node-1 got a new hosts.yaml: {now1}");
    assert_eq!(now1["hosts"], now0["hosts"], "{after:#?}");
    assert_eq!(now1["pid"], node1["pid"], "node-1's binary was signalled, not restarted");
    assert_eq!(now1["version"], node1["version"]);
    let hosts_yaml = fs_err::read_to_string(
        fleet.home.path().join("deployments").join(&fleet.tag).join("hosts.yaml"),
    )
    .unwrap();
    assert!(hosts_yaml.contains(&new_ip), "{hosts_yaml}");
    wait_for("node-1's binary to read node-0's new address", Duration::from_secs(20), || {
        (peer_address(now1, "node-0")? == new_ip).then_some(())
    });
    // node-0's binary was started again with its new address as `FLOTILLA_IP` (the agent
    // reads it from the hosts.yaml in place, not from the identity it loaded before the stop),
    // so it listens there.
    wait_for("node-0's binary at its new address", Duration::from_secs(20), || {
        http_get(ip_of(now0), 9090, "/peers").map(|_| ())
    });
    runtime.block_on(scope.clear_timing()).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// `image --stop` whose CreateImage fails, and `snapshot --full --stop` whose CreateSnapshot
/// fails: each time the instance and its binary are started again, the command fails saying
/// what failed and what was done, and, the fault gone, running it again finishes the same
/// capture.
#[test]
fn a_capture_failing_while_stopped_starts_the_machine_and_its_binary_again() {
    let fleet = AwsFleet::new("snaps-fault");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let runtime = runtime();
    let spec = nodes_spec(&fleet, 1);
    fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);

    for (action, args) in [
        ("CreateImage", vec!["image", "node-0", "--stop"]),
        ("CreateSnapshot", vec!["snapshot", "node-0", "--full", "--stop"]),
    ] {
        let before = fleet.status();
        let pid = row(&before, "node-0")["pid"].clone();
        let fault =
            FaultRule::new("ec2", action, "UnauthorizedOperation").message("injected: not allowed");
        runtime.block_on(scope.set_faults(&[fault])).unwrap();
        let tag = fleet.tag_arg();
        let mut full: Vec<&str> = vec![args[0], &tag];
        full.extend_from_slice(&args[1..]);
        let output = fleet.run(&full);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{action}: {stderr}");
        let kind = args[0];
        for expected in [
            format!("node-0: the {kind} failed"),
            action.to_owned(),
            "UnauthorizedOperation".to_owned(),
            "its binary was stopped and its instance stopped for it".to_owned(),
            "the instance was started again".to_owned(),
            "binary restarted, healthy".to_owned(),
            "run the command again to finish capture".to_owned(),
        ] {
            assert!(stderr.contains(&expected), "{action}: `{expected}` in: {stderr}");
        }
        let capture = stderr
            .split("finish capture ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        let rows = fleet.status();
        let node = row(&rows, "node-0");
        assert_eq!(node["state"], "running", "{node}");
        assert_eq!(node["health"], "healthy", "{node}");
        assert_ne!(node["pid"], pid, "the binary was stopped and started again: {node}");

        runtime.block_on(scope.clear_faults()).unwrap();
        full.extend_from_slice(&["--output", "json"]);
        let again = json(&fleet.run_ok(&full));
        assert_eq!(again["capture"], capture.as_str(), "the same capture, finished");
    }
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
}

/// The local provider has no volumes or images: both commands refuse, naming it and the machine.
#[test]
fn the_local_provider_refuses_snapshots_and_images() {
    let fleet = TestFleet::new("local-snaps", FleetOptions { count: 1, ..FleetOptions::default() });
    fleet.create();
    for args in [
        vec!["snapshot", "--tag", &fleet.tag, "node-0", "--output", "json"],
        vec!["image", "--tag", &fleet.tag, "node-0", "--stop"],
    ] {
        let output = fleet.run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "machine `node-0` runs on the local provider, which has no volumes or images"
            ),
            "{stderr}"
        );
    }
    let rows = fleet.status();
    assert_eq!(row(&rows, "node-0")["health"], "healthy", "the refusal changed nothing: {rows:?}");
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}
