//! The unavailable-offerings cache and the classes of launch errors that feed it.
//!
//! A launch error is one of five classes ([`classify`]):
//! - **pool**: this (market, type, zone) has no capacity now (`InsufficientInstanceCapacity`,
//!   `UnfulfillableCapacity`, `Unsupported`, …): the pool is marked unavailable;
//! - **quota**: an account limit shared by a family of types (`VcpuLimitExceeded`,
//!   `MaxSpotInstanceCountExceeded`): the (region, market, quota family) is marked, so other
//!   types of the family are not tried in vain;
//! - **subnet**: the zone's subnet is full (`InsufficientFreeAddressesInSubnet`): the zone is
//!   marked for every type;
//! - **throttle**: the API was busy (`RequestLimitExceeded`, `InternalError`, `Unavailable`):
//!   nothing is marked, the same request is retried after a backoff;
//! - **fatal**: anything else (a bad parameter, a permission): the launch stops with it.
//!
//! Only the first three feed the cache. A mark lasts [`UNAVAILABLE_TTL`] (3 min, Karpenter's
//! figure); marking again refreshes it. `Unsupported` (the zone does not run the type at all) is
//! the exception: it marks the type in the zone for both markets and does not expire, so a
//! launch that has nothing else left fails at once instead of waiting for it. Time is passed
//! in, never read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long a mark lasts.
pub const UNAVAILABLE_TTL: Duration = Duration::from_secs(180);

/// The code a reclaimed spot pool is marked with ([`UnavailableOfferings::record_reclaim`]).
pub const RECLAIMED: &str = "SpotInstanceReclaimed";

/// A capacity market as EC2 fleets name it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    Spot,
    OnDemand,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Spot => "spot",
            Lifecycle::OnDemand => "on-demand",
        }
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a launch error means for the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    Pool,
    Quota,
    Subnet,
    Throttle,
    Fatal,
}

/// The class of an EC2 launch error code (see the module documentation).
pub fn classify(code: &str) -> ErrorClass {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "UnfulfillableCapacity"
        | "Unsupported"
        | "SpotMaxPriceTooLow"
        | "InsufficientHostCapacity"
        | "ReservationCapacityExceeded"
        | "MaxFleetCountExceeded"
        | "InsufficientReservedInstanceCapacity" => ErrorClass::Pool,
        "VcpuLimitExceeded" | "MaxSpotInstanceCountExceeded" | "InstanceLimitExceeded" => {
            ErrorClass::Quota
        }
        "InsufficientFreeAddressesInSubnet" => ErrorClass::Subnet,
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "InternalError"
        | "InternalFailure"
        | "Unavailable"
        | "ServiceUnavailable" => ErrorClass::Throttle,
        _ => ErrorClass::Fatal,
    }
}

/// The vCPU quota an instance type counts against (AWS's "Running On-Demand … instances" and
/// "All … Spot Instance Requests" quotas): `standard` for A, C, D, H, I, M, R, T and Z, and one
/// quota each for the accelerated and high-memory families.
pub fn quota_family(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or(instance_type);
    if family.starts_with("u-") || family.starts_with("u7") {
        return "high-memory";
    }
    for (prefix, quota) in [
        ("inf", "inf"),
        ("trn", "trn"),
        ("dl", "dl"),
        ("hpc", "hpc"),
        ("vt", "g-and-vt"),
        ("mac", "mac"),
    ] {
        if family.starts_with(prefix) {
            return quota;
        }
    }
    match family.as_bytes().first() {
        Some(b'f') => "f",
        Some(b'g') => "g-and-vt",
        Some(b'p') => "p",
        Some(b'x') => "x",
        _ => "standard",
    }
}

/// A pool: one instance type in one zone in one market.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Pool {
    pub lifecycle: Lifecycle,
    pub instance_type: String,
    pub zone: String,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} in {}", self.lifecycle, self.instance_type, self.zone)
    }
}

/// Why something is marked, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mark {
    until: Instant,
    code: String,
}

/// Unavailable pools, quota families and zones, each until its mark expires.
#[derive(Clone, Debug, Default)]
pub struct UnavailableOfferings {
    pools: BTreeMap<Pool, Mark>,
    /// (region, lifecycle, quota family).
    quotas: BTreeMap<(String, Lifecycle, &'static str), Mark>,
    /// Zones whose subnet is full.
    zones: BTreeMap<String, Mark>,
    /// (type, zone) that the zone does not run at all, with the code: for good, both markets.
    unsupported: BTreeMap<(String, String), String>,
}

impl UnavailableOfferings {
    /// Records a launch error for `pool` of `region` at `now`; returns its class. Throttle and
    /// fatal errors mark nothing.
    pub fn record_error(
        &mut self,
        region: &str,
        pool: &Pool,
        code: &str,
        now: Instant,
    ) -> ErrorClass {
        let class = classify(code);
        let mark = Mark { until: now + UNAVAILABLE_TTL, code: code.to_owned() };
        match class {
            ErrorClass::Pool if code == "Unsupported" => {
                self.unsupported
                    .insert((pool.instance_type.clone(), pool.zone.clone()), code.to_owned());
            }
            ErrorClass::Pool => {
                self.pools.insert(pool.clone(), mark);
            }
            ErrorClass::Quota => {
                let family = quota_family(&pool.instance_type);
                self.quotas.insert((region.to_owned(), pool.lifecycle, family), mark);
            }
            ErrorClass::Subnet => {
                self.zones.insert(pool.zone.clone(), mark);
            }
            ErrorClass::Throttle | ErrorClass::Fatal => {}
        }
        class
    }

