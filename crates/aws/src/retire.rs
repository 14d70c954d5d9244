//! `retire`: machines removed for good, one by one, while the rest of the deployment stays.
//!
//! 1. **Terminate.** In each region at once, the machines' instances that are still the
//!    deployment's (found by its tag, so an id of another deployment is never touched) are
//!    terminated and waited for on [`crate::instances::termination_poll`]'s schedule until
//!    EC2 calls them `terminated`, so that [`crate::launch::machines`] no longer lists them.
//!    Terminating an instance is its shutdown: its agent gets SIGTERM and drains (its
//!    `stopping` hooks run, its binary stops gracefully, its volumes and records are
//!    released), as at `destroy`.
//! 2. **Identity.** Each instance's identity object (`identities/<role id>:<instance id>`) is
//!    deleted from the bucket.
//! 3. **Journal.** The machines' names are forgotten, so the next `launch` starts a new
//!    instance for a name the plan still has (and tags it with the name), while a name it no
//!    longer has stays gone.
//!
//! Shared resources (networks, templates, the role, the bucket, artifacts) stay. Each step
//! finds what is left, so a retire cut short by a crash finishes when called again, and a
//! machine already gone (a reclaimed spot instance) is success.

use std::collections::BTreeMap;

use flotilla_core::progress::Progress;
use flotilla_core::provider::{Machine, ProviderError};

use crate::AwsProvider;
use crate::fanout::{Concurrency, fan_out};
use crate::instances::terminate;
use crate::s3::delete_object;
use crate::userdata::identity_key;

/// Steps 1 to 3 of the module documentation.
pub async fn retire(
    provider: &AwsProvider,
    machines: &[Machine],
    progress: &dyn Progress,
) -> Result<(), ProviderError> {
    // A machine a spot reclaim took: its pool is not asked again for a while by the launch
    // of its replacement.
    {
        let now = std::time::Instant::now();
        let mut cache =
            provider.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for machine in machines {
            let Some(placement) = &machine.placement else { continue };
            if placement.market == flotilla_capacity::Lifecycle::Spot
                && crate::launch::is_reclaim(machine.state_reason.as_deref())
            {
                let pool = flotilla_capacity::Pool {
                    lifecycle: placement.market,
                    instance_type: placement.instance_type.clone(),
                    zone: placement.zone.clone(),
                };
                cache.record_reclaim(&pool, now);
            }
        }
    }
    let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for machine in machines.iter().filter(|m| !m.id.is_empty()) {
        by_region.entry(machine.region.as_str()).or_default().push(machine.id.clone());
    }
    if by_region.is_empty() {
        return Ok(());
    }
    let ids: Vec<&String> = by_region.values().flatten().collect();
    let stage = progress.stage("terminating retired instances", ids.len() as u64);
    let clients = &provider.clients;
    let tag = provider.tag.as_str();
    let terminated: usize = fan_out(
        Concurrency::REGIONS,
        by_region.iter().map(|(region, ids)| terminate(clients, region, tag, ids)),
    )
    .await?
    .into_iter()
    .sum();
    stage.advance(ids.len() as u64);
    drop(stage);

    let records = provider.journal.read();
    if let (Some(bucket), Some(role_id)) = (provider.bucket(), records.role_id.as_deref()) {
        fan_out(
            Concurrency::INSTANCES,
            ids.iter().map(|id| {
                let key = identity_key(tag, role_id, id);
                let bucket = bucket.as_str();
                async move { delete_object(clients, bucket, &key).await }
            }),
        )
        .await?;
    }
    let forgotten = provider.journal.update(|r| {
        let before = r.machines.len();
        r.machines.retain(|_, m| !ids.contains(&&m.instance_id));
        // Instances a replacement was launched beside are gone now.
        r.retiring.retain(|id| !ids.contains(&id));
        before - r.machines.len()
    })?;
    tracing::info!(
        instances = ?ids,
        terminated,
        forgotten,
        "machines retired"
    );
    Ok(())
}
