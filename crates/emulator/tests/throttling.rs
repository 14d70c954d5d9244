//! EC2's request throttling, switched on per scope: flotilla-capacity's token buckets, a
//! request beyond its bucket refused with `RequestLimitExceeded` (HTTP 503, EC2's XML), counted
//! per Action.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Aws;
use flotilla_capacity::throttle::ActionClass;
use tokio::task::JoinSet;

#[tokio::test]
async fn a_burst_beyond_the_unfiltered_describe_bucket_is_refused_until_it_refills() {
    // Regions no other test launches in: an unfiltered DescribeInstances lists every scope's
    // instances of its region (one account), which in us-east-1 would take seconds apiece.
    let aws = Aws::in_region("throttled", "eu-north-1");
    let bystander = Aws::in_region("notthrottled", "eu-north-1");
    aws.scope.set_throttling(true).await.unwrap();
    let (capacity, refill) = ActionClass::UnfilteredDescribe.bucket();
    assert_eq!((capacity, refill), (50.0, 10.0), "refs/capacity.md §4.5");

    // All at once, as a client without its own buckets would.
    let aws = Arc::new(aws);
    let started = Instant::now();
    let mut burst = JoinSet::new();
    for _ in 0..60 {
        let aws = aws.clone();
        burst.spawn(async move { aws.ec2("DescribeInstances", &[]).await });
    }
    let mut refused = 0u64;
    while let Some(reply) = burst.join_next().await {
        let reply = reply.expect("the request ran");
        if reply.status == 503 {
            assert_eq!(reply.ec2_error(), "RequestLimitExceeded");
            assert!(reply.body.starts_with("<?xml"), "{}", reply.body);
            refused += 1;
        } else {
            reply.ok();
        }
    }
    // 50 at once, then 10 a second for as long as the burst took.
    let refilled = (started.elapsed().as_secs_f64() * refill).ceil() as u64;
    assert!(
        refused >= 10u64.saturating_sub(refilled) && refused <= 10,
        "{refused} of 60 refused with {refilled} tokens refilled"
    );

    // Filtered calls use the larger non-mutating bucket; other scopes are not throttled.
    aws.ec2(
        "DescribeInstances",
        &[("Filter.1.Name", "instance-state-name"), ("Filter.1.Value.1", "running")],
    )
    .await
    .ok();
    for _ in 0..60 {
        bystander.ec2("DescribeInstances", &[]).await.ok();
    }

    let throttling = aws.scope.throttling().await.unwrap();
    assert!(throttling.enabled);
    assert_eq!(throttling.get("DescribeInstances"), refused);
    assert_eq!(throttling.by_region["eu-north-1"]["DescribeInstances"], refused);
    let counts = aws.scope.counts().await.unwrap();
    assert_eq!(counts.get("ec2", "DescribeInstances"), 61, "refused requests still arrived");

    // A token comes back every 100 ms.
    tokio::time::sleep(Duration::from_millis(250)).await;
    aws.ec2("DescribeInstances", &[]).await.ok();
    aws.scope.clear_throttling().await.unwrap();
    assert_eq!(aws.scope.throttling().await.unwrap().throttled.len(), 0);
    assert!(!bystander.scope.throttling().await.unwrap().enabled, "off by default");
}

#[tokio::test]
async fn run_instances_has_its_own_small_bucket() {
    let aws = Aws::in_region("throttledrun", "eu-north-1");
    aws.scope.set_throttling(true).await.unwrap();
    // 5 requests at once, 2 a second: the dry runs (moto answers DryRunOperation) go through
    // the bucket as real launches would.
    let (capacity, refill) = ActionClass::RunInstances.bucket();
    assert_eq!((capacity, refill), (5.0, 2.0), "refs/capacity.md §4.5");
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let reply = aws
            .ec2(
                "RunInstances",
                &[("ImageId", "ami-1"), ("MinCount", "1"), ("MaxCount", "1"), ("DryRun", "true")],
            )
            .await;
        if reply.status == 503 {
            assert_eq!(reply.ec2_error(), "RequestLimitExceeded");
        }
        statuses.push(reply.status);
    }
    let refused = statuses.iter().filter(|s| **s == 503).count();
    let refilled = (started.elapsed().as_secs_f64() * refill).ceil() as usize;
    assert!(refused >= 3usize.saturating_sub(refilled) && refused <= 3, "{statuses:?}");
    assert_eq!(statuses[..5].iter().filter(|s| **s == 503).count(), 0, "{statuses:?}");
    // Other classes keep their own buckets.
    aws.ec2("DescribeVpcs", &[]).await.ok();
    assert_eq!(aws.scope.throttling().await.unwrap().get("RunInstances"), refused as u64);
    aws.scope.clear_throttling().await.unwrap();
}
