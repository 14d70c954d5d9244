//! Who gets in: connections that have not yet proven anything have a budget of their own, apart
//! from the connections being served, so that a flood of the first kind cannot starve the
//! second.
//!
//! A connection is *pending* from the moment it is accepted until it proves itself: on the API,
//! until its TLS handshake (with a client certificate of the deployment) is complete; on the
//! metrics port, until it has sent a complete request head. Anyone who can reach a port can hold
//! pending connections open, and cheaply: a ClientHello sent a byte at a time, or a request head
//! a header at a time, keeps one open for the whole timeout. The policy:
//!
//! - Every connection is accepted at once; accepting never waits for room.
//! - At most `capacity` connections are pending at once, and at most `per_peer` of them from one
//!   IP address ([`PendingPolicy`]: 64 and 16 on the API, 32 and 8 on the metrics port).
//! - A new connection from an address that already has `per_peer` pending closes that address's
//!   oldest pending connection; otherwise, when `capacity` are pending, it closes the oldest
//!   pending connection of all.
//! - A pending connection that has not proven itself within 10 s is closed.
//! - A connection that proved itself leaves the pending set. On the API it then takes one of the
//!   slots for authenticated connections (waiting for one at most 10 s); the metrics port
//!   answers its one request and closes it.
//!
//! So connections opened once and left trickling are always the oldest, and go first: a client
//! whose handshake takes milliseconds is closed only if `capacity` new connections (or
//! `per_peer` new ones from its own address) arrive within those milliseconds. Refusing the
//! newcomer instead would let whoever came first hold the door shut for the whole timeout. What
//! this does not stop is a flood of new connections from many addresses arriving faster than
//! handshakes complete: that is volume, for the network in front of the machine (its security
//! groups) to stop.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// How many connections may be pending, in all and from one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingPolicy {
    pub(crate) capacity: usize,
    pub(crate) per_peer: usize,
}

/// The pending connections in the order they arrived, each with a value (what closes it).
#[derive(Debug)]
pub(crate) struct PendingSet<T> {
    policy: PendingPolicy,
    next_id: u64,
    entries: VecDeque<PendingEntry<T>>,
}

#[derive(Debug)]
struct PendingEntry<T> {
    id: u64,
    peer: IpAddr,
    value: T,
}

impl<T> PendingSet<T> {
    pub(crate) fn new(policy: PendingPolicy) -> PendingSet<T> {
        PendingSet { policy, next_id: 0, entries: VecDeque::new() }
    }

    /// Adds a connection from `peer`; returns its id, and the value of the connection it pushed
    /// out when the policy says one must go (see the module documentation).
    pub(crate) fn admit(&mut self, peer: IpAddr, value: T) -> (u64, Option<T>) {
        let from_peer = self.entries.iter().filter(|entry| entry.peer == peer).count();
        let evict = if from_peer >= self.policy.per_peer.max(1) {
            self.entries.iter().position(|entry| entry.peer == peer)
        } else if self.entries.len() >= self.policy.capacity.max(1) {
            Some(0)
        } else {
            None
        };
        let evicted = evict.and_then(|index| self.entries.remove(index)).map(|entry| entry.value);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.push_back(PendingEntry { id, peer, value });
        (id, evicted)
    }

    /// Takes connection `id` out of the set (it proved itself, or it is gone).
    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        let index = self.entries.iter().position(|entry| entry.id == id)?;
        self.entries.remove(index).map(|entry| entry.value)
    }
}

/// The pending connections of one server.
#[derive(Debug)]
pub(crate) struct PendingConnections {
    set: Mutex<PendingSet<oneshot::Sender<()>>>,
}

impl PendingConnections {
    pub(crate) fn new(policy: PendingPolicy) -> Arc<PendingConnections> {
        Arc::new(PendingConnections { set: Mutex::new(PendingSet::new(policy)) })
    }

