//! ec2fleetd's config, as flotilla reads it: the same file, JSON5, every key ec2fleetd reads
//! (and the ones it documents but ignores), decoded with located errors by
//! [`parse_fleetd_config`] (`decode_fleetd.rs`).
//!
//! Where flotilla deliberately behaves differently from ec2fleetd, the difference is a
//! [`Difference`] the decoder records for `flotilla fleetd check-config` to print; the meanings
//! of the keys themselves are ec2fleetd's (refs/ec2fleetd-and-imds.md part A).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::diagnostic::{Diagnostic, Location, Severity, SpecErrors};

/// One ec2fleetd config.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct FleetdConfig {
    /// `$schema`, kept as written (ec2fleetd never reads it).
    pub schema: Option<String>,
    /// The domains in file order; each initialises on its own.
    pub domains: Vec<Domain>,
    /// The transient hostname to set once every domain is up (`set-hostname`, or `hostname`,
    /// which ec2fleetd ignored), with macros.
    pub hostname: Option<String>,
    /// `timeout` in seconds: how long the domains may take to initialise (ec2fleetd only warned
    /// that it is ignored).
    pub timeout: Option<Duration>,
}

/// A named group of volumes, records, hooks and notifications.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Domain {
    pub name: String,
    pub attach_volume: Vec<AttachVolume>,
    pub update_route53: Vec<Route53Record>,
    pub exec: Vec<ExecSpec>,
    pub notify: Vec<NotifySpec>,
}

/// Where a volume may come from, tried in the order written (`source: "pc"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeSource {
    /// `x`: the volume `volume-id`.
    Fixed,
    /// `p`: a free volume of the pool `pool-name` in this zone.
    Pool,
    /// `c`: a new volume made from `create`, which joins the pool.
    Create,
}

impl VolumeSource {
    pub fn letter(self) -> char {
        match self {
            VolumeSource::Fixed => 'x',
            VolumeSource::Pool => 'p',
            VolumeSource::Create => 'c',
        }
    }
}

/// Which free pool volume a machine takes (`pool-pref`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolPreference {
    #[default]
    Random,
    MostRecentlyUsed,
    LeastRecentlyUsed,
}

/// `attach-volume[]`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct AttachVolume {
    pub device: String,
    pub source: Vec<VolumeSource>,
    pub volume_id: Option<String>,
    pub pool_name: Option<String>,
    /// CreateVolume's parameters, as written (`Size`, `VolumeType`, …); the zone is the
    /// machine's.
    pub create: Option<serde_json::Map<String, serde_json::Value>>,
    pub critical: bool,
    /// Hooks run once the device appears (honouring `on`, which ec2fleetd ignored here).
    pub exec: Vec<ExecSpec>,
    pub pool_pref: PoolPreference,
}

/// `update-route53[]`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Route53Record {
    pub hosted_zone: String,
    /// The record's name with macros, normalised to end with a dot.
    pub name: String,
    pub ttl: u32,
    pub critical: bool,
    /// Which of the machine's addresses the A (or AAAA) record points at (`address`, a
    /// flotilla key: ec2fleetd always used the public one).
    pub address: RecordAddress,
    /// Wait (bounded) until Route 53 reports the change `INSYNC` (`wait-insync`, a flotilla
    /// key: ec2fleetd never waited).
    pub wait_insync: bool,
}

/// `update-route53[].address`: the machine's address a record points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordAddress {
    /// The public IPv4 address (ec2fleetd's only choice).
    #[default]
    Public,
    /// The private IPv4 address.
    Private,
}

/// The events hooks and notifications run on: ec2fleetd's five daemon states, and flotilla's
/// own, which an ec2fleetd config never names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    Starting,
    Started,
    Interrupted,
    Stopping,
    Failed,
    /// An EC2 rebalance recommendation.
    Rebalance,
    /// A scheduled event (retirement, reboot, stop, …) was announced.
    ScheduledEvent,
    /// The binary exited (in a fleet).
    BinaryExited,
}

