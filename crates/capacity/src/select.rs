//! Which instance types may run a group, in which order, in which zones: the spec's listed
//! types first (in the spec's order), then the types its `requirements` match, cheapest first,
//! all filtered by the region's offerings, the binary's architecture, the market and `zones`.
//!
//! Requirements are evaluated here, client-side, over the catalog (as Karpenter does; moto has
//! no `GetInstanceTypesFromInstanceRequirements`). AWS's rules are kept: several values of one
//! key mean any of them, several keys mean all of them; `burstable_performance` and
//! `bare_metal` default to `excluded`, `local_storage` to `included`; accelerated types are
//! kept only when `accelerator_count` or another accelerator key asks for them, as AWS keeps
//! them out unless asked; price protection (20 % on-demand, 100 % spot above the cheapest
//! match, or the spec's percentages) drops expensive outliers.
//!
//! At most [`MAX_REQUIREMENT_TYPES`] types come from requirements: a fleet request is built
//! from types × zones, and more types than that only lengthen it.

use flotilla_spec::capacity::{
    DEFAULT_ON_DEMAND_PRICE_PROTECTION, DEFAULT_SPOT_PRICE_PROTECTION, InstanceGeneration,
    InstanceRequirements, Market, instance_type_matches,
};

use crate::catalog::{Architecture, Catalog, InstanceType};
use crate::prices::PriceBook;

/// The most types requirements add to a group.
pub const MAX_REQUIREMENT_TYPES: usize = 20;

/// What a group asks for.
#[derive(Clone, Copy, Debug)]
pub struct Wants<'a> {
    /// Listed types in preference order (`instance_type`, then `instance_types`).
    pub instance_types: &'a [String],
    pub requirements: Option<&'a InstanceRequirements>,
    /// The binary's architecture, when known.
    pub architecture: Option<Architecture>,
    /// Allowed zones; empty means every zone of the region.
    pub zones: &'a [String],
    pub market: Market,
}

/// The types a group may run on in one region, and the zones where any of them is offered.
#[derive(Clone, Debug, PartialEq)]
pub struct Eligible {
    /// In preference order.
    pub types: Vec<String>,
    /// In name order.
    pub zones: Vec<String>,
}

/// Why a group cannot run in a region as asked. Each names what to change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("unknown instance type `{name}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownType { name: String, suggestion: Option<String> },
    #[error("`{name}` is {}, but the binary is {binary}: it cannot run there", type_architectures.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(" or "))]
    WrongArchitecture { name: String, type_architectures: Vec<Architecture>, binary: Architecture },
    #[error("`{name}` is not offered in {region}{}", zones_hint(zones))]
    NotInRegion { name: String, region: String, zones: Vec<String> },
    #[error("`{name}` is not sold as spot capacity")]
    NoSpot { name: String },
    #[error("zone `{zone}` is not a zone of {region} (its zones: {})", zones.join(", "))]
    UnknownZone { zone: String, region: String, zones: Vec<String> },
    #[error(
        "no instance type in {region} meets every requirement; `{attribute}` rules out the most ({excluded} of {total})"
    )]
    NothingMatches { region: String, attribute: &'static str, excluded: usize, total: usize },
    #[error(
        "the entries of availability_zone_group `{group}` have no zone of {region} in common that offers a type to each"
    )]
    NoCommonZone { group: String, region: String },
}

fn zones_hint(zones: &[String]) -> String {
    if zones.is_empty() { String::new() } else { format!(" in zones {}", zones.join(", ")) }
}

