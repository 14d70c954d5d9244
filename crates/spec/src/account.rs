//! The keys that fit a fleet into the account it runs in: the machine image (`image`,
//! `image_owners`), an existing network (`network`), extra tags (`tags`), what the binary may do
//! (`iam_policies`, `iam_statements`), additions to every machine's start (`boot`) and the root
//! volume's encryption (`root_volume`).
//!
//! Each may be written at the top of the spec, as the default of every machine (the monitoring
//! machine included), and in an instance entry, as that entry's override, except the IAM keys:
//! a deployment has one role, so they are top-level only. [`FleetSpec::settings_of`] gives the
//! settings one entry ends up with and the field path each came from, so that a reference the
//! account does not satisfy is reported at the line that wrote it. How an entry's value combines
//! with the top's: `tags` and `boot.sysctl` merge key by key (the entry's value wins),
//! `boot.files` merge by path (the entry's file wins), `boot.packages` and `boot.commands` add
//! the entry's after the top's, `network` merges region by region (the entry's region wins), and
//! `image`, `image_owners` and `root_volume` are replaced whole.
//!
//! Whether the references exist (the image, the VPC and subnets, the groups, the policies, the
//! key) needs the account; the AWS provider checks them before any mutating call and reports
//! them at the field paths recorded here.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration_serde::DurationText;
use crate::fleet::{FleetSpec, InstanceSpec};

/// A machine image: by id, by name (the newest match), or by tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageRef {
    /// `ami-0123456789abcdef0`: this image, in the entry's region.
    Id(String),
    /// `{name: golden-*}`: the newest available image whose name matches (`*` and `?`
    /// wildcards, as EC2's `name` filter), among the images of the account or `image_owners`.
    Name(String),
    /// `TAG:VALUE`: the newest available image carrying the tag, among the images of the
    /// account or `image_owners`.
    Tag { key: String, value: String },
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Id(id) => f.write_str(id),
            ImageRef::Name(name) => write!(f, "name {name}"),
            ImageRef::Tag { key, value } => write!(f, "tag {key}:{value}"),
        }
    }
}

/// A VPC or subnet: by id, or by a tag it carries (`TAG:VALUE`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceRef {
    Id(String),
    Tag { key: String, value: String },
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceRef::Id(id) => f.write_str(id),
            ResourceRef::Tag { key, value } => write!(f, "{key}:{value}"),
        }
    }
}

// The schemas describe the YAML as written (`ami-…`, `TAG:VALUE`, `{name: …}`), not serde's
// form of the Rust values.
impl JsonSchema for ImageRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ImageRef".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                {
                    "type": "string",
                    "description": "An image id, in the entry's region.",
                    "pattern": "^ami-([0-9a-f]{8}|[0-9a-f]{17})$"
                },
                {
                    "type": "string",
                    "description": "`TAG:VALUE`: the newest available image carrying the tag.",
                    "pattern": "^[^:]+:.+$"
                },
                {
                    "type": "object",
                    "description": "The newest available image whose name matches.",
                    "properties": {
                        "name": {
                            "type": "string",
                            "description": "A name pattern: `*` matches any text, `?` one character.",
                            "x-origin": "flotilla"
                        }
                    },
                    "required": ["name"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

fn resource_schema(prefix: &str, what: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "description": format!("{what}: `{prefix}-…` or `TAG:VALUE`."),
        "pattern": format!("^({prefix}-([0-9a-f]{{8}}|[0-9a-f]{{17}})|[^:]+:.+)$")
    })
}

fn vpc_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    resource_schema("vpc", "A VPC")
}

fn subnets_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": resource_schema("subnet", "A subnet")
    })
}

/// An existing network in one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The VPC: `vpc-…` or `TAG:VALUE` (exactly one VPC must carry the tag).
    #[schemars(schema_with = "vpc_schema", extend("x-origin" = "flotilla"))]
    pub vpc: ResourceRef,
    /// Subnets of the VPC to launch into, each `subnet-…` or `TAG:VALUE` (every subnet of the VPC with the tag); machines spread across their zones. Default: every subnet of the VPC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "subnets_schema", extend("x-origin" = "flotilla"))]
    pub subnets: Vec<ResourceRef>,
    /// Security groups of the VPC (`sg-…`) added to flotilla's own group on every machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub security_groups: Vec<String>,
}

