//! Spot reclaim: the instance's IMDS gives notice at once, then EC2 terminates it with the
//! spot StateReason; explicitly, or at random per scope with a seed.

mod common;

use std::time::{Duration, SystemTime};

use common::{Aws, base64, eventually};
use flotilla_emulator::control::{BootState, ControlError, SpotReclaim, StateReason};
use reqwest::StatusCode;

/// Stays, as an exec'd agent would.
const STAYS: &str = "#!/bin/sh\nexec sleep 600\n";

async fn launch(aws: &Aws, count: u32, spot: bool) -> Vec<String> {
    let user_data = base64(STAYS);
    let mut params = vec![("UserData", user_data.as_str()), ("InstanceType", "m5.large")];
    if spot {
        params.push(("InstanceMarketOptions.MarketType", "spot"));
    }
    aws.launch(count, &params).await
}

/// `spot/instance-action` as the agent asks for it: an IMDSv2 token first.
async fn instance_action(imds: &str) -> (StatusCode, String) {
    let http = reqwest::Client::new();
    let token = http
        .put(format!("{imds}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .expect("IMDS answers")
        .text()
        .await
        .expect("a token");
    let response = http
        .get(format!("{imds}/latest/meta-data/spot/instance-action"))
        .header("X-aws-ec2-metadata-token", token)
        .send()
        .await
        .expect("IMDS answers");
    (response.status(), response.text().await.expect("a body"))
}

/// Waits until DescribeInstances says terminated; returns the StateReason then.
async fn terminated(aws: &Aws, id: &str, within: Duration) -> Option<StateReason> {
    eventually(&format!("{id} terminated"), within, || async {
        (aws.state(id).await.0 == "terminated").then_some(())
    })
    .await;
    aws.state_reason(id).await
}

#[tokio::test]
async fn a_reclaimed_spot_instance_gets_its_notice_at_once_then_terminates_with_ec2s_reason() {
    let aws = Aws::new("reclaim");
    aws.instant_states().await;
    let spot = launch(&aws, 1, true).await.remove(0);
    let booted = aws
        .emulator
        .wait_booted(&spot, Duration::from_secs(20), |b| b.state == BootState::Running)
        .await
        .expect("booted");
    assert_eq!(instance_action(&booted.imds_endpoint).await.0, StatusCode::NOT_FOUND);

    let delay = Duration::from_millis(1500);
    let asked = SystemTime::now();
    let reclaimed =
        aws.emulator.reclaim_spot(std::slice::from_ref(&spot), Some(delay)).await.unwrap();
    let (status, body) = instance_action(&booted.imds_endpoint).await;
    assert_eq!(status, StatusCode::OK, "the notice is there at once: {body}");
    let notice: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(notice["action"], "terminate");
    let time = humantime::parse_rfc3339(notice["time"].as_str().unwrap()).unwrap();
    let ahead = time.duration_since(asked - Duration::from_secs(1)).unwrap();
    assert!(ahead <= Duration::from_secs(3), "the notice names the termination time: {notice}");
    let given = reclaimed[0].spot_interruption.as_ref().expect("the notice, in moto's view");
    assert_eq!(given.time.as_deref(), notice["time"].as_str());
    assert_eq!(aws.state(&spot).await.0, "running", "it runs until the time comes");

    let reason = terminated(&aws, &spot, Duration::from_secs(10)).await;
    assert_eq!(reason, Some(StateReason::spot_reclaim()));
    assert_eq!(
        StateReason::spot_reclaim().message,
        "Server.SpotInstanceTermination: Spot instance termination"
    );
    aws.emulator
        .wait_booted(&spot, Duration::from_secs(20), |b| b.state == BootState::Stopped)
        .await
        .expect("its processes are stopped");

    // On-demand instances are not reclaimed; the call says so and changes nothing.
    let on_demand = launch(&aws, 1, false).await.remove(0);
    match aws.emulator.reclaim_spot(std::slice::from_ref(&on_demand), None).await {
        Err(ControlError::Status { status: 400, body, .. }) => {
            assert!(body.contains(&on_demand) && body.contains("on-demand"), "{body}");
        }
        other => panic!("an on-demand instance is refused: {other:?}"),
    }
    match aws.emulator.reclaim_spot(&["i-0000000000000dead".to_owned()], None).await {
        Err(ControlError::Status { status: 404, .. }) => {}
        other => panic!("an unknown instance is 404: {other:?}"),
    }
    assert_eq!(aws.state(&on_demand).await.0, "running");
    aws.terminate(&[on_demand]).await;
}

#[tokio::test]
async fn a_scope_reclaims_its_spot_instances_at_random_reproducibly() {
    // The same seed draws the same times for the same launches; another seed others.
    let mut drawn = Vec::new();
    for (label, seed) in [("randoma", 42), ("randomb", 42), ("randomc", 43)] {
        let aws = Aws::new(label);
        aws.instant_states().await;
        aws.scope.set_spot_reclaim(&SpotReclaim::new(0.5, seed)).await.unwrap();
        let ids = launch(&aws, 3, true).await;
        let mut after = Vec::new();
        for id in &ids {
            let info = aws.emulator.instance(id).await.unwrap().expect("listed");
            after.push(info.spot_reclaim_after_ms.expect("a drawn time"));
        }
        aws.scope.clear_spot_reclaim().await.unwrap();
        for id in &ids {
            let info = aws.emulator.instance(id).await.unwrap().expect("listed");
            assert_eq!(info.spot_reclaim_after_ms, None, "cleared: no notice will come");
        }
        aws.terminate(&ids).await;
        drawn.push(after);
    }
    assert_eq!(drawn[0], drawn[1], "seed 42 twice");
    assert_ne!(drawn[0], drawn[2], "seed 43");

    // Certain interruption with a short warning: the spot instances go, on-demand ones stay.
    let aws = Aws::new("randomall");
    aws.instant_states().await;
    let reclaim = SpotReclaim::new(1.0, 7).delay(Duration::from_millis(300));
    aws.scope.set_spot_reclaim(&reclaim).await.unwrap();
    let spot = launch(&aws, 2, true).await;
    let on_demand = launch(&aws, 1, false).await;
    for id in &spot {
        let reason = terminated(&aws, id, Duration::from_secs(10)).await;
        assert_eq!(reason, Some(StateReason::spot_reclaim()), "{id}");
        let info = aws.emulator.instance(id).await.unwrap().expect("listed");
        assert!(info.spot_interruption.is_some(), "{id} had its notice");
    }
    let info = aws.emulator.instance(&on_demand[0]).await.unwrap().expect("listed");
    assert_eq!((info.state.as_str(), info.spot_interruption), ("running", None));
    aws.scope.clear_spot_reclaim().await.unwrap();
    aws.terminate(&on_demand).await;
}
