//! The host pool policy under long random event sequences. A small world plays AWS: it answers
//! allocations (with success, `InsufficientHostCapacity` or another failure), finishes scrubs,
//! ends machines and fails some releases, and after every event checks what the policy asked
//! against its own record of the hosts:
//!
//! - no Mac host is released (or scrubbed by choice) before its allocation time + 24 h;
//! - no zone holds more hosts than its maximum, nor the pool more than its maximum, counting
//!   allocations in flight;
//! - no machine waits while a host it could use is idle;
//! - only idle hosts are launched on, scrubbed or released;
//! - and, once the world answers everything, every wanted machine has been served or reported.
//!
//! And, between any two events: an extra `Tick`, at any time before the next deadline the policy
//! names, returns no action and leaves the policy's state as it was (issue 13: how often the
//! caller ticks must not change what it allocates).

use std::collections::{BTreeMap, BTreeSet};

use flotilla_capacity::host_pool::{
    AUTO_FIRST_REVIEW, Action, AllocationId, Event, HostId, HostPool, MAC_MINIMUM_ALLOCATION,
    MachineId, ObservedState, PoolConfig, ScrubPolicy, Time, ZoneIndex, ZoneLimit, ZoneSet,
};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WorldState {
    Idle,
    Busy(MachineId),
    Scrubbing,
    Releasing,
}

#[derive(Clone, Copy, Debug)]
struct WorldHost {
    zone: ZoneIndex,
    allocated_at: Time,
    state: WorldState,
}

#[derive(Clone, Copy, Debug)]
enum Answer {
    Allocated,
    InsufficientCapacity,
    Failed,
}

#[derive(Clone, Debug)]
enum Step {
    Want(u64),
    EndMachine(usize),
    FailLaunch(usize),
    FinishScrub(usize),
    AnswerAllocation(usize, Answer),
    AnswerRelease(usize, bool),
    Describe(usize),
    Wait(Time),
}

struct World {
    pool: HostPool,
    zone_max: Vec<u32>,
    pool_max: u32,
    zone_count: usize,
    mac: bool,
    now: Time,
    next_host: u64,
    next_machine: u64,
    allocations: Vec<(AllocationId, ZoneIndex)>,
    releases: Vec<HostId>,
    hosts: BTreeMap<HostId, WorldHost>,
    waiting: BTreeMap<MachineId, ZoneSet>,
    zones_of: BTreeMap<MachineId, ZoneSet>,
    running: BTreeMap<MachineId, HostId>,
    wanted: BTreeSet<MachineId>,
    served: BTreeSet<MachineId>,
    reported: BTreeSet<MachineId>,
}

impl World {
    fn new(config: PoolConfig) -> World {
        World {
            zone_max: config.zones.iter().map(|zone| zone.max).collect(),
            pool_max: config.max_hosts,
            zone_count: config.zones.len(),
            mac: config.mac,
            pool: HostPool::new(config),
            now: 0,
            next_host: 0,
            next_machine: 0,
            allocations: Vec::new(),
            releases: Vec::new(),
            hosts: BTreeMap::new(),
            waiting: BTreeMap::new(),
            zones_of: BTreeMap::new(),
            running: BTreeMap::new(),
            wanted: BTreeSet::new(),
            served: BTreeSet::new(),
            reported: BTreeSet::new(),
        }
    }

    fn send(&mut self, event: Event) -> Result<(), TestCaseError> {
        let mut actions = Vec::new();
        self.pool.handle(self.now, event, &mut actions);
        for action in actions {
            self.perform(action)?;
        }
        self.check_nothing_waits_beside_an_idle_host()
    }

