//! One node's view of the fleet: every node's gossiped counter, when each peer was last heard
//! from directly, and when its counter last advanced (directly or through others' gossip).
//!
//! Pure state, no IO: the clock is a parameter. Views merge by taking, for every node, the larger
//! counter, so merging is idempotent and order does not matter; a node merges its own entry too,
//! so after a restart it resumes from the highest value its peers remember.
//!
//! The view is also the node's membership: which nodes hosts.yaml lists and at what address.
//! [`View::set_hosts`] takes a reread hosts.yaml; a node that stays keeps its counter and when it
//! was heard from, a node added starts at 0 and unheard, a node removed is forgotten.
//!
//! Wire format (the body of `POST /gossip` and of its reply): one `name counter` pair per line,
//! e.g. `node-0 17\nnode-1 15\n`. The sender names itself in the `fleet-app-from` header.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::hosts::Host;

/// Most pairs accepted in one gossip body: far more than any example fleet, small enough that
/// a confused sender cannot make a node allocate much.
pub const MAX_PAIRS: usize = 10_000;

#[derive(Debug)]
pub struct View {
    me: String,
    /// Every node in hosts.yaml, this one included, in hosts.yaml order.
    nodes: Vec<NodeState>,
    /// Name → index in `nodes`: merges stay linear in the body even for large fleets.
    index: HashMap<String, usize>,
}

#[derive(Debug)]
struct NodeState {
    name: String,
    /// Where peers reach it, from hosts.yaml.
    ip: IpAddr,
    counter: u64,
    /// When this node was last heard from (never for this node itself).
    last_heard: Option<Instant>,
    /// When its counter last grew in this view, by a merge.
    last_advanced: Option<Instant>,
}

/// One peer as `/peers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus<'a> {
    pub name: &'a str,
    pub ip: IpAddr,
    pub counter: u64,
    pub last_heard_ago: Option<Duration>,
}

impl View {
    /// A view of `hosts` (all of hosts.yaml) held by the node called `me`, all counters at 0.
    pub fn new(me: &str, hosts: &[Host]) -> View {
        let mut view = View { me: me.to_owned(), nodes: Vec::new(), index: HashMap::new() };
        view.set_hosts(hosts);
        view
    }

    /// Replaces the membership with `hosts` (all of a reread hosts.yaml, in its order) and says
    /// how the peers changed. Nodes that stay keep their counter and when they were last heard
    /// from and advanced, even at a new address (a machine replaced under its name resumes its
    /// counter from what its peers remember); added nodes start at 0, removed ones are dropped.
    pub fn set_hosts(&mut self, hosts: &[Host]) -> HostsChange {
        let mut change = HostsChange::default();
        let mut old: HashMap<String, NodeState> =
            self.nodes.drain(..).map(|node| (node.name.clone(), node)).collect();
        for host in hosts {
            let node = match old.remove(&host.name) {
                Some(mut node) => {
                    if node.ip != host.ip && host.name != self.me {
                        change.moved.push(host.name.clone());
                    }
                    node.ip = host.ip;
                    node
                }
                None => {
                    if host.name != self.me {
                        change.added.push(host.name.clone());
                    }
                    NodeState {
                        name: host.name.clone(),
                        ip: host.ip,
                        counter: 0,
                        last_heard: None,
                        last_advanced: None,
                    }
                }
            };
            self.nodes.push(node);
        }
        // Removed in the order the old file listed them.
        let mut removed: Vec<NodeState> = old.into_values().collect();
        removed.retain(|node| node.name != self.me);
        removed.sort_by_key(|node| self.removed_order(&node.name));
        change.removed = removed.into_iter().map(|node| node.name).collect();
        self.index =
            self.nodes.iter().enumerate().map(|(i, node)| (node.name.clone(), i)).collect();
        change
    }

    /// Where `name` was in the view before [`View::set_hosts`] rebuilt it (from the old index).
    fn removed_order(&self, name: &str) -> usize {
        self.index.get(name).copied().unwrap_or(usize::MAX)
    }

    /// Starts a gossip round: increments this node's own counter and returns its new value.
    pub fn tick(&mut self) -> u64 {
        match self.index.get(&self.me).map(|i| &mut self.nodes[*i]) {
            Some(own) => {
                own.counter += 1;
                own.counter
            }
            None => 0,
        }
    }

    /// Merges received pairs by max at `now`. Names not in hosts.yaml are ignored; returns
    /// how many.
    pub fn merge(&mut self, pairs: &[(String, u64)], now: Instant) -> usize {
        let mut unknown = 0;
        for (name, counter) in pairs {
            match self.index.get(name).map(|i| &mut self.nodes[*i]) {
                Some(node) => {
                    if *counter > node.counter {
                        node.counter = *counter;
                        node.last_advanced = Some(now);
                    }
                }
                None => unknown += 1,
            }
        }
        unknown
    }

    /// Records that `peer` answered or sent gossip at `now`. False if it is not a peer.
    pub fn heard_from(&mut self, peer: &str, now: Instant) -> bool {
        if peer == self.me {
            return false;
        }
        match self.index.get(peer).map(|i| &mut self.nodes[*i]) {
            Some(node) => {
                node.last_heard = Some(now);
                true
            }
            None => false,
        }
    }

