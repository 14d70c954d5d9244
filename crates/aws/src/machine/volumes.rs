//! Data volumes: a claim tries its entry's sources left to right (`x` a fixed volume, `p` a
//! free volume of a pool, `c` a new volume) and returns once EC2 reports the attachment
//! `attached` to this instance; commit, release and rollback afterwards.
//!
//! Tags (flotilla's own keys; ec2fleetd's are read too, so a pool it made is still found):
//!
//! | key | on | meaning |
//! |---|---|---|
//! | [`TAG_DOMAIN`] (`user:ec2fd.domain`) | pool volumes | the domain whose pool it is in |
//! | [`TAG_POOL`] (`user:ec2fd.pool-name`) | pool volumes | the pool's name |
//! | [`TAG_TRANSACTION`] (`user:ec2fd.transc-id`) | a created volume until commit | the transaction that made it |
//! | [`TAG_DEVICE`] | a created volume until commit | the entry's device, so two `c` entries of one transaction find their own |
//! | [`TAG_IN_TRANSIT`] (`user:ec2fd.in-transit`) | a created volume until commit | not in the pool yet: never claimed by `p` |
//! | [`TAG_CREATOR`] | a created volume until commit | the instance that created it (found by [`leftovers`]) |
//! | [`TAG_LAST_USED`] | pool volumes | when a machine last released it (RFC 3339, UTC), for `pool-pref` |
//!
//! A pool is the volumes of this zone tagged with the domain and pool name under either
//! scheme. A pool volume is free when it is `available` and carries no in-transit or
//! transaction mark of either scheme.
//!
//! **Claiming atomically.** EC2 attaches a volume to one instance at a time: of two
//! AttachVolume calls for one `available` volume, one succeeds and the other fails with
//! `VolumeInUse` (or `IncorrectState` while the first is `attaching`). The attach is the claim:
//! nothing is tagged before it, so no mark can be left on a volume this machine did not get.
//! After AttachVolume the claim waits for the attachment and checks which instance EC2 reports;
//! a machine that lost the race (the call failed, or the volume shows another instance) moves
//! on to the next free volume at once. `pool-pref` orders the free volumes: `random` (the
//! default, which also spreads racers over the pool), or by [`TAG_LAST_USED`], newest
//! (`most-recently-used`) or oldest (`least-recently-used`) first, a volume never released by
//! flotilla counting as the oldest.
//!
//! **Waiting for a held volume.** `x` waits, up to the claim's `wait`, while its volume is
//! attached to another instance (a previous machine still shutting down). `p` waits when it
//! has no free volume but some pool volume is held by an instance that is on its way down
//! (`shutting-down`, `stopping`, `stopped`, `terminated`) or is `detaching`; a pool whose
//! volumes are all attached to running instances is exhausted, and the claim moves on to the
//! next source at once.
//!
//! **Re-runs.** Before trying any source, a claim looks for a volume already attached to this
//! instance at the entry's device that the entry could have given (the fixed id, or the pool's
//! tags): found, it is returned with `attached_now: false`. A `c` source first looks for the
//! volume its transaction already created for this domain and device, in any state (asked at
//! the same time as the first lookup: two reads, one round trip under API latency), and
//! carries on from there (waits for it, attaches it) instead of creating another; CreateVolume
//! also carries a client token derived from the same, so a call whose answer was lost is not
//! repeated by EC2 either.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_ec2::types::{
    Filter, ResourceType, Tag, TagSpecification, Volume, VolumeAttachmentState, VolumeState,
    VolumeType,
};
use flotilla_agent::{
    AttachedVolume, ClaimedVolume, CloudError, MachineFacts, Release, VolumeClaim,
};
use flotilla_spec::fleetd::{PoolPreference, VolumeSource};
use sha2::Digest;

use super::waits::{DETACH_WAIT, POOL_ROUNDS, Poll, Poller};
use super::{AwsMachineCloud, own_error, sdk_error};

/// The domain of a pool volume.
pub const TAG_DOMAIN: &str = "flotilla:fleetd-domain";
/// The pool of a pool volume.
pub const TAG_POOL: &str = "flotilla:fleetd-pool";
/// The transaction that created a volume not committed yet.
pub const TAG_TRANSACTION: &str = "flotilla:fleetd-transaction";
/// The device of the entry that created a volume not committed yet.
pub const TAG_DEVICE: &str = "flotilla:fleetd-device";
/// `true` on a created volume until it is committed.
pub const TAG_IN_TRANSIT: &str = "flotilla:fleetd-in-transit";
/// The instance that created a volume not committed yet, so that its next run finds what a
/// crashed run left in transit.
pub const TAG_CREATOR: &str = "flotilla:fleetd-creator";
/// When the volume was last released, RFC 3339 in UTC.
pub const TAG_LAST_USED: &str = "flotilla:fleetd-last-used";

/// ec2fleetd's keys, read so that its pools are found.
pub const EC2FLEETD_TAG_DOMAIN: &str = "user:ec2fd.domain";
pub const EC2FLEETD_TAG_POOL: &str = "user:ec2fd.pool-name";
pub const EC2FLEETD_TAG_TRANSACTION: &str = "user:ec2fd.transc-id";
pub const EC2FLEETD_TAG_IN_TRANSIT: &str = "user:ec2fd.in-transit";

/// The keys of `create` (CreateVolume's parameters) a `c` source passes on.
pub const CREATE_KEYS: &[&str] = &[
    "Size",
    "VolumeType",
    "SnapshotId",
    "Encrypted",
    "Iops",
    "Throughput",
    "KmsKeyId",
    "MultiAttachEnabled",
    "OutpostArn",
    "TagSpecifications",
    "AvailabilityZone",
];

