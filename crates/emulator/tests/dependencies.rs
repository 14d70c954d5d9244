//! The dependency checks moto skips: subnets, security groups and VPCs still in use.

mod common;

use common::{Aws, Reply};

#[track_caller]
fn dependency_violation(reply: &Reply) {
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.ec2_error(), "DependencyViolation");
}

#[tokio::test]
async fn subnets_and_groups_used_by_instances_cannot_be_deleted_until_they_terminate() {
    let aws = Aws::in_region("inuse", "eu-west-1");
    aws.instant_states().await;
    let (vpc, subnet) = aws.network("10.71").await;
    let group = aws.security_group(&vpc, "direct").await;
    let eni_group = aws.security_group(&vpc, "on-eni").await;
    let direct = aws.launch(1, &[("SubnetId", &subnet), ("SecurityGroupId.1", &group)]).await;
    // What the deployer sends: groups on the network interface.
    let on_eni = aws
        .launch(
            1,
            &[
                ("NetworkInterface.1.DeviceIndex", "0"),
                ("NetworkInterface.1.SubnetId", &subnet),
                ("NetworkInterface.1.SecurityGroupId.1", &eni_group),
                ("NetworkInterface.1.AssociatePublicIpAddress", "true"),
            ],
        )
        .await;

    dependency_violation(&aws.ec2("DeleteSubnet", &[("SubnetId", &subnet)]).await);
    dependency_violation(&aws.ec2("DeleteSecurityGroup", &[("GroupId", &group)]).await);
    dependency_violation(&aws.ec2("DeleteSecurityGroup", &[("GroupId", &eni_group)]).await);
    dependency_violation(&aws.ec2("DeleteVpc", &[("VpcId", &vpc)]).await);

    aws.terminate(&direct).await;
    aws.ec2("DeleteSecurityGroup", &[("GroupId", &group)]).await.ok();
    dependency_violation(&aws.ec2("DeleteSubnet", &[("SubnetId", &subnet)]).await);
    aws.terminate(&on_eni).await;
    aws.ec2("DeleteSecurityGroup", &[("GroupId", &eni_group)]).await.ok();
    aws.ec2("DeleteSubnet", &[("SubnetId", &subnet)]).await.ok();
    aws.ec2("DeleteVpc", &[("VpcId", &vpc)]).await.ok();
}

#[tokio::test]
async fn a_group_referenced_by_another_groups_rule_cannot_be_deleted() {
    let aws = Aws::in_region("referenced", "eu-west-1");
    let (vpc, _) = aws.network("10.72").await;
    let source = aws.security_group(&vpc, "source").await;
    let target = aws.security_group(&vpc, "target").await;
    aws.ec2(
        "AuthorizeSecurityGroupIngress",
        &[
            ("GroupId", &target),
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", "7443"),
            ("IpPermissions.1.ToPort", "7443"),
            ("IpPermissions.1.Groups.1.GroupId", &source),
        ],
    )
    .await
    .ok();
    dependency_violation(&aws.ec2("DeleteSecurityGroup", &[("GroupId", &source)]).await);
    // A rule referring to its own group does not hold the group.
    aws.ec2(
        "AuthorizeSecurityGroupIngress",
        &[
            ("GroupId", &target),
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", "9101"),
            ("IpPermissions.1.ToPort", "9101"),
            ("IpPermissions.1.Groups.1.GroupId", &target),
        ],
    )
    .await
    .ok();
    aws.ec2("DeleteSecurityGroup", &[("GroupId", &target)]).await.ok();
    aws.ec2("DeleteSecurityGroup", &[("GroupId", &source)]).await.ok();
}

#[tokio::test]
async fn a_vpc_with_a_pending_or_active_peering_cannot_be_deleted() {
    let aws = Aws::in_region("peered", "eu-west-1");
    let hub =
        aws.ec2("CreateVpc", &[("CidrBlock", "10.73.0.0/16")]).await.ok().expect_value("vpcId");
    let spoke =
        aws.ec2("CreateVpc", &[("CidrBlock", "10.74.0.0/16")]).await.ok().expect_value("vpcId");
    let pcx = aws
        .ec2("CreateVpcPeeringConnection", &[("VpcId", &hub), ("PeerVpcId", &spoke)])
        .await
        .ok()
        .expect_value("vpcPeeringConnectionId");
    dependency_violation(&aws.ec2("DeleteVpc", &[("VpcId", &spoke)]).await);
    aws.ec2("AcceptVpcPeeringConnection", &[("VpcPeeringConnectionId", &pcx)]).await.ok();
    dependency_violation(&aws.ec2("DeleteVpc", &[("VpcId", &hub)]).await);
    dependency_violation(&aws.ec2("DeleteVpc", &[("VpcId", &spoke)]).await);
    aws.ec2("DeleteVpcPeeringConnection", &[("VpcPeeringConnectionId", &pcx)]).await.ok();
    aws.ec2("DeleteVpc", &[("VpcId", &hub)]).await.ok();
    aws.ec2("DeleteVpc", &[("VpcId", &spoke)]).await.ok();
}
