//! Injected errors: each kind with AWS's code, status and XML per protocol, pools, probability,
//! count, and isolation between scopes.

mod common;

use common::Aws;
use flotilla_emulator::control::{FaultRule, PoolFilter};
use reqwest::Method;

#[tokio::test]
async fn each_ec2_fault_has_its_code_status_and_xml() {
    let aws = Aws::new("ec2faults");
    let cases = [
        ("RunInstances", "InsufficientInstanceCapacity", 500),
        ("DescribeInstances", "RequestLimitExceeded", 503),
        ("DescribeVpcs", "InternalError", 500),
        ("DescribeSubnets", "Unavailable", 503),
        ("DescribeSecurityGroups", "UnauthorizedOperation", 403),
        ("AllocateHosts", "InsufficientHostCapacity", 500),
    ];
    let rules: Vec<FaultRule> =
        cases.iter().map(|(action, code, _)| FaultRule::new("ec2", action, code)).collect();
    aws.scope.set_faults(&rules).await.unwrap();
    for (action, code, status) in cases {
        let reply = aws
            .ec2(
                action,
                &[
                    ("ImageId", "ami-1"),
                    ("MinCount", "1"),
                    ("MaxCount", "1"),
                    ("InstanceType", "m7i.large"),
                ],
            )
            .await;
        assert_eq!(reply.status, status, "{action}: {}", reply.body);
        assert!(reply.body.starts_with("<?xml"), "{}", reply.body);
        assert_eq!(reply.ec2_error(), code);
        assert!(reply.value("Message").is_some_and(|m| !m.is_empty()));
        assert!(reply.value("RequestID").is_some(), "{}", reply.body);
    }
    let capacity =
        aws.ec2("RunInstances", &[("InstanceType", "m7i.large"), ("ImageId", "ami-1")]).await;
    assert!(capacity.expect_value("Message").contains("m7i.large"), "{}", capacity.body);
}

#[tokio::test]
async fn s3_iam_and_sts_faults_use_their_own_error_shapes() {
    let aws = Aws::new("protocols");
    aws.scope
        .set_faults(&[
            FaultRule::new("s3", "PutObject", "InternalError"),
            FaultRule::new("s3", "HeadObject", "ServiceUnavailable"),
            FaultRule::new("iam", "ListRoles", "InternalError"),
            FaultRule::new("sts", "GetCallerIdentity", "Throttling"),
        ])
        .await
        .unwrap();

    let put = aws.s3(Method::PUT, "/faultbucket/key", b"data").await;
    assert_eq!(put.status, 500, "{}", put.body);
    assert!(put.body.contains("<Error><Code>InternalError</Code><Message>"), "{}", put.body);
    assert!(!put.body.contains("<Response>"));

    let head = aws.s3(Method::HEAD, "/faultbucket/key", b"").await;
    assert_eq!(head.status, 503);
    assert!(head.body.is_empty(), "HEAD answers carry no body");

    let iam = aws.query("iam", "2010-05-08", "ListRoles", &[]).await;
    assert_eq!(iam.status, 500, "{}", iam.body);
    assert!(
        iam.body.contains("<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">")
    );
    assert!(
        iam.body.contains("<Error><Type>Receiver</Type><Code>InternalError</Code>"),
        "{}",
        iam.body
    );

    let sts = aws.query("sts", "2011-06-15", "GetCallerIdentity", &[]).await;
    assert_eq!(sts.status, 400, "{}", sts.body);
    assert!(sts.body.contains("<Error><Type>Sender</Type><Code>Throttling</Code>"), "{}", sts.body);

    // Other operations of the same services are untouched.
    aws.query("iam", "2010-05-08", "ListUsers", &[]).await.ok();
    aws.query("sts", "2011-06-15", "GetSessionToken", &[]).await.ok();
}

#[tokio::test]
async fn pool_scoped_capacity_errors_hit_only_that_pool() {
    let aws = Aws::new("pool");
    aws.instant_states().await;
    let (vpc, subnet_a) = aws.network("10.61").await;
    let subnet_b = aws
        .ec2(
            "CreateSubnet",
            &[("VpcId", &vpc), ("CidrBlock", "10.61.2.0/24"), ("AvailabilityZone", "us-east-1b")],
        )
        .await
        .ok()
        .expect_value("subnetId");
    let pool = PoolFilter::new("c7g.large", "us-east-1a", "spot");
    aws.scope
        .set_faults(&[
            FaultRule::new("ec2", "RunInstances", "InsufficientInstanceCapacity").pool(pool)
        ])
        .await
        .unwrap();
    let launch = |subnet: String, instance_type: &'static str, spot: bool| {
        let aws = &aws;
        async move {
            let mut params = vec![
                ("ImageId", "ami-1".to_owned()),
                ("MinCount", "1".to_owned()),
                ("MaxCount", "1".to_owned()),
                ("InstanceType", instance_type.to_owned()),
                ("SubnetId", subnet),
            ];
            if spot {
                params.push(("InstanceMarketOptions.MarketType", "spot".to_owned()));
            }
            let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            aws.ec2("RunInstances", &params).await
        }
    };
    let hit = launch(subnet_a.clone(), "c7g.large", true).await;
    assert_eq!(hit.status, 500);
    assert_eq!(hit.ec2_error(), "InsufficientInstanceCapacity");
    assert!(hit.expect_value("Message").contains("(us-east-1a)"), "{}", hit.body);
    launch(subnet_a.clone(), "c7g.large", false).await.ok(); // on-demand
    launch(subnet_b.clone(), "c7g.large", true).await.ok(); // another AZ
    launch(subnet_a.clone(), "c7g.xlarge", true).await.ok(); // another type
    // The AZ can also come from Placement, without a subnet.
    let placed = aws
        .ec2(
            "RunInstances",
            &[
                ("ImageId", "ami-1"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("InstanceType", "c7g.large"),
                ("Placement.AvailabilityZone", "us-east-1a"),
                ("InstanceMarketOptions.MarketType", "spot"),
            ],
        )
        .await;
    assert_eq!(placed.status, 500, "{}", placed.body);
    let rules = aws.scope.faults().await.unwrap();
    assert_eq!(rules[0].hits, 2);
}

#[tokio::test]
async fn a_count_limits_hits_and_probability_draws_per_request() {
    let aws = Aws::new("count");
    aws.scope
        .set_faults(&[FaultRule::new("ec2", "DescribeRegions", "RequestLimitExceeded").count(2)])
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(aws.ec2("DescribeRegions", &[]).await.status);
    }
    assert_eq!(statuses, [503, 503, 200, 200]);
    let rules = aws.scope.faults().await.unwrap();
    assert_eq!((rules[0].count, rules[0].hits), (Some(0), 2));

    aws.scope
        .set_faults(&[FaultRule::new("ec2", "DescribeRegions", "InternalError").probability(0.0)])
        .await
        .unwrap();
    for _ in 0..30 {
        aws.ec2("DescribeRegions", &[]).await.ok();
    }

    aws.scope
        .set_faults(&[FaultRule::new("ec2", "DescribeRegions", "InternalError").probability(0.5)])
        .await
        .unwrap();
    let mut failed = 0;
    for _ in 0..200 {
        if aws.ec2("DescribeRegions", &[]).await.status == 500 {
            failed += 1;
        }
    }
    // Binomial(200, 0.5): 60..=140 is more than eight standard deviations wide.
    assert!((60..=140).contains(&failed), "{failed} of 200 failed at probability 0.5");
}

