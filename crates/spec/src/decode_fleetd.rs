//! Decoding an ec2fleetd config (see [`crate::fleetd`]) from the located tree, with the same
//! reader as the fleet spec. ec2fleetd ignores unknown keys, so a config it accepts must stay
//! accepted: unknown keys are warnings with a "did you mean". Everything ec2fleetd would only
//! find at run time (a missing key for a source letter, an unknown macro or event, an `ec` it
//! would crash on, a partial `envelope`) is an error here, before any cloud call.

use std::collections::BTreeMap;
use std::time::Duration;

use super::reader::{
    Decoder, KeySpec, Slot, UnknownKeys, flotilla, flotilla_required, plain_decimal,
};
use crate::fleetd::{
    AttachVolume, DEFAULT_BODY, DEFAULT_SUBJECT, Difference, Domain, EVENTS, ExecLine, ExecSpec,
    ExitCodes, FleetdConfig, Lifecycle, MACROS, NotifyBackend, NotifySpec, Piece, PoolPreference,
    RecordAddress, Route53Record, VolumeSource, parse_macros,
};
use crate::suggest::closest_match;
use crate::tree::{Node, NodeValue, ScalarStyle};

pub(crate) const FLEETD_KEYS: &[KeySpec] = &[
    flotilla("$schema"),
    flotilla_required("domains", "add `domains: {NAME: {…}}`: ec2fleetd needs at least one"),
    flotilla("set-hostname"),
    flotilla("hostname"),
    flotilla("timeout"),
    flotilla("interrupt-detection"),
];

pub(crate) const DOMAIN_KEYS: &[KeySpec] =
    &[flotilla("attach-volume"), flotilla("update-route53"), flotilla("exec"), flotilla("notify")];

pub(crate) const VOLUME_KEYS: &[KeySpec] = &[
    flotilla_required("device", "add `device: '/dev/sdf'` (AttachVolume needs it, also on Nitro)"),
    flotilla_required("source", "add `source: 'pc'` (letters x, p and c, tried in order)"),
    flotilla("volume-id"),
    flotilla("pool-name"),
    flotilla("create"),
    flotilla("critical"),
    flotilla("exec"),
    flotilla("pool-pref"),
];

pub(crate) const ROUTE53_KEYS: &[KeySpec] = &[
    flotilla_required("hostedzone", "add `hostedzone:` with the zone's id, e.g. `Z0123456789ABC`"),
    flotilla_required("name", "add `name:`, e.g. `node-{instance_index}.example.com.`"),
    flotilla_required("ttl", "add `ttl: 60`"),
    flotilla("critical"),
    flotilla("address"),
    flotilla("wait-insync"),
];

pub(crate) const EXEC_KEYS: &[KeySpec] =
    &[flotilla("on"), flotilla_required("lines", "add `lines: [{argv: ['/usr/bin/true']}]`")];

pub(crate) const LINE_KEYS: &[KeySpec] = &[
    flotilla_required("argv", "add `argv: ['/path/to/program', 'arg']`"),
    flotilla("ec"),
    flotilla("timeout"),
];

pub(crate) const NOTIFY_KEYS: &[KeySpec] = &[
    flotilla_required("backend", "add `backend: 'aws-sns'` or `backend: 'aws-sqs'`"),
    flotilla("options"),
    flotilla("matrix"),
    flotilla("envelope"),
];

pub(crate) const NOTIFY_OPTION_KEYS: &[KeySpec] =
    &[flotilla("region"), flotilla("topic"), flotilla("queue-url")];

pub(crate) const ENVELOPE_KEYS: &[KeySpec] = &[
    flotilla_required("subject", "add `subject:` (ec2fleetd needs both subject and body)"),
    flotilla_required("body", "add `body:`, e.g. `'{all_json}'`"),
];

pub(crate) const MATRIX_ENTRY_KEYS: &[KeySpec] =
    &[flotilla_required("enabled", "add `enabled: true` or `enabled: false`")];

/// Where macros are expanded, for the macros only some places have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MacroPlace {
    /// A domain hook, a notification, the hostname, a record name.
    General,
    /// A hook of an `attach-volume` entry.
    Volume,
}

