//! Decoding an entry's `disks:` (device → disk): the device names a data disk may take (not the
//! root's), the volume type with its IOPS and throughput within AWS's ranges, the size, the
//! snapshot to clone, the KMS key, the label's tags and the mount point. Disks are flotilla's
//! own mappings, so unknown keys are errors. The clone's snapshot and size are the account's,
//! checked by the provider before any launch.

use std::collections::BTreeMap;

use super::account::{is_kms_key, is_tag_text};
use super::reader::{Decoder, KeySpec, Slot, UnknownKeys, flotilla, flotilla_required};
use super::rules::iops_rule;
use crate::account::tag_limits;
use crate::disk::{
    DiskClone, DiskSpec, DiskType, Filesystem, MAX_DISK_SIZE, MIN_DISK_SIZE, device_letter,
    is_snapshot_id,
};
use crate::fleet::STORAGE_CLASSES;
use crate::suggest::closest_match;
use crate::tree::{Node, NodeValue};

pub(crate) const DISK_KEYS: &[KeySpec] = &[
    flotilla_required("type", "add `type:` with the volume type, e.g. `type: gp3`"),
    flotilla("size"),
    flotilla("clone"),
    flotilla("encrypt_key"),
    flotilla("label"),
    flotilla("mount"),
    flotilla("filesystem"),
];

/// The help for a device name flotilla does not attach data disks at.
const DEVICE_HELP: &str =
    "name a data disk's device `/dev/sdf` to `/dev/sdp`, or `/dev/xvdb` to `/dev/xvdz`";