#[tokio::test]
async fn faults_stay_in_their_scope_and_star_reaches_every_scope() {
    let faulty = Aws::new("isolatedA");
    let clean = Aws::new("isolatedB");
    faulty.scope.set_faults(&[FaultRule::new("ec2", "*", "Unavailable")]).await.unwrap();
    assert_eq!(faulty.ec2("DescribeAvailabilityZones", &[]).await.status, 503);
    clean.ec2("DescribeAvailabilityZones", &[]).await.ok();
    faulty.scope.clear_faults().await.unwrap();
    faulty.ec2("DescribeAvailabilityZones", &[]).await.ok();

    // `*` rules apply to every scope; an action no other test calls keeps this from disturbing them.
    let everyone = faulty.emulator.all_scopes();
    let rule = FaultRule::new("ec2", "DescribeKeyPairs", "InternalError").message("everyone fails");
    everyone.add_fault(&rule).await.unwrap();
    let one = faulty.ec2("DescribeKeyPairs", &[]).await;
    let other = clean.ec2("DescribeKeyPairs", &[]).await;
    everyone.clear_faults().await.unwrap();
    assert_eq!((one.status, other.status), (500, 500));
    assert_eq!(other.expect_value("Message"), "everyone fails");
    clean.ec2("DescribeKeyPairs", &[]).await.ok();
}

#[tokio::test]
async fn bad_rules_are_refused_with_what_to_fix() {
    let aws = Aws::new("badrule");
    let url = format!("{}/_flotilla/scopes/{}/faults", aws.emulator.endpoint(), aws.key());
    let http = reqwest::Client::new();
    for (body, expected) in [
        (r#"{"code": "InternalError", "probabilty": 0.5}"#, "unknown field(s) probabilty"),
        (
            r#"{"code": "InternalError", "probability": 2}"#,
            "`probability` must be a number in 0..1",
        ),
        (r#"{"probability": 1}"#, "needs `code`"),
        (r#"{"code": "X", "pool": {"market": "reserved"}}"#, "`pool.market`"),
    ] {
        let response = http.post(&url).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{body}: {text}");
    }
}