/// Every event, with its name in a config.
pub const EVENTS: [(&str, Event); 8] = [
    ("starting", Event::Starting),
    ("started", Event::Started),
    ("interrupted", Event::Interrupted),
    ("stopping", Event::Stopping),
    ("failed", Event::Failed),
    ("rebalance", Event::Rebalance),
    ("scheduled-event", Event::ScheduledEvent),
    ("binary-exited", Event::BinaryExited),
];

impl Event {
    pub fn as_str(self) -> &'static str {
        EVENTS.iter().find(|(_, e)| *e == self).map(|(name, _)| *name).unwrap_or("")
    }

    /// The events a notification is sent for unless its `matrix` says otherwise.
    pub fn notified_by_default(self) -> bool {
        matches!(self, Event::Failed | Event::Started | Event::Stopping | Event::Interrupted)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `exec[]`: lines run in order on the listed events (every event when `on` is absent).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ExecSpec {
    pub on: Option<Vec<Event>>,
    pub lines: Vec<ExecLine>,
}

impl ExecSpec {
    /// Whether the hook runs on `event`.
    pub fn runs_on(&self, event: Event) -> bool {
        self.on.as_ref().is_none_or(|events| events.contains(&event))
    }
}

/// One command of a hook.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ExecLine {
    /// The program and its arguments, with macros (no shell).
    pub argv: Vec<String>,
    pub ec: ExitCodes,
    /// How long the line may run before it is killed and counts as failed.
    pub timeout: Option<Duration>,
}

/// The exit codes that count as success (`ec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitCodes {
    /// `null`: any exit code.
    Any,
    /// Codes in these end-exclusive ranges, as ec2fleetd reads `"0-2,5"` ({0, 1, 5}).
    Ranges(Vec<(i64, i64)>),
}

impl Default for ExitCodes {
    fn default() -> Self {
        ExitCodes::Ranges(vec![(0, 1)])
    }
}

impl ExitCodes {
    /// Whether a line that exited with `code` succeeded. A line killed by a signal has no code
    /// and succeeds only under `Any` (ec2fleetd compared Python's negative codes and so never
    /// matched a signal; flotilla says so instead of pretending).
    pub fn accepts(&self, code: Option<i64>) -> bool {
        match (self, code) {
            (ExitCodes::Any, _) => true,
            (ExitCodes::Ranges(ranges), Some(code)) => {
                ranges.iter().any(|(start, end)| (*start..*end).contains(&code))
            }
            (ExitCodes::Ranges(_), None) => false,
        }
    }

    /// The accepted codes for people: `{0, 1, 5}`, `{0} ∪ [10, 20)`, `any`.
    pub fn describe(&self) -> String {
        match self {
            ExitCodes::Any => "any".to_owned(),
            ExitCodes::Ranges(ranges) => {
                let parts: Vec<String> = ranges
                    .iter()
                    .map(|(start, end)| match end - start {
                        1 => start.to_string(),
                        2..=4 => {
                            (*start..*end).map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
                        }
                        _ => format!("{start}..{}", end - 1),
                    })
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
        }
    }
}

/// Where a notification goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyBackend {
    Sns,
    Sqs,
}

/// `notify[]`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct NotifySpec {
    pub backend: NotifyBackend,
    /// The backend's name as written (`aws-sns`, `ans-sqs`, `aws-sqs`).
    pub backend_name: String,
    pub region: Option<String>,
    pub topic: Option<String>,
    pub queue_url: Option<String>,
    /// Events whose notification the matrix turns on or off; others follow
    /// [`Event::notified_by_default`].
    pub matrix: BTreeMap<Event, bool>,
    /// Subject and body with macros.
    pub subject: String,
    pub body: String,
}

