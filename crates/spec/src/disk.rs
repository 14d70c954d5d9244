//! Data disks of an instance entry (`disks:` device → disk): EBS volumes created with each
//! machine, attached at the device, deleted with it, tagged with the deployment's tags and the
//! disk's `label`. A disk may start as a copy of a snapshot (`clone: snap-…`, or `TAG:VALUE` for
//! the newest snapshot of the account carrying that tag in the entry's region) and be encrypted
//! with a KMS key.
//!
//! These are the keys as written and checked without the account (`decode_disk.rs`); the
//! snapshot a tag names and the clone's size are resolved by the provider before any launch.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};

/// The smallest data disk, in GiB.
pub const MIN_DISK_SIZE: u32 = 1;
/// The largest data disk, in GiB (16 TiB, EBS's limit for every type but io2 Block Express).
pub const MAX_DISK_SIZE: u32 = 16_384;

/// One data disk of an entry's machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The EBS volume type, with provisioned IOPS and throughput after colons: `gp3`, `gp3:4000`, `gp3:4000:250`, `io2:8000`, `st1`. Types: gp2, gp3, io1, io2, st1, sc1, standard. IOPS are required for io1 and io2 and allowed for gp3; throughput (MiB/s) only for gp3.
    #[serde(rename = "type", serialize_with = "display")]
    #[schemars(
        with = "String",
        pattern(r"^(gp2|gp3|io1|io2|st1|sc1|standard)(:[0-9]+(:[0-9]+)?)?$")
    )]
    pub volume: DiskType,
    /// The size in GiB, 1 to 16384 (st1 and sc1 at least 125, standard at most 1024). Optional with `clone`: the snapshot's size; otherwise at least the snapshot's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub size: Option<u32>,
    /// Start the disk as a copy of a snapshot: its id (`snap-0123456789abcdef0`), or `TAG:VALUE` for the newest completed snapshot owned by the account that carries that tag in the entry's region.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "display_option")]
    #[schemars(with = "Option<String>")]
    pub clone: Option<DiskClone>,
    /// Encrypt the disk with this KMS key: `alias/NAME`, a key id or a key ARN. Without it the disk is encrypted only if the snapshot is or the account encrypts by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_key: Option<String>,
    /// Tags of the volume beside the deployment's, written `key:value,key:value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", serialize_with = "label_text")]
    #[schemars(with = "Option<String>")]
    pub label: BTreeMap<String, String>,
    /// Where the agent mounts the disk on the machine, an absolute path (optional), before the binary starts and before `boot` (so boot files and commands may use it). A disk without a filesystem (a new one) is formatted first with `filesystem`, labelled with its device's name (`sdf`); a disk that has one (a clone) is never formatted. It is also recorded on the volume as the tag `flotilla:mount`. Without `mount` the disk is attached and left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The filesystem a new disk is formatted with before it is mounted: `ext4` (the default) or `xfs`. Only with `mount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

/// A filesystem the agent formats an empty data disk with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

impl Filesystem {
    /// Every filesystem, as written in the spec.
    pub const ALL: &[Filesystem] = &[Filesystem::Ext4, Filesystem::Xfs];

    /// `ext4`, `xfs`: the name in the spec and the suffix of its `mkfs.` program.
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// A disk's EBS volume type with its provisioned performance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskType {
    /// `gp2`, `gp3`, `io1`, `io2`, `st1`, `sc1` or `standard`.
    pub class: String,
    /// Provisioned IOPS (gp3, io1, io2).
    pub iops: Option<u32>,
    /// Throughput in MiB/s (gp3).
    pub throughput: Option<u32>,
}

impl fmt::Display for DiskType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.class)?;
        if let Some(iops) = self.iops {
            write!(formatter, ":{iops}")?;
        }
        if let Some(throughput) = self.throughput {
            write!(formatter, ":{throughput}")?;
        }
        Ok(())
    }
}

/// The snapshot a disk starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskClone {
    /// A snapshot by id, `snap-…`.
    Snapshot(String),
    /// The newest completed snapshot of the account carrying the tag `key` = `value`.
    Tagged { key: String, value: String },
}

impl fmt::Display for DiskClone {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskClone::Snapshot(id) => write!(formatter, "{id}"),
            DiskClone::Tagged { key, value } => write!(formatter, "{key}:{value}"),
        }
    }
}

/// Whether `text` is a snapshot id as EC2 writes them: `snap-` and 8 or 17 hex digits.
pub fn is_snapshot_id(text: &str) -> bool {
    text.strip_prefix("snap-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The Linux name of a device as Xen and Nitro machines see it: `/dev/sdf` and `/dev/xvdf` are
/// one device, so two disks may not use both.
pub fn device_letter(device: &str) -> Option<&str> {
    device.strip_prefix("/dev/sd").or_else(|| device.strip_prefix("/dev/xvd"))
}

fn display<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn display_option<T: fmt::Display, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

fn label_text<S: Serializer>(
    label: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text: Vec<String> = label.iter().map(|(key, value)| format!("{key}:{value}")).collect();
    serializer.collect_str(&text.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_have_8_or_17_hex_digits() {
        assert!(is_snapshot_id("snap-0123abcd"));
        assert!(is_snapshot_id("snap-0123456789abcdef0"));
        assert!(!is_snapshot_id("snap-0123456789abcdef"));
        assert!(!is_snapshot_id("snap-xyz12345"));
        assert!(!is_snapshot_id("vol-0123abcd"));
    }

    #[test]
    fn a_type_is_written_back_as_read() {
        let volume = DiskType { class: "gp3".to_owned(), iops: Some(4000), throughput: Some(250) };
        assert_eq!(volume.to_string(), "gp3:4000:250");
        let volume = DiskType { class: "st1".to_owned(), iops: None, throughput: None };
        assert_eq!(volume.to_string(), "st1");
    }
}
