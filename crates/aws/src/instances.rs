//! Instances: finding the deployment's instances again, waiting for new ones to run with an
//! address, terminating some (`retire`) or all (`destroy`) and waiting until they are gone.
//!
//! Launching is [`crate::fleet`]'s (CreateFleet, driven by the launch planner); naming and
//! adoption are [`crate::launch`]'s. Waits follow a written schedule and retry throttling and
//! ids not yet visible until their deadline; an error that cannot heal (`UnauthorizedOperation`,
//! …: [`Healing::Never`]) ends them at once, with its code and ids.

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceLifecycleType, InstanceStateName};
use flotilla_capacity::Lifecycle;
use flotilla_core::provider::{MachineState, ProviderError, Role};
use rand::Rng;
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::tags::{TAG_GROUP, TAG_MACHINE, TAG_REQUEST, TAG_ROLE, tag_filter, tagged, value_of};
/// When the first look at launched instances happens.
const FIRST_RUNNING_POLL: Duration = Duration::from_secs(3);
/// How long instances may take to run with a public address.
pub const RUNNING_DEADLINE: Duration = Duration::from_secs(600);

/// An instance of the deployment as EC2 describes it.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: String,
    pub region: String,
    pub state: MachineState,
    pub public_ip: Option<IpAddr>,
    pub private_ip: Option<IpAddr>,
    pub role: Option<Role>,
    /// The capacity group it was launched for ([`TAG_GROUP`]).
    pub group: Option<String>,
    /// The machine it was named ([`TAG_MACHINE`]), once tagged.
    pub machine: Option<String>,
    /// The fleet request that launched it ([`TAG_REQUEST`]).
    pub request: Option<String>,
    pub instance_type: String,
    pub zone: String,
    pub lifecycle: Lifecycle,
    pub launch_time: i64,
    /// EC2's reason for the last state change (`StateReason`), e.g.
    /// `Server.SpotInstanceTermination: Spot instance termination`, when it gives one.
    pub state_reason: Option<String>,
    /// The image it booted (`ami-…`).
    pub image_id: Option<String>,
}

impl Found {
    /// The machine this instance is: by the journal, else by its [`TAG_MACHINE`] tag.
    pub fn name_in<'r>(&'r self, records: &'r crate::records::Records) -> Option<&'r str> {
        records.name_of(&self.id).or(self.machine.as_deref())
    }

    /// Whether it runs or is on its way to running (a machine that is stopping, stopped or
    /// ending will not serve again and is replaced).
    pub fn alive(&self) -> bool {
        matches!(self.state, MachineState::Pending | MachineState::Running)
    }
}

fn machine_state(state: Option<&InstanceStateName>) -> MachineState {
    match state {
        Some(InstanceStateName::Running) => MachineState::Running,
        Some(InstanceStateName::Pending) => MachineState::Pending,
        Some(InstanceStateName::ShuttingDown) => MachineState::ShuttingDown,
        Some(InstanceStateName::Terminated) => MachineState::Terminated,
        _ => MachineState::Stopped,
    }
}

fn found_from(region: &str, instance: &aws_sdk_ec2::types::Instance) -> Option<Found> {
    let tag = |key: &str| value_of(instance.tags(), key).map(str::to_owned);
    Some(Found {
        id: instance.instance_id()?.to_owned(),
        region: region.to_owned(),
        state: machine_state(instance.state().and_then(|s| s.name())),
        public_ip: instance.public_ip_address().and_then(|ip| ip.parse().ok()),
        private_ip: instance.private_ip_address().and_then(|ip| ip.parse().ok()),
        role: tag(TAG_ROLE).and_then(|r| match r.as_str() {
            "monitoring" => Some(Role::Monitoring),
            "binary" => Some(Role::Binary),
            _ => None,
        }),
        group: tag(TAG_GROUP),
        machine: tag(TAG_MACHINE),
        request: tag(TAG_REQUEST),
        instance_type: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        zone: instance
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        lifecycle: match instance.instance_lifecycle() {
            Some(InstanceLifecycleType::Spot) => Lifecycle::Spot,
            _ => Lifecycle::OnDemand,
        },
        launch_time: instance.launch_time().map(|t| t.secs()).unwrap_or(0),
        state_reason: instance.state_reason().and_then(state_reason),
        image_id: instance.image_id().map(str::to_owned),
    })
}