    /// A spot pool that was just reclaimed (one of its instances got a spot interruption):
    /// marked as a capacity error is, so a replacement asks other pools first until the mark
    /// expires. An on-demand pool is not marked by a reclaim.
    pub fn record_reclaim(&mut self, pool: &Pool, now: Instant) {
        if pool.lifecycle == Lifecycle::Spot {
            let mark = Mark { until: now + UNAVAILABLE_TTL, code: RECLAIMED.to_owned() };
            self.pools.insert(pool.clone(), mark);
        }
    }

    /// The error code that makes `pool` of `region` unavailable at `now`, if one does.
    pub fn unavailable(&self, region: &str, pool: &Pool, now: Instant) -> Option<&str> {
        fn live(mark: &Mark, now: Instant) -> Option<&str> {
            (mark.until > now).then_some(mark.code.as_str())
        }
        if let Some(code) = self.unsupported.get(&(pool.instance_type.clone(), pool.zone.clone())) {
            return Some(code);
        }
        self.pools
            .get(pool)
            .and_then(|mark| live(mark, now))
            .or_else(|| {
                let family = quota_family(&pool.instance_type);
                self.quotas
                    .get(&(region.to_owned(), pool.lifecycle, family))
                    .and_then(|mark| live(mark, now))
            })
            .or_else(|| self.zones.get(&pool.zone).and_then(|mark| live(mark, now)))
    }

