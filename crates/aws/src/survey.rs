//! The read-only survey of an account: which regions are enabled, the instance catalog of some
//! regions (what each type is, its architectures, and which zones offer it) and the prices, for
//! the capacity policy, `prepare`'s checks and `flotilla plan`.
//!
//! The catalog comes from `DescribeInstanceTypes` (every type, paginated) and, per region,
//! `DescribeInstanceTypeOfferings` by availability zone (paginated). Both are cached for 24 h
//! under `$FLOTILLA_HOME/cache/aws/<endpoint>/`: a catalog changes when AWS launches a type,
//! not between two commands. Prices are [`crate::prices`]', cached beside it for 12 h.
//! `--refresh` ([`expire_cache`]) makes both stale for one command, which rewrites them.
//!
//! A spec whose every entry lists its types (no `requirements:`) needs only those types
//! ([`CatalogScope::Only`]): when the full catalog is not cached, the narrow one is read instead,
//! `DescribeInstanceTypes` by name (100 names a call, AWS's limit), the offerings filtered to
//! those names and `DescribeAvailabilityZones` for every zone of each region (so "every zone"
//! and a misspelt zone mean what they mean with the full catalog), cached under names keyed by
//! the set of types. A name AWS does not know (`InvalidInstanceType`) reads the full catalog,
//! which "did you mean" needs. A cold `plan` of a listed-types spec reads a few kilobytes
//! instead of the account's whole catalog.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::{Filter, InstanceTypeInfo, LocationType};
use flotilla_capacity::catalog::{Accelerator, Architecture, Catalog, InstanceType};
use flotilla_core::plan::GroupPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, Survey};
use flotilla_core::state::{ensure_private_dir, write_private};
use flotilla_spec::capacity::{AcceleratorManufacturer, AcceleratorType, CpuManufacturer};
use sha2::{Digest, Sha256};

use crate::clients::{Clients, HOME_REGION};
use crate::error::AwsError;
use crate::fanout::{Concurrency, fan_out};

/// How long a cached catalog is used.
pub const CATALOG_TTL: Duration = Duration::from_secs(24 * 3600);

/// The cache directory for the endpoint the clients use (AWS itself, or an emulator): two
/// endpoints never share a catalog.
pub fn cache_dir(home: &Path, clients: &Clients) -> PathBuf {
    let endpoint = clients.endpoint().unwrap_or("aws");
    let digest = hex::encode(Sha256::digest(endpoint.as_bytes()));
    home.join("cache").join("aws").join(&digest[..16])
}

/// Makes every cached catalog and price of the endpoint `clients` use stale, for `--refresh`:
/// the next reads ask AWS and rewrite them. The files stay (dated at the epoch), so a price
/// read that cannot reach AWS still falls back to the last one known, as it does after the TTL.
pub fn expire_cache(home: &Path, clients: &Clients) -> Result<(), ProviderError> {
    let dir = cache_dir(home, clients);
    let entries = match fs_err::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(ProviderError::with_source(format!("reading {}", dir.display()), error));
        }
    };
    for entry in entries {
        let path = entry
            .map_err(|e| ProviderError::with_source(format!("reading {}", dir.display()), e))?
            .path();
        if path.is_dir() {
            continue;
        }
        let expire = || -> std::io::Result<()> {
            let file = fs_err::OpenOptions::new().write(true).open(&path)?;
            file.file().set_modified(SystemTime::UNIX_EPOCH)
        };
        expire().map_err(|e| {
            ProviderError::with_source(format!("expiring the cached {}", path.display()), e)
        })?;
    }
    Ok(())
}

/// The catalog of `regions` and the prices of the types `groups` may run on, from the cache
/// when it is fresh.
pub async fn survey(
    clients: &Clients,
    home: &Path,
    regions: &[String],
    groups: &[GroupPlan],
    progress: &dyn Progress,
) -> Result<Survey, ProviderError> {
    let stage = progress.stage("reading the instance catalog and prices", regions.len() as u64 + 1);
    let catalog = catalog(clients, home, regions, &CatalogScope::of_groups(groups)).await?;
    stage.advance(1);
    let wanted = priced_types(&catalog, regions, groups);
    let (prices, notes) =
        crate::prices::price_book(clients, &cache_dir(home, clients), regions, &catalog, &wanted)
            .await?;
    stage.advance(regions.len() as u64);
    Ok(Survey { catalog, prices, notes })
}

