//! Prices that look like AWS's, from flotilla-capacity's numbers: spot prices per zone and type
//! below on-demand (DescribeSpotPriceHistory), and the Pricing API (GetProducts) answering the
//! committed CSV scaled by each region's factor.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use common::{Aws, values};
use flotilla_capacity::PriceBook;
use serde_json::json;

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

/// The committed on-demand data flotilla-capacity's table is built from.
const CSV: &str = include_str!("../../capacity/data/ondemand-us-east-1.csv");

fn csv_price(instance_type: &str) -> f64 {
    CSV.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(&format!("{instance_type},")))
        .and_then(|price| price.parse().ok())
        .unwrap_or_else(|| panic!("{instance_type} in the CSV"))
}

/// GetProducts with the filters a client sends for one region (and type); the answer's JSON.
async fn get_products(
    aws: &Aws,
    filters: &[(&str, &str)],
    extra: serde_json::Value,
) -> (u16, serde_json::Value) {
    let filters: Vec<_> = filters
        .iter()
        .map(|(field, value)| json!({"Type": "TERM_MATCH", "Field": field, "Value": value}))
        .collect();
    let mut body =
        json!({"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let reply = aws.json("pricing", "AWSPriceListService.GetProducts", &body).await;
    (reply.status, serde_json::from_str(&reply.body).expect("a JSON answer"))
}

/// Each `PriceList` entry (a JSON string) as `(instance type, region, USD per hour)`.
fn products(answer: &serde_json::Value) -> Vec<(String, String, f64)> {
    answer["PriceList"]
        .as_array()
        .expect("a PriceList")
        .iter()
        .map(|entry| {
            let document: serde_json::Value =
                serde_json::from_str(entry.as_str().expect("a JSON string")).expect("JSON");
            let attributes = &document["product"]["attributes"];
            let on_demand = document["terms"]["OnDemand"].as_object().expect("OnDemand terms");
            assert_eq!(on_demand.len(), 1, "{document}");
            let term = on_demand.values().next().expect("a term");
            let dimensions = term["priceDimensions"].as_object().expect("price dimensions");
            let dimension = dimensions.values().next().expect("a dimension");
            assert_eq!(dimension["unit"], "Hrs");
            let usd = dimension["pricePerUnit"]["USD"].as_str().expect("a USD price");
            (
                attributes["instanceType"].as_str().expect("instanceType").to_owned(),
                attributes["regionCode"].as_str().expect("regionCode").to_owned(),
                usd.parse().expect("a number"),
            )
        })
        .collect()
}

/// What a client filters on besides region and type.
const LINUX_ON_DEMAND: [(&str, &str); 6] = [
    ("operatingSystem", "Linux"),
    ("tenancy", "Shared"),
    ("preInstalledSw", "NA"),
    ("capacitystatus", "Used"),
    ("marketoption", "OnDemand"),
    ("productFamily", "Compute Instance"),
];

#[tokio::test]
async fn get_products_answers_the_csv_scaled_by_each_regions_factor() {
    let aws = Aws::new("pricing");
    for region in ["us-east-1", "eu-central-1", "ap-northeast-1", "sa-east-1"] {
        for instance_type in ["m5.large", "c7g.xlarge", "t3.micro", "r6i.2xlarge"] {
            let mut filters = vec![("regionCode", region), ("instanceType", instance_type)];
            filters.extend(LINUX_ON_DEMAND);
            let (status, answer) = get_products(&aws, &filters, json!({})).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["FormatVersion"], "aws_v1");
            assert!(answer.get("NextToken").is_none(), "{answer}");
            let found = products(&answer);
            assert_eq!(found.len(), 1, "{region} {instance_type}: {answer}");
            let (found_type, found_region, usd) = &found[0];
            assert_eq!((found_type.as_str(), found_region.as_str()), (instance_type, region));
            let expected =
                csv_price(instance_type) * flotilla_capacity::prices::region_factor(region);
            assert!((usd - expected).abs() < 1e-6, "{region} {instance_type}: {usd} vs {expected}");
            assert_eq!(*usd, on_demand(region, instance_type), "what the client's table says");
        }
    }
    // Filters the data cannot satisfy: an empty list, not an error.
    for unsatisfiable in
        [("tenancy", "Dedicated"), ("operatingSystem", "Windows"), ("regionCode", "xx-nowhere-1")]
    {
        let (status, answer) =
            get_products(&aws, &[("instanceType", "m5.large"), unsatisfiable], json!({})).await;
        assert_eq!(
            (status, answer["PriceList"].as_array().map(Vec::len)),
            (200, Some(0)),
            "{unsatisfiable:?}"
        );
    }
}

#[tokio::test]
async fn get_products_pages_through_a_region_with_next_token() {
    let aws = Aws::new("pricingpages");
    let mut filters = vec![("regionCode", "us-west-2")];
    filters.extend(LINUX_ON_DEMAND[..5].iter().copied());
    let mut seen = BTreeSet::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let extra = match &token {
            Some(token) => json!({"MaxResults": 100, "NextToken": token}),
            None => json!({"MaxResults": 100}),
        };
        let (status, answer) = get_products(&aws, &filters, extra).await;
        assert_eq!(status, 200, "{answer}");
        let page = products(&answer);
        assert!(page.len() <= 100);
        for (instance_type, region, usd) in page {
            assert_eq!(region, "us-west-2");
            assert_eq!(usd, csv_price(&instance_type), "us-west-2 costs what us-east-1 does");
            assert!(seen.insert(instance_type), "each type once");
        }
        pages += 1;
        token = answer["NextToken"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let rows = CSV.lines().filter(|l| !l.starts_with('#')).count() - 1;
    assert_eq!(seen.len(), rows, "every type of the CSV");
    assert_eq!(pages, rows.div_ceil(100));

    let (status, answer) = get_products(&aws, &filters, json!({"MaxResults": 101})).await;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("InvalidParameterException")));
    let (status, answer) = get_products(&aws, &filters, json!({"NextToken": "nonsense"})).await;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("InvalidNextTokenException")));

    let services = aws
        .json(
            "pricing",
            "AWSPriceListService.DescribeServices",
            &json!({"ServiceCode": "AmazonEC2"}),
        )
        .await
        .ok();
    let services: serde_json::Value = serde_json::from_str(&services.body).unwrap();
    assert_eq!(services["Services"][0]["ServiceCode"], "AmazonEC2");
    let names = services["Services"][0]["AttributeNames"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "instanceType") && names.iter().any(|n| n == "regionCode"));
}
