//! The hostile probe's findings on the AWS path that the other AWS tests do not cover, end to
//! end against the shared emulator stack.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::time::{Duration, Instant};

use common::aws::AwsFleet;
use common::*;
use flotilla_emulator::control::{Emulator, StateReason, StateTiming};

fn spec(tag: &str) -> String {
    let binary = fleet_app_bin();
    format!(
        "tag: {tag}\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: node\n  region: us-east-1\n  instance_type: c7i.large\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: app.conf\n  profiling: false\nports: []\n",
        binary.display()
    )
}

/// A machine that cannot boot (the emulator ends it with EC2's state reason, as AWS does for a
/// failed launch) fails `create` at once with that reason, instead of being waited for until
/// the agents' 15-minute deadline.
#[test]
fn a_machine_that_cannot_boot_fails_create_at_once_with_its_reason() {
    let fleet = AwsFleet::new("boot-failure");
    let emulator = Emulator::require();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scope = emulator.scope(&fleet.scope);
    // Instances stay pending long enough for the test to end one before it boots.
    runtime
        .block_on(scope.set_timing(StateTiming {
            pending: Duration::from_secs(4),
            shutting_down: Duration::from_millis(200),
        }))
        .unwrap();
    fleet.write("app.conf", "port = 9090\ngreeting = \"hi\"\ninterval = 300\n");
    let spec = fleet.write("fleet.yaml", &spec(&fleet.tag)).display().to_string();
    let started = Instant::now();
    let create = fleet
        .command(&["create", "--config", &spec, "--ip", "198.51.100.7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The binary machine, as soon as it exists: ended with a boot failure.
    let reason = StateReason::boot_failure("address 127.0.0.99:7443 is in use (test)");
    let node = wait_for("the node's instance to be launched", Duration::from_secs(60), || {
        let instances = runtime.block_on(emulator.instances()).ok()?;
        // The binary machine is the one c7i.large (monitoring is a t4g.small).
        instances.into_iter().find(|i| {
            i.scope == fleet.scope && i.state == "pending" && i.instance_type == "c7i.large"
        })
    });
    runtime.block_on(emulator.terminate_instance(&node.id, &reason)).unwrap();

    let output = create.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(!output.status.success(), "create must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ended while starting"), "{stderr}");
    assert!(
        stderr.contains("address 127.0.0.99:7443 is in use (test)"),
        "the reason is shown: {stderr}"
    );
    assert!(took < Duration::from_secs(120), "create gave up after {took:?}");
    runtime.block_on(scope.clear_timing()).unwrap();
}