/// Why one source gave nothing: the claim goes on to the next, and reports them all if none
/// gives a volume. A hard error (permissions, a malformed request) ends the claim at once.
enum Miss {
    /// This source has nothing now (the reason says what was seen).
    Nothing(String),
    /// Stop trying: the error is the claim's.
    Fatal(CloudError),
}

impl From<CloudError> for Miss {
    fn from(error: CloudError) -> Miss {
        // A permission or parameter error fails every source alike: report it as it is.
        if error.retryable { Miss::Nothing(error.to_string()) } else { Miss::Fatal(error) }
    }
}

/// See the module's description.
pub(crate) async fn claim(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
) -> Result<ClaimedVolume, CloudError> {
    let machine = &claim.machine;
    // The two lookups of a re-run are independent reads: under API latency, asking both at
    // once takes one round trip instead of two. On the machine's first run neither can find
    // anything (see `VolumeClaim::first_run`), and none is asked.
    let (here, mut created_earlier) = if claim.first_run {
        (Ok(None), Some(Ok(Vec::new())))
    } else if claim.entry.source.contains(&VolumeSource::Create) && claim.entry.create.is_some() {
        let (here, created) =
            tokio::join!(already_here(cloud, claim), created_by_transaction(cloud, claim));
        (here, Some(created))
    } else {
        (already_here(cloud, claim).await, None)
    };
    if let Some(found) = here? {
        return Ok(found);
    }
    let mut misses = Vec::new();
    for source in &claim.entry.source {
        let attempt = match source {
            VolumeSource::Fixed => fixed(cloud, claim).await,
            VolumeSource::Pool => pool(cloud, claim).await,
            VolumeSource::Create => create(cloud, claim, created_earlier.take()).await,
        };
        match attempt {
            Ok(volume) => return Ok(volume),
            Err(Miss::Nothing(reason)) => misses.push(format!("{}: {reason}", source.letter())),
            Err(Miss::Fatal(error)) => return Err(error),
        }
    }
    Err(own_error(
        format!(
            "claiming a volume for {} of domain {} on {}",
            claim.entry.device, claim.domain, machine.instance_id
        ),
        format!("no source gave a volume ({})", misses.join("; ")),
        true,
    ))
}

/// A volume already attached here at the entry's device that the entry could have given.
async fn already_here(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
) -> Result<Option<ClaimedVolume>, CloudError> {
    let machine = &claim.machine;
    let volumes = describe(
        cloud,
        &machine.region,
        vec![filter("attachment.instance-id", &machine.instance_id)],
        &[],
    )
    .await?;
    for volume in volumes {
        let Some(attachment) = attachment_of(&volume, &machine.instance_id) else { continue };
        if attachment.device() != Some(claim.entry.device.as_str())
            || attachment.state() == Some(&VolumeAttachmentState::Detaching)
        {
            continue;
        }
        let id = volume.volume_id().unwrap_or_default();
        let created = created_by(&volume, machine, &claim.entry.device);
        let source = if claim.entry.volume_id.as_deref() == Some(id)
            && claim.entry.source.contains(&VolumeSource::Fixed)
        {
            VolumeSource::Fixed
        } else if in_pool(&volume, &claim.domain, claim.entry.pool_name.as_deref()) {
            if created && claim.entry.source.contains(&VolumeSource::Create) {
                VolumeSource::Create
            } else if claim.entry.source.contains(&VolumeSource::Pool) {
                VolumeSource::Pool
            } else if claim.entry.source.contains(&VolumeSource::Create) {
                VolumeSource::Create
            } else {
                continue;
            }
        } else {
            continue;
        };
        // Still attaching after a crash: wait for it as the claim would have.
        match wait_attached(cloud, claim, id)
            .await
            .map_err(miss_error(&attach_operation(id, machine)))?
        {
            Attached::Won => return Ok(Some(claimed(claim, id, source, false, created))),
            Attached::Lost(_) => continue,
        }
    }
    Ok(None)
}

/// `x`: the fixed volume, once no other instance holds it.
async fn fixed(cloud: &AwsMachineCloud, claim: &VolumeClaim) -> Result<ClaimedVolume, Miss> {
    let machine = &claim.machine;
    let Some(id) = claim.entry.volume_id.as_deref() else {
        return Err(Miss::Nothing("the entry has no volume-id".to_owned()));
    };
    let mut poller = Poller::new(cloud.schedule(), Poll::Volume, claim.wait);
    loop {
        let Some(volume) = describe_one(cloud, &machine.region, id).await? else {
            return Err(Miss::Nothing(format!("volume {id} does not exist in {}", machine.region)));
        };
        if let Some(zone) = volume.availability_zone()
            && zone != machine.zone
        {
            return Err(Miss::Nothing(format!(
                "volume {id} is in {zone}, this instance in {}",
                machine.zone
            )));
        }
        let holder = holder(&volume);
        match holder {
            None if volume.state() == Some(&VolumeState::Available) => {
                match attach(cloud, claim, id).await? {
                    Attached::Won => {
                        return Ok(claimed(claim, id, VolumeSource::Fixed, true, false));
                    }
                    Attached::Lost(_) => {}
                }
            }
            Some(other) if other == machine.instance_id => {
                // At the entry's device, attached by something other than this machine's
                // engine (a first run skips the lookup that would have found it first): it is
                // this claim's once attached.
                let here = attachment_of(&volume, &machine.instance_id);
                if here.and_then(|a| a.device()) != Some(claim.entry.device.as_str()) {
                    return Err(Miss::Nothing(format!(
                        "volume {id} is attached to this instance at another device"
                    )));
                }
                match wait_attached(cloud, claim, id).await? {
                    Attached::Won => {
                        return Ok(claimed(claim, id, VolumeSource::Fixed, false, false));
                    }
                    Attached::Lost(_) => {}
                }
            }
            _ => {}
        }
        if !poller.next().await {
            let state = volume.state().map(|s| s.as_str().to_owned()).unwrap_or_default();
            let held = holder.map(|h| format!(", attached to {h}")).unwrap_or_default();
            return Err(Miss::Nothing(format!(
                "volume {id} was still {state}{held} after {}",
                humantime::format_duration(claim.wait)
            )));
        }
    }
}