/// Region → the types whose prices the groups' choices need: each group's listed types and
/// what its requirements match in the catalog. The requirements' price limits
/// (`*_max_price_percentage_over_lowest_price`) are left out here, as they are judged on the
/// prices being read. A region without groups gets no entry (its prices are not read).
pub fn priced_types(
    catalog: &Catalog,
    regions: &[String],
    groups: &[GroupPlan],
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let no_prices = flotilla_capacity::PriceBook::default();
    let mut wanted: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for group in groups.iter().filter(|g| regions.contains(&g.region)) {
        let types = wanted.entry(group.region.clone()).or_default();
        types.extend(group.instance_types.iter().cloned());
        let Some(requirements) = &group.requirements else { continue };
        let mut unpriced = requirements.clone();
        unpriced.spot_max_price_percentage_over_lowest_price = None;
        unpriced.on_demand_max_price_percentage_over_lowest_price = None;
        let wants = flotilla_capacity::select::Wants {
            instance_types: &[],
            requirements: Some(&unpriced),
            architecture: group.architecture,
            zones: &group.zones,
            market: group.market,
        };
        if let Ok(eligible) =
            flotilla_capacity::select::eligible(catalog, &group.region, &wants, &no_prices)
        {
            types.extend(eligible.types.iter().cloned());
        }
    }
    wanted
}

/// The instance types a command needs from the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogScope {
    /// Every type of the account: some group selects by `requirements`.
    Everything,
    /// Only these types (every group lists its types).
    Only(BTreeSet<String>),
}

impl CatalogScope {
    /// The types `groups` may run on: their listed types when no group has `requirements` (or
    /// lists none), else every type.
    pub fn of_groups(groups: &[GroupPlan]) -> CatalogScope {
        if groups.is_empty()
            || groups.iter().any(|g| g.requirements.is_some() || g.instance_types.is_empty())
        {
            return CatalogScope::Everything;
        }
        CatalogScope::Only(groups.iter().flat_map(|g| g.instance_types.iter().cloned()).collect())
    }
}

/// The instance catalog of `regions` for `scope`: the full catalog when it is cached and fresh
/// or the scope is everything, else the narrow one (see the module's documentation).
pub async fn catalog(
    clients: &Clients,
    home: &Path,
    regions: &[String],
    scope: &CatalogScope,
) -> Result<Catalog, ProviderError> {
    let dir = cache_dir(home, clients);
    if let CatalogScope::Only(names) = scope
        && !full_catalog_cached(&dir, regions)
        && let Some(catalog) = narrow_catalog(clients, &dir, regions, names).await?
    {
        return Ok(catalog);
    }
    full_catalog(clients, &dir, regions).await
}

/// Whether the full catalog of `regions` is cached and fresh.
fn full_catalog_cached(dir: &Path, regions: &[String]) -> bool {
    let fresh = |name: &str| is_fresh(&dir.join(name), CATALOG_TTL);
    fresh("instance-types.json") && regions.iter().all(|r| fresh(&format!("offerings-{r}.json")))
}

/// The zones of a region and the `(type, zone)` offerings of some types there.
#[derive(serde::Serialize, serde::Deserialize)]
struct NarrowOfferings {
    zones: Vec<String>,
    offered: Vec<(String, String)>,
}

