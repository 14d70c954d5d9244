//! Client-side throttling: EC2's token buckets, kept on this side so that flotilla stays inside
//! them instead of learning them from `RequestLimitExceeded`.
//!
//! EC2 throttles per account and region with token buckets: a bucket holds up to its capacity,
//! refills at a steady rate, and each request takes a token (the EC2 developer guide, "Request
//! throttling for the Amazon EC2 API"; refs/capacity.md §4.5). Request buckets by action class:
//!
//! | class | capacity | refill/s |
//! |---|---|---|
//! | `RunInstances` | 5 | 2 |
//! | `TerminateInstances` | 100 | 5 |
//! | mutating (everything else that changes something; `CreateFleet` is one) | 50 | 5 |
//! | non-mutating (`Describe*`, `Get*`, `List*`), filtered or paginated | 100 | 20 |
//! | unfiltered, unpaginated `Describe*` | 50 | 10 |
//! | `CreateTags`, `DeleteTags` | 100 | 10 |
//!
//! and resource buckets counted in instances: `RunInstances` 1000 / 2 per s,
//! `TerminateInstances` 1000 / 20 per s. A request waits until its tokens are there
//! ([`TokenBucket::take`] says how long); time is passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(capacity: f64, refill_per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket { capacity, refill_per_second, tokens: capacity, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes `tokens` at `now` when they are there (`Ok`), else says how long until they will
    /// be (`Err`), taking nothing. A request larger than the capacity waits for a full bucket
    /// and then takes it all.
    pub fn take(&mut self, tokens: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let wanted = tokens.min(self.capacity);
        if self.tokens >= wanted {
            self.tokens -= wanted;
            return Ok(());
        }
        let missing = wanted - self.tokens;
        Err(Duration::from_secs_f64(missing / self.refill_per_second))
    }
}

/// EC2's action classes, each with its own request bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionClass {
    RunInstances,
    TerminateInstances,
    Mutating,
    NonMutating,
    UnfilteredDescribe,
    Tags,
}

impl ActionClass {
    /// The class of EC2 action `action`; `filtered` when the call has filters, ids or
    /// pagination (which moves the big Describe calls to the larger bucket).
    pub fn of(action: &str, filtered: bool) -> ActionClass {
        const UNFILTERED_HEAVY: &[&str] = &[
            "DescribeInstances",
            "DescribeInstanceStatus",
            "DescribeNetworkInterfaces",
            "DescribeSecurityGroups",
            "DescribeSnapshots",
            "DescribeSpotInstanceRequests",
            "DescribeVolumes",
        ];
        match action {
            "RunInstances" => ActionClass::RunInstances,
            "TerminateInstances" => ActionClass::TerminateInstances,
            "CreateTags" | "DeleteTags" => ActionClass::Tags,
            a if UNFILTERED_HEAVY.contains(&a) && !filtered => ActionClass::UnfilteredDescribe,
            a if ["Describe", "Get", "List", "Search"].iter().any(|p| a.starts_with(p)) => {
                ActionClass::NonMutating
            }
            _ => ActionClass::Mutating,
        }
    }

    /// (capacity, refill per second) of the class's request bucket.
    pub fn bucket(self) -> (f64, f64) {
        match self {
            ActionClass::RunInstances => (5.0, 2.0),
            ActionClass::TerminateInstances => (100.0, 5.0),
            ActionClass::Mutating => (50.0, 5.0),
            ActionClass::NonMutating => (100.0, 20.0),
            ActionClass::UnfilteredDescribe => (50.0, 10.0),
            ActionClass::Tags => (100.0, 10.0),
        }
    }
}

/// (capacity, refill per second) of the instance bucket of `action`, counted in instances:
/// `RunInstances` and `TerminateInstances` have one; other actions none.
pub fn instance_bucket(action: &str) -> Option<(f64, f64)> {
    match action {
        "RunInstances" => Some((1000.0, 2.0)),
        "TerminateInstances" => Some((1000.0, 20.0)),
        _ => None,
    }
}

/// The request buckets of one account and region, and the instance buckets of `RunInstances`
/// and `TerminateInstances`.
#[derive(Clone, Debug)]
pub struct RegionBuckets {
    requests: BTreeMap<ActionClass, TokenBucket>,
    run_instances: TokenBucket,
    terminate_instances: TokenBucket,
}

