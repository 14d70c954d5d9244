//! One fleet request of the launch planner, made: a `CreateFleet` of type `instant` whose
//! overrides are the request's types (in preference order: `Priority` = index) in the zone's
//! subnet, each type through the launch template of its architecture; its `Instances` and
//! `Errors` become the planner's [`FleetAnswer`].
//!
//! Every request carries a token: its `ClientToken`, and a tag ([`TAG_REQUEST`]) on the
//! instances and volumes it launches, beside the deployment's and the group's tags. SDK retries
//! are off for `CreateFleet` (a retried launch may launch twice); when the call itself fails in
//! a way that may hide a launch (throttling, a 5xx, a timeout), the instances of its token are
//! looked up before anything else: found, they are the answer; not found, the planner hears a
//! throttled answer and asks again after its backoff. An instance profile EC2 does not see yet
//! is waited out (up to [`PROPAGATION_DEADLINE`]); a call refused for good (a permission, a bad
//! parameter) fails the launch with its code, call and region.

use std::time::Duration;

use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycle, InstanceType,
    OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy, SpotOptionsRequest,
    TargetCapacitySpecificationRequest,
};
use flotilla_capacity::launch::Allocation;
use flotilla_capacity::{FleetAnswer, FleetError, FleetRequest, Launched, Lifecycle};
use flotilla_core::provider::{ProviderError, Role};
use rand::Rng;
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::instances::{describe, sleep_with_jitter};
use crate::journal::Journal;
use crate::network::{self, RegionPlan};
use crate::prepare::GroupSettings;
use crate::tags::{TAG_GROUP, TAG_REQUEST, TAG_ROLE, filter, tag_spec};

/// How long an error of eventual consistency (see [`Healing::Propagating`]) may keep a fleet
/// request waiting: AWS documents such delays in seconds.
pub const PROPAGATION_DEADLINE: Duration = Duration::from_secs(120);

/// What a group's fleet requests need.
#[derive(Clone, Copy, Debug)]
pub struct FleetContext<'a> {
    pub clients: &'a Clients,
    pub journal: &'a Journal,
    pub tag: &'a str,
    pub group: &'a str,
    pub settings: &'a GroupSettings,
    pub region: &'a RegionPlan,
}

impl FleetContext<'_> {
    fn role(&self) -> &'static str {
        match self.settings.role {
            Role::Binary => "binary",
            Role::Monitoring => "monitoring",
        }
    }
}

/// A fresh request token: 16 hex digits (a `ClientToken` may hold 64 ASCII characters).
fn new_token() -> String {
    format!("flotilla-{:016x}", rand::rng().random::<u64>())
}