/// A file written before the binary starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    /// Absolute path. On the local provider it is placed under the machine's directory (`root/` + path).
    #[schemars(extend("x-origin" = "flotilla"))]
    pub path: String,
    /// Permission bits, written as an octal string, e.g. `"0644"` (default) or `"0600"`.
    #[serde(default = "default_file_mode", with = "octal_mode")]
    #[schemars(with = "String", extend("x-origin" = "flotilla", "default" = "0644"))]
    pub mode: u32,
    /// `USER` or `USER:GROUP` to own the file (default: the agent's user, root on AWS). Not applied by the local provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub owner: Option<String>,
    /// The file's content, as written.
    #[schemars(extend("x-origin" = "flotilla"))]
    pub content: String,
}

/// The default mode of a boot file.
pub fn default_file_mode() -> u32 {
    0o644
}

mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_mode(&text).ok_or_else(|| serde::de::Error::custom("an octal mode, e.g. 0644"))
    }
}

/// Reads an octal file mode (`0644`, `644`, `0o644`); at most `07777`.
pub fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|mode| *mode <= 0o7777)
}

/// A command run before the binary starts, once per boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootCommand {
    /// The program and its arguments, run without a shell (write `[sh, -c, "…"]` for one).
    #[schemars(extend("x-origin" = "flotilla"))]
    pub argv: Vec<String>,
    /// How long it may run before it is killed and counts as failed (default 5m, at most 1h).
    #[serde(default = "default_command_timeout", with = "crate::duration_serde")]
    #[schemars(with = "DurationText", extend("x-origin" = "flotilla", "default" = "5m"))]
    pub timeout: Duration,
    /// Whether the binary must not start when the command fails (default `true`).
    #[serde(default = "default_true")]
    #[schemars(extend("x-origin" = "flotilla", "default" = true))]
    pub critical: bool,
}

/// The default timeout of a boot command.
pub fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The longest timeout of a boot command.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

fn default_true() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// The kernel settings the commonware deployer applies to every machine for traffic across
/// regions (BBR congestion control over the fair-queueing qdisc). flotilla applies them on AWS
/// unless `boot.tune_network` is `false`; a `boot.sysctl` value for the same key wins.
pub const NETWORK_TUNING: [(&str, &str); 2] =
    [("net.core.default_qdisc", "fq"), ("net.ipv4.tcp_congestion_control", "bbr")];

/// Additions to every machine's start, run by the agent before the binary starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// Files written before the binary starts (rewritten only when their content, mode or owner differ).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub files: Vec<BootFile>,
    /// Kernel settings (`sysctl` keys to values), applied on AWS and reported as not applicable by the local provider.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub sysctl: BTreeMap<String, String>,
    /// Debian packages installed with apt (waiting up to 5 minutes for apt's locks), e.g. `jq` or `jq=1.7.1-3`. Not installed by the local provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub packages: Vec<String>,
    /// Commands run once per boot, in order, after files, sysctl and packages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub commands: Vec<BootCommand>,
    /// Whether AWS machines get the deployer's network tuning (`net.ipv4.tcp_congestion_control: bbr`, `net.core.default_qdisc: fq`); default `true`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    #[schemars(extend("x-origin" = "flotilla", "default" = true))]
    pub tune_network: bool,
}

impl Default for BootSpec {
    fn default() -> Self {
        BootSpec {
            files: Vec::new(),
            sysctl: BTreeMap::new(),
            packages: Vec::new(),
            commands: Vec::new(),
            tune_network: true,
        }
    }
}

impl BootSpec {
    /// Whether this is the default (nothing to do, network tuning on).
    pub fn is_default(&self) -> bool {
        self == &BootSpec::default()
    }

    /// Whether there is nothing to do at boot.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.sysctl.is_empty()
            && self.packages.is_empty()
            && self.commands.is_empty()
    }

    /// The kernel settings a machine gets: the network tuning (when on), then `sysctl` over it.
    pub fn effective_sysctl(&self, tune_network: bool) -> BTreeMap<String, String> {
        let mut settings = BTreeMap::new();
        if tune_network && self.tune_network {
            for (key, value) in NETWORK_TUNING {
                settings.insert(key.to_owned(), value.to_owned());
            }
        }
        settings.extend(self.sysctl.iter().map(|(k, v)| (k.clone(), v.clone())));
        settings
    }

    /// `self` (the top's) with `entry`'s additions (see the module documentation).
    pub fn merged_with(&self, entry: &BootSpec) -> BootSpec {
        let mut files = self.files.clone();
        for file in &entry.files {
            match files.iter_mut().find(|f| f.path == file.path) {
                Some(existing) => *existing = file.clone(),
                None => files.push(file.clone()),
            }
        }
        let mut sysctl = self.sysctl.clone();
        sysctl.extend(entry.sysctl.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut packages = self.packages.clone();
        for package in &entry.packages {
            if !packages.contains(package) {
                packages.push(package.clone());
            }
        }
        let mut commands = self.commands.clone();
        commands.extend(entry.commands.iter().cloned());
        BootSpec {
            files,
            sysctl,
            packages,
            commands,
            tune_network: entry.tune_network && self.tune_network,
        }
    }
}