    fn perform(&mut self, action: Action) -> Result<(), TestCaseError> {
        match action {
            Action::Allocate { request, zone } => {
                self.allocations.push((request, zone));
                let in_zone = |zone: ZoneIndex| {
                    self.hosts.values().filter(|h| h.zone == zone).count()
                        + self.allocations.iter().filter(|(_, z)| *z == zone).count()
                };
                prop_assert!(
                    in_zone(zone) as u32 <= self.zone_max[zone],
                    "zone {zone} above its maximum {}",
                    self.zone_max[zone]
                );
                let total = self.hosts.len() + self.allocations.len();
                prop_assert!(total as u32 <= self.pool_max, "pool above its maximum");
            }
            Action::Launch { machine, host } => {
                let entry = self.hosts.get_mut(&host).expect("launched on a known host");
                prop_assert_eq!(entry.state, WorldState::Idle, "launched on a host not idle");
                let zones = self.waiting.remove(&machine).expect("a waiting machine launches");
                prop_assert!(zones.contains(entry.zone), "launched in a zone it refuses");
                entry.state = WorldState::Busy(machine);
                self.running.insert(machine, host);
                self.served.insert(machine);
            }
            Action::Scrub { host } => {
                let entry = self.hosts.get_mut(&host).expect("scrubbed a known host");
                prop_assert_eq!(entry.state, WorldState::Idle, "scrubbed a host not idle");
                prop_assert!(self.mac, "scrubbed a host that is not a Mac host");
                prop_assert!(self.now < entry.allocated_at + MAC_MINIMUM_ALLOCATION);
                entry.state = WorldState::Scrubbing;
            }
            Action::Release { hosts } => {
                for host in hosts {
                    let entry = self.hosts.get_mut(&host).expect("released a known host");
                    prop_assert_eq!(entry.state, WorldState::Idle, "released a host not idle");
                    if self.mac {
                        prop_assert!(
                            self.now >= entry.allocated_at + MAC_MINIMUM_ALLOCATION,
                            "Mac host {host:?} released at {} before 24 h after {}",
                            self.now,
                            entry.allocated_at
                        );
                    }
                    entry.state = WorldState::Releasing;
                    self.releases.push(host);
                }
            }
            Action::Report { machine, .. } => {
                prop_assert!(
                    self.waiting.remove(&machine).is_some(),
                    "reported a machine not waiting"
                );
                self.reported.insert(machine);
            }
        }
        Ok(())
    }

    fn check_nothing_waits_beside_an_idle_host(&self) -> Result<(), TestCaseError> {
        for (machine, zones) in &self.waiting {
            for (host, entry) in &self.hosts {
                prop_assert!(
                    !(entry.state == WorldState::Idle && zones.contains(entry.zone)),
                    "{machine:?} waits while {host:?} is idle in zone {}",
                    entry.zone
                );
            }
        }
        Ok(())
    }

