//! Decoding `host_pools:` (name → pool) at the top of a spec and checking each entry's
//! `host_pool: NAME` against them: the pool exists, its zones are in the entry's region, the
//! entry's instance type and zones agree with the pool's. Pools are flotilla's own mappings, so
//! unknown keys are errors.

use std::collections::BTreeMap;

use super::reader::{Decoder, KeySpec, UnknownKeys, flotilla, flotilla_required};
use crate::capacity::looks_like_instance_type;
use crate::fleet::InstanceSpec;
use crate::host_pool::{
    HostPoolSpec, HostPoolZone, MAX_RELEASE_IDLE_AFTER, MAX_SCRUBBING_DELAY, MIN_SCRUBBING_DELAY,
    Scrubbing, zone_is_in_region,
};
use crate::suggest::closest_match;
use crate::tree::{Node, NodeValue};

pub(crate) const HOST_POOL_KEYS: &[KeySpec] = &[
    flotilla_required(
        "instance_type",
        "add `instance_type:` with the hosts' instance type, e.g. `instance_type: mac2.metal`",
    ),
    flotilla_required(
        "zones",
        "add `zones:` with each zone's most hosts, e.g. `zones: {us-east-1a: {max: 10}}`",
    ),
    flotilla("max"),
    flotilla("scrubbing"),
    flotilla("release_idle_after"),
];

pub(crate) const HOST_POOL_ZONE_KEYS: &[KeySpec] =
    &[flotilla_required("max", "add `max:` with the most hosts in this zone, e.g. `max: 10`")];

