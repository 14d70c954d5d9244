//! The capacity keys of an instance entry: which instance types may run it (`instance_types`,
//! `requirements`), in which market (`market`) and in which zones (`zones`).
//!
//! `requirements` carries the fields of AWS's `InstanceRequirements` under their snake_case
//! names, with AWS's value names, so a user can carry them to an EC2 Fleet or an Auto Scaling
//! group unchanged; flotilla evaluates them itself against the instance catalog (moto and some
//! partitions have no `GetInstanceTypesFromInstanceRequirements`), in `flotilla-capacity`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a group's machines run: on-demand, spot, or spot with on-demand for what spot cannot
/// give.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    /// On-demand only.
    #[default]
    OnDemand,
    /// Spot only; the launch fails, naming the pools it tried, when spot cannot give every
    /// machine before the launch deadline.
    Spot,
    /// Spot from every eligible pool; on-demand for what spot cannot give before the launch
    /// deadline.
    PreferSpot,
}

impl Market {
    pub fn as_str(self) -> &'static str {
        match self {
            Market::OnDemand => "on-demand",
            Market::Spot => "spot",
            Market::PreferSpot => "prefer-spot",
        }
    }

    /// Whether the group asks for spot first.
    pub fn wants_spot(self) -> bool {
        !matches!(self, Market::OnDemand)
    }
}

impl std::fmt::Display for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bound pair `{min, max}`; either may be left out (no bound on that side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bounds<T> {
    /// The least value allowed (inclusive); no lower bound when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<T>,
    /// The greatest value allowed (inclusive); no upper bound when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<T>,
}

impl<T: PartialOrd + Copy> Bounds<T> {
    /// Whether `value` lies within the bounds (inclusive).
    pub fn contains(&self, value: T) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }
}

/// `included`, `excluded` or `required`, as AWS writes them for `BareMetal`,
/// `BurstablePerformance` and `LocalStorage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Inclusion {
    /// Types with and without the attribute.
    Included,
    /// Only types without it.
    Excluded,
    /// Only types with it.
    Required,
}

impl Inclusion {
    /// Whether a type that `has` the attribute passes.
    pub fn admits(self, has: bool) -> bool {
        match self {
            Inclusion::Included => true,
            Inclusion::Excluded => !has,
            Inclusion::Required => has,
        }
    }
}

/// `CpuManufacturers` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CpuManufacturer {
    Intel,
    Amd,
    AmazonWebServices,
    Apple,
}

/// `InstanceGenerations` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceGeneration {
    Current,
    Previous,
}

/// `AcceleratorTypes` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorType {
    Gpu,
    Fpga,
    Inference,
    Media,
}

/// `AcceleratorManufacturers` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AcceleratorManufacturer {
    AmazonWebServices,
    Amd,
    Habana,
    Nvidia,
    Xilinx,
}

/// Attribute-based instance type selection: AWS's `InstanceRequirements`, in snake_case. As in
/// AWS, `vcpu_count` and `memory_mib` are required with a `min`; several values of one key
/// mean any of them, several keys mean all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRequirements {
    /// vCPUs per instance (`VCpuCount`), `min` required.
    pub vcpu_count: Bounds<u32>,
    /// Memory per instance in MiB (`MemoryMiB`), `min` required.
    pub memory_mib: Bounds<u64>,
    /// Memory per vCPU in GiB (`MemoryGiBPerVCpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gib_per_vcpu: Option<Bounds<f64>>,
    /// `intel`, `amd`, `amazon-web-services`, `apple` (`CpuManufacturers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_manufacturers: Vec<CpuManufacturer>,
    /// `current`, `previous` (`InstanceGenerations`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_generations: Vec<InstanceGeneration>,
    /// Burstable (T) types: `included`, `excluded` (AWS's default) or `required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burstable_performance: Option<Inclusion>,
    /// Bare metal types: `included`, `excluded` (AWS's default) or `required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare_metal: Option<Inclusion>,
    /// Types with instance store volumes: `included` (AWS's default), `excluded` or `required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_storage: Option<Inclusion>,
    /// Accelerators per instance (`AcceleratorCount`); `{max: 0}` excludes accelerated types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_count: Option<Bounds<u32>>,
    /// `gpu`, `fpga`, `inference`, `media` (`AcceleratorTypes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accelerator_types: Vec<AcceleratorType>,
    /// `amazon-web-services`, `amd`, `habana`, `nvidia`, `xilinx` (`AcceleratorManufacturers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accelerator_manufacturers: Vec<AcceleratorManufacturer>,
    /// Only these types (`AllowedInstanceTypes`); `*` matches any characters, e.g. `m7*`,
    /// `c6g.*`. Exclusive with `excluded_instance_types`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_instance_types: Vec<String>,
    /// Never these types (`ExcludedInstanceTypes`), with the same wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_instance_types: Vec<String>,
    /// Baseline network bandwidth in Gbit/s (`NetworkBandwidthGbps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_bandwidth_gbps: Option<Bounds<f64>>,
    /// Spot price protection (`SpotMaxPricePercentageOverLowestPrice`): no spot type priced
    /// more than this percentage above the cheapest matching type. AWS's default is 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_max_price_percentage_over_lowest_price: Option<u32>,
    /// On-demand price protection (`OnDemandMaxPricePercentageOverLowestPrice`). AWS's default
    /// is 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_max_price_percentage_over_lowest_price: Option<u32>,
}

