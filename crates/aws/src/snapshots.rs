//! Captures of a machine (`flotilla snapshot`, `flotilla image`): EBS snapshots of its disks,
//! or an AMI, and stopping and starting its instance around them (`--stop`).
//!
//! A snapshot carries its volume's tags (the deployment's tags, the disk's label,
//! `flotilla:deployment`, `flotilla:machine`, `flotilla:device`, `flotilla:mount`; never
//! `aws:` keys), so a later spec's `clone: TAG:VALUE` finds it ([`crate::disks`] takes the
//! newest), plus [`TAG_CAPTURE`]. An image (`CreateImage` with `NoReboot`: without `--stop`
//! the binary keeps running and the image is crash-consistent) carries the instance's tags on
//! the image and its snapshots. With a key, the image is copied with `Encrypted` and `KmsKeyId`
//! (`CopyImage`, whose `ClientToken` is the capture's), and the unencrypted image is
//! deregistered and its snapshots deleted (found by [`TAG_CAPTURE`], every one the copy does
//! not use, so that a run again after a crash between the two deletes what is left).
//!
//! Re-run: everything made is found by [`TAG_CAPTURE`] (snapshots) or by name (images), so a
//! command run again after a crash waits for what it made instead of making it twice.
//!
//! Waits follow [`capture_poll`]: snapshots and images (minutes to hours on AWS for large
//! disks), and instance stops.

use std::time::Duration;

use aws_sdk_ec2::types::{
    Filter, ImageState, InstanceStateName, ResourceType, SnapshotState, Tag, TagSpecification,
};
use flotilla_core::progress::Progress;
use flotilla_core::provider::{
    DiskSnapshot, ErrorKind, ImageRequest, Machine, MachineImage, MachineState, ProviderError,
};
use rand::Rng;
use tokio::time::Instant;

use crate::clients::Clients;
use crate::error::{AwsError, Healing};
use crate::tags::{TAG_DEPLOYMENT, TAG_MACHINE, tag_of};

/// The tag naming the capture (`snapshot-<UTC time>`, `image-<UTC time>`) a snapshot or image
/// was made for.
pub const TAG_CAPTURE: &str = "flotilla:capture";
/// How long snapshots or an image may take to complete (large disks take hours on AWS).
pub const CAPTURE_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// How long an instance may take to stop.
pub const STOP_DEADLINE: Duration = Duration::from_secs(900);
/// What an intermediate (unencrypted) image's name ends with.
pub const INTERMEDIATE_SUFFIX: &str = "-source";

/// The wait before look number `attempt + 1` at snapshots, images or a stopping instance (the
/// first look is at once: a snapshot of a small or unchanged volume completes in seconds):
/// 2 s, then each wait 1.5× the one before, capped at 30 s, each stretched by `jitter` (drawn
/// in 0.8..1.2 by the caller), until the wait's deadline ([`CAPTURE_DEADLINE`],
/// [`STOP_DEADLINE`]).
pub fn capture_poll(attempt: u32, jitter: f64) -> Duration {
    let grown = Duration::from_secs(2).mul_f64(1.5f64.powi(attempt.min(16) as i32));
    grown.min(Duration::from_secs(30)).mul_f64(jitter)
}

/// Waits until `done` answers `Some`, looking at once and then on [`capture_poll`]; a look
/// that fails in a way that heals (throttling, an id not visible yet) is tried again.
async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut look: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, AwsError>>,
{
    let until = Instant::now() + deadline;
    let mut attempt = 0;
    loop {
        match look().await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(error) if matches!(error.healing(), Healing::Transient | Healing::Propagating) => {}
            Err(error) => return Err(error.into()),
        }
        if Instant::now() >= until {
            return Err(ProviderError::new(format!(
                "{what} did not finish within {}; look again later with the ids above",
                humantime::format_duration(deadline)
            )));
        }
        let jitter = rand::rng().random_range(0.8..1.2);
        tokio::time::sleep(capture_poll(attempt, jitter)).await;
        attempt += 1;
    }
}