    /// The whole view in the wire format.
    pub fn encode(&self) -> String {
        self.nodes.iter().map(|node| format!("{} {}\n", node.name, node.counter)).collect()
    }

    /// Every node's counter, this node's included, in hosts.yaml order.
    pub fn counters(&self) -> impl Iterator<Item = (&str, u64)> {
        self.nodes.iter().map(|node| (node.name.as_str(), node.counter))
    }

    /// How many peers (nodes but this one) the view holds.
    pub fn peer_count(&self) -> usize {
        self.nodes.iter().filter(|node| node.name != self.me).count()
    }

    pub fn own_counter(&self) -> u64 {
        self.counters().find(|(name, _)| *name == self.me).map_or(0, |(_, counter)| counter)
    }

    /// The peers (every node but this one), in hosts.yaml order.
    pub fn peers(&self, now: Instant) -> impl Iterator<Item = PeerStatus<'_>> {
        self.nodes.iter().filter(|node| node.name != self.me).map(move |node| PeerStatus {
            name: &node.name,
            ip: node.ip,
            counter: node.counter,
            last_heard_ago: node.last_heard.map(|at| now.saturating_duration_since(at)),
        })
    }

    /// Names of the peers seen within `window` before `now`: heard from directly, or whose
    /// counter advanced (so they are alive and gossiping, even if this node has not talked to
    /// them lately).
    pub fn peers_seen(&self, now: Instant, window: Duration) -> Vec<&str> {
        let recent =
            |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) <= window);
        self.nodes
            .iter()
            .filter(|node| node.name != self.me)
            .filter(|node| recent(node.last_heard) || recent(node.last_advanced))
            .map(|node| node.name.as_str())
            .collect()
    }
}

/// How a reread hosts.yaml changed this node's peers, each list in file order (removed: in the
/// old file's order). This node itself never appears.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Still listed, at a new address.
    pub moved: Vec<String>,
}

impl HostsChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.moved.is_empty()
    }
}

/// `added node-5, node-6; removed node-2; moved node-3`, only the parts that apply, or
/// `unchanged`.
impl fmt::Display for HostsChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("unchanged");
        }
        let parts = [("added", &self.added), ("removed", &self.removed), ("moved", &self.moved)];
        let mut separator = "";
        for (what, names) in parts.into_iter().filter(|(_, names)| !names.is_empty()) {
            write!(f, "{separator}{what} {}", names.join(", "))?;
            separator = "; ";
        }
        Ok(())
    }
}

