//! The reader of the located tree (`crate::tree`), shared by every decoder of this crate (the
//! fleet spec, its account and capacity keys, ec2fleetd configs): the [`Decoder`] that collects
//! diagnostics and the location of every key, mappings read against a table of known keys
//! ([`KeySpec`]) with unknown keys warned about or refused ([`UnknownKeys`]) and a "did you
//! mean" for a near miss, scalars, sequences and field paths (`instances[2].health.port`).
//!
//! The tree is format-neutral; how a scalar reads is not: scalars are read as serde_yaml 0.9
//! (the commonware deployer's YAML library) reads the field's Rust type, for YAML files and
//! JSON5 files alike, so `tag: 12345` is a string and `storage_size: '10'` is refused. What only
//! YAML has is named as such: the merge key `<<` (not applied, reported where it is).
//!
//! Three facts of the fleet spec reach into the reader, each imported by name: the help for a
//! root that is not a mapping (`FLEET_ROOT_HELP`), the account keys an instance entry refuses
//! with an error of their own rather than as unknown (`account::TOP_LEVEL_ONLY`), and the
//! entries' names the [`Decoder`] gathers for the uniqueness rule (`rules::InstanceName`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::account;
use super::fleet::FLEET_ROOT_HELP;
use super::rules::InstanceName;
use crate::diagnostic::{Diagnostic, Location, Severity};
use crate::fleet::MAX_COUNT;
use crate::suggest::closest_match;
use crate::tree::{Entry, Node, NodeValue, Scalar, ScalarStyle};

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

pub(super) const fn deployer(name: &'static str, missing_help: &'static str) -> KeySpec {
    KeySpec { name, required: true, origin: Origin::Deployer, missing_help }
}

pub(super) const fn deployer_optional(name: &'static str) -> KeySpec {
    KeySpec { name, required: false, origin: Origin::Deployer, missing_help: "" }
}

pub(super) const fn flotilla(name: &'static str) -> KeySpec {
    KeySpec { name, required: false, origin: Origin::Flotilla, missing_help: "" }
}

pub(super) const fn flotilla_required(name: &'static str, missing_help: &'static str) -> KeySpec {
    KeySpec { name, required: true, origin: Origin::Flotilla, missing_help }
}

/// What the decoder found for one key.
pub(super) enum Slot<T> {
    /// The key is not there (or, for an `Option` field, is null).
    Absent,
    /// The key is there but its value was refused; the error is already reported.
    Invalid,
    Present(T, Location),
}

impl<T> Slot<T> {
    pub(super) fn value(&self) -> Option<&T> {
        match self {
            Slot::Present(value, _) => Some(value),
            _ => None,
        }
    }

    pub(super) fn location(&self) -> Option<Location> {
        match self {
            Slot::Present(_, location) => Some(*location),
            _ => None,
        }
    }

    /// The value of a required key: `None` when missing or refused (both already reported).
    pub(super) fn into_required(self) -> Option<T> {
        match self {
            Slot::Present(value, _) => Some(value),
            _ => None,
        }
    }

    /// The value of an optional key: `Some(None)` when absent, `None` when refused.
    pub(super) fn into_optional(self) -> Option<Option<T>> {
        match self {
            Slot::Absent => Some(None),
            Slot::Invalid => None,
            Slot::Present(value, _) => Some(Some(value)),
        }
    }
}

/// How unknown keys in a mapping are treated (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum UnknownKeys {
    Warn,
    Refuse,
}

/// A mapping being decoded: its known keys found, and what else it holds.
pub(super) struct Fields<'n> {
    pub(super) path: String,
    pub(super) location: Location,
    pub(super) keys: &'static [KeySpec],
    pub(super) found: HashMap<&'static str, &'n Entry>,
    /// Unknown keys that look like a misspelling of a known one: (known key, unknown key, line).
    pub(super) misspellings: Vec<(&'static str, String, usize)>,
    /// Whether the mapping has a YAML merge key (`<<`), which the deployer does not apply.
    pub(super) has_yaml_merge_key: bool,
}

impl<'n> Fields<'n> {
    pub(super) fn child(&self, key: &str) -> String {
        join_path(&self.path, key)
    }
}