/// `p`: a free volume of the pool, claimed by attaching it.
async fn pool(cloud: &AwsMachineCloud, claim: &VolumeClaim) -> Result<ClaimedVolume, Miss> {
    let machine = &claim.machine;
    let Some(pool_name) = claim.entry.pool_name.as_deref() else {
        return Err(Miss::Nothing("the entry has no pool-name".to_owned()));
    };
    let mut poller = Poller::new(cloud.schedule(), Poll::Volume, claim.wait);
    let mut lost_rounds = 0;
    loop {
        let volumes = pool_volumes(cloud, machine, &claim.domain, pool_name).await?;
        if volumes.is_empty() {
            return Err(Miss::Nothing(format!(
                "pool {pool_name} of domain {} has no volume in {}",
                claim.domain, machine.zone
            )));
        }
        let free = order(
            volumes.iter().filter(|v| is_free(v)).collect(),
            claim.entry.pool_pref,
            super::waits::jitter,
        );
        let mut lost = Vec::new();
        for volume in &free {
            let id = volume.volume_id().unwrap_or_default();
            match attach(cloud, claim, id).await? {
                Attached::Won => return Ok(claimed(claim, id, VolumeSource::Pool, true, false)),
                Attached::Lost(why) => lost.push(format!("{id} {why}")),
            }
        }
        if !free.is_empty() {
            lost_rounds += 1;
            if lost_rounds >= POOL_ROUNDS {
                return Err(Miss::Nothing(format!(
                    "every free volume of pool {pool_name} went to another machine first, {POOL_ROUNDS} times (last: {})",
                    lost.join(", ")
                )));
            }
            continue;
        }
        let held = held_by_leaving(cloud, machine, &volumes).await?;
        if held.is_empty() {
            return Err(Miss::Nothing(format!(
                "all {} volumes of pool {pool_name} in {} are in use by running instances",
                volumes.len(),
                machine.zone
            )));
        }
        if !poller.next().await {
            return Err(Miss::Nothing(format!(
                "no volume of pool {pool_name} came free within {} ({} still held by instances shutting down)",
                humantime::format_duration(claim.wait),
                held.join(", ")
            )));
        }
    }
}

/// The volumes this transaction created for the claim's domain and device, in any state.
async fn created_by_transaction(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
) -> Result<Vec<Volume>, CloudError> {
    let machine = &claim.machine;
    describe(
        cloud,
        &machine.region,
        vec![
            filter(&format!("tag:{TAG_TRANSACTION}"), &machine.transaction_id),
            filter(&format!("tag:{TAG_DOMAIN}"), &claim.domain),
            filter(&format!("tag:{TAG_DEVICE}"), &claim.entry.device),
            filter("availability-zone", &machine.zone),
        ],
        &[],
    )
    .await
}

/// `c`: the volume this transaction created for this entry, or a new one. `looked_up` is
/// [`created_by_transaction`]'s answer when the claim asked it already.
async fn create(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
    looked_up: Option<Result<Vec<Volume>, CloudError>>,
) -> Result<ClaimedVolume, Miss> {
    let machine = &claim.machine;
    let Some(parameters) = claim.entry.create.as_ref() else {
        return Err(Miss::Nothing("the entry has no create parameters".to_owned()));
    };
    let created = match looked_up {
        Some(answer) => answer?,
        None => created_by_transaction(cloud, claim).await?,
    };
    let id = match created.iter().find(|v| {
        !matches!(
            v.state(),
            Some(VolumeState::Deleting | VolumeState::Deleted | VolumeState::Error)
        )
    }) {
        Some(volume) => volume.volume_id().unwrap_or_default().to_owned(),
        None => create_volume(cloud, claim, parameters).await?,
    };
    let volume = wait_created(cloud, claim, &id).await?;
    if let Some(other) = holder(&volume)
        && other != machine.instance_id
    {
        return Err(Miss::Nothing(format!(
            "volume {id}, created by this transaction, is attached to {other}"
        )));
    }
    match attach(cloud, claim, &id).await? {
        Attached::Won => Ok(claimed(claim, &id, VolumeSource::Create, true, true)),
        Attached::Lost(why) => Err(Miss::Nothing(format!("volume {id} (created here) {why}"))),
    }
}

