//! `destroy`: everything of a deployment, found by its tag, deleted in dependency order.
//!
//! 1. every region at once: delete the instant fleets (which terminates their instances),
//!    terminate the other instances and wait until they are gone, then release the
//!    deployment's dedicated hosts that AWS lets go ([`crate::hosts::release_all`]); a Mac host
//!    inside its 24 hours is returned with the time it may go, and a later `destroy` releases
//!    it;
//! 2. the monitoring region: delete the peering connections;
//! 3. every region at once: the launch templates, security
//!    groups, subnets, the internet gateway (detached first), volumes left behind, then the VPC
//!    (its main route table goes with it);
//! 4. the deployment's S3 prefix, the IAM role and instance profile (by the provider).
//!
//! Every resource is checked for the deployment's tag before it is deleted, on top of the tag
//! filter of the Describe call: deleting another deployment's resource because an API (or an
//! emulator) ignored a filter must not be possible. In an existing VPC (`network`) the VPC,
//! subnets, routes and the user's groups never carry the tag, so only flotilla's security group
//! there is deleted, whatever a crash left.
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

use flotilla_core::progress::Progress;

use crate::AwsProvider;
use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::fanout::{Concurrency, fan_out};
use crate::instances::terminate_all;
use crate::tags::{tag_filter, tagged};

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

/// Steps 1 to 3 of the module documentation, in every region the deployment may have used;
/// returns the hosts that may not be released yet.
pub async fn destroy(
    provider: &AwsProvider,
    progress: &dyn Progress,
) -> Result<flotilla_core::provider::Teardown, ProviderError> {
    let clients = &provider.clients;
    let tag = provider.tag.as_str();
    let regions = provider.known_regions();
    let stage = progress.stage("terminating instances", regions.len() as u64);
    let stage_ref = &stage;
    let held = fan_out(
        Concurrency::REGIONS,
        regions.iter().map(|region| async move {
            // Deleting an instant fleet terminates its instances; the rest go next.
            delete_fleets(clients, region, tag).await?;
            terminate_all(clients, region, tag).await?;
            // Hosts go once their instances have.
            let held = crate::hosts::release_all(clients, region, tag).await?;
            stage_ref.advance(1);
            Ok::<_, ProviderError>(held)
        }),
    )
    .await?;
    drop(stage);
    let held_hosts: Vec<flotilla_core::provider::HeldHost> = held.into_iter().flatten().collect();

    let stage = progress.stage("deleting networks", regions.len() as u64);
    delete_peerings(clients, crate::MONITORING_REGION, tag).await?;
    let stage_ref = &stage;
    fan_out(
        Concurrency::REGIONS,
        regions.iter().map(|region| async move {
            crate::templates::delete_all(clients, region, tag).await?;
            delete_network(clients, region, tag).await?;
            stage_ref.advance(1);
            Ok::<(), ProviderError>(())
        }),
    )
    .await?;
    Ok(flotilla_core::provider::Teardown { held_hosts })
}

/// Deletes the deployment's instant fleets in `region`, terminating their instances (EC2 wants
/// `TerminateInstances` for an instant fleet).
pub async fn delete_fleets(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<usize, ProviderError> {
    let ec2 = clients.ec2(region);
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .describe_fleets()
            .max_results(1000)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(region, "DescribeFleets", format!("deployment {tag}"), e)
            })?;
        for fleet in page.fleets() {
            let live = fleet.fleet_state().is_some_and(|s| !s.as_str().starts_with("deleted"));
            if live && tagged(fleet.tags(), tag) {
                ids.extend(fleet.fleet_id().map(str::to_owned));
            }
        }
        token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    // At most 25 instant fleets per request. moto refuses a request whose fleets have no
    // instance left to terminate, after marking the first fleet deleted: such a chunk goes
    // again one fleet at a time.
    for chunk in ids.chunks(25) {
        let delete = |fleets: Vec<String>| {
            let ec2 = &ec2;
            async move {
                delete_with_retries(|| async {
                    match ec2
                        .delete_fleets()
                        .set_fleet_ids(Some(fleets.clone()))
                        .terminate_instances(true)
                        .send()
                        .await
                    {
                        Ok(_) => Ok(true),
                        Err(e) => {
                            let error =
                                AwsError::from_sdk(region, "DeleteFleets", fleets.join(", "), e);
                            if error.code_is("InvalidParameterCombination")
                                && error.detail.contains("No instances")
                            {
                                Ok(false)
                            } else {
                                Err(error)
                            }
                        }
                    }
                })
                .await
            }
        };
        if !delete(chunk.to_vec()).await? && chunk.len() > 1 {
            for id in chunk {
                delete(vec![id.clone()]).await?;
            }
        }
    }
    Ok(ids.len())
}

/// Runs `delete` until it succeeds, the resource is gone, or the dependency deadline passes.
async fn delete_with_retries<T: Default, F, Fut>(mut delete: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let deadline = Instant::now() + DEPENDENCY_DEADLINE;
    let mut delay = Duration::from_secs(1);
    loop {
        match delete().await {
            Ok(done) => return Ok(done),
            Err(error) if GONE.iter().any(|gone| error.code_is(gone)) => return Ok(T::default()),
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
