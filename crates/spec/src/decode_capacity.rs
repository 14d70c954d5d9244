//! Decoding an instance entry's capacity keys: `instance_types`, `requirements`, `market` and
//! `zones` (flotilla's own mappings: unknown keys are errors). Whether the named types exist,
//! suit the binary and are offered in the region needs the instance catalog, so it is checked
//! later (`flotilla-capacity`), at the places recorded here.

use super::reader::{
    Decoder, KeySpec, Slot, UnknownKeys, flotilla, flotilla_required, last_segment, plain_decimal,
};
use crate::capacity::{
    AcceleratorManufacturer, AcceleratorType, Bounds, CpuManufacturer, Inclusion,
    InstanceGeneration, InstanceRequirements, Market, looks_like_instance_type,
};
use crate::suggest::closest_match;
use crate::tree::Node;

pub(crate) const REQUIREMENTS_KEYS: &[KeySpec] = &[
    flotilla_required("vcpu_count", "add `vcpu_count: {min: 2}`: AWS requires a vCPU range"),
    flotilla_required("memory_mib", "add `memory_mib: {min: 4096}`: AWS requires a memory range"),
    flotilla("memory_gib_per_vcpu"),
    flotilla("cpu_manufacturers"),
    flotilla("instance_generations"),
    flotilla("burstable_performance"),
    flotilla("bare_metal"),
    flotilla("local_storage"),
    flotilla("accelerator_count"),
    flotilla("accelerator_types"),
    flotilla("accelerator_manufacturers"),
    flotilla("allowed_instance_types"),
    flotilla("excluded_instance_types"),
    flotilla("network_bandwidth_gbps"),
    flotilla("spot_max_price_percentage_over_lowest_price"),
    flotilla("on_demand_max_price_percentage_over_lowest_price"),
];

pub(crate) const BOUNDS_KEYS: &[KeySpec] = &[flotilla("min"), flotilla("max")];

/// The values of an enumerated requirement: (name as written, value).
type Choices<T> = &'static [(&'static str, T)];

const CPU_MANUFACTURERS: Choices<CpuManufacturer> = &[
    ("intel", CpuManufacturer::Intel),
    ("amd", CpuManufacturer::Amd),
    ("amazon-web-services", CpuManufacturer::AmazonWebServices),
    ("apple", CpuManufacturer::Apple),
];
const GENERATIONS: Choices<InstanceGeneration> =
    &[("current", InstanceGeneration::Current), ("previous", InstanceGeneration::Previous)];
const INCLUSIONS: Choices<Inclusion> = &[
    ("included", Inclusion::Included),
    ("excluded", Inclusion::Excluded),
    ("required", Inclusion::Required),
];
const ACCELERATOR_TYPES: Choices<AcceleratorType> = &[
    ("gpu", AcceleratorType::Gpu),
    ("fpga", AcceleratorType::Fpga),
    ("inference", AcceleratorType::Inference),
    ("media", AcceleratorType::Media),
];
const ACCELERATOR_MANUFACTURERS: Choices<AcceleratorManufacturer> = &[
    ("amazon-web-services", AcceleratorManufacturer::AmazonWebServices),
    ("amd", AcceleratorManufacturer::Amd),
    ("habana", AcceleratorManufacturer::Habana),
    ("nvidia", AcceleratorManufacturer::Nvidia),
    ("xilinx", AcceleratorManufacturer::Xilinx),
];
const MARKETS: Choices<Market> =
    &[("on-demand", Market::OnDemand), ("spot", Market::Spot), ("prefer-spot", Market::PreferSpot)];

/// A number a bound may hold.
trait BoundValue: Copy + PartialOrd + std::fmt::Display {
    /// Reads `text`, a plain YAML number.
    fn parse(decoder: &mut Decoder<'_>, node: &Node, field: &str) -> Option<Self>;
}

impl BoundValue for u32 {
    fn parse(decoder: &mut Decoder<'_>, node: &Node, field: &str) -> Option<u32> {
        decoder.read_u32(node, field)
    }
}

impl BoundValue for u64 {
    fn parse(decoder: &mut Decoder<'_>, node: &Node, field: &str) -> Option<u64> {
        decoder.read_u32(node, field).map(u64::from)
    }
}

impl BoundValue for f64 {
    fn parse(decoder: &mut Decoder<'_>, node: &Node, field: &str) -> Option<f64> {
        let value = node
            .as_scalar()
            .filter(|s| s.style == crate::tree::ScalarStyle::Plain)
            .and_then(|scalar| match scalar.as_integer().and_then(|i| i.value()) {
                Some(integer) => Some(integer as f64),
                None => plain_decimal(scalar),
            });
        match value {
            Some(value) if value >= 0.0 => Some(value),
            _ => {
                decoder.error(
                    node.location,
                    field,
                    format!("expected a number of 0 or more, found {}", node.describe()),
                    "write a plain number, e.g. `4` or `2.5`",
                );
                None
            }
        }
    }
}

impl Decoder<'_> {
    /// `instance_types: [m7i.large, m6i.large]`: a non-empty list of type names, each once.
    pub(super) fn read_instance_types(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        let names = self.read_sequence(node, field, |decoder, item, item_field| {
            decoder.read_type_name(item, item_field)
        })?;
        if names.is_empty() {
            self.error(
                node.location,
                field,
                "`instance_types` is empty".to_owned(),
                "list the instance types that may run this entry, or remove the key",
            );
            return None;
        }
        let mut seen: Vec<&String> = Vec::new();
        for (index, name) in names.iter().enumerate() {
            if seen.contains(&name) {
                let item = format!("{field}[{index}]");
                let location = self.location_of(&item).unwrap_or(node.location);
                self.error(
                    location,
                    &item,
                    format!("`{name}` is listed twice"),
                    "keep one of them",
                );
                return None;
            }
            seen.push(name);
        }
        Some(names)
    }

