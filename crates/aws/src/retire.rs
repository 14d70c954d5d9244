//! `retire`: machines leave the deployment one by one (a smaller `count`, or a machine that is
//! gone and is replaced under its name), without touching anything shared.
//!
//! Per region at once:
//! 1. `TerminateInstances` for the machines' instances that have not ended yet (an instance
//!    already gone, `InvalidInstanceID.NotFound`, is what was asked);
//! 2. wait until each has terminated, polling `DescribeInstances` by id 1 s after the request,
//!    then every 1.5× longer up to 5 s, ±20 % jitter, for at most [`RUNNING_DEADLINE`], so that
//!    `machines()` (which lists shutting-down instances) no longer lists them;
//! 3. the machine's identity object is deleted from the bucket and its name leaves the journal
//!    (only while the journal still names that instance), so `launch` of a plan that names it
//!    starts a new instance under the name.
//!
//! Each step is safe to repeat: a re-run after a crash terminates nothing twice and finds the
//! rest done.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_core::progress::Progress;
use flotilla_core::provider::{Machine, MachineState, ProviderError};

use crate::AwsProvider;
use crate::clients::HOME_REGION;
use crate::error::AwsError;
use crate::fanout::{Concurrency, fan_out};
use crate::instances::{RUNNING_DEADLINE, describe, sleep_with_jitter};

/// The first poll after `TerminateInstances`, the growth and the cap of the poll schedule.
const FIRST_POLL: Duration = Duration::from_secs(1);
const LONGEST_POLL: Duration = Duration::from_secs(5);

/// The poll after `delay`: 1.5× longer, at most [`LONGEST_POLL`].
fn next_poll(delay: Duration) -> Duration {
    (delay * 3 / 2).min(LONGEST_POLL)
}

/// See the module documentation.
pub async fn retire(
    provider: &AwsProvider,
    machines: &[Machine],
    progress: &dyn Progress,
) -> Result<(), ProviderError> {
    if machines.is_empty() {
        return Ok(());
    }
    let stage = progress.stage("terminating retired instances", machines.len() as u64);
    let mut by_region: BTreeMap<&str, Vec<&Machine>> = BTreeMap::new();
    for machine in machines {
        by_region.entry(machine.region.as_str()).or_default().push(machine);
    }
    fan_out(
        Concurrency::REGIONS,
        by_region.iter().map(|(region, machines)| {
            let stage = &stage;
            async move {
                let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
                terminate_and_wait(provider, region, &ids).await?;
                stage.advance(machines.len() as u64);
                Ok::<(), ProviderError>(())
            }
        }),
    )
    .await?;
    drop(stage);

    let records = provider.journal.read();
    if let (Some(bucket), Some(role_id)) = (records.bucket.clone(), records.role_id.clone()) {
        for machine in machines {
            let key = crate::userdata::identity_key(&provider.tag, &role_id, &machine.id);
            provider
                .clients
                .s3()
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(HOME_REGION, "DeleteObject", &key, e))?;
        }
    }
    provider.journal.update(|r| {
        for machine in machines {
            if r.machines.get(&machine.name).is_some_and(|m| m.instance_id == machine.id) {
                r.machines.remove(&machine.name);
            }
            r.retiring.remove(&machine.id);
        }
    })?;
    Ok(())
}

/// Steps 1 and 2 for the instances `ids` of `region`.
async fn terminate_and_wait(
    provider: &AwsProvider,
    region: &str,
    ids: &[String],
) -> Result<(), ProviderError> {
    let clients = &provider.clients;
    let found = match describe(clients, region, &provider.tag, None, Some(ids)).await {
        Ok(found) => found,
        // Instances that ended long ago are no longer known at all.
        Err(error) if error.code_is("InvalidInstanceID.NotFound") => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let live: Vec<String> = found
        .iter()
        .filter(|f| !matches!(f.state, MachineState::Terminated | MachineState::ShuttingDown))
        .map(|f| f.id.clone())
        .collect();
    if !live.is_empty() {
        let answer = clients
            .ec2(region)
            .terminate_instances()
            .set_instance_ids(Some(live.clone()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "TerminateInstances", live.join(", "), e));
        match answer {
            Ok(_) => {}
            Err(error) if error.code_is("InvalidInstanceID.NotFound") => {}
            Err(error) => return Err(error.into()),
        }
    }
    let deadline = Instant::now() + RUNNING_DEADLINE;
    let mut delay = FIRST_POLL;
    loop {
        sleep_with_jitter(delay).await;
        let found = match describe(clients, region, &provider.tag, None, Some(ids)).await {
            Ok(found) => found,
            Err(error) if error.code_is("InvalidInstanceID.NotFound") => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        let left: Vec<String> = found
            .into_iter()
            .filter(|f| f.state != MachineState::Terminated)
            .map(|f| f.id)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProviderError::new(format!(
                "{region}: {} did not terminate within {}",
                left.join(", "),
                humantime::format_duration(RUNNING_DEADLINE)
            )));
        }
        delay = next_poll(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_grows_by_half_to_five_seconds() {
        let mut delay = FIRST_POLL;
        let mut seen = vec![delay];
        for _ in 0..6 {
            delay = next_poll(delay);
            seen.push(delay);
        }
        assert_eq!(seen[1], Duration::from_millis(1500));
        assert_eq!(seen[2], Duration::from_millis(2250));
        assert_eq!(*seen.last().unwrap(), LONGEST_POLL);
    }
}
