//! The instance catalog: what each instance type is (architecture, vCPUs, memory,
//! accelerators, …) and in which zones each region offers it.
//!
//! It is filled from EC2's `DescribeInstanceTypes` and `DescribeInstanceTypeOfferings`
//! (location type `availability-zone`); [`InstanceType::from_aws_json`] reads the JSON those
//! calls answer with (AWS's field names), which is also the form moto ships and the form the
//! AWS provider caches. Nothing here calls AWS: the provider fills a [`Catalog`] and hands it
//! over.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_spec::capacity::{AcceleratorManufacturer, AcceleratorType, CpuManufacturer};
use serde::{Deserialize, Serialize};

/// A processor architecture as EC2 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
    #[serde(rename = "x86_64_mac")]
    X86_64Mac,
    #[serde(rename = "arm64_mac")]
    Arm64Mac,
    #[serde(rename = "i386")]
    I386,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
            Architecture::X86_64Mac => "x86_64_mac",
            Architecture::Arm64Mac => "arm64_mac",
            Architecture::I386 => "i386",
        }
    }

    pub fn parse(text: &str) -> Option<Architecture> {
        match text {
            "x86_64" => Some(Architecture::X86_64),
            "arm64" => Some(Architecture::Arm64),
            "x86_64_mac" => Some(Architecture::X86_64Mac),
            "arm64_mac" => Some(Architecture::Arm64Mac),
            "i386" => Some(Architecture::I386),
            _ => None,
        }
    }

    /// Whether a Linux binary built for `binary` runs on a machine of this architecture.
    pub fn runs(self, binary: Architecture) -> bool {
        matches!(
            (self, binary),
            (Architecture::X86_64, Architecture::X86_64)
                | (Architecture::X86_64, Architecture::I386)
                | (Architecture::Arm64, Architecture::Arm64)
        )
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The architecture of instance type `name` from its name alone, for checks made without the
/// catalog: Mac families (`mac1` x86-64, others Apple silicon), `a1`, and families whose
/// letters after the generation number hold a `g` (Graviton: `m7g`, `c6gn`, `t4g`, `x2gd`,
/// `is4gen`, `g5g`, `hpc7g`) are arm64; other families are x86-64. `None` for a name that is
/// not `<family>.<size>`.
pub fn guess_architecture(name: &str) -> Option<Architecture> {
    let family = name.split_once('.')?.0;
    if let Some(rest) = family.strip_prefix("mac") {
        return Some(if rest.starts_with('1') {
            Architecture::X86_64Mac
        } else {
            Architecture::Arm64Mac
        });
    }
    if family == "a1" {
        return Some(Architecture::Arm64);
    }
    let digits = family.find(|c: char| c.is_ascii_digit())?;
    let after = family[digits..].trim_start_matches(|c: char| c.is_ascii_digit());
    Some(if after.contains('g') { Architecture::Arm64 } else { Architecture::X86_64 })
}

/// One accelerator kind on an instance type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accelerator {
    pub kind: AcceleratorType,
    pub manufacturer: Option<AcceleratorManufacturer>,
    pub count: u32,
}

/// What an instance type is, as far as placement and requirements need to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    pub name: String,
    pub architectures: Vec<Architecture>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub cpu_manufacturer: Option<CpuManufacturer>,
    pub current_generation: bool,
    pub burstable: bool,
    pub bare_metal: bool,
    pub local_storage: bool,
    pub accelerators: Vec<Accelerator>,
    /// Baseline network bandwidth over all network cards, Gbit/s.
    pub network_bandwidth_gbps: Option<f64>,
    /// Whether spot (and on-demand) capacity is sold for it (`SupportedUsageClasses`).
    pub spot: bool,
    pub on_demand: bool,
}

impl InstanceType {
    /// The accelerators of `kind`, summed.
    pub fn accelerator_count(&self) -> u32 {
        self.accelerators.iter().map(|a| a.count).sum()
    }