    /// One instance type name.
    fn read_type_name(&mut self, node: &Node, field: &str) -> Option<String> {
        let name =
            self.read_non_empty_string(node, field, "an EC2 instance type, e.g. `m7i.large`")?;
        if !looks_like_instance_type(&name) {
            let lowered = name.to_ascii_lowercase();
            let help = if lowered != name && looks_like_instance_type(&lowered) {
                format!("instance types are lower-case: `{lowered}`")
            } else {
                "write a family and a size, e.g. `m7i.large` or `c7g.xlarge`".to_owned()
            };
            self.error(
                node.location,
                field,
                format!("`{name}` is not an instance type name"),
                help,
            );
            return None;
        }
        Some(name)
    }

    /// `market: on-demand | spot | prefer-spot`.
    pub(super) fn read_market(&mut self, node: &Node, field: &str) -> Option<Market> {
        self.read_choice(node, field, MARKETS)
    }

    /// `zones: [us-east-1a, us-east-1b]`: zones of the entry's `region`, each once.
    pub(super) fn read_zones(
        &mut self,
        node: &Node,
        field: &str,
        region: Option<&str>,
    ) -> Option<Vec<String>> {
        let zones = self.read_sequence(node, field, |decoder, item, item_field| {
            let zone =
                decoder.read_non_empty_string(item, item_field, "a zone, e.g. `us-east-1a`")?;
            if let Some(region) = region
                && region != "local"
                && !(zone.starts_with(region) && zone.len() > region.len())
            {
                decoder.error(
                    item.location,
                    item_field,
                    format!("zone `{zone}` is not in the entry's region {region}"),
                    format!("name zones of {region}, e.g. `{region}a`, or change `region`"),
                );
                return None;
            }
            Some(zone)
        })?;
        if zones.is_empty() {
            self.error(
                node.location,
                field,
                "`zones` is empty".to_owned(),
                "list the zones machines may run in, or remove the key for every zone",
            );
            return None;
        }
        let mut unique = zones.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != zones.len() {
            self.error(
                node.location,
                field,
                "a zone is listed twice".to_owned(),
                "list each zone once",
            );
            return None;
        }
        Some(zones)
    }