impl Decoder<'_> {
    /// `disks: {/dev/sdf: {type: gp3, size: 100}, ...}`.
    pub(super) fn read_disks(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<BTreeMap<String, DiskSpec>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of devices to disks, found {}", node.describe()),
                "write `disks:` then one `/dev/sdf: {type: gp3, size: 100}` per disk",
            );
            return None;
        };
        let mut disks = BTreeMap::new();
        let mut letters: BTreeMap<String, String> = BTreeMap::new();
        let mut mounts: BTreeMap<String, String> = BTreeMap::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(key) = entry.key.as_scalar() else {
                self.error(
                    entry.key.location,
                    field,
                    format!("a device must be a name, found {}", entry.key.describe()),
                    DEVICE_HELP,
                );
                all_valid = false;
                continue;
            };
            let device = key.text.clone();
            let disk_field = format!("{field}.{device}");
            self.locations.insert(disk_field.clone(), entry.key.location);
            if let Some((message, help)) = device_problem(&device) {
                self.error(entry.key.location, &disk_field, message, help);
                all_valid = false;
            } else if let Some(letter) = device_letter(&device) {
                if let Some(other) = letters.get(letter) {
                    self.error(
                        entry.key.location,
                        &disk_field,
                        format!("`{device}` is the device `{other}` already names"),
                        "`/dev/sdX` and `/dev/xvdX` are one device on the machine: give each disk a letter of its own",
                    );
                    all_valid = false;
                }
                letters.insert(letter.to_owned(), device.clone());
            }
            let Some(disk) = self.read_disk(&entry.value, &disk_field) else {
                all_valid = false;
                continue;
            };
            if let Some(mount) = &disk.mount {
                if let Some(other) = mounts.get(mount) {
                    let mount_field = format!("{disk_field}.mount");
                    let location = self.location_of(&mount_field).unwrap_or(entry.key.location);
                    self.error(
                        location,
                        &mount_field,
                        format!("`{mount}` is also where `{other}` is mounted"),
                        "give each disk a mount point of its own",
                    );
                    all_valid = false;
                }
                mounts.insert(mount.clone(), device.clone());
            }
            disks.insert(device, disk);
        }
        all_valid.then_some(disks)
    }

    fn read_disk(&mut self, node: &Node, field: &str) -> Option<DiskSpec> {
        let fields = self.open_mapping(node, field, DISK_KEYS, UnknownKeys::Refuse)?;
        for name in ["type", "mount"] {
            if let Some(entry) = fields.found.get(name) {
                self.locations.insert(fields.child(name), entry.value.location);
            }
        }
        let volume = self.required(&fields, "type", Self::read_disk_type);
        let size = self.optional(&fields, "size", Self::read_disk_size);
        let clone = self.optional(&fields, "clone", Self::read_disk_clone);
        let encrypt_key = self.optional(&fields, "encrypt_key", |decoder, node, field| {
            let key = decoder.read_non_empty_string(node, field, "a KMS key")?;
            if !is_kms_key(&key) {
                decoder.error(
                    node.location,
                    field,
                    format!("`{key}` is not a KMS key"),
                    "write `alias/NAME`, a key id or a key ARN",
                );
                return None;
            }
            Some(key)
        });
        let label = self.optional(&fields, "label", Self::read_disk_label);
        let mount = self.optional(&fields, "mount", Self::read_disk_mount);
        let filesystem = self.optional(&fields, "filesystem", Self::read_disk_filesystem);
        if let (Some(location), Slot::Absent) = (filesystem.location(), &mount) {
            self.error(
                location,
                &fields.child("filesystem"),
                "`filesystem` without `mount`: only a disk the agent mounts is formatted".to_owned(),
                "add `mount:` with where the disk goes, e.g. `mount: /data`, or remove `filesystem`",
            );
            return None;
        }

        if matches!(size, Slot::Absent) && matches!(clone, Slot::Absent) {
            self.error(
                fields.location,
                &fields.child("size"),
                "missing required key `size`".to_owned(),
                "add `size:` in GiB, e.g. `size: 100` (only a disk with `clone` may leave it out, to take the snapshot's size)",
            );
            return None;
        }
        let size_location = size.location();
        let (volume, type_location) = match volume {
            Slot::Present(volume, location) => (volume, location),
            _ => return None,
        };
        let size = size.into_optional()?;
        let mut valid = true;
        let type_field = fields.child("type");
        if let (Some(size), Some(location)) = (size, size_location) {
            let (minimum, maximum) = size_range(&volume.class);
            if !(minimum..=maximum).contains(&size) {
                self.error(
                    location,
                    &fields.child("size"),
                    format!(
                        "a `{}` disk of {size} GiB is out of range ({minimum} to {maximum} GiB)",
                        volume.class
                    ),
                    format!("set `size` from {minimum} to {maximum}"),
                );
                valid = false;
            }
        }
        if let Some(rule) = iops_rule(&volume.class) {
            match volume.iops {
                None if rule.required => {
                    self.error(
                        type_location,
                        &type_field,
                        format!("`{}` disks need provisioned IOPS", volume.class),
                        format!(
                            "write `type: {}:IOPS`, e.g. `{}:3000`",
                            volume.class, volume.class
                        ),
                    );
                    valid = false;
                }
                None => {}
                Some(iops) => {
                    // Without a size (a clone's), only the bounds every size shares apply here.
                    let (minimum, maximum) =
                        rule.range(size.map_or(i64::from(MAX_DISK_SIZE), i64::from));
                    if !(minimum..=maximum).contains(&i64::from(iops)) {
                        let size_text = size
                            .map_or_else(|| "any size".to_owned(), |size| format!("{size} GiB"));
                        self.error(
                            type_location,
                            &type_field,
                            format!(
                                "{iops} IOPS is out of range for `{}` disks of {size_text} ({minimum} to {maximum})",
                                volume.class
                            ),
                            format!(
                                "give {minimum} to {maximum} IOPS: {} allows {} per GiB, up to {}",
                                volume.class, rule.per_gib, rule.cap
                            ),
                        );
                        valid = false;
                    }
                }
            }
        } else if volume.iops.is_some() {
            self.error(
                type_location,
                &type_field,
                format!("`{}` disks take no provisioned IOPS", volume.class),
                format!(
                    "write `type: {}`, or use gp3, io1 or io2 for provisioned IOPS",
                    volume.class
                ),
            );
            valid = false;
        }
        if let Some(throughput) = volume.throughput {
            if volume.class != "gp3" {
                self.error(
                    type_location,
                    &type_field,
                    format!("`{}` disks take no throughput", volume.class),
                    "only gp3 takes a throughput: `gp3:IOPS:MIBS`",
                );
                valid = false;
            } else if !(125..=2000).contains(&throughput) {
                self.error(
                    type_location,
                    &type_field,
                    format!("a throughput of {throughput} MiB/s is out of range (125 to 2000)"),
                    "give 125 to 2000 MiB/s",
                );
                valid = false;
            } else if let Some(iops) = volume.iops
                && throughput > iops / 4
            {
                self.error(
                    type_location,
                    &type_field,
                    format!(
                        "a throughput of {throughput} MiB/s is more than a quarter of {iops} IOPS"
                    ),
                    format!(
                        "lower the throughput to {}, or raise the IOPS to {}",
                        iops / 4,
                        throughput * 4
                    ),
                );
                valid = false;
            }
        }
        let disk = DiskSpec {
            volume,
            size,
            clone: clone.into_optional()?,
            encrypt_key: encrypt_key.into_optional()?,
            label: label.into_optional()?.unwrap_or_default(),
            mount: mount.into_optional()?,
            filesystem: filesystem.into_optional()?,
        };
        valid.then_some(disk)
    }

    /// `type: gp3[:iops[:throughput]]`.
    fn read_disk_type(&mut self, node: &Node, field: &str) -> Option<DiskType> {
        let text = self.read_non_empty_string(node, field, "a volume type, e.g. `gp3`")?;
        let mut parts = text.split(':');
        let class = parts.next().expect("split yields at least one part").to_owned();
        if !STORAGE_CLASSES.contains(&class.as_str()) {
            let help = match closest_match(&class, STORAGE_CLASSES) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("use one of {}", STORAGE_CLASSES.join(", ")),
            };
            self.error(node.location, field, format!("unknown volume type `{class}`"), help);
            return None;
        }
        let mut numbers = Vec::new();
        for part in parts {
            match part.parse::<u32>() {
                Ok(number) if numbers.len() < 2 => numbers.push(number),
                Ok(_) => {
                    self.error(
                        node.location,
                        field,
                        format!("`{text}` has more than a type, IOPS and a throughput"),
                        "write `TYPE`, `TYPE:IOPS` or `gp3:IOPS:MIBS`",
                    );
                    return None;
                }
                Err(_) => {
                    self.error(
                        node.location,
                        field,
                        format!("`{part}` in `{text}` is not a whole number"),
                        "write `TYPE`, `TYPE:IOPS` or `gp3:IOPS:MIBS`, e.g. `gp3:4000:250`",
                    );
                    return None;
                }
            }
        }
        Some(DiskType {
            class,
            iops: numbers.first().copied(),
            throughput: numbers.get(1).copied(),
        })
    }

    /// `size:` in GiB; the range per type is checked once the type is known.
    fn read_disk_size(&mut self, node: &Node, field: &str) -> Option<u32> {
        let size = self.read_u32(node, field)?;
        if !(MIN_DISK_SIZE..=MAX_DISK_SIZE).contains(&size) {
            self.error(
                node.location,
                field,
                format!(
                    "a disk of {size} GiB is out of range ({MIN_DISK_SIZE} to {MAX_DISK_SIZE} GiB)"
                ),
                format!("set `size` from {MIN_DISK_SIZE} to {MAX_DISK_SIZE}"),
            );
            return None;
        }
        Some(size)
    }

    /// `clone: snap-…` or `TAG:VALUE`.
    fn read_disk_clone(&mut self, node: &Node, field: &str) -> Option<DiskClone> {
        let text = self.read_non_empty_string(node, field, "a snapshot id or `TAG:VALUE`")?;
        if is_snapshot_id(&text) {
            return Some(DiskClone::Snapshot(text));
        }
        if text.starts_with("snap-") {
            self.error(
                node.location,
                field,
                format!("`{text}` is not a snapshot id"),
                "a snapshot id is `snap-` and 17 hex digits, e.g. `snap-0123456789abcdef0`",
            );
            return None;
        }
        match text.split_once(':') {
            Some((key, value))
                if !key.is_empty()
                    && !value.is_empty()
                    && is_tag_text(key)
                    && is_tag_text(value)
                    && key.chars().count() <= tag_limits::MAX_KEY_CHARS
                    && value.chars().count() <= tag_limits::MAX_VALUE_CHARS =>
            {
                Some(DiskClone::Tagged { key: key.to_owned(), value: value.to_owned() })
            }
            _ => {
                self.error(
                    node.location,
                    field,
                    format!("`{text}` is neither a snapshot id nor `TAG:VALUE`"),
                    "write a snapshot id (`snap-0123456789abcdef0`) or a tag of the snapshot, e.g. `backup:db-nightly`",
                );
                None
            }
        }
    }

    /// `label: "k:v,k:v"`: tags of the volume.
    fn read_disk_label(&mut self, node: &Node, field: &str) -> Option<BTreeMap<String, String>> {
        let text = self.read_non_empty_string(node, field, "tags, e.g. `role:data,tier:hot`")?;
        let mut label = BTreeMap::new();
        for pair in text.split(',') {
            let problem = match pair.split_once(':') {
                None => Some((
                    format!("`{pair}` in the label is not `key:value`"),
                    "write `key:value` pairs separated by commas, e.g. `role:data,tier:hot`"
                        .to_owned(),
                )),
                Some((key, _)) if label.contains_key(key) => {
                    Some((format!("tag `{key}` is given twice in the label"), "keep one of them".to_owned()))
                }
                Some((key, _)) if key.is_empty() || key.chars().count() > tag_limits::MAX_KEY_CHARS => Some((
                    format!("tag key `{key}` in the label is empty or longer than {} characters", tag_limits::MAX_KEY_CHARS),
                    "AWS takes tag keys of 1 to 128 characters".to_owned(),
                )),
                // A key has no `:`, so AWS's `aws:` and flotilla's `flotilla:` prefixes cannot
                // be written here; `Name` can.
                Some(("Name", _)) => Some((
                    "tag key `Name` in the label is flotilla's own".to_owned(),
                    "flotilla sets `Name` and the `flotilla:` tags itself; choose another key".to_owned(),
                )),
                Some((key, value))
                    if !is_tag_text(key)
                        || !is_tag_text(value)
                        || value.chars().count() > tag_limits::MAX_VALUE_CHARS =>
                {
                    Some((
                        format!("`{pair}` in the label has a character AWS refuses in tags, or a value longer than 256 characters"),
                        "use letters, digits, spaces and `_ . / = + - @`; `:` and `,` separate the pairs".to_owned(),
                    ))
                }
                Some(_) => None,
            };
            if let Some((message, help)) = problem {
                self.error(node.location, field, message, help);
                return None;
            }
            let (key, value) = pair.split_once(':').expect("checked above");
            label.insert(key.to_owned(), value.to_owned());
        }
        if label.len() > tag_limits::MAX_USER_TAGS {
            self.error(
                node.location,
                field,
                format!("the label has {} tags", label.len()),
                format!(
                    "give at most {}: AWS allows {} tags on a volume and flotilla's own take {}",
                    tag_limits::MAX_USER_TAGS,
                    tag_limits::MAX_TAGS,
                    tag_limits::OWN_TAGS
                ),
            );
            return None;
        }
        Some(label)
    }

    /// `filesystem: ext4|xfs`.
    fn read_disk_filesystem(&mut self, node: &Node, field: &str) -> Option<Filesystem> {
        let text = self.read_non_empty_string(node, field, "a filesystem, `ext4` or `xfs`")?;
        let names: Vec<&str> = Filesystem::ALL.iter().map(|f| f.as_str()).collect();
        if let Some(filesystem) = Filesystem::ALL.iter().find(|f| f.as_str() == text) {
            return Some(*filesystem);
        }
        let help = match closest_match(&text, names.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("use one of {}", names.join(", ")),
        };
        self.error(node.location, field, format!("unknown filesystem `{text}`"), help);
        None
    }

    /// `mount: /path`: absolute, not `/`, no `.` or `..` parts.
    fn read_disk_mount(&mut self, node: &Node, field: &str) -> Option<String> {
        let path = self.read_non_empty_string(node, field, "an absolute path, e.g. `/data`")?;
        let parts_valid = path.split('/').skip(1).all(|part| !matches!(part, "" | "." | ".."));
        if !path.starts_with('/') || path == "/" || !parts_valid || path.contains('\0') {
            self.error(
                node.location,
                field,
                format!("`{path}` is not a mount point a data disk may take"),
                "give an absolute path other than `/`, without `.`, `..` or a trailing `/`, e.g. `/data`",
            );
            return None;
        }
        Some(path)
    }
}