/// The root volume's encryption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RootVolumeSpec {
    /// Whether the root volume is encrypted (default `true` once `root_volume` is given).
    #[serde(default = "default_true")]
    #[schemars(extend("x-origin" = "flotilla", "default" = true))]
    pub encrypted: bool,
    /// The KMS key: `alias/NAME`, a key id or a key ARN. Default: the account's default EBS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub kms_key: Option<String>,
}

/// AWS's limits on tags, checked at validate.
pub mod tag_limits {
    /// Longest tag key, in characters.
    pub const MAX_KEY_CHARS: usize = 128;
    /// Longest tag value, in characters.
    pub const MAX_VALUE_CHARS: usize = 256;
    /// Most tags on one resource.
    pub const MAX_TAGS: usize = 50;
    /// Tags flotilla itself may put on one resource (`Name` and `flotilla:*`).
    pub const OWN_TAGS: usize = 8;
    /// Most tags a spec may add: what is left of AWS's 50 after flotilla's own.
    pub const MAX_USER_TAGS: usize = MAX_TAGS - OWN_TAGS;
}

/// The settings of one machine's entry, each with the field path it was written at (for
/// reporting a reference the account does not satisfy at its line).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MachineSettings {
    pub image: Option<Located<ImageRef>>,
    /// Owners whose images `image` by name or tag may pick (account ids, `self`, `amazon`);
    /// empty means the account's own (`self`).
    pub image_owners: Located<Vec<String>>,
    /// The existing network of the entry's region, if one is given.
    pub network: Option<Located<NetworkSpec>>,
    /// Extra tags, merged (the entry's value wins); each key's field path.
    pub tags: BTreeMap<String, Located<String>>,
    pub boot: BootSpec,
    pub root_volume: Option<Located<RootVolumeSpec>>,
}

impl MachineSettings {
    /// The tags as plain pairs.
    pub fn tag_pairs(&self) -> BTreeMap<String, String> {
        self.tags.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect()
    }
}

/// A value and the field path that gave it (`image`, `instances[2].image`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Located<T> {
    pub value: T,
    pub field: String,
}

impl<T> Located<T> {
    pub fn new(value: T, field: impl Into<String>) -> Self {
        Located { value, field: field.into() }
    }
}

impl FleetSpec {
    /// The settings of the monitoring machine, which runs in `region`: the top's.
    pub fn monitoring_settings(&self, region: &str) -> MachineSettings {
        self.settings_for(None, region)
    }

    /// The settings of instance entry `index` (see the module documentation for how the
    /// entry's keys combine with the top's).
    pub fn settings_of(&self, index: usize) -> MachineSettings {
        let entry = &self.instances[index];
        self.settings_for(Some((index, entry)), &entry.region)
    }

    fn settings_for(&self, entry: Option<(usize, &InstanceSpec)>, region: &str) -> MachineSettings {
        let top = &self.account;
        let prefix = entry.map(|(index, _)| format!("instances[{index}]."));
        let at = |key: &str| match &prefix {
            Some(prefix) => format!("{prefix}{key}"),
            None => key.to_owned(),
        };
        let own = entry.map(|(_, e)| &e.account);
        let image = match own.and_then(|a| a.image.clone()) {
            Some(image) => Some(Located::new(image, at("image"))),
            None => top.image.clone().map(|image| Located::new(image, "image")),
        };
        let image_owners = match own.and_then(|a| a.image_owners.clone()) {
            Some(owners) => Located::new(owners, at("image_owners")),
            None => Located::new(top.image_owners.clone().unwrap_or_default(), "image_owners"),
        };
        let network = match own.and_then(|a| a.network.get(region)) {
            Some(network) => Some(Located::new(network.clone(), at(&format!("network.{region}")))),
            None => top
                .network
                .get(region)
                .map(|n| Located::new(n.clone(), format!("network.{region}"))),
        };
        let mut tags: BTreeMap<String, Located<String>> = top
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), Located::new(v.clone(), format!("tags.{k}"))))
            .collect();
        if let Some(own) = own {
            for (k, v) in &own.tags {
                tags.insert(k.clone(), Located::new(v.clone(), at(&format!("tags.{k}"))));
            }
        }
        let boot = match own.and_then(|a| a.boot.as_ref()) {
            Some(boot) => top.boot.clone().unwrap_or_default().merged_with(boot),
            None => top.boot.clone().unwrap_or_default(),
        };
        let root_volume = match own.and_then(|a| a.root_volume.clone()) {
            Some(volume) => Some(Located::new(volume, at("root_volume"))),
            None => top.root_volume.clone().map(|v| Located::new(v, "root_volume")),
        };
        MachineSettings { image, image_owners, network, tags, boot, root_volume }
    }
}

