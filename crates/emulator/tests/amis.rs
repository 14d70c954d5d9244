//! The Ubuntu AMIs the deployer looks up are in the catalogue.

mod common;

use common::Aws;

#[tokio::test]
async fn the_deployers_filter_finds_noble_for_both_architectures_in_any_region() {
    for (region, arch, ec2_arch) in
        [("us-east-1", "arm64", "arm64"), ("ap-northeast-1", "amd64", "x86_64")]
    {
        let aws = Aws::in_region("amis", region);
        let name = format!("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*");
        let reply = aws
            .ec2(
                "DescribeImages",
                &[
                    ("Owner.1", "099720109477"),
                    ("Filter.1.Name", "name"),
                    ("Filter.1.Value.1", &name),
                ],
            )
            .await
            .ok();
        let names = reply.values("name");
        assert!(!names.is_empty(), "{region}: {}", reply.body);
        assert!(names.iter().all(|n| n.starts_with(&name[..name.len() - 1])), "{names:?}");
        assert!(reply.values("architecture").iter().all(|a| a == ec2_arch));
        assert!(reply.values("rootDeviceType").iter().all(|t| t == "ebs"));
        assert!(reply.values("imageOwnerId").iter().all(|o| o == "099720109477"));
    }
}

/// A registered image keeps its architecture, root device name and tags (moto's own
/// RegisterImage keeps only the name: an x86_64 image on /dev/sda1 without tags), so it is
/// found by its tag among the account's own images, and an instance of it boots from its root
/// device.
#[tokio::test]
async fn a_registered_image_keeps_its_architecture_root_device_and_tags() {
    let aws = Aws::new("register-image");
    aws.instant_states().await;
    let team = format!("golden-{}", aws.key());
    let registered = aws
        .ec2(
            "RegisterImage",
            &[
                ("Name", &format!("{team}-arm")),
                ("Architecture", "arm64"),
                ("RootDeviceName", "/dev/xvda"),
                ("VirtualizationType", "hvm"),
                ("TagSpecification.1.ResourceType", "image"),
                ("TagSpecification.1.Tag.1.Key", "golden"),
                ("TagSpecification.1.Tag.1.Value", &team),
            ],
        )
        .await
        .ok();
    let id = registered.expect_value("imageId");
    let found = aws
        .ec2(
            "DescribeImages",
            &[
                ("Owner.1", "self"),
                ("Filter.1.Name", "tag:golden"),
                ("Filter.1.Value.1", &team),
                ("Filter.2.Name", "state"),
                ("Filter.2.Value.1", "available"),
            ],
        )
        .await
        .ok();
    assert_eq!(found.values("imageId"), std::slice::from_ref(&id), "{}", found.body);
    assert_eq!(found.values("architecture"), ["arm64"]);
    assert_eq!(found.values("rootDeviceName"), ["/dev/xvda"]);
    assert_eq!(found.values("rootDeviceType"), ["ebs"]);

    // The owner filter keeps Canonical's images out of a lookup among the account's own.
    let own_ubuntu = aws
        .ec2(
            "DescribeImages",
            &[
                ("Owner.1", "self"),
                ("Filter.1.Name", "name"),
                ("Filter.1.Value.1", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-*"),
            ],
        )
        .await
        .ok();
    assert!(own_ubuntu.values("imageId").is_empty(), "{}", own_ubuntu.body);

    // An instance of the image boots from the image's root device.
    let launched = aws
        .ec2(
            "RunInstances",
            &[
                ("ImageId", &id),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("InstanceType", "c7g.large"),
                ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
                ("BlockDeviceMapping.1.Ebs.VolumeSize", "8"),
                ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
                ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
            ],
        )
        .await
        .ok();
    let instances = launched.values("instanceId");
    let described = aws.ec2("DescribeInstances", &[("InstanceId.1", &instances[0])]).await.ok();
    assert_eq!(described.value("imageId").as_deref(), Some(id.as_str()));
    assert_eq!(
        described.value("rootDeviceName").as_deref(),
        Some("/dev/xvda"),
        "{}",
        described.body
    );
    assert_eq!(described.values("deviceName"), ["/dev/xvda"], "{}", described.body);
    aws.terminate(&instances).await.ok();
}
