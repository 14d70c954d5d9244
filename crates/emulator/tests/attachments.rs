//! EBS attachments as EC2 keeps them (moto attaches, detaches and releases at once, and moves an
//! attached volume to a second instance): AttachVolume refuses a volume that is attached
//! anywhere, another zone's volume and a taken device; an attachment is `attaching`, then
//! `attached` after the scope's `attach_ms`; a detach stays `detaching` for `detach_ms`; a
//! terminated instance's volumes stay attached for `volume_release_ms`. The booter shows each
//! attached volume as an NVMe device file under the instance's root, by its serial.

mod common;

use std::time::{Duration, Instant};

use common::{Aws, eventually, values};
use flotilla_emulator::control::{BootState, VolumeTiming};
use flotilla_emulator::devices::by_id_link;

const ATTACH: Duration = Duration::from_millis(400);
const DETACH: Duration = Duration::from_millis(400);
const RELEASE: Duration = Duration::from_millis(800);

async fn volume(aws: &Aws, zone: &str) -> String {
    let reply = aws.ec2("CreateVolume", &[("AvailabilityZone", zone), ("Size", "1")]).await.ok();
    reply.expect_value("volumeId")
}

/// `(attachment state, instance)` of a volume, or None when it has no attachment.
async fn attachment(aws: &Aws, id: &str) -> Option<(String, String)> {
    let reply = aws.ec2("DescribeVolumes", &[("VolumeId.1", id)]).await.ok();
    let set = values(&reply.body, "attachmentSet").into_iter().next()?;
    let item = values(&set, "item").into_iter().next()?;
    Some((
        values(&item, "status").into_iter().next().unwrap_or_default(),
        values(&item, "instanceId").into_iter().next().unwrap_or_default(),
    ))
}

async fn attach(aws: &Aws, volume: &str, instance: &str, device: &str) -> common::Reply {
    aws.ec2("AttachVolume", &[("VolumeId", volume), ("InstanceId", instance), ("Device", device)])
        .await
}

#[tokio::test]
async fn attachments_take_time_refuse_a_second_holder_and_show_as_devices() {
    let aws = Aws::new("attach");
    aws.instant_states().await;
    aws.scope
        .set_volume_timing(VolumeTiming {
            attach: ATTACH,
            detach: DETACH,
            release_after_terminate: RELEASE,
        })
        .await
        .unwrap();
    let ids = aws.launch(2, &[("Placement.AvailabilityZone", "us-east-1a")]).await;
    let (first, second) = (&ids[0], &ids[1]);
    let mut roots = Vec::new();
    for id in &ids {
        let booted = aws
            .emulator
            .wait_booted(id, Duration::from_secs(30), |b| {
                matches!(b.state, BootState::Running | BootState::Exited)
            })
            .await
            .unwrap();
        roots.push(booted.root);
    }
    let vol = volume(&aws, "us-east-1a").await;
    let link = by_id_link(&roots[0], &vol);

    let started = Instant::now();
    attach(&aws, &vol, first, "/dev/sdf").await.ok();
    assert_eq!(attachment(&aws, &vol).await, Some(("attaching".into(), first.clone())));
    assert!(!link.exists(), "no device while attaching");
    // A second holder is refused while it attaches, and once it is attached.
    assert_eq!(attach(&aws, &vol, second, "/dev/sdf").await.ec2_error(), "VolumeInUse");
    eventually("attached", Duration::from_secs(5), || async {
        (attachment(&aws, &vol).await == Some(("attached".into(), first.clone()))).then_some(())
    })
    .await;
    assert!(started.elapsed() >= ATTACH - Duration::from_millis(50), "{:?}", started.elapsed());
    assert_eq!(attach(&aws, &vol, second, "/dev/sdf").await.ec2_error(), "VolumeInUse");
    eventually("the device file", Duration::from_secs(5), || async {
        fs_err::metadata(&link).is_ok_and(|m| m.is_file()).then_some(())
    })
    .await;
    let target = fs_err::read_link(&link).unwrap();
    assert!(
        target.to_str().unwrap().starts_with("../../nvme")
            && target.to_str().unwrap().ends_with("n1"),
        "{target:?}"
    );

    // Another zone's volume and a device already in use are refused.
    let elsewhere = volume(&aws, "us-east-1b").await;
    assert_eq!(
        attach(&aws, &elsewhere, first, "/dev/sdg").await.ec2_error(),
        "InvalidVolume.ZoneMismatch"
    );
    let spare = volume(&aws, "us-east-1a").await;
    assert_eq!(attach(&aws, &spare, first, "/dev/sdf").await.ec2_error(), "InvalidParameterValue");

    // Detaching: the device goes at once, the volume is available after the delay.
    let started = Instant::now();
    aws.ec2("DetachVolume", &[("VolumeId", &vol), ("InstanceId", first)]).await.ok();
    assert_eq!(attachment(&aws, &vol).await, Some(("detaching".into(), first.clone())));
    eventually("detached", Duration::from_secs(5), || async {
        attachment(&aws, &vol).await.is_none().then_some(())
    })
    .await;
    assert!(started.elapsed() >= DETACH - Duration::from_millis(50), "{:?}", started.elapsed());
    eventually("the device file removed", Duration::from_secs(5), || async {
        fs_err::symlink_metadata(&link).is_err().then_some(())
    })
    .await;

    // A terminated instance keeps its volume attached for a while, then lets it go.
    attach(&aws, &vol, second, "/dev/sdf").await.ok();
    eventually("attached to the second", Duration::from_secs(5), || async {
        (attachment(&aws, &vol).await == Some(("attached".into(), second.clone()))).then_some(())
    })
    .await;
    let started = Instant::now();
    aws.terminate(std::slice::from_ref(second)).await;
    assert_eq!(attachment(&aws, &vol).await, Some(("attached".into(), second.clone())));
    assert_eq!(attach(&aws, &vol, first, "/dev/sdh").await.ec2_error(), "VolumeInUse");
    eventually("released after termination", Duration::from_secs(5), || async {
        attachment(&aws, &vol).await.is_none().then_some(())
    })
    .await;
    assert!(started.elapsed() >= RELEASE - Duration::from_millis(50), "{:?}", started.elapsed());
    attach(&aws, &vol, first, "/dev/sdh").await.ok();
    aws.terminate(std::slice::from_ref(first)).await;
}
