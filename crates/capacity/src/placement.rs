//! Balanced placement: a group's machines spread over its zones so that no zone has more than
//! one machine above another. Surviving a zone's outage is the point of spreading, so balance
//! comes before price: a zone whose spot pools are dry gets on-demand machines (with
//! `prefer-spot`) rather than sending its share to another zone's spot. Only capacity moves a
//! share, when a zone can give nothing at all, and the launch summary says so.

use std::collections::BTreeMap;

/// How many more machines each zone should get so that, with `existing` machines already
/// running, the group of `total` is as balanced as it can be. Zones are filled in name order,
/// the emptiest first; machines already running are never moved.
pub fn balanced_targets(
    total: usize,
    zones: &[String],
    existing: &BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> =
        zones.iter().map(|zone| (zone.clone(), existing.get(zone).copied().unwrap_or(0))).collect();
    let mut targets: BTreeMap<String, usize> = zones.iter().map(|zone| (zone.clone(), 0)).collect();
    let placed: usize = existing.values().sum();
    for _ in placed..total {
        let Some(zone) = counts
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(zone, _)| zone.clone())
        else {
            break;
        };
        *counts.get_mut(&zone).expect("the zone is counted") += 1;
        *targets.get_mut(&zone).expect("the zone has a target") += 1;
    }
    targets.retain(|_, count| *count > 0);
    targets
}

/// The difference between the fullest and the emptiest zone.
pub fn imbalance(counts: &BTreeMap<String, usize>, zones: &[String]) -> usize {
    let per_zone: Vec<usize> = zones.iter().map(|z| counts.get(z).copied().unwrap_or(0)).collect();
    let max = per_zone.iter().copied().max().unwrap_or(0);
    let min = per_zone.iter().copied().min().unwrap_or(0);
    max - min
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(names: &[&str]) -> Vec<String> {
        names.iter().map(|z| (*z).to_owned()).collect()
    }

    #[test]
    fn machines_spread_evenly_with_the_remainder_in_zone_order() {
        let z = zones(&["a", "b", "c"]);
        let targets = balanced_targets(20, &z, &BTreeMap::new());
        assert_eq!(targets, BTreeMap::from([("a".into(), 7), ("b".into(), 7), ("c".into(), 6)]));
        assert_eq!(imbalance(&targets, &z), 1);
        assert_eq!(balanced_targets(2, &z, &BTreeMap::new()).len(), 2);
    }

    #[test]
    fn running_machines_count_and_are_not_moved() {
        let z = zones(&["a", "b", "c"]);
        let existing = BTreeMap::from([("a".to_owned(), 4)]);
        let targets = balanced_targets(9, &z, &existing);
        assert_eq!(targets, BTreeMap::from([("b".into(), 3), ("c".into(), 2)]));
        // Already at the total: nothing more.
        assert!(balanced_targets(4, &z, &existing).is_empty());
    }
}
