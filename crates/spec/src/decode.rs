//! The fleet spec decoder: from the located YAML tree to [`FleetSpec`], reporting every error of
//! the file at once.
//!
//! Decoding is written by hand, not derived with serde, so that one bad value does not hide the
//! next: each key is read on its own, each problem becomes a [`Diagnostic`] with the key's line,
//! column and field path, and the rules that span several keys (storage, names, `update`) run
//! on whatever decoded. Values are read the way the commonware deployer's parser (serde_yaml
//! 0.9) reads the Rust type of the field, see [`crate::yaml`].
//!
//! Unknown keys: in the mappings the deployer defines (the root, `monitoring`, `instances[]`,
//! `ports[]`) an unknown key is a warning, because the deployer ignores it and a config it
//! accepts must stay accepted. Inside flotilla's own mappings (`update`, `restart`, `health`)
//! there is no config to stay compatible with, so an unknown key is an error, as a typo there
//! would otherwise silently fall back to a default.
//!
//! The keys each mapping knows are listed in the `*_KEYS` tables below; a test checks that they
//! equal the JSON Schema's properties, so the decoder and the schema cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Location, Severity};
use crate::fleet::{
    FleetSpec, HealthCheck, InstanceSpec, MAX_COUNT, MAX_HEALTH_DEADLINE, MAX_RESTART_BACKOFF,
    MonitoringSpec, Percent, PortSpec, ProviderKind, RestartPolicy, RestartSpec, STORAGE_CLASSES,
    UpdateSpec,
};
use crate::names::MAX_TAG_BYTES;
use crate::suggest::closest_match;
use crate::validate::is_valid_name;
use crate::yaml::{Entry, Node, NodeValue, ScalarStyle};

#[path = "decode_account.rs"]
mod account;
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use account::{
    BOOT_COMMAND_KEYS, BOOT_FILE_KEYS, BOOT_KEYS, IMAGE_KEYS, NETWORK_KEYS, ROOT_VOLUME_KEYS,
};
#[path = "decode_capacity.rs"]
mod capacity;
#[path = "decode_fleetd.rs"]
mod fleetd;
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use capacity::{BOUNDS_KEYS, REQUIREMENTS_KEYS};

/// Who defines a key: the commonware deployer's config, or flotilla.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Deployer,
    Flotilla,
}

impl Origin {
    #[cfg_attr(not(test), expect(dead_code, reason = "the schema drift test compares origins"))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Deployer => "deployer",
            Origin::Flotilla => "flotilla",
        }
    }
}

/// A key the decoder knows in one mapping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeySpec {
    pub(crate) name: &'static str,
    pub(crate) required: bool,
    #[cfg_attr(not(test), expect(dead_code, reason = "the schema drift test compares origins"))]
    pub(crate) origin: Origin,
    /// How to add the key when it is required and missing.
    pub(crate) missing_help: &'static str,
}

const fn deployer(name: &'static str, missing_help: &'static str) -> KeySpec {
    KeySpec { name, required: true, origin: Origin::Deployer, missing_help }
}

const fn deployer_optional(name: &'static str) -> KeySpec {
    KeySpec { name, required: false, origin: Origin::Deployer, missing_help: "" }
}

const fn flotilla(name: &'static str) -> KeySpec {
    KeySpec { name, required: false, origin: Origin::Flotilla, missing_help: "" }
}

const fn flotilla_required(name: &'static str, missing_help: &'static str) -> KeySpec {
    KeySpec { name, required: true, origin: Origin::Flotilla, missing_help }
}

pub(crate) const FLEET_KEYS: &[KeySpec] = &[
    deployer("tag", "add `tag:` with the deployment's name, e.g. `tag: my-fleet`"),
    deployer(
        "monitoring",
        "add a `monitoring:` mapping with `instance_type`, `storage_size`, `storage_class` and `dashboard`",
    ),
    deployer("instances", "add `instances:` with the list of instances, or `instances: []`"),
    deployer("ports", "add `ports: []`: the deployer requires the key even when no port is opened"),
    flotilla("provider"),
    flotilla("update"),
    flotilla("image"),
    flotilla("image_owners"),
    flotilla("network"),
    flotilla("tags"),
    flotilla("iam_policies"),
    flotilla("iam_statements"),
    flotilla("boot"),
    flotilla("root_volume"),
];

pub(crate) const MONITORING_KEYS: &[KeySpec] = &[
    deployer("instance_type", "add `instance_type:`, e.g. `instance_type: t4g.small`"),
    deployer(
        "storage_size",
        "add `storage_size:` with the root volume's size in GiB, e.g. `storage_size: 10`",
    ),
    deployer("storage_class", "add `storage_class:`, e.g. `storage_class: gp3`"),
    deployer_optional("storage_iops"),
    deployer_optional("storage_throughput"),
    deployer("dashboard", "add `dashboard:` with the path of a Grafana dashboard JSON file"),
];

pub(crate) const INSTANCE_KEYS: &[KeySpec] = &[
    deployer("name", "add `name:`, e.g. `name: node-0`"),
    deployer("region", "add `region:`, e.g. `region: us-east-1`"),
    deployer_optional("availability_zone_group"),
    // Required as the deployer requires it, except in a spec with `provider:` whose entry has
    // `instance_types` or `requirements` (see `decode_instance`).
    deployer_optional("instance_type"),
    deployer(
        "storage_size",
        "add `storage_size:` with the root volume's size in GiB, e.g. `storage_size: 10`",
    ),
    deployer("storage_class", "add `storage_class:`, e.g. `storage_class: gp3`"),
    deployer_optional("storage_iops"),
    deployer_optional("storage_throughput"),
    deployer("binary", "add `binary:` with the path of the binary to run"),
    deployer("config", "add `config:` with the path of the binary's config file"),
    deployer("profiling", "add `profiling: false`: the deployer requires the key"),
    flotilla("count"),
    flotilla("args"),
    flotilla("env"),
    flotilla("health"),
    flotilla("restart"),
    flotilla("instance_types"),
    flotilla("requirements"),
    flotilla("market"),
    flotilla("zones"),
    flotilla("image"),
    flotilla("image_owners"),
    flotilla("network"),
    flotilla("tags"),
    flotilla("boot"),
    flotilla("root_volume"),
    flotilla("lifecycle"),
];