/// AWS's default spot price protection, in percent over the lowest price.
pub const DEFAULT_SPOT_PRICE_PROTECTION: u32 = 100;
/// AWS's default on-demand price protection, in percent over the lowest price.
pub const DEFAULT_ON_DEMAND_PRICE_PROTECTION: u32 = 20;

/// Whether `name` matches the AWS instance type pattern `pattern`, where `*` stands for any
/// characters (`m7*`, `c6g.*`, `*.metal`); without `*` the names must be equal.
pub fn instance_type_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(index) => rest = &rest[index + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether `name` looks like an EC2 instance type: `<family>.<size>` in lower-case letters,
/// digits and `-` (`m7i.large`, `u-6tb1.metal`, `mac2-m2pro.metal`).
pub fn looks_like_instance_type(name: &str) -> bool {
    let Some((family, size)) = name.split_once('.') else {
        return false;
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    valid(family) && valid(size) && family.as_bytes()[0].is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_aws_describes() {
        for (pattern, name, matches) in [
            ("m7i.large", "m7i.large", true),
            ("m7i.large", "m7i.xlarge", false),
            ("m7*", "m7i.large", true),
            ("m7*", "m6i.large", false),
            ("c6g.*", "c6g.metal", true),
            ("c6g.*", "c6gn.large", false),
            ("*.metal", "m5.metal", true),
            ("*.metal", "m5.large", false),
            ("r*.*large", "r6i.2xlarge", true),
            ("*", "anything.at-all", true),
            ("m*i*", "m7i.large", true),
            ("m*i*", "c7i.large", false),
            ("m*i.*", "m7g.xlarge", false),
            ("m*i.*", "m7i.xlarge", true),
        ] {
            assert_eq!(instance_type_matches(pattern, name), matches, "{pattern} {name}");
        }
    }

    #[test]
    fn instance_type_names_are_recognised() {
        for good in ["m7i.large", "u-6tb1.metal", "mac2-m2pro.metal", "t4g.nano", "c6in.32xlarge"] {
            assert!(looks_like_instance_type(good), "{good}");
        }
        for bad in ["m7i", "M7i.large", ".large", "m7i.", "m7i large", "7i.large"] {
            assert!(!looks_like_instance_type(bad), "{bad}");
        }
    }

    #[test]
    fn inclusion_and_bounds() {
        assert!(Inclusion::Included.admits(true) && Inclusion::Included.admits(false));
        assert!(Inclusion::Excluded.admits(false) && !Inclusion::Excluded.admits(true));
        assert!(Inclusion::Required.admits(true) && !Inclusion::Required.admits(false));
        let bounds = Bounds { min: Some(2), max: Some(8) };
        assert!(bounds.contains(2) && bounds.contains(8) && !bounds.contains(9));
        assert!(Bounds::<u32> { min: None, max: None }.contains(1000));
    }
}