    /// `requirements:` AWS's `InstanceRequirements` in snake_case.
    pub(super) fn read_requirements(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<InstanceRequirements> {
        let fields = self.open_mapping(node, field, REQUIREMENTS_KEYS, UnknownKeys::Refuse)?;
        let vcpu = self.required(&fields, "vcpu_count", |d, n, f| d.read_bounds::<u32>(n, f, true));
        let memory =
            self.required(&fields, "memory_mib", |d, n, f| d.read_bounds::<u64>(n, f, true));
        let per_vcpu = self
            .optional(&fields, "memory_gib_per_vcpu", |d, n, f| d.read_bounds::<f64>(n, f, false));
        let cpu = self.optional(&fields, "cpu_manufacturers", |d, n, f| {
            d.read_choices(n, f, CPU_MANUFACTURERS)
        });
        let generations = self
            .optional(&fields, "instance_generations", |d, n, f| d.read_choices(n, f, GENERATIONS));
        let burstable = self
            .optional(&fields, "burstable_performance", |d, n, f| d.read_choice(n, f, INCLUSIONS));
        let bare_metal =
            self.optional(&fields, "bare_metal", |d, n, f| d.read_choice(n, f, INCLUSIONS));
        let local_storage =
            self.optional(&fields, "local_storage", |d, n, f| d.read_choice(n, f, INCLUSIONS));
        let accelerators = self
            .optional(&fields, "accelerator_count", |d, n, f| d.read_bounds::<u32>(n, f, false));
        let accelerator_types = self.optional(&fields, "accelerator_types", |d, n, f| {
            d.read_choices(n, f, ACCELERATOR_TYPES)
        });
        let accelerator_manufacturers =
            self.optional(&fields, "accelerator_manufacturers", |d, n, f| {
                d.read_choices(n, f, ACCELERATOR_MANUFACTURERS)
            });
        let allowed = self.optional(&fields, "allowed_instance_types", Self::read_type_patterns);
        let excluded = self.optional(&fields, "excluded_instance_types", Self::read_type_patterns);
        let bandwidth = self.optional(&fields, "network_bandwidth_gbps", |d, n, f| {
            d.read_bounds::<f64>(n, f, false)
        });
        let spot_protection =
            self.optional(&fields, "spot_max_price_percentage_over_lowest_price", Self::read_u32);
        let on_demand_protection = self.optional(
            &fields,
            "on_demand_max_price_percentage_over_lowest_price",
            Self::read_u32,
        );
        if let (Some(location), true) = (excluded.location(), allowed.location().is_some()) {
            self.error(
                location,
                &fields.child("excluded_instance_types"),
                "`allowed_instance_types` and `excluded_instance_types` cannot both be given"
                    .to_owned(),
                "AWS takes one of them: keep the list that says what you mean",
            );
            return None;
        }
        Some(InstanceRequirements {
            vcpu_count: vcpu.into_required()?,
            memory_mib: memory.into_required()?,
            memory_gib_per_vcpu: per_vcpu.into_optional()?,
            cpu_manufacturers: cpu.into_optional()?.unwrap_or_default(),
            instance_generations: generations.into_optional()?.unwrap_or_default(),
            burstable_performance: burstable.into_optional()?,
            bare_metal: bare_metal.into_optional()?,
            local_storage: local_storage.into_optional()?,
            accelerator_count: accelerators.into_optional()?,
            accelerator_types: accelerator_types.into_optional()?.unwrap_or_default(),
            accelerator_manufacturers: accelerator_manufacturers
                .into_optional()?
                .unwrap_or_default(),
            allowed_instance_types: allowed.into_optional()?.unwrap_or_default(),
            excluded_instance_types: excluded.into_optional()?.unwrap_or_default(),
            network_bandwidth_gbps: bandwidth.into_optional()?,
            spot_max_price_percentage_over_lowest_price: spot_protection.into_optional()?,
            on_demand_max_price_percentage_over_lowest_price: on_demand_protection
                .into_optional()?,
        })
    }

    /// `{min, max}`; `min` required when `min_required` (AWS's rule for vCPUs and memory).
    fn read_bounds<T: BoundValue>(
        &mut self,
        node: &Node,
        field: &str,
        min_required: bool,
    ) -> Option<Bounds<T>> {
        let fields = self.open_mapping(node, field, BOUNDS_KEYS, UnknownKeys::Refuse)?;
        let min = self.optional(&fields, "min", |d, n, f| T::parse(d, n, f));
        let max = self.optional(&fields, "max", |d, n, f| T::parse(d, n, f));
        if min_required && matches!(min, Slot::Absent) {
            self.error(
                node.location,
                &fields.child("min"),
                format!("`{}` needs a `min`", last_segment(field)),
                "AWS requires a lower bound here: add `min:` (and `max:` if there is an upper bound)",
            );
            return None;
        }
        let (min_location, max_location) = (min.location(), max.location());
        let bounds = Bounds { min: min.into_optional()?, max: max.into_optional()? };
        if let (Some(low), Some(high)) = (bounds.min, bounds.max)
            && low > high
        {
            let location = max_location.or(min_location).unwrap_or(node.location);
            self.error(
                location,
                &fields.child("max"),
                format!("max {high} is less than min {low}"),
                "make max at least min",
            );
            return None;
        }
        Some(bounds)
    }

    /// One of `choices`, by name.
    fn read_choice<T: Copy>(&mut self, node: &Node, field: &str, choices: Choices<T>) -> Option<T> {
        let text = self.read_string(node, field)?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let help = match closest_match(&text, names.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("write one of: {}", names.join(", ")),
        };
        self.error(
            node.location,
            field,
            format!("unknown value `{text}` for `{}`", last_segment(field)),
            help,
        );
        None
    }

    /// A list of `choices`, each once.
    fn read_choices<T: Copy + PartialEq>(
        &mut self,
        node: &Node,
        field: &str,
        choices: Choices<T>,
    ) -> Option<Vec<T>> {
        let values = self.read_sequence(node, field, |d, item, item_field| {
            d.read_choice(item, item_field, choices)
        })?;
        let mut unique: Vec<T> = Vec::new();
        for value in values {
            if !unique.contains(&value) {
                unique.push(value);
            }
        }
        Some(unique)
    }

    /// Instance type patterns with `*` wildcards (`m7*`, `c6g.*`).
    fn read_type_patterns(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        self.read_sequence(node, field, |decoder, item, item_field| {
            let pattern = decoder.read_non_empty_string(
                item,
                item_field,
                "a type or a pattern such as `m7*`",
            )?;
            let ok = pattern.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'*'
            });
            if !ok {
                decoder.error(
                    item.location,
                    item_field,
                    format!("`{pattern}` is not an instance type pattern"),
                    "use lower-case type names with `*` for any characters, e.g. `m7*` or `c6g.*`",
                );
                return None;
            }
            Some(pattern)
        })
    }
}
