//! The Prometheus metrics `GET /metrics` serves, in the OpenMetrics text format.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `fleet_app_peers` | gauge | peers in hosts.yaml other than this node |
//! | `fleet_app_peers_seen` | gauge | peers heard from in the last 5 intervals |
//! | `fleet_app_counter{node}` | gauge | this node's view of every node's gossiped counter |
//! | `fleet_app_info{name,greeting,version}` | gauge, always 1 | what runs here |
//! | `fleet_app_gossip_rounds_total` | counter | gossip rounds started |
//! | `fleet_app_gossip_errors_total` | counter | gossip sends that failed (peer down, timeout, bad reply) |
//! | `fleet_app_hosts_reloads_total{outcome}` | counter | hosts.yaml rereads on SIGHUP, `ok` or `failed` (old peers kept) |
//!
//! The gauges that describe the view are set from it when a scrape arrives, so they are never
//! stale and follow a reloaded hosts.yaml at once; the gossip counters are incremented by the
//! gossip loop, the reload counter by [`crate::reload`].

use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::view::View;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    peers: Gauge,
    peers_seen: Gauge,
    counter: Family<Labels, Gauge>,
    pub gossip_rounds: Counter,
    pub gossip_errors: Counter,
    hosts_reloads: Family<Labels, Counter>,
}

/// How a reread of hosts.yaml ended: the `outcome` label of `fleet_app_hosts_reloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Ok,
    /// Unreadable, invalid, or no longer listing this node: the old peers are kept.
    Failed,
}

impl ReloadOutcome {
    const ALL: [ReloadOutcome; 2] = [ReloadOutcome::Ok, ReloadOutcome::Failed];

    fn labels(self) -> Labels {
        let outcome = match self {
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Failed => "failed",
        };
        vec![("outcome".to_owned(), outcome.to_owned())]
    }
}

impl Metrics {
    pub fn new(name: &str, greeting: &str) -> Metrics {
        let mut registry = Registry::default();
        let peers = Gauge::default();
        registry.register(
            "fleet_app_peers",
            "Peers in hosts.yaml other than this node",
            peers.clone(),
        );
        let peers_seen = Gauge::default();
        registry.register(
            "fleet_app_peers_seen",
            "Peers heard from in the last 5 gossip intervals",
            peers_seen.clone(),
        );
        let counter = Family::<Labels, Gauge>::default();
        registry.register(
            "fleet_app_counter",
            "This node's view of each node's gossiped counter",
            counter.clone(),
        );
        let info = Family::<Labels, Gauge>::default();
        registry.register("fleet_app_info", "What runs on this node (always 1)", info.clone());
        info.get_or_create(&vec![
            ("name".to_owned(), name.to_owned()),
            ("greeting".to_owned(), greeting.to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ])
        .set(1);
        // Registered without `_total`: the encoder appends it to counters.
        let gossip_rounds = Counter::default();
        registry.register(
            "fleet_app_gossip_rounds",
            "Gossip rounds started",
            gossip_rounds.clone(),
        );
        let gossip_errors = Counter::default();
        registry.register(
            "fleet_app_gossip_errors",
            "Gossip sends to a peer that failed (not up, timed out, bad reply)",
            gossip_errors.clone(),
        );
        let hosts_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "fleet_app_hosts_reloads",
            "Rereads of hosts.yaml on SIGHUP, by outcome (failed: the old peers are kept)",
            hosts_reloads.clone(),
        );
        // Both outcomes show from the start, at 0, so a rate or an alert needs no `absent()`.
        for outcome in ReloadOutcome::ALL {
            drop(hosts_reloads.get_or_create(&outcome.labels()));
        }
        Metrics {
            registry,
            peers,
            peers_seen,
            counter,
            gossip_rounds,
            gossip_errors,
            hosts_reloads,
        }
    }

    pub fn count_reload(&self, outcome: ReloadOutcome) {
        self.hosts_reloads.get_or_create(&outcome.labels()).inc();
    }

    /// Sets the view's gauges as of `now` and encodes every metric.
    pub fn render(&self, view: &View, now: Instant, seen_window: Duration) -> String {
        self.peers.set(gauge_value(view.peers(now).count() as u64));
        self.peers_seen.set(gauge_value(view.peers_seen(now, seen_window).len() as u64));
        // Cleared first, so a node removed from hosts.yaml leaves no stale series behind.
        self.counter.clear();
        for (node, counter) in view.counters() {
            self.counter
                .get_or_create(&vec![("node".to_owned(), node.to_owned())])
                .set(gauge_value(counter));
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Gauges are `i64`; a counter beyond `i64::MAX` (never, at one tick per 10 ms) shows as the max.
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::test_hosts;

    #[test]
    fn every_metric_is_rendered() {
        let metrics = Metrics::new("a", "say \"hi\"");
        let now = Instant::now();
        let mut view = View::new("a", &test_hosts(&["a", "b", "c"]));
        view.tick();
        view.merge(&[("b".to_owned(), 4)], now);
        view.heard_from("b", now);
        metrics.gossip_rounds.inc();
        metrics.count_reload(ReloadOutcome::Failed);
        let text = metrics.render(&view, now, Duration::from_secs(5));
        for line in [
            "fleet_app_peers 2",
            "fleet_app_peers_seen 1",
            r#"fleet_app_counter{node="a"} 1"#,
            r#"fleet_app_counter{node="b"} 4"#,
            r#"fleet_app_counter{node="c"} 0"#,
            &format!(
                r#"fleet_app_info{{name="a",greeting="say \"hi\"",version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
            "fleet_app_gossip_rounds_total 1",
            "fleet_app_gossip_errors_total 0",
            r#"fleet_app_hosts_reloads_total{outcome="ok"} 0"#,
            r#"fleet_app_hosts_reloads_total{outcome="failed"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|got| got == line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_node_removed_from_hosts_leaves_no_series() {
        let metrics = Metrics::new("a", "hi");
        let now = Instant::now();
        let mut view = View::new("a", &test_hosts(&["a", "b", "c"]));
        metrics.render(&view, now, Duration::from_secs(5));
        view.set_hosts(&test_hosts(&["a", "b"]));
        let text = metrics.render(&view, now, Duration::from_secs(5));
        assert!(text.lines().any(|line| line == "fleet_app_peers 1"), "{text}");
        assert!(text.lines().any(|line| line == r#"fleet_app_counter{node="b"} 0"#), "{text}");
        assert!(!text.contains(r#"node="c""#), "c is gone:\n{text}");
    }
}