pub(super) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// Decodes one file (a fleet spec, or an ec2fleetd config), collecting diagnostics and the
/// location of every key. Besides the reader's own state it carries what the fleet mappings
/// gather across entries for the rules (`decode_rules`).
pub(crate) struct Decoder<'f> {
    pub(super) file: &'f Path,
    pub(super) diagnostics: Vec<Diagnostic>,
    pub(super) locations: BTreeMap<String, Location>,
    /// Every entry's name, for the uniqueness rule once all entries are read.
    pub(super) instance_names: Vec<InstanceName>,
    /// Whether the spec has a `provider` key: an entry may then leave `instance_type` out.
    pub(super) has_provider_key: bool,
    /// Who ignores unknown keys in the mappings where they are warnings (the deployer, or
    /// ec2fleetd), for the warning's help.
    pub(super) lenient_reader: &'static str,
    /// Where the `lifecycle` configs written in the spec are read differently from ec2fleetd.
    pub(super) lifecycle_differences: Vec<crate::fleetd::Difference>,
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

    /// The location recorded for `field`, when there is one.
    pub(super) fn location_of(&self, field: &str) -> Option<Location> {
        self.locations.get(field).copied()
    }

    pub(super) fn report(
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

    pub(super) fn error(
        &mut self,
        location: Location,
        field: &str,
        message: String,
        help: impl Into<String>,
    ) {
        self.report(Severity::Error, location, field, message, help.into());
    }

    pub(super) fn warning(
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
    pub(super) fn open_mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        keys: &'static [KeySpec],
        unknown_keys: UnknownKeys,
    ) -> Option<Fields<'n>> {
        let NodeValue::Mapping(entries) = &node.value else {
            let help = if path.is_empty() {
                FLEET_ROOT_HELP.to_owned()
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
            has_yaml_merge_key: false,
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
                fields.has_yaml_merge_key = true;
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

    pub(super) fn key_spec(fields: &Fields<'_>, name: &str) -> &'static KeySpec {
        fields
            .keys
            .iter()
            .find(|spec| spec.name == name)
            .expect("the decoder only asks for keys listed in the mapping's key table")
    }

    /// Reads a key that must be there.
    pub(super) fn required<'n, T>(
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
                if fields.has_yaml_merge_key {
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
    /// serde_yaml decides null (see [`crate::tree::Scalar::is_null`]).
    pub(super) fn optional_or_null<'n, T>(
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
    pub(super) fn optional<'n, T>(
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
    pub(super) fn read_string(&mut self, node: &Node, field: &str) -> Option<String> {
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
    pub(super) fn read_non_empty_string(
        &mut self,
        node: &Node,
        field: &str,
        what: &str,
    ) -> Option<String> {
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
    pub(super) fn read_integer(
        &mut self,
        node: &Node,
        field: &str,
        kind: IntegerKind,
    ) -> Option<i64> {
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

    pub(super) fn read_i32(&mut self, node: &Node, field: &str) -> Option<i32> {
        self.read_integer(node, field, IntegerKind::I32)
            .map(|value| i32::try_from(value).expect("read_integer checked the i32 range"))
    }

    pub(super) fn read_u32(&mut self, node: &Node, field: &str) -> Option<u32> {
        self.read_integer(node, field, IntegerKind::U32)
            .map(|value| u32::try_from(value).expect("read_integer checked the u32 range"))
    }

    pub(super) fn read_port(&mut self, node: &Node, field: &str) -> Option<u16> {
        self.read_integer(node, field, IntegerKind::Port)
            .map(|value| u16::try_from(value).expect("read_integer checked the port range"))
    }

    pub(super) fn read_bool(&mut self, node: &Node, field: &str) -> Option<bool> {
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
    pub(super) fn read_duration(
        &mut self,
        node: &Node,
        field: &str,
        max: Duration,
    ) -> Option<Duration> {
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

    pub(super) fn read_sequence<'n, T>(
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

    pub(super) fn check_no_nul(
        &mut self,
        location: Location,
        field: &str,
        text: &str,
        what: &str,
    ) -> bool {
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
}

/// The integer types the spec uses, with the range serde_yaml enforces for each.
#[derive(Clone, Copy)]
pub(super) enum IntegerKind {
    I32,
    U32,
    /// A `u16` port, which flotilla also refuses when 0.
    Port,
    /// An instance entry's `count`: 1 to [`MAX_COUNT`].
    Count,
}

impl IntegerKind {
    pub(super) fn range(self) -> (i128, i128) {
        match self {
            IntegerKind::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
            IntegerKind::U32 => (0, i128::from(u32::MAX)),
            IntegerKind::Port => (1, i128::from(u16::MAX)),
            IntegerKind::Count => (1, i128::from(MAX_COUNT)),
        }
    }

    pub(super) fn is_unsigned(self) -> bool {
        !matches!(self, IntegerKind::I32)
    }

    pub(super) fn out_of_range(self, text: &str) -> (String, &'static str) {
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

pub(super) fn last_segment(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

/// The index in a field path ending in `[i]`.
pub(super) fn index_of(field: &str) -> usize {
    field
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

pub(super) fn format_key_list(keys: &[KeySpec]) -> String {
    keys.iter().map(|key| format!("`{}`", key.name)).collect::<Vec<_>>().join(", ")
}

/// A plain scalar read as a decimal number (`30`, `1.5`, `1e3`), when it is a finite one: for the
/// numbers ec2fleetd's JSON5 and the capacity bounds take that are not the integers of
/// [`Decoder::read_integer`].
pub(super) fn plain_decimal(scalar: &Scalar) -> Option<f64> {
    (scalar.style == ScalarStyle::Plain)
        .then(|| scalar.text.parse::<f64>().ok())
        .flatten()
        .filter(|value| value.is_finite())
}