const VOLUME_MACROS: [&str; 5] =
    ["attach_source", "attach_op", "volume_id", "volume_pool", "attached_device"];

/// Reads a number as JSON5 writes it (integer or decimal) as JSON, for `create`.
fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        NodeValue::Scalar(scalar) if scalar.style == ScalarStyle::Plain => {
            if let Some(b) = scalar.as_bool() {
                return serde_json::Value::Bool(b);
            }
            if scalar.is_null() {
                return serde_json::Value::Null;
            }
            if let Some(i) =
                scalar.as_integer().and_then(|i| i.value()).and_then(|v| i64::try_from(v).ok())
            {
                return serde_json::Value::from(i);
            }
            match plain_decimal(scalar).and_then(serde_json::Number::from_f64) {
                Some(number) => serde_json::Value::Number(number),
                None => serde_json::Value::String(scalar.text.clone()),
            }
        }
        NodeValue::Scalar(scalar) => serde_json::Value::String(scalar.text.clone()),
        NodeValue::Sequence(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        NodeValue::Mapping(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|e| {
                    (
                        e.key.as_scalar().map(|s| s.text.clone()).unwrap_or_default(),
                        to_json(&e.value),
                    )
                })
                .collect(),
        ),
    }
}

impl Decoder<'_> {
    /// An instance entry's `lifecycle`: a path (checked with the spec's files), or a config
    /// written in the spec, decoded as a config file is.
    pub(super) fn read_lifecycle(&mut self, node: &Node, field: &str) -> Option<Lifecycle> {
        if let NodeValue::Mapping(_) = node.value {
            let (config, differences) = self.decode_fleetd_at(node, field);
            self.lifecycle_differences.extend(differences);
            return config.map(Lifecycle::Inline);
        }
        self.read_non_empty_string(
            node,
            field,
            "the path of an ec2fleetd config, or the config itself",
        )
        .map(Lifecycle::File)
    }

    /// The deliberate differences from ec2fleetd found in `lifecycle` configs so far.
    pub(crate) fn take_lifecycle_differences(&mut self) -> Vec<Difference> {
        std::mem::take(&mut self.lifecycle_differences)
    }

    /// The config and the places where flotilla deliberately differs from ec2fleetd.
    pub(crate) fn decode_fleetd(&mut self, root: &Node) -> (Option<FleetdConfig>, Vec<Difference>) {
        self.locations.insert(String::new(), root.location);
        self.decode_fleetd_at(root, "")
    }

    /// The config at `node`, whose field path is `base` (`""` for a config file,
    /// `instances[2].lifecycle` inside a fleet spec).
    pub(crate) fn decode_fleetd_at(
        &mut self,
        node: &Node,
        base: &str,
    ) -> (Option<FleetdConfig>, Vec<Difference>) {
        let reader = std::mem::replace(&mut self.lenient_reader, "ec2fleetd");
        let decoded = self.decode_fleetd_fields(node, base);
        self.lenient_reader = reader;
        decoded
    }

    fn decode_fleetd_fields(
        &mut self,
        root: &Node,
        base: &str,
    ) -> (Option<FleetdConfig>, Vec<Difference>) {
        let mut differences = Vec::new();
        let Some(fields) = self.open_mapping(root, base, FLEETD_KEYS, UnknownKeys::Warn) else {
            return (None, differences);
        };
        let schema = self.optional_or_null(&fields, "$schema", Self::read_string);
        let domains = self.required(&fields, "domains", |decoder, node, field| {
            decoder.read_domains(node, field, &mut differences)
        });
        let set_hostname = self.optional_or_null(&fields, "set-hostname", |d, n, f| {
            d.read_macro_text(n, f, MacroPlace::General)
        });
        let hostname = self.optional_or_null(&fields, "hostname", |d, n, f| {
            d.read_macro_text(n, f, MacroPlace::General)
        });
        if let (Some(location), None) = (hostname.location(), set_hostname.location()) {
            differences.push(Difference {
                field: fields.child("hostname"),
                location: Some(location),
                note: "ec2fleetd reads only `set-hostname` and ignores `hostname`; flotilla sets the hostname from it".into(),
            });
        }
        if let (Some(location), Some(_)) = (hostname.location(), set_hostname.location()) {
            self.warning(
                location,
                &fields.child("hostname"),
                "both `hostname` and `set-hostname` are given; `set-hostname` is used".to_owned(),
                "remove one of them",
            );
        }
        let timeout = self.optional_or_null(&fields, "timeout", |decoder, node, field| {
            decoder.read_seconds(
                node,
                field,
                "write the seconds the domains may take to initialise, e.g. `600`",
            )
        });
        if let Some(location) = timeout.location() {
            differences.push(Difference {
                field: fields.child("timeout"),
                location: Some(location),
                note: "ec2fleetd ignores `timeout`; flotilla fails the start when the domains take longer".into(),
            });
        }
        if let Some(entry) = fields.found.get("interrupt-detection") {
            self.warning(
                entry.key.location,
                &fields.child("interrupt-detection"),
                "`interrupt-detection` is not used: flotilla polls IMDS for notices four times a second".to_owned(),
                "remove it; nothing depends on it",
            );
        }
        let config = (|| {
            Some(FleetdConfig {
                schema: schema.into_optional()?,
                domains: domains.into_required()?,
                hostname: match (set_hostname.into_optional()?, hostname.into_optional()?) {
                    (Some(set), _) => Some(set),
                    (None, other) => other,
                },
                timeout: timeout.into_optional()?,
            })
        })();
        (config, differences)
    }

    fn read_domains(
        &mut self,
        node: &Node,
        field: &str,
        differences: &mut Vec<Difference>,
    ) -> Option<Vec<Domain>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of domain names to domains, found {}", node.describe()),
                "write `domains: {game: {…}}`",
            );
            return None;
        };
        if entries.is_empty() {
            self.error(
                node.location,
                field,
                "`domains` is empty".to_owned(),
                "add a domain: ec2fleetd fails on an empty `domains`",
            );
            return None;
        }
        let mut domains = Vec::new();
        let mut all_valid = true;
        for entry in entries {
            let name = entry.key.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            let domain_field = format!("{field}.{name}");
            self.locations.insert(domain_field.clone(), entry.value.location);
            if domains.iter().any(|d: &Domain| d.name == name) {
                self.error(
                    entry.key.location,
                    &domain_field,
                    format!("domain `{name}` is given twice"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            match self.read_domain(&entry.value, &domain_field, &name, differences) {
                Some(domain) => domains.push(domain),
                None => all_valid = false,
            }
        }
        all_valid.then_some(domains)
    }

    fn read_domain(
        &mut self,
        node: &Node,
        field: &str,
        name: &str,
        differences: &mut Vec<Difference>,
    ) -> Option<Domain> {
        let fields = self.open_mapping(node, field, DOMAIN_KEYS, UnknownKeys::Warn)?;
        let volumes = self.optional(&fields, "attach-volume", |decoder, node, field| {
            decoder.read_sequence(node, field, |d, n, f| d.read_volume(n, f, differences))
        });
        let records = self.optional(&fields, "update-route53", |decoder, node, field| {
            decoder.read_sequence(node, field, |d, n, f| d.read_record(n, f, differences))
        });
        let exec = self.optional(&fields, "exec", |decoder, node, field| {
            decoder.read_sequence(node, field, |d, n, f| {
                d.read_exec(n, f, MacroPlace::General, differences)
            })
        });
        let notify = self.optional(&fields, "notify", |decoder, node, field| {
            decoder.read_sequence(node, field, |d, n, f| d.read_notify(n, f, differences))
        });
        Some(Domain {
            name: name.to_owned(),
            attach_volume: volumes.into_optional()?.unwrap_or_default(),
            update_route53: records.into_optional()?.unwrap_or_default(),
            exec: exec.into_optional()?.unwrap_or_default(),
            notify: notify.into_optional()?.unwrap_or_default(),
        })
    }

    fn read_volume(
        &mut self,
        node: &Node,
        field: &str,
        differences: &mut Vec<Difference>,
    ) -> Option<AttachVolume> {
        let fields = self.open_mapping(node, field, VOLUME_KEYS, UnknownKeys::Warn)?;
        let device = self.required(&fields, "device", |d, n, f| {
            d.read_non_empty_string(n, f, "a device, e.g. `/dev/sdf`")
        });
        let source = self.required(&fields, "source", |decoder, node, field| {
            let text = decoder.read_non_empty_string(node, field, "source letters, e.g. `pc`")?;
            let mut letters = Vec::new();
            for c in text.chars() {
                let source = match c {
                    'x' => VolumeSource::Fixed,
                    'p' => VolumeSource::Pool,
                    'c' => VolumeSource::Create,
                    other => {
                        decoder.error(
                            node.location,
                            field,
                            format!("`{other}` is not a volume source"),
                            "use the letters x (volume-id), p (pool) and c (create), in the order to try them",
                        );
                        return None;
                    }
                };
                if letters.contains(&source) {
                    decoder.error(node.location, field, format!("`{c}` is given twice"), "give each letter once");
                    return None;
                }
                letters.push(source);
            }
            Some(letters)
        });
        let volume_id = self.optional_or_null(&fields, "volume-id", |decoder, node, field| {
            let id = decoder.read_non_empty_string(node, field, "a volume id")?;
            let valid = id.strip_prefix("vol-").is_some_and(|hex| {
                (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !valid {
                decoder.error(
                    node.location,
                    field,
                    format!("`{id}` is not a volume id"),
                    "a volume id is `vol-` and 8 or 17 hex digits",
                );
                return None;
            }
            Some(id)
        });
        let pool_name = self.optional_or_null(&fields, "pool-name", |d, n, f| {
            d.read_non_empty_string(n, f, "the pool's name")
        });
        let create =
            self.optional_or_null(&fields, "create", |decoder, node, field| match to_json(node) {
                serde_json::Value::Object(map) => Some(map),
                _ => {
                    decoder.error(
                        node.location,
                        field,
                        format!("expected CreateVolume's parameters, found {}", node.describe()),
                        "write `create: {Size: 100, VolumeType: 'gp3'}`",
                    );
                    None
                }
            });
        let critical = self.optional(&fields, "critical", Self::read_bool);
        let exec = self.optional(&fields, "exec", |decoder, node, field| {
            decoder.read_sequence(node, field, |d, n, f| {
                d.read_exec(n, f, MacroPlace::Volume, differences)
            })
        });
        let pool_pref = self.optional_or_null(&fields, "pool-pref", |decoder, node, field| {
            let text = decoder.read_string(node, field)?;
            match text.as_str() {
                "random" => Some(PoolPreference::Random),
                "most-recently-used" => Some(PoolPreference::MostRecentlyUsed),
                "least-recently-used" | "least-recent-used" => {
                    Some(PoolPreference::LeastRecentlyUsed)
                }
                other => {
                    decoder.error(
                        node.location,
                        field,
                        format!("unknown pool preference `{other}`"),
                        "write `random`, `most-recently-used` or `least-recently-used`",
                    );
                    None
                }
            }
        });
        if let Some(location) = pool_pref.location() {
            differences.push(Difference {
                field: fields.child("pool-pref"),
                location: Some(location),
                note: "ec2fleetd ignores `pool-pref`; flotilla picks pool volumes by it (by the time each was last detached)".into(),
            });
        }
        // What each source letter needs.
        if let Some(letters) = source.value() {
            let location = source.location().unwrap_or(fields.location);
            let source_field = fields.child("source");
            if letters.contains(&VolumeSource::Fixed) && matches!(volume_id, Slot::Absent) {
                self.error(
                    location,
                    &source_field,
                    "source `x` needs `volume-id`".to_owned(),
                    "add `volume-id: 'vol-…'`, or remove `x`",
                );
            }
            let needs_pool =
                letters.iter().any(|l| matches!(l, VolumeSource::Pool | VolumeSource::Create));
            if needs_pool && matches!(pool_name, Slot::Absent) {
                self.error(
                    location,
                    &source_field,
                    "sources `p` and `c` need `pool-name`".to_owned(),
                    "add `pool-name:` (a created volume joins that pool)",
                );
            }
            if letters.contains(&VolumeSource::Create) && matches!(create, Slot::Absent) {
                self.error(
                    location,
                    &source_field,
                    "source `c` needs `create`".to_owned(),
                    "add `create: {Size: 100, VolumeType: 'gp3'}`",
                );
            }
        }
        Some(AttachVolume {
            device: device.into_required()?,
            source: source.into_required()?,
            volume_id: volume_id.into_optional()?,
            pool_name: pool_name.into_optional()?,
            create: create.into_optional()?,
            critical: critical.into_optional()?.unwrap_or(true),
            exec: exec.into_optional()?.unwrap_or_default(),
            pool_pref: pool_pref.into_optional()?.unwrap_or_default(),
        })
    }

    fn read_record(
        &mut self,
        node: &Node,
        field: &str,
        differences: &mut Vec<Difference>,
    ) -> Option<Route53Record> {
        let fields = self.open_mapping(node, field, ROUTE53_KEYS, UnknownKeys::Warn)?;
        let zone = self.required(&fields, "hostedzone", |d, n, f| {
            d.read_non_empty_string(n, f, "a hosted zone id")
        });
        let name = self.required(&fields, "name", |decoder, node, field| {
            let name = decoder.read_macro_text(node, field, MacroPlace::General)?;
            if name.contains('{') || !name.ends_with('.') {
                differences.push(Difference {
                    field: field.to_owned(),
                    location: Some(node.location),
                    note: "ec2fleetd sends `name` as written (no macros; without a trailing dot it never finds the record to restore); flotilla expands macros and adds the trailing dot".into(),
                });
            }
            Some(if name.ends_with('.') { name } else { format!("{name}.") })
        });
        let ttl = self.required(&fields, "ttl", Self::read_u32);
        let critical = self.optional(&fields, "critical", Self::read_bool);
        let address = self.optional(&fields, "address", |decoder, node, field| {
            let text = decoder.read_string(node, field)?;
            match text.as_str() {
                "public" => Some(RecordAddress::Public),
                "private" => Some(RecordAddress::Private),
                other => {
                    decoder.error(
                        node.location,
                        field,
                        format!("unknown address `{other}`"),
                        "write `public` (the default) or `private`",
                    );
                    None
                }
            }
        });
        if let Some(location) = address.location() {
            differences.push(Difference {
                field: fields.child("address"),
                location: Some(location),
                note: "ec2fleetd has no `address` and always points the record at the public address; flotilla points it at the one named".into(),
            });
        }
        let wait_insync = self.optional(&fields, "wait-insync", Self::read_bool);
        if let Some(location) = wait_insync.location() {
            differences.push(Difference {
                field: fields.child("wait-insync"),
                location: Some(location),
                note: "ec2fleetd has no `wait-insync` and never waits for Route 53; flotilla waits, bounded, for `INSYNC` when it is true".into(),
            });
        }
        Some(Route53Record {
            hosted_zone: zone.into_required()?.trim_start_matches("/hostedzone/").to_owned(),
            name: name.into_required()?,
            ttl: ttl.into_required()?,
            critical: critical.into_optional()?.unwrap_or(true),
            address: address.into_optional()?.unwrap_or_default(),
            wait_insync: wait_insync.into_optional()?.unwrap_or(false),
        })
    }

    fn read_exec(
        &mut self,
        node: &Node,
        field: &str,
        place: MacroPlace,
        differences: &mut Vec<Difference>,
    ) -> Option<ExecSpec> {
        let fields = self.open_mapping(node, field, EXEC_KEYS, UnknownKeys::Warn)?;
        let on = self.optional_or_null(&fields, "on", |decoder, node, field| {
            let events = decoder.read_sequence(node, field, |decoder, item, item_field| {
                let name = decoder.read_string(item, item_field)?;
                match EVENTS.iter().find(|(n, _)| *n == name) {
                    Some((_, event)) => Some(*event),
                    None => {
                        let help = match closest_match(&name, EVENTS.iter().map(|(n, _)| *n)) {
                            Some(known) => format!("did you mean `{known}`?"),
                            None => format!("the events are: {}", EVENTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
                        };
                        decoder.error(item.location, item_field, format!("unknown event `{name}`"), help);
                        None
                    }
                }
            })?;
            if place == MacroPlace::Volume {
                differences.push(Difference {
                    field: field.to_owned(),
                    location: Some(node.location),
                    note: "ec2fleetd never runs a volume hook that has `on`; flotilla runs it on those events".into(),
                });
            }
            Some(events)
        });
        let lines = self.required(&fields, "lines", |decoder, node, field| {
            decoder.read_sequence(node, field, |d, n, f| d.read_line(n, f, place, differences))
        });
        Some(ExecSpec { on: on.into_optional()?, lines: lines.into_required()? })
    }

    fn read_line(
        &mut self,
        node: &Node,
        field: &str,
        place: MacroPlace,
        differences: &mut Vec<Difference>,
    ) -> Option<ExecLine> {
        let fields = self.open_mapping(node, field, LINE_KEYS, UnknownKeys::Warn)?;
        let argv = self.required(&fields, "argv", |decoder, node, field| {
            let argv =
                decoder.read_sequence(node, field, |d, n, f| d.read_macro_text(n, f, place))?;
            if argv.first().is_none_or(String::is_empty) {
                decoder.error(
                    node.location,
                    field,
                    "`argv` has no program".to_owned(),
                    "write the program first, e.g. `argv: ['/usr/bin/logger', 'up']`",
                );
                return None;
            }
            Some(argv)
        });
        let ec = match fields.found.get("ec") {
            None => Slot::Absent,
            Some(entry) => {
                match self.read_exit_codes(&entry.value, &fields.child("ec"), differences) {
                    Some(codes) => Slot::Present(codes, entry.value.location),
                    None => Slot::Invalid,
                }
            }
        };
        let timeout = self.optional(&fields, "timeout", |decoder, node, field| {
            decoder.read_seconds(node, field, "write the seconds the line may run, e.g. `30`")
        });
        Some(ExecLine {
            argv: argv.into_required()?,
            ec: ec.into_optional()?.unwrap_or_default(),
            timeout: timeout.into_optional()?,
        })
    }

    /// `ec`: ec2fleetd's string (`"0"`, `"0-2,5"`, end-exclusive ranges) or null, and flotilla's
    /// integer or list of integers and strings.
    fn read_exit_codes(
        &mut self,
        node: &Node,
        field: &str,
        differences: &mut Vec<Difference>,
    ) -> Option<ExitCodes> {
        const HELP: &str = "write codes as ec2fleetd does, `\"0\"` or `\"0-2,5\"` (a range ends before its second number), an integer, a list, or null for any";
        let mut ranges = Vec::new();
        let mut push_text = |decoder: &mut Self, text: &str, location| -> bool {
            for part in text.split(',').map(str::trim) {
                let parsed = match part.split_once('-') {
                    Some((a, b)) => a.trim().parse::<i64>().ok().zip(b.trim().parse::<i64>().ok()),
                    None => part.parse::<i64>().ok().map(|a| (a, a + 1)),
                };
                match parsed {
                    Some((a, b)) if a < b && a >= 0 => ranges.push((a, b)),
                    _ => {
                        decoder.error(
                            location,
                            field,
                            format!("`{part}` is not an exit code or range"),
                            HELP,
                        );
                        return false;
                    }
                }
            }
            true
        };
        match &node.value {
            NodeValue::Scalar(scalar) if scalar.style == ScalarStyle::Plain && scalar.is_null() => {
                return Some(ExitCodes::Any);
            }
            NodeValue::Scalar(scalar) if scalar.style == ScalarStyle::Plain => {
                let Some(code) = scalar
                    .as_integer()
                    .and_then(|i| i.value())
                    .and_then(|v| i64::try_from(v).ok())
                    .filter(|c| *c >= 0)
                else {
                    self.error(
                        node.location,
                        field,
                        format!("expected exit codes, found {}", node.describe()),
                        HELP,
                    );
                    return None;
                };
                differences.push(Difference {
                    field: field.to_owned(),
                    location: Some(node.location),
                    note: "ec2fleetd crashes on an integer `ec`; flotilla reads it as that code"
                        .into(),
                });
                ranges.push((code, code + 1));
            }
            NodeValue::Scalar(scalar) => {
                if !push_text(self, &scalar.text.clone(), node.location) {
                    return None;
                }
            }
            NodeValue::Sequence(items) => {
                differences.push(Difference {
                    field: field.to_owned(),
                    location: Some(node.location),
                    note: "ec2fleetd crashes on a list `ec`; flotilla reads each item".into(),
                });
                for item in items {
                    let Some(text) = item.as_scalar().map(|s| s.text.clone()) else {
                        self.error(
                            item.location,
                            field,
                            format!("expected an exit code, found {}", item.describe()),
                            HELP,
                        );
                        return None;
                    };
                    if !push_text(self, &text, item.location) {
                        return None;
                    }
                }
            }
            NodeValue::Mapping(_) => {
                self.error(
                    node.location,
                    field,
                    "expected exit codes, found a mapping".to_owned(),
                    HELP,
                );
                return None;
            }
        }
        if ranges.iter().any(|(_, end)| *end > 128) {
            differences.push(Difference {
                field: field.to_owned(),
                location: Some(node.location),
                note: "codes above 128 (a shell's signal codes) never match a line killed by a signal: ec2fleetd saw a negative code, flotilla sees no code; use `ec: null` to accept signals".into(),
            });
        }
        Some(ExitCodes::Ranges(ranges))
    }

    fn read_notify(
        &mut self,
        node: &Node,
        field: &str,
        differences: &mut Vec<Difference>,
    ) -> Option<NotifySpec> {
        let fields = self.open_mapping(node, field, NOTIFY_KEYS, UnknownKeys::Warn)?;
        let backend = self.required(&fields, "backend", |decoder, node, field| {
            let name = decoder.read_string(node, field)?;
            let backend = match name.as_str() {
                "aws-sns" => NotifyBackend::Sns,
                "ans-sqs" => NotifyBackend::Sqs,
                "aws-sqs" => {
                    differences.push(Difference { field: field.to_owned(), location: Some(node.location), note: "ec2fleetd silently sends nothing for `aws-sqs` (it knows only the misspelt `ans-sqs`); flotilla sends to SQS".into() });
                    NotifyBackend::Sqs
                }
                other => {
                    decoder.error(node.location, field, format!("unknown backend `{other}`"), "write `aws-sns` or `aws-sqs` (`ans-sqs`, ec2fleetd's spelling, works too)");
                    return None;
                }
            };
            Some((backend, name))
        });
        let options = self.optional(&fields, "options", |decoder, node, field| {
            let options =
                decoder.open_mapping(node, field, NOTIFY_OPTION_KEYS, UnknownKeys::Warn)?;
            let region = decoder.optional_or_null(&options, "region", |d, n, f| {
                d.read_non_empty_string(n, f, "a region")
            });
            let topic = decoder.optional_or_null(&options, "topic", |d, n, f| {
                d.read_non_empty_string(n, f, "a topic ARN")
            });
            let queue = decoder.optional_or_null(&options, "queue-url", |d, n, f| {
                d.read_non_empty_string(n, f, "a queue URL")
            });
            Some((region.into_optional()?, topic.into_optional()?, queue.into_optional()?))
        });
        let matrix = self.optional(&fields, "matrix", |decoder, node, field| {
            let NodeValue::Mapping(entries) = &node.value else {
                decoder.error(node.location, field, format!("expected a mapping of events, found {}", node.describe()), "write `matrix: {stopping: {enabled: false}}`");
                return None;
            };
            let mut matrix = BTreeMap::new();
            let mut all_valid = true;
            for entry in entries {
                let name = entry.key.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
                let event_field = format!("{field}.{name}");
                let Some((_, event)) = EVENTS.iter().find(|(n, _)| *n == name) else {
                    let help = closest_match(&name, EVENTS.iter().map(|(n, _)| *n)).map_or_else(|| "name an event: starting, started, interrupted, stopping, failed, rebalance, scheduled-event, binary-exited".to_owned(), |k| format!("did you mean `{k}`?"));
                    decoder.error(entry.key.location, &event_field, format!("unknown event `{name}`"), help);
                    all_valid = false;
                    continue;
                };
                let Some(state) = decoder.open_mapping(&entry.value, &event_field, MATRIX_ENTRY_KEYS, UnknownKeys::Warn) else {
                    all_valid = false;
                    continue;
                };
                match decoder.required(&state, "enabled", Self::read_bool).into_required() {
                    Some(enabled) => {
                        matrix.insert(*event, enabled);
                    }
                    None => all_valid = false,
                }
            }
            all_valid.then_some(matrix)
        });
        let envelope = self.optional(&fields, "envelope", |decoder, node, field| {
            let envelope = decoder.open_mapping(node, field, ENVELOPE_KEYS, UnknownKeys::Warn)?;
            let subject = decoder.required(&envelope, "subject", |d, n, f| {
                d.read_macro_text(n, f, MacroPlace::General)
            });
            let body = decoder.required(&envelope, "body", |d, n, f| {
                d.read_macro_text(n, f, MacroPlace::General)
            });
            Some((subject.into_required()?, body.into_required()?))
        });
        let (region, topic, queue_url) = options.into_optional()?.unwrap_or_default();
        let (backend, backend_name) = backend.into_required()?;
        let target_missing = match backend {
            NotifyBackend::Sns => topic.is_none().then_some((
                "aws-sns needs `options.topic`",
                "add `options: {topic: 'arn:aws:sns:…'}`",
            )),
            NotifyBackend::Sqs => queue_url.is_none().then_some((
                "an SQS backend needs `options.queue-url`",
                "add `options: {'queue-url': 'https://sqs.…'}`",
            )),
        };
        if let Some((message, help)) = target_missing {
            self.error(fields.location, &fields.child("options"), message.to_owned(), help);
            return None;
        }
        let (subject, body) = envelope
            .into_optional()?
            .unwrap_or_else(|| (DEFAULT_SUBJECT.to_owned(), DEFAULT_BODY.to_owned()));
        Some(NotifySpec {
            backend,
            backend_name,
            region,
            topic,
            queue_url,
            matrix: matrix.into_optional()?.unwrap_or_default(),
            subject,
            body,
        })
    }

    /// A number of seconds as ec2fleetd writes timeouts (`30`, `1.5`): more than 0, at most a
    /// day.
    fn read_seconds(&mut self, node: &Node, field: &str, help: &str) -> Option<Duration> {
        let seconds =
            node.as_scalar().and_then(plain_decimal).filter(|s| *s > 0.0 && *s <= 86_400.0);
        if seconds.is_none() {
            self.error(
                node.location,
                field,
                format!("expected a number of seconds, found {}", node.describe()),
                help,
            );
        }
        seconds.map(Duration::from_secs_f64)
    }

    /// A string whose macros are all known (for `place`).
    fn read_macro_text(&mut self, node: &Node, field: &str, place: MacroPlace) -> Option<String> {
        let text = self.read_string(node, field)?;
        let pieces = match parse_macros(&text) {
            Ok(pieces) => pieces,
            Err(error) => {
                self.error(
                    node.location,
                    field,
                    format!("{} (at character {})", error.message, error.offset + 1),
                    "write a literal brace as `{{` or `}}`",
                );
                return None;
            }
        };
        let known = MACROS.iter().map(|(name, _)| *name);
        for piece in pieces {
            let Piece::Macro { name, .. } = piece else { continue };
            if !MACROS.iter().any(|(m, _)| *m == name) {
                let help = match closest_match(name, known.clone()) {
                    Some(known) => format!("did you mean `{{{known}}}`?"),
                    None => "see `flotilla fleetd --help` for the macros".to_owned(),
                };
                self.error(node.location, field, format!("unknown macro `{{{name}}}`"), help);
                return None;
            }
            if place == MacroPlace::General && VOLUME_MACROS.contains(&name) {
                self.error(
                    node.location,
                    field,
                    format!("`{{{name}}}` has a value only in an `attach-volume` hook"),
                    "move the line into the volume's `exec`, or remove the macro",
                );
                return None;
            }
        }
        Some(text)
    }
}