/// `<code>: <message>` of EC2's state reason, or whichever of the two it gave.
fn state_reason(reason: &aws_sdk_ec2::types::StateReason) -> Option<String> {
    let code = reason.code().map(str::trim).filter(|c| !c.is_empty());
    let message = reason.message().map(str::trim).filter(|m| !m.is_empty());
    match (code, message) {
        // EC2's messages usually repeat the code: `Client.UserInitiatedShutdown: User …`.
        (Some(code), Some(message)) if message.starts_with(code) => Some(message.to_owned()),
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (Some(only), None) | (None, Some(only)) => Some(only.to_owned()),
        (None, None) => None,
    }
}

/// Every instance of deployment `tag` in `region` that is not terminated, optionally only those
/// matching `extra` (e.g. one fleet request's tag) or with given ids. Follows pagination.
pub async fn describe(
    clients: &Clients,
    region: &str,
    tag: &str,
    extra: Option<Filter>,
    ids: Option<&[String]>,
) -> Result<Vec<Found>, AwsError> {
    let ec2 = clients.ec2(region);
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request =
            ec2.describe_instances().filters(tag_filter(tag)).set_next_token(token.clone());
        // Terminated instances linger in answers for an hour: leave them out of a search, but
        // not of a look at given ids, whose waiter must see an instance that ended (and why).
        if ids.is_none() {
            request = request.filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .values("shutting-down")
                    .build(),
            );
        }
        if let Some(extra) = &extra {
            request = request.filters(extra.clone());
        }
        if let Some(ids) = ids {
            request = request.set_instance_ids(Some(ids.to_vec()));
        }
        let page = request.send().await.map_err(|e| {
            AwsError::from_sdk(region, "DescribeInstances", format!("deployment {tag}"), e)
        })?;
        for reservation in page.reservations() {
            // The tag is checked here too: terminating another deployment's instance because a
            // filter was ignored must not be possible.
            found.extend(
                reservation
                    .instances()
                    .iter()
                    .filter(|i| tagged(i.tags(), tag))
                    .filter_map(|i| found_from(region, i)),
            );
        }
        token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if token.is_none() {
            // The extra filter is checked here too, for an emulator that ignores one.
            if let Some(extra) = &extra
                && let Some(key) = extra.name().and_then(|n| n.strip_prefix("tag:"))
            {
                found.retain(|f| {
                    let value = match key {
                        TAG_REQUEST => f.request.as_deref(),
                        TAG_GROUP => f.group.as_deref(),
                        TAG_MACHINE => f.machine.as_deref(),
                        _ => return true,
                    };
                    value.is_some_and(|v| extra.values().iter().any(|w| w == v))
                });
            }
            return Ok(found);
        }
    }
}

/// Sleeps `delay` ±20 %.
pub async fn sleep_with_jitter(delay: Duration) {
    let jitter = rand::rng().random_range(0.8..1.2);
    tokio::time::sleep(delay.mul_f64(jitter)).await;
}

/// Waits until every instance in `ids` of `region` runs with a public address; returns them.
/// Polls 3 s after the launch (an instance is rarely running sooner; +0–10 % jitter), then 1 s
/// later, then every 1.5× longer up to 5 s, ±20 % jitter.
pub async fn wait_running(
    clients: &Clients,
    region: &str,
    tag: &str,
    ids: &[String],
) -> Result<Vec<Found>, ProviderError> {
    let deadline = Instant::now() + RUNNING_DEADLINE;
    let mut delay = FIRST_RUNNING_POLL;
    loop {
        if delay == FIRST_RUNNING_POLL {
            // Jitter only later: an early first look finds instances still pending.
            let first = delay.mul_f64(rand::rng().random_range(1.0..1.1));
            tokio::time::sleep(first).await;
        } else {
            sleep_with_jitter(delay).await;
        }
        let mut found = Vec::new();
        let mut looked = Ok(());
        for chunk in ids.chunks(1000) {
            match describe(clients, region, tag, None, Some(chunk)).await {
                Ok(some) => found.extend(some),
                Err(error) => {
                    looked = Err(error);
                    break;
                }
            }
        }
        if let Err(error) = looked {
            // New ids are not visible to every call at once; throttling passes.
            if !can_wait_out(&error) || Instant::now() >= deadline {
                return Err(error.into());
            }
            tracing::debug!(%error, "describing new instances; trying again");
            delay = next_running_poll(delay);
            continue;
        }
        if let Some(gone) = found
            .iter()
            .find(|f| matches!(f.state, MachineState::ShuttingDown | MachineState::Terminated))
        {
            let reason = gone.state_reason.as_deref().unwrap_or("EC2 gave no reason");
            return Err(ProviderError::new(format!(
                "{region}: instance {} ended while starting ({}: {reason})",
                gone.id,
                gone.state.as_str()
            )));
        }
        let ready = found.len() == ids.len()
            && found.iter().all(|f| f.state == MachineState::Running && f.public_ip.is_some());
        if ready {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<&str> = ids
                .iter()
                .filter(|id| {
                    !found.iter().any(|f| &f.id == *id && f.state == MachineState::Running)
                })
                .map(String::as_str)
                .collect();
            return Err(ProviderError::new(format!(
                "{region}: instances {} did not run with a public address within {}",
                waiting.join(", "),
                humantime::format_duration(RUNNING_DEADLINE)
            )));
        }
        delay = next_running_poll(delay);
    }
}