/// CreateVolume from `create`, in this instance's zone, tagged as this transaction's.
async fn create_volume(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
    parameters: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, Miss> {
    let machine = &claim.machine;
    let operation = format!(
        "CreateVolume in {} for {} of domain {}",
        machine.zone, claim.entry.device, claim.domain
    );
    let mut request = cloud.ec2(&machine.region).create_volume().availability_zone(&machine.zone);
    let bad = |key: &str, want: &str| {
        Miss::Fatal(own_error(operation.clone(), format!("create.{key} must be {want}"), false))
    };
    let mut tags: Vec<Tag> = Vec::new();
    let mut other_specifications = Vec::new();
    for (key, value) in parameters {
        request = match key.as_str() {
            "Size" => request.size(int(value).ok_or_else(|| bad(key, "an integer (GiB)"))?),
            "Iops" => request.iops(int(value).ok_or_else(|| bad(key, "an integer"))?),
            "Throughput" => request.throughput(int(value).ok_or_else(|| bad(key, "an integer"))?),
            "VolumeType" => request
                .volume_type(VolumeType::from(value.as_str().ok_or_else(|| bad(key, "a string"))?)),
            "SnapshotId" => {
                request.snapshot_id(value.as_str().ok_or_else(|| bad(key, "a string"))?)
            }
            "KmsKeyId" => request.kms_key_id(value.as_str().ok_or_else(|| bad(key, "a string"))?),
            "OutpostArn" => {
                request.outpost_arn(value.as_str().ok_or_else(|| bad(key, "a string"))?)
            }
            "Encrypted" => {
                request.encrypted(value.as_bool().ok_or_else(|| bad(key, "true or false"))?)
            }
            "MultiAttachEnabled" => request
                .multi_attach_enabled(value.as_bool().ok_or_else(|| bad(key, "true or false"))?),
            // ec2fleetd overwrites it with the instance's zone, as flotilla does.
            "AvailabilityZone" => request,
            "TagSpecifications" => {
                let (volume_tags, others) = tag_specifications(value)
                    .ok_or_else(|| bad(key, "a list of {ResourceType, Tags: [{Key, Value}]}"))?;
                tags.extend(volume_tags);
                other_specifications.extend(others);
                request
            }
            other => {
                return Err(Miss::Fatal(own_error(
                    operation.clone(),
                    format!(
                        "create.{other} is not a CreateVolume parameter flotilla passes on (it takes {})",
                        CREATE_KEYS.join(", ")
                    ),
                    false,
                )));
            }
        };
    }
    let mut own = vec![
        (TAG_DOMAIN, claim.domain.as_str()),
        (TAG_TRANSACTION, machine.transaction_id.as_str()),
        (TAG_DEVICE, claim.entry.device.as_str()),
        (TAG_IN_TRANSIT, "true"),
        (TAG_CREATOR, machine.instance_id.as_str()),
    ];
    if let Some(pool) = claim.entry.pool_name.as_deref() {
        own.push((TAG_POOL, pool));
    }
    tags.retain(|t| !own.iter().any(|(key, _)| t.key() == Some(key)));
    tags.extend(own.iter().map(|(key, value)| Tag::builder().key(*key).value(*value).build()));
    let mut specifications = vec![
        TagSpecification::builder()
            .resource_type(ResourceType::Volume)
            .set_tags(Some(tags))
            .build(),
    ];
    specifications.extend(other_specifications);
    let token = client_token(&machine.transaction_id, &claim.domain, &claim.entry.device);
    let answer = request
        .set_tag_specifications(Some(specifications))
        .client_token(token)
        .send()
        .await
        .map_err(|e| Miss::from(sdk_error(&machine.region, operation.clone(), e)))?;
    answer
        .volume_id()
        .map(str::to_owned)
        .ok_or_else(|| Miss::Fatal(own_error(operation, "EC2 answered without a volume id", true)))
}

/// What AttachVolume gave.
enum Attached {
    /// EC2 reports the volume `attached` to this instance.
    Won,
    /// Another instance has it (why, for the report).
    Lost(String),
}

/// AttachVolume, then the wait for `attached`, checking the instance EC2 reports.
async fn attach(cloud: &AwsMachineCloud, claim: &VolumeClaim, id: &str) -> Result<Attached, Miss> {
    let machine = &claim.machine;
    let answer = cloud
        .ec2(&machine.region)
        .attach_volume()
        .volume_id(id)
        .instance_id(&machine.instance_id)
        .device(&claim.entry.device)
        .send()
        .await;
    if let Err(error) = answer {
        let error = sdk_error(&machine.region, attach_operation(id, machine), error);
        return match error.code.as_deref() {
            Some("VolumeInUse" | "IncorrectState") => {
                Ok(Attached::Lost(format!("was taken first ({})", error.message)))
            }
            _ => Err(Miss::from(error)),
        };
    }
    wait_attached(cloud, claim, id).await
}

/// Waits, up to the claim's `wait`, for the volume's attachment to this instance to be
/// `attached`; a volume EC2 shows attached to another instance is lost.
async fn wait_attached(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
    id: &str,
) -> Result<Attached, Miss> {
    let machine = &claim.machine;
    let mut poller = Poller::new(cloud.schedule(), Poll::Volume, claim.wait);
    loop {
        let volume = describe_one(cloud, &machine.region, id).await?;
        let Some(volume) = volume else {
            return Err(Miss::Nothing(format!("volume {id} disappeared while attaching")));
        };
        if let Some(other) = holder(&volume)
            && other != machine.instance_id
        {
            return Ok(Attached::Lost(format!("is attached to {other}")));
        }
        let state = attachment_of(&volume, &machine.instance_id).and_then(|a| a.state().cloned());
        match state {
            Some(VolumeAttachmentState::Attached) => return Ok(Attached::Won),
            Some(VolumeAttachmentState::Attaching | VolumeAttachmentState::Busy) => {}
            other => {
                return Err(Miss::Nothing(format!(
                    "volume {id}'s attachment to {} is {}",
                    machine.instance_id,
                    other.map(|s| s.as_str().to_owned()).unwrap_or_else(|| "gone".to_owned())
                )));
            }
        }
        if !poller.next().await {
            return Err(Miss::Fatal(own_error(
                attach_operation(id, machine),
                format!(
                    "EC2 did not report the attachment `attached` within {}",
                    humantime::format_duration(claim.wait)
                ),
                true,
            )));
        }
    }
}

/// Waits, up to the claim's `wait`, for a created volume to leave `creating`; the volume as
/// EC2 then describes it.
async fn wait_created(
    cloud: &AwsMachineCloud,
    claim: &VolumeClaim,
    id: &str,
) -> Result<Volume, Miss> {
    let machine = &claim.machine;
    let mut poller = Poller::new(cloud.schedule(), Poll::Volume, claim.wait);
    loop {
        let Some(volume) = describe_one(cloud, &machine.region, id).await? else {
            return Err(Miss::Nothing(format!("volume {id} disappeared after CreateVolume")));
        };
        match volume.state() {
            Some(VolumeState::Creating) => {}
            Some(VolumeState::Error) => {
                return Err(Miss::Nothing(format!("volume {id} failed to create (state error)")));
            }
            _ => return Ok(volume),
        }
        if !poller.next().await {
            return Err(Miss::Nothing(format!(
                "volume {id} was still creating after {}",
                humantime::format_duration(claim.wait)
            )));
        }
    }
}

/// The marks of a created volume that its commit removes.
const TRANSIT_KEYS: [&str; 4] = [TAG_TRANSACTION, TAG_DEVICE, TAG_IN_TRANSIT, TAG_CREATOR];

/// The volumes this instance created for one of `domains` in another transaction than
/// `machine`'s and never committed: what a crashed run left in transit (attached here or
/// not). Each is returned as the claim that created it would have returned it, so that the
/// engine unmounts and rolls it back (deleted, as an uncommitted creation is).
pub(crate) async fn leftovers(
    cloud: &AwsMachineCloud,
    machine: &MachineFacts,
    domains: &[String],
) -> Result<Vec<ClaimedVolume>, CloudError> {
    if domains.is_empty() {
        return Ok(Vec::new());
    }
    let volumes = describe(
        cloud,
        &machine.region,
        vec![
            filter(&format!("tag:{TAG_CREATOR}"), &machine.instance_id),
            filter(&format!("tag:{TAG_IN_TRANSIT}"), "true"),
            Filter::builder()
                .name(format!("tag:{TAG_DOMAIN}"))
                .set_values(Some(domains.to_vec()))
                .build(),
        ],
        &[],
    )
    .await?;
    Ok(volumes
        .iter()
        .filter(|v| tag(v, TAG_TRANSACTION) != Some(machine.transaction_id.as_str()))
        .filter(|v| !matches!(v.state(), Some(VolumeState::Deleting | VolumeState::Deleted)))
        .map(|volume| ClaimedVolume {
            volume_id: volume.volume_id().unwrap_or_default().to_owned(),
            source: VolumeSource::Create,
            device: attachment_of(volume, &machine.instance_id)
                .and_then(|a| a.device().map(str::to_owned))
                .or_else(|| tag(volume, TAG_DEVICE).map(str::to_owned))
                .unwrap_or_default(),
            domain: tag(volume, TAG_DOMAIN).unwrap_or_default().to_owned(),
            pool_name: tag(volume, TAG_POOL).map(str::to_owned),
            attached_now: false,
            created_now: true,
        })
        .collect())
}

/// A volume created by this claim loses its transaction and in-transit marks and so joins its
/// pool. Nothing to do for a volume that was not created here.
pub(crate) async fn commit(
    cloud: &AwsMachineCloud,
    machine: &MachineFacts,
    volume: &ClaimedVolume,
) -> Result<(), CloudError> {
    if !volume.created_now {
        return Ok(());
    }
    let keys = TRANSIT_KEYS;
    cloud
        .ec2(&machine.region)
        .delete_tags()
        .resources(&volume.volume_id)
        .set_tags(Some(keys.iter().map(|k| Tag::builder().key(*k).build()).collect()))
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &machine.region,
                format!("DeleteTags {} of {}", keys.join(", "), volume.volume_id),
                e,
            )
        })?;
    Ok(())
}

