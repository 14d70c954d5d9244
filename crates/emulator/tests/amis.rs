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