/// The catalog of `names` only, from its own cache when fresh; `None` when AWS does not know
/// one of the names (the caller reads the full catalog, whose names "did you mean" needs).
async fn narrow_catalog(
    clients: &Clients,
    dir: &Path,
    regions: &[String],
    names: &BTreeSet<String>,
) -> Result<Option<Catalog>, ProviderError> {
    let joined: Vec<&str> = names.iter().map(String::as_str).collect();
    let key = &hex::encode(Sha256::digest(joined.join(",").as_bytes()))[..16];
    let types_file = format!("instance-types-only-{key}.json");
    let types = match read_cache::<Vec<InstanceType>>(&dir.join(&types_file), CATALOG_TTL) {
        Some(types) => types,
        None => match describe_named_instance_types(clients, &joined).await {
            Ok(types) => {
                write_cache(dir, &types_file, &types)?;
                types
            }
            Err(error) if error.code_is("InvalidInstanceType") => return Ok(None),
            Err(error) => return Err(error.into()),
        },
    };
    let offerings = fan_out(
        Concurrency::REGIONS,
        regions.iter().cloned().map(|region| {
            let file = format!("offerings-{region}-only-{key}.json");
            let joined = &joined;
            async move {
                let narrow = match read_cache::<NarrowOfferings>(&dir.join(&file), CATALOG_TTL) {
                    Some(narrow) => narrow,
                    None => {
                        let (zones, offered) = tokio::try_join!(
                            describe_zones(clients, &region),
                            describe_offerings(clients, &region, Some(joined))
                        )?;
                        let narrow = NarrowOfferings { zones, offered };
                        write_cache(dir, &file, &narrow)?;
                        narrow
                    }
                };
                Ok::<_, ProviderError>((region, narrow))
            }
        }),
    )
    .await?;
    let mut catalog = Catalog::with_types(types);
    for (region, narrow) in offerings {
        for zone in &narrow.zones {
            catalog.add_zone(&region, zone);
        }
        for (instance_type, zone) in narrow.offered {
            catalog.offer(&region, &zone, &instance_type);
        }
    }
    Ok(Some(catalog))
}

/// The full instance catalog of `regions`, from the cache when it is fresh.
async fn full_catalog(
    clients: &Clients,
    dir: &Path,
    regions: &[String],
) -> Result<Catalog, ProviderError> {
    let dir = dir.to_path_buf();
    let types = async {
        match read_cache::<Vec<InstanceType>>(&dir.join("instance-types.json"), CATALOG_TTL) {
            Some(types) => Ok(types),
            None => {
                let types = describe_instance_types(clients).await?;
                write_cache(&dir, "instance-types.json", &types)?;
                Ok::<_, ProviderError>(types)
            }
        }
    };
    // The types and the offerings of every region are read at once.
    let offerings = fan_out(
        Concurrency::REGIONS,
        regions.iter().cloned().map(|region| {
            let dir = dir.clone();
            async move {
                let file = format!("offerings-{region}.json");
                let offered =
                    match read_cache::<Vec<(String, String)>>(&dir.join(&file), CATALOG_TTL) {
                        Some(offered) => offered,
                        None => {
                            let offered = describe_offerings(clients, &region, None).await?;
                            write_cache(&dir, &file, &offered)?;
                            offered
                        }
                    };
                Ok::<_, ProviderError>((region, offered))
            }
        }),
    );
    let (types, offerings) = tokio::try_join!(types, offerings)?;
    let mut catalog = Catalog::with_types(types);
    for (region, offered) in offerings {
        for (instance_type, zone) in offered {
            catalog.offer(&region, &zone, &instance_type);
        }
    }
    Ok(catalog)
}

/// Fails, naming them, when some of `regions` are not enabled in the account.
pub async fn check_regions(clients: &Clients, regions: &[String]) -> Result<(), ProviderError> {
    let answer = clients
        .ec2(HOME_REGION)
        .describe_regions()
        .all_regions(true)
        .filters(
            Filter::builder()
                .name("opt-in-status")
                .values("opt-in-not-required")
                .values("opted-in")
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(HOME_REGION, "DescribeRegions", "enabled regions", e))?;
    let enabled: std::collections::BTreeSet<&str> =
        answer.regions().iter().filter_map(|r| r.region_name()).collect();
    let missing: Vec<&str> =
        regions.iter().map(String::as_str).filter(|r| !enabled.contains(r)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ProviderError::new(format!(
        "regions not enabled in this account (or misspelt): {}; enable them in the AWS console or fix the spec",
        missing.join(", ")
    ))
    .of_kind(flotilla_core::provider::ErrorKind::Invalid))
}