pub(crate) const PORT_KEYS: &[KeySpec] = &[
    deployer("protocol", "add `protocol:`, e.g. `protocol: tcp`"),
    deployer("port", "add `port:`, e.g. `port: 8080`"),
    deployer("cidr", "add `cidr:`, e.g. `cidr: 0.0.0.0/0`"),
];

pub(crate) const UPDATE_KEYS: &[KeySpec] =
    &[flotilla("batch_size"), flotilla("max_unavailable"), flotilla("health_deadline")];

pub(crate) const RESTART_KEYS: &[KeySpec] =
    &[flotilla("policy"), flotilla("initial_backoff"), flotilla("max_backoff")];

/// The kinds of health check, as the keys of the `health` mapping. Exactly one is given.
pub(crate) const HEALTH_KINDS: &[KeySpec] = &[flotilla("http"), flotilla("tcp")];

pub(crate) const HEALTH_HTTP_KEYS: &[KeySpec] = &[
    flotilla_required("port", "add `port:` with the port the binary serves HTTP on"),
    flotilla("path"),
];

pub(crate) const HEALTH_TCP_KEYS: &[KeySpec] =
    &[flotilla_required("port", "add `port:` with the port the binary listens on")];

/// What the decoder found for one key.
enum Slot<T> {
    /// The key is not there (or, for an `Option` field, is null).
    Absent,
    /// The key is there but its value was refused; the error is already reported.
    Invalid,
    Present(T, Location),
}

impl<T> Slot<T> {
    fn value(&self) -> Option<&T> {
        match self {
            Slot::Present(value, _) => Some(value),
            _ => None,
        }
    }

    fn location(&self) -> Option<Location> {
        match self {
            Slot::Present(_, location) => Some(*location),
            _ => None,
        }
    }

    /// The value of a required key: `None` when missing or refused (both already reported).
    fn into_required(self) -> Option<T> {
        match self {
            Slot::Present(value, _) => Some(value),
            _ => None,
        }
    }

    /// The value of an optional key: `Some(None)` when absent, `None` when refused.
    fn into_optional(self) -> Option<Option<T>> {
        match self {
            Slot::Absent => Some(None),
            Slot::Invalid => None,
            Slot::Present(value, _) => Some(Some(value)),
        }
    }
}

/// How unknown keys in a mapping are treated (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum UnknownKeys {
    Warn,
    Refuse,
}

/// A mapping being decoded: its known keys found, and what else it holds.
struct Fields<'n> {
    path: String,
    location: Location,
    keys: &'static [KeySpec],
    found: HashMap<&'static str, &'n Entry>,
    /// Unknown keys that look like a misspelling of a known one: (known key, unknown key, line).
    misspellings: Vec<(&'static str, String, usize)>,
    /// Whether the mapping has a merge key (`<<`), which the deployer does not apply.
    has_merge_key: bool,
}

impl<'n> Fields<'n> {
    fn child(&self, key: &str) -> String {
        join_path(&self.path, key)
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// The name of one `instances` entry, for the uniqueness check across entries.
struct InstanceName {
    index: usize,
    name: String,
    count: Option<u32>,
    location: Location,
}

/// Storage keys shared by `monitoring` and `instances[]`.
struct Storage {
    size: i32,
    class: String,
    iops: Option<i32>,
    throughput: Option<i32>,
}

/// Decodes one fleet spec file, collecting diagnostics and the location of every key.
pub(crate) struct Decoder<'f> {
    file: &'f Path,
    diagnostics: Vec<Diagnostic>,
    locations: BTreeMap<String, Location>,
    instance_names: Vec<InstanceName>,
    /// Whether the spec has a `provider` key: an entry may then leave `instance_type` out.
    has_provider_key: bool,
    /// Who ignores unknown keys in the mappings where they are warnings (the deployer, or
    /// ec2fleetd), for the warning's help.
    lenient_reader: &'static str,
    /// Where the `lifecycle` configs written in the spec are read differently from ec2fleetd.
    lifecycle_differences: Vec<crate::fleetd::Difference>,
}

impl<'f> Decoder<'f> {
    pub(crate) fn new(file: &'f Path) -> Self {
        Decoder {
            file,
            diagnostics: Vec::new(),
            locations: BTreeMap::new(),
            instance_names: Vec::new(),
            has_provider_key: false,
            lenient_reader: "the deployer",
            lifecycle_differences: Vec::new(),
        }
    }

    /// The diagnostics in file order (stable: findings at one place keep the order they were
    /// found in) and the location of every key that was present.
    pub(crate) fn finish(mut self) -> (Vec<Diagnostic>, BTreeMap<String, Location>) {
        self.diagnostics.sort_by_key(|diagnostic| diagnostic.location);
        (self.diagnostics, self.locations)
    }

    /// The deliberate differences from ec2fleetd found in `lifecycle` configs so far.
    pub(crate) fn take_lifecycle_differences(&mut self) -> Vec<crate::fleetd::Difference> {
        std::mem::take(&mut self.lifecycle_differences)
    }

    fn report(
        &mut self,
        severity: Severity,
        location: Location,
        field: &str,
        message: String,
        help: String,
    ) {
        let diagnostic = Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            location: Some(location),
            field: field.to_owned(),
            message,
            help: Some(help),
        };
        self.diagnostics.push(diagnostic);
    }

