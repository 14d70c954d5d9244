//! The numbers moto must model the way the client computes them, handed to moto by `up` from
//! `flotilla-capacity`, so there is one copy of each:
//!
//! - on-demand prices: the built-in us-east-1 table ([`prices::builtin_table`], from
//!   `crates/capacity/data/ondemand-us-east-1.csv`) and [`prices::region_factor`] of every region
//!   moto knows; the Pricing API, spot prices and CreateFleet's price order use them;
//! - EC2's throttling buckets: the [`ActionClass`] of every EC2 action (unfiltered and filtered)
//!   with each class's request bucket, and the instance buckets of `RunInstances` and
//!   `TerminateInstances`, as [`RegionBuckets`] applies them.
//!
//! moto says which actions and regions there are (`GET /_flotilla/catalogue`); `up` answers
//! with the tables (`PUT /_flotilla/tables`) before it prints the environment, and keeps a copy
//! in `<state>/tables.json` for people.

use std::collections::BTreeMap;

use flotilla_capacity::prices;
use flotilla_capacity::throttle::ActionClass;
use serde::{Deserialize, Serialize};

/// What moto serves: `GET /_flotilla/catalogue`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct Catalogue {
    /// Every EC2 action (botocore's model of the API).
    pub(crate) ec2_actions: Vec<String>,
    /// Every region moto knows.
    pub(crate) regions: Vec<String>,
}

/// The body of `PUT /_flotilla/tables`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Tables {
    pub(crate) prices: Prices,
    pub(crate) throttle: Throttle,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Prices {
    /// [`prices::BUILTIN_DATE`].
    pub(crate) date: &'static str,
    /// Instance type → USD per hour, Linux, shared tenancy.
    pub(crate) us_east_1: BTreeMap<String, f64>,
    /// Region → its price multiplier over us-east-1.
    pub(crate) region_factors: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Throttle {
    /// Class name → its request bucket.
    pub(crate) classes: BTreeMap<&'static str, Bucket>,
    /// Action → its class without and with filters, ids or pagination.
    pub(crate) actions: BTreeMap<String, Classes>,
    /// Action → its bucket counted in instances.
    pub(crate) instances: BTreeMap<&'static str, Bucket>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Bucket {
    pub(crate) capacity: f64,
    pub(crate) refill_per_second: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Classes {
    pub(crate) unfiltered: &'static str,
    pub(crate) filtered: &'static str,
}

/// The actions EC2 also counts in instances.
const INSTANCE_BUCKET_ACTIONS: [&str; 2] = ["RunInstances", "TerminateInstances"];

impl Tables {
    pub(crate) fn new(catalogue: &Catalogue) -> Tables {
        let region_factors =
            catalogue.regions.iter().map(|r| (r.clone(), prices::region_factor(r))).collect();
        let mut classes = BTreeMap::new();
        let mut actions = BTreeMap::new();
        for action in &catalogue.ec2_actions {
            let pair = [false, true].map(|filtered| {
                let class = ActionClass::of(action, filtered);
                let (capacity, refill_per_second) = class.bucket();
                classes.insert(class_name(class), Bucket { capacity, refill_per_second });
                class_name(class)
            });
            actions.insert(action.clone(), Classes { unfiltered: pair[0], filtered: pair[1] });
        }
        let instances = INSTANCE_BUCKET_ACTIONS
            .into_iter()
            .filter_map(|action| instance_bucket(action).map(|bucket| (action, bucket)))
            .collect();
        Tables {
            prices: Prices {
                date: prices::BUILTIN_DATE,
                us_east_1: prices::builtin_table().clone(),
                region_factors,
            },
            throttle: Throttle { classes, actions, instances },
        }
    }
}

/// The name moto knows a class by (exhaustive, so a new class cannot go unnamed).
fn class_name(class: ActionClass) -> &'static str {
    match class {
        ActionClass::RunInstances => "RunInstances",
        ActionClass::TerminateInstances => "TerminateInstances",
        ActionClass::Mutating => "Mutating",
        ActionClass::NonMutating => "NonMutating",
        ActionClass::UnfilteredDescribe => "UnfilteredDescribe",
        ActionClass::Tags => "Tags",
    }
}

/// The bucket `action`'s instances are counted in, `None` when it has none.
fn instance_bucket(action: &str) -> Option<Bucket> {
    flotilla_capacity::throttle::instance_bucket(action)
        .map(|(capacity, refill_per_second)| Bucket { capacity, refill_per_second })
}

/// Asks moto for its catalogue, hands it the tables, and writes them to `copy`.
pub(crate) async fn hand_to_moto(
    http: &reqwest::Client,
    moto_url: &str,
    copy: &std::path::Path,
) -> Result<(), String> {
    let url = format!("{moto_url}/_flotilla/catalogue");
    let catalogue: Catalogue = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let tables = Tables::new(&catalogue);
    let body = serde_json::to_vec_pretty(&tables).map_err(|e| e.to_string())?;
    let url = format!("{moto_url}/_flotilla/tables");
    let answer = http
        .put(&url)
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = answer.status();
    if !status.is_success() {
        let text = answer.text().await.unwrap_or_default();
        return Err(format!("PUT {url} answered {status}: {text}"));
    }
    fs_err::write(copy, body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue {
            ec2_actions: ["DescribeInstances", "RunInstances", "CreateFleet", "CreateTags"]
                .map(str::to_owned)
                .to_vec(),
            regions: ["us-east-1", "eu-central-1", "xx-new-1"].map(str::to_owned).to_vec(),
        }
    }

    #[test]
    fn instance_buckets_are_read_off_region_buckets() {
        // refs/capacity.md §4.5: RunInstances 1000 instances / 2 per s, TerminateInstances
        // 1000 / 20 per s; other actions have none.
        let run = instance_bucket("RunInstances").unwrap();
        assert_eq!((run.capacity, run.refill_per_second), (1000.0, 2.0));
        let terminate = instance_bucket("TerminateInstances").unwrap();
        assert_eq!((terminate.capacity, terminate.refill_per_second), (1000.0, 20.0));
        assert_eq!(instance_bucket("CreateFleet"), None);
    }

    #[test]
    fn every_action_gets_flotilla_capacitys_classes_and_every_region_its_factor() {
        let tables = Tables::new(&catalogue());
        let throttle = &tables.throttle;
        assert_eq!(
            throttle.actions["DescribeInstances"],
            Classes { unfiltered: "UnfilteredDescribe", filtered: "NonMutating" }
        );
        assert_eq!(throttle.actions["CreateFleet"].unfiltered, "Mutating");
        assert_eq!(throttle.actions["CreateTags"].filtered, "Tags");
        let unfiltered = throttle.classes["UnfilteredDescribe"];
        assert_eq!((unfiltered.capacity, unfiltered.refill_per_second), (50.0, 10.0));
        assert_eq!(
            throttle.instances.keys().copied().collect::<Vec<_>>(),
            ["RunInstances", "TerminateInstances"]
        );
        let prices = &tables.prices;
        assert_eq!(prices.region_factors["eu-central-1"], prices::region_factor("eu-central-1"));
        assert_eq!(prices.region_factors["xx-new-1"], prices::region_factor("xx-new-1"));
        assert_eq!(prices.us_east_1["m5.large"], prices::builtin_table()["m5.large"]);
    }
}
