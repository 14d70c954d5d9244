//! The gossip loop: every interval, increment the own counter and push the whole view to
//! `fanout` peers, taken in turn so every peer is contacted every ⌈peers / fanout⌉ rounds; each
//! reply carries the peer's view, which is merged too (push-pull). Counters so spread through
//! the fleet in a few rounds while each node sends `fanout` requests a round, whatever the
//! fleet's size.
//!
//! Sends to all peers run at once and each has its own deadline ([`send_timeout`]), so a round
//! lasts at most one deadline and a dead peer delays nobody. A failed send (peer not up yet,
//! timeout, bad reply) is counted in `fleet_app_gossip_errors_total` and shown in the next status
//! line; it is never fatal. Every [`STATUS_EVERY`] one status line tells who is seen.
//!
//! The peers are taken from the view at the start of each round, so a hosts.yaml reread on
//! SIGHUP applies from the next round: removed peers are no longer contacted, added ones are.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::app::App;
use crate::log::log;
use crate::server::{FROM_HEADER, MAX_GOSSIP_BYTES};
use crate::view::{PeerStatus, decode};

/// How often the status line is logged.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Deadline of one send (connect, request, reply): the interval, kept within 200 ms..2 s.
pub fn send_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// Gossips until the task is aborted.
pub async fn run(app: Arc<App>) {
    let timeout = send_timeout(app.interval);
    let mut ticker = tokio::time::interval(app.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Why each peer's last send failed; cleared by a success.
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut round: usize = 0;
    loop {
        ticker.tick().await;
        app.metrics.gossip_rounds.inc();
        let (body, targets) = {
            let mut view = app.view();
            view.tick();
            let peers: Vec<PeerStatus<'_>> = view.peers(Instant::now()).collect();
            let targets: Vec<(String, IpAddr)> = peers_for_round(&peers, app.fanout, round)
                .map(|peer| (peer.name.to_owned(), peer.ip))
                .collect();
            (Bytes::from(view.encode()), targets)
        };
        let mut sends = JoinSet::new();
        for (peer_name, ip) in targets {
            let address = SocketAddr::new(ip, app.port);
            let (from, body) = (app.name.clone(), body.clone());
            sends.spawn(async move {
                let result = tokio::time::timeout(timeout, exchange(address, &from, body))
                    .await
                    .unwrap_or_else(|_| Err(format!("no reply within {} ms", timeout.as_millis())));
                (peer_name, result)
            });
        }
        while let Some(joined) = sends.join_next().await {
            let Ok((peer_name, result)) = joined else {
                app.metrics.gossip_errors.inc();
                continue;
            };
            match result {
                Ok(pairs) => {
                    let mut view = app.view();
                    let now = Instant::now();
                    // A peer a reload removed during the round is a stranger now: its reply is
                    // dropped, as the server drops a stranger's gossip.
                    if view.heard_from(&peer_name, now) {
                        view.merge(&pairs, now);
                    }
                    failures.remove(&peer_name);
                }
                Err(error) => {
                    app.metrics.gossip_errors.inc();
                    failures.insert(peer_name, error);
                }
            }
        }
        round = round.wrapping_add(1);
        if Instant::now() >= next_status {
            // Forget the failures of peers a reload removed.
            let view = app.view();
            failures.retain(|peer, _| view.peers(Instant::now()).any(|known| known.name == peer));
            drop(view);
            log!("{}", status_line(&app, &failures));
            next_status = Instant::now() + STATUS_EVERY;
        }
    }
}

/// The peers to contact in `round`: `fanout` of them, continuing where the last round stopped.
fn peers_for_round<T>(peers: &[T], fanout: usize, round: usize) -> impl Iterator<Item = &T> {
    let count = fanout.min(peers.len());
    let start = if peers.is_empty() { 0 } else { round.wrapping_mul(count) % peers.len() };
    (0..count).map(move |i| &peers[(start + i) % peers.len()])
}

/// `node-0 greeting="hello" sees 2/3 peers: node-1 node-2; not seen: node-3 (why)`.
fn status_line(app: &App, failures: &BTreeMap<String, String>) -> String {
    let view = app.view();
    let now = Instant::now();
    let seen = view.peers_seen(now, app.seen_window());
    let mut line = format!(
        "{} greeting={:?} sees {}/{} peers",
        app.name,
        app.greeting,
        seen.len(),
        view.peer_count()
    );
    if !seen.is_empty() {
        line.push_str(": ");
        line.push_str(&seen.join(" "));
    }
    let missing: Vec<String> = view
        .peers(now)
        .filter(|peer| !seen.contains(&peer.name))
        .map(|peer| match failures.get(peer.name) {
            Some(why) => format!("{} ({why})", peer.name),
            None => peer.name.to_owned(),
        })
        .collect();
    if !missing.is_empty() {
        line.push_str("; not seen: ");
        line.push_str(&missing.join(", "));
    }
    line
}

/// POSTs this node's view to `address` and returns the view in the reply.
async fn exchange(
    address: SocketAddr,
    from: &str,
    body: Bytes,
) -> Result<Vec<(String, u64)>, String> {
    let stream = TcpStream::connect(address).await.map_err(|error| error.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    let request = Request::post("/gossip")
        .header(HOST, address.to_string())
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(FROM_HEADER, from)
        .body(Full::new(body))
        .map_err(|error| error.to_string())?;
    // The request owns `sender`; dropping it when done lets `connection` finish, so both end
    // together and nothing outlives the caller's timeout.
    let request_and_reply = async move {
        let response = sender.send_request(request).await.map_err(|error| error.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_GOSSIP_BYTES)
            .collect()
            .await
            .map_err(|error| format!("reading the reply: {error}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", text.trim()));
        }
        decode(&text).map_err(|error| format!("bad reply: {error}"))
    };
    let (result, _connection_end) = tokio::join!(request_and_reply, connection);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_take_peers_in_turn_and_cover_all() {
        let peers: Vec<u32> = (0..5).collect();
        let round = |r| peers_for_round(&peers, 2, r).copied().collect::<Vec<_>>();
        assert_eq!(round(0), vec![0, 1]);
        assert_eq!(round(1), vec![2, 3]);
        assert_eq!(round(2), vec![4, 0]);
        assert_eq!(peers_for_round(&peers, 8, 3).count(), 5, "never more than all peers");
        assert_eq!(peers_for_round(&Vec::<u32>::new(), 8, 3).count(), 0);
    }

    #[test]
    fn the_send_timeout_follows_the_interval_within_bounds() {
        assert_eq!(send_timeout(Duration::from_millis(10)), Duration::from_millis(200));
        assert_eq!(send_timeout(Duration::from_millis(1000)), Duration::from_millis(1000));
        assert_eq!(send_timeout(Duration::from_secs(60)), Duration::from_secs(2));
    }
}
