//! `destroy`: everything of a deployment, found by its tag, deleted in dependency order.
//!
//! 1. every region at once: terminate instances and wait until they are gone;
//! 2. the monitoring region: delete the peering connections;
//! 3. every region at once: security groups, subnets, the internet gateway (detached first),
//!    volumes left behind, then the VPC (its main route table goes with it);
//! 4. the deployment's S3 prefix, the IAM role and instance profile.
//!
//! Every resource is checked for the deployment's tag before it is deleted, on top of the tag
//! filter of the Describe call: deleting another deployment's resource because an API (or an
//! emulator) ignored a filter must not be possible.
//!
//! A `DependencyViolation` (an ENI or route that AWS releases a moment after its instance) and
//! throttling are retried: 1 s, doubling to 10 s, ±20 % jitter, for up to
//! [`DEPENDENCY_DEADLINE`]; an error that cannot heal (`UnauthorizedOperation`…) ends the
//! deletion at once. Anything already gone is fine, so a second `destroy` after a crash finishes
//! the job.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use flotilla_core::provider::ProviderError;
use rand::Rng;
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::network::tag_filter;
use crate::records::TAG_DEPLOYMENT;

/// How long deletions blocked by a dependency are retried.
pub const DEPENDENCY_DEADLINE: Duration = Duration::from_secs(300);

/// Codes that mean the resource is already gone.
const GONE: &[&str] = &[
    "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound",
    "InvalidGroup.NotFound",
    "InvalidInternetGatewayID.NotFound",
    "InvalidVpcPeeringConnectionID.NotFound",
    "InvalidVolume.NotFound",
    "Gateway.NotAttached",
];

/// Whether `tags` carry deployment `tag`.
pub fn tagged(tags: &[aws_sdk_ec2::types::Tag], tag: &str) -> bool {
    tags.iter().any(|t| t.key() == Some(TAG_DEPLOYMENT) && t.value() == Some(tag))
}

/// Runs `delete` until it succeeds, the resource is gone, or the dependency deadline passes.
async fn delete_with_retries<F, Fut>(mut delete: F) -> Result<(), ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), AwsError>>,
{
    let deadline = Instant::now() + DEPENDENCY_DEADLINE;
    let mut delay = Duration::from_secs(1);
    loop {
        match delete().await {
            Ok(()) => return Ok(()),
            Err(error) if GONE.iter().any(|gone| error.code_is(gone)) => return Ok(()),
            Err(error)
                if matches!(error.healing(), Healing::Propagating | Healing::Transient)
                    && Instant::now() < deadline =>
            {
                tracing::debug!(%error, "waiting for dependencies to go");
                let jitter = rand::rng().random_range(0.8..1.2);
                tokio::time::sleep(delay.mul_f64(jitter)).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Deletes the peering connections of deployment `tag` (they are all requested from `hub`).
pub async fn delete_peerings(
    clients: &Clients,
    hub: &str,
    tag: &str,
) -> Result<usize, ProviderError> {
    let ec2 = clients.ec2(hub);
    let found = ec2
        .describe_vpc_peering_connections()
        .filters(tag_filter(tag))
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk(hub, "DescribeVpcPeeringConnections", format!("deployment {tag}"), e)
        })?;
    let mut deleted = 0;
    for peering in found.vpc_peering_connections() {
        let live = peering.status().and_then(|s| s.code()).is_some_and(|c| {
            !matches!(c.as_str(), "deleted" | "deleting" | "rejected" | "failed" | "expired")
        });
        let Some(id) =
            peering.vpc_peering_connection_id().filter(|_| live && tagged(peering.tags(), tag))
        else {
            continue;
        };
        delete_with_retries(|| async {
            ec2.delete_vpc_peering_connection()
                .vpc_peering_connection_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(hub, "DeleteVpcPeeringConnection", id, e))
        })
        .await?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletes the network of deployment `tag` in `region` (instances must be gone).
pub async fn delete_network(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<(), ProviderError> {
    let ec2 = clients.ec2(region);

    let groups =
        ec2.describe_security_groups().filters(tag_filter(tag)).send().await.map_err(|e| {
            AwsError::from_sdk(region, "DescribeSecurityGroups", format!("deployment {tag}"), e)
        })?;
    for group in groups.security_groups().iter().filter(|g| tagged(g.tags(), tag)) {
        let Some(id) = group.group_id() else { continue };
        delete_with_retries(|| async {
            ec2.delete_security_group()
                .group_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, "DeleteSecurityGroup", id, e))
        })
        .await?;
    }

    let subnets = ec2.describe_subnets().filters(tag_filter(tag)).send().await.map_err(|e| {
        AwsError::from_sdk(region, "DescribeSubnets", format!("deployment {tag}"), e)
    })?;
    for subnet in subnets.subnets().iter().filter(|s| tagged(s.tags(), tag)) {
        let Some(id) = subnet.subnet_id() else { continue };
        delete_with_retries(|| async {
            ec2.delete_subnet()
                .subnet_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, "DeleteSubnet", id, e))
        })
        .await?;
    }

    let gateways =
        ec2.describe_internet_gateways().filters(tag_filter(tag)).send().await.map_err(|e| {
            AwsError::from_sdk(region, "DescribeInternetGateways", format!("deployment {tag}"), e)
        })?;
    for gateway in gateways.internet_gateways().iter().filter(|g| tagged(g.tags(), tag)) {
        let Some(id) = gateway.internet_gateway_id() else { continue };
        for attachment in gateway.attachments() {
            let Some(vpc) = attachment.vpc_id() else { continue };
            delete_with_retries(|| async {
                ec2.detach_internet_gateway()
                    .internet_gateway_id(id)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| AwsError::from_sdk(region, "DetachInternetGateway", id, e))
            })
            .await?;
        }
        delete_with_retries(|| async {
            ec2.delete_internet_gateway()
                .internet_gateway_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, "DeleteInternetGateway", id, e))
        })
        .await?;
    }

    // Root volumes go with their instances; any tagged volume left (detached) goes now.
    let volumes = ec2
        .describe_volumes()
        .filters(tag_filter(tag))
        .filters(Filter::builder().name("status").values("available").build())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk(region, "DescribeVolumes", format!("deployment {tag}"), e)
        })?;
    for volume in volumes.volumes().iter().filter(|v| tagged(v.tags(), tag)) {
        let Some(id) = volume.volume_id() else { continue };
        delete_with_retries(|| async {
            ec2.delete_volume()
                .volume_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, "DeleteVolume", id, e))
        })
        .await?;
    }

    let vpcs =
        ec2.describe_vpcs().filters(tag_filter(tag)).send().await.map_err(|e| {
            AwsError::from_sdk(region, "DescribeVpcs", format!("deployment {tag}"), e)
        })?;
    for vpc in vpcs.vpcs().iter().filter(|v| tagged(v.tags(), tag)) {
        let Some(id) = vpc.vpc_id() else { continue };
        delete_with_retries(|| async {
            ec2.delete_vpc()
                .vpc_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| AwsError::from_sdk(region, "DeleteVpc", id, e))
        })
        .await?;
    }
    Ok(())
}
