//! Latency per scope and for every scope, and request counts by service and Action.

mod common;

use std::time::Duration;

use common::Aws;
use reqwest::Method;

#[tokio::test]
async fn a_scopes_latency_delays_only_its_requests() {
    let slow = Aws::new("slow");
    let fast = Aws::new("fast");
    slow.scope.set_latency(Duration::from_millis(400)).await.unwrap();
    // Its own setting, so a `*` latency set by another test meanwhile does not apply to it.
    fast.scope.set_latency(Duration::ZERO).await.unwrap();
    let delayed = slow.ec2("DescribeRegions", &[]).await.ok();
    let prompt = fast.ec2("DescribeRegions", &[]).await.ok();
    assert!(delayed.elapsed >= Duration::from_millis(400), "{:?}", delayed.elapsed);
    assert!(prompt.elapsed < Duration::from_millis(400), "{:?}", prompt.elapsed);
    let s3 = slow.s3(Method::GET, "/", b"").await.ok();
    assert!(s3.elapsed >= Duration::from_millis(400), "S3 too: {:?}", s3.elapsed);
    slow.scope.clear_latency().await.unwrap();
}

#[tokio::test]
async fn star_latency_delays_scopes_without_their_own() {
    let plain = Aws::new("plainlatency");
    let own = Aws::new("ownlatency");
    own.scope.set_latency(Duration::ZERO).await.unwrap();
    let everyone = plain.emulator.all_scopes();
    everyone.set_latency(Duration::from_millis(300)).await.unwrap();
    let delayed = plain.ec2("DescribeRegions", &[]).await;
    let prompt = own.ec2("DescribeRegions", &[]).await;
    everyone.clear_latency().await.unwrap();
    assert!(delayed.ok().elapsed >= Duration::from_millis(300));
    assert!(prompt.ok().elapsed < Duration::from_millis(300));
}

#[tokio::test]
async fn requests_are_counted_by_service_and_action_per_scope() {
    let aws = Aws::new("counted");
    let other = Aws::new("notcounted");
    for _ in 0..3 {
        aws.ec2("DescribeVpcs", &[]).await.ok();
    }
    aws.ec2("DescribeAvailabilityZones", &[]).await.ok();
    other.ec2("DescribeVpcs", &[]).await.ok();
    let bucket = format!("/counts-{}", aws.key().to_lowercase());
    let key = format!("{bucket}/a/b.txt");
    aws.s3(Method::PUT, &bucket, b"").await.ok();
    aws.s3(Method::HEAD, &bucket, b"").await.ok();
    aws.s3(Method::PUT, &key, b"hello").await.ok();
    aws.s3(Method::HEAD, &key, b"").await.ok();
    aws.s3(Method::GET, &key, b"").await.ok();
    aws.s3(Method::GET, &format!("{bucket}?list-type=2&prefix=a/"), b"").await.ok();
    let delete = "<Delete><Object><Key>a/b.txt</Key></Object></Delete>";
    aws.s3(Method::POST, &format!("{bucket}?delete"), delete.as_bytes()).await.ok();

    let counts = aws.scope.counts().await.unwrap();
    assert_eq!(counts.get("ec2", "DescribeVpcs"), 3);
    assert_eq!(counts.get("ec2", "DescribeAvailabilityZones"), 1);
    for operation in [
        "CreateBucket",
        "HeadBucket",
        "PutObject",
        "HeadObject",
        "GetObject",
        "ListObjectsV2",
        "DeleteObjects",
    ] {
        assert_eq!(counts.get("s3", operation), 1, "{operation} in {counts:?}");
    }
    assert_eq!(other.scope.counts().await.unwrap().get("ec2", "DescribeVpcs"), 1);

    aws.scope.reset_counts().await.unwrap();
    assert_eq!(aws.scope.counts().await.unwrap().0.len(), 0);
    assert_eq!(other.scope.counts().await.unwrap().get("ec2", "DescribeVpcs"), 1);
}
