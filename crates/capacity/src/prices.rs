//! Prices: on-demand per (region, type), spot per (zone, type), each with where it came from.
//!
//! The AWS provider fills a [`PriceBook`] from the Pricing API (`GetProducts`: Linux, shared
//! tenancy, capacity status Used, no pre-installed software) and from
//! `DescribeSpotPriceHistory`, and caches both for 12 h. When neither can be reached, on-demand
//! prices come from the dated table built into flotilla ([`BUILTIN_DATE`]; us-east-1 figures
//! from the Pricing API, other regions scaled by [`region_factor`]) and spot prices are unknown:
//! every price says its source, and `plan` shows it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The date of the built-in on-demand table.
pub const BUILTIN_DATE: &str = "2026-07-20";

/// The built-in table: us-east-1 Linux on-demand prices, USD per hour.
const BUILTIN_CSV: &str = include_str!("../data/ondemand-us-east-1.csv");

/// Where a price came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum PriceSource {
    /// The Pricing API, read at `as_of` (RFC 3339).
    PricingApi { as_of: String },
    /// `DescribeSpotPriceHistory`, the newest price at `as_of` (RFC 3339).
    SpotPriceHistory { as_of: String },
    /// flotilla's built-in table of `date`, scaled for the region.
    BuiltIn { date: String },
}

/// A price per hour and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub usd_per_hour: f64,
    #[serde(flatten)]
    pub source: PriceSource,
}

/// The price multiplier of `region` over us-east-1 for the built-in table, from AWS's published
/// prices of general-purpose types (m6i): us-east-1, us-east-2 and us-west-2 are equal; other
/// regions cost more.
pub fn region_factor(region: &str) -> f64 {
    match region {
        "us-east-1" | "us-east-2" | "us-west-2" => 1.0,
        "us-west-1" => 1.17,
        "ca-central-1" | "ca-west-1" => 1.11,
        "eu-west-1" | "eu-north-1" => 1.12,
        "eu-central-1" | "eu-west-2" | "eu-west-3" | "eu-south-1" | "eu-south-2"
        | "eu-central-2" => 1.2,
        "ap-south-1" | "ap-south-2" => 1.05,
        "ap-northeast-1" | "ap-northeast-2" | "ap-northeast-3" => 1.29,
        "ap-southeast-1" | "ap-southeast-2" | "ap-southeast-3" | "ap-southeast-4"
        | "ap-southeast-5" => 1.25,
        "ap-east-1" => 1.38,
        "sa-east-1" => 1.59,
        "me-south-1" | "me-central-1" | "il-central-1" | "af-south-1" => 1.3,
        _ => 1.25,
    }
}

/// The built-in us-east-1 table, parsed once.
pub fn builtin_table() -> &'static BTreeMap<String, f64> {
    static TABLE: OnceLock<BTreeMap<String, f64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let data: String = BUILTIN_CSV
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let mut reader = csv::Reader::from_reader(data.as_bytes());
        reader
            .deserialize::<(String, f64)>()
            .map(|row| row.expect("the built-in price table is valid CSV (checked by a test)"))
            .collect()
    })
}

/// Prices the provider read, with the built-in table behind them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceBook {
    /// `region/type` → price.
    pub on_demand: BTreeMap<String, Price>,
    /// `zone/type` → price.
    pub spot: BTreeMap<String, Price>,
    /// Zone → its region, for the spot prices of a region.
    pub zone_regions: BTreeMap<String, String>,
}

fn key(place: &str, instance_type: &str) -> String {
    format!("{place}/{instance_type}")
}

impl PriceBook {
    /// No prices read: the built-in table only.
    pub fn builtin_only() -> PriceBook {
        PriceBook::default()
    }

    pub fn set_on_demand(&mut self, region: &str, instance_type: &str, price: Price) {
        self.on_demand.insert(key(region, instance_type), price);
    }

    pub fn set_spot(&mut self, region: &str, zone: &str, instance_type: &str, price: Price) {
        self.zone_regions.insert(zone.to_owned(), region.to_owned());
        self.spot.insert(key(zone, instance_type), price);
    }