impl Decoder<'_> {
    /// A document of host pools alone, for `flotilla simulate --pool`: `host_pools: {NAME: …}`,
    /// or one pool's mapping (named `pool`).
    pub(crate) fn decode_host_pools_document(
        &mut self,
        root: &Node,
    ) -> Option<BTreeMap<String, HostPoolSpec>> {
        self.locations.insert(String::new(), root.location);
        if let NodeValue::Mapping(entries) = &root.value
            && let [entry] = entries.as_slice()
            && entry.key.as_scalar().is_some_and(|key| key.text == "host_pools")
        {
            self.locations.insert("host_pools".to_owned(), entry.value.location);
            return self.read_host_pools(&entry.value, "host_pools");
        }
        let pool = self.read_host_pool(root, "")?;
        Some(BTreeMap::from([("pool".to_owned(), pool)]))
    }

    /// `host_pools: {NAME: {instance_type, zones, max, scrubbing, release_idle_after}}`.
    pub(super) fn read_host_pools(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<BTreeMap<String, HostPoolSpec>> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of pool names to pools, found {}", node.describe()),
                "write `host_pools:` then one `NAME: {instance_type: mac2.metal, zones: {...}}` per pool",
            );
            return None;
        };
        let mut pools = BTreeMap::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(key) = entry.key.as_scalar() else {
                self.error(
                    entry.key.location,
                    field,
                    format!("a pool name must be a string, found {}", entry.key.describe()),
                    "write `NAME: {...}`",
                );
                all_valid = false;
                continue;
            };
            let name = key.text.clone();
            let pool_field = format!("{field}.{name}");
            self.locations.insert(pool_field.clone(), entry.value.location);
            if pools.contains_key(&name) {
                self.error(
                    entry.key.location,
                    &pool_field,
                    format!("the pool `{name}` is defined twice"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            let name_valid =
                self.check_name(entry.key.location, &pool_field, &name, "pool name", "mac-arm");
            match self.read_host_pool(&entry.value, &pool_field) {
                Some(pool) if name_valid => {
                    pools.insert(name, pool);
                }
                _ => all_valid = false,
            }
        }
        all_valid.then_some(pools)
    }

    fn read_host_pool(&mut self, node: &Node, field: &str) -> Option<HostPoolSpec> {
        let fields = self.open_mapping(node, field, HOST_POOL_KEYS, UnknownKeys::Refuse)?;
        let instance_type = self.required(&fields, "instance_type", |decoder, node, field| {
            let name = decoder.read_non_empty_string(
                node,
                field,
                "an instance type, e.g. `mac2.metal`",
            )?;
            if !looks_like_instance_type(&name) {
                decoder.error(
                    node.location,
                    field,
                    format!("`{name}` is not an instance type name"),
                    "write a family and a size, e.g. `mac2.metal`",
                );
                return None;
            }
            Some(name)
        });
        let zones = self.required(&fields, "zones", Self::read_host_pool_zones);
        let max = self.optional(&fields, "max", Self::read_at_least_one);
        let scrubbing = self.optional(&fields, "scrubbing", Self::read_scrubbing);
        let release_idle_after =
            self.optional(&fields, "release_idle_after", |decoder, node, field| {
                decoder.read_duration(node, field, MAX_RELEASE_IDLE_AFTER)
            });
        let max_location = max.location();
        let (zones, zone_order) = zones.into_required()?;
        let pool = HostPoolSpec {
            instance_type: instance_type.into_required()?,
            zones,
            max: max.into_optional()?,
            scrubbing: scrubbing.into_optional()?.unwrap_or_default(),
            release_idle_after: release_idle_after.into_optional()?,
            zone_order,
        };
        if let (Some(max), Some(location)) = (pool.max, max_location) {
            let largest = pool.zones.values().map(|zone| zone.max).max().unwrap_or(0);
            let sum: u32 = pool.zones.values().map(|zone| zone.max).sum();
            if max < largest {
                self.error(
                    location,
                    &fields.child("max"),
                    format!("the pool's max {max} is less than a zone's max {largest}"),
                    format!("raise `max` to at least {largest}, or lower that zone's `max`"),
                );
                return None;
            }
            if max > sum {
                self.error(
                    location,
                    &fields.child("max"),
                    format!("the pool's max {max} is more than its zones hold together ({sum})"),
                    format!("lower `max` to {sum} or less, raise a zone's `max`, or remove `max`"),
                );
                return None;
            }
        }
        Some(pool)
    }

    /// `zones: {us-east-1a: {max: 10}, ...}`: at least one zone; also the order written.
    fn read_host_pool_zones(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<(BTreeMap<String, HostPoolZone>, Vec<String>)> {
        let NodeValue::Mapping(entries) = &node.value else {
            self.error(
                node.location,
                field,
                format!("expected a mapping of zones to limits, found {}", node.describe()),
                "write `zones: {us-east-1a: {max: 10}, us-east-1b: {max: 5}}`",
            );
            return None;
        };
        if entries.is_empty() {
            self.error(
                node.location,
                field,
                "a pool needs at least one zone".to_owned(),
                "write `zones: {us-east-1a: {max: 10}}`",
            );
            return None;
        }
        let mut zones = BTreeMap::new();
        let mut order = Vec::new();
        let mut all_valid = true;
        for entry in entries {
            let Some(key) = entry.key.as_scalar().filter(|key| !key.text.is_empty()) else {
                self.error(
                    entry.key.location,
                    field,
                    format!("a zone must be a name, found {}", entry.key.describe()),
                    "write a zone such as `us-east-1a`",
                );
                all_valid = false;
                continue;
            };
            let zone = key.text.clone();
            let zone_field = format!("{field}.{zone}");
            self.locations.insert(zone_field.clone(), entry.key.location);
            if zones.contains_key(&zone) {
                self.error(
                    entry.key.location,
                    &zone_field,
                    format!("zone `{zone}` is listed twice"),
                    "keep one of them",
                );
                all_valid = false;
                continue;
            }
            let Some(fields) = self.open_mapping(
                &entry.value,
                &zone_field,
                HOST_POOL_ZONE_KEYS,
                UnknownKeys::Refuse,
            ) else {
                all_valid = false;
                continue;
            };
            let max = self.required(&fields, "max", Self::read_at_least_one);
            match max.into_required() {
                Some(max) => {
                    zones.insert(zone.clone(), HostPoolZone { max });
                    order.push(zone);
                }
                None => all_valid = false,
            }
        }
        all_valid.then_some((zones, order))
    }

    /// A count of hosts, at least 1.
    fn read_at_least_one(&mut self, node: &Node, field: &str) -> Option<u32> {
        let value = self.read_u32(node, field)?;
        if value == 0 {
            self.error(
                node.location,
                field,
                "max must be at least 1".to_owned(),
                "give the most hosts, e.g. `max: 10`; remove the zone to allow none there",
            );
            return None;
        }
        Some(value)
    }

    /// `scrubbing: off | auto | <duration>`.
    fn read_scrubbing(&mut self, node: &Node, field: &str) -> Option<Scrubbing> {
        let text = self.read_string(node, field)?;
        match text.as_str() {
            "off" => return Some(Scrubbing::Off),
            "auto" => return Some(Scrubbing::Auto),
            _ => {}
        }
        match humantime::parse_duration(&text) {
            Ok(delay) if delay < MIN_SCRUBBING_DELAY => {
                self.error(
                    node.location,
                    field,
                    format!("a scrubbing delay of `{text}` is shorter than 1m"),
                    "write `1m` or longer: idle hosts are not checked more often than that",
                );
                None
            }
            Ok(delay) => self
                .read_duration(node, field, MAX_SCRUBBING_DELAY)
                .map(|_| Scrubbing::After(delay)),
            Err(_) => {
                let help = match closest_match(&text, ["off", "auto"]) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "write `off`, `auto`, or a duration such as `5m`".to_owned(),
                };
                self.error(
                    node.location,
                    field,
                    format!("`{text}` is not `off`, `auto` or a duration"),
                    help,
                );
                None
            }
        }
    }

    /// `host_pool: NAME` on an entry.
    pub(super) fn read_host_pool_name(&mut self, node: &Node, field: &str) -> Option<String> {
        self.read_non_empty_string(node, field, "the name of a pool under `host_pools`")
    }

    /// Each entry's `host_pool` names a pool whose zones are in the entry's region and whose
    /// instance type and zones agree with the entry's.
    pub(super) fn check_host_pool_references(
        &mut self,
        instances: &[InstanceSpec],
        pools: &BTreeMap<String, HostPoolSpec>,
    ) {
        for (index, instance) in instances.iter().enumerate() {
            let Some(name) = &instance.host_pool else { continue };
            let field = format!("instances[{index}].host_pool");
            let Some(location) = self.location_of(&field) else { continue };
            let Some(pool) = pools.get(name) else {
                let help = match closest_match(name, pools.keys().map(String::as_str)) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None if pools.is_empty() => {
                        "define it at the top under `host_pools:`".to_owned()
                    }
                    None => format!(
                        "name one of the pools under `host_pools`: {}",
                        pools.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                    ),
                };
                self.error(location, &field, format!("no host pool is named `{name}`"), help);
                continue;
            };
            for zone in pool.zones.keys() {
                if !zone_is_in_region(zone, &instance.region) {
                    let zone_location = self
                        .location_of(&format!("host_pools.{name}.zones.{zone}"))
                        .unwrap_or(location);
                    self.error(
                        zone_location,
                        &format!("host_pools.{name}.zones.{zone}"),
                        format!(
                            "zone `{zone}` is not in the region {} of instances[{index}] (`{}`), which uses this pool",
                            instance.region, instance.name
                        ),
                        format!(
                            "give the pool zones of {}, or a pool of its own per region",
                            instance.region
                        ),
                    );
                }
            }
            if let Some(instance_type) = &instance.instance_type
                && *instance_type != pool.instance_type
            {
                let type_field = format!("instances[{index}].instance_type");
                let type_location = self.location_of(&type_field).unwrap_or(location);
                self.error(
                    type_location,
                    &type_field,
                    format!(
                        "the entry's instance type `{instance_type}` is not its pool's `{}`",
                        pool.instance_type
                    ),
                    format!(
                        "write `instance_type: {}`, as the pool's hosts run",
                        pool.instance_type
                    ),
                );
            }
            if !instance.instance_types.is_empty() || instance.requirements.is_some() {
                self.error(
                    location,
                    &field,
                    "an entry on a host pool cannot also have `instance_types` or `requirements`"
                        .to_owned(),
                    "the pool's `instance_type` decides: remove `instance_types` and `requirements`",
                );
            }
            for (zone_index, zone) in instance.zones.iter().enumerate() {
                if !pool.zones.contains_key(zone) {
                    let zone_field = format!("instances[{index}].zones[{zone_index}]");
                    let zone_location = self.location_of(&zone_field).unwrap_or(location);
                    self.error(
                        zone_location,
                        &zone_field,
                        format!("zone `{zone}` is not one of the pool `{name}`'s zones"),
                        format!(
                            "name zones of the pool ({}), or add `{zone}` to the pool",
                            pool.zone_order.join(", ")
                        ),
                    );
                }
            }
        }
    }
}
