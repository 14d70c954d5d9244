//! Decoding the keys that fit a fleet into its account (see [`crate::account`]): `image`,
//! `image_owners`, `network`, `tags`, `iam_policies`, `iam_statements`, `boot` and
//! `root_volume`. These are flotilla's own mappings, so unknown keys inside them are errors.
//! Everything here is the shape of the values; whether the image, VPC, subnets, groups,
//! policies and key exist is asked of the account later, by the provider, and reported at the
//! field paths the decoder records.

use std::collections::BTreeMap;

use super::reader::{Decoder, Fields, KeySpec, Slot, UnknownKeys, flotilla, flotilla_required};
use crate::account::{
    AccountKeys, BootCommand, BootFile, BootSpec, IamKeys, ImageRef, MAX_COMMAND_TIMEOUT,
    MAX_INLINE_POLICY_CHARS, NetworkSpec, ResourceRef, RootVolumeSpec, default_command_timeout,
    default_file_mode, parse_mode, tag_limits,
};
use crate::tree::{Node, NodeValue, ScalarStyle};

pub(crate) const IMAGE_KEYS: &[KeySpec] =
    &[flotilla_required("name", "add `name: PATTERN`, e.g. `name: golden-*`")];

pub(crate) const NETWORK_KEYS: &[KeySpec] = &[
    flotilla_required("vpc", "add `vpc: vpc-…` or `vpc: TAG:VALUE`"),
    flotilla("subnets"),
    flotilla("security_groups"),
];

pub(crate) const BOOT_KEYS: &[KeySpec] = &[
    flotilla("files"),
    flotilla("sysctl"),
    flotilla("packages"),
    flotilla("commands"),
    flotilla("tune_network"),
];

pub(crate) const BOOT_FILE_KEYS: &[KeySpec] = &[
    flotilla_required("path", "add `path:`, an absolute path such as `/etc/myapp.conf`"),
    flotilla("mode"),
    flotilla("owner"),
    flotilla_required("content", "add `content:` (use `content: \"\"` for an empty file)"),
];

pub(crate) const BOOT_COMMAND_KEYS: &[KeySpec] = &[
    flotilla_required("argv", "add `argv: [program, arg, …]`"),
    flotilla("timeout"),
    flotilla("critical"),
];

pub(crate) const ROOT_VOLUME_KEYS: &[KeySpec] = &[flotilla("encrypted"), flotilla("kms_key")];

/// Keys only the top of a spec may hold; in an instance entry they are errors.
pub(crate) const TOP_LEVEL_ONLY: &[&str] = &["iam_policies", "iam_statements"];

/// The keys an IAM policy statement may hold in an identity policy.
const STATEMENT_KEYS: &[&str] =
    &["Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"];

/// Largest total size of the boot files' contents of one machine: they travel in its manifest.
const MAX_BOOT_FILE_BYTES: usize = 4 << 20;

/// Most managed policies one role may have attached (AWS's quota, raised to its maximum).
const MAX_MANAGED_POLICIES: usize = 20;
/// AWS's default quota of managed policies per role.
const DEFAULT_MANAGED_POLICIES: usize = 10;

/// Whether `text` is `PREFIX-` and 8 or 17 lowercase hex digits, as EC2 ids are.
fn is_ec2_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('-')).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `text` looks like an AWS region (`us-east-1`, `ap-southeast-2`, `us-gov-west-1`).
pub(crate) fn looks_like_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

/// The characters AWS allows in tags of every service flotilla tags (S3 and IAM are the
/// strictest): letters, digits, white space and `_ . : / = + - @`.
pub(super) fn is_tag_text(text: &str) -> bool {
    text.chars().all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
}

/// The AMI name characters EC2 allows, plus its filter's wildcards `*` and `?`.
fn is_image_name_pattern(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_*?".contains(c))
}

fn is_package(text: &str) -> bool {
    let (name, version) = match text.split_once('=') {
        Some((name, version)) => (name, Some(version)),
        None => (text, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b));
    let version_ok = version.is_none_or(|v| {
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b))
    });
    name_ok && version_ok
}

fn is_sysctl_key(text: &str) -> bool {
    text.contains('.')
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
}

fn is_owner(text: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && (p.bytes().all(|b| b.is_ascii_digit())
                || (p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b)
                    })))
    };
    match text.split_once(':') {
        Some((user, group)) => part(user) && part(group),
        None => part(text),
    }
}