    /// The on-demand price of `instance_type` in `region`: read, else built in.
    pub fn on_demand(&self, region: &str, instance_type: &str) -> Option<Price> {
        if let Some(price) = self.on_demand.get(&key(region, instance_type)) {
            return Some(price.clone());
        }
        let base = builtin_table().get(instance_type)?;
        Some(Price {
            usd_per_hour: round_price(base * region_factor(region)),
            source: PriceSource::BuiltIn { date: BUILTIN_DATE.to_owned() },
        })
    }

    /// The spot price of `instance_type` in `zone`, when it was read.
    pub fn spot(&self, zone: &str, instance_type: &str) -> Option<Price> {
        self.spot.get(&key(zone, instance_type)).cloned()
    }

    /// The lowest spot price of `instance_type` over the zones of `region`, when any was read.
    pub fn lowest_spot(&self, region: &str, instance_type: &str) -> Option<Price> {
        self.zone_regions
            .iter()
            .filter(|(_, zone_region)| zone_region.as_str() == region)
            .filter_map(|(zone, _)| self.spot(zone, instance_type))
            .min_by(|a, b| a.usd_per_hour.total_cmp(&b.usd_per_hour))
    }

    /// The price a machine of `instance_type` in `zone` pays in `market` (`spot` uses the
    /// zone's spot price; an unknown spot price is estimated at the on-demand price, which is
    /// what spot costs at most, and says so through its source).
    pub fn machine(
        &self,
        region: &str,
        zone: &str,
        instance_type: &str,
        spot: bool,
    ) -> Option<Price> {
        if spot && let Some(price) = self.spot(zone, instance_type) {
            return Some(price);
        }
        self.on_demand(region, instance_type)
    }
}

/// Prices to 6 decimal places, as AWS publishes them.
fn round_price(price: f64) -> f64 {
    (price * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_table_reads_and_scales_by_region() {
        let table = builtin_table();
        assert!(table.len() > 1000, "{}", table.len());
        assert_eq!(table["a1.large"], 0.051);
        let book = PriceBook::builtin_only();
        let east = book.on_demand("us-east-1", "m5.large").unwrap();
        assert_eq!(east.source, PriceSource::BuiltIn { date: BUILTIN_DATE.to_owned() });
        let frankfurt = book.on_demand("eu-central-1", "m5.large").unwrap();
        assert!((frankfurt.usd_per_hour - east.usd_per_hour * 1.2).abs() < 1e-6);
        assert!(book.on_demand("us-east-1", "zz9.huge").is_none());
    }

    #[test]
    fn read_prices_win_and_spot_is_per_zone() {
        let mut book = PriceBook::builtin_only();
        let read = |usd| Price {
            usd_per_hour: usd,
            source: PriceSource::PricingApi { as_of: "2026-12-01T00:00:00Z".into() },
        };
        book.set_on_demand("us-east-1", "m5.large", read(0.1));
        let spot = |usd| Price {
            usd_per_hour: usd,
            source: PriceSource::SpotPriceHistory { as_of: "2026-12-01T00:00:00Z".into() },
        };
        book.set_spot("us-east-1", "us-east-1a", "m5.large", spot(0.04));
        book.set_spot("us-east-1", "us-east-1b", "m5.large", spot(0.03));
        assert_eq!(book.on_demand("us-east-1", "m5.large").unwrap().usd_per_hour, 0.1);
        assert_eq!(book.lowest_spot("us-east-1", "m5.large").unwrap().usd_per_hour, 0.03);
        assert_eq!(
            book.machine("us-east-1", "us-east-1a", "m5.large", true).unwrap().usd_per_hour,
            0.04
        );
        // No spot price read for the zone: the on-demand price, an upper bound.
        assert_eq!(
            book.machine("us-east-1", "us-east-1c", "m5.large", true).unwrap().usd_per_hour,
            0.1
        );
    }
}
