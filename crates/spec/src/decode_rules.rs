//! The rules that span keys or entries, and the limits they check, as the deployer and AWS
//! apply them (the deployer only when it creates resources, AWS only after some exist): tag and
//! instance names (`[A-Za-z0-9_-]+`, unique ignoring case after `count`, `monitoring` reserved,
//! the tag at most [`MAX_TAG_BYTES`]), the storage of a volume (class, size, provisioned IOPS and
//! throughput, [`IopsRule`]), `cidr` blocks, the number of machines a provider allows, and the
//! account keys of the top against the entries' (tags per machine, networks no machine uses).
//! They run on whatever the fleet mappings (`decode_fleet`) decoded, so one bad value does not
//! hide the next.

use std::collections::HashMap;
use std::net::IpAddr;

use super::reader::{Decoder, Fields, Slot};
use crate::diagnostic::Location;
use crate::fleet::{InstanceSpec, ProviderKind, STORAGE_CLASSES};
use crate::names::MAX_TAG_BYTES;
use crate::suggest::closest_match;
use crate::validate::is_valid_name;

/// The name of one `instances` entry, for the uniqueness check across entries.
pub(super) struct InstanceName {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) count: Option<u32>,
    pub(super) location: Location,
}

/// Storage keys shared by `monitoring` and `instances[]`.
pub(super) struct Storage {
    pub(super) size: i32,
    pub(super) class: String,
    pub(super) iops: Option<i32>,
    pub(super) throughput: Option<i32>,
}