/// The instance of `machine` as DescribeInstances answers it.
async fn instance(
    clients: &Clients,
    machine: &Machine,
) -> Result<aws_sdk_ec2::types::Instance, AwsError> {
    let region = &machine.region;
    let answer = clients
        .ec2(region)
        .describe_instances()
        .instance_ids(&machine.id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "DescribeInstances", &machine.id, e))?;
    answer.reservations().iter().flat_map(|r| r.instances()).next().cloned().ok_or_else(|| {
        AwsError::other(region, "DescribeInstances", &machine.id, "the instance does not exist")
    })
}

fn state_of(instance: &aws_sdk_ec2::types::Instance) -> Option<InstanceStateName> {
    instance.state().and_then(|s| s.name()).cloned()
}

/// Stops `machine`'s instance and waits until it is `stopped`.
pub async fn stop(
    clients: &Clients,
    machine: &Machine,
    progress: &dyn Progress,
) -> Result<(), ProviderError> {
    let region = &machine.region;
    let stage = progress.stage(&format!("stopping {} ({})", machine.name, machine.id), 1);
    let found = instance(clients, machine).await?;
    if state_of(&found) != Some(InstanceStateName::Stopped) {
        clients
            .ec2(region)
            .stop_instances()
            .instance_ids(&machine.id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "StopInstances", &machine.id, e))?;
    }
    poll_until(&format!("{region}: stopping instance {}", machine.id), STOP_DEADLINE, || async {
        let found = instance(clients, machine).await?;
        match state_of(&found) {
            Some(InstanceStateName::Stopped) => Ok(Some(())),
            Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown) => {
                Err(AwsError::other(region, "StopInstances", &machine.id, "the instance ended"))
            }
            _ => Ok(None),
        }
    })
    .await?;
    stage.advance(1);
    Ok(())
}

/// Starts `machine`'s instance and waits until it runs with a public address; returns the
/// machine with its addresses now.
pub async fn start(
    clients: &Clients,
    tag: &str,
    machine: &Machine,
    progress: &dyn Progress,
) -> Result<Machine, ProviderError> {
    let region = &machine.region;
    let stage = progress.stage(&format!("starting {} ({})", machine.name, machine.id), 1);
    let found = instance(clients, machine).await?;
    if state_of(&found) != Some(InstanceStateName::Running) {
        // A stop still under way must end before EC2 accepts a start.
        poll_until(
            &format!("{region}: instance {} stopping", machine.id),
            STOP_DEADLINE,
            || async {
                let found = instance(clients, machine).await?;
                Ok((state_of(&found) != Some(InstanceStateName::Stopping)).then_some(()))
            },
        )
        .await?;
        clients
            .ec2(region)
            .start_instances()
            .instance_ids(&machine.id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "StartInstances", &machine.id, e))?;
    }
    let running =
        crate::instances::wait_running(clients, region, tag, std::slice::from_ref(&machine.id))
            .await?;
    stage.advance(1);
    let found = running.into_iter().next().ok_or_else(|| {
        ProviderError::new(format!("{region}: instance {} is gone after its start", machine.id))
    })?;
    let mut started = machine.clone();
    if let Some(ip) = found.public_ip {
        started.public_ip = ip;
        started.agent_endpoint.set_ip(ip);
    }
    if let Some(ip) = found.private_ip {
        started.private_ip = ip;
    }
    started.state = MachineState::Running;
    started.state_reason = None;
    crate::guard::check_reachable(clients.endpoint(), clients.address_map(), &started)?;
    Ok(started)
}

/// `key`'s tags without AWS's own (`aws:…`), which no request may set.
fn settable(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .filter(|(key, _)| !key.starts_with("aws:"))
        .collect()
}

