//! The launch planner: which fleet requests to make for a group, and what to do with their
//! answers, until every machine runs or the launch deadline passes.
//!
//! The policy, step by step ([`LaunchPlanner::next`]):
//! 1. Each zone gets its balanced share of the group ([`crate::placement`]), counting the
//!    machines already running.
//! 2. A zone that still needs machines gets one request: the first market of the group's order
//!    (`spot`: spot; `prefer-spot`: spot, then on-demand; `on-demand`: on-demand) that has a
//!    pool open in the zone, with every open type of that market as an override, in
//!    preference order. Spot asks for `price-capacity-optimized`; on-demand for `prioritized`
//!    (the spec's order) when the spec lists `instance_types`, and for `lowest-price` when
//!    `requirements` alone chose the types (no order of the user's to keep: EC2 takes the
//!    cheapest that has capacity).
//! 3. An answer ([`LaunchPlanner::record`]) keeps what launched; each error marks its pool,
//!    quota family or zone in the unavailable-offerings cache ([`crate::unavailable`]), and the
//!    shortfall goes back to the zone's need. So the next step asks the pools left, then (with
//!    `prefer-spot`) on-demand in the same zone.
//! 4. A zone where no pool of any allowed market is open hands its need to the zone with the
//!    fewest machines that has an open pool: capacity forced the imbalance, and the summary
//!    says so.
//! 5. When no zone has an open pool, the planner waits for the first mark to expire, and fails
//!    at the deadline, naming every pool it tried and why; when no mark will ever expire (every
//!    pool left is unsupported), it fails at once.
//!
//! Throttling answers mark nothing; the planner waits 1 s, doubling to 8 s, before asking
//! again. Time is passed in, never read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_spec::capacity::Market;
use serde::Serialize;

use crate::placement::{balanced_targets, imbalance};
use crate::unavailable::{ErrorClass, Lifecycle, Pool, UnavailableOfferings, classify};

/// The first wait after a throttled answer; it doubles up to [`MAX_THROTTLE_WAIT`].
const FIRST_THROTTLE_WAIT: Duration = Duration::from_secs(1);
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(8);

/// One group to launch in one region.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupLaunch {
    /// The instance entry's name, for messages.
    pub group: String,
    pub region: String,
    pub market: Market,
    /// Zone → the group's eligible types offered there, in preference order.
    pub offered: BTreeMap<String, Vec<String>>,
    /// Machines to launch.
    pub count: usize,
    /// Machines of the group already running, per zone.
    pub existing: BTreeMap<String, usize>,
    /// Whose order `offered` is in, for on-demand's allocation.
    pub order: TypeOrder,
}

/// Where a group's order of types comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TypeOrder {
    /// The spec lists `instance_types`: the user's preference, kept (`prioritized`).
    Listed,
    /// `requirements` alone chose the types: any is as good, the cheapest first
    /// (`lowest-price`).
    Matched,
}

impl TypeOrder {
    /// The allocation strategy of a request for `lifecycle` in this order.
    pub fn allocation(self, lifecycle: Lifecycle) -> Allocation {
        match (lifecycle, self) {
            (Lifecycle::Spot, _) => Allocation::PriceCapacityOptimized,
            (Lifecycle::OnDemand, TypeOrder::Listed) => Allocation::Prioritized,
            (Lifecycle::OnDemand, TypeOrder::Matched) => Allocation::LowestPrice,
        }
    }
}

/// EC2 Fleet allocation strategies flotilla asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    PriceCapacityOptimized,
    Prioritized,
    LowestPrice,
}

impl Allocation {
    /// The name EC2 takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Allocation::PriceCapacityOptimized => "price-capacity-optimized",
            Allocation::Prioritized => "prioritized",
            Allocation::LowestPrice => "lowest-price",
        }
    }
}

/// One `CreateFleet` (type `instant`) to make: `count` machines in `zone`, overrides the types.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetRequest {
    /// Counts the planner's requests, to tie answers to them.
    pub id: u64,
    pub zone: String,
    pub lifecycle: Lifecycle,
    pub count: usize,
    /// Override types in preference order (index = priority).
    pub instance_types: Vec<String>,
    pub allocation: Allocation,
}