impl RegionBuckets {
    pub fn new(now: Instant) -> RegionBuckets {
        let bucket = |action| {
            let (capacity, refill) =
                instance_bucket(action).expect("the action has an instance bucket");
            TokenBucket::new(capacity, refill, now)
        };
        RegionBuckets {
            requests: BTreeMap::new(),
            run_instances: bucket("RunInstances"),
            terminate_instances: bucket("TerminateInstances"),
        }
    }

    /// Takes what a call of `action` for `instances` machines needs at `now`, or says how long
    /// to wait (taking nothing).
    pub fn take(
        &mut self,
        action: &str,
        filtered: bool,
        instances: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let class = ActionClass::of(action, filtered);
        let resource = match action {
            "RunInstances" => Some(&mut self.run_instances),
            "TerminateInstances" => Some(&mut self.terminate_instances),
            _ => None,
        };
        let resource_wait = match resource {
            Some(bucket) if instances > 0 => bucket.take(f64::from(instances), now).err(),
            _ => None,
        };
        if let Some(wait) = resource_wait {
            return Err(wait);
        }
        let (capacity, refill) = class.bucket();
        let bucket =
            self.requests.entry(class).or_insert_with(|| TokenBucket::new(capacity, refill, now));
        match bucket.take(1.0, now) {
            Ok(()) => Ok(()),
            Err(wait) => {
                // The instances were taken: give back what was taken (at most the bucket's
                // capacity) so the retry takes them again.
                let resource = match action {
                    "RunInstances" => Some(&mut self.run_instances),
                    "TerminateInstances" => Some(&mut self.terminate_instances),
                    _ => None,
                };
                if let Some(bucket) = resource.filter(|_| instances > 0) {
                    let taken = f64::from(instances).min(bucket.capacity);
                    bucket.tokens = (bucket.tokens + taken).min(bucket.capacity);
                }
                Err(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 2.0, t0);
        for _ in 0..5 {
            assert_eq!(bucket.take(1.0, t0), Ok(()));
        }
        assert_eq!(bucket.take(1.0, t0), Err(Duration::from_millis(500)));
        assert_eq!(bucket.take(1.0, t0 + Duration::from_millis(500)), Ok(()));
        // Ten seconds idle refill it to its capacity, no more.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert_eq!(bucket.take(1.0, later), Ok(()));
        }
        assert!(bucket.take(1.0, later).is_err());
    }

    #[test]
    fn actions_fall_into_their_classes() {
        assert_eq!(ActionClass::of("RunInstances", false), ActionClass::RunInstances);
        assert_eq!(ActionClass::of("CreateFleet", false), ActionClass::Mutating);
        assert_eq!(ActionClass::of("DescribeInstances", false), ActionClass::UnfilteredDescribe);
        assert_eq!(ActionClass::of("DescribeInstances", true), ActionClass::NonMutating);
        assert_eq!(ActionClass::of("DescribeSpotPriceHistory", false), ActionClass::NonMutating);
        assert_eq!(ActionClass::of("CreateTags", false), ActionClass::Tags);
    }

    #[test]
    fn a_refused_request_gives_back_only_what_it_took() {
        let t0 = Instant::now();
        let mut buckets = RegionBuckets::new(t0);
        for _ in 0..5 {
            assert_eq!(buckets.take("RunInstances", true, 0, t0), Ok(()));
        }
        // The request bucket is empty: 5000 instances take the whole instance bucket (1000),
        // are refused, and exactly those 1000 go back.
        assert!(buckets.take("RunInstances", true, 5000, t0).is_err());
        assert!(
            (buckets.run_instances.tokens - 1000.0).abs() < 1e-9,
            "{}",
            buckets.run_instances.tokens
        );
    }

    #[test]
    fn run_instances_is_limited_by_requests_and_by_instances() {
        let t0 = Instant::now();
        let mut buckets = RegionBuckets::new(t0);
        assert_eq!(buckets.take("RunInstances", true, 600, t0), Ok(()));
        // 400 instances left: a request for 500 waits for 100 more at 2 per second.
        assert_eq!(buckets.take("RunInstances", true, 500, t0), Err(Duration::from_secs(50)));
        assert_eq!(buckets.take("RunInstances", true, 400, t0), Ok(()));
        // The request bucket: 5 requests at once.
        for _ in 0..3 {
            assert_eq!(buckets.take("RunInstances", true, 0, t0), Ok(()));
        }
        assert_eq!(buckets.take("RunInstances", true, 0, t0), Err(Duration::from_millis(500)));
    }
}