/// Detaches the volume from this instance (with its id) and waits until it is `available`;
/// see [`flotilla_agent::MachineCloud::release_volume`].
pub(crate) async fn release(
    cloud: &AwsMachineCloud,
    machine: &MachineFacts,
    volume: &ClaimedVolume,
    release: Release,
) -> Result<(), CloudError> {
    let id = volume.volume_id.as_str();
    let region = machine.region.as_str();
    let detach_operation = format!("DetachVolume {id} from {}", machine.instance_id);
    let Some(current) =
        describe_one(cloud, region, id).await.map_err(miss_error(&detach_operation))?
    else {
        return Ok(()); // deleted already
    };
    let ours = attachment_of(&current, &machine.instance_id).cloned();
    if let Some(attachment) = &ours
        && attachment.state() != Some(&VolumeAttachmentState::Detaching)
    {
        let answer = cloud
            .ec2(region)
            .detach_volume()
            .volume_id(id)
            .instance_id(&machine.instance_id)
            .set_device(attachment.device().map(str::to_owned))
            .send()
            .await;
        if let Err(error) = answer {
            let error = sdk_error(region, detach_operation.clone(), error);
            if error.code.as_deref() != Some("InvalidAttachment.NotFound") {
                return Err(error);
            }
        }
    }
    if ours.is_some() {
        let mut poller = Poller::new(cloud.schedule(), Poll::Volume, DETACH_WAIT);
        loop {
            let now =
                describe_one(cloud, region, id).await.map_err(miss_error(&detach_operation))?;
            let Some(now) = now else { return Ok(()) };
            if attachment_of(&now, &machine.instance_id).is_none() {
                break;
            }
            if !poller.next().await {
                return Err(own_error(
                    detach_operation,
                    format!(
                        "the volume was still attached (state {}) after {}",
                        now.state().map(|s| s.as_str()).unwrap_or("unknown"),
                        humantime::format_duration(DETACH_WAIT)
                    ),
                    true,
                ));
            }
        }
    }
    match release {
        Release::Keep => {
            let marked =
                current.tags().iter().any(|t| t.key().is_some_and(|k| TRANSIT_KEYS.contains(&k)));
            if volume.created_now && marked {
                // Kept before its domain committed it (an interruption during init, or an
                // earlier run's hold): its data is kept, so it joins its pool now instead of
                // staying marked in transit, where no claim would ever take it.
                commit(cloud, machine, volume).await?;
            }
            if volume.pool_name.is_some() {
                let used = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                cloud
                    .ec2(region)
                    .create_tags()
                    .resources(id)
                    .tags(Tag::builder().key(TAG_LAST_USED).value(&used).build())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(region, format!("CreateTags {TAG_LAST_USED} on {id}"), e)
                    })?;
            }
        }
        Release::Rollback if volume.created_now => {
            let marked = current.tags().iter().any(|t| t.key() == Some(TAG_IN_TRANSIT));
            if !marked {
                // Committed meanwhile (or not ours to delete): it stays in its pool.
                return Ok(());
            }
            if let Err(error) = cloud.ec2(region).delete_volume().volume_id(id).send().await {
                let error = sdk_error(region, format!("DeleteVolume {id}"), error);
                if error.code.as_deref() != Some("InvalidVolume.NotFound") {
                    return Err(error);
                }
            }
        }
        Release::Rollback => {}
    }
    Ok(())
}

