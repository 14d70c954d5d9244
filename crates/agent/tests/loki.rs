//! Shipping the binary's log to Loki: an agent whose bootstrap names a Loki server pushes the
//! binary's lines with the six labels, in Loki's documented format, checked by an in-test
//! receiver (`support/loki_receiver.rs`); the shipper retries through a receiver that refuses
//! connections, resets them and answers 503; and while the receiver stays down, its queue keeps
//! to its byte budget by dropping the oldest lines, counted exactly, and says so once it ships
//! again.

mod common;
#[path = "support/loki_receiver.rs"]
mod loki_receiver;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Deployment, IDLE, Version, wait_until};
use flotilla_agent::loki::{ENTRY_OVERHEAD, LokiCounters, LokiSettings, LokiShipper, StreamLabels};
use loki_receiver::{Mode, Receiver};
use tokio::sync::watch;

fn labels() -> StreamLabels {
    StreamLabels {
        deployment: "t1".into(),
        name: "node-3".into(),
        region: "eu-west-1".into(),
        instance_type: "c7g.large".into(),
        market: "spot".into(),
    }
}

/// Settings for tests: waits of a few milliseconds.
fn fast_settings(url: &str) -> LokiSettings {
    LokiSettings {
        linger: Duration::from_millis(5),
        retry_initial: Duration::from_millis(2),
        retry_max: Duration::from_millis(20),
        ..LokiSettings::new(url)
    }
}

/// A loopback address with a free port that nothing listens on.
async fn free_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    listener.local_addr().expect("a bound address")
}

#[tokio::test]
async fn the_agent_ships_the_binarys_lines_with_its_labels_in_lokis_format() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Accept).await;
    let deployment = Deployment::new("127.200.11.1");
    let bootstrap = deployment.bootstrap_with(serde_json::json!({
        "loki": {"url": receiver.url(), "instance_type": "c7g.large", "market": "spot"},
    }));
    let agent = deployment.start_with(bootstrap).await;
    let script =
        format!("i=0\nwhile [ $i -lt 300 ]; do echo \"hello $i\"; i=$((i+1)); done\n{IDLE}");
    let manifest = deployment.publish(&Version::script(&script));
    deployment.install(&manifest).await;
    wait_until("the 300 lines to reach the receiver", || {
        receiver.lines().iter().filter(|line| line.starts_with("hello ")).count() >= 300
    })
    .await;
    receiver.assert_no_violations();

    let received = receiver.received();
    let hello: Vec<_> = received.iter().filter(|r| r.line.starts_with("hello ")).collect();
    let expected: Vec<String> = (0..300).map(|n| format!("hello {n}")).collect();
    assert_eq!(hello.iter().map(|r| r.line.clone()).collect::<Vec<_>>(), expected);
    let version = manifest.version();
    for line in &hello {
        let labels: Vec<(&str, &str)> =
            line.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            [
                ("deployment", "t1"),
                ("instance_type", "c7g.large"),
                ("market", "spot"),
                ("name", "node-0"),
                ("region", "local"),
                ("version", version.as_str()),
            ]
        );
    }
    // The agent's lifecycle events travel too: the one before any version ran as `none`.
    let started = received
        .iter()
        .find(|r| r.line.starts_with("[flotilla-agent] ") && r.line.contains(" started (pid "))
        .expect("the agent's start event was shipped");
    assert_eq!(started.labels["version"], "none");
    assert!(
        received
            .iter()
            .any(|r| r.line.starts_with("[flotilla-agent] ") && r.labels["version"] == version)
    );

    let metrics = deployment.metrics().await;
    assert!(metrics.contains("flotilla_loki_lines_dropped_total 0\n"), "{metrics}");
    let shipped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("flotilla_loki_lines_shipped_total "))
        .expect("the shipped counter")
        .parse()
        .unwrap();
    assert!(shipped >= 300, "{shipped}\n{metrics}");
    agent.shutdown().await.unwrap();
    // The binary's goodbye, written while the agent stopped it, was shipped too.
    assert!(receiver.lines().iter().any(|line| line == "got SIGTERM"), "{:?}", receiver.lines());
}