    /// Reads one `DescribeInstanceTypes` item (AWS's JSON field names).
    pub fn from_aws_item(item: &AwsInstanceType) -> InstanceType {
        let processor = item.processor_info.as_ref();
        let architectures = processor
            .map(|p| {
                p.supported_architectures.iter().filter_map(|a| Architecture::parse(a)).collect()
            })
            .unwrap_or_default();
        let cpu_manufacturer = processor.and_then(|p| match p.manufacturer.as_deref() {
            Some("Intel") => Some(CpuManufacturer::Intel),
            Some("AMD") => Some(CpuManufacturer::Amd),
            Some("AWS") => Some(CpuManufacturer::AmazonWebServices),
            Some("Apple") => Some(CpuManufacturer::Apple),
            _ => None,
        });
        let mut accelerators = Vec::new();
        let mut add = |kind, devices: Option<&AwsDevices>| {
            for device in devices.map(|d| d.devices()).unwrap_or_default() {
                accelerators.push(Accelerator {
                    kind,
                    manufacturer: accelerator_manufacturer(device.manufacturer.as_deref()),
                    count: device.count.unwrap_or(1),
                });
            }
        };
        add(AcceleratorType::Gpu, item.gpu_info.as_ref());
        add(AcceleratorType::Fpga, item.fpga_info.as_ref());
        add(AcceleratorType::Inference, item.inference_accelerator_info.as_ref());
        add(AcceleratorType::Media, item.media_accelerator_info.as_ref());
        let bandwidth: f64 = item
            .network_info
            .as_ref()
            .map(|n| n.network_cards.iter().filter_map(|c| c.baseline_bandwidth_in_gbps).sum())
            .unwrap_or(0.0);
        let usage = &item.supported_usage_classes;
        InstanceType {
            name: item.instance_type.clone(),
            architectures,
            vcpus: item.v_cpu_info.as_ref().map_or(0, |v| v.default_v_cpus),
            memory_mib: item.memory_info.as_ref().map_or(0, |m| m.size_in_mib),
            cpu_manufacturer,
            current_generation: item.current_generation.unwrap_or(false),
            burstable: item.burstable_performance_supported.unwrap_or(false),
            bare_metal: item.bare_metal.unwrap_or(false),
            local_storage: item.instance_storage_supported.unwrap_or(false),
            accelerators,
            network_bandwidth_gbps: (bandwidth > 0.0).then_some(bandwidth),
            spot: usage.iter().any(|u| u == "spot"),
            on_demand: usage.is_empty() || usage.iter().any(|u| u == "on-demand"),
        }
    }

    /// Reads `DescribeInstanceTypes` output: a JSON array of items, or an object of items keyed
    /// by name (moto's resource file).
    pub fn from_aws_json(json: &[u8]) -> Result<Vec<InstanceType>, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Items {
            List(Vec<AwsInstanceType>),
            Map(BTreeMap<String, AwsInstanceType>),
        }
        let items: Vec<AwsInstanceType> = match serde_json::from_slice(json)? {
            Items::List(items) => items,
            Items::Map(items) => items.into_values().collect(),
        };
        Ok(items.iter().map(InstanceType::from_aws_item).collect())
    }
}

fn accelerator_manufacturer(name: Option<&str>) -> Option<AcceleratorManufacturer> {
    match name? {
        "NVIDIA" => Some(AcceleratorManufacturer::Nvidia),
        "AMD" => Some(AcceleratorManufacturer::Amd),
        "AWS" => Some(AcceleratorManufacturer::AmazonWebServices),
        "Xilinx" => Some(AcceleratorManufacturer::Xilinx),
        "Habana" => Some(AcceleratorManufacturer::Habana),
        _ => None,
    }
}