/// A machine a fleet request launched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    pub lifecycle: Lifecycle,
}

/// One entry of a fleet answer's `Errors`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetError {
    /// The override's type, when the error names one (an error without one is about the whole
    /// request).
    pub instance_type: Option<String>,
    pub code: String,
    pub message: String,
}

/// What a fleet request answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetAnswer {
    pub launched: Vec<Launched>,
    pub errors: Vec<FleetError>,
}

/// What happened, for the `-v` log and the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Requested {
        zone: String,
        lifecycle: Lifecycle,
        count: usize,
        instance_types: Vec<String>,
    },
    Landed {
        zone: String,
        lifecycle: Lifecycle,
        instance_type: String,
        count: usize,
    },
    Unavailable {
        pool: Pool,
        code: String,
        message: String,
    },
    /// No pool of `from` is open in the zone: it asks `to` instead.
    FellBack {
        zone: String,
        from: Lifecycle,
        to: Lifecycle,
    },
    /// No pool at all is open in `from`: `count` machines go to `to`.
    Moved {
        from: String,
        to: String,
        count: usize,
    },
    Throttled {
        code: String,
        wait_ms: u64,
    },
    Waiting {
        wait_ms: u64,
    },
}

/// The planner's next step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Make these requests (at once), then [`LaunchPlanner::record`] each answer.
    Launch(Vec<FleetRequest>),
    /// Nothing to ask before this instant.
    Wait(Instant),
    /// Every machine was launched.
    Done,
    /// The group cannot be launched; [`LaunchPlanner::failure`] says why.
    Failed,
}

/// Why a group could not be launched.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LaunchFailure {
    pub group: String,
    pub region: String,
    pub market: Market,
    /// Machines not launched.
    pub missing: usize,
    /// Every pool that answered with an error, with the last code.
    pub tried: Vec<(Pool, String)>,
    /// The error that stopped the launch outright, when one did.
    pub fatal: Option<FleetError>,
    /// The launch stopped before its deadline because no pool set aside will come back.
    pub nothing_left: bool,
}

impl LaunchFailure {
    fn describe(&self) -> String {
        let mut text = format!(
            "{}: {} of the {} machines in {} could not be launched",
            self.group, self.missing, self.market, self.region
        );
        if let Some(fatal) = &self.fatal {
            text.push_str(&format!(": {}: {}", fatal.code, fatal.message));
            return text;
        }
        text.push_str(if self.nothing_left {
            ": no pool that may run them is left"
        } else {
            " before the launch deadline"
        });
        if !self.tried.is_empty() {
            let tried: Vec<String> =
                self.tried.iter().map(|(pool, code)| format!("{pool} ({code})")).collect();
            text.push_str(&format!("; pools tried: {}", tried.join(", ")));
        }
        text
    }
}

/// Plans one group's launch; see the module documentation.
#[derive(Clone, Debug)]
pub struct LaunchPlanner {
    group: GroupLaunch,
    deadline: Instant,
    zones: Vec<String>,
    /// Zone → machines still to ask for.
    need: BTreeMap<String, usize>,
    /// Zone → machines running or launched.
    placed: BTreeMap<String, usize>,
    asked: BTreeMap<u64, FleetRequest>,
    next_id: u64,
    launched: Vec<Launched>,
    tried: BTreeMap<Pool, String>,
    /// Pools an answer refused for this launch only (a fatal error next to launched machines).
    refused: BTreeSet<Pool>,
    fatal: Option<FleetError>,
    throttle_wait: Duration,
    throttled_until: Option<Instant>,
    /// Set when the launch stopped because nothing set aside will come back.
    nothing_left: bool,
    events: Vec<Event>,
    /// Zones that fell back from spot to on-demand.
    fell_back: BTreeSet<String>,
    moved: usize,
}