/// Makes `request` and returns its answer (see the module documentation).
pub async fn create_fleet(
    context: &FleetContext<'_>,
    request: &FleetRequest,
) -> Result<FleetAnswer, ProviderError> {
    let region = context.region.region.as_str();
    let subnet = subnet_for(context, &request.zone).await?;
    let token = new_token();
    let mut configs: Vec<(String, Vec<FleetLaunchTemplateOverridesRequest>)> = Vec::new();
    for (priority, instance_type) in request.instance_types.iter().enumerate() {
        let template = context.settings.templates.get(instance_type).ok_or_else(|| {
            ProviderError::new(format!(
                "{region}: no launch template for {instance_type} in group {}; run create again",
                context.group
            ))
        })?;
        let entry = FleetLaunchTemplateOverridesRequest::builder()
            .instance_type(InstanceType::from(instance_type.as_str()))
            .subnet_id(&subnet)
            .availability_zone(&request.zone)
            .priority(priority as f64)
            .build();
        match configs.iter_mut().find(|(id, _)| id == template) {
            Some((_, overrides)) => overrides.push(entry),
            None => configs.push((template.clone(), vec![entry])),
        }
    }
    let configs: Vec<FleetLaunchTemplateConfigRequest> = configs
        .into_iter()
        .map(|(id, overrides)| {
            FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(
                    FleetLaunchTemplateSpecificationRequest::builder()
                        .launch_template_id(id)
                        .version("$Latest")
                        .build(),
                )
                .set_overrides(Some(overrides))
                .build()
        })
        .collect();
    let count = i32::try_from(request.count).unwrap_or(i32::MAX);
    let market = match request.lifecycle {
        Lifecycle::Spot => DefaultTargetCapacityType::Spot,
        Lifecycle::OnDemand => DefaultTargetCapacityType::OnDemand,
    };
    let name = format!("flotilla-{}-{}", context.tag, context.group);
    let extra = [(TAG_ROLE, context.role()), (TAG_GROUP, context.group), (TAG_REQUEST, &token)];
    let describe_what = format!(
        "{} × {} {} in {} ({})",
        request.count,
        request.lifecycle,
        context.group,
        request.zone,
        request.instance_types.join(", ")
    );
    let started = Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        let mut call = context
            .clients
            .ec2(region)
            .create_fleet()
            .r#type(FleetType::Instant)
            .client_token(&token)
            .set_launch_template_configs(Some(configs.clone()))
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(count)
                    .default_target_capacity_type(market.clone())
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, context.tag, &name, &extra))
            .tag_specifications(tag_spec(ResourceType::Volume, context.tag, &name, &extra))
            .tag_specifications(tag_spec(ResourceType::Fleet, context.tag, &name, &extra));
        call = match request.allocation {
            Allocation::PriceCapacityOptimized => call.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            ),
            Allocation::Prioritized => call.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::Prioritized)
                    .build(),
            ),
            Allocation::LowestPrice => call.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            ),
        };
        let result = call.customize().config_override(crate::clients::no_retries()).send().await;
        let error = match result {
            Ok(answer) => return Ok(read_answer(request, &answer)),
            Err(e) => AwsError::from_sdk(region, "CreateFleet", describe_what.clone(), e),
        };
        let code = error.code.clone().unwrap_or_else(|| "InternalError".to_owned());
        match flotilla_capacity::classify(&code) {
            // A whole-call capacity or quota answer: the planner marks the request's pools.
            flotilla_capacity::ErrorClass::Pool
            | flotilla_capacity::ErrorClass::Quota
            | flotilla_capacity::ErrorClass::Subnet => {
                return Ok(FleetAnswer {
                    launched: Vec::new(),
                    errors: vec![FleetError {
                        instance_type: None,
                        code,
                        message: error.detail.clone(),
                    }],
                });
            }
            _ => {}
        }
        if error.healing() == Healing::Never {
            return Err(error.into());
        }
        // The call may have launched before it failed: its token's instances are the answer.
        let found = describe(
            context.clients,
            region,
            context.tag,
            Some(filter(&format!("tag:{TAG_REQUEST}"), &token)),
            None,
        )
        .await?;
        if !found.is_empty() {
            tracing::info!(%region, group = context.group, %error, instances = found.len(), "CreateFleet failed after launching; its instances are kept");
            return Ok(FleetAnswer {
                launched: found
                    .into_iter()
                    .map(|f| Launched {
                        instance_id: f.id,
                        instance_type: f.instance_type,
                        zone: if f.zone.is_empty() { request.zone.clone() } else { f.zone },
                        lifecycle: f.lifecycle,
                    })
                    .collect(),
                errors: Vec::new(),
            });
        }
        if error.healing() == Healing::Propagating {
            if started.elapsed() >= PROPAGATION_DEADLINE {
                return Err(ProviderError::with_source(
                    format!(
                        "{region}: still refused after {}: {error}",
                        humantime::format_duration(PROPAGATION_DEADLINE)
                    ),
                    error,
                ));
            }
            tracing::debug!(%error, "CreateFleet refused while AWS catches up; trying again");
            sleep_with_jitter(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            continue;
        }
        // Throttled or a transient fault: the planner backs off and asks again.
        tracing::warn!(%error, "CreateFleet failed; the planner will ask again");
        let code = if error.code.is_some() { code } else { "InternalError".to_owned() };
        return Ok(FleetAnswer {
            launched: Vec::new(),
            errors: vec![FleetError { instance_type: None, code, message: error.detail }],
        });
    }
}