/// A tag specification of `resource` with `tags`, and `extra` over them.
fn spec_of(
    resource: ResourceType,
    tags: &[(String, String)],
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(resource);
    for (key, value) in tags.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)) {
        spec = spec.tags(tag_of(key, value));
    }
    for (key, value) in extra {
        spec = spec.tags(tag_of(key, value));
    }
    spec.build()
}

/// Snapshots of `machine`'s data disks (with `full`, its root too), tagged, waited for until
/// `completed`. See the module documentation.
pub async fn snapshot_disks(
    clients: &Clients,
    tag: &str,
    machine: &Machine,
    capture: &str,
    full: bool,
    progress: &dyn Progress,
) -> Result<Vec<DiskSnapshot>, ProviderError> {
    let region = &machine.region;
    let ec2 = clients.ec2(region);
    let found = instance(clients, machine).await?;
    let root = found.root_device_name().unwrap_or_default().to_owned();
    let mut disks: Vec<(String, String)> = found
        .block_device_mappings()
        .iter()
        .filter_map(|m| Some((m.device_name()?.to_owned(), m.ebs()?.volume_id()?.to_owned())))
        .filter(|(device, _)| full || *device != root)
        .collect();
    disks.sort();
    if disks.is_empty() {
        return Err(ProviderError::new(format!(
            "{region}: machine {} ({}) has no data disks to snapshot; add `disks:` to its entry, or pass --full for its root disk",
            machine.name, machine.id
        ))
        .of_kind(ErrorKind::Invalid));
    }
    let volume_ids: Vec<String> = disks.iter().map(|(_, id)| id.clone()).collect();
    let volumes = ec2
        .describe_volumes()
        .set_volume_ids(Some(volume_ids.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "DescribeVolumes", volume_ids.join(","), e))?;
    let made = snapshots_of_capture(clients, region, tag, capture).await?;
    let stage = progress.stage(
        &format!("snapshotting {} disks of {}", disks.len(), machine.name),
        disks.len() as u64,
    );
    let mut snapshots = Vec::new();
    for (device, volume_id) in &disks {
        let volume = volumes.volumes().iter().find(|v| v.volume_id() == Some(volume_id.as_str()));
        let size_gib = volume.and_then(|v| v.size()).unwrap_or_default();
        let existing = made.iter().find(|s| s.volume_id() == Some(volume_id.as_str()));
        let snapshot_id = match existing.and_then(|s| s.snapshot_id()) {
            Some(id) => id.to_owned(),
            None => {
                let tags = volume.map(|v| settable(v.tags())).unwrap_or_default();
                let name = format!("{} {device}", machine.name);
                let extra = [
                    (TAG_DEPLOYMENT, tag),
                    (TAG_MACHINE, machine.name.as_str()),
                    (crate::disks::TAG_DEVICE, device.as_str()),
                    (TAG_CAPTURE, capture),
                    ("Name", name.as_str()),
                ];
                let answer = ec2
                    .create_snapshot()
                    .volume_id(volume_id)
                    .description(format!("flotilla {capture} of {} {device}", machine.name))
                    .tag_specifications(spec_of(ResourceType::Snapshot, &tags, &extra))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(region, "CreateSnapshot", volume_id, e))?;
                answer.snapshot_id().unwrap_or_default().to_owned()
            }
        };
        snapshots.push(DiskSnapshot {
            snapshot_id,
            volume_id: volume_id.clone(),
            device: device.clone(),
            root: *device == root,
            size_gib,
        });
    }
    let ids: Vec<String> = snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    stage.note(&ids.join(", "));
    poll_until(&format!("{region}: snapshots {}", ids.join(", ")), CAPTURE_DEADLINE, || async {
        let answer = ec2
            .describe_snapshots()
            .set_snapshot_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "DescribeSnapshots", ids.join(","), e))?;
        let mut completed = 0;
        for snapshot in answer.snapshots() {
            match snapshot.state() {
                Some(SnapshotState::Completed) => completed += 1,
                Some(SnapshotState::Error) => {
                    return Err(AwsError::other(
                        region,
                        "CreateSnapshot",
                        snapshot.snapshot_id().unwrap_or_default(),
                        format!(
                            "the snapshot failed: {}",
                            snapshot.state_message().unwrap_or("EC2 gave no reason")
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok((completed == ids.len()).then_some(()))
    })
    .await?;
    stage.advance(snapshots.len() as u64);
    Ok(snapshots)
}

/// The snapshots of deployment `tag` made for `capture` in `region`.
async fn snapshots_of_capture(
    clients: &Clients,
    region: &str,
    tag: &str,
    capture: &str,
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>, AwsError> {
    let answer = clients
        .ec2(region)
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name(format!("tag:{TAG_CAPTURE}")).values(capture).build())
        .filters(Filter::builder().name(format!("tag:{TAG_DEPLOYMENT}")).values(tag).build())
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk(region, "DescribeSnapshots", format!("capture {capture}"), e)
        })?;
    Ok(answer.snapshots().to_vec())
}

/// The image of the account named `name` in `region`, if any.
async fn image_named(
    clients: &Clients,
    region: &str,
    name: &str,
) -> Result<Option<aws_sdk_ec2::types::Image>, AwsError> {
    let answer = clients
        .ec2(region)
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "DescribeImages", name, e))?;
    Ok(answer.images().iter().find(|i| i.name() == Some(name)).cloned())
}

