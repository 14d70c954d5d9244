//! Instance state timing, and public IPs that are loopback addresses from the pool, recycled.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::Aws;
use flotilla_emulator::control::StateTiming;

const PENDING: Duration = Duration::from_millis(1500);
const SHUTTING_DOWN: Duration = Duration::from_millis(1000);

#[tokio::test]
async fn pending_then_running_with_a_public_ip_then_shutting_down_then_terminated() {
    let aws = Aws::new("timing");
    aws.scope
        .set_timing(StateTiming { pending: PENDING, shutting_down: SHUTTING_DOWN })
        .await
        .unwrap();
    let launched = Instant::now();
    let reply = aws
        .ec2("RunInstances", &[("ImageId", "ami-1"), ("MinCount", "1"), ("MaxCount", "1")])
        .await
        .ok();
    assert!(reply.body.contains("<name>pending</name>"), "{}", reply.body);
    let id = reply.expect_value("instanceId");
    let (state, ip) = aws.state(&id).await;
    assert_eq!((state.as_str(), ip), ("pending", None), "no public IP while pending");

    let ip = aws
        .wait_state(&id, "running", Duration::from_secs(10))
        .await
        .expect("a public IP once running");
    assert!(
        launched.elapsed() >= PENDING - Duration::from_millis(100),
        "running after {:?}",
        launched.elapsed()
    );
    let ip: Ipv4Addr = ip.parse().unwrap();
    assert!(ip.is_loopback(), "{ip}");

    let terminated = Instant::now();
    let reply = aws.terminate(std::slice::from_ref(&id)).await;
    assert!(reply.body.contains("<name>shutting-down</name>"), "{}", reply.body);
    let (state, still) = aws.state(&id).await;
    assert_eq!(state, "shutting-down");
    assert_eq!(still, Some(ip.to_string()), "the address stays while shutting down");
    let gone = aws.wait_state(&id, "terminated", Duration::from_secs(10)).await;
    assert!(terminated.elapsed() >= SHUTTING_DOWN - Duration::from_millis(100));
    assert_eq!(gone, None);
}

#[tokio::test]
async fn stopping_then_stopped_and_started_again_with_a_new_address() {
    let aws = Aws::new("stopstart");
    aws.scope
        .set_timing(StateTiming {
            pending: Duration::from_millis(300),
            shutting_down: Duration::from_millis(300),
        })
        .await
        .unwrap();
    let id = aws.launch(1, &[]).await.remove(0);
    let first = aws.wait_state(&id, "running", Duration::from_secs(10)).await.unwrap();
    let stop = aws.ec2("StopInstances", &[("InstanceId.1", &id)]).await.ok();
    assert!(stop.body.contains("<name>stopping</name>"), "{}", stop.body);
    assert_eq!(aws.state(&id).await.0, "stopping");
    assert_eq!(aws.wait_state(&id, "stopped", Duration::from_secs(10)).await, None);
    aws.ec2("StartInstances", &[("InstanceId.1", &id)]).await.ok();
    assert_eq!(aws.state(&id).await, ("pending".to_owned(), None));
    let second = aws.wait_state(&id, "running", Duration::from_secs(10)).await.unwrap();
    assert_ne!(first, second, "a stopped instance gives its address back");
    aws.terminate(&[id]).await;
}

#[tokio::test]
async fn public_ips_come_from_the_loopback_pool_and_go_back_on_termination() {
    let aws = Aws::new("pool-ips");
    aws.instant_states().await;
    let ids = aws.launch(3, &[]).await;
    let pool = aws.emulator.public_ips().await.unwrap();
    assert!(pool.size >= 254);
    let mut addresses = Vec::new();
    for id in &ids {
        let (state, ip) = aws.state(id).await;
        assert_eq!(state, "running");
        let ip: Ipv4Addr = ip.expect("a public IP").parse().unwrap();
        assert!(ip.is_loopback() && ip.octets()[1] >= 100, "{ip} is not a leased loopback address");
        assert_eq!(pool.in_use.get(&ip), Some(id), "{ip} is held by {id}");
        addresses.push(ip);
    }
    let listed = aws.emulator.instances().await.unwrap();
    for (id, ip) in ids.iter().zip(&addresses) {
        let info = listed.iter().find(|i| &i.id == id).unwrap();
        assert_eq!(info.public_ip, Some(*ip));
        assert_eq!(info.scope, aws.key());
    }

    aws.terminate(&ids).await;
    let pool = aws.emulator.public_ips().await.unwrap();
    for (id, ip) in ids.iter().zip(&addresses) {
        assert_ne!(pool.in_use.get(ip), Some(id), "{ip} went back to the pool");
    }

    // An elastic IP comes from the pool too, and goes back when released.
    let reply = aws.ec2("AllocateAddress", &[("Domain", "vpc")]).await.ok();
    let eip: Ipv4Addr = reply.expect_value("publicIp").parse().unwrap();
    let allocation = reply.expect_value("allocationId");
    assert_eq!(
        aws.emulator.public_ips().await.unwrap().in_use.get(&eip).map(String::as_str),
        Some("elastic-ip")
    );
    aws.ec2("ReleaseAddress", &[("AllocationId", &allocation)]).await.ok();
    assert!(!aws.emulator.public_ips().await.unwrap().in_use.contains_key(&eip));
}
