//! Dedicated hosts: capacity per zone and injected `InsufficientHostCapacity`, ClientToken
//! idempotency, launches that land on their host, the Mac scrub after an instance, the 24-hour
//! release refusal on the scope's clock, and the tag filter flotilla adopts hosts by.

mod common;

use std::time::Duration;

use common::Aws;
use flotilla_emulator::control::{FaultRule, PoolFilter};

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn allocate(aws: &Aws, zone: &str, token: &str) -> common::Reply {
    aws.ec2(
        "AllocateHosts",
        &[
            ("AvailabilityZone", zone),
            ("InstanceType", "mac2.metal"),
            ("Quantity", "1"),
            ("ClientToken", token),
            ("TagSpecification.1.ResourceType", "dedicated-host"),
            ("TagSpecification.1.Tag.1.Key", "flotilla"),
            ("TagSpecification.1.Tag.1.Value", aws.key()),
        ],
    )
    .await
}

async fn host_state(aws: &Aws, host: &str) -> String {
    aws.ec2("DescribeHosts", &[("HostId.1", host)]).await.ok().expect_value("state")
}

async fn release(aws: &Aws, host: &str) -> common::Reply {
    aws.ec2("ReleaseHosts", &[("HostId.1", host)]).await.ok()
}

#[tokio::test]
async fn a_zone_at_its_capacity_refuses_and_the_same_token_answers_the_same_host() {
    let aws = Aws::new("hostcap");
    aws.scope.set_host_capacity(&[("us-east-1a", 1)]).await.unwrap();
    let first = allocate(&aws, "us-east-1a", "token-1").await.ok().expect_value("item");
    let again = allocate(&aws, "us-east-1a", "token-1").await.ok().expect_value("item");
    assert_eq!(first, again, "a ClientToken allocates once");
    let refused = allocate(&aws, "us-east-1a", "token-2").await;
    assert_eq!(refused.ec2_error(), "InsufficientHostCapacity", "{}", refused.body);
    let elsewhere = allocate(&aws, "us-east-1b", "token-3").await.ok().expect_value("item");
    assert_ne!(elsewhere, first);

    let tagged = aws
        .ec2("DescribeHosts", &[("Filter.1.Name", "tag:flotilla"), ("Filter.1.Value.1", aws.key())])
        .await
        .ok();
    let mut ids = tagged.values("hostId");
    ids.sort();
    let mut want = vec![first, elsewhere];
    want.sort();
    assert_eq!(ids, want, "the tag filter finds the scope's hosts: {}", tagged.body);
}

#[tokio::test]
async fn an_injected_insufficient_host_capacity_refuses_one_zone_only() {
    let aws = Aws::new("hostinject");
    let dry =
        PoolFilter { availability_zone: Some("us-east-1a".to_owned()), ..PoolFilter::default() };
    let rule = FaultRule::new("ec2", "AllocateHosts", "InsufficientHostCapacity").pool(dry);
    aws.scope.set_faults(&[rule]).await.unwrap();
    let refused = allocate(&aws, "us-east-1a", "inject-1").await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert_eq!(refused.ec2_error(), "InsufficientHostCapacity");
    allocate(&aws, "us-east-1b", "inject-2").await.ok();
}

#[tokio::test]
async fn a_mac_instance_lands_on_its_host_and_the_host_scrubs_after_it() {
    let aws = Aws::new("hostscrub");
    aws.instant_states().await;
    // A scrub of an hour on the scope's clock, ended by moving the clock, not by waiting.
    aws.scope.set_host_scrub(Duration::from_secs(3600)).await.unwrap();
    let host = allocate(&aws, "us-east-1a", "scrub-1").await.ok().expect_value("item");
    let placed = [
        ("ImageId", "ami-1"),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("InstanceType", "mac2.metal"),
        ("Placement.Tenancy", "host"),
        ("Placement.HostId", host.as_str()),
    ];
    let reply = aws.ec2("RunInstances", &placed).await.ok();
    assert_eq!(reply.expect_value("hostId"), host);
    assert_eq!(reply.expect_value("tenancy"), "host");
    let instance = reply.expect_value("instanceId");
    let second = aws.ec2("RunInstances", &placed).await;
    assert_eq!(second.ec2_error(), "InsufficientCapacityOnHost", "one Mac instance per host");
    let described = aws.ec2("DescribeHosts", &[("HostId.1", host.as_str())]).await.ok();
    assert_eq!(
        described.values("instanceId"),
        std::slice::from_ref(&instance),
        "{}",
        described.body
    );
    let occupied = release(&aws, &host).await;
    assert_eq!(occupied.expect_value("code"), "Client.InvalidHost.Occupied");

    aws.terminate(std::slice::from_ref(&instance)).await.ok();
    assert_eq!(host_state(&aws, &host).await, "pending", "scrubbing after its instance");
    let refused = aws.ec2("RunInstances", &placed).await;
    assert_eq!(refused.ec2_error(), "InsufficientCapacityOnHost", "no launch while scrubbing");
    aws.scope.set_clock_offset(Duration::from_secs(3599)).await.unwrap();
    assert_eq!(host_state(&aws, &host).await, "pending", "a second before the scrub ends");
    aws.scope.set_clock_offset(Duration::from_secs(3601)).await.unwrap();
    assert_eq!(host_state(&aws, &host).await, "available");
    aws.ec2("RunInstances", &placed).await.ok();
}

#[tokio::test]
async fn a_mac_host_is_refused_release_for_24_hours_of_the_scopes_clock() {
    let aws = Aws::new("hostday");
    let host = allocate(&aws, "us-east-1a", "day-1").await.ok().expect_value("item");
    let early = release(&aws, &host).await;
    assert!(early.values("successful").iter().all(|s| s.trim().is_empty()), "{}", early.body);
    assert_eq!(early.expect_value("resourceId"), host);
    assert_eq!(early.expect_value("code"), "Client.InvalidHost.MinimumAllocationPeriod");
    assert_eq!(host_state(&aws, &host).await, "available");

    aws.scope.set_clock_offset(DAY - Duration::from_secs(60)).await.unwrap();
    let still = release(&aws, &host).await;
    assert_eq!(still.expect_value("code"), "Client.InvalidHost.MinimumAllocationPeriod");
    aws.scope.set_clock_offset(DAY + Duration::from_secs(1)).await.unwrap();
    let released = release(&aws, &host).await;
    assert!(released.value("code").is_none(), "{}", released.body);
    assert_eq!(host_state(&aws, &host).await, "released");

    // Another scope's clock is its own: its host, allocated now, is refused.
    let other = Aws::new("hostday2");
    let young = allocate(&other, "us-east-1a", "day-2").await.ok().expect_value("item");
    let refused = release(&other, &young).await;
    assert_eq!(refused.expect_value("code"), "Client.InvalidHost.MinimumAllocationPeriod");
}
