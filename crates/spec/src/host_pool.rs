//! Dedicated host pools (`host_pools:` at the top of a spec, `host_pool: NAME` on an instance
//! entry): the hosts a pool may hold per zone and in all, whether idle Mac hosts are scrubbed
//! so that they are not billed, and when idle hosts are released.
//!
//! These are the keys as written; the pool's behaviour (never release a Mac host before 24 h,
//! retry failed releases, move to the next zone on `InsufficientHostCapacity`, scrub or keep an
//! idle host) is `flotilla_capacity::host_pool`, one pure state machine the AWS provider and
//! `flotilla simulate` both run.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use crate::duration_serde::DurationText;

/// The shortest `scrubbing` delay: a shorter one would ask EC2 about idle hosts too often (the
/// same floor as Aquarium Fish's `scrubbing_delay`).
pub const MIN_SCRUBBING_DELAY: Duration = Duration::from_secs(60);
/// The longest `scrubbing` delay: a Mac host idle for a day is past its 24-hour minimum and is
/// better released than scrubbed.
pub const MAX_SCRUBBING_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The longest `release_idle_after`.
pub const MAX_RELEASE_IDLE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// One dedicated host pool: hosts of one instance type in some zones of one region.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostPoolSpec {
    /// The instance type the pool's hosts run, e.g. `mac2.metal` (one machine per host for `*.metal` types).
    pub instance_type: String,
    /// The zones hosts may be allocated in, each with its most hosts: `{us-east-1a: {max: 10}}`. Zones are tried in the order written; a zone that answers `InsufficientHostCapacity` is skipped for a while.
    pub zones: BTreeMap<String, HostPoolZone>,
    /// The most hosts in the whole pool (default: the sum of the zones' maxima). At least the largest zone maximum and at most their sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max: Option<u32>,
    /// What an idle Mac host does before its 24 hours are up: `off` (stays available, billed), `auto` (scrubbed when the expected demand during a scrub costs less than the idle hours saved), or a duration (scrubbed after being idle that long, at least 1m). A scrubbing host is `pending` and not billed.
    #[serde(default, skip_serializing_if = "Scrubbing::is_off")]
    #[schemars(with = "ScrubbingSchema", extend("default" = "off"))]
    pub scrubbing: Scrubbing,
    /// Release a host once it has been idle this long (and, for Mac hosts, is past its 24-hour minimum). Default: as soon as it may be released.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration_serde::option"
    )]
    #[schemars(with = "Option<DurationText>")]
    pub release_idle_after: Option<Duration>,
    /// The zones in the order written (the mapping above is sorted by name).
    #[serde(skip)]
    #[schemars(skip)]
    pub zone_order: Vec<String>,
}

impl HostPoolSpec {
    /// The pool's maximum as it applies: `max`, or the sum of the zones' maxima.
    pub fn effective_max(&self) -> u32 {
        self.max.unwrap_or_else(|| self.zones.values().map(|zone| zone.max).sum())
    }

    /// The zones in the order they are tried.
    pub fn zones_in_order(&self) -> impl Iterator<Item = (&str, &HostPoolZone)> {
        self.zone_order
            .iter()
            .filter_map(|name| self.zones.get(name).map(|zone| (name.as_str(), zone)))
    }
}

/// One zone of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostPoolZone {
    /// The most hosts the pool holds in this zone, at least 1.
    #[schemars(range(min = 1))]
    pub max: u32,
}

/// Whether and when an idle Mac host is scrubbed before it may be released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scrubbing {
    /// Never: an idle host stays available (and billed) until it may be released.
    #[default]
    Off,
    /// Per host, by price: scrub when the idle hours it saves outweigh the expected demand
    /// during the scrub window.
    Auto,
    /// After the host has been idle this long.
    After(Duration),
}

impl Scrubbing {
    pub fn is_off(&self) -> bool {
        matches!(self, Scrubbing::Off)
    }
}

impl std::fmt::Display for Scrubbing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scrubbing::Off => f.write_str("off"),
            Scrubbing::Auto => f.write_str("auto"),
            Scrubbing::After(delay) => write!(f, "{}", humantime::format_duration(*delay)),
        }
    }
}

impl Serialize for Scrubbing {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The JSON Schema of `scrubbing` as written: `off`, `auto` or a duration.
#[derive(Debug)]
pub struct ScrubbingSchema;

impl JsonSchema for ScrubbingSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scrubbing".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let duration = generator.subschema_for::<DurationText>();
        json_schema!({
            "description": "`off`, `auto`, or a duration of idleness after which the host is scrubbed.",
            "anyOf": [
                {"type": "string", "enum": ["off", "auto"]},
                duration
            ]
        })
    }
}

/// Whether `name` looks like an availability zone of `region` (`us-east-1a` of `us-east-1`).
pub fn zone_is_in_region(zone: &str, region: &str) -> bool {
    zone.strip_prefix(region).is_some_and(|suffix| {
        !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Whether instances of `instance_type` are Mac instances, whose hosts have a 24-hour minimum
/// allocation and scrub after each instance.
pub fn is_mac_type(instance_type: &str) -> bool {
    instance_type.starts_with("mac")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_belong_to_their_region_only() {
        assert!(zone_is_in_region("us-east-1a", "us-east-1"));
        assert!(zone_is_in_region("us-west-2-lax-1a", "us-west-2"));
        assert!(!zone_is_in_region("us-east-1", "us-east-1"));
        assert!(!zone_is_in_region("us-west-2a", "us-east-1"));
    }

    #[test]
    fn the_pool_maximum_defaults_to_the_sum_of_its_zones() {
        let mut pool = HostPoolSpec {
            instance_type: "mac2.metal".to_owned(),
            zones: BTreeMap::from([
                ("us-east-1a".to_owned(), HostPoolZone { max: 10 }),
                ("us-east-1b".to_owned(), HostPoolZone { max: 5 }),
            ]),
            max: None,
            scrubbing: Scrubbing::Off,
            release_idle_after: None,
            zone_order: vec!["us-east-1b".to_owned(), "us-east-1a".to_owned()],
        };
        assert_eq!(pool.effective_max(), 15);
        pool.max = Some(12);
        assert_eq!(pool.effective_max(), 12);
        let order: Vec<&str> = pool.zones_in_order().map(|(name, _)| name).collect();
        assert_eq!(order, ["us-east-1b", "us-east-1a"]);
        assert!(is_mac_type("mac2-m2pro.metal") && !is_mac_type("m7i.metal-24xl"));
    }
}
