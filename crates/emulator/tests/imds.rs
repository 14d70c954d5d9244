//! Each booted instance's IMDS: IMDSv2 token rules, routes, and events that answer 404 until a
//! test triggers them.

mod common;

use std::time::Duration;

use common::Aws;
use flotilla_emulator::control::{
    BootState, BootedInstance, RebalanceRecommendation, ScheduledEvent, SpotAction,
    SpotInterruption,
};
use reqwest::StatusCode;

struct Imds {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Imds {
    async fn new(booted: &BootedInstance) -> Imds {
        let http = reqwest::Client::new();
        let base = booted.imds_endpoint.clone();
        let token = http
            .put(format!("{base}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .send()
            .await
            .expect("IMDS answers")
            .text()
            .await
            .expect("a token");
        Imds { http, base, token }
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-aws-ec2-metadata-token", &self.token)
            .send()
            .await
            .expect("IMDS answers");
        (response.status(), response.text().await.expect("a body"))
    }

    async fn text(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.text(path).await).expect("JSON")
    }
}

/// An instance with a role, tags and user data, booted; and both instances of its batch.
async fn booted(aws: &Aws, name: &str) -> (String, BootedInstance, Vec<String>) {
    aws.instant_states().await;
    let role = format!("{name}-role-{}", aws.key());
    let profile = format!("{name}-profile-{}", aws.key());
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    aws.query(
        "iam",
        "2010-05-08",
        "CreateRole",
        &[("RoleName", &role), ("AssumeRolePolicyDocument", trust)],
    )
    .await
    .ok();
    aws.query("iam", "2010-05-08", "CreateInstanceProfile", &[("InstanceProfileName", &profile)])
        .await
        .ok();
    aws.query(
        "iam",
        "2010-05-08",
        "AddRoleToInstanceProfile",
        &[("InstanceProfileName", &profile), ("RoleName", &role)],
    )
    .await
    .ok();
    let ids = aws
        .launch(
            2,
            &[
                ("InstanceType", "c7g.large"),
                ("IamInstanceProfile.Name", &profile),
                ("UserData", "ZXhpdCAwCg=="), // "exit 0\n"
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.1.Key", "Name"),
                ("TagSpecification.1.Tag.1.Value", name),
                ("TagSpecification.1.Tag.2.Key", "fleet"),
                ("TagSpecification.1.Tag.2.Value", "imds-test"),
            ],
        )
        .await;
    // The second of the batch: moto alone would give only the first one the instance profile.
    let id = ids[1].clone();
    let booted = aws
        .emulator
        .wait_booted(&id, Duration::from_secs(20), |b| b.state != BootState::Failed)
        .await
        .expect("booted");
    (id, booted, ids)
}

#[tokio::test]
async fn tokens_are_required_bounded_and_expire() {
    let aws = Aws::new("imdstokens");
    let (id, booted, batch) = booted(&aws, "tokens").await;
    let http = reqwest::Client::new();
    let base = &booted.imds_endpoint;
    let instance_id = format!("{base}/latest/meta-data/instance-id");

    assert_eq!(http.get(&instance_id).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let bogus =
        http.get(&instance_id).header("X-aws-ec2-metadata-token", "bogus").send().await.unwrap();
    assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);
    let token_url = format!("{base}/latest/api/token");
    assert_eq!(http.put(&token_url).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    for ttl in ["0", "21601", "soon"] {
        let response = http
            .put(&token_url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", ttl)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "ttl {ttl}");
    }
    let response = http
        .put(&token_url)
        .header("X-aws-ec2-metadata-token-ttl-seconds", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-aws-ec2-metadata-token-ttl-seconds"], "1");
    let short = response.text().await.unwrap();
    let fresh =
        http.get(&instance_id).header("X-aws-ec2-metadata-token", &short).send().await.unwrap();
    assert_eq!(fresh.text().await.unwrap(), id);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired =
        http.get(&instance_id).header("X-aws-ec2-metadata-token", &short).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    aws.terminate(&batch).await;
}

#[tokio::test]
async fn every_route_describes_this_instance() {
    let aws = Aws::new("imdsroutes");
    let (id, booted, batch) = booted(&aws, "routes").await;
    let imds = Imds::new(&booted).await;
    let info = aws.emulator.instance(&id).await.unwrap().unwrap();
    let m = "/latest/meta-data";

    let listing = imds.text(&format!("{m}/")).await;
    for entry in ["ami-id", "instance-id", "iam/", "placement/", "public-ipv4", "tags/", "events/"]
    {
        assert!(listing.lines().any(|l| l == entry), "{entry} in {listing}");
    }
    assert_eq!(imds.text(&format!("{m}/instance-id")).await, id);
    assert_eq!(imds.text(&format!("{m}/instance-type")).await, "c7g.large");
    assert_eq!(imds.text(&format!("{m}/ami-id")).await, "ami-0flotillatest");
    assert_eq!(imds.text(&format!("{m}/ami-launch-index")).await, "1");
    assert_eq!(imds.text(&format!("{m}/local-ipv4")).await, info.private_ip.clone().unwrap());
    assert_eq!(imds.text(&format!("{m}/public-ipv4")).await, booted.public_ip.to_string());
    assert_eq!(imds.text(&format!("{m}/hostname")).await, info.private_dns_name.clone().unwrap());
    assert_eq!(
        imds.text(&format!("{m}/local-hostname")).await,
        info.private_dns_name.clone().unwrap()
    );
    assert_eq!(imds.text(&format!("{m}/mac")).await, info.mac.clone().unwrap());
    assert_eq!(imds.text(&format!("{m}/placement/availability-zone")).await, "us-east-1a");
    assert_eq!(imds.text(&format!("{m}/placement/region")).await, "us-east-1");

    let role = format!("routes-role-{}", aws.key());
    let info_doc = imds.json(&format!("{m}/iam/info")).await;
    assert_eq!(info_doc["InstanceProfileArn"], info.iam_instance_profile.clone().unwrap());
    assert_eq!(imds.text(&format!("{m}/iam/security-credentials/")).await, role);
    let credentials = imds.json(&format!("{m}/iam/security-credentials/{role}")).await;
    for field in ["Code", "LastUpdated", "Type", "SecretAccessKey", "Token", "Expiration"] {
        assert!(credentials[field].is_string(), "{field} in {credentials}");
    }
    assert_eq!(
        credentials["AccessKeyId"],
        aws.key(),
        "requests with these count in the test's scope"
    );
    assert_eq!(
        imds.get(&format!("{m}/iam/security-credentials/other-role")).await.0,
        StatusCode::NOT_FOUND
    );

    let tags = imds.text(&format!("{m}/tags/instance/")).await;
    assert_eq!(tags.lines().collect::<Vec<_>>(), ["Name", "fleet"]);
    assert_eq!(imds.text(&format!("{m}/tags/instance/fleet")).await, "imds-test");
    assert_eq!(imds.get(&format!("{m}/tags/instance/missing")).await.0, StatusCode::NOT_FOUND);

    assert_eq!(imds.text("/latest/user-data").await, "exit 0\n");
    let document = imds.json("/latest/dynamic/instance-identity/document").await;
    assert_eq!(document["instanceId"], id);
    assert_eq!(document["region"], "us-east-1");
    assert_eq!(document["availabilityZone"], "us-east-1a");
    assert_eq!(document["instanceType"], "c7g.large");
    assert_eq!(imds.get(&format!("{m}/no-such-key")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(imds.get("/nothing/here").await.0, StatusCode::NOT_FOUND);
    aws.terminate(&batch).await;
}

#[tokio::test]
async fn events_answer_404_until_triggered_then_their_json() {
    let aws = Aws::new("imdsevents");
    let (id, booted, batch) = booted(&aws, "events").await;
    let imds = Imds::new(&booted).await;
    let spot = "/latest/meta-data/spot/instance-action";
    let rebalance = "/latest/meta-data/events/recommendations/rebalance";
    let scheduled = "/latest/meta-data/events/maintenance/scheduled";
    for path in [spot, rebalance, scheduled] {
        assert_eq!(imds.get(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }

    let control = &aws.emulator;
    control
        .trigger_spot_interruption(&id, &SpotInterruption { action: SpotAction::Stop, time: None })
        .await
        .unwrap();
    let notice = imds.json(spot).await;
    assert_eq!(notice["action"], "stop");
    let time = humantime::parse_rfc3339(notice["time"].as_str().unwrap()).unwrap();
    let warning = time.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        warning > Duration::from_secs(100) && warning <= Duration::from_secs(120),
        "{warning:?}"
    );
    assert_eq!(imds.json(spot).await, notice, "the notice does not move");

    control
        .trigger_rebalance(
            &id,
            &RebalanceRecommendation { notice_time: Some("2026-01-02T03:04:05Z".into()) },
        )
        .await
        .unwrap();
    assert_eq!(
        imds.json(rebalance).await,
        serde_json::json!({ "noticeTime": "2026-01-02T03:04:05Z" })
    );

    let event = ScheduledEvent {
        code: "system-reboot".into(),
        description: Some("scheduled reboot".into()),
        event_id: Some("instance-event-0123456789abcdef0".into()),
        not_before: Some("2026-01-21T09:00:43Z".into()),
        not_after: None,
        state: None,
    };
    control.set_scheduled_events(&id, std::slice::from_ref(&event)).await.unwrap();
    let events = imds.json(scheduled).await;
    assert_eq!(
        events,
        serde_json::json!([{
            "Code": "system-reboot",
            "Description": "scheduled reboot",
            "EventId": "instance-event-0123456789abcdef0",
            "NotBefore": "21 Jan 2026 09:00:43 GMT",
            "NotAfter": "28 Jan 2026 09:00:43 GMT",
            "State": "active",
        }])
    );

    control.clear_spot_interruption(&id).await.unwrap();
    control.clear_rebalance(&id).await.unwrap();
    control.clear_scheduled_events(&id).await.unwrap();
    for path in [spot, rebalance, scheduled] {
        assert_eq!(imds.get(path).await.0, StatusCode::NOT_FOUND, "{path} after clearing");
    }
    aws.terminate(&batch).await;
}