/// One `DescribeInstanceTypes` item, the fields flotilla reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsInstanceType {
    pub instance_type: String,
    #[serde(default)]
    pub processor_info: Option<AwsProcessorInfo>,
    #[serde(default, rename = "VCpuInfo")]
    pub v_cpu_info: Option<AwsVCpuInfo>,
    #[serde(default)]
    pub memory_info: Option<AwsMemoryInfo>,
    #[serde(default)]
    pub current_generation: Option<bool>,
    #[serde(default)]
    pub burstable_performance_supported: Option<bool>,
    #[serde(default)]
    pub bare_metal: Option<bool>,
    #[serde(default)]
    pub instance_storage_supported: Option<bool>,
    #[serde(default)]
    pub gpu_info: Option<AwsDevices>,
    #[serde(default)]
    pub fpga_info: Option<AwsDevices>,
    #[serde(default)]
    pub inference_accelerator_info: Option<AwsDevices>,
    #[serde(default)]
    pub media_accelerator_info: Option<AwsDevices>,
    #[serde(default)]
    pub network_info: Option<AwsNetworkInfo>,
    #[serde(default)]
    pub supported_usage_classes: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsProcessorInfo {
    #[serde(default)]
    pub supported_architectures: Vec<String>,
    #[serde(default)]
    pub manufacturer: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AwsVCpuInfo {
    #[serde(rename = "DefaultVCpus")]
    pub default_v_cpus: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AwsMemoryInfo {
    #[serde(rename = "SizeInMiB")]
    pub size_in_mib: u64,
}

/// `GpuInfo`, `FpgaInfo`, `InferenceAcceleratorInfo` and `MediaAcceleratorInfo`: a list of
/// devices under one of several names.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsDevices {
    #[serde(default)]
    pub gpus: Vec<AwsDevice>,
    #[serde(default)]
    pub fpgas: Vec<AwsDevice>,
    #[serde(default)]
    pub accelerators: Vec<AwsDevice>,
}

impl AwsDevices {
    fn devices(&self) -> Vec<&AwsDevice> {
        self.gpus.iter().chain(&self.fpgas).chain(&self.accelerators).collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsDevice {
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub manufacturer: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsNetworkInfo {
    #[serde(default)]
    pub network_cards: Vec<AwsNetworkCard>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsNetworkCard {
    #[serde(default)]
    pub baseline_bandwidth_in_gbps: Option<f64>,
}

/// Instance types and, per region, the zones that offer each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub types: BTreeMap<String, InstanceType>,
    /// Region → zone → the types offered there.
    pub offerings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Catalog {
    pub fn with_types(types: impl IntoIterator<Item = InstanceType>) -> Catalog {
        Catalog {
            types: types.into_iter().map(|t| (t.name.clone(), t)).collect(),
            offerings: BTreeMap::new(),
        }
    }

    /// A catalog from names alone, for estimates without access to the account: each type's
    /// architecture from its name ([`guess_architecture`]), its other attributes unknown (0),
    /// and each of `regions` one unnamed zone (the region's own name) offering every type.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>, regions: &[String]) -> Catalog {
        let types = names.into_iter().filter_map(|name| {
            Some(InstanceType {
                name: name.to_owned(),
                architectures: vec![guess_architecture(name)?],
                vcpus: 0,
                memory_mib: 0,
                cpu_manufacturer: None,
                current_generation: true,
                burstable: false,
                bare_metal: false,
                local_storage: false,
                accelerators: Vec::new(),
                network_bandwidth_gbps: None,
                spot: true,
                on_demand: true,
            })
        });
        let mut catalog = Catalog::with_types(types);
        let names: Vec<String> = catalog.types.keys().cloned().collect();
        for region in regions {
            for name in &names {
                catalog.offer(region, region, name);
            }
        }
        catalog
    }

    /// Records that `zone` of `region` offers `instance_type`.
    pub fn offer(&mut self, region: &str, zone: &str, instance_type: &str) {
        self.offerings
            .entry(region.to_owned())
            .or_default()
            .entry(zone.to_owned())
            .or_default()
            .insert(instance_type.to_owned());
    }

    /// Records that `region` has `zone`, whether or not the catalog's types are offered there
    /// (a narrow catalog, of some types only, still knows every zone).
    pub fn add_zone(&mut self, region: &str, zone: &str) {
        self.offerings.entry(region.to_owned()).or_default().entry(zone.to_owned()).or_default();
    }

    /// Reads `DescribeInstanceTypeOfferings` output for `region` (a JSON array of
    /// `{InstanceType, Location}`, the zone as location).
    pub fn offer_from_aws_json(
        &mut self,
        region: &str,
        json: &[u8],
    ) -> Result<(), serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Offering {
            instance_type: String,
            location: String,
        }
        let offerings: Vec<Offering> = serde_json::from_slice(json)?;
        for offering in offerings {
            self.offer(region, &offering.location, &offering.instance_type);
        }
        Ok(())
    }

    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.types.get(name)
    }

    /// Whether the catalog knows `region` (its offerings were read).
    pub fn knows_region(&self, region: &str) -> bool {
        self.offerings.contains_key(region)
    }

    /// The zones of `region` that offer `instance_type`, in name order.
    pub fn zones_offering(&self, region: &str, instance_type: &str) -> Vec<&str> {
        self.offerings
            .get(region)
            .map(|zones| {
                zones
                    .iter()
                    .filter(|(_, types)| types.contains(instance_type))
                    .map(|(zone, _)| zone.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every zone of `region` the catalog knows, in name order.
    pub fn zones(&self, region: &str) -> Vec<&str> {
        self.offerings
            .get(region)
            .map(|z| z.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The known type closest to `name`, for "did you mean": same family first, then by edit
    /// distance.
    pub fn closest_name(&self, name: &str) -> Option<&str> {
        let family = name.split('.').next().unwrap_or(name);
        self.types
            .keys()
            .map(|known| {
                let same_family = known.split('.').next() == Some(family);
                (!same_family, strsim::damerau_levenshtein(name, known), known.as_str())
            })
            .filter(|(_, distance, _)| *distance <= 3)
            .min()
            .map(|(_, _, known)| known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_items_are_read_with_their_attributes() {
        let json = br#"[{"InstanceType": "p4d.24xlarge",
            "ProcessorInfo": {"Manufacturer": "Intel", "SupportedArchitectures": ["x86_64"]},
            "VCpuInfo": {"DefaultVCpus": 96}, "MemoryInfo": {"SizeInMiB": 1179648},
            "CurrentGeneration": true, "BurstablePerformanceSupported": false, "BareMetal": false,
            "InstanceStorageSupported": true,
            "GpuInfo": {"Gpus": [{"Count": 8, "Manufacturer": "NVIDIA", "Name": "A100"}]},
            "NetworkInfo": {"NetworkCards": [{"BaselineBandwidthInGbps": 100.0}, {"BaselineBandwidthInGbps": 100.0}]},
            "SupportedUsageClasses": ["capacity-block", "on-demand", "spot"]},
            {"InstanceType": "mac2.metal", "ProcessorInfo": {"Manufacturer": "Apple",
            "SupportedArchitectures": ["arm64_mac"]}, "VCpuInfo": {"DefaultVCpus": 8},
            "MemoryInfo": {"SizeInMiB": 16384}, "BareMetal": true, "SupportedUsageClasses": ["on-demand"]}]"#;
        let types = InstanceType::from_aws_json(json).unwrap();
        let p4d = &types[0];
        assert_eq!(p4d.architectures, [Architecture::X86_64]);
        assert_eq!((p4d.vcpus, p4d.memory_mib), (96, 1_179_648));
        assert_eq!(p4d.cpu_manufacturer, Some(CpuManufacturer::Intel));
        assert!(p4d.local_storage && p4d.current_generation && p4d.spot && p4d.on_demand);
        assert_eq!(p4d.accelerator_count(), 8);
        assert_eq!(p4d.accelerators[0].manufacturer, Some(AcceleratorManufacturer::Nvidia));
        assert_eq!(p4d.network_bandwidth_gbps, Some(200.0));
        let mac = &types[1];
        assert_eq!(mac.architectures, [Architecture::Arm64Mac]);
        assert!(mac.bare_metal && !mac.spot);
    }

    #[test]
    fn architectures_are_guessed_from_names_as_the_catalog_says() {
        let catalog = crate::testdata::catalog();
        let mut wrong = Vec::new();
        for t in catalog.types.values() {
            let guessed = guess_architecture(&t.name);
            if guessed.is_none_or(|g| !t.architectures.contains(&g)) {
                wrong.push(format!("{} {guessed:?} {:?}", t.name, t.architectures));
            }
        }
        // Every type moto knows (over 1300, AWS's own data) is guessed right.
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn architectures_run_only_their_binaries() {
        assert!(Architecture::X86_64.runs(Architecture::X86_64));
        assert!(!Architecture::Arm64.runs(Architecture::X86_64));
        assert!(!Architecture::X86_64.runs(Architecture::Arm64));
        assert!(!Architecture::Arm64Mac.runs(Architecture::Arm64), "a Mac runs macOS binaries");
    }

    #[test]
    fn offerings_and_did_you_mean() {
        let types =
            ["m7i.large", "m7i.xlarge", "m6i.large", "c7g.large"].map(|name| InstanceType {
                name: name.to_owned(),
                architectures: vec![Architecture::X86_64],
                vcpus: 2,
                memory_mib: 8192,
                cpu_manufacturer: None,
                current_generation: true,
                burstable: false,
                bare_metal: false,
                local_storage: false,
                accelerators: Vec::new(),
                network_bandwidth_gbps: None,
                spot: true,
                on_demand: true,
            });
        let mut catalog = Catalog::with_types(types);
        catalog.offer("us-east-1", "us-east-1b", "m7i.large");
        catalog.offer("us-east-1", "us-east-1a", "m7i.large");
        catalog.offer("us-east-1", "us-east-1a", "c7g.large");
        assert_eq!(catalog.zones_offering("us-east-1", "m7i.large"), ["us-east-1a", "us-east-1b"]);
        assert_eq!(catalog.zones("us-east-1"), ["us-east-1a", "us-east-1b"]);
        assert_eq!(catalog.closest_name("m7i.larg"), Some("m7i.large"));
        assert_eq!(catalog.closest_name("m7i.xlarg"), Some("m7i.xlarge"));
        assert_eq!(catalog.closest_name("zz9.huge"), None);
    }
}