/// Waits until image `id` is `available`; returns it.
async fn wait_available(
    clients: &Clients,
    region: &str,
    id: &str,
) -> Result<aws_sdk_ec2::types::Image, ProviderError> {
    poll_until(&format!("{region}: image {id}"), CAPTURE_DEADLINE, || async {
        let answer = clients
            .ec2(region)
            .describe_images()
            .image_ids(id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "DescribeImages", id, e))?;
        let Some(image) = answer.images().first() else { return Ok(None) };
        match image.state() {
            Some(ImageState::Available) => Ok(Some(image.clone())),
            Some(ImageState::Failed | ImageState::Error | ImageState::Invalid) => {
                Err(AwsError::other(
                    region,
                    "CreateImage",
                    id,
                    format!(
                        "the image failed: {}",
                        image
                            .state_reason()
                            .and_then(|r| r.message())
                            .unwrap_or("EC2 gave no reason")
                    ),
                ))
            }
            _ => Ok(None),
        }
    })
    .await
}

fn snapshot_ids(image: &aws_sdk_ec2::types::Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_owned))
        .collect()
}

/// An image of `machine`, tagged; with a key, its encrypted copy. See the module
/// documentation.
pub async fn create_image(
    clients: &Clients,
    tag: &str,
    machine: &Machine,
    request: &ImageRequest,
    progress: &dyn Progress,
) -> Result<MachineImage, ProviderError> {
    let region = &machine.region;
    let ec2 = clients.ec2(region);
    // The key first: a key the region does not have is refused before anything is made.
    let key_id = match &request.encrypt_key {
        None => None,
        Some(key) => match crate::kms::resolve(clients, region, key).await? {
            Some(id) => Some(id),
            None => {
                return Err(ProviderError::new(format!(
                    "{region}: KMS key {key} does not exist; a key belongs to one region: create it (or its alias) in {region}, or name a key of {region}"
                ))
                .of_kind(ErrorKind::NotFound));
            }
        },
    };
    let found = instance(clients, machine).await?;
    let tags = settable(found.tags());
    let capture = request.capture.id.as_str();
    let stage = progress.stage(&format!("making image {} of {}", request.name, machine.name), 1);
    let source_name = match key_id {
        Some(_) => format!("{}{INTERMEDIATE_SUFFIX}", request.name),
        None => request.name.clone(),
    };
    let extra = [(TAG_CAPTURE, capture), ("Name", request.name.as_str())];
    let finished = image_named(clients, region, &request.name).await?;
    let mut removed_intermediate = None;
    let image = match (&key_id, finished) {
        (_, Some(image)) => {
            wait_available(clients, region, image.image_id().unwrap_or_default()).await?
        }
        (key_id, None) => {
            let source_id = match image_named(clients, region, &source_name).await? {
                Some(image) => image.image_id().unwrap_or_default().to_owned(),
                None => ec2
                    .create_image()
                    .instance_id(&machine.id)
                    .name(&source_name)
                    .description(format!("flotilla {capture} of {} ({})", machine.name, machine.id))
                    // Without --stop the binary keeps running: no reboot, a crash-consistent image.
                    .no_reboot(true)
                    .tag_specifications(spec_of(ResourceType::Image, &tags, &extra))
                    .tag_specifications(spec_of(ResourceType::Snapshot, &tags, &extra))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(region, "CreateImage", &machine.id, e))?
                    .image_id()
                    .unwrap_or_default()
                    .to_owned(),
            };
            stage.note(&source_id);
            let source = wait_available(clients, region, &source_id).await?;
            match key_id {
                None => source,
                Some(key_id) => {
                    let copy = ec2
                        .copy_image()
                        .source_image_id(&source_id)
                        .source_region(region)
                        .name(&request.name)
                        .description(format!(
                            "flotilla {capture} of {} ({}), encrypted",
                            machine.name, machine.id
                        ))
                        .encrypted(true)
                        .kms_key_id(key_id)
                        .client_token(
                            format!("flotilla-{tag}-{capture}")
                                .chars()
                                .take(64)
                                .collect::<String>(),
                        )
                        .tag_specifications(spec_of(ResourceType::Image, &tags, &extra))
                        .tag_specifications(spec_of(ResourceType::Snapshot, &tags, &extra))
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk(region, "CopyImage", &source_id, e))?;
                    let copy_id = copy.image_id().unwrap_or_default().to_owned();
                    stage.note(&copy_id);
                    wait_available(clients, region, &copy_id).await?
                }
            }
        }
    };
    if key_id.is_some() {
        if let Some(source) = image_named(clients, region, &source_name).await? {
            let source_id = source.image_id().unwrap_or_default().to_owned();
            ec2.deregister_image()
                .image_id(&source_id)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "DeregisterImage", &source_id, e))?;
            removed_intermediate = Some(source_id);
        }
        // The intermediate's snapshots: the capture's, apart from the encrypted copy's. Found
        // by the capture's tag rather than from the image, so that a run again after a failure
        // or crash between the deregistration and the deletions still finds them.
        let keep = snapshot_ids(&image);
        for snapshot in snapshots_of_capture(clients, region, tag, capture).await? {
            let id = snapshot.snapshot_id().unwrap_or_default();
            if id.is_empty() || keep.iter().any(|k| k == id) {
                continue;
            }
            ec2.delete_snapshot()
                .snapshot_id(id)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "DeleteSnapshot", id, e))?;
        }
    }
    stage.advance(1);
    let encrypted = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs())
        .any(|ebs| ebs.encrypted() == Some(true));
    Ok(MachineImage {
        image_id: image.image_id().unwrap_or_default().to_owned(),
        name: request.name.clone(),
        region: region.clone(),
        snapshot_ids: snapshot_ids(&image),
        encrypted,
        removed_intermediate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capture_poll_grows_to_its_cap() {
        let waits: Vec<u64> = (0..8).map(|a| capture_poll(a, 1.0).as_millis() as u64).collect();
        assert_eq!(waits, [2000, 3000, 4500, 6750, 10125, 15187, 22781, 30000]);
        assert_eq!(capture_poll(1000, 1.0), Duration::from_secs(30), "capped, no overflow");
        assert_eq!(capture_poll(0, 0.8), Duration::from_millis(1600));
    }
}