impl LaunchPlanner {
    pub fn new(group: GroupLaunch, deadline: Instant) -> LaunchPlanner {
        let zones: Vec<String> = group.offered.keys().cloned().collect();
        let need = balanced_targets(
            group.count + group.existing.values().sum::<usize>(),
            &zones,
            &group.existing,
        );
        let placed = group.existing.clone();
        LaunchPlanner {
            group,
            deadline,
            zones,
            need,
            placed,
            asked: BTreeMap::new(),
            next_id: 0,
            launched: Vec::new(),
            tried: BTreeMap::new(),
            refused: BTreeSet::new(),
            fatal: None,
            throttle_wait: FIRST_THROTTLE_WAIT,
            throttled_until: None,
            nothing_left: false,
            events: Vec::new(),
            fell_back: BTreeSet::new(),
            moved: 0,
        }
    }

    /// The markets to ask, in order.
    fn lifecycles(&self) -> &'static [Lifecycle] {
        match self.group.market {
            Market::OnDemand => &[Lifecycle::OnDemand],
            Market::Spot => &[Lifecycle::Spot],
            Market::PreferSpot => &[Lifecycle::Spot, Lifecycle::OnDemand],
        }
    }

    /// The open types of `lifecycle` in `zone`, in preference order.
    fn open_types(
        &self,
        zone: &str,
        lifecycle: Lifecycle,
        cache: &UnavailableOfferings,
        now: Instant,
    ) -> Vec<String> {
        self.group
            .offered
            .get(zone)
            .map(|types| {
                types
                    .iter()
                    .filter(|name| {
                        let pool = Pool {
                            lifecycle,
                            instance_type: (*name).clone(),
                            zone: zone.to_owned(),
                        };
                        !self.refused.contains(&pool)
                            && cache.unavailable(&self.group.region, &pool, now).is_none()
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first market with an open pool in `zone`, and its open types.
    fn open_market(
        &self,
        zone: &str,
        cache: &UnavailableOfferings,
        now: Instant,
    ) -> Option<(Lifecycle, Vec<String>)> {
        self.lifecycles().iter().find_map(|lifecycle| {
            let types = self.open_types(zone, *lifecycle, cache, now);
            (!types.is_empty()).then_some((*lifecycle, types))
        })
    }

    /// The next step at `now`, with the cache as it stands.
    pub fn next(&mut self, cache: &UnavailableOfferings, now: Instant) -> Step {
        if self.fatal.is_some() {
            return Step::Failed;
        }
        if self.need.values().all(|n| *n == 0) {
            return Step::Done;
        }
        if let Some(until) = self.throttled_until.filter(|until| *until > now) {
            return Step::Wait(until);
        }
        // A zone with nothing open hands its need to the emptiest zone that has something.
        let dry: Vec<String> = self
            .need
            .iter()
            .filter(|(zone, need)| **need > 0 && self.open_market(zone, cache, now).is_none())
            .map(|(zone, _)| zone.clone())
            .collect();
        for zone in dry {
            let target = self
                .zones
                .iter()
                .filter(|other| **other != zone && self.open_market(other, cache, now).is_some())
                .min_by_key(|other| {
                    self.placed.get(*other).copied().unwrap_or(0)
                        + self.need.get(*other).copied().unwrap_or(0)
                })
                .cloned();
            if let Some(target) = target {
                let count = self.need.insert(zone.clone(), 0).unwrap_or(0);
                *self.need.entry(target.clone()).or_insert(0) += count;
                self.moved += count;
                self.events.push(Event::Moved { from: zone, to: target, count });
            }
        }
        let mut requests = Vec::new();
        let zones: Vec<(String, usize)> =
            self.need.iter().filter(|(_, n)| **n > 0).map(|(z, n)| (z.clone(), *n)).collect();
        for (zone, count) in zones {
            let Some((lifecycle, instance_types)) = self.open_market(&zone, cache, now) else {
                continue;
            };
            if lifecycle != self.lifecycles()[0] && self.fell_back.insert(zone.clone()) {
                self.events.push(Event::FellBack {
                    zone: zone.clone(),
                    from: self.lifecycles()[0],
                    to: lifecycle,
                });
            }
            let allocation = self.group.order.allocation(lifecycle);
            let request = FleetRequest {
                id: self.next_id,
                zone: zone.clone(),
                lifecycle,
                count,
                instance_types,
                allocation,
            };
            self.next_id += 1;
            self.need.insert(zone, 0);
            self.events.push(Event::Requested {
                zone: request.zone.clone(),
                lifecycle,
                count,
                instance_types: request.instance_types.clone(),
            });
            self.asked.insert(request.id, request.clone());
            requests.push(request);
        }
        if !requests.is_empty() {
            return Step::Launch(requests);
        }
        if now >= self.deadline {
            return Step::Failed;
        }
        let Some(expiry) = cache.next_expiry(now) else {
            // Nothing set aside will come back: waiting cannot help.
            self.nothing_left = true;
            return Step::Failed;
        };
        let until = expiry.min(self.deadline);
        self.events.push(Event::Waiting { wait_ms: millis(until.saturating_duration_since(now)) });
        Step::Wait(until)
    }

    /// Takes in the answer to `request` (from [`Step::Launch`]) at `now`.
    pub fn record(
        &mut self,
        request: &FleetRequest,
        answer: &FleetAnswer,
        cache: &mut UnavailableOfferings,
        now: Instant,
    ) {
        self.asked.remove(&request.id);
        let mut landed: BTreeMap<&str, usize> = BTreeMap::new();
        for machine in answer.launched.iter().take(request.count) {
            *landed.entry(machine.instance_type.as_str()).or_insert(0) += 1;
            *self.placed.entry(machine.zone.clone()).or_insert(0) += 1;
            self.launched.push(machine.clone());
        }
        for (instance_type, count) in landed {
            self.events.push(Event::Landed {
                zone: request.zone.clone(),
                lifecycle: request.lifecycle,
                instance_type: instance_type.to_owned(),
                count,
            });
        }
        let shortfall = request.count.saturating_sub(answer.launched.len());
        *self.need.entry(request.zone.clone()).or_insert(0) += shortfall;
        if shortfall == 0 {
            self.throttle_wait = FIRST_THROTTLE_WAIT;
            return;
        }
        // Errors without a type are about every override of the request.
        let mut errors = answer.errors.clone();
        if errors.is_empty() {
            errors.push(FleetError {
                instance_type: None,
                code: "UnfulfillableCapacity".to_owned(),
                message: format!(
                    "the fleet launched {} of {} machines and named no error",
                    answer.launched.len(),
                    request.count
                ),
            });
        }
        let mut throttled = None;
        for error in &errors {
            let types: Vec<&String> = match &error.instance_type {
                Some(name) => vec![name],
                None => request.instance_types.iter().collect(),
            };
            for instance_type in types {
                let pool = Pool {
                    lifecycle: request.lifecycle,
                    instance_type: instance_type.clone(),
                    zone: request.zone.clone(),
                };
                match cache.record_error(&self.group.region, &pool, &error.code, now) {
                    ErrorClass::Throttle => throttled = Some(error.code.clone()),
                    ErrorClass::Fatal
                        if answer.launched.is_empty()
                            && errors.iter().all(|e| classify(&e.code) == ErrorClass::Fatal) =>
                    {
                        self.fatal = Some(error.clone());
                    }
                    ErrorClass::Fatal => {
                        self.refused.insert(pool.clone());
                        self.tried.insert(pool.clone(), error.code.clone());
                    }
                    ErrorClass::Pool | ErrorClass::Quota | ErrorClass::Subnet => {
                        self.tried.insert(pool.clone(), error.code.clone());
                        self.events.push(Event::Unavailable {
                            pool,
                            code: error.code.clone(),
                            message: error.message.clone(),
                        });
                    }
                }
            }
        }
        if let Some(code) = throttled {
            let wait = self.throttle_wait;
            self.throttled_until = Some(now + wait);
            self.throttle_wait = (wait * 2).min(MAX_THROTTLE_WAIT);
            self.events.push(Event::Throttled { code, wait_ms: millis(wait) });
        }
    }

    /// Every machine launched so far.
    pub fn launched(&self) -> &[Launched] {
        &self.launched
    }

    /// What happened since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Why the group failed, after [`Step::Failed`].
    pub fn failure(&self) -> LaunchFailure {
        LaunchFailure {
            group: self.group.group.clone(),
            region: self.group.region.clone(),
            market: self.group.market,
            missing: self.need.values().sum(),
            tried: self.tried.iter().map(|(pool, code)| (pool.clone(), code.clone())).collect(),
            fatal: self.fatal.clone(),
            nothing_left: self.nothing_left,
        }
    }

    /// Machines per zone, launched or already running.
    pub fn placed(&self) -> &BTreeMap<String, usize> {
        &self.placed
    }

    /// One line on what landed where: "worker: 14 spot in 3 zones, 6 on-demand after spot
    /// capacity ran out in us-east-1a and us-east-1b".
    pub fn summary(&self) -> String {
        let mut by_market: BTreeMap<Lifecycle, (usize, BTreeSet<&str>)> = BTreeMap::new();
        for machine in &self.launched {
            let entry = by_market.entry(machine.lifecycle).or_default();
            entry.0 += 1;
            entry.1.insert(&machine.zone);
        }
        let mut parts = Vec::new();
        for (lifecycle, (count, zones)) in &by_market {
            let mut part = format!(
                "{count} {lifecycle} in {} zone{}",
                zones.len(),
                if zones.len() == 1 { "" } else { "s" }
            );
            if *lifecycle == Lifecycle::OnDemand && !self.fell_back.is_empty() {
                let zones: Vec<&str> = self.fell_back.iter().map(String::as_str).collect();
                part.push_str(&format!(" after spot capacity ran out in {}", join_and(&zones)));
            }
            parts.push(part);
        }
        if parts.is_empty() {
            parts.push("nothing launched".to_owned());
        }
        let mut text = format!("{}: {}", self.group.group, parts.join(", "));
        if self.moved > 0 {
            text.push_str(&format!(
                "; {} placed in other zones because their own had no capacity (zones now differ by {})",
                self.moved,
                imbalance(&self.placed, &self.zones)
            ));
        }
        text
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: &str = "us-east-1";

    fn group(market: Market, count: usize) -> GroupLaunch {
        let types = vec!["m7i.large".to_owned(), "m6i.large".to_owned(), "m5.large".to_owned()];
        GroupLaunch {
            group: "worker".to_owned(),
            region: REGION.to_owned(),
            market,
            offered: ["us-east-1a", "us-east-1b", "us-east-1c"]
                .into_iter()
                .map(|zone| (zone.to_owned(), types.clone()))
                .collect(),
            count,
            existing: BTreeMap::new(),
            order: TypeOrder::Listed,
        }
    }

    /// An emulated EC2: pools listed as dry answer InsufficientInstanceCapacity, the others
    /// launch, on the first open override.
    struct Ec2 {
        dry: BTreeSet<(Lifecycle, String, String)>,
        next: u32,
    }

    impl Ec2 {
        fn answer(&mut self, request: &FleetRequest) -> FleetAnswer {
            let mut answer = FleetAnswer::default();
            for instance_type in &request.instance_types {
                let key = (request.lifecycle, instance_type.clone(), request.zone.clone());
                if self.dry.contains(&key) {
                    answer.errors.push(FleetError {
                        instance_type: Some(instance_type.clone()),
                        code: "InsufficientInstanceCapacity".to_owned(),
                        message: "no capacity".to_owned(),
                    });
                    continue;
                }
                while answer.launched.len() < request.count {
                    self.next += 1;
                    answer.launched.push(Launched {
                        instance_id: format!("i-{:04}", self.next),
                        instance_type: instance_type.clone(),
                        zone: request.zone.clone(),
                        lifecycle: request.lifecycle,
                    });
                }
                break;
            }
            answer
        }
    }

    /// Runs a planner against `ec2` until it is done or failed; returns the final step and how
    /// many requests were made.
    fn run(planner: &mut LaunchPlanner, ec2: &mut Ec2, start: Instant) -> (Step, usize) {
        let mut cache = UnavailableOfferings::default();
        let mut now = start;
        let mut calls = 0;
        for _ in 0..100 {
            match planner.next(&cache, now) {
                Step::Launch(requests) => {
                    for request in requests {
                        calls += 1;
                        let answer = ec2.answer(&request);
                        planner.record(&request, &answer, &mut cache, now);
                    }
                }
                Step::Wait(until) => now = until,
                step => return (step, calls),
            }
        }
        panic!("the planner did not finish");
    }

    fn dry_everywhere(
        lifecycle: Lifecycle,
        zones: &[&str],
    ) -> BTreeSet<(Lifecycle, String, String)> {
        let mut dry = BTreeSet::new();
        for zone in zones {
            for t in ["m7i.large", "m6i.large", "m5.large"] {
                dry.insert((lifecycle, t.to_owned(), (*zone).to_owned()));
            }
        }
        dry
    }

    #[test]
    fn on_demand_spreads_evenly_in_one_request_per_zone() {
        let start = Instant::now();
        let mut planner =
            LaunchPlanner::new(group(Market::OnDemand, 20), start + Duration::from_secs(300));
        let mut ec2 = Ec2 { dry: BTreeSet::new(), next: 0 };
        let (step, calls) = run(&mut planner, &mut ec2, start);
        assert_eq!(step, Step::Done);
        assert_eq!(calls, 3);
        assert_eq!(planner.launched().len(), 20);
        assert_eq!(imbalance(planner.placed(), &planner.zones), 1);
        assert!(
            planner
                .launched()
                .iter()
                .all(|m| m.lifecycle == Lifecycle::OnDemand && m.instance_type == "m7i.large")
        );
        assert_eq!(planner.summary(), "worker: 20 on-demand in 3 zones");
    }

    #[test]
    fn on_demand_keeps_a_listed_order_and_takes_the_cheapest_of_requirement_matches() {
        let allocations = |order: TypeOrder| {
            let mut group = group(Market::PreferSpot, 6);
            group.order = order;
            let start = Instant::now();
            let mut planner = LaunchPlanner::new(group, start + Duration::from_secs(300));
            let mut ec2 = Ec2 { dry: dry_everywhere(Lifecycle::Spot, &["us-east-1a"]), next: 0 };
            let mut cache = UnavailableOfferings::default();
            let mut asked = Vec::new();
            while let Step::Launch(requests) = planner.next(&cache, start) {
                for request in requests {
                    asked.push((request.lifecycle, request.allocation));
                    let answer = ec2.answer(&request);
                    planner.record(&request, &answer, &mut cache, start);
                }
            }
            asked.sort_by_key(|(lifecycle, _)| *lifecycle);
            asked.dedup();
            asked
        };
        assert_eq!(
            allocations(TypeOrder::Listed),
            [
                (Lifecycle::Spot, Allocation::PriceCapacityOptimized),
                (Lifecycle::OnDemand, Allocation::Prioritized)
            ]
        );
        assert_eq!(
            allocations(TypeOrder::Matched),
            [
                (Lifecycle::Spot, Allocation::PriceCapacityOptimized),
                (Lifecycle::OnDemand, Allocation::LowestPrice)
            ]
        );
        assert_eq!(Allocation::LowestPrice.as_str(), "lowest-price");
    }

    #[test]
    fn prefer_spot_falls_back_to_on_demand_in_the_dry_zones_and_stays_balanced() {
        let start = Instant::now();
        let mut planner =
            LaunchPlanner::new(group(Market::PreferSpot, 20), start + Duration::from_secs(300));
        let mut ec2 =
            Ec2 { dry: dry_everywhere(Lifecycle::Spot, &["us-east-1a", "us-east-1b"]), next: 0 };
        let (step, calls) = run(&mut planner, &mut ec2, start);
        assert_eq!(step, Step::Done);
        let launched = planner.launched();
        assert_eq!(launched.len(), 20);
        for machine in launched {
            let expected =
                if machine.zone == "us-east-1c" { Lifecycle::Spot } else { Lifecycle::OnDemand };
            assert_eq!(machine.lifecycle, expected, "{machine:?}");
        }
        assert_eq!(
            imbalance(planner.placed(), &planner.zones),
            1,
            "balanced: {:?}",
            planner.placed()
        );
        // Three spot requests (two refused whole), then two on-demand requests.
        assert_eq!(calls, 5);
        assert_eq!(
            planner.summary(),
            "worker: 6 spot in 1 zone, 14 on-demand in 2 zones after spot capacity ran out in us-east-1a and us-east-1b"
        );
    }

    #[test]
    fn spot_only_moves_a_dry_zones_share_and_says_so() {
        let start = Instant::now();
        let mut planner =
            LaunchPlanner::new(group(Market::Spot, 9), start + Duration::from_secs(300));
        let mut ec2 = Ec2 { dry: dry_everywhere(Lifecycle::Spot, &["us-east-1a"]), next: 0 };
        let (step, _) = run(&mut planner, &mut ec2, start);
        assert_eq!(step, Step::Done);
        assert!(
            planner
                .launched()
                .iter()
                .all(|m| m.lifecycle == Lifecycle::Spot && m.zone != "us-east-1a")
        );
        assert_eq!(planner.launched().len(), 9);
        let summary = planner.summary();
        assert!(
            summary.contains("3 placed in other zones because their own had no capacity"),
            "{summary}"
        );
    }

    #[test]
    fn spot_with_every_pool_dry_fails_at_the_deadline_naming_the_pools() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(300);
        let mut planner = LaunchPlanner::new(group(Market::Spot, 4), deadline);
        let all = ["us-east-1a", "us-east-1b", "us-east-1c"];
        let mut ec2 = Ec2 { dry: dry_everywhere(Lifecycle::Spot, &all), next: 0 };
        let (step, calls) = run(&mut planner, &mut ec2, start);
        assert_eq!(step, Step::Failed);
        // It asked again after the marks expired (3 min), then gave up at the deadline.
        assert_eq!(calls, 6, "two rounds of three zones");
        let failure = planner.failure();
        assert_eq!(failure.missing, 4);
        assert_eq!(failure.tried.len(), 9);
        let text = failure.to_string();
        assert!(text.starts_with("worker: 4 of the spot machines in us-east-1 could not be launched before the launch deadline; pools tried: spot m5.large in us-east-1a (InsufficientInstanceCapacity)"), "{text}");
    }

    #[test]
    fn a_partial_answer_keeps_what_launched_and_asks_the_pools_left() {
        let start = Instant::now();
        let mut g = group(Market::OnDemand, 3);
        g.offered.retain(|zone, _| zone == "us-east-1a");
        let mut planner = LaunchPlanner::new(g, start + Duration::from_secs(60));
        let mut cache = UnavailableOfferings::default();
        let Step::Launch(requests) = planner.next(&cache, start) else { panic!() };
        let request = &requests[0];
        assert_eq!(request.instance_types, ["m7i.large", "m6i.large", "m5.large"]);
        let answer = FleetAnswer {
            launched: vec![Launched {
                instance_id: "i-1".into(),
                instance_type: "m7i.large".into(),
                zone: "us-east-1a".into(),
                lifecycle: Lifecycle::OnDemand,
            }],
            errors: vec![FleetError {
                instance_type: Some("m7i.large".into()),
                code: "InsufficientInstanceCapacity".into(),
                message: "ran out".into(),
            }],
        };
        planner.record(request, &answer, &mut cache, start);
        let Step::Launch(again) = planner.next(&cache, start) else { panic!() };
        assert_eq!(again[0].count, 2);
        assert_eq!(again[0].instance_types, ["m6i.large", "m5.large"]);
    }

    #[test]
    fn a_quota_error_is_not_retried_on_other_types_of_the_family() {
        let start = Instant::now();
        let mut planner =
            LaunchPlanner::new(group(Market::OnDemand, 3), start + Duration::from_secs(1));
        let mut cache = UnavailableOfferings::default();
        let Step::Launch(requests) = planner.next(&cache, start) else { panic!() };
        for request in &requests {
            let answer = FleetAnswer {
                launched: Vec::new(),
                errors: vec![FleetError {
                    instance_type: Some(request.instance_types[0].clone()),
                    code: "VcpuLimitExceeded".into(),
                    message: "quota".into(),
                }],
            };
            planner.record(request, &answer, &mut cache, start);
        }
        // m6i and m5 share the standard quota: nothing is open, so the planner waits.
        assert!(matches!(planner.next(&cache, start), Step::Wait(_)));
        assert_eq!(planner.next(&cache, start + Duration::from_secs(2)), Step::Failed);
        assert!(planner.failure().tried.iter().all(|(pool, _)| pool.instance_type == "m7i.large"));
    }

    #[test]
    fn a_group_whose_types_no_zone_runs_fails_at_once() {
        let start = Instant::now();
        let mut planner =
            LaunchPlanner::new(group(Market::OnDemand, 3), start + Duration::from_secs(600));
        let mut cache = UnavailableOfferings::default();
        let Step::Launch(requests) = planner.next(&cache, start) else { panic!() };
        for request in &requests {
            let answer = FleetAnswer {
                launched: Vec::new(),
                errors: request
                    .instance_types
                    .iter()
                    .map(|t| FleetError {
                        instance_type: Some(t.clone()),
                        code: "Unsupported".into(),
                        message: String::new(),
                    })
                    .collect(),
            };
            planner.record(request, &answer, &mut cache, start);
        }
        assert_eq!(planner.next(&cache, start), Step::Failed, "no wait for the deadline");
        let failure = planner.failure();
        assert_eq!(failure.tried.len(), 9);
        assert!(failure.to_string().contains("could not be launched: no pool that may run them is left; pools tried: on-demand m5.large in us-east-1a (Unsupported)"), "{failure}");
    }

    #[test]
    fn a_fatal_error_stops_the_launch_with_its_reason() {
        let start = Instant::now();
        let mut planner =
            LaunchPlanner::new(group(Market::OnDemand, 1), start + Duration::from_secs(60));
        let mut cache = UnavailableOfferings::default();
        let Step::Launch(requests) = planner.next(&cache, start) else { panic!() };
        let answer = FleetAnswer {
            launched: Vec::new(),
            errors: vec![FleetError {
                instance_type: None,
                code: "InvalidParameterValue".into(),
                message: "bad AMI".into(),
            }],
        };
        planner.record(&requests[0], &answer, &mut cache, start);
        assert_eq!(planner.next(&cache, start), Step::Failed);
        assert!(planner.failure().to_string().ends_with(": InvalidParameterValue: bad AMI"));
    }

    #[test]
    fn throttling_waits_and_doubles() {
        let start = Instant::now();
        let mut g = group(Market::OnDemand, 1);
        g.offered.retain(|zone, _| zone == "us-east-1a");
        let mut planner = LaunchPlanner::new(g, start + Duration::from_secs(60));
        let mut cache = UnavailableOfferings::default();
        let throttled = FleetAnswer {
            launched: Vec::new(),
            errors: vec![FleetError {
                instance_type: None,
                code: "RequestLimitExceeded".into(),
                message: String::new(),
            }],
        };
        let Step::Launch(requests) = planner.next(&cache, start) else { panic!() };
        planner.record(&requests[0], &throttled, &mut cache, start);
        assert_eq!(planner.next(&cache, start), Step::Wait(start + Duration::from_secs(1)));
        let later = start + Duration::from_secs(1);
        let Step::Launch(requests) = planner.next(&cache, later) else { panic!() };
        planner.record(&requests[0], &throttled, &mut cache, later);
        assert_eq!(planner.next(&cache, later), Step::Wait(later + Duration::from_secs(2)));
    }

    #[test]
    fn existing_machines_count_towards_balance() {
        let start = Instant::now();
        let mut g = group(Market::OnDemand, 2);
        g.existing = BTreeMap::from([("us-east-1a".to_owned(), 1)]);
        let mut planner = LaunchPlanner::new(g, start + Duration::from_secs(60));
        let Step::Launch(requests) = planner.next(&UnavailableOfferings::default(), start) else {
            panic!()
        };
        let zones: Vec<&str> = requests.iter().map(|r| r.zone.as_str()).collect();
        assert_eq!(zones, ["us-east-1b", "us-east-1c"]);
    }
}
