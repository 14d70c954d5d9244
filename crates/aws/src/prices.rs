//! Prices for the survey: on-demand from the Pricing API, spot from
//! `DescribeSpotPriceHistory`, each cached for 12 h beside the catalog (Karpenter's refresh),
//! with flotilla's built-in table behind them.
//!
//! - On-demand: `GetProducts` of `AmazonEC2` in us-east-1 (the Pricing API's endpoint; under an
//!   emulator, `AWS_ENDPOINT_URL`), per region with the filters Karpenter uses: `regionCode`,
//!   Linux, shared tenancy, capacity status Used, no pre-installed software, on-demand; and
//!   `instanceType` ANY_OF the types the spec's groups may run on (in chunks of
//!   [`TYPES_PER_QUERY`], asked at once), so a plan reads a page or two per region, not every
//!   product of the region. Only types the region offers are kept.
//! - Spot: `DescribeSpotPriceHistory` per region, `Linux/UNIX`, `StartTime` now (the price in
//!   effect), for the same types, paged by 1,000; the newest price per zone and type.
//!
//! A region's cache records the types it was asked for; a later command that needs a type not
//! asked reads the region again for the union (one `as_of` per file).
//!
//! When the Pricing API cannot be reached (no `pricing:GetProducts` permission, no network),
//! the region's on-demand prices come from the built-in table and the survey's notes say so;
//! spot prices that cannot be read are left unknown (a spot machine is then estimated at the
//! on-demand price, its upper bound). Every price carries its source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_pricing::types::{Filter as PriceFilter, FilterType};
use flotilla_capacity::prices::{BUILTIN_DATE, Price, PriceSource};
use flotilla_capacity::{Catalog, PriceBook};
use flotilla_core::provider::ProviderError;
use serde::{Deserialize, Serialize};

use crate::clients::Clients;
use crate::error::AwsError;
use crate::fanout::{Concurrency, fan_out};
use crate::survey::{read_cache, write_cache};

/// How long read prices are used.
pub const PRICES_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most instance types named in one price query.
pub const TYPES_PER_QUERY: usize = 40;

/// One region's on-demand prices as cached.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct OnDemandCache {
    as_of: String,
    /// The types asked for; absent: every type of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asked: Option<BTreeSet<String>>,
    /// Type → USD per hour.
    prices: BTreeMap<String, f64>,
}

/// One region's spot prices as cached.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SpotCache {
    as_of: String,
    /// The types asked for; absent: every type of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asked: Option<BTreeSet<String>>,
    /// (zone, type, USD per hour).
    prices: Vec<(String, String, f64)>,
}

/// Whether a cache that asked for `asked` answers for `wanted`.
fn covers(asked: Option<&BTreeSet<String>>, wanted: &BTreeSet<String>) -> bool {
    asked.is_none_or(|asked| wanted.is_subset(asked))
}

/// What to ask for when the cache does not cover `wanted`: `wanted` and what a fresh cache
/// asked before, so the file keeps answering for both.
fn to_ask(asked: Option<&BTreeSet<String>>, wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let mut all = wanted.clone();
    all.extend(asked.into_iter().flatten().cloned());
    all
}

fn on_demand_file(region: &str) -> String {
    format!("prices-on-demand-{region}.json")
}

fn spot_file(region: &str) -> String {
    format!("prices-spot-{region}.json")
}