fn miss_error(operation: &str) -> impl FnOnce(Miss) -> CloudError + '_ {
    move |miss| match miss {
        Miss::Nothing(reason) => own_error(operation, reason, true),
        Miss::Fatal(error) => error,
    }
}

fn claimed(
    claim: &VolumeClaim,
    id: &str,
    source: VolumeSource,
    attached_now: bool,
    created_now: bool,
) -> ClaimedVolume {
    ClaimedVolume {
        volume_id: id.to_owned(),
        source,
        device: claim.entry.device.clone(),
        domain: claim.domain.clone(),
        pool_name: claim.entry.pool_name.clone(),
        attached_now,
        created_now,
    }
}

fn attach_operation(id: &str, machine: &MachineFacts) -> String {
    format!("AttachVolume {id} to {}", machine.instance_id)
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// DescribeVolumes with `filters` (and `ids`), every page.
async fn describe(
    cloud: &AwsMachineCloud,
    region: &str,
    filters: Vec<Filter>,
    ids: &[&str],
) -> Result<Vec<Volume>, CloudError> {
    let mut volumes = Vec::new();
    let mut token: Option<String> = None;
    let what = if ids.is_empty() {
        filters
            .iter()
            .map(|f| format!("{}={}", f.name().unwrap_or_default(), f.values().join(",")))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        ids.join(",")
    };
    loop {
        let answer = cloud
            .ec2(region)
            .describe_volumes()
            .set_filters((!filters.is_empty()).then(|| filters.clone()))
            .set_volume_ids(
                (!ids.is_empty()).then(|| ids.iter().map(|s| (*s).to_owned()).collect()),
            )
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| sdk_error(region, format!("DescribeVolumes {what}"), e))?;
        volumes.extend(answer.volumes().iter().cloned());
        match answer.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => return Ok(volumes),
        }
    }
}

/// One volume by id; `None` when EC2 does not know it.
async fn describe_one(
    cloud: &AwsMachineCloud,
    region: &str,
    id: &str,
) -> Result<Option<Volume>, Miss> {
    match describe(cloud, region, Vec::new(), &[id]).await {
        Ok(mut volumes) => Ok(volumes.pop()),
        Err(error) if error.code.as_deref() == Some("InvalidVolume.NotFound") => Ok(None),
        Err(error) => Err(Miss::from(error)),
    }
}

/// The volumes of the pool in this zone, under flotilla's tags or ec2fleetd's.
async fn pool_volumes(
    cloud: &AwsMachineCloud,
    machine: &MachineFacts,
    domain: &str,
    pool: &str,
) -> Result<Vec<Volume>, CloudError> {
    let mut found: BTreeMap<String, Volume> = BTreeMap::new();
    for (domain_key, pool_key) in
        [(TAG_DOMAIN, TAG_POOL), (EC2FLEETD_TAG_DOMAIN, EC2FLEETD_TAG_POOL)]
    {
        let filters = vec![
            filter(&format!("tag:{domain_key}"), domain),
            filter(&format!("tag:{pool_key}"), pool),
            filter("availability-zone", &machine.zone),
        ];
        for volume in describe(cloud, &machine.region, filters, &[]).await? {
            if let Some(id) = volume.volume_id() {
                found.insert(id.to_owned(), volume);
            }
        }
    }
    Ok(found.into_values().collect())
}