/// Whether `text` names a KMS key as EBS takes it: `alias/NAME`, a key id, a multi-region key id
/// or a key or alias ARN.
pub(super) fn is_kms_key(text: &str) -> bool {
    let alias = |name: &str| {
        !name.is_empty()
            && name.len() <= 250
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    };
    let key_id = |id: &str| {
        let uuid = id.len() == 36
            && id.char_indices().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() }
            });
        let mrk = id
            .strip_prefix("mrk-")
            .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        uuid || mrk
    };
    if let Some(name) = text.strip_prefix("alias/") {
        return alias(name);
    }
    if let Some(rest) = text.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        return parts.len() == 5
            && parts[0].starts_with("aws")
            && parts[1] == "kms"
            && looks_like_region(parts[2])
            && parts[3].len() == 12
            && parts[3].bytes().all(|b| b.is_ascii_digit())
            && (parts[4].strip_prefix("key/").is_some_and(key_id)
                || parts[4].strip_prefix("alias/").is_some_and(alias));
    }
    key_id(text)
}

fn is_policy_arn(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("arn:") else { return false };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    parts.len() == 5
        && parts[0].starts_with("aws")
        && parts[1] == "iam"
        && parts[2].is_empty()
        && (parts[3] == "aws"
            || (parts[3].len() == 12 && parts[3].bytes().all(|b| b.is_ascii_digit())))
        && parts[4].strip_prefix("policy/").is_some_and(|path| {
            !path.is_empty()
                && !path.ends_with('/')
                && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_/-".contains(&b))
        })
}

/// A YAML value as JSON for an IAM policy: every scalar a string (IAM reads them so), sequences
/// arrays, mappings objects.
fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        NodeValue::Scalar(scalar) => serde_json::Value::String(scalar.text.clone()),
        NodeValue::Sequence(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        NodeValue::Mapping(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|entry| {
                    let key = entry.key.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
                    (key, to_json(&entry.value))
                })
                .collect(),
        ),
    }
}

/// What the account keys of one mapping (the top or an entry) decoded to.
pub(crate) struct DecodedAccount {
    pub(crate) keys: AccountKeys,
    pub(crate) iam: IamKeys,
}