/// The prices of the `wanted` types of each region (region → types; a region without an entry
/// is not read), from the cache in `dir` when fresh and covering them, else asked; and notes
/// on where they came from.
pub async fn price_book(
    clients: &Clients,
    dir: &Path,
    regions: &[String],
    catalog: &Catalog,
    wanted: &BTreeMap<String, BTreeSet<String>>,
) -> Result<(PriceBook, Vec<String>), ProviderError> {
    let priced_regions = regions.iter().filter_map(|r| Some((r, wanted.get(r)?)));
    let results = fan_out(
        Concurrency::REGIONS,
        priced_regions.map(|(region, wanted)| async move {
            let cached = read_cache::<OnDemandCache>(&dir.join(on_demand_file(region)), PRICES_TTL);
            let on_demand = match cached {
                Some(cached) if covers(cached.asked.as_ref(), wanted) => Ok(cached),
                cached => {
                    let ask = to_ask(cached.and_then(|c| c.asked).as_ref(), wanted);
                    match on_demand_prices(clients, region, catalog, &ask).await {
                        Ok(read) => {
                            write_cache(dir, &on_demand_file(region), &read)?;
                            Ok(read)
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            let cached = read_cache::<SpotCache>(&dir.join(spot_file(region)), PRICES_TTL);
            let spot = match cached {
                Some(cached) if covers(cached.asked.as_ref(), wanted) => Ok(cached),
                cached => {
                    let ask = to_ask(cached.and_then(|c| c.asked).as_ref(), wanted);
                    match spot_prices(clients, region, catalog, &ask).await {
                        Ok(read) => {
                            write_cache(dir, &spot_file(region), &read)?;
                            Ok(read)
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            Ok::<_, ProviderError>((region.clone(), on_demand, spot))
        }),
    )
    .await?;
    let mut book = PriceBook::builtin_only();
    let mut priced = Vec::new();
    let mut builtin = Vec::new();
    let mut spot_read = Vec::new();
    let mut spot_missing = Vec::new();
    for (region, on_demand, spot) in results {
        match on_demand {
            Ok(read) => {
                for (instance_type, usd) in &read.prices {
                    let source = PriceSource::PricingApi { as_of: read.as_of.clone() };
                    book.set_on_demand(
                        &region,
                        instance_type,
                        Price { usd_per_hour: *usd, source },
                    );
                }
                priced.push(region.clone());
            }
            Err(error) => builtin.push((region.clone(), first_line(&error))),
        }
        match spot {
            Ok(read) => {
                for (zone, instance_type, usd) in &read.prices {
                    let source = PriceSource::SpotPriceHistory { as_of: read.as_of.clone() };
                    book.set_spot(
                        &region,
                        zone,
                        instance_type,
                        Price { usd_per_hour: *usd, source },
                    );
                }
                spot_read.push(region.clone());
            }
            Err(error) => spot_missing.push((region.clone(), first_line(&error))),
        }
    }
    let mut notes = Vec::new();
    if !priced.is_empty() {
        notes.push(format!(
            "on-demand prices from the AWS Pricing API (cached 12 h) for {}",
            priced.join(", ")
        ));
    }
    for (region, error) in builtin {
        notes.push(format!(
            "on-demand prices of {region} from flotilla's built-in table of {BUILTIN_DATE}: the Pricing API could not be read ({error})"
        ));
    }
    if !spot_read.is_empty() {
        notes.push(format!(
            "spot prices per zone from DescribeSpotPriceHistory (cached 12 h) for {}",
            spot_read.join(", ")
        ));
    }
    for (region, error) in spot_missing {
        notes.push(format!(
            "spot prices of {region} unknown (DescribeSpotPriceHistory: {error}); spot machines are estimated at on-demand prices"
        ));
    }
    Ok((book, notes))
}

/// The prices cached for `regions`, however old, and the built-in table behind them: what a
/// machine's placement shows without asking AWS again.
pub fn cached_book(dir: &Path, regions: &[String]) -> PriceBook {
    let mut book = PriceBook::builtin_only();
    for region in regions {
        let forever = Duration::MAX;
        if let Some(read) = read_cache::<OnDemandCache>(&dir.join(on_demand_file(region)), forever)
        {
            for (instance_type, usd) in read.prices {
                let source = PriceSource::PricingApi { as_of: read.as_of.clone() };
                book.set_on_demand(region, &instance_type, Price { usd_per_hour: usd, source });
            }
        }
        if let Some(read) = read_cache::<SpotCache>(&dir.join(spot_file(region)), forever) {
            for (zone, instance_type, usd) in read.prices {
                let source = PriceSource::SpotPriceHistory { as_of: read.as_of.clone() };
                book.set_spot(region, &zone, &instance_type, Price { usd_per_hour: usd, source });
            }
        }
    }
    book
}

fn first_line(error: &ProviderError) -> String {
    error.to_string().lines().next().unwrap_or_default().to_owned()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The Pricing API's filters for `region`'s Linux on-demand instance prices.
fn price_filters(region: &str) -> Vec<PriceFilter> {
    [
        ("regionCode", region),
        ("operatingSystem", "Linux"),
        ("tenancy", "Shared"),
        ("capacitystatus", "Used"),
        ("preInstalledSw", "NA"),
        ("marketoption", "OnDemand"),
    ]
    .into_iter()
    .map(|(field, value)| {
        PriceFilter::builder()
            .r#type(FilterType::TermMatch)
            .field(field)
            .value(value)
            .build()
            .expect("a filter with its type, field and value")
    })
    .collect()
}

/// The on-demand prices of `types` in `region`: one query per chunk of [`TYPES_PER_QUERY`],
/// the chunks asked at once.
async fn on_demand_prices(
    clients: &Clients,
    region: &str,
    catalog: &Catalog,
    types: &BTreeSet<String>,
) -> Result<OnDemandCache, ProviderError> {
    let names: Vec<&String> = types.iter().collect();
    let chunks = fan_out(
        Concurrency::REGIONS,
        names.chunks(TYPES_PER_QUERY).map(|chunk| on_demand_chunk(clients, region, catalog, chunk)),
    )
    .await?;
    let mut prices = BTreeMap::new();
    for chunk in chunks {
        for (instance_type, usd) in chunk {
            prices.entry(instance_type).or_insert(usd);
        }
    }
    Ok(OnDemandCache { as_of: now_rfc3339(), asked: Some(types.clone()), prices })
}

async fn on_demand_chunk(
    clients: &Clients,
    region: &str,
    catalog: &Catalog,
    types: &[&String],
) -> Result<Vec<(String, f64)>, ProviderError> {
    let offered = |name: &str| !catalog.zones_offering(region, name).is_empty();
    let list = types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",");
    let mut filters = price_filters(region);
    filters.push(
        PriceFilter::builder()
            .r#type(FilterType::AnyOf)
            .field("instanceType")
            .value(list)
            .build()
            .expect("a filter with its type, field and value"),
    );
    let mut prices = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = clients
            .pricing()
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .set_filters(Some(filters.clone()))
            .max_results(100)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk("us-east-1", "GetProducts", format!("EC2 prices of {region}"), e)
            })?;
        for document in page.price_list() {
            if let Some((instance_type, usd)) = parse_product(document)
                && offered(&instance_type)
            {
                prices.push((instance_type, usd));
            }
        }
        token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(prices);
        }
    }
}

/// The instance type and its hourly USD price of one `PriceList` document; `None` for a
/// document without both (or a price of 0, which AWS lists for capacity it does not sell so).
fn parse_product(document: &str) -> Option<(String, f64)> {
    #[derive(Deserialize)]
    struct Product {
        product: ProductInfo,
        terms: Terms,
    }
    #[derive(Deserialize)]
    struct ProductInfo {
        attributes: BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    struct Terms {
        #[serde(rename = "OnDemand", default)]
        on_demand: BTreeMap<String, Term>,
    }
    #[derive(Deserialize)]
    struct Term {
        #[serde(rename = "priceDimensions", default)]
        dimensions: BTreeMap<String, Dimension>,
    }
    #[derive(Deserialize)]
    struct Dimension {
        #[serde(rename = "pricePerUnit", default)]
        price: BTreeMap<String, String>,
    }
    let product: Product = serde_json::from_str(document).ok()?;
    let instance_type = product.product.attributes.get("instanceType")?.clone();
    let usd = product
        .terms
        .on_demand
        .values()
        .flat_map(|term| term.dimensions.values())
        .filter_map(|dimension| dimension.price.get("USD")?.parse::<f64>().ok())
        .find(|usd| *usd > 0.0)?;
    Some((instance_type, usd))
}

/// The spot prices of `types` in `region`, per zone: one query per chunk of
/// [`TYPES_PER_QUERY`], the chunks asked at once.
async fn spot_prices(
    clients: &Clients,
    region: &str,
    catalog: &Catalog,
    types: &BTreeSet<String>,
) -> Result<SpotCache, ProviderError> {
    let names: Vec<&String> = types.iter().collect();
    let chunks = fan_out(
        Concurrency::REGIONS,
        names.chunks(TYPES_PER_QUERY).map(|chunk| spot_chunk(clients, region, catalog, chunk)),
    )
    .await?;
    let prices = chunks.into_iter().flatten().collect();
    Ok(SpotCache { as_of: now_rfc3339(), asked: Some(types.clone()), prices })
}

async fn spot_chunk(
    clients: &Clients,
    region: &str,
    catalog: &Catalog,
    types: &[&String],
) -> Result<Vec<(String, String, f64)>, ProviderError> {
    let ec2 = clients.ec2(region);
    let now = DateTime::from(SystemTime::now());
    let instance_types: Vec<aws_sdk_ec2::types::InstanceType> =
        types.iter().map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str())).collect();
    // (zone, type) → (timestamp, price): the newest wins.
    let mut newest: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .describe_spot_price_history()
            .product_descriptions("Linux/UNIX")
            .set_instance_types(Some(instance_types.clone()))
            .start_time(now)
            .max_results(1000)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "DescribeSpotPriceHistory", "Linux/UNIX", e))?;
        for entry in page.spot_price_history() {
            let (Some(zone), Some(instance_type), Some(price)) =
                (entry.availability_zone(), entry.instance_type(), entry.spot_price())
            else {
                continue;
            };
            let instance_type = instance_type.as_str();
            let Ok(usd) = price.parse::<f64>() else { continue };
            if catalog.zones_offering(region, instance_type).is_empty() {
                continue;
            }
            let stamp = entry.timestamp().map(|t| t.secs()).unwrap_or(0);
            let key = (zone.to_owned(), instance_type.to_owned());
            if newest.get(&key).is_none_or(|(seen, _)| stamp > *seen) {
                newest.insert(key, (stamp, usd));
            }
        }
        token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(newest.into_iter().map(|((zone, t), (_, usd))| (zone, t, usd)).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_document_gives_its_type_and_hourly_price() {
        let document = r#"{"product":{"productFamily":"Compute Instance","attributes":{"instanceType":"m5.large","regionCode":"us-east-1"},"sku":"X"},"serviceCode":"AmazonEC2","terms":{"OnDemand":{"X.JRTCKXETXF":{"priceDimensions":{"X.JRTCKXETXF.6YS6EN2CT7":{"unit":"Hrs","pricePerUnit":{"USD":"0.0960000000"}}},"sku":"X"}}}}"#;
        assert_eq!(parse_product(document), Some(("m5.large".to_owned(), 0.096)));
        let free = document.replace("0.0960000000", "0.0000000000");
        assert_eq!(parse_product(&free), None, "a zero price is not a price");
        assert_eq!(parse_product("{}"), None);
    }
}