impl NotifySpec {
    /// Whether a notification is sent on `event`.
    pub fn sends_on(&self, event: Event) -> bool {
        self.matrix.get(&event).copied().unwrap_or_else(|| event.notified_by_default())
    }
}

/// The default notification subject and body (ec2fleetd's).
pub const DEFAULT_SUBJECT: &str =
    "Fleetd {domain} on {instance_id} state changed to [{daemon_state}]";
pub const DEFAULT_BODY: &str = "{all_json}";

/// Every macro ec2fleetd fills, and flotilla's additions.
pub const MACROS: &[(&str, &str)] = &[
    ("domain", "the domain's name"),
    ("instance_id", "the instance id"),
    ("instance_type", "the instance type"),
    (
        "instance_index",
        "standalone: IMDS's ami-launch-index; in a fleet: the machine's index in its entry (node-3 → 3)",
    ),
    ("ami-i", "the same as {instance_index} (the name ec2fleetd's README uses)"),
    ("name", "in a fleet: the machine's name"),
    ("placement_region", "the region"),
    ("placement_zone", "the availability zone"),
    ("hypervisor", "IMDS's system, e.g. nitro"),
    ("primary_public_ipv4", "the public IPv4 address, or empty"),
    ("primary_public_ipv6", "the IPv6 address, or empty"),
    ("public_ipv4_list", "the public IPv4 addresses, comma separated"),
    ("public_ipv6_list", "the IPv6 addresses, comma separated"),
    ("static_dns_rr", "always empty, as in ec2fleetd"),
    ("attach_source", "volume hooks: x, p or c"),
    ("attach_op", "volume hooks: true when this run attached the volume"),
    ("volume_id", "volume hooks: the volume id"),
    ("volume_pool", "volume hooks: the pool name"),
    ("attached_device", "volume hooks: the device the volume appeared as"),
    ("daemon_state", "the event: starting, started, interrupted, …"),
    ("error", "the errors that led to failed"),
    ("interrupt_action", "after a spot notice: its action"),
    ("interrupt_time", "after a spot notice: its time"),
    ("event_code", "scheduled-event: the event's code, e.g. instance-retirement"),
    ("event_not_before", "scheduled-event: the start of its window"),
    ("event_not_after", "scheduled-event: the end of its window"),
    ("transaction_id", "--transc_id, or a new uuid"),
    (
        "transaction_log",
        "JSON (tab-indented) of every cloud operation so far: platform, domain, method (claim_volume, upsert_record, notify, …), param, dry",
    ),
    ("cwd", "the working directory"),
    ("ts", "the time of expansion"),
    ("pid", "the agent's pid"),
    ("all_json", "JSON of every macro"),
];

/// A piece of a text with macros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'t> {
    Text(String),
    /// A macro: its name and, as written after it, an index or format (`[0]`, `:>8`).
    Macro {
        name: &'t str,
        rest: &'t str,
    },
}

/// Why a text's macros cannot be read, with the byte offset where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacroError {
    pub offset: usize,
    pub message: String,
}