impl Decoder<'_> {
    /// Rules between the top's account keys and the entries': the tags one machine gets fit
    /// AWS's limit, and a top-level network names a region some machine runs in.
    pub(super) fn check_account_across_entries(
        &mut self,
        top: &crate::account::AccountKeys,
        instances: &[InstanceSpec],
        provider: Option<ProviderKind>,
    ) {
        use crate::account::tag_limits::MAX_USER_TAGS;
        for (index, instance) in instances.iter().enumerate() {
            let mut keys: Vec<&String> = top.tags.keys().collect();
            keys.extend(instance.account.tags.keys().filter(|k| !top.tags.contains_key(*k)));
            if keys.len() > MAX_USER_TAGS {
                let field = format!("instances[{index}].tags");
                let Some(location) = self.locations.get(&field).copied() else { continue };
                self.error(
                    location,
                    &field,
                    format!("this entry's machines get {} tags with the top's", keys.len()),
                    format!("give at most {MAX_USER_TAGS} in all: AWS allows 50 tags on a resource and flotilla's own take 8"),
                );
            }
            // A data disk's volume carries the machine's tags and its label.
            for (device, disk) in &instance.disks {
                let mut volume_keys = keys.clone();
                volume_keys.extend(disk.label.keys().filter(|k| !keys.contains(k)));
                if volume_keys.len() <= MAX_USER_TAGS || keys.len() > MAX_USER_TAGS {
                    continue;
                }
                let field = format!("instances[{index}].disks.{device}.label");
                let disk_field = format!("instances[{index}].disks.{device}");
                let Some(location) =
                    self.locations.get(&field).or(self.locations.get(&disk_field)).copied()
                else {
                    continue;
                };
                self.error(
                    location,
                    &field,
                    format!("the disk's volume gets {} tags with the machine's", volume_keys.len()),
                    format!("give at most {MAX_USER_TAGS} in all with `tags`: AWS allows 50 tags on a volume and flotilla's own take 8"),
                );
            }
        }
        if provider == Some(ProviderKind::Local) {
            return;
        }
        for region in top.network.keys() {
            let used = region == crate::fleet::AWS_MONITORING_REGION
                || instances.iter().any(|instance| &instance.region == region);
            if !used {
                let field = format!("network.{region}");
                let Some(location) = self.locations.get(&field).copied() else { continue };
                self.warning(
                    location,
                    &field,
                    format!("no machine runs in {region}, so this network is not used"),
                    format!(
                        "remove it, or check the region's name (the monitoring machine runs in {})",
                        crate::fleet::AWS_MONITORING_REGION
                    ),
                );
            }
        }
    }

    /// Checks a tag or instance name against `[A-Za-z0-9_-]+` (commonware-deployer 2026.10.0),
    /// and a tag's length: it names a directory, so it is at most [`MAX_TAG_BYTES`] bytes.
    pub(super) fn check_name(
        &mut self,
        location: Location,
        field: &str,
        name: &str,
        what: &str,
        example: &str,
    ) -> bool {
        if name.is_empty() {
            self.error(
                location,
                field,
                format!("the {what} is empty"),
                format!("use letters, digits, `_` and `-`, e.g. `{example}`"),
            );
            return false;
        }
        if !is_valid_name(name) {
            self.error(
                location,
                field,
                format!("the {what} `{name}` may only contain ASCII letters, digits, `_` and `-`"),
                format!("rename it, e.g. to `{}`", suggest_name(name, example)),
            );
            return false;
        }
        if what == "tag" && name.len() > MAX_TAG_BYTES {
            self.error(
                location,
                field,
                format!(
                    "the tag is {} bytes long; a tag names the deployment's state directory, and a file name has at most {MAX_TAG_BYTES} bytes",
                    name.len()
                ),
                format!("shorten it to at most {MAX_TAG_BYTES} characters"),
            );
            return false;
        }
        true
    }

    /// Names must be unique ignoring case after `count` expansion, and not `monitoring`.
    pub(super) fn check_instance_names(&mut self) {
        let names = std::mem::take(&mut self.instance_names);
        // Lower-cased expanded name → the entry that first produced it, and the name as written.
        let mut seen: HashMap<String, (&InstanceName, String)> = HashMap::new();
        for entry in &names {
            let field = format!("instances[{}].name", entry.index);
            let expanded: Vec<String> = match entry.count {
                None => vec![entry.name.clone()],
                Some(count) => (0..count).map(|i| format!("{}-{i}", entry.name)).collect(),
            };
            if entry.count.is_none() && entry.name.eq_ignore_ascii_case("monitoring") {
                self.error(
                    entry.location,
                    &field,
                    format!("the name `{}` is reserved for the monitoring instance", entry.name),
                    "choose another name",
                );
                continue;
            }
            let mut reported = false;
            for name in expanded {
                let lowered = name.to_ascii_lowercase();
                match seen.get(&lowered) {
                    Some((other, other_name)) if !reported => {
                        let this = match entry.count {
                            Some(count) => format!(
                                "instance name `{name}` (from `{}` with count {count})",
                                entry.name
                            ),
                            None => format!("instance name `{name}`"),
                        };
                        let that = match other.count {
                            Some(count) => format!(
                                "instances[{}] (line {}) runs `{}` with count {count}, which \
                                 includes `{other_name}`",
                                other.index, other.location.line, other.name
                            ),
                            None => format!(
                                "instances[{}] (line {}) is named `{other_name}`",
                                other.index, other.location.line
                            ),
                        };
                        let mut help =
                            "rename one of them: names must be unique ignoring case".to_owned();
                        if entry.count.is_some() || other.count.is_some() {
                            help.push_str(
                                "; an entry named `x` with `count: N` runs as `x-0` … `x-(N-1)`",
                            );
                        }
                        self.error(
                            entry.location,
                            &field,
                            format!("{this} is already taken: {that}"),
                            help,
                        );
                        reported = true;
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(lowered, (entry, name));
                    }
                }
            }
        }
    }

    /// Reads the storage keys and checks them as the deployer's `validate_storage_config`
    /// does before it creates anything.
    pub(super) fn decode_storage(&mut self, fields: &Fields<'_>) -> Option<Storage> {
        let size = self.required(fields, "storage_size", Self::read_i32);
        let class = self.required(fields, "storage_class", Self::read_string);
        let iops = self.optional_or_null(fields, "storage_iops", Self::read_i32);
        let throughput = self.optional_or_null(fields, "storage_throughput", Self::read_i32);

        let mut valid = true;
        let valid_size = match &size {
            Slot::Present(size, location) if *size < 1 => {
                self.error(
                    *location,
                    &fields.child("storage_size"),
                    format!("storage_size must be at least 1 GiB, found {size}"),
                    "give the root volume's size in GiB, e.g. `storage_size: 10`",
                );
                valid = false;
                None
            }
            Slot::Present(size, _) => Some(i64::from(*size)),
            _ => None,
        };
        let valid_class = match &class {
            Slot::Present(class, location) if !STORAGE_CLASSES.contains(&class.as_str()) => {
                let known = STORAGE_CLASSES.join(", ");
                let help = match closest_match(class, STORAGE_CLASSES) {
                    Some(close) if close.eq_ignore_ascii_case(class) => {
                        format!("storage classes are lower-case: `{close}`")
                    }
                    _ => format!("use one of {known}"),
                };
                self.error(
                    *location,
                    &fields.child("storage_class"),
                    format!("unknown storage class `{class}`"),
                    help,
                );
                valid = false;
                None
            }
            Slot::Present(class, location) => Some((class.as_str(), *location)),
            _ => None,
        };

        if let Some((class, class_location)) = valid_class {
            let iops_field = fields.child("storage_iops");
            let rule = iops_rule(class);
            match (&iops, rule) {
                (Slot::Absent, Some(rule)) if rule.required => {
                    let help = match valid_size.map(|size| rule.range(size)) {
                        Some((minimum, maximum)) if minimum <= maximum => format!(
                            "add `storage_iops:` from {minimum} to {maximum} for this volume"
                        ),
                        _ => "add `storage_iops:`".to_owned(),
                    };
                    self.error(
                        class_location,
                        &iops_field,
                        format!("storage class `{class}` needs `storage_iops`"),
                        help,
                    );
                    valid = false;
                }
                (Slot::Present(value, location), None) => {
                    self.error(
                        *location,
                        &iops_field,
                        format!(
                            "storage class `{class}` does not take `storage_iops` (found {value})"
                        ),
                        "remove storage_iops, or use gp3, io1 or io2 for provisioned IOPS",
                    );
                    valid = false;
                }
                (Slot::Present(value, location), Some(rule)) => {
                    if let Some(size) = valid_size {
                        let (minimum, maximum) = rule.range(size);
                        let value = i64::from(*value);
                        if minimum > maximum {
                            let smallest = (minimum + rule.per_gib - 1) / rule.per_gib;
                            self.error(
                                *location,
                                &iops_field,
                                format!("a {size} GiB {class} volume cannot have provisioned IOPS: {class} allows {} IOPS per GiB and at least {minimum}", rule.per_gib),
                                format!("grow storage_size to at least {smallest}"),
                            );
                            valid = false;
                        } else if !(minimum..=maximum).contains(&value) {
                            let help = if value > maximum && maximum < rule.cap {
                                format!(
                                    "lower storage_iops to at most {maximum}, or grow storage_size: {class} allows {} IOPS per GiB, up to {}",
                                    rule.per_gib, rule.cap
                                )
                            } else {
                                format!("set storage_iops from {minimum} to {maximum}")
                            };
                            self.error(
                                *location,
                                &iops_field,
                                format!(
                                    "storage_iops {value} is out of range for a {size} GiB {class} volume ({minimum} to {maximum})"
                                ),
                                help,
                            );
                            valid = false;
                        }
                    }
                }
                _ => {}
            }

            if let Slot::Present(value, location) = &throughput {
                let throughput_field = fields.child("storage_throughput");
                let value = i64::from(*value);
                if class != "gp3" {
                    self.error(
                        *location,
                        &throughput_field,
                        format!("storage class `{class}` does not take `storage_throughput` (found {value})"),
                        "remove storage_throughput, or use `storage_class: gp3`",
                    );
                    valid = false;
                } else if !(125..=2000).contains(&value) {
                    self.error(
                        *location,
                        &throughput_field,
                        format!("storage_throughput {value} is out of range (125 to 2000 MiB/s)"),
                        "set storage_throughput from 125 to 2000",
                    );
                    valid = false;
                } else {
                    let base = match &iops {
                        Slot::Present(iops, _) => Some((i64::from(*iops), false)),
                        Slot::Absent => Some((3000, true)),
                        Slot::Invalid => None,
                    };
                    if let Some((base, default_iops)) = base
                        && value > base / 4
                    {
                        let limit = base / 4;
                        let source = if default_iops {
                            "a quarter of the default 3000 IOPS".to_owned()
                        } else {
                            format!("a quarter of storage_iops {base}")
                        };
                        self.error(
                            *location,
                            &throughput_field,
                            format!(
                                "storage_throughput {value} is more than {limit} MiB/s, {source}"
                            ),
                            format!(
                                "lower storage_throughput to {limit}, or set storage_iops to at least {}",
                                value * 4
                            ),
                        );
                        valid = false;
                    }
                }
            }
        }

        let storage = Storage {
            size: size.into_required()?,
            class: class.into_required()?,
            iops: iops.into_optional()?,
            throughput: throughput.into_optional()?,
        };
        valid.then_some(storage)
    }
}

