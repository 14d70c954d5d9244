//! Data disks of an entry's machines (`disks:`), resolved in the entry's region before any
//! launch: a `clone: TAG:VALUE` becomes the newest completed snapshot the account owns with that
//! tag (`DescribeSnapshots` with owner `self`, newest `StartTime`), a `clone: snap-…` is checked
//! to exist, a disk without `size` takes its snapshot's size and one with a smaller size than
//! its snapshot is refused, and an `encrypt_key` (`alias/NAME` too) is resolved through
//! [`crate::kms`]. `references` reports every problem located at its key; `prepare` puts the
//! resolved disks into the group's launch template as block device mappings (`templates`), and
//! `launch` tags each new machine's volumes with their disk's `label` (and `flotilla:device`,
//! `flotilla:mount`) once the machine is named.

use aws_sdk_ec2::types::Filter;
use flotilla_core::plan::GroupPlan;
use flotilla_core::provider::ReferenceProblem;
use flotilla_spec::Severity;
use flotilla_spec::disk::DiskClone;

use crate::clients::Clients;
use crate::error::AwsError;
use crate::kms;

/// The tag a data disk's volume carries with its device.
pub const TAG_DEVICE: &str = "flotilla:device";
/// The tag a data disk's volume carries with its mount point, when the spec gives one.
pub const TAG_MOUNT: &str = "flotilla:mount";

/// One data disk as the launch template maps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DataDisk {
    pub device: String,
    pub class: String,
    pub size_gib: i32,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    /// The snapshot the volume starts from (a `clone: TAG:VALUE` resolved).
    pub snapshot_id: Option<String>,
    /// The resolved key id of `encrypt_key`.
    pub kms_key_id: Option<String>,
}

/// The tags of a data disk's volume beside the deployment's: its device, its mount point and
/// its `label`.
pub fn volume_tags(group: &GroupPlan, device: &str) -> Vec<(String, String)> {
    let Some(disk) = group.disks.get(device) else { return Vec::new() };
    let mut tags = vec![(TAG_DEVICE.to_owned(), device.to_owned())];
    if let Some(mount) = &disk.mount {
        tags.push((TAG_MOUNT.to_owned(), mount.clone()));
    }
    tags.extend(disk.label.iter().map(|(key, value)| (key.clone(), value.clone())));
    tags
}

/// A snapshot found for a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    id: String,
    size_gib: i32,
}