/// The account keys a spec's top and each instance entry may hold (all optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountKeys {
    /// The machine image: `ami-…`, `{name: PATTERN}` (the newest match) or `TAG:VALUE`; by name or tag only among the images of the account or `image_owners`. Default: Ubuntu 24.04 LTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub image: Option<ImageRef>,
    /// Accounts whose images `image` by name or tag may pick: 12-digit account ids, `self` or `amazon`. Default: `[self]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub image_owners: Option<Vec<String>>,
    /// Existing networks by region: machines of that region launch into the given VPC and subnets instead of a VPC flotilla makes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub network: BTreeMap<String, NetworkSpec>,
    /// Extra tags on every resource flotilla creates, beside its own (keys at most 128 characters, values at most 256, at most 42 tags, no `aws:` or `flotilla:` prefix, not `Name`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub tags: BTreeMap<String, String>,
    /// Additions to every machine's start, run by the agent before the binary starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub boot: Option<BootSpec>,
    /// The root volume's encryption, with the account's default key or the given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub root_volume: Option<RootVolumeSpec>,
}

impl AccountKeys {
    /// Whether none of the keys is given.
    pub fn is_empty(&self) -> bool {
        self == &AccountKeys::default()
    }
}

/// What the deployment's role may do beyond flotilla's own least-privilege statements
/// (top-level only: a deployment has one role).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IamKeys {
    /// Managed policies attached to the deployment's role, by ARN (`arn:aws:iam::aws:policy/…` or one of the account's); detached at destroy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub iam_policies: Vec<String>,
    /// Inline IAM policy statements for what the binary needs, each with `Effect`, `Action` (or `NotAction`) and `Resource` (or `NotResource`), written as YAML mappings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-origin" = "flotilla"))]
    pub iam_statements: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The largest inline policy of a role AWS accepts, in characters (without whitespace).
pub const MAX_INLINE_POLICY_CHARS: usize = 10_240;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("0888"), None);
        assert_eq!(parse_mode("17777"), None);
        assert_eq!(parse_mode(""), None);
        assert_eq!(parse_mode("rw-r--r--"), None);
    }

    #[test]
    fn boot_of_an_entry_adds_to_the_top() {
        let file = |path: &str, content: &str| BootFile {
            path: path.into(),
            mode: 0o644,
            owner: None,
            content: content.into(),
        };
        let command = |arg: &str| BootCommand {
            argv: vec!["echo".into(), arg.into()],
            timeout: default_command_timeout(),
            critical: true,
        };
        let top = BootSpec {
            files: vec![file("/etc/a", "top"), file("/etc/b", "top")],
            sysctl: [("vm.swappiness".to_owned(), "10".to_owned())].into(),
            packages: vec!["jq".into()],
            commands: vec![command("top")],
            tune_network: true,
        };
        let entry = BootSpec {
            files: vec![file("/etc/b", "entry"), file("/etc/c", "entry")],
            sysctl: [("vm.swappiness".to_owned(), "1".to_owned())].into(),
            packages: vec!["jq".into(), "htop".into()],
            commands: vec![command("entry")],
            tune_network: false,
        };
        let merged = top.merged_with(&entry);
        let contents: Vec<(&str, &str)> =
            merged.files.iter().map(|f| (f.path.as_str(), f.content.as_str())).collect();
        assert_eq!(contents, [("/etc/a", "top"), ("/etc/b", "entry"), ("/etc/c", "entry")]);
        assert_eq!(merged.sysctl["vm.swappiness"], "1");
        assert_eq!(merged.packages, ["jq", "htop"]);
        assert_eq!(merged.commands, [command("top"), command("entry")]);
        assert!(!merged.tune_network);
        assert!(!merged.effective_sysctl(true).contains_key("net.ipv4.tcp_congestion_control"));
    }

    #[test]
    fn network_tuning_is_applied_below_the_users_values() {
        let boot = BootSpec {
            sysctl: [("net.ipv4.tcp_congestion_control".to_owned(), "cubic".to_owned())].into(),
            tune_network: true,
            ..BootSpec::default()
        };
        let aws = boot.effective_sysctl(true);
        assert_eq!(aws["net.ipv4.tcp_congestion_control"], "cubic");
        assert_eq!(aws["net.core.default_qdisc"], "fq");
        let local = boot.effective_sysctl(false);
        assert_eq!(local.len(), 1);
    }
}