#[tokio::test]
async fn without_them_in_the_bootstrap_the_labels_come_from_imds_or_are_unknown() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Accept).await;
    let deployment = Deployment::new("127.200.11.2");
    let notices = deployment.temp.path().join("notices.json");
    let bootstrap = deployment.bootstrap_with(serde_json::json!({
        "loki": {"url": receiver.url()},
        // The rehearsal IMDS: `instance-type` is `local`; `instance-life-cycle` is absent.
        "imds": {"endpoint": "http://127.200.11.2:1338", "rehearsal_notices": notices},
    }));
    let agent = deployment.start_with(bootstrap).await;
    wait_until("the agent's events to reach the receiver", || !receiver.lines().is_empty()).await;
    receiver.assert_no_violations();
    let first = &receiver.received()[0];
    assert_eq!(first.labels["instance_type"], "local");
    assert_eq!(first.labels["market"], "unknown");
    assert_eq!(first.labels["name"], "node-0");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_push_is_retried_until_the_receiver_takes_it() {
    let address = free_address().await;
    let shipper =
        LokiShipper::new(fast_settings(&format!("http://{address}")), LokiCounters::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(shipper.clone().run(labels(), stopped));
    shipper.set_version(Some("v1"));
    for n in 0..50 {
        shipper.push_line(&format!("line {n}"));
    }
    // Down: nothing listens, connections are refused (the schedule retries every few ms).
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(shipper.stats().shipped, 0);
    // Up but broken: connections closed unread, then 503 answers.
    let receiver = Receiver::start(address, Mode::Reset).await;
    wait_until("three reset connections", || receiver.counts().0 >= 3).await;
    receiver.set_mode(Mode::Unavailable);
    wait_until("two 503 answers", || receiver.counts().1 >= 2).await;
    shipper.set_version(Some("v2"));
    shipper.push_line("after the outage");
    receiver.set_mode(Mode::Accept);
    wait_until("all lines to arrive", || receiver.lines().len() == 51).await;
    receiver.assert_no_violations();

    let mut expected: Vec<String> = (0..50).map(|n| format!("line {n}")).collect();
    expected.push("after the outage".into());
    assert_eq!(receiver.lines(), expected, "each line once, in order");
    let received = receiver.received();
    assert!(received[..50].iter().all(|r| r.labels["version"] == "v1"));
    assert_eq!(received[50].labels["version"], "v2");
    assert_eq!(received[0].labels["name"], "node-3");
    let stats = shipper.stats();
    assert_eq!((stats.shipped, stats.dropped, stats.queued_lines), (51, 0, 0));
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn while_the_receiver_stays_down_the_oldest_lines_are_dropped_and_counted() {
    let address = free_address().await;
    // Lines of 36 bytes cost 100 against the budget: 10,000 bytes hold 100 of them.
    let line = |n: usize| format!("line {n:04} {}", "x".repeat(36 - 10));
    assert_eq!(line(0).len() + ENTRY_OVERHEAD, 100);
    let settings =
        LokiSettings { budget_bytes: 10_000, ..fast_settings(&format!("http://{address}")) };
    let shipper = LokiShipper::new(settings, LokiCounters::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(shipper.clone().run(labels(), stopped));
    for n in 0..1000 {
        shipper.push_line(&line(n));
        let stats = shipper.stats();
        assert!(stats.queued_bytes <= 10_000, "{stats:?} after line {n}");
        assert_eq!(
            stats.queued_lines as u64 + stats.dropped,
            n as u64 + 1,
            "every line is accounted for"
        );
    }
    let stats = shipper.stats();
    assert_eq!(
        (stats.queued_lines, stats.queued_bytes, stats.dropped, stats.shipped),
        (100, 10_000, 900, 0)
    );

    // The receiver comes back: the newest 100 lines arrive, then the report of the drop.
    let receiver = Receiver::start(address, Mode::Accept).await;
    wait_until("the kept lines and the report", || receiver.lines().len() == 101).await;
    receiver.assert_no_violations();
    let lines = receiver.lines();
    let kept: Vec<String> = (900..1000).map(line).collect();
    assert_eq!(lines[..100], kept[..]);
    assert!(lines[100].starts_with("[flotilla-agent] "), "{}", lines[100]);
    assert!(
        lines[100].contains(" loki: 900 lines were dropped, oldest first, while http://"),
        "{}",
        lines[100]
    );
    let stats = shipper.stats();
    assert_eq!((stats.queued_lines, stats.dropped, stats.shipped), (0, 900, 101));
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn on_stop_what_is_queued_gets_a_last_push() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Accept).await;
    // A linger far longer than the test: only the stop sends the line.
    let settings =
        LokiSettings { linger: Duration::from_secs(3600), ..fast_settings(&receiver.url()) };
    let shipper = LokiShipper::new(settings, LokiCounters::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(shipper.clone().run(labels(), stopped));
    shipper.push_line("the last words");
    tokio::task::yield_now().await;
    assert!(receiver.lines().is_empty());
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(receiver.lines(), ["the last words"]);
    assert_eq!(receiver.received()[0].labels["version"], "none");
}