fn tag<'v>(volume: &'v Volume, key: &str) -> Option<&'v str> {
    volume.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Whether the volume belongs to `domain`'s pool `pool` under either scheme.
fn in_pool(volume: &Volume, domain: &str, pool: Option<&str>) -> bool {
    let Some(pool) = pool else { return false };
    (tag(volume, TAG_DOMAIN) == Some(domain) && tag(volume, TAG_POOL) == Some(pool))
        || (tag(volume, EC2FLEETD_TAG_DOMAIN) == Some(domain)
            && tag(volume, EC2FLEETD_TAG_POOL) == Some(pool))
}

/// Whether this transaction created the volume for this device and has not committed it.
fn created_by(volume: &Volume, machine: &MachineFacts, device: &str) -> bool {
    tag(volume, TAG_TRANSACTION) == Some(machine.transaction_id.as_str())
        && tag(volume, TAG_DEVICE) == Some(device)
        && tag(volume, TAG_IN_TRANSIT).is_some()
}

/// A pool volume another machine may take: `available`, no attachment, and not marked as part
/// of a transaction by either scheme.
fn is_free(volume: &Volume) -> bool {
    volume.state() == Some(&VolumeState::Available)
        && volume.attachments().is_empty()
        && [TAG_IN_TRANSIT, TAG_TRANSACTION, EC2FLEETD_TAG_IN_TRANSIT, EC2FLEETD_TAG_TRANSACTION]
            .iter()
            .all(|key| tag(volume, key).is_none())
}

/// The instance a volume is attached to (attaching, attached or detaching).
fn holder(volume: &Volume) -> Option<&str> {
    volume
        .attachments()
        .iter()
        .find(|a| a.state() != Some(&VolumeAttachmentState::Detached))
        .and_then(|a| a.instance_id())
}

fn attachment_of<'v>(
    volume: &'v Volume,
    instance_id: &str,
) -> Option<&'v aws_sdk_ec2::types::VolumeAttachment> {
    volume.attachments().iter().find(|a| {
        a.instance_id() == Some(instance_id) && a.state() != Some(&VolumeAttachmentState::Detached)
    })
}

/// The pool volumes held by an instance on its way down, or detaching: they will come free.
async fn held_by_leaving(
    cloud: &AwsMachineCloud,
    machine: &MachineFacts,
    volumes: &[Volume],
) -> Result<Vec<String>, Miss> {
    let mut held = Vec::new();
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for volume in volumes {
        let id = volume.volume_id().unwrap_or_default().to_owned();
        let detaching = volume
            .attachments()
            .iter()
            .any(|a| a.state() == Some(&VolumeAttachmentState::Detaching));
        if detaching {
            held.push(id);
        } else if let Some(holder) = holder(volume) {
            holders.entry(holder.to_owned()).or_default().push(id);
        }
    }
    if holders.is_empty() {
        return Ok(held);
    }
    let ids: Vec<String> = holders.keys().cloned().collect();
    let answer = cloud
        .ec2(&machine.region)
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .map_err(|e| {
            Miss::from(sdk_error(
                &machine.region,
                format!("DescribeInstances {}", ids.join(",")),
                e,
            ))
        })?;
    let running: Vec<&str> = answer
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state()
                .and_then(|s| s.name())
                .is_some_and(|n| matches!(n.as_str(), "pending" | "running"))
        })
        .filter_map(|i| i.instance_id())
        .collect();
    for (instance, volumes) in holders {
        if !running.contains(&instance.as_str()) {
            held.extend(volumes.into_iter().map(|v| format!("{v} (on {instance})")));
        }
    }
    Ok(held)
}

