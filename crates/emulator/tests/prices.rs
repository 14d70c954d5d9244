//! Prices that look like AWS's, from flotilla-capacity's numbers: spot prices per zone and type
//! below on-demand (DescribeSpotPriceHistory).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use common::{Aws, values};
use flotilla_capacity::PriceBook;

#[derive(Clone, Debug, PartialEq)]
struct SpotEntry {
    zone: String,
    instance_type: String,
    product: String,
    price: f64,
    timestamp: String,
}

fn spot_entries(body: &str) -> Vec<SpotEntry> {
    let set = values(body, "spotPriceHistorySet").into_iter().next().unwrap_or_default();
    values(&set, "item")
        .iter()
        .map(|item| {
            let field = |tag: &str| {
                values(item, tag).into_iter().next().unwrap_or_else(|| panic!("<{tag}> in {item}"))
            };
            SpotEntry {
                zone: field("availabilityZone"),
                instance_type: field("instanceType"),
                product: field("productDescription"),
                price: field("spotPrice").parse().expect("a price"),
                timestamp: field("timestamp"),
            }
        })
        .collect()
}

fn on_demand(region: &str, instance_type: &str) -> f64 {
    PriceBook::builtin_only()
        .on_demand(region, instance_type)
        .expect("a built-in price")
        .usd_per_hour
}

#[tokio::test]
async fn spot_prices_are_below_on_demand_and_differ_by_zone_and_type() {
    let aws = Aws::new("spotprices");
    let now = SystemTime::now();
    let start = humantime::format_rfc3339_seconds(now).to_string();
    let ask = [
        ("InstanceType.1", "m5.large"),
        ("InstanceType.2", "c5.large"),
        ("ProductDescription.1", "Linux/UNIX"),
        ("StartTime", start.as_str()),
    ];
    let reply = aws.ec2("DescribeSpotPriceHistory", &ask).await.ok();
    let entries = spot_entries(&reply.body);
    let mut by_type: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for entry in &entries {
        assert_eq!(entry.product, "Linux/UNIX", "{entry:?}");
        let od = on_demand("us-east-1", &entry.instance_type);
        assert!(
            entry.price >= od * 0.25 - 1e-6 && entry.price < od * 0.75 + 1e-6,
            "{entry:?}: not in 0.25..0.75 of on-demand {od}"
        );
        let stamp = humantime::parse_rfc3339_weak(entry.timestamp.trim_end_matches('Z'))
            .expect("an RFC 3339 timestamp");
        assert!(stamp <= now, "{entry:?}: the price in effect at StartTime");
        by_type.entry(&entry.instance_type).or_default().insert(&entry.zone, entry.price);
    }
    assert_eq!(by_type.keys().copied().collect::<Vec<_>>(), ["c5.large", "m5.large"]);
    for (instance_type, zones) in &by_type {
        assert!(zones.len() >= 4, "{instance_type} is offered in most of us-east-1: {zones:?}");
        let distinct: BTreeSet<u64> = zones.values().map(|p| (p * 1e6) as u64).collect();
        assert!(distinct.len() > 1, "{instance_type}'s price differs by zone: {zones:?}");
    }
    assert_ne!(by_type["m5.large"]["us-east-1a"], by_type["c5.large"]["us-east-1a"]);
    // The same every time.
    let again = aws.ec2("DescribeSpotPriceHistory", &ask).await.ok();
    assert_eq!(spot_entries(&again.body), entries);
}

#[tokio::test]
async fn spot_price_filters_regions_and_pages_answer_what_a_client_asks() {
    let aws = Aws::new("spotfilters");
    let types = [
        ("InstanceType.1", "m5.large"),
        ("InstanceType.2", "c5.large"),
        ("InstanceType.3", "r5.large"),
    ];
    let all = spot_entries(&aws.ec2("DescribeSpotPriceHistory", &types).await.ok().body);
    assert!(all.len() >= 12, "{all:?}");
    assert!(all.iter().all(|e| e.product == "Linux/UNIX"), "Linux/UNIX by default");

    let mut zone_filter = types.to_vec();
    zone_filter.extend([("Filter.1.Name", "availability-zone"), ("Filter.1.Value.1", "*1b")]);
    let b = spot_entries(&aws.ec2("DescribeSpotPriceHistory", &zone_filter).await.ok().body);
    assert_eq!(b, all.iter().filter(|e| e.zone == "us-east-1b").cloned().collect::<Vec<_>>());
    let mut zone_param = types.to_vec();
    zone_param.push(("AvailabilityZone", "us-east-1c"));
    let c = spot_entries(&aws.ec2("DescribeSpotPriceHistory", &zone_param).await.ok().body);
    assert!(!c.is_empty() && c.iter().all(|e| e.zone == "us-east-1c"), "{c:?}");
    let mut vpc = types.to_vec();
    vpc.push(("ProductDescription.1", "Linux/UNIX (Amazon VPC)"));
    let vpc = spot_entries(&aws.ec2("DescribeSpotPriceHistory", &vpc).await.ok().body);
    assert_eq!(vpc.len(), all.len());
    assert!(vpc.iter().all(|e| e.product == "Linux/UNIX (Amazon VPC)"));

    // Pages of at most 5, in the same order as one answer.
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = types.to_vec();
        params.push(("MaxResults", "5"));
        if let Some(token) = &token {
            params.push(("NextToken", token));
        }
        let reply = aws.ec2("DescribeSpotPriceHistory", &params).await.ok();
        let page = spot_entries(&reply.body);
        assert!(page.len() <= 5);
        paged.extend(page);
        token = reply.value("nextToken");
        if token.is_none() {
            break;
        }
    }
    assert_eq!(paged, all);
    let bad = aws.ec2("DescribeSpotPriceHistory", &[("NextToken", "garbage")]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.ec2_error(), "InvalidPaginationToken");

    // Another region: its own zones, its on-demand prices scaled by the region's factor.
    let frankfurt = Aws::in_region("spotfrankfurt", "eu-central-1");
    let reply = frankfurt.ec2("DescribeSpotPriceHistory", &[("InstanceType.1", "m5.large")]).await;
    let entries = spot_entries(&reply.ok().body);
    assert!(!entries.is_empty());
    let od = on_demand("eu-central-1", "m5.large");
    assert!(od > on_demand("us-east-1", "m5.large"));
    for entry in entries {
        assert!(entry.zone.starts_with("eu-central-1"), "{entry:?}");
        assert!(entry.price >= od * 0.25 - 1e-6 && entry.price < od * 0.75 + 1e-6, "{entry:?}");
    }
}