/// Parses a gossip body: `name counter` per line, blank lines ignored.
pub fn decode(body: &str) -> Result<Vec<(String, u64)>, String> {
    let mut pairs = Vec::new();
    for (index, line) in body.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(name), counter, None) = (words.next(), words.next(), words.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {}: expected `name counter`, found {line:?}", index + 1));
        };
        let counter = counter.and_then(|counter| counter.parse().ok()).ok_or_else(|| {
            format!("line {}: expected `name counter`, found {line:?}", index + 1)
        })?;
        if pairs.len() == MAX_PAIRS {
            return Err(format!("more than {MAX_PAIRS} pairs"));
        }
        pairs.push((name.to_owned(), counter));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::test_hosts;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(name, counter)| ((*name).to_owned(), *counter)).collect()
    }

    #[test]
    fn merge_takes_the_max_and_ignores_strangers() {
        let mut view = View::new("a", &test_hosts(&["a", "b", "c"]));
        assert_eq!(view.tick(), 1);
        let now = Instant::now();
        assert_eq!(view.merge(&pairs(&[("b", 5), ("c", 2), ("zed", 9)]), now), 1);
        assert_eq!(view.merge(&pairs(&[("b", 3), ("a", 7)]), now), 0);
        assert_eq!(view.counters().collect::<Vec<_>>(), vec![("a", 7), ("b", 5), ("c", 2)]);
        assert_eq!(view.tick(), 8);
        assert_eq!(view.own_counter(), 8);
    }

    #[test]
    fn a_peer_whose_counter_advances_through_others_counts_as_seen() {
        let start = Instant::now();
        let mut view = View::new("a", &test_hosts(&["a", "b", "c"]));
        let window = Duration::from_secs(5);
        view.merge(&pairs(&[("c", 4)]), start);
        assert_eq!(view.peers_seen(start + Duration::from_secs(1), window), vec!["c"]);
        // The same counter again is no sign of life.
        view.merge(&pairs(&[("c", 4)]), start + Duration::from_secs(4));
        assert!(view.peers_seen(start + Duration::from_secs(6), window).is_empty());
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let mut view = View::new("a", &test_hosts(&["a", "b"]));
        view.tick();
        assert_eq!(view.encode(), "a 1\nb 0\n");
        assert_eq!(decode(&view.encode()).unwrap(), pairs(&[("a", 1), ("b", 0)]));
        assert_eq!(decode("\n  x   3 \n\n").unwrap(), pairs(&[("x", 3)]));
        assert_eq!(decode("").unwrap(), vec![]);
    }

    #[test]
    fn decode_refuses_malformed_lines() {
        let expected = |line: &str| format!("line 2: expected `name counter`, found {line:?}");
        for bad in ["b", "b -1", "b 1 2", "b one"] {
            assert_eq!(decode(&format!("a 1\n{bad}\n")).unwrap_err(), expected(bad));
        }
    }

    #[test]
    fn seen_means_heard_within_the_window() {
        let start = Instant::now();
        let mut view = View::new("a", &test_hosts(&["a", "b", "c", "d"]));
        assert!(view.heard_from("b", start));
        assert!(view.heard_from("c", start + Duration::from_secs(4)));
        assert!(!view.heard_from("a", start), "a node does not hear itself");
        assert!(!view.heard_from("zed", start));
        let now = start + Duration::from_secs(5);
        assert_eq!(view.peers_seen(now, Duration::from_secs(5)), vec!["b", "c"]);
        assert_eq!(view.peers_seen(now, Duration::from_secs(2)), vec!["c"]);
        let statuses: Vec<_> = view.peers(now).collect();
        assert_eq!(
            statuses,
            vec![
                PeerStatus {
                    name: "b",
                    ip: ip(2),
                    counter: 0,
                    last_heard_ago: Some(Duration::from_secs(5))
                },
                PeerStatus {
                    name: "c",
                    ip: ip(3),
                    counter: 0,
                    last_heard_ago: Some(Duration::from_secs(1))
                },
                PeerStatus { name: "d", ip: ip(4), counter: 0, last_heard_ago: None },
            ]
        );
    }

    #[test]
    fn set_hosts_keeps_staying_nodes_and_names_the_change() {
        let start = Instant::now();
        let old = test_hosts(&["a", "b", "c", "d"]);
        let mut view = View::new("a", &old);
        view.tick();
        view.merge(&pairs(&[("b", 5), ("c", 3), ("d", 9)]), start);
        view.heard_from("b", start);
        // c is gone, e and f are new, d moved to another address, b stays where it was.
        let [a, b, _, d] = old.try_into().expect("four hosts");
        let [e, f] = test_hosts(&["e", "f"]).try_into().expect("two hosts");
        let hosts =
            [Host { ip: ip(60), ..f }, a, b, Host { ip: ip(40), ..d }, Host { ip: ip(50), ..e }];
        let change = view.set_hosts(&hosts);
        assert_eq!(
            change,
            HostsChange {
                added: vec!["f".to_owned(), "e".to_owned()],
                removed: vec!["c".to_owned()],
                moved: vec!["d".to_owned()],
            }
        );
        assert_eq!(view.peer_count(), 4);
        assert_eq!(
            view.counters().collect::<Vec<_>>(),
            vec![("f", 0), ("a", 1), ("b", 5), ("d", 9), ("e", 0)],
            "the new file's order; counters kept for who stays"
        );
        let now = start + Duration::from_secs(1);
        let statuses: Vec<_> = view.peers(now).collect();
        assert_eq!(
            statuses[1],
            PeerStatus {
                name: "b",
                ip: ip(2),
                counter: 5,
                last_heard_ago: Some(Duration::from_secs(1)),
            }
        );
        assert_eq!(statuses[2].ip, ip(40), "d is reached at its new address");
        assert_eq!(view.peers_seen(now, Duration::from_secs(5)), vec!["b", "d"]);
        // The removed node is a stranger now; the added ones take gossip.
        assert!(!view.heard_from("c", now));
        assert_eq!(view.merge(&pairs(&[("c", 50), ("e", 2)]), now), 1);
        assert!(view.heard_from("e", now));
        assert_eq!(view.own_counter(), 1);
        assert_eq!(view.tick(), 2);
    }

    #[test]
    fn the_same_hosts_again_change_nothing() {
        let hosts = test_hosts(&["a", "b"]);
        let mut view = View::new("a", &hosts);
        view.merge(&pairs(&[("b", 4)]), Instant::now());
        assert!(view.set_hosts(&hosts).is_empty());
        assert_eq!(view.counters().collect::<Vec<_>>(), vec![("a", 0), ("b", 4)]);
    }

    #[test]
    fn the_change_reads_as_one_line() {
        let names = |list: &[&str]| list.iter().map(|name| (*name).to_owned()).collect();
        let change = |added, removed, moved| HostsChange {
            added: names(added),
            removed: names(removed),
            moved: names(moved),
        };
        let cases = [
            (change(&[], &[], &[]), "unchanged"),
            (
                change(&["node-5", "node-6"], &["node-2"], &[]),
                "added node-5, node-6; removed node-2",
            ),
            (change(&[], &["node-2", "node-3"], &[]), "removed node-2, node-3"),
            (change(&["node-9"], &[], &["node-1"]), "added node-9; moved node-1"),
            (change(&[], &[], &["node-1"]), "moved node-1"),
        ];
        for (change, expected) in cases {
            assert_eq!(change.to_string(), expected);
        }
    }
}
