//! One node's view of the fleet: every node's gossiped counter, when each peer was last heard
//! from directly, and when its counter last advanced (directly or through others' gossip).
//!
//! Pure state, no IO: the clock is a parameter. Views merge by taking, for every node, the larger
//! counter, so merging is idempotent and order does not matter; a node merges its own entry too,
//! so after a restart it resumes from the highest value its peers remember.
//!
//! Wire format (the body of `POST /gossip` and of its reply): one `name counter` pair per line,
//! e.g. `node-0 17\nnode-1 15\n`. The sender names itself in the `fleet-app-from` header.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    pub counter: u64,
    pub last_heard_ago: Option<Duration>,
}

impl View {
    /// A view of `nodes` (all of hosts.yaml) held by the node called `me`, all counters at 0.
    pub fn new<'a>(me: &str, nodes: impl IntoIterator<Item = &'a str>) -> View {
        let nodes: Vec<NodeState> = nodes
            .into_iter()
            .map(|name| NodeState {
                name: name.to_owned(),
                counter: 0,
                last_heard: None,
                last_advanced: None,
            })
            .collect();
        let index = nodes.iter().enumerate().map(|(i, node)| (node.name.clone(), i)).collect();
        View { me: me.to_owned(), nodes, index }
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

    pub fn own_counter(&self) -> u64 {
        self.counters().find(|(name, _)| *name == self.me).map_or(0, |(_, counter)| counter)
    }

    /// The peers (every node but this one), in hosts.yaml order.
    pub fn peers(&self, now: Instant) -> impl Iterator<Item = PeerStatus<'_>> {
        self.nodes.iter().filter(|node| node.name != self.me).map(move |node| PeerStatus {
            name: &node.name,
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

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(name, counter)| ((*name).to_owned(), *counter)).collect()
    }

    #[test]
    fn merge_takes_the_max_and_ignores_strangers() {
        let mut view = View::new("a", ["a", "b", "c"]);
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
        let mut view = View::new("a", ["a", "b", "c"]);
        let window = Duration::from_secs(5);
        view.merge(&pairs(&[("c", 4)]), start);
        assert_eq!(view.peers_seen(start + Duration::from_secs(1), window), vec!["c"]);
        // The same counter again is no sign of life.
        view.merge(&pairs(&[("c", 4)]), start + Duration::from_secs(4));
        assert!(view.peers_seen(start + Duration::from_secs(6), window).is_empty());
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let mut view = View::new("a", ["a", "b"]);
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
        let mut view = View::new("a", ["a", "b", "c", "d"]);
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
                PeerStatus { name: "b", counter: 0, last_heard_ago: Some(Duration::from_secs(5)) },
                PeerStatus { name: "c", counter: 0, last_heard_ago: Some(Duration::from_secs(1)) },
                PeerStatus { name: "d", counter: 0, last_heard_ago: None },
            ]
        );
    }
}