    fn zone_set(&self, choice: u64) -> ZoneSet {
        // Mostly any zone; sometimes one zone, sometimes a zone the pool does not have.
        match choice % 6 {
            0 => ZoneSet::only((choice / 6) as usize % (self.zone_count + 1)),
            _ => ZoneSet::ALL,
        }
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::Want(choice) => {
                let machine = MachineId(self.next_machine);
                self.next_machine += 1;
                let zones = self.zone_set(choice);
                self.wanted.insert(machine);
                self.waiting.insert(machine, zones);
                self.zones_of.insert(machine, zones);
                self.send(Event::MachineWanted { machine, zones })
            }
            Step::EndMachine(pick) => {
                let Some(machine) =
                    self.running.keys().nth(pick % self.running.len().max(1)).copied()
                else {
                    return Ok(());
                };
                let host = self.running.remove(&machine).expect("listed");
                let entry = self.hosts.get_mut(&host).expect("known");
                entry.state = if self.mac { WorldState::Scrubbing } else { WorldState::Idle };
                self.send(Event::MachineReleased { machine })
            }
            Step::FailLaunch(pick) => {
                let Some(machine) =
                    self.running.keys().nth(pick % self.running.len().max(1)).copied()
                else {
                    return Ok(());
                };
                let host = self.running.remove(&machine).expect("listed");
                self.hosts.get_mut(&host).expect("known").state = WorldState::Idle;
                self.waiting.insert(machine, self.zones_of[&machine]);
                self.send(Event::LaunchFailed { machine })
            }
            Step::FinishScrub(pick) => {
                let scrubbing: Vec<HostId> = self
                    .hosts
                    .iter()
                    .filter(|(_, h)| h.state == WorldState::Scrubbing)
                    .map(|(id, _)| *id)
                    .collect();
                let Some(host) = scrubbing.get(pick % scrubbing.len().max(1)).copied() else {
                    return Ok(());
                };
                self.hosts.get_mut(&host).expect("known").state = WorldState::Idle;
                self.send(Event::ScrubFinished { host })
            }
            Step::AnswerAllocation(pick, answer) => {
                if self.allocations.is_empty() {
                    return Ok(());
                }
                let (request, zone) = self.allocations.remove(pick % self.allocations.len());
                match answer {
                    Answer::Allocated => {
                        let host = HostId(self.next_host);
                        self.next_host += 1;
                        let entry =
                            WorldHost { zone, allocated_at: self.now, state: WorldState::Idle };
                        self.hosts.insert(host, entry);
                        self.send(Event::HostAllocated { request, host, allocated_at: self.now })
                    }
                    Answer::InsufficientCapacity => {
                        self.send(Event::InsufficientCapacity { request })
                    }
                    Answer::Failed => self.send(Event::AllocationFailed { request }),
                }
            }
            Step::AnswerRelease(pick, released) => {
                if self.releases.is_empty() {
                    return Ok(());
                }
                let host = self.releases.remove(pick % self.releases.len());
                if released {
                    self.hosts.remove(&host);
                    self.send(Event::HostReleased { host })
                } else {
                    self.hosts.get_mut(&host).expect("known").state = WorldState::Idle;
                    self.send(Event::ReleaseFailed { host })
                }
            }
            Step::Describe(pick) => {
                let Some((host, entry)) =
                    self.hosts.iter().nth(pick % self.hosts.len().max(1)).map(|(id, h)| (*id, *h))
                else {
                    return Ok(());
                };
                let state = match entry.state {
                    WorldState::Idle | WorldState::Releasing => ObservedState::Available(None),
                    WorldState::Busy(machine) => ObservedState::Available(Some(machine)),
                    WorldState::Scrubbing => ObservedState::Pending,
                };
                if entry.state == WorldState::Releasing {
                    // DescribeHosts still lists a host being released; the policy keeps waiting
                    // for the answer.
                    return Ok(());
                }
                let zone = entry.zone;
                self.send(Event::HostSeen { host, zone, state, allocated_at: entry.allocated_at })
            }
            Step::Wait(seconds) => {
                self.now += seconds;
                self.send(Event::Tick)
            }
        }
    }

    /// Ticks at `now + offset`, kept before the next deadline: nothing is to change.
    fn quiet_tick(&mut self, offset: Time) -> Result<(), TestCaseError> {
        let later = match self.pool.next_deadline() {
            Some(deadline) => {
                prop_assert!(deadline > self.now, "a deadline {deadline} passed at {}", self.now);
                self.now + offset % (deadline - self.now)
            }
            None => self.now + offset,
        };
        let before = format!("{:?}", self.pool);
        let mut actions = Vec::new();
        self.pool.handle(later, Event::Tick, &mut actions);
        prop_assert!(
            actions.is_empty(),
            "a tick at {later} with nothing due (last event at {}) asked {actions:?}",
            self.now
        );
        prop_assert_eq!(before, format!("{:?}", self.pool), "a tick with nothing due changed it");
        self.now = later;
        Ok(())
    }

    /// Answers everything, kindly, until nothing is left to do.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        // Scrubs finish at once here, so under `Auto` an idle young Mac host may go round
        // (idle for the first review, scrubbed, finished) every AUTO_FIRST_REVIEW seconds, three
        // steps a round, until its minimum allocation ends: that many steps per host, and more.
        let config = self.pool.config();
        let rounds = config.minimum_allocation / AUTO_FIRST_REVIEW + 1;
        let steps = 10_000 + 3 * rounds * u64::from(config.max_hosts);
        for _ in 0..steps {
            if let Some(&(_, _)) = self.allocations.first() {
                self.apply(&Step::AnswerAllocation(0, Answer::Allocated))?;
            } else if !self.releases.is_empty() {
                self.apply(&Step::AnswerRelease(0, true))?;
            } else if !self.running.is_empty() {
                self.apply(&Step::EndMachine(0))?;
            } else if self.hosts.values().any(|h| h.state == WorldState::Scrubbing) {
                self.apply(&Step::FinishScrub(0))?;
            } else if self.waiting.is_empty() && self.pool.next_deadline().is_none() {
                return Ok(());
            } else {
                let next = self.pool.next_deadline().unwrap_or(self.now + 3600).max(self.now);
                self.apply(&Step::Wait(next - self.now))?;
            }
        }
        prop_assert!(false, "the pool did not settle: {} waiting", self.waiting.len());
        Ok(())
    }
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let answer = prop_oneof![
        6 => Just(Answer::Allocated),
        2 => Just(Answer::InsufficientCapacity),
        1 => Just(Answer::Failed),
    ];
    prop_oneof![
        5 => any::<u64>().prop_map(Step::Want),
        4 => any::<usize>().prop_map(Step::EndMachine),
        1 => any::<usize>().prop_map(Step::FailLaunch),
        3 => any::<usize>().prop_map(Step::FinishScrub),
        4 => (any::<usize>(), answer).prop_map(|(pick, answer)| Step::AnswerAllocation(pick, answer)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, ok)| Step::AnswerRelease(pick, ok)),
        1 => any::<usize>().prop_map(Step::Describe),
        4 => prop_oneof![0..120u64, 0..7200u64, 0..(30 * 3600u64)].prop_map(Step::Wait),
    ]
}