/// The architecture of machines of `instance_type` (`x86_64` or `arm64`, the names of the
/// agent builds and images), by the catalog, else by its name.
pub fn machine_architecture(
    catalog: &Catalog,
    instance_type: &str,
) -> Result<&'static str, ProviderError> {
    let architectures: Vec<Architecture> = match catalog.instance_type(instance_type) {
        Some(known) if !known.architectures.is_empty() => known.architectures.clone(),
        _ => flotilla_capacity::guess_architecture(instance_type).into_iter().collect(),
    };
    if architectures.contains(&Architecture::Arm64) {
        Ok("arm64")
    } else if architectures.iter().any(|a| matches!(a, Architecture::X86_64 | Architecture::I386)) {
        Ok("x86_64")
    } else {
        Err(ProviderError::new(format!(
            "{instance_type} runs macOS, and flotilla's agent and boot script are built for Linux only (systemd), so a machine of this type would never boot; choose a Linux type (a `host_pool` of a Linux type launches onto dedicated hosts)"
        ))
        .of_kind(flotilla_core::provider::ErrorKind::Invalid))
    }
}

/// Every instance type of the account, as the capacity policy reads them.
async fn describe_instance_types(clients: &Clients) -> Result<Vec<InstanceType>, ProviderError> {
    let mut pages = clients
        .ec2(HOME_REGION)
        .describe_instance_types()
        .max_results(100)
        .into_paginator()
        .items()
        .send();
    let mut types = Vec::new();
    while let Some(item) = pages.next().await {
        let info =
            item.map_err(|e| AwsError::from_sdk(HOME_REGION, "DescribeInstanceTypes", "", e))?;
        if let Some(instance_type) = from_sdk(&info) {
            types.push(instance_type);
        }
    }
    Ok(types)
}

/// The types named, 100 names a call (AWS's limit).
async fn describe_named_instance_types(
    clients: &Clients,
    names: &[&str],
) -> Result<Vec<InstanceType>, AwsError> {
    let mut types = Vec::new();
    for chunk in names.chunks(100) {
        let mut request = clients.ec2(HOME_REGION).describe_instance_types();
        for name in chunk {
            request = request.instance_types((*name).into());
        }
        let answer = request.send().await.map_err(|e| {
            AwsError::from_sdk(HOME_REGION, "DescribeInstanceTypes", chunk.join(","), e)
        })?;
        types.extend(answer.instance_types().iter().filter_map(from_sdk));
    }
    Ok(types)
}

/// Every availability zone of `region` the account may use (standard zones and opted-in
/// local zones), as the offerings of the full catalog name them.
async fn describe_zones(clients: &Clients, region: &str) -> Result<Vec<String>, ProviderError> {
    let answer = clients
        .ec2(region)
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(region, "DescribeAvailabilityZones", "", e))?;
    Ok(answer
        .availability_zones()
        .iter()
        .filter_map(|z| z.zone_name())
        .map(str::to_owned)
        .collect())
}

/// `(type, zone)` for the types offered in a zone of `region`: every type, or only those of
/// `names` (100 names a filter).
async fn describe_offerings(
    clients: &Clients,
    region: &str,
    names: Option<&[&str]>,
) -> Result<Vec<(String, String)>, ProviderError> {
    let chunks: Vec<Option<&[&str]>> = match names {
        Some(names) => names.chunks(100).map(Some).collect(),
        None => vec![None],
    };
    let mut offered = Vec::new();
    for chunk in chunks {
        let filter = chunk.map(|chunk| {
            Filter::builder()
                .name("instance-type")
                .set_values(Some(chunk.iter().map(|n| (*n).to_owned()).collect()))
                .build()
        });
        let mut pages = clients
            .ec2(region)
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .set_filters(filter.map(|f| vec![f]))
            .max_results(1000)
            .into_paginator()
            .items()
            .send();
        let what = chunk.map(|c| c.join(",")).unwrap_or_default();
        while let Some(item) = pages.next().await {
            let offering = item.map_err(|e| {
                AwsError::from_sdk(region, "DescribeInstanceTypeOfferings", what.clone(), e)
            })?;
            if let (Some(instance_type), Some(zone)) =
                (offering.instance_type(), offering.location())
            {
                offered.push((instance_type.as_str().to_owned(), zone.to_owned()));
            }
        }
    }
    Ok(offered)
}