/// The free volumes in the order `preference` tries them; `random` draws from `draw`
/// (0.8..=1.2, as the jitter) to shuffle.
fn order(
    mut volumes: Vec<&Volume>,
    preference: PoolPreference,
    mut draw: impl FnMut() -> f64,
) -> Vec<&Volume> {
    let last_used = |v: &Volume| tag(v, TAG_LAST_USED).unwrap_or("").to_owned();
    match preference {
        PoolPreference::Random => {
            let mut keyed: Vec<(f64, &Volume)> = volumes.into_iter().map(|v| (draw(), v)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            return keyed.into_iter().map(|(_, v)| v).collect();
        }
        PoolPreference::MostRecentlyUsed => {
            volumes.sort_by_key(|v| std::cmp::Reverse(last_used(v)));
        }
        PoolPreference::LeastRecentlyUsed => volumes.sort_by_key(|v| last_used(v)),
    }
    volumes
}

fn int(value: &serde_json::Value) -> Option<i32> {
    value.as_i64().and_then(|n| i32::try_from(n).ok())
}

/// `TagSpecifications` as boto3 takes them: the volume's tags, and the specifications of
/// other resource types (passed on as written).
fn tag_specifications(value: &serde_json::Value) -> Option<(Vec<Tag>, Vec<TagSpecification>)> {
    let mut volume_tags = Vec::new();
    let mut others = Vec::new();
    for specification in value.as_array()? {
        let resource = specification.get("ResourceType")?.as_str()?;
        let mut tags = Vec::new();
        for tag in specification.get("Tags")?.as_array()? {
            let key = tag.get("Key")?.as_str()?;
            let value = tag.get("Value").and_then(|v| v.as_str()).unwrap_or("");
            tags.push(Tag::builder().key(key).value(value).build());
        }
        if resource == "volume" {
            volume_tags.extend(tags);
        } else {
            others.push(
                TagSpecification::builder()
                    .resource_type(ResourceType::from(resource))
                    .set_tags(Some(tags))
                    .build(),
            );
        }
    }
    Some((volume_tags, others))
}

/// CreateVolume's idempotency token for this transaction, domain and device (at most 64
/// ASCII characters, as EC2 takes).
fn client_token(transaction: &str, domain: &str, device: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{transaction}\n{domain}\n{device}").as_bytes());
    format!("flotilla-{}", &hex::encode(digest)[..40])
}

/// The EBS volumes of instance `instance_id` by the device names of its block device mappings
/// (one `DescribeInstances`): how the agent finds the volume of a data disk it mounts.
pub(crate) async fn attached(
    cloud: &AwsMachineCloud,
    region: &str,
    instance_id: &str,
) -> Result<Vec<AttachedVolume>, CloudError> {
    let operation = format!("DescribeInstances {instance_id}");
    let answer = cloud
        .ec2(region)
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|error| sdk_error(region, operation.clone(), error))?;
    let instance = answer
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .find(|instance| instance.instance_id() == Some(instance_id))
        .ok_or_else(|| own_error(&operation, "EC2 does not list the instance", true))?;
    Ok(instance
        .block_device_mappings()
        .iter()
        .filter_map(|mapping| {
            Some(AttachedVolume {
                device: mapping.device_name()?.to_owned(),
                volume_id: mapping.ebs()?.volume_id()?.to_owned(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::VolumeAttachment;

    use super::*;

    fn volume(id: &str, tags: &[(&str, &str)]) -> Volume {
        Volume::builder()
            .volume_id(id)
            .state(VolumeState::Available)
            .set_tags(Some(
                tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect(),
            ))
            .build()
    }

    fn ids(volumes: &[&Volume]) -> Vec<String> {
        volumes.iter().map(|v| v.volume_id().unwrap().to_owned()).collect()
    }

    #[test]
    fn pool_preference_orders_by_the_last_used_tag() {
        let never = volume("vol-never", &[]);
        let old = volume("vol-old", &[(TAG_LAST_USED, "2026-01-01T00:00:00Z")]);
        let new = volume("vol-new", &[(TAG_LAST_USED, "2026-03-01T00:00:00Z")]);
        let all = || vec![&old, &never, &new];
        let draws = || {
            let mut values = [1.1, 0.9, 1.0].into_iter();
            move || values.next().unwrap()
        };
        assert_eq!(
            ids(&order(all(), PoolPreference::MostRecentlyUsed, draws())),
            ["vol-new", "vol-old", "vol-never"]
        );
        assert_eq!(
            ids(&order(all(), PoolPreference::LeastRecentlyUsed, draws())),
            ["vol-never", "vol-old", "vol-new"]
        );
        assert_eq!(
            ids(&order(all(), PoolPreference::Random, draws())),
            ["vol-never", "vol-new", "vol-old"],
            "ordered by the draws"
        );
    }

    #[test]
    fn a_pool_volume_is_free_only_when_available_and_unmarked() {
        assert!(is_free(&volume("vol-1", &[(TAG_DOMAIN, "d"), (TAG_POOL, "p")])));
        for mark in
            [TAG_IN_TRANSIT, TAG_TRANSACTION, EC2FLEETD_TAG_IN_TRANSIT, EC2FLEETD_TAG_TRANSACTION]
        {
            assert!(!is_free(&volume("vol-1", &[(mark, "x")])), "{mark}");
        }
        let attached = Volume::builder()
            .volume_id("vol-2")
            .state(VolumeState::InUse)
            .attachments(
                VolumeAttachment::builder()
                    .instance_id("i-1")
                    .state(VolumeAttachmentState::Attached)
                    .build(),
            )
            .build();
        assert!(!is_free(&attached));
        assert_eq!(holder(&attached), Some("i-1"));
    }

    #[test]
    fn ec2fleetd_pools_are_found_by_their_own_tags() {
        let ours = volume("vol-1", &[(TAG_DOMAIN, "db"), (TAG_POOL, "data")]);
        let theirs = volume("vol-2", &[(EC2FLEETD_TAG_DOMAIN, "db"), (EC2FLEETD_TAG_POOL, "data")]);
        let mixed = volume("vol-3", &[(TAG_DOMAIN, "db"), (EC2FLEETD_TAG_POOL, "data")]);
        assert!(in_pool(&ours, "db", Some("data")));
        assert!(in_pool(&theirs, "db", Some("data")));
        assert!(!in_pool(&mixed, "db", Some("data")), "a domain and pool of one scheme");
        assert!(!in_pool(&ours, "db", None));
        assert!(!in_pool(&ours, "web", Some("data")));
    }

    #[test]
    fn create_passes_tag_specifications_on_and_tokens_are_stable() {
        let value = serde_json::json!([
            {"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "db"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]}
        ]);
        let (volume_tags, others) = tag_specifications(&value).unwrap();
        assert_eq!(volume_tags.len(), 1);
        assert_eq!(volume_tags[0].key(), Some("team"));
        assert_eq!(others.len(), 1);
        assert!(tag_specifications(&serde_json::json!({"ResourceType": "volume"})).is_none());
        let token = client_token("t-1", "db", "/dev/sdf");
        assert_eq!(token, client_token("t-1", "db", "/dev/sdf"));
        assert_ne!(token, client_token("t-1", "db", "/dev/sdg"));
        assert!(token.len() <= 64 && token.is_ascii());
    }
}