fn config_strategy() -> impl Strategy<Value = PoolConfig> {
    (
        prop::collection::vec(1..4u32, 1..4),
        any::<bool>(),
        prop_oneof![
            Just(ScrubPolicy::Off),
            (60..3600u64).prop_map(ScrubPolicy::After),
            Just(ScrubPolicy::Auto)
        ],
        prop_oneof![Just(0u64), 1..7200u64],
        prop_oneof![Just(None), (600..20_000u64).prop_map(Some)],
        any::<u32>(),
    )
        .prop_map(|(maxima, mac, scrubbing, release_idle_after, wait_limit, pick)| {
            let largest = *maxima.iter().max().expect("at least one zone");
            let sum: u32 = maxima.iter().sum();
            let max_hosts = largest + pick % (sum - largest + 1);
            let zones = maxima
                .iter()
                .enumerate()
                .map(|(index, max)| ZoneLimit { name: format!("zone-{index}"), max: *max })
                .collect();
            let mut config = PoolConfig::new(zones, max_hosts, mac);
            config.scrubbing = scrubbing;
            config.release_idle_after = release_idle_after;
            config.wait_limit = wait_limit;
            config
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_pool_keeps_its_rules_under_random_events(
        config in config_strategy(),
        steps in prop::collection::vec(step_strategy(), 1..600),
    ) {
        let mut world = World::new(config);
        for step in &steps {
            world.apply(step)?;
        }
        world.settle()?;
        for machine in &world.wanted {
            prop_assert!(
                world.served.contains(machine) || world.reported.contains(machine),
                "{machine:?} (zones {:?}) was neither served nor reported",
                world.zones_of[machine]
            );
        }
        prop_assert_eq!(world.pool.waiting(), 0);
    }

    #[test]
    fn an_extra_tick_with_nothing_due_changes_nothing(
        config in config_strategy(),
        steps in prop::collection::vec(
            (step_strategy(), prop_oneof![Just(0u64), 0..600u64, 0..(30 * 3600u64)]),
            1..400,
        ),
    ) {
        let mut world = World::new(config);
        for (step, offset) in &steps {
            world.apply(step)?;
            world.quiet_tick(*offset)?;
        }
        world.settle()?;
    }
}
