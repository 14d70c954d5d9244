//! Route states as AWS reports them: a route whose target is gone is a black hole (moto calls
//! every route `active`), so flotilla's reachability check can be tested against a route left
//! behind by a deleted peering or a detached gateway.

mod common;

use common::Aws;

/// The `<state>` of the route to `destination` in `table`.
async fn state_of(aws: &Aws, table: &str, destination: &str) -> String {
    let reply = aws.ec2("DescribeRouteTables", &[("RouteTableId.1", table)]).await.ok();
    let body = &reply.body;
    let at = body
        .find(&format!("<destinationCidrBlock>{destination}</destinationCidrBlock>"))
        .unwrap_or_else(|| panic!("a route to {destination}: {body}"));
    let route = &body[at..];
    let route = &route[..route.find("</item>").expect("the route ends")];
    let start = route.find("<state>").expect("a state") + "<state>".len();
    route[start..start + route[start..].find('<').expect("the state ends")].to_owned()
}

/// The main route table of `vpc`.
async fn main_table(aws: &Aws, vpc: &str) -> String {
    aws.ec2("DescribeRouteTables", &[("Filter.1.Name", "vpc-id"), ("Filter.1.Value.1", vpc)])
        .await
        .ok()
        .expect_value("routeTableId")
}

#[tokio::test]
async fn a_route_to_a_deleted_peering_or_a_detached_gateway_is_a_black_hole() {
    let aws = Aws::in_region("blackhole", "eu-west-1");
    let (near, _) = aws.network("10.75").await;
    let (far, _) = aws.network("10.76").await;
    let table = main_table(&aws, &near).await;

    let peering = aws
        .ec2("CreateVpcPeeringConnection", &[("VpcId", &near), ("PeerVpcId", &far)])
        .await
        .ok()
        .expect_value("vpcPeeringConnectionId");
    aws.ec2("AcceptVpcPeeringConnection", &[("VpcPeeringConnectionId", &peering)]).await.ok();
    aws.ec2(
        "CreateRoute",
        &[
            ("RouteTableId", &table),
            ("DestinationCidrBlock", "10.76.0.0/16"),
            ("VpcPeeringConnectionId", &peering),
        ],
    )
    .await
    .ok();
    let gateway =
        aws.ec2("CreateInternetGateway", &[]).await.ok().expect_value("internetGatewayId");
    aws.ec2("AttachInternetGateway", &[("InternetGatewayId", &gateway), ("VpcId", &near)])
        .await
        .ok();
    aws.ec2(
        "CreateRoute",
        &[("RouteTableId", &table), ("DestinationCidrBlock", "0.0.0.0/0"), ("GatewayId", &gateway)],
    )
    .await
    .ok();
    assert_eq!(state_of(&aws, &table, "10.76.0.0/16").await, "active");
    assert_eq!(state_of(&aws, &table, "0.0.0.0/0").await, "active");
    assert_eq!(state_of(&aws, &table, "10.75.0.0/16").await, "active", "the local route");

    aws.ec2("DeleteVpcPeeringConnection", &[("VpcPeeringConnectionId", &peering)]).await.ok();
    assert_eq!(state_of(&aws, &table, "10.76.0.0/16").await, "blackhole");
    assert_eq!(state_of(&aws, &table, "0.0.0.0/0").await, "active");

    aws.ec2("DetachInternetGateway", &[("InternetGatewayId", &gateway), ("VpcId", &near)])
        .await
        .ok();
    assert_eq!(state_of(&aws, &table, "0.0.0.0/0").await, "blackhole");
    assert_eq!(state_of(&aws, &table, "10.75.0.0/16").await, "active", "the local route");
}