    fn error(&mut self, location: Location, field: &str, message: String, help: impl Into<String>) {
        self.report(Severity::Error, location, field, message, help.into());
    }

    fn warning(
        &mut self,
        location: Location,
        field: &str,
        message: String,
        help: impl Into<String>,
    ) {
        self.report(Severity::Warning, location, field, message, help.into());
    }

    // ---------------------------------------------------------------------------------------
    // Mappings and keys.

    /// Opens a mapping: reports a non-mapping value, keys that are not strings, repeated known
    /// keys, merge keys and unknown keys.
    fn open_mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        keys: &'static [KeySpec],
        unknown_keys: UnknownKeys,
    ) -> Option<Fields<'n>> {
        let NodeValue::Mapping(entries) = &node.value else {
            let help = if path.is_empty() {
                "a fleet spec is a mapping with the keys `tag`, `monitoring`, `instances` and \
                 `ports`"
                    .to_owned()
            } else {
                format!("write the keys of `{}` indented under it", last_segment(path))
            };
            self.error(
                node.location,
                path,
                format!("expected a mapping, found {}", node.describe()),
                help,
            );
            return None;
        };
        let mut fields = Fields {
            path: path.to_owned(),
            location: node.location,
            keys,
            found: HashMap::new(),
            misspellings: Vec::new(),
            has_merge_key: false,
        };
        let names = || keys.iter().map(|key| key.name);
        for entry in entries {
            let Some(key) = entry.key.as_scalar() else {
                self.error(
                    entry.key.location,
                    path,
                    format!("a key must be a string, found {}", entry.key.describe()),
                    "write the key as plain text followed by `:`",
                );
                continue;
            };
            let field = fields.child(&key.text);
            if let Some(spec) = keys.iter().find(|spec| spec.name == key.text) {
                if let Some(first) = fields.found.get(spec.name) {
                    let first_line = first.key.location.line;
                    self.error(
                        entry.key.location,
                        &field,
                        format!("`{}` is given twice (first on line {first_line})", spec.name),
                        "keep one of them: the deployer's parser refuses a repeated key",
                    );
                } else {
                    fields.found.insert(spec.name, entry);
                    self.locations.insert(field, entry.value.location);
                }
                continue;
            }
            let key_list = format_key_list(keys);
            if path.starts_with("instances[")
                && account::TOP_LEVEL_ONLY.contains(&key.text.as_str())
            {
                // Refused with its own error by `refuse_top_level_only`.
                continue;
            }
            if key.text == "<<" && key.style == ScalarStyle::Plain {
                fields.has_merge_key = true;
                let message = "merge key `<<` is not applied: the deployer's parser reads it as \
                               an unknown key, so the keys it would merge are missing"
                    .to_owned();
                let help = "write the keys out here, or alias a whole mapping (`key: *anchor`)";
                match unknown_keys {
                    UnknownKeys::Warn => self.warning(entry.key.location, &field, message, help),
                    UnknownKeys::Refuse => self.error(entry.key.location, &field, message, help),
                }
                continue;
            }
            let suggestion = closest_match(&key.text, names());
            if let Some(known) = suggestion {
                fields.misspellings.push((known, key.text.clone(), entry.key.location.line));
            }
            match unknown_keys {
                UnknownKeys::Warn => {
                    let help = match suggestion {
                        Some(known) => format!("did you mean `{known}`?"),
                        None => format!(
                            "{} ignores unknown keys; remove it if it is a mistake (known keys here: {key_list})",
                            self.lenient_reader
                        ),
                    };
                    self.warning(
                        entry.key.location,
                        &field,
                        format!("unknown key `{}` is ignored", key.text),
                        help,
                    );
                }
                UnknownKeys::Refuse => {
                    let help = match suggestion {
                        Some(known) => format!("did you mean `{known}`?"),
                        None => format!("the keys here are: {key_list}"),
                    };
                    self.error(
                        entry.key.location,
                        &field,
                        format!("unknown key `{}`", key.text),
                        help,
                    );
                }
            }
        }
        Some(fields)
    }

    fn key_spec(fields: &Fields<'_>, name: &str) -> &'static KeySpec {
        fields
            .keys
            .iter()
            .find(|spec| spec.name == name)
            .expect("the decoder only asks for keys listed in the mapping's key table")
    }

    /// Reads a key that must be there.
    fn required<'n, T>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        read: impl FnOnce(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> Slot<T> {
        let field = fields.child(name);
        debug_assert!(Self::key_spec(fields, name).required, "`{name}` is optional");
        match fields.found.get(name) {
            Some(entry) => match read(self, &entry.value, &field) {
                Some(value) => Slot::Present(value, entry.value.location),
                None => Slot::Invalid,
            },
            None => {
                let spec = Self::key_spec(fields, name);
                let mut help = spec.missing_help.to_owned();
                if let Some((_, misspelt, line)) =
                    fields.misspellings.iter().find(|(known, _, _)| *known == name)
                {
                    help = format!("rename `{misspelt}` (line {line}) to `{name}`");
                }
                if fields.has_merge_key {
                    help.push_str(
                        "; the merge key `<<` in this mapping is not applied, so keys from its \
                         anchor do not count",
                    );
                }
                self.error(fields.location, &field, format!("missing required key `{name}`"), help);
                Slot::Invalid
            }
        }
    }

    /// Reads an optional key whose Rust type is an `Option`: absent or null is `None`, as
    /// serde_yaml decides null (see [`crate::yaml::Scalar::is_null`]).
    fn optional_or_null<'n, T>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        read: impl FnOnce(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> Slot<T> {
        match fields.found.get(name) {
            Some(entry) if entry.value.as_scalar().is_some_and(|scalar| scalar.is_null()) => {
                Slot::Absent
            }
            Some(entry) => {
                let field = fields.child(name);
                match read(self, &entry.value, &field) {
                    Some(value) => Slot::Present(value, entry.value.location),
                    None => Slot::Invalid,
                }
            }
            None => Slot::Absent,
        }
    }

    /// Reads an optional key with a default: absent is the default, null is refused by `read`.
    fn optional<'n, T>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        read: impl FnOnce(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> Slot<T> {
        match fields.found.get(name) {
            Some(entry) => {
                let field = fields.child(name);
                match read(self, &entry.value, &field) {
                    Some(value) => Slot::Present(value, entry.value.location),
                    None => Slot::Invalid,
                }
            }
            None => Slot::Absent,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Scalars, read as serde_yaml 0.9 reads the field's Rust type.

    /// A `String` field: any scalar, with its text as written (`12345`, `true` and `null` are
    /// strings here, as in the deployer).
    fn read_string(&mut self, node: &Node, field: &str) -> Option<String> {
        match node.as_scalar() {
            Some(scalar) => Some(scalar.text.clone()),
            None => {
                self.error(
                    node.location,
                    field,
                    format!("expected a string, found {}", node.describe()),
                    "write a single value on the same line as the key",
                );
                None
            }
        }
    }

    /// A string field that must not be empty, e.g. a path.
    fn read_non_empty_string(&mut self, node: &Node, field: &str, what: &str) -> Option<String> {
        let text = self.read_string(node, field)?;
        if text.is_empty() {
            self.error(
                node.location,
                field,
                format!("`{}` is empty", last_segment(field)),
                format!("give {what}"),
            );
            return None;
        }
        Some(text)
    }

    /// An integer field of the given type.
    fn read_integer(&mut self, node: &Node, field: &str, kind: IntegerKind) -> Option<i64> {
        let Some(scalar) = node.as_scalar() else {
            self.error(
                node.location,
                field,
                format!("expected an integer, found {}", node.describe()),
                "write a whole number on the same line as the key",
            );
            return None;
        };
        let Some(integer) = scalar.as_integer() else {
            let help = match scalar.style {
                ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                    "remove the quotes: the deployer's parser reads only unquoted numbers"
                }
                _ if scalar.text.is_empty() || scalar.is_null() => "write a whole number",
                _ => "write a whole number: decimal without leading zeros, or with 0x, 0o or 0b",
            };
            self.error(
                node.location,
                field,
                format!("expected an integer, found {}", scalar.describe()),
                help,
            );
            return None;
        };
        let (minimum, maximum) = kind.range();
        let in_range = integer
            .value()
            .filter(|_| !(integer.negative && kind.is_unsigned()))
            .filter(|value| (minimum..=maximum).contains(value));
        match in_range {
            Some(value) => Some(i64::try_from(value).expect("every integer kind fits in an i64")),
            None => {
                let (message, help) = kind.out_of_range(&scalar.text);
                self.error(node.location, field, message, help);
                None
            }
        }
    }

    fn read_i32(&mut self, node: &Node, field: &str) -> Option<i32> {
        self.read_integer(node, field, IntegerKind::I32)
            .map(|value| i32::try_from(value).expect("read_integer checked the i32 range"))
    }

    fn read_u32(&mut self, node: &Node, field: &str) -> Option<u32> {
        self.read_integer(node, field, IntegerKind::U32)
            .map(|value| u32::try_from(value).expect("read_integer checked the u32 range"))
    }

    fn read_port(&mut self, node: &Node, field: &str) -> Option<u16> {
        self.read_integer(node, field, IntegerKind::Port)
            .map(|value| u16::try_from(value).expect("read_integer checked the port range"))
    }

    fn read_bool(&mut self, node: &Node, field: &str) -> Option<bool> {
        let value = node.as_scalar().and_then(|scalar| scalar.as_bool());
        if value.is_none() {
            let help = match node.as_scalar().map(|scalar| scalar.style) {
                Some(ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted) => {
                    "remove the quotes: the deployer's parser reads only unquoted booleans"
                }
                _ => {
                    "write `true` or `false` (the deployer's parser also takes True/TRUE and \
                     False/FALSE, but not yes/no or on/off)"
                }
            };
            self.error(
                node.location,
                field,
                format!("expected true or false, found {}", node.describe()),
                help,
            );
        }
        value
    }

    /// A duration written as `humantime` reads it (`250ms`, `30s`, `1m 30s`), more than 0 and
    /// at most `max`.
    fn read_duration(&mut self, node: &Node, field: &str, max: Duration) -> Option<Duration> {
        let Some(scalar) = node.as_scalar() else {
            self.error(
                node.location,
                field,
                format!("expected a duration, found {}", node.describe()),
                "write a number with a unit, e.g. `30s`, `250ms` or `2m`",
            );
            return None;
        };
        match humantime::parse_duration(&scalar.text) {
            Ok(duration) if duration.is_zero() => {
                self.error(
                    node.location,
                    field,
                    format!("`{}` must be longer than 0", last_segment(field)),
                    "write a duration such as `250ms` or `30s`",
                );
                None
            }
            Ok(duration) if duration > max => {
                let max = humantime::format_duration(max);
                self.error(
                    node.location,
                    field,
                    format!(
                        "`{}` is longer than {max}, the longest `{}` may be",
                        scalar.text,
                        last_segment(field)
                    ),
                    format!("write a duration from 1ms to {max}"),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(
                    node.location,
                    field,
                    format!("{} is not a duration ({error})", scalar.describe()),
                    "write a number with a unit, e.g. `30s`, `250ms` or `2m`",
                );
                None
            }
        }
    }

    fn read_sequence<'n, T>(
        &mut self,
        node: &'n Node,
        field: &str,
        mut read_item: impl FnMut(&mut Self, &'n Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let NodeValue::Sequence(items) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a sequence, found {}", node.describe()),
                format!(
                    "write one item per line starting with `- `, or `{}: []` for none",
                    last_segment(field)
                ),
            );
            return None;
        };
        let mut values = Vec::with_capacity(items.len());
        let mut all_valid = true;
        for (index, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{index}]");
            self.locations.insert(item_field.clone(), item.location);
            match read_item(self, item, &item_field) {
                Some(value) => values.push(value),
                None => all_valid = false,
            }
        }
        all_valid.then_some(values)
    }

    // ---------------------------------------------------------------------------------------
    // The fleet spec.

    pub(crate) fn decode_fleet(&mut self, root: &Node) -> Option<FleetSpec> {
        self.locations.insert(String::new(), root.location);
        let fields = self.open_mapping(root, "", FLEET_KEYS, UnknownKeys::Warn)?;
        self.has_provider_key = fields.found.contains_key("provider");
        let tag = self.required(&fields, "tag", |decoder, node, field| {
            let tag = decoder.read_string(node, field)?;
            decoder.check_name(node.location, field, &tag, "tag", "my-fleet").then_some(tag)
        });
        let monitoring = self.required(&fields, "monitoring", Self::decode_monitoring);
        let instances = self.required(&fields, "instances", |decoder, node, field| {
            decoder.read_sequence(node, field, Self::decode_instance)
        });
        self.check_instance_names();
        let ports = self.required(&fields, "ports", |decoder, node, field| {
            decoder.read_sequence(node, field, Self::decode_port)
        });
        let provider = self.optional_or_null(&fields, "provider", Self::read_provider);
        if let (Slot::Present(instances, location), false) =
            (&instances, matches!(provider, Slot::Invalid))
        {
            let kind = provider.value().copied().unwrap_or(ProviderKind::Aws);
            if let Some((message, help)) = machine_total_problem(instances, kind) {
                self.error(*location, "instances", message, help);
            }
        }
        let update = self.optional(&fields, "update", Self::decode_update);
        let account = self.decode_account(&fields, None);
        if let (Some(account), Slot::Present(instances, _)) = (&account, &instances) {
            self.check_account_across_entries(&account.keys, instances, provider.value().copied());
        }
        let account = account?;
        Some(FleetSpec {
            tag: tag.into_required()?,
            monitoring: monitoring.into_required()?,
            instances: instances.into_required()?,
            ports: ports.into_required()?,
            provider: provider.into_optional()?,
            update: update.into_optional()?.unwrap_or_default(),
            account: account.keys,
            iam: account.iam,
        })
    }

    /// Rules between the top's account keys and the entries': the tags one machine gets fit
    /// AWS's limit, and a top-level network names a region some machine runs in.
    fn check_account_across_entries(
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

    fn decode_monitoring(&mut self, node: &Node, field: &str) -> Option<MonitoringSpec> {
        let fields = self.open_mapping(node, field, MONITORING_KEYS, UnknownKeys::Warn)?;
        let instance_type = self.required(&fields, "instance_type", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "an EC2 instance type, e.g. `t4g.small`")
        });
        let storage = self.decode_storage(&fields);
        let dashboard = self.required(&fields, "dashboard", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "the path of a Grafana dashboard JSON file")
        });
        let storage = storage?;
        Some(MonitoringSpec {
            instance_type: instance_type.into_required()?,
            storage_size: storage.size,
            storage_class: storage.class,
            storage_iops: storage.iops,
            storage_throughput: storage.throughput,
            dashboard: dashboard.into_required()?,
        })
    }

    fn decode_instance(&mut self, node: &Node, field: &str) -> Option<InstanceSpec> {
        self.refuse_top_level_only(node, field);
        let fields = self.open_mapping(node, field, INSTANCE_KEYS, UnknownKeys::Warn)?;
        let name = self.required(&fields, "name", |decoder, node, field| {
            let name = decoder.read_string(node, field)?;
            decoder
                .check_name(node.location, field, &name, "instance name", "node-0")
                .then_some(name)
        });
        let region = self.required(&fields, "region", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "an AWS region, e.g. `us-east-1`")
        });
        let availability_zone_group =
            self.optional_or_null(&fields, "availability_zone_group", Self::read_string);
        let instance_type =
            self.optional_or_null(&fields, "instance_type", |decoder, node, field| {
                decoder.read_non_empty_string(node, field, "an EC2 instance type, e.g. `c7g.large`")
            });
        let instance_types = self.optional(&fields, "instance_types", Self::read_instance_types);
        let requirements = self.optional(&fields, "requirements", Self::read_requirements);
        let market = self.optional(&fields, "market", Self::read_market);
        let zones = self.optional(&fields, "zones", |decoder, node, field| {
            decoder.read_zones(node, field, region.value().map(String::as_str))
        });
        if matches!(instance_type, Slot::Absent) {
            let has_alternatives =
                !matches!(instance_types, Slot::Absent) || !matches!(requirements, Slot::Absent);
            if !(self.has_provider_key && has_alternatives) {
                let help = if has_alternatives {
                    "add `instance_type:` (the deployer requires it), or add `provider: aws` at the top so that `instance_types` or `requirements` may stand for it"
                } else if self.has_provider_key {
                    "add `instance_type:`, `instance_types:` or `requirements:`"
                } else {
                    "add `instance_type:`, e.g. `instance_type: c7g.large`"
                };
                self.error(
                    fields.location,
                    &fields.child("instance_type"),
                    "missing required key `instance_type`".to_owned(),
                    help,
                );
            }
        }
        let storage = self.decode_storage(&fields);
        let binary = self.required(&fields, "binary", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "the path of the binary to run")
        });
        let config = self.required(&fields, "config", |decoder, node, field| {
            decoder.read_non_empty_string(node, field, "the path of the binary's config file")
        });
        let profiling = self.required(&fields, "profiling", Self::read_bool);
        let count = self.optional_or_null(&fields, "count", Self::read_count);
        let args = self.optional(&fields, "args", Self::read_args);
        let env = self.optional(&fields, "env", Self::read_env);
        let health = self.optional(&fields, "health", Self::read_health);
        let restart = self.optional(&fields, "restart", Self::read_restart);
        let account = self.decode_account(&fields, region.value().map(String::as_str));
        let lifecycle = self.optional_or_null(&fields, "lifecycle", Self::read_lifecycle);

        if let (Some(name_value), Some(location)) = (name.value(), name.location())
            && !matches!(count, Slot::Invalid)
        {
            self.instance_names.push(InstanceName {
                index: index_of(field),
                name: name_value.clone(),
                count: count.value().copied(),
                location,
            });
        }

        let storage = storage?;
        Some(InstanceSpec {
            name: name.into_required()?,
            region: region.into_required()?,
            availability_zone_group: availability_zone_group.into_optional()?,
            instance_type: instance_type.into_optional()?,
            storage_size: storage.size,
            storage_class: storage.class,
            storage_iops: storage.iops,
            storage_throughput: storage.throughput,
            binary: binary.into_required()?,
            config: config.into_required()?,
            profiling: profiling.into_required()?,
            count: count.into_optional()?,
            args: args.into_optional()?.unwrap_or_default(),
            env: env.into_optional()?.unwrap_or_default(),
            health: health.into_optional()?.unwrap_or_default(),
            restart: restart.into_optional()?.unwrap_or_default(),
            instance_types: instance_types.into_optional()?.unwrap_or_default(),
            requirements: requirements.into_optional()?,
            market: market.into_optional()?.unwrap_or_default(),
            zones: zones.into_optional()?.unwrap_or_default(),
            account: account?.keys,
            lifecycle: lifecycle.into_optional()?,
        })
    }

    fn decode_port(&mut self, node: &Node, field: &str) -> Option<PortSpec> {
        let fields = self.open_mapping(node, field, PORT_KEYS, UnknownKeys::Warn)?;
        let protocol = self.required(&fields, "protocol", |decoder, node, field| {
            decoder.read_non_empty_string(
                node,
                field,
                "an IP protocol, e.g. `tcp` or `udp` (EC2 takes it as written)",
            )
        });
        let port = self.required(&fields, "port", Self::read_port);
        let cidr = self.required(&fields, "cidr", |decoder, node, field| {
            let cidr = decoder.read_string(node, field)?;
            match check_cidr(&cidr) {
                Ok(()) => Some(cidr),
                Err(problem) => {
                    decoder.error(node.location, field, problem.message, problem.help);
                    None
                }
            }
        });
        Some(PortSpec {
            protocol: protocol.into_required()?,
            port: port.into_required()?,
            cidr: cidr.into_required()?,
        })
    }

    fn read_provider(&mut self, node: &Node, field: &str) -> Option<ProviderKind> {
        let text = self.read_string(node, field)?;
        match text.as_str() {
            "local" => Some(ProviderKind::Local),
            "aws" => Some(ProviderKind::Aws),
            _ => {
                let help = match closest_match(&text, ["local", "aws"]) {
                    Some(known) => format!("did you mean `{known}`?"),
                    None => "write `provider: local` or `provider: aws`".to_owned(),
                };
                self.error(node.location, field, format!("unknown provider `{text}`"), help);
                None
            }
        }
    }

    fn read_count(&mut self, node: &Node, field: &str) -> Option<u32> {
        let count = self.read_integer(node, field, IntegerKind::Count)?;
        Some(u32::try_from(count).expect("read_integer checked the count range"))
    }

    fn read_args(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        self.read_sequence(node, field, |decoder, item, item_field| {
            let text = decoder.read_string(item, item_field)?;
            decoder.check_no_nul(item.location, item_field, &text, "an argument").then_some(text)
        })
    }

    fn read_env(&mut self, node: &Node, field: &str) -> Option<BTreeMap<String, String>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of names to values, found {}", node.describe()),
                "write one `NAME: value` per line, indented under `env:`",
            );
            return None;
        };
        let mut env = BTreeMap::new();
        let mut first_lines: HashMap<&str, usize> = HashMap::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(key) = entry.key.as_scalar() else {
                self.error(
                    entry.key.location,
                    field,
                    format!(
                        "an environment variable name must be a string, found {}",
                        entry.key.describe()
                    ),
                    "write `NAME: value`",
                );
                all_valid = false;
                continue;
            };
            let name = key.text.as_str();
            let variable_field = format!("{field}.{name}");
            self.locations.insert(variable_field.clone(), entry.value.location);
            if let Some(first_line) = first_lines.get(name) {
                self.error(
                    entry.key.location,
                    &variable_field,
                    format!("`{name}` is given twice (first on line {first_line})"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            first_lines.insert(name, entry.key.location.line);
            if !is_valid_env_name(name) {
                self.error(
                    entry.key.location,
                    &variable_field,
                    format!("`{name}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
                all_valid = false;
                continue;
            }
            let Some(value) = self.read_string(&entry.value, &variable_field) else {
                all_valid = false;
                continue;
            };
            if !self.check_no_nul(entry.value.location, &variable_field, &value, "a value") {
                all_valid = false;
                continue;
            }
            env.insert(name.to_owned(), value);
        }
        all_valid.then_some(env)
    }

    fn check_no_nul(&mut self, location: Location, field: &str, text: &str, what: &str) -> bool {
        if text.contains('\0') {
            self.error(
                location,
                field,
                format!("{what} cannot contain a NUL character"),
                "remove the `\\0` from the text",
            );
            return false;
        }
        true
    }

    fn read_health(&mut self, node: &Node, field: &str) -> Option<HealthCheck> {
        const FORMS: &str = "write `health: none`, `health: {http: {port: 8080, path: /health}}` \
                             or `health: {tcp: {port: 8080}}`";
        if let Some(scalar) = node.as_scalar() {
            if scalar.text == "none" {
                return Some(HealthCheck::None);
            }
            let message = match scalar.text.as_str() {
                "http" | "tcp" => format!("a `{}` health check needs its port", scalar.text),
                _ => format!("expected `none` or a mapping, found {}", scalar.describe()),
            };
            self.error(node.location, field, message, FORMS);
            return None;
        }
        let fields = self.open_mapping(node, field, HEALTH_KINDS, UnknownKeys::Refuse)?;
        let http = self.optional(&fields, "http", |decoder, node, field| {
            let fields =
                decoder.open_mapping(node, field, HEALTH_HTTP_KEYS, UnknownKeys::Refuse)?;
            let port = decoder.required(&fields, "port", Self::read_port);
            let path = decoder.optional(&fields, "path", |decoder, node, field| {
                let path = decoder.read_string(node, field)?;
                if !path.starts_with('/') {
                    decoder.error(
                        node.location,
                        field,
                        format!("the health check path must start with `/`, found `{path}`"),
                        format!("write `path: /{}`", path.trim_start_matches('/')),
                    );
                    return None;
                }
                Some(path)
            });
            Some(HealthCheck::Http {
                port: port.into_required()?,
                path: path.into_optional()?.unwrap_or_else(|| "/health".to_owned()),
            })
        });
        let tcp = self.optional(&fields, "tcp", |decoder, node, field| {
            let fields = decoder.open_mapping(node, field, HEALTH_TCP_KEYS, UnknownKeys::Refuse)?;
            let port = decoder.required(&fields, "port", Self::read_port);
            Some(HealthCheck::Tcp { port: port.into_required()? })
        });
        match (http, tcp) {
            (Slot::Absent, Slot::Absent) => {
                // Other keys were reported as unknown; an empty mapping gets its own error.
                if matches!(&node.value, NodeValue::Mapping(entries) if entries.is_empty()) {
                    self.error(
                        node.location,
                        field,
                        "a health check mapping needs `http` or `tcp`".to_owned(),
                        FORMS,
                    );
                }
                None
            }
            (Slot::Present(check, _), Slot::Absent) | (Slot::Absent, Slot::Present(check, _)) => {
                Some(check)
            }
            (Slot::Invalid, _) | (_, Slot::Invalid) => None,
            (Slot::Present(_, http_location), Slot::Present(_, tcp_location)) => {
                self.error(
                    http_location.max(tcp_location),
                    field,
                    "a health check is `http` or `tcp`, not both".to_owned(),
                    "keep one of them",
                );
                None
            }
        }
    }

    fn read_restart(&mut self, node: &Node, field: &str) -> Option<RestartSpec> {
        if node.as_scalar().is_some() {
            let policy = self.read_restart_policy(node, field)?;
            return Some(RestartSpec { policy, ..RestartSpec::default() });
        }
        let fields = self.open_mapping(node, field, RESTART_KEYS, UnknownKeys::Refuse)?;
        let policy = self.optional(&fields, "policy", Self::read_restart_policy);
        let backoff = |decoder: &mut Self, node: &Node, field: &str| {
            decoder.read_duration(node, field, MAX_RESTART_BACKOFF)
        };
        let initial = self.optional(&fields, "initial_backoff", backoff);
        let max = self.optional(&fields, "max_backoff", backoff);
        let defaults = RestartSpec::default();
        let spec = RestartSpec {
            policy: policy.into_optional()?.unwrap_or(defaults.policy),
            initial_backoff: initial.value().copied().unwrap_or(defaults.initial_backoff),
            max_backoff: max.value().copied().unwrap_or(defaults.max_backoff),
        };
        if matches!(initial, Slot::Invalid) || matches!(max, Slot::Invalid) {
            return None;
        }
        if spec.initial_backoff > spec.max_backoff {
            let location = initial.location().or(max.location()).unwrap_or(fields.location);
            let describe = |slot: &Slot<Duration>, duration: Duration| match slot {
                Slot::Present(..) => format!("`{}`", humantime::format_duration(duration)),
                _ => format!("`{}` (the default)", humantime::format_duration(duration)),
            };
            self.error(
                location,
                &fields.child("initial_backoff"),
                format!(
                    "initial_backoff {} is longer than max_backoff {}",
                    describe(&initial, spec.initial_backoff),
                    describe(&max, spec.max_backoff)
                ),
                "make initial_backoff at most max_backoff",
            );
            return None;
        }
        Some(spec)
    }

    fn read_restart_policy(&mut self, node: &Node, field: &str) -> Option<RestartPolicy> {
        let text = self.read_string(node, field)?;
        match text.as_str() {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            _ => {
                let help = match closest_match(&text, ["always", "on-failure"]) {
                    Some(known) => format!("did you mean `{known}`?"),
                    None => "write `always` or `on-failure`, or a mapping \
                             `{policy: on-failure, initial_backoff: 250ms, max_backoff: 30s}`"
                        .to_owned(),
                };
                self.error(node.location, field, format!("unknown restart policy `{text}`"), help);
                None
            }
        }
    }

    fn decode_update(&mut self, node: &Node, field: &str) -> Option<UpdateSpec> {
        let fields = self.open_mapping(node, field, UPDATE_KEYS, UnknownKeys::Refuse)?;
        let batch_size = self.optional_or_null(&fields, "batch_size", |decoder, node, field| {
            let size = decoder.read_u32(node, field)?;
            if size == 0 {
                decoder.error(
                    node.location,
                    field,
                    "batch_size must be at least 1".to_owned(),
                    "give the number of instances updated at once, e.g. `batch_size: 2`",
                );
                return None;
            }
            Some(size)
        });
        let max_unavailable = self.optional_or_null(&fields, "max_unavailable", Self::read_percent);
        let health_deadline =
            self.optional_or_null(&fields, "health_deadline", |decoder, node, field| {
                decoder.read_duration(node, field, MAX_HEALTH_DEADLINE)
            });
        if let (Some(batch_location), Some(share_location)) =
            (batch_size.location(), max_unavailable.location())
        {
            let later = batch_location.max(share_location);
            let later_field = fields.child(if later == batch_location {
                "batch_size"
            } else {
                "max_unavailable"
            });
            self.error(
                later,
                &later_field,
                "`batch_size` and `max_unavailable` both set the batch size".to_owned(),
                "keep `batch_size: N` for a fixed number of instances, or `max_unavailable: N%` \
                 for a share of the fleet",
            );
            return None;
        }
        Some(UpdateSpec {
            batch_size: batch_size.into_optional()?,
            max_unavailable: max_unavailable.into_optional()?,
            health_deadline: health_deadline.into_optional()?,
        })
    }

    fn read_percent(&mut self, node: &Node, field: &str) -> Option<Percent> {
        let text = self.read_string(node, field)?;
        let Some(number) = text.strip_suffix('%') else {
            self.error(
                node.location,
                field,
                format!("`{text}` is not a percentage"),
                format!("write it with a percent sign, e.g. `{}: 25%`", last_segment(field)),
            );
            return None;
        };
        match number.parse::<u8>() {
            Ok(percent @ 1..=100) if number.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Percent(percent))
            }
            _ => {
                self.error(
                    node.location,
                    field,
                    format!("`{text}` is out of range (1% to 100%)"),
                    format!("write a share from 1% to 100%, e.g. `{}: 25%`", last_segment(field)),
                );
                None
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Rules that span keys.

    /// Checks a tag or instance name against `[A-Za-z0-9_-]+` (commonware-deployer 2026.10.0),
    /// and a tag's length: it names a directory, so it is at most [`MAX_TAG_BYTES`] bytes.
    fn check_name(
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
    fn check_instance_names(&mut self) {
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
    fn decode_storage(&mut self, fields: &Fields<'_>) -> Option<Storage> {
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
struct IopsRule {
    required: bool,
    minimum: i64,
    per_gib: i64,
    /// The largest value whatever the size.
    cap: i64,
    /// gp3 always allows its baseline, even on volumes too small to reach it per GiB.
    floor_at_minimum: bool,
}

impl IopsRule {
    /// The allowed range for a volume of `size` GiB (empty when `minimum > maximum`).
    fn range(self, size: i64) -> (i64, i64) {
        let mut maximum = size.saturating_mul(self.per_gib);
        if self.floor_at_minimum {
            maximum = maximum.max(self.minimum);
        }
        (self.minimum, maximum.min(self.cap))
    }
}

fn iops_rule(class: &str) -> Option<IopsRule> {
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

/// The integer types the spec uses, with the range serde_yaml enforces for each.
#[derive(Clone, Copy)]
enum IntegerKind {
    I32,
    U32,
    /// A `u16` port, which flotilla also refuses when 0.
    Port,
    /// An instance entry's `count`: 1 to [`MAX_COUNT`].
    Count,
}

impl IntegerKind {
    fn range(self) -> (i128, i128) {
        match self {
            IntegerKind::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
            IntegerKind::U32 => (0, i128::from(u32::MAX)),
            IntegerKind::Port => (1, i128::from(u16::MAX)),
            IntegerKind::Count => (1, i128::from(MAX_COUNT)),
        }
    }

    fn is_unsigned(self) -> bool {
        !matches!(self, IntegerKind::I32)
    }

    fn out_of_range(self, text: &str) -> (String, &'static str) {
        match self {
            IntegerKind::I32 => (
                format!(
                    "`{text}` does not fit in a 32-bit signed integer (-2147483648 to 2147483647)"
                ),
                "use a smaller number",
            ),
            IntegerKind::U32 => (
                format!("`{text}` does not fit in a 32-bit unsigned integer (0 to 4294967295)"),
                "use a number from 0 to 4294967295",
            ),
            IntegerKind::Port => (
                format!("`{text}` is not a port number (1 to 65535)"),
                "use a single port from 1 to 65535 (ranges are not supported)",
            ),
            IntegerKind::Count => (
                format!("count {text} is out of range (1 to {MAX_COUNT})"),
                "remove `count` for one instance, or give the number of replicas, from 1 to 10000",
            ),
        }
    }
}

/// Why a `cidr` is refused.
struct CidrProblem {
    message: String,
    help: String,
}

/// Checks an IPv4 or IPv6 CIDR block. The deployer passes `cidr` to EC2 unchecked, so a typo
/// fails only at AWS, after resources exist; flotilla refuses it before any cloud call.
fn check_cidr(cidr: &str) -> Result<(), CidrProblem> {
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

/// `[A-Za-z_][A-Za-z0-9_]*`: the names a shell and `env` accept.
fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn last_segment(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

/// The index in a field path ending in `[i]`.
fn index_of(field: &str) -> usize {
    field
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

fn format_key_list(keys: &[KeySpec]) -> String {
    keys.iter().map(|key| format!("`{}`", key.name)).collect::<Vec<_>>().join(", ")
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

    #[test]
    fn env_names() {
        for good in ["A", "_x", "RUST_LOG", "a1"] {
            assert!(is_valid_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert!(!is_valid_env_name(bad), "{bad}");
        }
    }
}
