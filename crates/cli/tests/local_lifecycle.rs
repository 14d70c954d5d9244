//! The spec's `lifecycle:` (an ec2fleetd config) on the local provider, end to end with the real
//! `flotilla` binary, real agents, the example app and each machine's rehearsal IMDS: `starting`
//! and `started` hooks run at create (`started` once, also across an update), and the notices
//! `flotilla notice` serves run the `rebalance`, `scheduled-event` and `interrupted` hooks, the
//! last one stopping the binary. Every hook appends its expanded macros to a file per machine.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

const EVENTS: [&str; 8] = [
    "starting",
    "started",
    "binary-exited",
    "failed",
    "rebalance",
    "scheduled-event",
    "interrupted",
    "stopping",
];

/// A fleet of two machines of the example app whose lifecycle has an exec hook on every event:
/// two lines each (to see their order), appending `LINE daemon_state name instance_index
/// interrupt_action event_code` to `events-<name>.log` in the work directory.
fn fleet_with_lifecycle(tag: &str) -> TestFleet {
    let fleet = TestFleet::new(tag, FleetOptions { count: 2, ..FleetOptions::default() });
    let spec = fs_err::read_to_string(&fleet.spec).expect("the spec is read");
    let log = fleet.work.path().join("events-{name}.log");
    let line = |mark: &str| {
        format!(
            "          - argv: [sh, -c, 'echo \"$*\" >> \"$0\"', '{log}', {mark}, '{{daemon_state}}', '{{name}}', '{{instance_index}}', 'action={{interrupt_action}}', 'code={{event_code}}']\n",
            log = log.display(),
        )
    };
    let lifecycle = format!(
        "  lifecycle:\n    domains:\n      app:\n        exec:\n        - on: [{events}]\n          lines:\n{first}{second}",
        events = EVENTS.join(", "),
        first = line("first"),
        second = line("second"),
    );
    let spec = spec.replace("  health:\n", &format!("{lifecycle}  health:\n"));
    assert!(spec.contains("lifecycle:"), "{spec}");
    fs_err::write(&fleet.spec, spec).expect("the spec is written");
    fleet
}

fn events_log(fleet: &TestFleet, name: &str) -> PathBuf {
    fleet.work.path().join(format!("events-{name}.log"))
}