/// Splits a text with macros (`{name}`, `{{` and `}}` for braces) as Python's `str.format`
/// does.
pub fn parse_macros(text: &str) -> Result<Vec<Piece<'_>>, MacroError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut index = 0;
    let bytes = text.as_bytes();
    while index < bytes.len() {
        match bytes[index] {
            b'{' if bytes.get(index + 1) == Some(&b'{') => {
                literal.push('{');
                index += 2;
            }
            b'}' if bytes.get(index + 1) == Some(&b'}') => {
                literal.push('}');
                index += 2;
            }
            b'{' => {
                let Some(length) = text[index + 1..].find('}') else {
                    return Err(MacroError {
                        offset: index,
                        message: "`{` opens a macro that is never closed".to_owned(),
                    });
                };
                let inside = &text[index + 1..index + 1 + length];
                let split = inside.find(['[', ':', '!', '.']).unwrap_or(inside.len());
                let (name, rest) = inside.split_at(split);
                if name.is_empty() {
                    return Err(MacroError {
                        offset: index,
                        message: "an empty macro `{}`".to_owned(),
                    });
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Macro { name, rest });
                index += length + 2;
            }
            b'}' => {
                return Err(MacroError { offset: index, message: "a lone `}`".to_owned() });
            }
            _ => {
                let c = text[index..].chars().next().expect("index is on a character boundary");
                literal.push(c);
                index += c.len_utf8();
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

/// Expands the macros of `text` from `values`; `None` names the first macro without a value.
/// Format specs and indexes after a name are not applied (the value is used as is).
pub fn expand_macros(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let pieces = parse_macros(text).map_err(|e| e.message)?;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Macro { name, .. } => {
                let key = if name == "ami-i" { "instance_index" } else { name };
                match values.get(key) {
                    Some(value) => out.push_str(value),
                    None => return Err(format!("macro `{{{name}}}` has no value here")),
                }
            }
        }
    }
    Ok(out)
}

/// An instance entry's `lifecycle`: an ec2fleetd config in the spec, or the path of one.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Inline(FleetdConfig),
    /// A path relative to the current directory, read and checked with the spec's files.
    File(String),
}

/// The JSON Schema of `lifecycle` as written.
#[derive(Debug)]
pub struct LifecycleSchema;

impl schemars::JsonSchema for LifecycleSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Lifecycle".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                {
                    "type": "string",
                    "description": "The path of an ec2fleetd config file (JSON5), relative to the current directory."
                },
                {
                    "type": "object",
                    "description": "An ec2fleetd config in YAML: `domains` (each with `attach-volume`, `update-route53`, `exec` and `notify`), `set-hostname` or `hostname`, and `timeout`, as ec2fleetd reads them.",
                    "required": ["domains"]
                }
            ]
        })
    }
}

/// A place where flotilla deliberately behaves differently from ec2fleetd, found in a config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The field path it concerns.
    pub field: String,
    pub location: Option<Location>,
    /// What ec2fleetd did and what flotilla does.
    pub note: String,
}

/// A decoded config with its warnings, the deliberate differences, and where each key was.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetdDocument {
    pub config: FleetdConfig,
    pub path: PathBuf,
    pub warnings: Vec<Diagnostic>,
    pub differences: Vec<Difference>,
}

/// Parses an ec2fleetd config (JSON5). `file` names it in diagnostics; nothing is read. Every
/// problem is reported at once, in file order.
pub fn parse_fleetd_config(source: &str, file: &Path) -> Result<FleetdDocument, SpecErrors> {
    let root = crate::json5::parse_document(source).map_err(|syntax| SpecErrors {
        diagnostics: vec![
            Diagnostic::error(file, Some(syntax.location), "", syntax.message)
                .with_help(syntax.help),
        ],
    })?;
    let mut decoder = crate::decode::Decoder::new(file);
    let (config, differences) = decoder.decode_fleetd(&root);
    let (mut diagnostics, _locations) = decoder.finish();
    let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
    match config {
        Some(config) if !has_errors => Ok(FleetdDocument {
            config,
            path: file.to_path_buf(),
            warnings: diagnostics,
            differences,
        }),
        _ => {
            if !has_errors {
                diagnostics.push(
                    Diagnostic::error(file, None, "", "the config could not be decoded".to_owned())
                        .with_help("this is a bug in flotilla: please report it with the file"),
                );
            }
            Err(SpecErrors { diagnostics })
        }
    }
}