/// The poll after one `delay` long: 1 s after the first, then 1.5× longer up to 5 s.
fn next_running_poll(delay: Duration) -> Duration {
    if delay == FIRST_RUNNING_POLL {
        Duration::from_secs(1)
    } else {
        (delay * 3 / 2).min(Duration::from_secs(5))
    }
}

/// Whether a wait may call again after `error`: throttling and eventual consistency pass, an
/// error that cannot heal ends the wait at once.
fn can_wait_out(error: &AwsError) -> bool {
    matches!(error.healing(), Healing::Transient | Healing::Propagating)
}

/// How long terminated instances may take to leave `shutting-down`.
pub const TERMINATED_DEADLINE: Duration = Duration::from_secs(600);

/// The wait before look number `attempt` (from 0) at terminating instances: 1 s after
/// `TerminateInstances`, then each wait 1.5× the one before, capped at 5 s, each stretched by
/// `jitter` (drawn in 0.8..1.2 by the caller), until [`TERMINATED_DEADLINE`]. EC2 takes from a
/// few seconds to a minute or two to end an instance, so the cap keeps the answer prompt
/// without a DescribeInstances a second per region.
pub fn termination_poll(attempt: u32, jitter: f64) -> Duration {
    let grown = Duration::from_secs(1).mul_f64(1.5f64.powi(attempt.min(16) as i32));
    grown.min(Duration::from_secs(5)).mul_f64(jitter)
}