/// The planner's answer from EC2's.
fn read_answer(
    request: &FleetRequest,
    answer: &aws_sdk_ec2::operation::create_fleet::CreateFleetOutput,
) -> FleetAnswer {
    let lifecycle = |given: Option<&InstanceLifecycle>| match given {
        Some(InstanceLifecycle::Spot) => Lifecycle::Spot,
        Some(InstanceLifecycle::OnDemand) => Lifecycle::OnDemand,
        _ => request.lifecycle,
    };
    let mut result = FleetAnswer::default();
    for entry in answer.instances() {
        let overrides = entry.launch_template_and_overrides().and_then(|l| l.overrides());
        let instance_type = entry
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .or_else(|| overrides.and_then(|o| o.instance_type()).map(|t| t.as_str().to_owned()))
            .unwrap_or_default();
        let zone = overrides
            .and_then(|o| o.availability_zone())
            .unwrap_or(request.zone.as_str())
            .to_owned();
        for id in entry.instance_ids() {
            result.launched.push(Launched {
                instance_id: id.clone(),
                instance_type: instance_type.clone(),
                zone: zone.clone(),
                lifecycle: lifecycle(entry.lifecycle()),
            });
        }
    }
    for error in answer.errors() {
        let overrides = error.launch_template_and_overrides().and_then(|l| l.overrides());
        if error.lifecycle().is_some_and(|l| lifecycle(Some(l)) != request.lifecycle) {
            // An error of the other market: not about the pools this request asked.
            continue;
        }
        result.errors.push(FleetError {
            instance_type: overrides.and_then(|o| o.instance_type()).map(|t| t.as_str().to_owned()),
            code: error.error_code().unwrap_or("InternalError").to_owned(),
            message: error.error_message().unwrap_or_default().to_owned(),
        });
    }
    result
}

/// The zone's subnet, created when the planner first asks for a zone that has none.
pub(crate) async fn subnet_for(
    context: &FleetContext<'_>,
    zone: &str,
) -> Result<String, ProviderError> {
    let plan = context.region;
    if let Some(subnets) = &context.settings.subnets {
        // An existing network: the user's subnet of the zone; flotilla makes none there.
        return subnets.get(zone).cloned().ok_or_else(|| {
            ProviderError::new(format!(
                "{}: group {} has no subnet in {zone} (its subnets are in {})",
                plan.region,
                context.group,
                subnets.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        });
    }
    let records = context.journal.read();
    let record = records.regions.get(&plan.region).cloned().unwrap_or_default();
    if let Some(subnet) = record.subnets.get(zone) {
        return Ok(subnet.clone());
    }
    let vpc = record.vpc_id.clone().ok_or_else(|| {
        ProviderError::new(format!("{}: the VPC is missing; run create again", plan.region))
    })?;
    tracing::info!(region = %plan.region, %zone, "creating the subnet of a zone the launch moved to");
    let subnet =
        network::create_subnet(context.clients, &plan.region, context.tag, &vpc, plan, zone)
            .await?;
    context
        .journal
        .update(|r| r.region(&plan.region).subnets.insert(zone.to_owned(), subnet.clone()))?;
    Ok(subnet)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
    use aws_sdk_ec2::types::{
        CreateFleetError, CreateFleetInstance, FleetLaunchTemplateOverrides,
        LaunchTemplateAndOverridesResponse,
    };

    use super::*;

    fn overrides(instance_type: &str, zone: &str) -> LaunchTemplateAndOverridesResponse {
        LaunchTemplateAndOverridesResponse::builder()
            .overrides(
                FleetLaunchTemplateOverrides::builder()
                    .instance_type(InstanceType::from(instance_type))
                    .availability_zone(zone)
                    .build(),
            )
            .build()
    }

    #[test]
    fn an_answer_gives_each_instance_its_pool_and_each_error_its_type() {
        let request = FleetRequest {
            id: 0,
            zone: "us-east-1a".into(),
            lifecycle: Lifecycle::Spot,
            count: 3,
            instance_types: vec!["m7i.large".into(), "m6i.large".into()],
            allocation: Allocation::PriceCapacityOptimized,
        };
        let answer = CreateFleetOutput::builder()
            .instances(
                CreateFleetInstance::builder()
                    .launch_template_and_overrides(overrides("m6i.large", "us-east-1a"))
                    .lifecycle(InstanceLifecycle::Spot)
                    .instance_type(InstanceType::from("m6i.large"))
                    .instance_ids("i-1")
                    .instance_ids("i-2")
                    .build(),
            )
            .errors(
                CreateFleetError::builder()
                    .launch_template_and_overrides(overrides("m7i.large", "us-east-1a"))
                    .lifecycle(InstanceLifecycle::Spot)
                    .error_code("InsufficientInstanceCapacity")
                    .error_message("no spot capacity")
                    .build(),
            )
            .build();
        let read = read_answer(&request, &answer);
        assert_eq!(read.launched.len(), 2);
        assert!(read.launched.iter().all(|l| l.instance_type == "m6i.large"
            && l.zone == "us-east-1a"
            && l.lifecycle == Lifecycle::Spot));
        assert_eq!(
            read.errors,
            [FleetError {
                instance_type: Some("m7i.large".into()),
                code: "InsufficientInstanceCapacity".into(),
                message: "no spot capacity".into(),
            }]
        );
    }
}