impl Decoder<'_> {
    /// The account keys of `fields` (the root when `region` is `None`, else an instance entry
    /// in `region`). `None` when any of them was refused (already reported).
    pub(super) fn decode_account(
        &mut self,
        fields: &Fields<'_>,
        region: Option<&str>,
    ) -> Option<DecodedAccount> {
        let image = self.optional_or_null(fields, "image", Self::read_image);
        let image_owners = self.optional_or_null(fields, "image_owners", Self::read_image_owners);
        let network = self.optional(fields, "network", |decoder, node, field| {
            decoder.read_networks(node, field, region)
        });
        let tags = self.optional(fields, "tags", Self::read_tags);
        let boot = self.optional_or_null(fields, "boot", Self::read_boot);
        let root_volume = self.optional_or_null(fields, "root_volume", Self::read_root_volume);
        let (iam_policies, iam_statements) = if fields.path.is_empty() {
            (
                self.optional(fields, "iam_policies", Self::read_iam_policies),
                self.optional(fields, "iam_statements", Self::read_iam_statements),
            )
        } else {
            (Slot::Absent, Slot::Absent)
        };
        Some(DecodedAccount {
            keys: AccountKeys {
                image: image.into_optional()?,
                image_owners: image_owners.into_optional()?,
                network: network.into_optional()?.unwrap_or_default(),
                tags: tags.into_optional()?.unwrap_or_default(),
                boot: boot.into_optional()?,
                root_volume: root_volume.into_optional()?,
            },
            iam: IamKeys {
                iam_policies: iam_policies.into_optional()?.unwrap_or_default(),
                iam_statements: iam_statements.into_optional()?.unwrap_or_default(),
            },
        })
    }

    /// `ami-…`, `TAG:VALUE`, or `{name: PATTERN}`.
    fn read_image(&mut self, node: &Node, field: &str) -> Option<ImageRef> {
        const HELP: &str =
            "write an image id (`ami-0123456789abcdef0`), `{name: golden-*}` or `TAG:VALUE`";
        if let NodeValue::Mapping(_) = node.value {
            let fields = self.open_mapping(node, field, IMAGE_KEYS, UnknownKeys::Refuse)?;
            let name = self.required(&fields, "name", |decoder, node, field| {
                let pattern =
                    decoder.read_non_empty_string(node, field, "an image name pattern")?;
                if pattern.len() > 128 || !is_image_name_pattern(&pattern) {
                    decoder.error(
                        node.location,
                        field,
                        format!("`{pattern}` is not an image name pattern"),
                        "an AMI name has at most 128 letters, digits, spaces and `( ) [ ] . / - ' @ _`; `*` and `?` match any text and any character",
                    );
                    return None;
                }
                Some(pattern)
            });
            return name.into_required().map(ImageRef::Name);
        }
        let text = self.read_non_empty_string(node, field, "an image")?;
        if text.starts_with("ami-") {
            if is_ec2_id(&text, "ami") {
                return Some(ImageRef::Id(text));
            }
            self.error(
                node.location,
                field,
                format!("`{text}` is not an image id"),
                "an image id is `ami-` and 8 or 17 lowercase hex digits, e.g. `ami-0123456789abcdef0`",
            );
            return None;
        }
        if let Some((key, value)) = self.read_tag_reference(node, field, &text, HELP) {
            return Some(ImageRef::Tag { key, value });
        }
        None
    }

    /// `KEY:VALUE` (split at the first `:`), both non-empty.
    fn read_tag_reference(
        &mut self,
        node: &Node,
        field: &str,
        text: &str,
        help: &str,
    ) -> Option<(String, String)> {
        match text.split_once(':') {
            Some((key, value))
                if !key.is_empty()
                    && !value.is_empty()
                    && key.chars().count() <= tag_limits::MAX_KEY_CHARS
                    && value.chars().count() <= tag_limits::MAX_VALUE_CHARS =>
            {
                Some((key.to_owned(), value.to_owned()))
            }
            _ => {
                self.error(
                    node.location,
                    field,
                    format!("`{text}` is neither an id nor a `TAG:VALUE` reference"),
                    help,
                );
                None
            }
        }
    }

    fn read_image_owners(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        let owners = self.read_sequence(node, field, |decoder, item, item_field| {
            let owner = decoder.read_non_empty_string(item, item_field, "an account id")?;
            let valid = (owner.len() == 12 && owner.bytes().all(|b| b.is_ascii_digit()))
                || owner == "self"
                || owner == "amazon";
            if !valid {
                decoder.error(
                    item.location,
                    item_field,
                    format!("`{owner}` is not an image owner"),
                    "write a 12-digit account id, `self` (this account) or `amazon`",
                );
                return None;
            }
            Some(owner)
        })?;
        if owners.is_empty() {
            self.error(
                node.location,
                field,
                "`image_owners` is empty".to_owned(),
                "list the accounts whose images may be used, or remove the key for this account's own",
            );
            return None;
        }
        Some(owners)
    }

    fn read_networks(
        &mut self,
        node: &Node,
        field: &str,
        entry_region: Option<&str>,
    ) -> Option<BTreeMap<String, NetworkSpec>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of regions to networks, found {}", node.describe()),
                "write `network:` then, indented, `us-east-1: {vpc: vpc-…, subnets: [subnet-…]}`",
            );
            return None;
        };
        let mut networks = BTreeMap::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(region) = entry.key.as_scalar().map(|s| s.text.clone()) else {
                self.error(
                    entry.key.location,
                    field,
                    format!("a region must be a string, found {}", entry.key.describe()),
                    "write the region, e.g. `us-east-1:`",
                );
                all_valid = false;
                continue;
            };
            let region_field = format!("{field}.{region}");
            self.locations.insert(region_field.clone(), entry.value.location);
            if networks.contains_key(&region) {
                self.error(
                    entry.key.location,
                    &region_field,
                    format!("region `{region}` is given twice"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            if !looks_like_region(&region) {
                self.error(
                    entry.key.location,
                    &region_field,
                    format!("`{region}` is not an AWS region"),
                    "key each network by its region, e.g. `us-east-1:`",
                );
                all_valid = false;
                continue;
            }
            if let Some(entry_region) = entry_region
                && entry_region != region
            {
                self.error(
                    entry.key.location,
                    &region_field,
                    format!("this entry runs in {entry_region}, not {region}"),
                    format!("key the entry's network by `{entry_region}:`, or move this network to the top of the spec"),
                );
                all_valid = false;
                continue;
            }
            match self.read_network(&entry.value, &region_field) {
                Some(network) => {
                    networks.insert(region, network);
                }
                None => all_valid = false,
            }
        }
        all_valid.then_some(networks)
    }

    fn read_network(&mut self, node: &Node, field: &str) -> Option<NetworkSpec> {
        let fields = self.open_mapping(node, field, NETWORK_KEYS, UnknownKeys::Refuse)?;
        let vpc = self.required(&fields, "vpc", |decoder, node, field| {
            decoder.read_resource_ref(node, field, "vpc", "a VPC")
        });
        let subnets = self.optional(&fields, "subnets", |decoder, node, field| {
            let subnets = decoder.read_sequence(node, field, |decoder, item, item_field| {
                decoder.read_resource_ref(item, item_field, "subnet", "a subnet")
            })?;
            decoder.check_listed_once(node, field, &subnets, "subnet")?;
            Some(subnets)
        });
        let groups = self.optional(&fields, "security_groups", |decoder, node, field| {
            let groups = decoder.read_sequence(node, field, |decoder, item, item_field| {
                let id = decoder.read_non_empty_string(item, item_field, "a security group id")?;
                if !is_ec2_id(&id, "sg") {
                    decoder.error(
                        item.location,
                        item_field,
                        format!("`{id}` is not a security group id"),
                        "a security group id is `sg-` and 8 or 17 lowercase hex digits",
                    );
                    return None;
                }
                Some(id)
            })?;
            decoder.check_listed_once(node, field, &groups, "security group")?;
            if groups.len() > 4 {
                decoder.error(
                    node.location,
                    field,
                    format!("{} security groups are listed", groups.len()),
                    "list at most 4: an instance has at most 5 groups and flotilla adds its own",
                );
                return None;
            }
            Some(groups)
        });
        Some(NetworkSpec {
            vpc: vpc.into_required()?,
            subnets: subnets.into_optional()?.unwrap_or_default(),
            security_groups: groups.into_optional()?.unwrap_or_default(),
        })
    }

    fn check_listed_once<T: PartialEq + std::fmt::Display>(
        &mut self,
        node: &Node,
        field: &str,
        items: &[T],
        what: &str,
    ) -> Option<()> {
        for (index, item) in items.iter().enumerate() {
            if items[..index].contains(item) {
                let item_field = format!("{field}[{index}]");
                let location = self.locations.get(&item_field).copied().unwrap_or(node.location);
                self.error(
                    location,
                    &item_field,
                    format!("{what} `{item}` is listed twice"),
                    "keep one of them",
                );
                return None;
            }
        }
        Some(())
    }

    /// `PREFIX-…` or `TAG:VALUE`.
    fn read_resource_ref(
        &mut self,
        node: &Node,
        field: &str,
        prefix: &str,
        what: &str,
    ) -> Option<ResourceRef> {
        let text = self.read_non_empty_string(node, field, what)?;
        if text.starts_with(&format!("{prefix}-")) {
            if is_ec2_id(&text, prefix) {
                return Some(ResourceRef::Id(text));
            }
            self.error(
                node.location,
                field,
                format!("`{text}` is not {what} id"),
                format!("{what} id is `{prefix}-` and 8 or 17 lowercase hex digits"),
            );
            return None;
        }
        let help = format!("write {what} id (`{prefix}-0123456789abcdef0`) or `TAG:VALUE`");
        self.read_tag_reference(node, field, &text, &help)
            .map(|(key, value)| ResourceRef::Tag { key, value })
    }

    fn read_tags(&mut self, node: &Node, field: &str) -> Option<BTreeMap<String, String>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of tag keys to values, found {}", node.describe()),
                "write one `Key: value` per line, indented under `tags:`",
            );
            return None;
        };
        let mut tags = BTreeMap::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(key) = entry.key.as_scalar().map(|s| s.text.clone()) else {
                self.error(
                    entry.key.location,
                    field,
                    format!("a tag key must be a string, found {}", entry.key.describe()),
                    "write `Key: value`",
                );
                all_valid = false;
                continue;
            };
            let tag_field = format!("{field}.{key}");
            self.locations.insert(tag_field.clone(), entry.value.location);
            let problem = if tags.contains_key(&key) {
                Some((format!("tag `{key}` is given twice"), "keep one of them".to_owned()))
            } else if key.is_empty() || key.chars().count() > tag_limits::MAX_KEY_CHARS {
                Some((
                    format!(
                        "tag key `{key}` is empty or longer than {} characters",
                        tag_limits::MAX_KEY_CHARS
                    ),
                    "AWS takes tag keys of 1 to 128 characters".to_owned(),
                ))
            } else if key.to_ascii_lowercase().starts_with("aws:") {
                Some((
                    format!("tag key `{key}` uses AWS's reserved prefix `aws:`"),
                    "choose a key without the `aws:` prefix".to_owned(),
                ))
            } else if key.starts_with("flotilla:") || key == "Name" {
                Some((
                    format!("tag key `{key}` is flotilla's own"),
                    "flotilla sets `Name` and the `flotilla:` tags itself; choose another key"
                        .to_owned(),
                ))
            } else if !is_tag_text(&key) {
                Some((
                    format!("tag key `{key}` has a character AWS refuses in tags"),
                    "use letters, digits, spaces and `_ . : / = + - @`".to_owned(),
                ))
            } else {
                None
            };
            if let Some((message, help)) = problem {
                self.error(entry.key.location, &tag_field, message, help);
                all_valid = false;
                continue;
            }
            let Some(value) = self.read_string(&entry.value, &tag_field) else {
                all_valid = false;
                continue;
            };
            if value.chars().count() > tag_limits::MAX_VALUE_CHARS || !is_tag_text(&value) {
                self.error(
                    entry.value.location,
                    &tag_field,
                    format!("the value of tag `{key}` is longer than 256 characters or has a character AWS refuses in tags"),
                    "use at most 256 letters, digits, spaces and `_ . : / = + - @`",
                );
                all_valid = false;
                continue;
            }
            tags.insert(key, value);
        }
        if tags.len() > tag_limits::MAX_USER_TAGS {
            self.error(
                node.location,
                field,
                format!("{} tags are given", tags.len()),
                format!(
                    "give at most {}: AWS allows {} tags on a resource and flotilla's own take {}",
                    tag_limits::MAX_USER_TAGS,
                    tag_limits::MAX_TAGS,
                    tag_limits::OWN_TAGS
                ),
            );
            return None;
        }
        all_valid.then_some(tags)
    }

    fn read_iam_policies(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        let policies = self.read_sequence(node, field, |decoder, item, item_field| {
            let arn = decoder.read_non_empty_string(item, item_field, "a policy ARN")?;
            if !is_policy_arn(&arn) {
                decoder.error(
                    item.location,
                    item_field,
                    format!("`{arn}` is not an IAM policy ARN"),
                    "write `arn:aws:iam::aws:policy/NAME` for an AWS managed policy or `arn:aws:iam::ACCOUNT:policy/NAME` for one of yours",
                );
                return None;
            }
            Some(arn)
        })?;
        self.check_listed_once(node, field, &policies, "policy")?;
        if policies.len() > MAX_MANAGED_POLICIES {
            self.error(
                node.location,
                field,
                format!("{} policies are listed", policies.len()),
                format!("a role takes at most {MAX_MANAGED_POLICIES} managed policies; merge some into `iam_statements`"),
            );
            return None;
        }
        if policies.len() > DEFAULT_MANAGED_POLICIES {
            self.warning(
                node.location,
                field,
                format!("{} policies are listed; AWS's default quota is {DEFAULT_MANAGED_POLICIES} per role", policies.len()),
                "raise the quota \"Managed policies per role\" in Service Quotas, or merge policies",
            );
        }
        Some(policies)
    }

    fn read_iam_statements(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<Vec<serde_json::Map<String, serde_json::Value>>> {
        let statements = self.read_sequence(node, field, Self::read_iam_statement)?;
        let size: usize = statements
            .iter()
            .map(|statement| serde_json::to_string(statement).map_or(0, |text| text.len() + 1))
            .sum();
        // flotilla's own statements and the policy's envelope take about 2,000 characters of the
        // role's inline policy budget.
        let budget = MAX_INLINE_POLICY_CHARS - 2_048;
        if size > budget {
            self.error(
                node.location,
                field,
                format!("the statements take {size} characters as JSON; a role's inline policies may take {MAX_INLINE_POLICY_CHARS} with flotilla's own"),
                format!("keep them under {budget} characters, or put them in a managed policy and list it in `iam_policies`"),
            );
            return None;
        }
        Some(statements)
    }

    fn read_iam_statement(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a policy statement mapping, found {}", node.describe()),
                "write `- Effect: Allow`, `Action: [s3:GetObject]`, `Resource: [arn:aws:s3:::bucket/*]`",
            );
            return None;
        };
        let mut all_valid = true;
        let mut statement = serde_json::Map::new();
        for entry in entries {
            let key = entry.key.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            let key_field = format!("{field}.{key}");
            self.locations.insert(key_field.clone(), entry.value.location);
            if !STATEMENT_KEYS.contains(&key.as_str()) {
                let help = match crate::suggest::closest_match(&key, STATEMENT_KEYS.iter().copied())
                {
                    Some(known) => format!("did you mean `{known}`?"),
                    None => format!(
                        "a statement of a role's policy holds {}",
                        STATEMENT_KEYS.join(", ")
                    ),
                };
                self.error(
                    entry.key.location,
                    &key_field,
                    format!("unknown statement key `{key}`"),
                    help,
                );
                all_valid = false;
                continue;
            }
            if statement.contains_key(&key) {
                self.error(
                    entry.key.location,
                    &key_field,
                    format!("`{key}` is given twice"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            let value = to_json(&entry.value);
            match key.as_str() {
                "Effect" if value != "Allow" && value != "Deny" => {
                    self.error(
                        entry.value.location,
                        &key_field,
                        format!("`Effect` is {}", entry.value.describe()),
                        "write `Allow` or `Deny`",
                    );
                    all_valid = false;
                }
                "Action" | "NotAction" => {
                    let actions: Vec<&serde_json::Value> = match &value {
                        serde_json::Value::Array(items) => items.iter().collect(),
                        other => vec![other],
                    };
                    let bad = actions.iter().find(|action| {
                        !action.as_str().is_some_and(|a| {
                            a == "*"
                                || a.split_once(':').is_some_and(|(service, name)| {
                                    !service.is_empty()
                                        && service
                                            .bytes()
                                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                                        && !name.is_empty()
                                        && name.bytes().all(|b| {
                                            b.is_ascii_alphanumeric() || b == b'*' || b == b'?'
                                        })
                                })
                        })
                    });
                    if let Some(bad) = bad {
                        self.error(entry.value.location, &key_field, format!("{bad} is not an IAM action"), "write actions as `service:Action`, e.g. `s3:GetObject` or `dynamodb:*`");
                        all_valid = false;
                    }
                }
                "Resource" | "NotResource" | "Condition" | "Sid" => {}
                _ => {}
            }
            statement.insert(key, value);
        }
        if !all_valid {
            return None;
        }
        let has = |key: &str| statement.contains_key(key);
        let problem = if !has("Effect") {
            Some(("the statement has no `Effect`", "add `Effect: Allow` (or `Deny`)"))
        } else if has("Action") == has("NotAction") {
            Some((
                "the statement needs exactly one of `Action` and `NotAction`",
                "list the actions the binary needs under `Action`",
            ))
        } else if has("Resource") == has("NotResource") {
            Some((
                "the statement needs exactly one of `Resource` and `NotResource`",
                "list the ARNs the actions apply to under `Resource`",
            ))
        } else {
            None
        };
        if let Some((message, help)) = problem {
            self.error(node.location, field, message.to_owned(), help);
            return None;
        }
        Some(statement)
    }

    fn read_boot(&mut self, node: &Node, field: &str) -> Option<BootSpec> {
        let fields = self.open_mapping(node, field, BOOT_KEYS, UnknownKeys::Refuse)?;
        let files = self.optional(&fields, "files", |decoder, node, field| {
            let files = decoder.read_sequence(node, field, Self::read_boot_file)?;
            let paths: Vec<&String> = files.iter().map(|f| &f.path).collect();
            decoder.check_listed_once(node, field, &paths, "path")?;
            let total: usize = files.iter().map(|f| f.content.len()).sum();
            if total > MAX_BOOT_FILE_BYTES {
                decoder.error(
                    node.location,
                    field,
                    format!("the files hold {total} bytes"),
                    "keep boot files under 4 MiB in all: they travel in every machine's manifest; ship large data with the binary or from S3",
                );
                return None;
            }
            Some(files)
        });
        let sysctl = self.optional(&fields, "sysctl", Self::read_sysctl);
        let packages = self.optional(&fields, "packages", |decoder, node, field| {
            let packages = decoder.read_sequence(node, field, |decoder, item, item_field| {
                let package = decoder.read_non_empty_string(item, item_field, "a package name")?;
                if !is_package(&package) {
                    decoder.error(
                        item.location,
                        item_field,
                        format!("`{package}` is not a Debian package name"),
                        "write a package as apt names it, e.g. `jq` or `jq=1.7.1-3`",
                    );
                    return None;
                }
                Some(package)
            })?;
            decoder.check_listed_once(node, field, &packages, "package")?;
            Some(packages)
        });
        let commands = self.optional(&fields, "commands", |decoder, node, field| {
            decoder.read_sequence(node, field, Self::read_boot_command)
        });
        let tune_network = self.optional(&fields, "tune_network", Self::read_bool);
        Some(BootSpec {
            files: files.into_optional()?.unwrap_or_default(),
            sysctl: sysctl.into_optional()?.unwrap_or_default(),
            packages: packages.into_optional()?.unwrap_or_default(),
            commands: commands.into_optional()?.unwrap_or_default(),
            tune_network: tune_network.into_optional()?.unwrap_or(true),
        })
    }

    fn read_boot_file(&mut self, node: &Node, field: &str) -> Option<BootFile> {
        let fields = self.open_mapping(node, field, BOOT_FILE_KEYS, UnknownKeys::Refuse)?;
        let path = self.required(&fields, "path", |decoder, node, field| {
            let path = decoder.read_non_empty_string(node, field, "an absolute path")?;
            let clean = path.starts_with('/')
                && path.len() > 1
                && !path.ends_with('/')
                && !path.contains('\0')
                && path.split('/').skip(1).all(|part| !part.is_empty() && part != "." && part != "..");
            if !clean {
                decoder.error(
                    node.location,
                    field,
                    format!("`{path}` is not a clean absolute file path"),
                    "write an absolute path without `.`, `..` or `//`, e.g. `/etc/myapp/limits.conf`",
                );
                return None;
            }
            Some(path)
        });
        let mode = self.optional(&fields, "mode", |decoder, node, field| {
            let text = node.as_scalar().map(|s| s.text.clone());
            match text.as_deref().and_then(parse_mode) {
                Some(mode) => Some(mode),
                None => {
                    decoder.error(
                        node.location,
                        field,
                        format!("expected an octal file mode, found {}", node.describe()),
                        "write the mode in octal, e.g. `\"0644\"` or `\"0600\"`",
                    );
                    None
                }
            }
        });
        let owner = self.optional_or_null(&fields, "owner", |decoder, node, field| {
            let owner = decoder.read_non_empty_string(node, field, "a user")?;
            if !is_owner(&owner) {
                decoder.error(
                    node.location,
                    field,
                    format!("`{owner}` is not `USER` or `USER:GROUP`"),
                    "write a user name or id, optionally with `:GROUP`, e.g. `root:adm`",
                );
                return None;
            }
            Some(owner)
        });
        let content = self.required(&fields, "content", |decoder, node, field| {
            let content = decoder.read_string(node, field)?;
            decoder
                .check_no_nul(node.location, field, &content, "a file's content")
                .then_some(content)
        });
        Some(BootFile {
            path: path.into_required()?,
            mode: mode.into_optional()?.unwrap_or_else(default_file_mode),
            owner: owner.into_optional()?,
            content: content.into_required()?,
        })
    }

    fn read_sysctl(&mut self, node: &Node, field: &str) -> Option<BTreeMap<String, String>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!(
                    "expected a mapping of kernel settings to values, found {}",
                    node.describe()
                ),
                "write one `net.core.somaxconn: 4096` per line, indented under `sysctl:`",
            );
            return None;
        };
        let mut settings = BTreeMap::new();
        let mut all_valid = true;
        for entry in entries {
            let key = entry.key.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            let key_field = format!("{field}.{key}");
            self.locations.insert(key_field.clone(), entry.value.location);
            if !is_sysctl_key(&key) || settings.contains_key(&key) {
                self.error(
                    entry.key.location,
                    &key_field,
                    format!("`{key}` is not a kernel setting name, or is given twice"),
                    "write settings as `sysctl` names them, e.g. `net.core.somaxconn`, each once",
                );
                all_valid = false;
                continue;
            }
            let Some(value) = entry.value.as_scalar().map(|s| s.text.clone()) else {
                self.error(
                    entry.value.location,
                    &key_field,
                    format!("expected a value, found {}", entry.value.describe()),
                    "write the value as `sysctl` takes it, e.g. `4096` or `\"4096 87380 6291456\"`",
                );
                all_valid = false;
                continue;
            };
            if value.is_empty() || value.contains(['\n', '\r', '\0']) {
                self.error(
                    entry.value.location,
                    &key_field,
                    format!("the value of `{key}` is empty or spans lines"),
                    "write the value on one line",
                );
                all_valid = false;
                continue;
            }
            settings.insert(key, value);
        }
        all_valid.then_some(settings)
    }

    fn read_boot_command(&mut self, node: &Node, field: &str) -> Option<BootCommand> {
        let fields = self.open_mapping(node, field, BOOT_COMMAND_KEYS, UnknownKeys::Refuse)?;
        let argv = self.required(&fields, "argv", |decoder, node, field| {
            let argv = decoder.read_sequence(node, field, |decoder, item, item_field| {
                let arg = decoder.read_string(item, item_field)?;
                decoder.check_no_nul(item.location, item_field, &arg, "an argument").then_some(arg)
            })?;
            if argv.first().is_none_or(|program| program.is_empty()) {
                decoder.error(
                    node.location,
                    field,
                    "`argv` has no program".to_owned(),
                    "write the program first, e.g. `argv: [sh, -c, \"echo ready\"]`",
                );
                return None;
            }
            Some(argv)
        });
        let timeout = self.optional(&fields, "timeout", |decoder, node, field| {
            decoder.read_duration(node, field, MAX_COMMAND_TIMEOUT)
        });
        let critical = self.optional(&fields, "critical", Self::read_bool);
        Some(BootCommand {
            argv: argv.into_required()?,
            timeout: timeout.into_optional()?.unwrap_or_else(default_command_timeout),
            critical: critical.into_optional()?.unwrap_or(true),
        })
    }

    fn read_root_volume(&mut self, node: &Node, field: &str) -> Option<RootVolumeSpec> {
        let fields = self.open_mapping(node, field, ROOT_VOLUME_KEYS, UnknownKeys::Refuse)?;
        let encrypted = self.optional(&fields, "encrypted", Self::read_bool);
        let kms_key = self.optional_or_null(&fields, "kms_key", |decoder, node, field| {
            let key = decoder.read_non_empty_string(node, field, "a KMS key")?;
            if !is_kms_key(&key) {
                decoder.error(
                    node.location,
                    field,
                    format!("`{key}` is not a KMS key reference"),
                    "write `alias/NAME`, a key id (`1234abcd-12ab-34cd-56ef-1234567890ab`) or a key ARN",
                );
                return None;
            }
            Some(key)
        });
        if let (Slot::Present(false, location), Slot::Present(_, _)) = (&encrypted, &kms_key) {
            self.error(
                *location,
                &fields.child("encrypted"),
                "`kms_key` is given but `encrypted` is false".to_owned(),
                "remove `kms_key`, or set `encrypted: true`",
            );
            return None;
        }
        Some(RootVolumeSpec {
            encrypted: encrypted.into_optional()?.unwrap_or(true),
            kms_key: kms_key.into_optional()?,
        })
    }

    /// An instance entry's key that only the top may hold.
    pub(super) fn refuse_top_level_only(&mut self, node: &Node, field: &str) {
        let NodeValue::Mapping(entries) = &node.value else { return };
        for entry in entries {
            let Some(key) = entry.key.as_scalar() else { continue };
            if key.style == ScalarStyle::Plain && TOP_LEVEL_ONLY.contains(&key.text.as_str()) {
                self.error(
                    entry.key.location,
                    &format!("{field}.{}", key.text),
                    format!("`{}` may only be given at the top of the spec", key.text),
                    "a deployment has one role, shared by every machine: move it to the top level",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognised() {
        assert!(is_ec2_id("ami-0123456789abcdef0", "ami"));
        assert!(is_ec2_id("vpc-12345678", "vpc"));
        assert!(!is_ec2_id("ami-0123", "ami"));
        assert!(!is_ec2_id("ami-0123456789ABCDEF0", "ami"));
        assert!(looks_like_region("us-east-1") && looks_like_region("us-gov-west-1"));
        assert!(!looks_like_region("useast1") && !looks_like_region("us-east"));
        assert!(is_kms_key("alias/ebs-prod") && is_kms_key("1234abcd-12ab-34cd-56ef-1234567890ab"));
        assert!(is_kms_key(
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        ));
        assert!(is_kms_key("mrk-1234abcd12ab34cd56ef1234567890ab"));
        assert!(!is_kms_key("ebs-prod") && !is_kms_key("alias/"));
        assert!(is_policy_arn("arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"));
        assert!(is_policy_arn("arn:aws:iam::123456789012:policy/team/reader"));
        assert!(
            !is_policy_arn("arn:aws:iam::aws:role/x") && !is_policy_arn("AmazonS3ReadOnlyAccess")
        );
        assert!(
            is_package("jq")
                && is_package("libssl3t64=3.0.13-0ubuntu3")
                && !is_package("Jq")
                && !is_package("j")
        );
        assert!(is_sysctl_key("net.ipv4.tcp_congestion_control") && !is_sysctl_key("swappiness"));
        assert!(
            is_owner("root")
                && is_owner("root:adm")
                && is_owner("1000:1000")
                && !is_owner("Root")
                && !is_owner("a:")
        );
        assert!(is_tag_text("Cost Center/4711@team") && !is_tag_text("a;b"));
    }
}