/// The eligible types and zones of a group in `region`; every problem found, when none is left
/// or a listed type cannot be used at all.
pub fn eligible(
    catalog: &Catalog,
    region: &str,
    wants: &Wants<'_>,
    prices: &PriceBook,
) -> Result<Eligible, Vec<Problem>> {
    let mut problems = Vec::new();
    let region_zones = catalog.zones(region);
    for zone in wants.zones {
        if !region_zones.contains(&zone.as_str()) {
            problems.push(Problem::UnknownZone {
                zone: zone.clone(),
                region: region.to_owned(),
                zones: region_zones.iter().map(|z| (*z).to_owned()).collect(),
            });
        }
    }
    let zone_allowed = |zone: &str| wants.zones.is_empty() || wants.zones.iter().any(|z| z == zone);
    let offered_zones = |name: &str| -> Vec<String> {
        catalog
            .zones_offering(region, name)
            .into_iter()
            .filter(|zone| zone_allowed(zone))
            .map(str::to_owned)
            .collect()
    };

    let mut types: Vec<String> = Vec::new();
    for name in wants.instance_types {
        let Some(instance) = catalog.instance_type(name) else {
            problems.push(Problem::UnknownType {
                name: name.clone(),
                suggestion: catalog.closest_name(name).map(str::to_owned),
            });
            continue;
        };
        if let Some(problem) = unusable(instance, wants) {
            problems.push(problem);
            continue;
        }
        if offered_zones(name).is_empty() {
            problems.push(Problem::NotInRegion {
                name: name.clone(),
                region: region.to_owned(),
                zones: wants.zones.to_vec(),
            });
            continue;
        }
        if !types.contains(name) {
            types.push(name.clone());
        }
    }
    if let Some(requirements) = wants.requirements {
        match matching_types(catalog, region, requirements, wants, prices, &offered_zones) {
            Ok(matched) => {
                for name in matched {
                    if !types.contains(&name) {
                        types.push(name);
                    }
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() && (types.is_empty() || wants.requirements.is_none()) {
        return Err(problems);
    }
    if types.is_empty() {
        return Err(problems);
    }
    let mut zones: Vec<String> = types.iter().flat_map(|name| offered_zones(name)).collect();
    zones.sort();
    zones.dedup();
    Ok(Eligible { types, zones })
}

/// Why a known type cannot run the group whatever the region, if it cannot.
fn unusable(instance: &InstanceType, wants: &Wants<'_>) -> Option<Problem> {
    if let Some(binary) = wants.architecture
        && !instance.architectures.iter().any(|a| a.runs(binary))
    {
        return Some(Problem::WrongArchitecture {
            name: instance.name.clone(),
            type_architectures: instance.architectures.clone(),
            binary,
        });
    }
    if wants.market == Market::Spot && !instance.spot {
        return Some(Problem::NoSpot { name: instance.name.clone() });
    }
    None
}

/// One requirement check: its key and whether a type passes it.
type Check<'a> = (&'static str, Box<dyn Fn(&InstanceType) -> bool + 'a>);

/// The checks `requirements` makes, one per key given (and AWS's defaults).
fn checks(requirements: &InstanceRequirements) -> Vec<Check<'_>> {
    let r = requirements;
    let mut checks: Vec<Check<'_>> = vec![
        ("vcpu_count", Box::new(|t: &InstanceType| r.vcpu_count.contains(t.vcpus))),
        ("memory_mib", Box::new(|t: &InstanceType| r.memory_mib.contains(t.memory_mib))),
        (
            "burstable_performance",
            Box::new(|t: &InstanceType| {
                r.burstable_performance
                    .unwrap_or(flotilla_spec::capacity::Inclusion::Excluded)
                    .admits(t.burstable)
            }),
        ),
        (
            "bare_metal",
            Box::new(|t: &InstanceType| {
                r.bare_metal
                    .unwrap_or(flotilla_spec::capacity::Inclusion::Excluded)
                    .admits(t.bare_metal)
            }),
        ),
    ];
    if let Some(bounds) = r.memory_gib_per_vcpu {
        checks.push((
            "memory_gib_per_vcpu",
            Box::new(move |t: &InstanceType| {
                t.vcpus > 0 && bounds.contains(t.memory_mib as f64 / 1024.0 / f64::from(t.vcpus))
            }),
        ));
    }
    if !r.cpu_manufacturers.is_empty() {
        checks.push((
            "cpu_manufacturers",
            Box::new(|t: &InstanceType| {
                t.cpu_manufacturer.is_some_and(|m| r.cpu_manufacturers.contains(&m))
            }),
        ));
    }
    if !r.instance_generations.is_empty() {
        checks.push((
            "instance_generations",
            Box::new(|t: &InstanceType| {
                let generation = if t.current_generation {
                    InstanceGeneration::Current
                } else {
                    InstanceGeneration::Previous
                };
                r.instance_generations.contains(&generation)
            }),
        ));
    }
    if let Some(local_storage) = r.local_storage {
        checks.push((
            "local_storage",
            Box::new(move |t: &InstanceType| local_storage.admits(t.local_storage)),
        ));
    }
    let asks_for_accelerators = r.accelerator_count.is_some()
        || !r.accelerator_types.is_empty()
        || !r.accelerator_manufacturers.is_empty();
    match r.accelerator_count {
        Some(bounds) => checks.push((
            "accelerator_count",
            Box::new(move |t: &InstanceType| bounds.contains(t.accelerator_count())),
        )),
        // AWS leaves accelerated types out unless asked for.
        None if !asks_for_accelerators => checks
            .push(("accelerator_count", Box::new(|t: &InstanceType| t.accelerator_count() == 0))),
        None => {}
    }
    if !r.accelerator_types.is_empty() {
        checks.push((
            "accelerator_types",
            Box::new(|t: &InstanceType| {
                t.accelerators.iter().any(|a| r.accelerator_types.contains(&a.kind))
            }),
        ));
    }
    if !r.accelerator_manufacturers.is_empty() {
        checks.push((
            "accelerator_manufacturers",
            Box::new(|t: &InstanceType| {
                t.accelerators.iter().any(|a| {
                    a.manufacturer.is_some_and(|m| r.accelerator_manufacturers.contains(&m))
                })
            }),
        ));
    }
    if !r.allowed_instance_types.is_empty() {
        checks.push((
            "allowed_instance_types",
            Box::new(|t: &InstanceType| {
                r.allowed_instance_types.iter().any(|p| instance_type_matches(p, &t.name))
            }),
        ));
    }
    if !r.excluded_instance_types.is_empty() {
        checks.push((
            "excluded_instance_types",
            Box::new(|t: &InstanceType| {
                !r.excluded_instance_types.iter().any(|p| instance_type_matches(p, &t.name))
            }),
        ));
    }
    if let Some(bounds) = r.network_bandwidth_gbps {
        checks.push((
            "network_bandwidth_gbps",
            Box::new(move |t: &InstanceType| {
                t.network_bandwidth_gbps.is_some_and(|gbps| bounds.contains(gbps))
            }),
        ));
    }
    checks
}

/// The types of `region` that meet `requirements` (and the group's architecture and market),
/// cheapest first, after price protection, at most [`MAX_REQUIREMENT_TYPES`].
fn matching_types(
    catalog: &Catalog,
    region: &str,
    requirements: &InstanceRequirements,
    wants: &Wants<'_>,
    prices: &PriceBook,
    offered_zones: &dyn Fn(&str) -> Vec<String>,
) -> Result<Vec<String>, Problem> {
    let candidates: Vec<&InstanceType> = catalog
        .types
        .values()
        .filter(|t| unusable(t, wants).is_none() && !offered_zones(&t.name).is_empty())
        .collect();
    let checks = checks(requirements);
    let mut matched: Vec<&InstanceType> =
        candidates.iter().copied().filter(|t| checks.iter().all(|(_, check)| check(t))).collect();
    if matched.is_empty() {
        let (attribute, excluded) = checks
            .iter()
            .map(|(key, check)| (*key, candidates.iter().filter(|t| !check(t)).count()))
            .max_by_key(|(_, excluded)| *excluded)
            .unwrap_or(("vcpu_count", 0));
        return Err(Problem::NothingMatches {
            region: region.to_owned(),
            attribute,
            excluded,
            total: candidates.len(),
        });
    }
    // Price protection and order: the price of the market asked for first.
    let price = |t: &InstanceType| -> Option<f64> {
        if wants.market.wants_spot() {
            prices.lowest_spot(region, &t.name).or_else(|| prices.on_demand(region, &t.name))
        } else {
            prices.on_demand(region, &t.name)
        }
        .map(|p| p.usd_per_hour)
    };
    let protection = if wants.market.wants_spot() {
        requirements
            .spot_max_price_percentage_over_lowest_price
            .unwrap_or(DEFAULT_SPOT_PRICE_PROTECTION)
    } else {
        requirements
            .on_demand_max_price_percentage_over_lowest_price
            .unwrap_or(DEFAULT_ON_DEMAND_PRICE_PROTECTION)
    };
    let lowest = matched.iter().filter_map(|t| price(t)).fold(f64::INFINITY, f64::min);
    if lowest.is_finite() {
        let ceiling = lowest * (1.0 + f64::from(protection) / 100.0);
        matched.retain(|t| price(t).is_none_or(|p| p <= ceiling + 1e-9));
    }
    matched.sort_by(|a, b| {
        let (pa, pb) = (price(a).unwrap_or(f64::INFINITY), price(b).unwrap_or(f64::INFINITY));
        pa.total_cmp(&pb)
            .then(a.vcpus.cmp(&b.vcpus))
            .then(a.memory_mib.cmp(&b.memory_mib))
            .then(a.name.cmp(&b.name))
    });
    matched.truncate(MAX_REQUIREMENT_TYPES);
    Ok(matched.into_iter().map(|t| t.name.clone()).collect())
}

#[cfg(test)]
mod tests {
    use flotilla_spec::capacity::{
        AcceleratorManufacturer, AcceleratorType, Bounds, CpuManufacturer, Inclusion,
    };

    use super::*;
    use crate::testdata;

    fn wants<'a>(types: &'a [String], requirements: Option<&'a InstanceRequirements>) -> Wants<'a> {
        Wants {
            instance_types: types,
            requirements,
            architecture: None,
            zones: &[],
            market: Market::OnDemand,
        }
    }

    fn requirements(vcpus: (u32, u32), memory: (u64, u64)) -> InstanceRequirements {
        InstanceRequirements {
            vcpu_count: Bounds { min: Some(vcpus.0), max: Some(vcpus.1) },
            memory_mib: Bounds { min: Some(memory.0), max: Some(memory.1) },
            ..InstanceRequirements::default()
        }
    }

    #[test]
    fn listed_types_come_first_in_the_spec_order() {
        let catalog = testdata::catalog();
        let prices = PriceBook::builtin_only();
        let listed = ["m7i.large", "m6i.large", "m5.large"].map(String::from);
        let found = eligible(&catalog, "us-east-1", &wants(&listed, None), &prices).unwrap();
        assert_eq!(found.types, listed);
        assert!(found.zones.len() >= 5, "{:?}", found.zones);
    }

    #[test]
    fn requirements_match_real_instance_types_cheapest_first() {
        let catalog = testdata::catalog();
        let prices = PriceBook::builtin_only();
        let mut r = requirements((2, 2), (8192, 8192));
        r.cpu_manufacturers = vec![CpuManufacturer::Intel];
        r.instance_generations = vec![InstanceGeneration::Current];
        let found = eligible(&catalog, "us-east-1", &wants(&[], Some(&r)), &prices).unwrap();
        assert!(!found.types.is_empty());
        for name in &found.types {
            let t = catalog.instance_type(name).unwrap();
            assert_eq!((t.vcpus, t.memory_mib), (2, 8192), "{name}");
            assert_eq!(t.cpu_manufacturer, Some(CpuManufacturer::Intel), "{name}");
            assert!(t.current_generation && !t.burstable && !t.bare_metal, "{name}");
            assert_eq!(t.accelerator_count(), 0, "{name}");
        }
        // m7i.large is a 2 vCPU / 8 GiB Intel type of the current generation; m5.large and
        // m6i.large are of the previous one in AWS's data.
        assert!(found.types.iter().any(|t| t == "m7i.large"), "{:?}", found.types);
        assert!(
            !found.types.iter().any(|t| t == "m5.large" || t == "m6i.large"),
            "{:?}",
            found.types
        );
        let price = |name: &str| prices.on_demand("us-east-1", name).unwrap().usd_per_hour;
        let priced: Vec<f64> = found.types.iter().map(|t| price(t)).collect();
        assert!(priced.windows(2).all(|w| w[0] <= w[1]), "cheapest first: {priced:?}");
        // Price protection: nothing more than 20 % above the cheapest.
        assert!(priced.iter().all(|p| *p <= priced[0] * 1.2 + 1e-9), "{priced:?}");
    }

    #[test]
    fn wildcards_architecture_and_spot_filter_types() {
        let catalog = testdata::catalog();
        let prices = PriceBook::builtin_only();
        let mut r = requirements((2, 4), (4096, 16384));
        r.allowed_instance_types = vec!["c7g.*".to_owned(), "m7g.*".to_owned()];
        let mut w = wants(&[], Some(&r));
        w.architecture = Some(Architecture::Arm64);
        let found = eligible(&catalog, "us-east-1", &w, &prices).unwrap();
        assert!(
            found.types.iter().all(|t| t.starts_with("c7g.") || t.starts_with("m7g.")),
            "{:?}",
            found.types
        );
        // The same requirements for an x86-64 binary match nothing, and say which key excludes.
        w.architecture = Some(Architecture::X86_64);
        let problems = eligible(&catalog, "us-east-1", &w, &prices).unwrap_err();
        assert!(
            matches!(
                &problems[0],
                Problem::NothingMatches { attribute: "allowed_instance_types", .. }
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn a_graviton_type_for_an_x86_binary_is_named() {
        let catalog = testdata::catalog();
        let listed = ["c7g.large".to_owned()];
        let mut w = wants(&listed, None);
        w.architecture = Some(Architecture::X86_64);
        let problems = eligible(&catalog, "us-east-1", &w, &PriceBook::builtin_only()).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "`c7g.large` is arm64, but the binary is x86_64: it cannot run there"
        );
    }

    #[test]
    fn unknown_types_and_zones_say_what_was_meant() {
        let catalog = testdata::catalog();
        let listed = ["m7i.larg".to_owned()];
        let zones = ["us-east-1z".to_owned()];
        let mut w = wants(&listed, None);
        w.zones = &zones;
        let problems = eligible(&catalog, "us-east-1", &w, &PriceBook::builtin_only()).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(text[0].starts_with("zone `us-east-1z` is not a zone of us-east-1"), "{text:?}");
        assert_eq!(text[1], "unknown instance type `m7i.larg`; did you mean `m7i.large`?");
    }

    /// What `r` matches in us-east-1 for `market`, with no price protection in the way unless
    /// `r` sets it (every type of the region may match).
    fn matched(r: &InstanceRequirements, market: Market, prices: &PriceBook) -> Vec<String> {
        let mut w = wants(&[], Some(r));
        w.market = market;
        eligible(&testdata::catalog(), "us-east-1", &w, prices).unwrap().types
    }

    /// Wide bounds: 1 to 192 vCPUs, any memory, prices not protected.
    fn wide() -> InstanceRequirements {
        let mut r = requirements((1, 192), (0, u64::MAX));
        r.on_demand_max_price_percentage_over_lowest_price = Some(100_000);
        r.spot_max_price_percentage_over_lowest_price = Some(100_000);
        r
    }

    fn price(usd_per_hour: f64) -> crate::prices::Price {
        crate::prices::Price {
            usd_per_hour,
            source: crate::prices::PriceSource::BuiltIn { date: "test".into() },
        }
    }

    #[test]
    fn memory_per_vcpu_local_storage_and_bandwidth_filter_real_types() {
        let catalog = testdata::catalog();
        let prices = PriceBook::builtin_only();
        let of = |name: &String| catalog.instance_type(name).unwrap().clone();

        let mut r = wide();
        r.memory_gib_per_vcpu = Some(Bounds { min: Some(8.0), max: Some(8.0) });
        let found = matched(&r, Market::OnDemand, &prices);
        assert!(!found.is_empty());
        for t in found.iter().map(of) {
            assert_eq!(t.memory_mib, 8 * 1024 * u64::from(t.vcpus), "{}: 8 GiB per vCPU", t.name);
        }
        assert!(found.iter().any(|t| t.starts_with('r')), "memory-optimized types: {found:?}");

        let mut r = wide();
        r.local_storage = Some(Inclusion::Required);
        let with_disks = matched(&r, Market::OnDemand, &prices);
        assert!(!with_disks.is_empty());
        assert!(with_disks.iter().map(of).all(|t| t.local_storage), "{with_disks:?}");
        r.local_storage = Some(Inclusion::Excluded);
        let without = matched(&r, Market::OnDemand, &prices);
        assert!(!without.is_empty());
        assert!(without.iter().map(of).all(|t| !t.local_storage), "{without:?}");
        assert!(catalog.instance_type("m5d.large").unwrap().local_storage, "AWS's data");

        let mut r = wide();
        r.network_bandwidth_gbps = Some(Bounds { min: Some(50.0), max: None });
        let fast = matched(&r, Market::OnDemand, &prices);
        assert!(!fast.is_empty());
        for t in fast.iter().map(of) {
            assert!(t.network_bandwidth_gbps.is_some_and(|g| g >= 50.0), "{}", t.name);
        }
        // A bound nothing reaches names the key.
        r.network_bandwidth_gbps = Some(Bounds { min: Some(100_000.0), max: None });
        let mut w = wants(&[], Some(&r));
        w.market = Market::OnDemand;
        let problems = eligible(&catalog, "us-east-1", &w, &prices).unwrap_err();
        assert!(
            matches!(
                &problems[0],
                Problem::NothingMatches { attribute: "network_bandwidth_gbps", .. }
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn accelerators_are_kept_out_unless_a_key_asks_for_them() {
        let catalog = testdata::catalog();
        let prices = PriceBook::builtin_only();
        let of = |name: &String| catalog.instance_type(name).unwrap().clone();
        let plain = matched(&wide(), Market::OnDemand, &prices);
        assert!(plain.iter().map(of).all(|t| t.accelerator_count() == 0), "{plain:?}");

        let mut r = wide();
        r.accelerator_types = vec![AcceleratorType::Gpu];
        r.accelerator_manufacturers = vec![AcceleratorManufacturer::Nvidia];
        r.accelerator_count = Some(Bounds { min: Some(1), max: Some(1) });
        let gpus = matched(&r, Market::OnDemand, &prices);
        assert!(!gpus.is_empty());
        for t in gpus.iter().map(of) {
            assert_eq!(t.accelerator_count(), 1, "{}", t.name);
            assert!(
                t.accelerators.iter().any(|a| a.kind == AcceleratorType::Gpu
                    && a.manufacturer == Some(AcceleratorManufacturer::Nvidia)),
                "{}: {:?}",
                t.name,
                t.accelerators
            );
        }
        assert!(gpus.iter().any(|t| t.starts_with('g')), "{gpus:?}");

        let mut r = wide();
        r.accelerator_manufacturers = vec![AcceleratorManufacturer::AmazonWebServices];
        let inferentia = matched(&r, Market::OnDemand, &prices);
        assert!(!inferentia.is_empty());
        assert!(
            inferentia.iter().map(of).all(|t| t
                .accelerators
                .iter()
                .any(|a| a.manufacturer == Some(AcceleratorManufacturer::AmazonWebServices))),
            "{inferentia:?}"
        );
    }

    #[test]
    fn excluded_instance_types_take_wildcards() {
        let prices = PriceBook::builtin_only();
        let mut r = requirements((2, 2), (8192, 8192));
        r.on_demand_max_price_percentage_over_lowest_price = Some(100_000);
        let before = matched(&r, Market::OnDemand, &prices);
        assert!(before.iter().any(|t| t.starts_with("m7i")), "{before:?}");
        assert!(before.iter().any(|t| t.ends_with("g.large")), "{before:?}");
        r.excluded_instance_types = vec!["m7i*".to_owned(), "*g.large".to_owned()];
        let after = matched(&r, Market::OnDemand, &prices);
        assert!(!after.is_empty(), "other 2 vCPU / 8 GiB types remain");
        assert!(
            after.iter().all(|t| !t.starts_with("m7i") && !t.ends_with("g.large")),
            "{after:?}"
        );
    }

    #[test]
    fn price_protection_drops_types_above_the_cheapest_by_more_than_the_percentage() {
        let mut r = requirements((2, 2), (4096, 8192));
        let candidates = ["m7i.large", "m6i.large", "m5.large", "c7i.large"];
        r.allowed_instance_types = candidates.map(String::from).to_vec();
        let mut prices = PriceBook::builtin_only();
        for (name, on_demand, spot) in [
            ("m7i.large", 0.10, 0.030),
            ("m6i.large", 0.11, 0.040),
            ("m5.large", 0.13, 0.050),
            ("c7i.large", 0.09, 0.080),
        ] {
            prices.set_on_demand("us-east-1", name, price(on_demand));
            prices.set_spot("us-east-1", "us-east-1a", name, price(spot));
        }
        // On-demand, default 20 %: up to 0.108 above the cheapest, c7i.large at 0.09.
        assert_eq!(matched(&r, Market::OnDemand, &prices), ["c7i.large", "m7i.large"]);
        r.on_demand_max_price_percentage_over_lowest_price = Some(30);
        assert_eq!(matched(&r, Market::OnDemand, &prices), ["c7i.large", "m7i.large", "m6i.large"]);
        // Spot, by each type's cheapest spot price: 50 % above 0.03 is 0.045.
        r.spot_max_price_percentage_over_lowest_price = Some(50);
        assert_eq!(matched(&r, Market::Spot, &prices), ["m7i.large", "m6i.large"]);
        // The default 100 %: up to 0.06.
        r.spot_max_price_percentage_over_lowest_price = None;
        assert_eq!(matched(&r, Market::Spot, &prices), ["m7i.large", "m6i.large", "m5.large"]);
    }

    #[test]
    fn listed_types_come_first_then_what_the_requirements_match() {
        let catalog = testdata::catalog();
        let prices = PriceBook::builtin_only();
        let r = requirements((2, 2), (8192, 8192));
        let matches = matched(&r, Market::OnDemand, &prices);
        // A listed type the requirements do not match, then one they do (not repeated).
        let listed = ["c5.xlarge".to_owned(), matches[1].clone()];
        let found = eligible(&catalog, "us-east-1", &wants(&listed, Some(&r)), &prices).unwrap();
        assert_eq!(found.types[..2], listed);
        let rest: Vec<&String> = matches.iter().filter(|t| **t != listed[1]).collect();
        assert_eq!(found.types[2..].iter().collect::<Vec<_>>(), rest);
    }

    #[test]
    fn zones_restrict_placement_and_bare_metal_is_opt_in() {
        let catalog = testdata::catalog();
        let zones = ["us-east-1a".to_owned(), "us-east-1b".to_owned()];
        let mut r = requirements((2, 128), (1024, 1 << 20));
        r.bare_metal = Some(Inclusion::Required);
        let mut w = wants(&[], Some(&r));
        w.zones = &zones;
        let found = eligible(&catalog, "us-east-1", &w, &PriceBook::builtin_only()).unwrap();
        assert!(found.zones.iter().all(|z| zones.contains(z)), "{:?}", found.zones);
        assert!(found.types.iter().all(|t| catalog.instance_type(t).unwrap().bare_metal));
    }
}