/// Why a device name is refused, if it is.
fn device_problem(device: &str) -> Option<(String, String)> {
    if matches!(device, "/dev/sda" | "/dev/sda1" | "/dev/xvda" | "/dev/xvda1" | "/dev/nvme0n1") {
        return Some((
            format!("`{device}` is the root device"),
            format!("the root volume is set by `storage_*` and `root_volume`; {DEVICE_HELP}"),
        ));
    }
    let letter = |rest: &str, range: std::ops::RangeInclusive<u8>| {
        rest.len() == 1 && range.contains(&rest.as_bytes()[0])
    };
    let valid = device.strip_prefix("/dev/sd").is_some_and(|rest| letter(rest, b'f'..=b'p'))
        || device.strip_prefix("/dev/xvd").is_some_and(|rest| letter(rest, b'b'..=b'z'));
    if valid {
        None
    } else {
        Some((format!("`{device}` is not a device a data disk may take"), DEVICE_HELP.to_owned()))
    }
}

/// The sizes EBS allows for a volume type, in GiB.
fn size_range(class: &str) -> (u32, u32) {
    match class {
        "st1" | "sc1" => (125, MAX_DISK_SIZE),
        "io1" | "io2" => (4, MAX_DISK_SIZE),
        "standard" => (1, 1024),
        _ => (MIN_DISK_SIZE, MAX_DISK_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_disks_take_sdf_to_sdp_and_xvdb_to_xvdz_but_not_the_root() {
        for device in ["/dev/sdf", "/dev/sdp", "/dev/xvdb", "/dev/xvdz"] {
            assert_eq!(device_problem(device), None, "{device}");
        }
        for device in ["/dev/sde", "/dev/sdq", "/dev/xvda", "/dev/sda1", "sdf", "/dev/xvdfa"] {
            assert!(device_problem(device).is_some(), "{device}");
        }
        assert!(device_problem("/dev/xvda").unwrap().0.contains("root device"));
    }
}