/// The lines hooks appended for `name`.
fn lines(fleet: &TestFleet, name: &str) -> Vec<String> {
    fs_err::read_to_string(events_log(fleet, name))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The lines of `event`'s hooks on `name`.
fn lines_of(fleet: &TestFleet, name: &str, event: &str) -> Vec<String> {
    lines(fleet, name).into_iter().filter(|l| l.split(' ').nth(1) == Some(event)).collect()
}

/// Waits until `name`'s hooks appended `count` lines for `event`.
fn wait_for_lines(fleet: &TestFleet, name: &str, event: &str, count: usize) -> Vec<String> {
    wait_for(&format!("{count} `{event}` lines on {name}"), Duration::from_secs(20), || {
        let found = lines_of(fleet, name, event);
        (found.len() >= count).then_some(found)
    })
}

fn notice(fleet: &TestFleet, name: &str, kind: &[&str]) -> Value {
    let mut args = vec!["notice", "--tag", &fleet.tag, name];
    args.extend_from_slice(kind);
    args.extend_from_slice(&["--output", "json"]);
    let output = fleet.run_ok(&args);
    serde_json::from_slice(&output.stdout).expect("notice prints JSON")
}

fn lifecycle_of(fleet: &TestFleet, name: &str) -> Value {
    row(&fleet.status(), name)["lifecycle"].clone()
}

/// The events of the hook results in `lifecycle`'s report, in order, one per line run.
fn hook_events(lifecycle: &Value) -> Vec<String> {
    lifecycle["hooks"]
        .as_array()
        .unwrap_or_else(|| panic!("hook results: {lifecycle}"))
        .iter()
        .map(|hook| hook["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn lifecycle_hooks_run_on_every_event_and_a_spot_notice_stops_the_binary() {
    let fleet = fleet_with_lifecycle("lifecycle-events");
    let rows = fleet.create();
    for name in ["node-0", "node-1"] {
        assert_eq!(row(&rows, name)["health"], "healthy", "{rows:?}");
    }

    // `starting` ran before the binary started, `started` once it was healthy, once each.
    for (index, name) in ["node-0", "node-1"].into_iter().enumerate() {
        let started = wait_for_lines(&fleet, name, "started", 2);
        assert_eq!(
            started,
            [
                format!("first started {name} {index} action= code="),
                format!("second started {name} {index} action= code=")
            ]
        );
        assert_eq!(
            lines(&fleet, name)[..2],
            [
                format!("first starting {name} {index} action= code="),
                format!("second starting {name} {index} action= code=")
            ]
        );
    }
    let lifecycle = wait_for("node-0's `started` in its status", Duration::from_secs(10), || {
        let lifecycle = lifecycle_of(&fleet, "node-0");
        (lifecycle["last_event"]["event"] == "started").then_some(lifecycle)
    });
    assert_eq!(hook_events(&lifecycle), ["starting", "starting", "started", "started"]);
    for hook in lifecycle["hooks"].as_array().expect("hook results") {
        assert_eq!(hook["outcome"], "succeeded", "{hook}");
        assert_eq!(hook["exit_code"], 0, "{hook}");
        assert_eq!(hook["domain"], "app", "{hook}");
    }
    assert_eq!(lifecycle["hooks"][2]["argv"][6], "node-0", "macros are expanded: {lifecycle}");
    assert_eq!(lifecycle["not_applicable"], serde_json::json!([]), "{lifecycle}");
    assert_eq!(lifecycle["imds"], "ok", "the rehearsal IMDS answers: {lifecycle}");

    // An update that changes the config but nothing of the lifecycle: a new version starts
    // (`starting` again) and becomes healthy, but `started` does not run again.
    fleet.write_config("config.conf", "updated");
    let spec = fleet.spec_arg();
    fleet.run_ok(&["update", "--config", &spec]);
    for name in ["node-0", "node-1"] {
        wait_for_lines(&fleet, name, "starting", 4);
        assert_eq!(lines_of(&fleet, name, "started").len(), 2, "{:?}", lines(&fleet, name));
    }

    // A rebalance recommendation runs node-0's rebalance hooks, and only node-0's.
    let served = notice(&fleet, "node-0", &["rebalance"]);
    assert_eq!(served["name"], "node-0", "{served}");
    assert!(served["notices"]["rebalance"]["noticeTime"].is_string(), "{served}");
    let file = PathBuf::from(served["file"].as_str().expect("the notices' file"));
    assert_eq!(file, fleet.instance_dir("node-0").join("imds-notices.json"));
    assert_eq!(
        wait_for_lines(&fleet, "node-0", "rebalance", 2),
        ["first rebalance node-0 0 action= code=", "second rebalance node-0 0 action= code="]
    );

    // A scheduled event, with its code in the macros.
    let served = notice(&fleet, "node-0", &["scheduled", "--code", "instance-retirement"]);
    assert_eq!(served["notices"]["scheduled"][0]["Code"], "instance-retirement", "{served}");
    assert_eq!(
        wait_for_lines(&fleet, "node-0", "scheduled-event", 2),
        [
            "first scheduled-event node-0 0 action= code=instance-retirement",
            "second scheduled-event node-0 0 action= code=instance-retirement"
        ]
    );
    let lifecycle = wait_for("the scheduled event in the status", Duration::from_secs(10), || {
        let lifecycle = lifecycle_of(&fleet, "node-0");
        (lifecycle["last_event"]["event"] == "scheduled-event").then_some(lifecycle)
    });
    let detail = lifecycle["last_event"]["detail"].as_str().expect("a detail");
    assert!(detail.starts_with("instance-retirement (instance-event-"), "{detail}");

    // A spot interruption: the interrupted hooks in order, then the binary is stopped.
    let before = row(&fleet.status(), "node-0")["pid"].as_u64().expect("node-0 runs");
    let served = notice(&fleet, "node-0", &["spot", "--in", "2s"]);
    assert_eq!(served["notices"]["spot"]["action"], "terminate", "{served}");
    assert_eq!(
        wait_for_lines(&fleet, "node-0", "interrupted", 2),
        [
            "first interrupted node-0 0 action=terminate code=",
            "second interrupted node-0 0 action=terminate code="
        ]
    );
    let stopped = wait_for("node-0's binary to stop", Duration::from_secs(20), || {
        let status = fleet.status();
        let node = row(&status, "node-0").clone();
        (node["health"] == "stopped").then_some(node)
    });
    assert_eq!(stopped["pid"], Value::Null, "{stopped}");
    assert!(!is_alive(u32::try_from(before).expect("a pid")), "the binary (pid {before}) is gone");
    let lifecycle = &stopped["lifecycle"];
    assert_eq!(lifecycle["last_event"]["event"], "interrupted", "{stopped}");
    let detail = lifecycle["last_event"]["detail"].as_str().expect("a detail");
    assert!(detail.starts_with("spot terminate at "), "{detail}");
    let events = hook_events(lifecycle);
    assert_eq!(
        events[events.len() - 6..],
        [
            "rebalance",
            "rebalance",
            "scheduled-event",
            "scheduled-event",
            "interrupted",
            "interrupted"
        ]
    );
    // `status` fails while a binary is not healthy, and its table names the last event.
    let output = fleet.run(&["status", "--tag", &fleet.tag]);
    assert_eq!(output.status.code(), Some(1));
    let table = String::from_utf8_lossy(&output.stdout);
    let node = table.lines().find(|l| l.starts_with("node-0")).expect("node-0's row");
    assert!(node.contains("stopped"), "{table}");
    assert!(node.contains("last event interrupted: spot terminate at "), "{table}");

    // node-1 saw none of it; `started` ran once on each machine in all.
    assert!(lines_of(&fleet, "node-1", "rebalance").is_empty());
    assert!(lines_of(&fleet, "node-1", "interrupted").is_empty());
    assert_eq!(row(&fleet.status(), "node-1")["health"], "healthy");
    for name in ["node-0", "node-1"] {
        assert_eq!(lines_of(&fleet, name, "started").len(), 2, "{:?}", lines(&fleet, name));
    }
    // Destroy stops the agents: `stopping` runs before the binary is stopped.
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
    assert_eq!(
        wait_for_lines(&fleet, "node-1", "stopping", 2),
        ["first stopping node-1 1 action= code=", "second stopping node-1 1 action= code="]
    );
}