impl FleetdConfig {
    /// The AWS actions the config may call (for its IAM policy and `check-config`), each once,
    /// in the order they first happen.
    pub fn aws_actions(&self) -> Vec<&'static str> {
        let mut actions: Vec<&'static str> = Vec::new();
        let mut add = |action: &'static str| {
            if !actions.contains(&action) {
                actions.push(action);
            }
        };
        for domain in &self.domains {
            for volume in &domain.attach_volume {
                add("ec2:DescribeVolumes");
                if volume.source.contains(&VolumeSource::Create) {
                    add("ec2:CreateVolume");
                }
                add("ec2:AttachVolume");
                add("ec2:CreateTags");
                add("ec2:DetachVolume");
            }
            if !domain.update_route53.is_empty() {
                add("route53:ListResourceRecordSets");
                add("route53:ChangeResourceRecordSets");
                add("route53:GetChange");
            }
            for notify in &domain.notify {
                add(match notify.backend {
                    NotifyBackend::Sns => "sns:Publish",
                    NotifyBackend::Sqs => "sqs:SendMessage",
                });
            }
        }
        actions
    }

    /// The hooks of `domain` that run on `event`, in file order: (argv, accepted exit codes).
    pub fn hooks_on(domain: &Domain, event: Event) -> Vec<&ExecLine> {
        domain.exec.iter().filter(|spec| spec.runs_on(event)).flat_map(|spec| &spec.lines).collect()
    }
}

/// Reads `file` (a regular file of at most 16 MiB) and parses it with
/// [`parse_fleetd_config`].
pub fn load_fleetd_config(file: &Path) -> Result<FleetdDocument, SpecErrors> {
    let source = crate::document::read_source(
        file,
        "the ec2fleetd config",
        "the command line",
        "a JSON5 file",
    )?;
    parse_fleetd_config(&source, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ec` ranges end before their second number, as ec2fleetd reads them.
    #[test]
    fn exit_codes_are_end_exclusive_ranges() {
        let codes = ExitCodes::Ranges(vec![(0, 2), (5, 6)]);
        assert!(codes.accepts(Some(0)) && codes.accepts(Some(1)) && codes.accepts(Some(5)));
        assert!(!codes.accepts(Some(2)) && !codes.accepts(None));
        assert!(ExitCodes::Any.accepts(None));
        assert_eq!(codes.describe(), "{0, 1, 5}");
        assert_eq!(ExitCodes::Ranges(vec![(10, 100)]).describe(), "{10..99}");
        assert!(ExitCodes::default().accepts(Some(0)) && !ExitCodes::default().accepts(Some(1)));
    }

    #[test]
    fn macros_split_as_python_formats_them() {
        let pieces = parse_macros("a{{b}} {instance_id}-{error[0]}{x:>3}").unwrap();
        assert_eq!(
            pieces,
            [
                Piece::Text("a{b} ".into()),
                Piece::Macro { name: "instance_id", rest: "" },
                Piece::Text("-".into()),
                Piece::Macro { name: "error", rest: "[0]" },
                Piece::Macro { name: "x", rest: ":>3" },
            ]
        );
        assert_eq!(parse_macros("{oops").unwrap_err().offset, 0);
        assert_eq!(parse_macros("a}b").unwrap_err().message, "a lone `}`");
        assert!(parse_macros("{}").is_err());
        let values: BTreeMap<String, String> =
            [("instance_index".to_owned(), "3".to_owned())].into();
        assert_eq!(expand_macros("node-{ami-i}.{{x}}", &values).unwrap(), "node-3.{x}");
        assert!(expand_macros("{domain}", &values).is_err());
    }

    #[test]
    fn notifications_follow_the_matrix_then_the_default() {
        let spec = NotifySpec {
            backend: NotifyBackend::Sqs,
            backend_name: "ans-sqs".into(),
            region: None,
            topic: None,
            queue_url: Some("https://q".into()),
            matrix: [(Event::Stopping, false), (Event::Starting, true)].into(),
            subject: DEFAULT_SUBJECT.into(),
            body: DEFAULT_BODY.into(),
        };
        assert!(!spec.sends_on(Event::Stopping));
        assert!(spec.sends_on(Event::Starting));
        assert!(spec.sends_on(Event::Started));
        assert!(!spec.sends_on(Event::Rebalance));
    }
}