    /// When the next live mark expires after `now`: a launch that found every pool marked waits
    /// until then.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.pools
            .values()
            .chain(self.quotas.values())
            .chain(self.zones.values())
            .map(|mark| mark.until)
            .filter(|until| *until > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(lifecycle: Lifecycle, instance_type: &str, zone: &str) -> Pool {
        Pool { lifecycle, instance_type: instance_type.to_owned(), zone: zone.to_owned() }
    }

    #[test]
    fn a_reclaimed_spot_pool_is_skipped_until_its_mark_expires() {
        let now = Instant::now();
        let mut cache = UnavailableOfferings::default();
        let spot = pool(Lifecycle::Spot, "m7i.large", "us-east-1a");
        let on_demand = pool(Lifecycle::OnDemand, "m7i.large", "us-east-1a");
        cache.record_reclaim(&spot, now);
        cache.record_reclaim(&on_demand, now);
        assert_eq!(cache.unavailable("us-east-1", &spot, now), Some(RECLAIMED));
        assert_eq!(cache.unavailable("us-east-1", &on_demand, now), None, "on-demand stays open");
        assert_eq!(cache.next_expiry(now), Some(now + UNAVAILABLE_TTL));
        assert_eq!(cache.unavailable("us-east-1", &spot, now + UNAVAILABLE_TTL), None);
    }

    #[test]
    fn codes_fall_into_their_classes() {
        assert_eq!(classify("InsufficientInstanceCapacity"), ErrorClass::Pool);
        assert_eq!(classify("UnfulfillableCapacity"), ErrorClass::Pool);
        assert_eq!(classify("VcpuLimitExceeded"), ErrorClass::Quota);
        assert_eq!(classify("MaxSpotInstanceCountExceeded"), ErrorClass::Quota);
        assert_eq!(classify("InsufficientFreeAddressesInSubnet"), ErrorClass::Subnet);
        assert_eq!(classify("RequestLimitExceeded"), ErrorClass::Throttle);
        assert_eq!(classify("InternalError"), ErrorClass::Throttle);
        assert_eq!(classify("InvalidParameterValue"), ErrorClass::Fatal);
        assert_eq!(classify("UnauthorizedOperation"), ErrorClass::Fatal);
    }

    #[test]
    fn quota_families_follow_aws_quotas() {
        for (instance_type, family) in [
            ("m7i.large", "standard"),
            ("t4g.nano", "standard"),
            ("c6gn.xlarge", "standard"),
            ("r8g.large", "standard"),
            ("g5.xlarge", "g-and-vt"),
            ("vt1.3xlarge", "g-and-vt"),
            ("p4d.24xlarge", "p"),
            ("inf2.xlarge", "inf"),
            ("trn1.2xlarge", "trn"),
            ("x2idn.16xlarge", "x"),
            ("u-6tb1.metal", "high-memory"),
            ("f1.2xlarge", "f"),
            ("dl1.24xlarge", "dl"),
            ("hpc7g.4xlarge", "hpc"),
            ("mac2.metal", "mac"),
        ] {
            assert_eq!(quota_family(instance_type), family, "{instance_type}");
        }
    }

    #[test]
    fn marks_expire_after_their_ttl_and_refresh_when_marked_again() {
        let t0 = Instant::now();
        let mut cache = UnavailableOfferings::default();
        let dry = pool(Lifecycle::Spot, "m7i.large", "us-east-1a");
        cache.record_error("us-east-1", &dry, "InsufficientInstanceCapacity", t0);
        assert_eq!(cache.unavailable("us-east-1", &dry, t0), Some("InsufficientInstanceCapacity"));
        // Another market, type or zone is not affected.
        assert_eq!(
            cache.unavailable(
                "us-east-1",
                &pool(Lifecycle::OnDemand, "m7i.large", "us-east-1a"),
                t0
            ),
            None
        );
        assert_eq!(
            cache.unavailable("us-east-1", &pool(Lifecycle::Spot, "m7i.large", "us-east-1b"), t0),
            None
        );
        let later = t0 + Duration::from_secs(120);
        assert!(cache.unavailable("us-east-1", &dry, later).is_some());
        assert_eq!(cache.next_expiry(later), Some(t0 + UNAVAILABLE_TTL));
        assert_eq!(cache.unavailable("us-east-1", &dry, t0 + UNAVAILABLE_TTL), None, "expired");
        // Marked again at 120 s: it lasts until 300 s.
        cache.record_error("us-east-1", &dry, "InsufficientInstanceCapacity", later);
        assert!(cache.unavailable("us-east-1", &dry, t0 + Duration::from_secs(299)).is_some());
        assert!(cache.unavailable("us-east-1", &dry, t0 + Duration::from_secs(300)).is_none());
    }

    #[test]
    fn a_quota_error_marks_the_whole_family_in_the_region_and_market() {
        let t0 = Instant::now();
        let mut cache = UnavailableOfferings::default();
        let class = cache.record_error(
            "us-east-1",
            &pool(Lifecycle::OnDemand, "m7i.large", "us-east-1a"),
            "VcpuLimitExceeded",
            t0,
        );
        assert_eq!(class, ErrorClass::Quota);
        for other in ["c6i.xlarge", "r7g.large", "t3.micro"] {
            let same_family = pool(Lifecycle::OnDemand, other, "us-east-1c");
            assert_eq!(
                cache.unavailable("us-east-1", &same_family, t0),
                Some("VcpuLimitExceeded"),
                "{other}"
            );
        }
        assert_eq!(
            cache.unavailable(
                "us-east-1",
                &pool(Lifecycle::OnDemand, "p4d.24xlarge", "us-east-1a"),
                t0
            ),
            None
        );
        assert_eq!(
            cache.unavailable("us-east-1", &pool(Lifecycle::Spot, "m7i.large", "us-east-1a"), t0),
            None
        );
        assert_eq!(
            cache.unavailable(
                "us-west-2",
                &pool(Lifecycle::OnDemand, "m7i.large", "us-west-2a"),
                t0
            ),
            None
        );
    }

    #[test]
    fn an_unsupported_type_is_marked_for_good_in_both_markets() {
        let t0 = Instant::now();
        let mut cache = UnavailableOfferings::default();
        let spot = pool(Lifecycle::Spot, "m7i.large", "us-east-1e");
        assert_eq!(cache.record_error("us-east-1", &spot, "Unsupported", t0), ErrorClass::Pool);
        let later = t0 + UNAVAILABLE_TTL * 10;
        assert_eq!(cache.unavailable("us-east-1", &spot, later), Some("Unsupported"));
        let on_demand = pool(Lifecycle::OnDemand, "m7i.large", "us-east-1e");
        assert_eq!(cache.unavailable("us-east-1", &on_demand, later), Some("Unsupported"));
        assert_eq!(cache.next_expiry(t0), None, "nothing to wait for");
    }

    #[test]
    fn throttles_and_fatal_errors_mark_nothing() {
        let t0 = Instant::now();
        let mut cache = UnavailableOfferings::default();
        let p = pool(Lifecycle::Spot, "m7i.large", "us-east-1a");
        assert_eq!(
            cache.record_error("us-east-1", &p, "RequestLimitExceeded", t0),
            ErrorClass::Throttle
        );
        assert_eq!(
            cache.record_error("us-east-1", &p, "InvalidParameterValue", t0),
            ErrorClass::Fatal
        );
        assert_eq!(cache.unavailable("us-east-1", &p, t0), None);
        assert_eq!(cache.next_expiry(t0), None);
    }
}