/// Terminates every instance of the deployment in `region` and waits until they are gone.
pub async fn terminate_all(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<usize, ProviderError> {
    let found = describe(clients, region, tag, None, None).await?;
    if found.is_empty() {
        return Ok(0);
    }
    terminate_found(clients, region, &found).await?;
    wait_terminated(clients, region, tag, None).await?;
    Ok(found.len())
}

/// Terminates the instances `ids` of the deployment in `region` and waits until each is
/// terminated (no longer one of [`describe`]'s, so no longer a machine). An id that is not the
/// deployment's, or already terminated, is left alone: it is never terminated (another
/// deployment's instance), and counts as done. Returns how many were still there.
pub async fn terminate(
    clients: &Clients,
    region: &str,
    tag: &str,
    ids: &[String],
) -> Result<usize, ProviderError> {
    // By tag, not by id: an id EC2 no longer knows would fail a look by ids, and an id of
    // another deployment must not be touched.
    let found: Vec<Found> = describe(clients, region, tag, None, None)
        .await?
        .into_iter()
        .filter(|f| ids.contains(&f.id))
        .collect();
    if found.is_empty() {
        return Ok(0);
    }
    terminate_found(clients, region, &found).await?;
    wait_terminated(clients, region, tag, Some(ids)).await?;
    Ok(found.len())
}

/// `TerminateInstances` for those of `found` not already ending (a deleted fleet's, a
/// reclaimed spot machine's, are only waited for). An id EC2 does not know is gone already.
async fn terminate_found(
    clients: &Clients,
    region: &str,
    found: &[Found],
) -> Result<(), ProviderError> {
    let ids: Vec<String> = found
        .iter()
        .filter(|f| !matches!(f.state, MachineState::Terminated | MachineState::ShuttingDown))
        .map(|f| f.id.clone())
        .collect();
    for chunk in ids.chunks(1000) {
        let result = clients
            .ec2(region)
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await;
        if let Err(e) = result {
            let error = AwsError::from_sdk(region, "TerminateInstances", ids_resource(chunk), e);
            if error.code_is("InvalidInstanceID.NotFound") {
                tracing::debug!(%error, "instances already gone");
                continue;
            }
            return Err(error.into());
        }
    }
    Ok(())
}

/// Instance ids as an error's resource: each, up to five, else how many and the first.
fn ids_resource(ids: &[String]) -> String {
    match ids {
        [] => "no instances".to_owned(),
        [_, _, _, _, _, _, ..] => format!("{} instances ({}, …)", ids.len(), ids[0]),
        _ => ids.join(", "),
    }
}

/// Waits on [`termination_poll`]'s schedule until no instance of the deployment in `region`
/// (of `ids` only, when given) is left but terminated ones.
async fn wait_terminated(
    clients: &Clients,
    region: &str,
    tag: &str,
    ids: Option<&[String]>,
) -> Result<(), ProviderError> {
    let deadline = Instant::now() + TERMINATED_DEADLINE;
    let mut attempt = 0;
    loop {
        let jitter = rand::rng().random_range(0.8..1.2);
        tokio::time::sleep(termination_poll(attempt, jitter)).await;
        attempt += 1;
        let left = match describe(clients, region, tag, None, None).await {
            Ok(left) => left,
            Err(error) if can_wait_out(&error) && Instant::now() < deadline => {
                tracing::debug!(%error, "describing terminating instances; trying again");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let left: Vec<String> = left
            .into_iter()
            .filter(|f| ids.is_none_or(|ids| ids.contains(&f.id)))
            .map(|f| f.id)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProviderError::new(format!(
                "{region}: instances {} did not terminate within {}",
                ids_resource(&left),
                humantime::format_duration(TERMINATED_DEADLINE)
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_termination_wait_grows_to_five_seconds_with_its_jitter() {
        let waits: Vec<u64> = (0..6).map(|a| termination_poll(a, 1.0).as_millis() as u64).collect();
        assert_eq!(waits, [1000, 1500, 2250, 3375, 5000, 5000]);
        assert_eq!(termination_poll(0, 0.8), Duration::from_millis(800));
        assert_eq!(termination_poll(40, 1.2), Duration::from_secs(6));
        let total: Duration = (0..200).map(|a| termination_poll(a, 1.0)).sum();
        assert!(total > TERMINATED_DEADLINE, "the deadline, not the schedule, ends the wait");
    }

    #[test]
    fn an_instance_carries_ec2s_state_reason() {
        use aws_sdk_ec2::types::{Instance, InstanceState, StateReason, Tag};
        let instance = |reason: Option<StateReason>| {
            Instance::builder()
                .instance_id("i-0123")
                .state(InstanceState::builder().name(InstanceStateName::Stopped).build())
                .set_state_reason(reason)
                .tags(Tag::builder().key(TAG_GROUP).value("g").build())
                .build()
        };
        let spot = StateReason::builder()
            .code("Server.SpotInstanceTermination")
            .message("Server.SpotInstanceTermination: Spot instance termination")
            .build();
        let found = found_from("r", &instance(Some(spot))).unwrap();
        assert_eq!(
            found.state_reason.as_deref(),
            Some("Server.SpotInstanceTermination: Spot instance termination")
        );
        assert_eq!(found.state, MachineState::Stopped);
        assert_eq!(found.group.as_deref(), Some("g"));
        assert!(!found.alive());
        let bare =
            StateReason::builder().code("Server.InternalError").message("boot failed").build();
        let found = found_from("r", &instance(Some(bare))).unwrap();
        assert_eq!(found.state_reason.as_deref(), Some("Server.InternalError: boot failed"));
        let empty = StateReason::builder().code("").message("").build();
        assert_eq!(found_from("r", &instance(Some(empty))).unwrap().state_reason, None);
        assert_eq!(found_from("r", &instance(None)).unwrap().state_reason, None);
    }
}
