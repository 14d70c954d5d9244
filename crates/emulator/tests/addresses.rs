//! Public IPs are probed before they are handed out: an address on which something else on
//! this machine listens on the agent's port, its metrics port or the IMDS port is skipped.

mod common;

use std::net::{Ipv4Addr, TcpListener};

use common::Aws;

/// The agent's API port, its metrics port, and the IMDS port.
const PORTS: [u16; 3] = [7443, 9101, 1338];

#[tokio::test]
async fn an_address_whose_agent_metrics_or_imds_port_is_taken_is_skipped() {
    let aws = Aws::new("busy-addresses");
    aws.instant_states().await;
    let next = aws.emulator.public_ips().await.unwrap().next;
    assert!(next.len() >= PORTS.len(), "the pool shows its next addresses: {next:?}");
    // Another program holds one port on each of the next three addresses the pool would give.
    let held: Vec<(Ipv4Addr, TcpListener)> = next
        .iter()
        .zip(PORTS)
        .map(|(ip, port)| {
            let listener = TcpListener::bind((*ip, port))
                .unwrap_or_else(|error| panic!("binding {ip}:{port} from the test: {error}"));
            (*ip, listener)
        })
        .collect();

    let ids = aws.launch(3, &[]).await;
    for id in &ids {
        let (state, ip) = aws.state(id).await;
        assert_eq!(state, "running");
        let ip: Ipv4Addr = ip.expect("a public IP").parse().unwrap();
        for ((busy, _), port) in held.iter().zip(PORTS) {
            assert_ne!(ip, *busy, "{id} got {ip}, where port {port} is taken");
        }
    }
    let pool = aws.emulator.public_ips().await.unwrap();
    for (busy, _) in &held {
        assert!(!pool.in_use.contains_key(busy), "{busy} stays free: {pool:?}");
    }
    aws.terminate(&ids).await;
}