    /// Admits a connection from `peer`, closing another pending one when the policy says so.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> (PendingTicket, Eviction) {
        let (close, closed) = oneshot::channel();
        let (id, evicted) = self.lock().admit(peer, close);
        if let Some(evicted) = evicted {
            // Its task may have ended in between: then there is nothing to close.
            let _ = evicted.send(());
        }
        (PendingTicket { id, connections: self.clone() }, Eviction(closed))
    }

    fn lock(&self) -> MutexGuard<'_, PendingSet<oneshot::Sender<()>>> {
        // The set stays consistent whatever a holder did: it only pushes and removes.
        self.set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection's place in the pending set: it leaves the set when released or dropped.
#[derive(Debug)]
pub(crate) struct PendingTicket {
    id: u64,
    connections: Arc<PendingConnections>,
}

impl PendingTicket {
    /// The connection proved itself: it is no longer pending (and can no longer be evicted).
    pub(crate) fn release(&self) {
        // Dropping the sender without sending tells the connection's `Eviction` it never comes.
        drop(self.connections.lock().remove(self.id));
    }
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        self.release();
    }
}

/// Tells a pending connection that it was pushed out.
#[derive(Debug)]
pub(crate) struct Eviction(oneshot::Receiver<()>);

impl Eviction {
    /// Resolves when the connection was pushed out of the pending set; never once it was
    /// released.
    pub(crate) async fn wait(&mut self) {
        if (&mut self.0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_oldest_pending_connection_goes_when_the_set_is_full() {
        let mut set = PendingSet::new(PendingPolicy { capacity: 3, per_peer: 3 });
        let addresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
        let admitted: Vec<_> =
            addresses.iter().map(|address| set.admit(ip(address), *address)).collect();
        let evicted: Vec<_> = admitted.iter().map(|(_, evicted)| *evicted).collect();
        assert_eq!(evicted, [None, None, None, Some("10.0.0.1"), Some("10.0.0.2")]);
        // One proved itself: there is room again, nobody goes.
        assert_eq!(set.remove(admitted[3].0), Some("10.0.0.4"));
        assert_eq!(set.remove(admitted[3].0), None);
        assert_eq!(set.admit(ip("10.0.0.6"), "10.0.0.6").1, None);
        assert_eq!(set.admit(ip("10.0.0.7"), "10.0.0.7").1, Some("10.0.0.3"));
    }

    #[test]
    fn one_address_pushes_out_its_own_connections_first() {
        let mut set = PendingSet::new(PendingPolicy { capacity: 4, per_peer: 2 });
        set.admit(ip("10.0.0.9"), "client");
        set.admit(ip("10.0.0.1"), "flood 1");
        set.admit(ip("10.0.0.1"), "flood 2");
        // However fast one address reconnects, it only closes its own connections.
        for n in 3..100 {
            let (_, evicted) = set.admit(ip("10.0.0.1"), "flood n");
            assert!(evicted.is_some_and(|evicted| evicted.starts_with("flood")), "{n}");
        }
        // Other addresses still share the rest, oldest first.
        assert_eq!(set.admit(ip("10.0.0.2"), "other").1, None);
        assert_eq!(set.admit(ip("10.0.0.3"), "third").1, Some("client"));
    }

    #[test]
    fn an_evicted_connection_is_told_and_a_released_one_never_is() {
        use futures_util::FutureExt;
        let connections = PendingConnections::new(PendingPolicy { capacity: 1, per_peer: 1 });
        let (first, mut first_eviction) = connections.admit(ip("10.0.0.1"));
        let (second, mut second_eviction) = connections.admit(ip("10.0.0.2"));
        assert_eq!(first_eviction.wait().now_or_never(), Some(()), "the first one was pushed out");
        drop(first);
        second.release();
        let (_third, _) = connections.admit(ip("10.0.0.3"));
        assert_eq!(second_eviction.wait().now_or_never(), None, "a released one stays");
    }
}