/// The deployer's provisioned-IOPS rule for one storage class.
#[derive(Clone, Copy)]
pub(super) struct IopsRule {
    pub(super) required: bool,
    minimum: i64,
    pub(super) per_gib: i64,
    /// The largest value whatever the size.
    pub(super) cap: i64,
    /// gp3 always allows its baseline, even on volumes too small to reach it per GiB.
    floor_at_minimum: bool,
}

impl IopsRule {
    /// The allowed range for a volume of `size` GiB (empty when `minimum > maximum`).
    pub(super) fn range(self, size: i64) -> (i64, i64) {
        let mut maximum = size.saturating_mul(self.per_gib);
        if self.floor_at_minimum {
            maximum = maximum.max(self.minimum);
        }
        (self.minimum, maximum.min(self.cap))
    }
}

pub(super) fn iops_rule(class: &str) -> Option<IopsRule> {
    match class {
        "gp3" => Some(IopsRule {
            required: false,
            minimum: 3000,
            per_gib: 500,
            cap: 80_000,
            floor_at_minimum: true,
        }),
        "io1" => Some(IopsRule {
            required: true,
            minimum: 100,
            per_gib: 50,
            cap: 64_000,
            floor_at_minimum: false,
        }),
        "io2" => Some(IopsRule {
            required: true,
            minimum: 100,
            per_gib: 1000,
            cap: 256_000,
            floor_at_minimum: false,
        }),
        _ => None,
    }
}