/// Every disk of `group` resolved in its region, or every problem with them (each at its key).
/// An error of the account's API (not an answer about the disks) is the outer `Err`.
pub async fn resolve(
    clients: &Clients,
    group: &GroupPlan,
) -> Result<Result<Vec<DataDisk>, Vec<ReferenceProblem>>, AwsError> {
    let region = &group.region;
    let index = group.instance_index.unwrap_or_default();
    let mut disks = Vec::new();
    let mut problems = Vec::new();
    for (device, disk) in &group.disks {
        let field = format!("instances[{index}].disks.{device}");
        let snapshot = match &disk.clone {
            None => None,
            Some(DiskClone::Snapshot(id)) => match snapshot_by_id(clients, region, id).await? {
                Some(snapshot) => Some(snapshot),
                None => {
                    problems.push(problem(
                        format!("{field}.clone"),
                        format!("snapshot {id} does not exist in {region}"),
                        format!("a snapshot belongs to one region: copy it to {region} (CopySnapshot), or name a snapshot of {region}"),
                    ));
                    continue;
                }
            },
            Some(DiskClone::Tagged { key, value }) => {
                match newest_tagged(clients, region, key, value).await? {
                    Some(snapshot) => Some(snapshot),
                    None => {
                        problems.push(problem(
                            format!("{field}.clone"),
                            format!("no completed snapshot of the account in {region} carries the tag {key}={value}"),
                            format!("tag a snapshot of {region} with {key}={value} (a snapshot belongs to one region), or name one by its id"),
                        ));
                        continue;
                    }
                }
            }
        };
        let size_gib = match (disk.size, &snapshot) {
            (Some(size), Some(snapshot)) if i64::from(size) < i64::from(snapshot.size_gib) => {
                problems.push(problem(
                    format!("{field}.size"),
                    format!(
                        "the disk's {size} GiB are less than its snapshot {} holds ({} GiB)",
                        snapshot.id, snapshot.size_gib
                    ),
                    format!(
                        "give `size: {}` or more, or leave `size` out to take the snapshot's",
                        snapshot.size_gib
                    ),
                ));
                continue;
            }
            (Some(size), _) => i32::try_from(size).expect("the spec keeps sizes under 16385"),
            (None, Some(snapshot)) => snapshot.size_gib,
            (None, None) => {
                // The spec refuses this; a plan made another way is told the same.
                problems.push(problem(
                    format!("{field}.size"),
                    "a disk without `clone` needs `size`".to_owned(),
                    "add `size:` in GiB".to_owned(),
                ));
                continue;
            }
        };
        let kms_key_id = match &disk.encrypt_key {
            None => None,
            Some(key) => match kms::resolve(clients, region, key).await? {
                Some(id) => Some(id),
                None => {
                    problems.push(problem(
                        format!("{field}.encrypt_key"),
                        format!("KMS key {key} does not exist in {region}"),
                        format!("a key belongs to one region: create it (or its alias) in {region}, or name a key of {region}"),
                    ));
                    continue;
                }
            },
        };
        let number = |value: Option<u32>| {
            value.map(|v| i32::try_from(v).expect("the spec keeps IOPS and throughput under 2^31"))
        };
        disks.push(DataDisk {
            device: device.clone(),
            class: disk.volume.class.clone(),
            size_gib,
            iops: number(disk.volume.iops),
            throughput: number(disk.volume.throughput),
            snapshot_id: snapshot.map(|snapshot| snapshot.id),
            kms_key_id,
        });
    }
    Ok(if problems.is_empty() { Ok(disks) } else { Err(problems) })
}

fn problem(field: String, message: String, help: String) -> ReferenceProblem {
    ReferenceProblem { field, severity: Severity::Error, message, help }
}

/// The snapshot `id` of the account in `region`, or `None` when there is none.
async fn snapshot_by_id(
    clients: &Clients,
    region: &str,
    id: &str,
) -> Result<Option<Snapshot>, AwsError> {
    match clients.ec2(region).describe_snapshots().snapshot_ids(id).send().await {
        Ok(answer) => Ok(answer.snapshots().iter().find_map(|found| {
            (found.snapshot_id() == Some(id)).then(|| Snapshot {
                id: id.to_owned(),
                size_gib: found.volume_size().unwrap_or_default(),
            })
        })),
        Err(e) => {
            let error = AwsError::from_sdk(region, "DescribeSnapshots", id, e);
            if error.code.as_deref().is_some_and(|code| code.starts_with("InvalidSnapshot")) {
                Ok(None)
            } else {
                Err(error)
            }
        }
    }
}

/// The newest completed snapshot the account owns in `region` with the tag `key` = `value`
/// (by `StartTime`; the id breaks a tie so the choice does not depend on EC2's order).
async fn newest_tagged(
    clients: &Clients,
    region: &str,
    key: &str,
    value: &str,
) -> Result<Option<Snapshot>, AwsError> {
    let ec2 = clients.ec2(region);
    let mut newest: Option<(aws_smithy_types::DateTime, Snapshot)> = None;
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(Filter::builder().name(format!("tag:{key}")).values(value).build())
            .filters(Filter::builder().name("status").values("completed").build())
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(region, "DescribeSnapshots", format!("tag {key}={value}"), e)
            })?;
        for found in page.snapshots() {
            let (Some(id), Some(started)) = (found.snapshot_id(), found.start_time()) else {
                continue;
            };
            let newer = newest.as_ref().is_none_or(|(time, best)| {
                (started.secs(), started.subsec_nanos(), id)
                    > (time.secs(), time.subsec_nanos(), best.id.as_str())
            });
            if newer {
                let snapshot = Snapshot {
                    id: id.to_owned(),
                    size_gib: found.volume_size().unwrap_or_default(),
                };
                newest = Some((*started, snapshot));
            }
        }
        match page.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => return Ok(newest.map(|(_, snapshot)| snapshot)),
        }
    }
}