/// One `DescribeInstanceTypes` item as the capacity policy reads it.
pub fn from_sdk(info: &InstanceTypeInfo) -> Option<InstanceType> {
    let name = info.instance_type()?.as_str().to_owned();
    let processor = info.processor_info();
    let architectures = processor
        .map(|p| {
            p.supported_architectures()
                .iter()
                .filter_map(|a| Architecture::parse(a.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let cpu_manufacturer = processor.and_then(|p| p.manufacturer()).and_then(|m| match m {
        "Intel" => Some(CpuManufacturer::Intel),
        "AMD" => Some(CpuManufacturer::Amd),
        "AWS" => Some(CpuManufacturer::AmazonWebServices),
        "Apple" => Some(CpuManufacturer::Apple),
        _ => None,
    });
    let manufacturer = |name: Option<&str>| match name? {
        "NVIDIA" => Some(AcceleratorManufacturer::Nvidia),
        "AMD" => Some(AcceleratorManufacturer::Amd),
        "AWS" => Some(AcceleratorManufacturer::AmazonWebServices),
        "Xilinx" => Some(AcceleratorManufacturer::Xilinx),
        "Habana" => Some(AcceleratorManufacturer::Habana),
        _ => None,
    };
    let count = |count: Option<i32>| count.and_then(|c| u32::try_from(c).ok()).unwrap_or(1);
    let mut accelerators = Vec::new();
    for gpu in info.gpu_info().map(|g| g.gpus()).unwrap_or_default() {
        accelerators.push(Accelerator {
            kind: AcceleratorType::Gpu,
            manufacturer: manufacturer(gpu.manufacturer()),
            count: count(gpu.count()),
        });
    }
    for fpga in info.fpga_info().map(|f| f.fpgas()).unwrap_or_default() {
        accelerators.push(Accelerator {
            kind: AcceleratorType::Fpga,
            manufacturer: manufacturer(fpga.manufacturer()),
            count: count(fpga.count()),
        });
    }
    for device in info.inference_accelerator_info().map(|i| i.accelerators()).unwrap_or_default() {
        accelerators.push(Accelerator {
            kind: AcceleratorType::Inference,
            manufacturer: manufacturer(device.manufacturer()),
            count: count(device.count()),
        });
    }
    for device in info.media_accelerator_info().map(|m| m.accelerators()).unwrap_or_default() {
        accelerators.push(Accelerator {
            kind: AcceleratorType::Media,
            manufacturer: manufacturer(device.manufacturer()),
            count: count(device.count()),
        });
    }
    let bandwidth: f64 = info
        .network_info()
        .map(|n| n.network_cards().iter().filter_map(|c| c.baseline_bandwidth_in_gbps()).sum())
        .unwrap_or(0.0);
    let usage: Vec<&str> = info.supported_usage_classes().iter().map(|u| u.as_str()).collect();
    Some(InstanceType {
        name,
        architectures,
        vcpus: info
            .v_cpu_info()
            .and_then(|v| v.default_v_cpus())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        memory_mib: info
            .memory_info()
            .and_then(|m| m.size_in_mib())
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
        cpu_manufacturer,
        current_generation: info.current_generation().unwrap_or(false),
        burstable: info.burstable_performance_supported().unwrap_or(false),
        bare_metal: info.bare_metal().unwrap_or(false),
        local_storage: info.instance_storage_supported().unwrap_or(false),
        accelerators,
        network_bandwidth_gbps: (bandwidth > 0.0).then_some(bandwidth),
        spot: usage.contains(&"spot"),
        on_demand: usage.is_empty() || usage.contains(&"on-demand"),
    })
}

/// A cached value, when its file is younger than `ttl` and reads.
pub(crate) fn read_cache<T: serde::de::DeserializeOwned>(path: &Path, ttl: Duration) -> Option<T> {
    if !is_fresh(path, ttl) {
        return None;
    }
    let bytes = fs_err::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the file at `path` exists and is younger than `ttl` (a time in the future counts as
/// now).
fn is_fresh(path: &Path, ttl: Duration) -> bool {
    fs_err::metadata(path).ok().and_then(|m| m.modified().ok()).is_some_and(|modified| {
        SystemTime::now().duration_since(modified).unwrap_or_default() <= ttl
    })
}

pub(crate) fn write_cache<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), ProviderError> {
    let write = || -> Result<(), flotilla_core::state::StateError> {
        ensure_private_dir(dir)?;
        let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        write_private(&dir.join(name), &json)
    };
    write()
        .map_err(|e| ProviderError::with_source(format!("caching {name} in {}", dir.display()), e))
}