/// Why a `cidr` is refused.
pub(super) struct CidrProblem {
    pub(super) message: String,
    pub(super) help: String,
}

/// Checks an IPv4 or IPv6 CIDR block. The deployer passes `cidr` to EC2 unchecked, so a typo
/// fails only at AWS, after resources exist; flotilla refuses it before any cloud call.
pub(super) fn check_cidr(cidr: &str) -> Result<(), CidrProblem> {
    const EXAMPLES: &str = "e.g. `0.0.0.0/0` for everyone, `203.0.113.7/32` for one IPv4 \
                            address or `::/0` for every IPv6 address";
    let Some((address, prefix)) = cidr.split_once('/') else {
        return Err(match cidr.parse::<IpAddr>() {
            Ok(address) => CidrProblem {
                message: format!("`{cidr}` is an address, not a CIDR block"),
                help: format!(
                    "add a prefix length: `{cidr}/{}` for this one address",
                    if address.is_ipv4() { 32 } else { 128 }
                ),
            },
            Err(_) => CidrProblem {
                message: format!("`{cidr}` is not a CIDR block"),
                help: format!("write an address and a prefix length, {EXAMPLES}"),
            },
        });
    };
    let Ok(address) = address.parse::<IpAddr>() else {
        return Err(CidrProblem {
            message: format!("`{cidr}` is not a CIDR block: `{address}` is not an IP address"),
            help: format!("write an address and a prefix length, {EXAMPLES}"),
        });
    };
    let longest = if address.is_ipv4() { 32 } else { 128 };
    let prefix_length = (!prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()))
        .then(|| prefix.parse::<u32>().ok())
        .flatten();
    match prefix_length {
        Some(length) if length <= longest => Ok(()),
        _ => Err(CidrProblem {
            message: format!(
                "`{cidr}` is not a CIDR block: the prefix length must be 0 to {longest}"
            ),
            help: format!("write an address and a prefix length, {EXAMPLES}"),
        }),
    }
}

/// Why `instances` asks for more machines than `provider` allows, if it does.
pub(crate) fn machine_total_problem(
    instances: &[InstanceSpec],
    provider: ProviderKind,
) -> Option<(String, String)> {
    let total: usize = instances.iter().map(|i| i.count.map_or(1, |n| n as usize)).sum();
    let max = crate::fleet::max_machines(provider);
    (total > max).then(|| {
        (
            format!(
                "the instances add up to {total} machines; a deployment on the {provider} provider has at most {max}"
            ),
            format!(
                "lower the counts to {max} machines in all, or split the fleet into several deployments (tags)"
            ),
        )
    })
}

/// A valid name close to `name`, for a suggestion: every run of other characters becomes one
/// `-`, dashes at either end are dropped, and `example` stands in when nothing is left.
fn suggest_name(name: &str, example: &str) -> String {
    let mut fixed = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            fixed.push(c);
        } else if !fixed.is_empty() && !fixed.ends_with('-') {
            fixed.push('-');
        }
    }
    let fixed = fixed.trim_end_matches('-');
    let fixed: String = fixed.chars().take(MAX_TAG_BYTES).collect();
    if fixed.is_empty() { example.to_owned() } else { fixed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks() {
        for good in ["0.0.0.0/0", "10.0.0.0/8", "203.0.113.7/32", "::/0", "2001:db8::/32"] {
            assert!(check_cidr(good).is_ok(), "{good}");
        }
        for bad in [
            "nonsense",
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "",
        ] {
            assert!(check_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iops_ranges_follow_the_deployer() {
        let gp3 = iops_rule("gp3").unwrap();
        assert_eq!(gp3.range(1), (3000, 3000));
        assert_eq!(gp3.range(100), (3000, 50_000));
        assert_eq!(gp3.range(1000), (3000, 80_000));
        let io1 = iops_rule("io1").unwrap();
        assert_eq!(io1.range(1), (100, 50));
        assert_eq!(io1.range(100), (100, 5000));
        assert_eq!(io1.range(10_000), (100, 64_000));
        let io2 = iops_rule("io2").unwrap();
        assert_eq!(io2.range(10), (100, 10_000));
        assert_eq!(io2.range(i64::from(i32::MAX)), (100, 256_000));
        assert!(iops_rule("gp2").is_none());
    }
}
