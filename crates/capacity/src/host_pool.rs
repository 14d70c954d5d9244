//! The dedicated host pool policy: one pure state machine that decides when to allocate a host
//! and in which zone, which host a wanted machine launches on, when an idle Mac host is
//! scrubbed, and when hosts are released. The AWS provider feeds it what DescribeHosts and its
//! calls answer; `flotilla simulate` feeds it a workload. Both run this very code.
//!
//! Events in ([`Event`], each with the time it happened), actions out ([`Action`]). Time is
//! seconds on the caller's clock (Unix seconds on AWS, the workload's seconds in the simulator);
//! the policy reads no clock and draws no random number.
//!
//! The rules, in the order they are applied:
//!
//! - **A wanted machine launches at once on an available host** of a zone it accepts, the host
//!   allocated earliest first (Aquarium Fish's "first available"). Otherwise it waits in arrival
//!   order, and a host that becomes available (allocated, scrubbed, a failed release) goes to
//!   the first waiting machine that accepts its zone, at that moment: no machine waits while a
//!   usable host is idle.
//! - **Allocation.** The allocations in flight are shared out among the waiting machines, in
//!   arrival order, each machine counting on one in a zone it accepts; a machine may take one
//!   another machine counts on when that machine can count on one elsewhere (a matching: a
//!   machine that accepts either zone never holds the only allocation another can use). A
//!   machine still without one asks for one host, in the first zone (in the pool's order) that
//!   it accepts, that is below its zone maximum and that is not cooling down (or in another
//!   zone with room, moving there a machine that counted on a zone it accepts), as long as the
//!   pool is below its maximum. Hosts that are scrubbing do not count as cover: a scrub lasts
//!   up to 3 hours.
//! - **Ticking changes no decision.** The share-out depends only on the waiting machines, the
//!   allocations in flight and which zones have room, and the hosts it asks for join the
//!   allocations in flight, so the next share-out covers every machine the last one did
//!   without a new host. An [`Event::Tick`] with no event since the last call and no deadline
//!   passed ([`HostPool::next_deadline`]: a cooldown's end is one) returns no action and
//!   leaves the state as it was, whatever its time: `flotilla watch` may tick every round, or
//!   every other one, and allocates the same hosts (a Mac host is billed 24 hours).
//! - **`InsufficientHostCapacity`** in a zone cools that zone down for
//!   [`PoolConfig::capacity_cooldown`] (3 minutes, as the unavailable-offerings cache does for
//!   instances); the machine moves to the next zone at once.
//! - **Mac hosts scrub after every instance** (AWS stops billing while the host is `pending`).
//!   An idle Mac host inside its minimum allocation period is scrubbed again according to
//!   [`ScrubPolicy`]: never, after a fixed idle delay (Fish's `scrubbing_delay`), or by price
//!   (`Auto`: when the demand expected during a scrub window, an exponentially weighted rate of
//!   wanted machines, is covered by the other idle hosts with [`AUTO_SLACK`] to spare, so that
//!   scrubbing this one saves its idle billed hours without making a machine wait).
//! - **Release.** A host is released once it is idle, has been idle for
//!   [`PoolConfig::release_idle_after`], and is past its allocation time plus
//!   [`PoolConfig::minimum_allocation`] (24 h for Mac hosts), the allocation time being the
//!   host's own as DescribeHosts reports it ([`Event::HostSeen`] overrides what the policy
//!   remembered). A release that fails leaves the host in the pool, idle, and is tried again
//!   after [`PoolConfig::release_retry`].
//! - **A machine that cannot be served is reported**, never forgotten: at once when the pool
//!   has no zone it accepts, and after [`PoolConfig::wait_limit`] (when set) of waiting.
//!
//! [`HostPool::next_deadline`] says when [`Event::Tick`] next has something to do, so a caller
//! ticks only then (the simulator schedules exactly that time; `flotilla watch` ticks on its
//! round).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Seconds on the caller's clock.
pub type Time = u64;

/// The Mac minimum allocation period: a Mac host cannot be released for 24 hours.
pub const MAC_MINIMUM_ALLOCATION: Time = 24 * 3600;
/// How long a zone that answered `InsufficientHostCapacity` is skipped.
pub const DEFAULT_CAPACITY_COOLDOWN: Time = 3 * 60;
/// How long after a failed release it is tried again.
pub const DEFAULT_RELEASE_RETRY: Time = 5 * 60;
/// The scrub window `Auto` weighs: AWS's "up to 50 minutes" without a bridgeOS update.
pub const DEFAULT_EXPECTED_SCRUB: Time = 50 * 60;
/// How often `Auto` looks again at a host it chose to keep available.
pub const AUTO_REVIEW_INTERVAL: Time = 5 * 60;
/// The idle time before `Auto` first considers a host: Fish's floor for `scrubbing_delay`.
pub const AUTO_FIRST_REVIEW: Time = 60;
/// `Auto` scrubs while fewer than this many machines beyond what the other idle hosts serve are
/// expected during the scrub window: with no other idle host, when under half a machine is.
pub const AUTO_SLACK: f64 = 0.5;
/// The time constant of the demand estimate `Auto` uses (an exponentially weighted rate).
pub const DEMAND_TIME_CONSTANT: Time = 3600;

/// A hasher for the policy's integer ids: one multiply (Fibonacci hashing). Deterministic (no
/// random seed, unlike std's default), and a fraction of SipHash's cost on the simulator's
/// millions of lookups. Ids are the caller's, not an attacker's, so flooding is not a concern.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by the policy's ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A host, as the caller names it (the AWS provider maps `h-…` ids to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u64);

/// A machine the pool is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId(pub u64);

/// One `AllocateHosts` request (its ClientToken on AWS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocationId(pub u64);

/// A zone, as its index in [`PoolConfig::zones`].
pub type ZoneIndex = usize;

/// The zones a machine accepts, as a bit per zone index (bit `i` is `zones[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneSet(pub u64);

impl ZoneSet {
    /// Every zone.
    pub const ALL: ZoneSet = ZoneSet(u64::MAX);

    pub fn contains(self, zone: ZoneIndex) -> bool {
        zone < 64 && self.0 & (1 << zone) != 0
    }

    pub fn only(zone: ZoneIndex) -> ZoneSet {
        ZoneSet(1 << zone)
    }
}

/// When an idle Mac host is scrubbed before it may be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrubPolicy {
    /// Never: it stays available, billed.
    Off,
    /// After this many seconds idle.
    After(Time),
    /// When the expected demand during a scrub window is covered by the other idle hosts.
    Auto,
}

/// One zone of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneLimit {
    pub name: String,
    /// The most hosts in this zone.
    pub max: u32,
}

/// What the policy is told about the pool, fixed for its life.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// The zones in the order allocation tries them (at most 64).
    pub zones: Vec<ZoneLimit>,
    /// The most hosts in the whole pool.
    pub max_hosts: u32,
    /// Whether the hosts are Mac hosts: they scrub after every instance.
    pub mac: bool,
    /// The earliest release after allocation: [`MAC_MINIMUM_ALLOCATION`] for Mac hosts.
    pub minimum_allocation: Time,
    pub scrubbing: ScrubPolicy,
    /// How long a host stays idle before it is released (0: as soon as it may be).
    pub release_idle_after: Time,
    pub capacity_cooldown: Time,
    pub release_retry: Time,
    /// The scrub window `Auto` weighs against demand.
    pub expected_scrub: Time,
    /// Report a machine that has waited this long (`None`: it waits as long as it takes).
    pub wait_limit: Option<Time>,
}

impl PoolConfig {
    /// A pool with the defaults for its kind of host: Mac hosts keep 24 hours.
    pub fn new(zones: Vec<ZoneLimit>, max_hosts: u32, mac: bool) -> PoolConfig {
        PoolConfig {
            zones,
            max_hosts,
            mac,
            minimum_allocation: if mac { MAC_MINIMUM_ALLOCATION } else { 0 },
            scrubbing: ScrubPolicy::Off,
            release_idle_after: 0,
            capacity_cooldown: DEFAULT_CAPACITY_COOLDOWN,
            release_retry: DEFAULT_RELEASE_RETRY,
            expected_scrub: DEFAULT_EXPECTED_SCRUB,
            wait_limit: None,
        }
    }
}

/// A host's state as DescribeHosts reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedState {
    /// `available`, running this machine or none.
    Available(Option<MachineId>),
    /// `pending`: scrubbing (or just allocated); not usable, not billed.
    Pending,
    /// `under-assessment` or `permanent-failure`: counted, never used.
    Unusable,
    /// `released`: gone from the pool.
    Released,
}

/// What happened, as the caller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// DescribeHosts listed this host (adoption after a crash, or a refresh): its zone, state
    /// and allocation time are AWS's, and override what the policy remembered.
    HostSeen { host: HostId, zone: ZoneIndex, state: ObservedState, allocated_at: Time },
    /// An allocation asked for by [`Action::Allocate`] succeeded.
    HostAllocated { request: AllocationId, host: HostId, allocated_at: Time },
    /// An allocation failed with `InsufficientHostCapacity`.
    InsufficientCapacity { request: AllocationId },
    /// An allocation failed for another reason (the zone is not cooled down).
    AllocationFailed { request: AllocationId },
    /// A machine is wanted on the pool.
    MachineWanted { machine: MachineId, zones: ZoneSet },
    /// A launched machine's instance stopped or terminated: a Mac host starts scrubbing.
    MachineReleased { machine: MachineId },
    /// A launch asked for by [`Action::Launch`] failed; the machine waits again.
    LaunchFailed { machine: MachineId },
    /// A scrubbing host is `available` again.
    ScrubFinished { host: HostId },
    /// ReleaseHosts released the host.
    HostReleased { host: HostId },
    /// ReleaseHosts did not release the host; it stays in the pool.
    ReleaseFailed { host: HostId },
    /// Time passed.
    Tick,
}

/// Why a wanted machine will not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unservable {
    /// None of the zones it accepts is one of the pool's.
    NoZone,
    /// It waited [`PoolConfig::wait_limit`].
    WaitedTooLong,
}

/// What the caller is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// AllocateHosts, one host, in this zone, with `request` as its ClientToken.
    Allocate { request: AllocationId, zone: ZoneIndex },
    /// Launch the machine on the host (`Placement{Tenancy: host, HostId}`).
    Launch { machine: MachineId, host: HostId },
    /// Scrub an idle Mac host: launch an instance on it and terminate it at once.
    Scrub { host: HostId },
    /// ReleaseHosts.
    Release { hosts: Vec<HostId> },
    /// The machine will not be served.
    Report { machine: MachineId, reason: Unservable },
}

/// A host's state in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Usable and idle since the time given.
    Idle { since: Time },
    /// Running a machine.
    Busy(MachineId),
    /// `pending`: scrubbing after an instance or by the scrubbing policy.
    Scrubbing,
    /// A release was asked for; idle since the time given until then.
    Releasing { idle_since: Time },
    /// Under assessment or failed: counted, never used.
    Unusable,
}

/// One host of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    pub zone: ZoneIndex,
    pub allocated_at: Time,
    pub state: HostState,
    /// Bumped at every state change, so a timer set for an earlier state is ignored.
    epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Look at an idle host (scrub or release).
    Host { host: HostId, epoch: u64 },
    /// A zone's cooldown ends.
    Zone,
    /// A waiting machine reaches the wait limit.
    Wait { machine: MachineId },
}

/// What a host's timer decides ([`HostPool::review`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Review {
    /// The timer was set for a state the host has left (or the host is gone): nothing.
    Stale,
    Release {
        idle_since: Time,
    },
    Scrub,
    /// It stays available, looked at again then.
    Again(Time),
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    machine: MachineId,
    zones: ZoneSet,
}

/// The pool's state and the policy over it. See the module documentation for the rules.
#[derive(Debug)]
pub struct HostPool {
    config: PoolConfig,
    hosts: IdMap<HostId, Host>,
    /// Idle hosts per zone, by (allocation time, id): the earliest allocated first.
    idle: Vec<IdleHosts>,
    /// Hosts per zone, whatever their state (allocations in flight apart).
    hosts_in_zone: Vec<u32>,
    /// Allocations in flight: request → zone.
    allocating: BTreeMap<AllocationId, ZoneIndex>,
    allocating_in_zone: Vec<u32>,
    cooldown_until: Vec<Time>,
    waiting: VecDeque<Waiting>,
    /// Launched machines: their host and the zones they accept.
    running: IdMap<MachineId, (HostId, ZoneSet)>,
    timers: BinaryHeap<Reverse<(Time, Timer)>>,
    /// Hosts that became idle during the event being handled: their timers are set once
    /// waiting machines have taken what they take (a timer for a host taken at once would only
    /// be dropped later).
    newly_idle: Vec<HostId>,
    /// The share-out of [`HostPool::allocate_for_waiting`], kept to reuse its buffers (it is
    /// emptied at the end of every walk).
    cover: Cover,
    next_request: u64,
    /// The demand estimate for `Auto`: machines wanted per second, and when it was updated.
    demand_rate: f64,
    demand_updated: Time,
}

impl HostPool {
    pub fn new(config: PoolConfig) -> HostPool {
        let zones = config.zones.len();
        assert!(zones <= 64, "a pool has at most 64 zones (ZoneSet is a 64-bit mask)");
        HostPool {
            config,
            hosts: IdMap::default(),
            idle: (0..zones).map(|_| IdleHosts::default()).collect(),
            hosts_in_zone: vec![0; zones],
            allocating: BTreeMap::new(),
            allocating_in_zone: vec![0; zones],
            cooldown_until: vec![0; zones],
            waiting: VecDeque::new(),
            running: IdMap::default(),
            timers: BinaryHeap::new(),
            newly_idle: Vec::new(),
            cover: Cover::default(),
            next_request: 0,
            demand_rate: 0.0,
            demand_updated: 0,
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The pool's hosts, by id.
    pub fn hosts(&self) -> impl Iterator<Item = (HostId, &Host)> {
        let mut hosts: Vec<(HostId, &Host)> =
            self.hosts.iter().map(|(id, host)| (*id, host)).collect();
        hosts.sort_by_key(|(id, _)| *id);
        hosts.into_iter()
    }

    /// How many hosts the pool holds (allocations in flight apart).
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// How many machines wait for a host.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The machines that wait, in arrival order, with the zones they accept.
    pub fn waiting_machines(&self) -> impl Iterator<Item = (MachineId, ZoneSet)> {
        self.waiting.iter().map(|waiting| (waiting.machine, waiting.zones))
    }

    /// Allocations asked for and not answered yet.
    pub fn allocations_in_flight(&self) -> usize {
        self.allocating.len()
    }

    /// When [`Event::Tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.peek().map(|Reverse((time, _))| *time)
    }

    /// The earliest time `host` may be released.
    pub fn releasable_at(&self, host: &Host) -> Time {
        host.allocated_at.saturating_add(self.config.minimum_allocation)
    }

    /// Applies `event` at `now`, appending what to do to `actions`.
    pub fn handle(&mut self, now: Time, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::HostSeen { host, zone, state, allocated_at } => {
                self.host_seen(now, host, zone, state, allocated_at);
            }
            Event::HostAllocated { request, host, allocated_at } => {
                if let Some(zone) = self.allocating.remove(&request) {
                    self.allocating_in_zone[zone] -= 1;
                    if !self.hosts.contains_key(&host) {
                        self.hosts_in_zone[zone] += 1;
                        let state = HostState::Idle { since: now };
                        let fresh = Host { zone, allocated_at, state, epoch: 0 };
                        self.hosts.insert(host, fresh);
                        self.become_idle(now, host);
                    }
                }
            }
            Event::InsufficientCapacity { request } => {
                if let Some(zone) = self.allocating.remove(&request) {
                    self.allocating_in_zone[zone] -= 1;
                    let until = now.saturating_add(self.config.capacity_cooldown);
                    self.cooldown_until[zone] = until;
                    self.timers.push(Reverse((until, Timer::Zone)));
                }
            }
            Event::AllocationFailed { request } => {
                if let Some(zone) = self.allocating.remove(&request) {
                    self.allocating_in_zone[zone] -= 1;
                    // Not a capacity answer: asked again at the next tick, not at once, so a
                    // refusing account is not hammered.
                    let until = now.saturating_add(self.config.release_retry);
                    self.cooldown_until[zone] = self.cooldown_until[zone].max(until);
                    self.timers.push(Reverse((until, Timer::Zone)));
                }
            }
            Event::MachineWanted { machine, zones } => {
                self.note_demand(now);
                let usable = (0..self.config.zones.len()).any(|zone| zones.contains(zone));
                if !usable {
                    actions.push(Action::Report { machine, reason: Unservable::NoZone });
                } else {
                    self.waiting.push_back(Waiting { machine, zones });
                    if let Some(limit) = self.config.wait_limit {
                        let at = now.saturating_add(limit);
                        self.timers.push(Reverse((at, Timer::Wait { machine })));
                    }
                }
            }
            Event::MachineReleased { machine } => {
                if let Some((host, _)) = self.running.remove(&machine) {
                    if self.config.mac {
                        self.set_state(host, HostState::Scrubbing);
                    } else {
                        self.become_idle(now, host);
                    }
                }
            }
            Event::LaunchFailed { machine } => {
                if let Some((host, zones)) = self.running.remove(&machine) {
                    self.become_idle(now, host);
                    // It goes first again: it was first when it got the host.
                    self.waiting.push_front(Waiting { machine, zones });
                }
            }
            Event::ScrubFinished { host } => {
                if self.hosts.get(&host).is_some_and(|h| h.state == HostState::Scrubbing) {
                    self.become_idle(now, host);
                }
            }
            Event::HostReleased { host } => self.forget(host),
            Event::ReleaseFailed { host } => {
                if let Some(HostState::Releasing { idle_since }) =
                    self.hosts.get(&host).map(|h| h.state)
                {
                    // Idle again, as it was; looked at again after the retry delay.
                    self.set_state(host, HostState::Idle { since: idle_since });
                    if let Some(epoch) = self.hosts.get(&host).map(|h| h.epoch) {
                        let at = now.saturating_add(self.config.release_retry);
                        self.timers.push(Reverse((at, Timer::Host { host, epoch })));
                    }
                }
            }
            Event::Tick => {}
        }
        // Waiting machines take idle hosts before any timer may release or scrub them.
        self.serve_waiting(actions);
        // The hosts still idle get their timers (one taken is no longer idle: none is set).
        // Timers due now run below, ordered by (time, timer) whenever they were set.
        for index in 0..self.newly_idle.len() {
            self.look_at_idle(now, self.newly_idle[index]);
        }
        self.newly_idle.clear();
        self.run_timers(now, actions);
        self.allocate_for_waiting(now, actions);
        self.drop_stale_timers();
    }

    /// Drops the timers at the top of the heap that were set for a host state since left, so
    /// that [`HostPool::next_deadline`] names a time with work to do (the simulator would
    /// otherwise tick for nothing each time a freed host was taken at once).
    fn drop_stale_timers(&mut self) {
        while let Some(Reverse((_, Timer::Host { host, epoch }))) = self.timers.peek() {
            let live = self.hosts.get(host).is_some_and(|entry| {
                entry.epoch == *epoch && matches!(entry.state, HostState::Idle { .. })
            });
            if live {
                return;
            }
            self.timers.pop();
        }
    }

    fn host_seen(
        &mut self,
        now: Time,
        host: HostId,
        zone: ZoneIndex,
        state: ObservedState,
        allocated_at: Time,
    ) {
        if zone >= self.config.zones.len() {
            return;
        }
        if state == ObservedState::Released {
            self.forget(host);
            return;
        }
        if !self.hosts.contains_key(&host) {
            self.hosts_in_zone[zone] += 1;
            let fresh = Host { zone, allocated_at, state: HostState::Unusable, epoch: 0 };
            self.hosts.insert(host, fresh);
        }
        let known = *self.hosts.get(&host).expect("inserted above");
        if known.zone != zone {
            self.hosts_in_zone[known.zone] -= 1;
            self.hosts_in_zone[zone] += 1;
            self.idle[known.zone].forget(host);
            if let Some(entry) = self.hosts.get_mut(&host) {
                entry.zone = zone;
            }
        }
        if known.allocated_at != allocated_at {
            self.idle[zone].forget(host);
            if let Some(entry) = self.hosts.get_mut(&host) {
                entry.allocated_at = allocated_at;
            }
        }
        match state {
            ObservedState::Available(Some(machine)) => {
                // The zones it accepts, as it asked (a machine adopted unasked accepts any).
                let zones = self
                    .running
                    .get(&machine)
                    .map(|(_, zones)| *zones)
                    .or_else(|| self.waiting.iter().find(|w| w.machine == machine).map(|w| w.zones))
                    .unwrap_or(ZoneSet::ALL);
                self.set_state(host, HostState::Busy(machine));
                self.running.insert(machine, (host, zones));
                self.waiting.retain(|waiting| waiting.machine != machine);
            }
            ObservedState::Available(None) => match known.state {
                HostState::Idle { since } => {
                    // Its allocation time may have changed: its timer is set again.
                    self.set_state(host, HostState::Idle { since });
                    self.newly_idle.push(host);
                }
                HostState::Releasing { .. } => {}
                _ => self.become_idle(now, host),
            },
            ObservedState::Pending => {
                if !matches!(known.state, HostState::Releasing { .. }) {
                    self.set_state(host, HostState::Scrubbing);
                }
            }
            ObservedState::Unusable => self.set_state(host, HostState::Unusable),
            ObservedState::Released => unreachable!("handled above"),
        }
    }

    fn forget(&mut self, host: HostId) {
        if let Some(known) = self.hosts.remove(&host) {
            self.hosts_in_zone[known.zone] -= 1;
            self.idle[known.zone].forget(host);
            if let HostState::Busy(machine) = known.state {
                self.running.remove(&machine);
            }
        }
    }

    /// Changes a host's state, keeping the idle sets and the epoch right.
    fn set_state(&mut self, host: HostId, state: HostState) {
        let Some(entry) = self.hosts.get_mut(&host) else { return };
        if matches!(entry.state, HostState::Idle { .. }) {
            self.idle[entry.zone].remove(host);
        }
        entry.state = state;
        entry.epoch += 1;
        if matches!(state, HostState::Idle { .. }) {
            self.idle[entry.zone].insert(entry.allocated_at, host);
        }
    }

    fn become_idle(&mut self, now: Time, host: HostId) {
        self.set_state(host, HostState::Idle { since: now });
        self.newly_idle.push(host);
    }

    /// Decides what an idle host does now, or sets the timer for when it next may.
    fn look_at_idle(&mut self, now: Time, host: HostId) {
        let Some(entry) = self.hosts.get(&host).copied() else { return };
        let HostState::Idle { since } = entry.state else { return };
        let releasable =
            self.releasable_at(&entry).max(since.saturating_add(self.config.release_idle_after));
        if now >= releasable {
            // Releasing happens in `run_timers`, batched; set a timer for now.
            self.timers.push(Reverse((now, Timer::Host { host, epoch: entry.epoch })));
            return;
        }
        let young_mac = self.config.mac && now < self.releasable_at(&entry);
        let scrub_at = match self.config.scrubbing {
            ScrubPolicy::Off => None,
            _ if !young_mac => None,
            ScrubPolicy::After(delay) => Some(since.saturating_add(delay)),
            ScrubPolicy::Auto => Some(now.max(since.saturating_add(AUTO_FIRST_REVIEW))),
        };
        let at = match scrub_at {
            Some(scrub_at) => scrub_at.min(releasable),
            None => releasable,
        };
        self.timers.push(Reverse((at, Timer::Host { host, epoch: entry.epoch })));
    }

    /// Runs the timers due at `now`: idle hosts scrubbed or released, cooldowns over, machines
    /// that waited too long reported.
    fn run_timers(&mut self, now: Time, actions: &mut Vec<Action>) {
        let mut releases = Vec::new();
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            let review = match timer {
                Timer::Host { host, epoch } => self.review(now, host, epoch),
                _ => Review::Stale,
            };
            if let Review::Again(next) = review {
                // The host stays available: its timer, still at the top, moves to the next
                // review in place (one sift, where a pop and a push take two).
                if let Some(mut top) = self.timers.peek_mut() {
                    *top = Reverse((next, timer));
                }
                continue;
            }
            self.timers.pop();
            match (timer, review) {
                (Timer::Wait { machine }, _) => {
                    if let Some(index) = self.waiting.iter().position(|w| w.machine == machine) {
                        self.waiting.remove(index);
                        actions.push(Action::Report { machine, reason: Unservable::WaitedTooLong });
                    }
                }
                (Timer::Host { host, .. }, Review::Release { idle_since }) => {
                    self.set_state(host, HostState::Releasing { idle_since });
                    releases.push(host);
                }
                (Timer::Host { host, .. }, Review::Scrub) => {
                    self.set_state(host, HostState::Scrubbing);
                    actions.push(Action::Scrub { host });
                }
                _ => {}
            }
        }
        if !releases.is_empty() {
            actions.push(Action::Release { hosts: releases });
        }
    }

    /// What the timer (`epoch`) of the idle `host`, due at `now`, decides.
    fn review(&self, now: Time, host: HostId, epoch: u64) -> Review {
        let Some(entry) = self.hosts.get(&host) else { return Review::Stale };
        let HostState::Idle { since } = entry.state else { return Review::Stale };
        if entry.epoch != epoch {
            return Review::Stale;
        }
        let releasable =
            self.releasable_at(entry).max(since.saturating_add(self.config.release_idle_after));
        if now >= releasable {
            Review::Release { idle_since: since }
        } else if self.should_scrub(now, entry, since) {
            Review::Scrub
        } else {
            Review::Again(match self.config.scrubbing {
                ScrubPolicy::Auto if self.config.mac => {
                    now.saturating_add(AUTO_REVIEW_INTERVAL).min(releasable)
                }
                _ => releasable,
            })
        }
    }

    /// Whether an idle host inside its minimum allocation is scrubbed now.
    fn should_scrub(&self, now: Time, host: &Host, idle_since: Time) -> bool {
        if !self.config.mac || now >= self.releasable_at(host) {
            return false;
        }
        match self.config.scrubbing {
            ScrubPolicy::Off => false,
            ScrubPolicy::After(delay) => now >= idle_since.saturating_add(delay),
            ScrubPolicy::Auto => {
                // A scrub saves the window's billed hours if no machine needs this host during
                // it: the machines expected in the window are served by the other idle hosts.
                let window = self.config.expected_scrub.min(self.releasable_at(host) - now);
                let expected = self.demand_at(now) * window as f64;
                let others_idle: usize =
                    self.idle.iter().map(IdleHosts::len).sum::<usize>().saturating_sub(1);
                expected < others_idle as f64 + AUTO_SLACK
            }
        }
    }

    fn note_demand(&mut self, now: Time) {
        let decayed = self.demand_at(now);
        self.demand_rate = decayed + 1.0 / DEMAND_TIME_CONSTANT as f64;
        self.demand_updated = now;
    }

    /// The estimated rate of wanted machines, per second, at `now`.
    fn demand_at(&self, now: Time) -> f64 {
        let elapsed = now.saturating_sub(self.demand_updated);
        if elapsed == 0 {
            // exp(-0) is 1: the same-second machines of a burst skip the exponential.
            return self.demand_rate;
        }
        self.demand_rate * (-(elapsed as f64) / DEMAND_TIME_CONSTANT as f64).exp()
    }

    /// Gives idle hosts to waiting machines, in arrival order.
    fn serve_waiting(&mut self, actions: &mut Vec<Action>) {
        if self.waiting.is_empty() {
            return;
        }
        let mut index = 0;
        while index < self.waiting.len() {
            if self.idle.iter().all(IdleHosts::is_empty) {
                return;
            }
            let waiting = self.waiting[index];
            match self.first_idle_host(waiting.zones) {
                Some(host) => {
                    self.waiting.remove(index);
                    self.set_state(host, HostState::Busy(waiting.machine));
                    self.running.insert(waiting.machine, (host, waiting.zones));
                    actions.push(Action::Launch { machine: waiting.machine, host });
                }
                None => index += 1,
            }
        }
    }

    /// The idle host allocated earliest among the zones accepted.
    fn first_idle_host(&self, zones: ZoneSet) -> Option<HostId> {
        self.idle
            .iter()
            .enumerate()
            .filter(|(zone, _)| zones.contains(*zone))
            .filter_map(|(_, idle)| idle.first())
            .min()
            .map(|(_, host)| host)
    }

    /// Shares the allocations in flight out among the waiting machines and asks for a host for
    /// each machine left without one (see "Allocation" in the module documentation).
    fn allocate_for_waiting(&mut self, now: Time, actions: &mut Vec<Action>) {
        if self.waiting.is_empty() {
            return;
        }
        let mut cover = std::mem::take(&mut self.cover);
        cover.start(self, now);
        for waiting in &self.waiting {
            if !cover.can_grow() {
                // No allocation left to count on and no room for a new one: neither for the
                // machines behind.
                break;
            }
            cover.add(waiting.zones.0);
        }
        for zone in 0..self.config.zones.len() {
            for _ in 0..cover.new[zone] {
                let request = AllocationId(self.next_request);
                self.next_request += 1;
                self.allocating.insert(request, zone);
                self.allocating_in_zone[zone] += 1;
                actions.push(Action::Allocate { request, zone });
            }
        }
        cover.finish();
        self.cover = cover;
    }
}

/// The idle hosts of one zone, the earliest allocated first: the zone's hosts in a roster
/// sorted by (allocation time, id), each keeping its place, and a bit per place for those
/// idle. Marking a host idle or busy flips a bit (a host goes back and forth every job); the
/// first idle host is the first bit set. A host joins the roster the first time it is idle,
/// at the end (it was allocated last) or, when adopted with an earlier allocation time, at
/// its place in order (the roster is sorted again, which is rare); a host that leaves the
/// zone leaves a hole, and the holes are squeezed out once they outnumber the hosts.
#[derive(Debug, Default)]
struct IdleHosts {
    /// By (allocation time, id); `None` where a host left.
    roster: Vec<Option<(Time, HostId)>>,
    /// Each host's place in the roster.
    places: IdMap<HostId, u32>,
    /// A bit per roster place: the host there is idle.
    idle: Vec<u64>,
    count: usize,
    holes: usize,
}

impl IdleHosts {
    fn len(&self) -> usize {
        self.count
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The idle host allocated earliest, with its allocation time.
    fn first(&self) -> Option<(Time, HostId)> {
        if self.count == 0 {
            return None;
        }
        let (word, bits) = self.idle.iter().enumerate().find(|(_, bits)| **bits != 0)?;
        self.roster[word * 64 + bits.trailing_zeros() as usize]
    }

    /// `host`, allocated at `allocated_at`, is idle.
    fn insert(&mut self, allocated_at: Time, host: HostId) {
        let key = (allocated_at, host);
        let place = match self.places.get(&host) {
            Some(&place) if self.roster[place as usize] == Some(key) => place as usize,
            Some(_) => {
                // Allocated at another time than it joined with: it takes its new place.
                self.forget(host);
                self.join(key)
            }
            None => self.join(key),
        };
        self.mark(place, true);
    }

    /// `host` is not idle (it stays in the roster).
    fn remove(&mut self, host: HostId) {
        if let Some(&place) = self.places.get(&host) {
            self.mark(place as usize, false);
        }
    }

    /// `host` left the zone (released, or seen elsewhere or allocated at another time).
    fn forget(&mut self, host: HostId) {
        let Some(place) = self.places.remove(&host) else { return };
        let place = place as usize;
        self.mark(place, false);
        self.roster[place] = None;
        self.holes += 1;
        if self.holes >= 64 && self.holes > self.roster.len() - self.holes {
            self.rebuild(None);
        }
    }

    fn is_idle(&self, place: usize) -> bool {
        self.idle[place / 64] & (1 << (place % 64)) != 0
    }

    /// Sets the idle bit of the host at `place`, keeping the count.
    fn mark(&mut self, place: usize, idle: bool) {
        if self.is_idle(place) != idle {
            self.idle[place / 64] ^= 1 << (place % 64);
            if idle {
                self.count += 1;
            } else {
                self.count -= 1;
            }
        }
    }

    /// Gives `key`'s host a place: the roster's end when it sorts last, else its place in order.
    fn join(&mut self, key: (Time, HostId)) -> usize {
        let last = self.roster.iter().rev().flatten().next();
        if last.is_some_and(|last| *last > key) {
            return self.rebuild(Some(key));
        }
        let place = self.roster.len();
        self.roster.push(Some(key));
        if self.idle.len() * 64 < self.roster.len() {
            self.idle.push(0);
        }
        self.places.insert(key.1, u32::try_from(place).expect("fewer than 4 billion hosts"));
        place
    }

    /// Squeezes the holes out, adding `key` in order if given (returning its place), and keeps
    /// every host's idle bit.
    fn rebuild(&mut self, key: Option<(Time, HostId)>) -> usize {
        let mut hosts: Vec<((Time, HostId), bool)> = self
            .roster
            .iter()
            .enumerate()
            .filter_map(|(place, entry)| entry.map(|entry| (entry, self.is_idle(place))))
            .collect();
        if let Some(key) = key {
            hosts.push((key, false));
        }
        hosts.sort_unstable();
        self.roster.clear();
        self.places.clear();
        self.idle.clear();
        self.idle.resize(hosts.len().div_ceil(64), 0);
        self.holes = 0;
        self.count = 0;
        let mut added = usize::MAX;
        for (place, (entry, idle)) in hosts.into_iter().enumerate() {
            self.roster.push(Some(entry));
            self.places.insert(entry.1, u32::try_from(place).expect("fewer than 4 billion hosts"));
            self.mark(place, idle);
            if Some(entry) == key {
                added = place;
            }
        }
        added
    }
}

/// A node of [`Cover`]'s search not reached yet.
const UNSEEN: usize = usize::MAX;
/// The parent of the zones the machine being added accepts.
const START: usize = usize::MAX - 1;

/// Which zone each waiting machine counts on, built in arrival order: a bipartite matching of
/// machines to slots, a slot being an allocation in flight in a zone or a new host a zone has
/// room for. A machine is added along an augmenting path (machines already counted may move to
/// another zone they accept to make way), one ending at an allocation in flight preferred to
/// one ending at a new host, so that a machine is covered whenever any rearrangement covers it
/// with the machines before it, and a new host is asked for only when none covers it without.
///
/// The search is over zones, not machines: the machines counting on a zone are kept as counts
/// per set of zones accepted, and a node `N` (index `zones`) stands for "new hosts", entered
/// from a zone with room and left to a zone that already counts on a new host (which gives it
/// up: its machine moved on) or to the pool's remaining room.
#[derive(Debug, Default)]
struct Cover {
    /// Allocations in flight no machine counts on yet, per zone.
    free: Vec<u32>,
    /// New hosts each zone may still take (none while it cools down).
    room: Vec<u32>,
    /// New hosts counted on, per zone: what the walk asks for.
    new: Vec<u32>,
    /// New hosts the pool may still take (its maximum less its hosts and allocations).
    new_left: u64,
    /// Zones with `free`, `room` or `new` above zero, as bits.
    free_mask: u64,
    room_mask: u64,
    new_mask: u64,
    /// The machines counting on each zone, as (zones they accept, how many).
    counted: Vec<Vec<(u64, u32)>>,
    /// Per zone, the zones its machines accept (where one of them could move).
    reach: Vec<u64>,
    /// The search's parent of each node (zones, then `N`), and its queue.
    parent: Vec<usize>,
    queue: Vec<usize>,
}

impl Cover {
    fn start(&mut self, pool: &HostPool, now: Time) {
        let zones = pool.config.zones.len();
        self.free.clear();
        self.free.extend_from_slice(&pool.allocating_in_zone);
        self.room.clear();
        self.room.extend((0..zones).map(|zone| {
            if pool.cooldown_until[zone] > now {
                0
            } else {
                let used = pool.hosts_in_zone[zone] + pool.allocating_in_zone[zone];
                pool.config.zones[zone].max.saturating_sub(used)
            }
        }));
        self.new.clear();
        self.new.resize(zones, 0);
        let used = pool.hosts.len() as u64 + pool.allocating.len() as u64;
        self.new_left = u64::from(pool.config.max_hosts).saturating_sub(used);
        self.counted.resize_with(zones, Vec::new);
        self.reach.clear();
        self.reach.resize(zones, 0);
        self.free_mask = 0;
        self.room_mask = 0;
        self.new_mask = 0;
        for zone in 0..zones {
            self.update(zone);
        }
    }

    /// Empties what the walk left, so that the pool's state is the same after any walk.
    fn finish(&mut self) {
        self.free.clear();
        self.room.clear();
        self.new.clear();
        self.new_left = 0;
        self.free_mask = 0;
        self.room_mask = 0;
        self.new_mask = 0;
        self.counted.iter_mut().for_each(Vec::clear);
        self.reach.clear();
        self.parent.clear();
        self.queue.clear();
    }

    /// Whether another machine could still be covered.
    fn can_grow(&self) -> bool {
        self.free_mask != 0 || (self.new_left > 0 && self.room_mask != 0)
    }

    /// Covers a machine accepting `accepted` if any rearrangement can.
    fn add(&mut self, accepted: u64) {
        let direct_free = accepted & self.free_mask;
        if direct_free != 0 {
            let zone = direct_free.trailing_zeros() as usize;
            self.free[zone] -= 1;
            self.update(zone);
            self.enter(zone, accepted);
            return;
        }
        let direct_room = accepted & self.room_mask;
        if self.free_mask == 0 && self.new_left > 0 && direct_room != 0 {
            // No allocation in flight is free anywhere: no path can end at one.
            let zone = direct_room.trailing_zeros() as usize;
            self.take_new(zone);
            self.new_left -= 1;
            self.enter(zone, accepted);
            return;
        }
        self.augment(accepted);
    }

    /// The search (breadth first, zones in the pool's order) for a path ending at a free
    /// allocation in flight, else at the pool's room for a new host.
    fn augment(&mut self, accepted: u64) {
        let zones = self.free.len();
        let new_hosts = zones;
        self.parent.clear();
        self.parent.resize(zones + 1, UNSEEN);
        self.queue.clear();
        for zone in bits(accepted & self.pool_mask()) {
            self.parent[zone] = START;
            self.queue.push(zone);
        }
        let mut target = None;
        let mut head = 0;
        while head < self.queue.len() {
            let node = self.queue[head];
            head += 1;
            if node == new_hosts {
                for zone in bits(self.new_mask) {
                    self.visit(zone, new_hosts);
                }
                continue;
            }
            if self.free[node] > 0 {
                target = Some(node);
                break;
            }
            for zone in bits(self.reach[node]) {
                self.visit(zone, node);
            }
            if self.room[node] > 0 {
                self.visit(new_hosts, node);
            }
        }
        let mut node = match target {
            Some(zone) => {
                self.free[zone] -= 1;
                self.update(zone);
                zone
            }
            None if self.parent[new_hosts] != UNSEEN && self.new_left > 0 => {
                self.new_left -= 1;
                new_hosts
            }
            None => return,
        };
        // Back along the path, so that each machine moved is taken from a zone as the search
        // saw it.
        loop {
            let parent = self.parent[node];
            if parent == START {
                self.enter(node, accepted);
                return;
            }
            if node == new_hosts {
                self.take_new(parent);
            } else if parent == new_hosts {
                // The zone gives up a new host: its machine moved on.
                self.new[node] -= 1;
                self.room[node] += 1;
                self.update(node);
            } else {
                self.move_one(parent, node);
            }
            node = parent;
        }
    }

    fn visit(&mut self, node: usize, parent: usize) {
        if self.parent[node] == UNSEEN {
            self.parent[node] = parent;
            self.queue.push(node);
        }
    }

    fn pool_mask(&self) -> u64 {
        match self.free.len() {
            64 => u64::MAX,
            zones => (1 << zones) - 1,
        }
    }

    fn take_new(&mut self, zone: ZoneIndex) {
        self.new[zone] += 1;
        self.room[zone] -= 1;
        self.update(zone);
    }

    fn update(&mut self, zone: ZoneIndex) {
        let bit = 1 << zone;
        let set = |mask: &mut u64, on: bool| {
            if on {
                *mask |= bit;
            } else {
                *mask &= !bit;
            }
        };
        set(&mut self.free_mask, self.free[zone] > 0);
        set(&mut self.room_mask, self.room[zone] > 0);
        set(&mut self.new_mask, self.new[zone] > 0);
    }

    /// A machine accepting `accepted` counts on `zone`.
    fn enter(&mut self, zone: ZoneIndex, accepted: u64) {
        let counted = &mut self.counted[zone];
        match counted.iter_mut().find(|(zones, _)| *zones == accepted) {
            Some((_, count)) => *count += 1,
            None => counted.push((accepted, 1)),
        }
        self.reach[zone] |= accepted & self.pool_mask();
    }

    /// A machine counting on `from` that accepts `to` counts on `to` instead.
    fn move_one(&mut self, from: ZoneIndex, to: ZoneIndex) {
        let counted = &mut self.counted[from];
        let index = counted
            .iter()
            .position(|(zones, _)| ZoneSet(*zones).contains(to))
            .expect("the search moves a machine only from a zone where one accepts the next");
        let accepted = counted[index].0;
        counted[index].1 -= 1;
        if counted[index].1 == 0 {
            counted.remove(index);
            self.reach[from] = counted.iter().fold(0, |reach, (zones, _)| reach | zones);
            self.reach[from] &= self.pool_mask();
        }
        self.enter(to, accepted);
    }
}

/// The indices of the bits set in `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let index = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(index)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_zone_mac_pool(scrubbing: ScrubPolicy) -> HostPool {
        let zones = vec![
            ZoneLimit { name: "us-east-1a".to_owned(), max: 2 },
            ZoneLimit { name: "us-east-1b".to_owned(), max: 2 },
        ];
        let mut config = PoolConfig::new(zones, 3, true);
        config.scrubbing = scrubbing;
        HostPool::new(config)
    }

    fn step(pool: &mut HostPool, now: Time, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        pool.handle(now, event, &mut actions);
        actions
    }

    #[test]
    fn a_wanted_machine_allocates_then_launches_and_its_host_scrubs_after() {
        let mut pool = two_zone_mac_pool(ScrubPolicy::Off);
        let machine = MachineId(1);
        let actions = step(&mut pool, 0, Event::MachineWanted { machine, zones: ZoneSet::ALL });
        assert_eq!(actions, [Action::Allocate { request: AllocationId(0), zone: 0 }]);
        let host = HostId(7);
        let allocated = Event::HostAllocated { request: AllocationId(0), host, allocated_at: 5 };
        assert_eq!(step(&mut pool, 5, allocated), [Action::Launch { machine, host }]);
        assert!(step(&mut pool, 600, Event::MachineReleased { machine }).is_empty());
        assert_eq!(pool.hosts().next().map(|(_, h)| h.state), Some(HostState::Scrubbing));
        // Scrubbed, idle, and not releasable before 24 h after its allocation.
        assert!(step(&mut pool, 3600, Event::ScrubFinished { host }).is_empty());
        assert_eq!(pool.next_deadline(), Some(5 + MAC_MINIMUM_ALLOCATION));
        let release = step(&mut pool, 5 + MAC_MINIMUM_ALLOCATION, Event::Tick);
        assert_eq!(release, [Action::Release { hosts: vec![host] }]);
    }

    #[test]
    fn insufficient_capacity_moves_to_the_next_zone_and_cools_the_zone_down() {
        let mut pool = two_zone_mac_pool(ScrubPolicy::Off);
        let wanted = Event::MachineWanted { machine: MachineId(1), zones: ZoneSet::ALL };
        assert_eq!(
            step(&mut pool, 0, wanted),
            [Action::Allocate { request: AllocationId(0), zone: 0 }]
        );
        let refused = step(&mut pool, 1, Event::InsufficientCapacity { request: AllocationId(0) });
        assert_eq!(refused, [Action::Allocate { request: AllocationId(1), zone: 1 }]);
        let refused = step(&mut pool, 2, Event::InsufficientCapacity { request: AllocationId(1) });
        assert!(refused.is_empty(), "both zones cool down: {refused:?}");
        assert_eq!(pool.next_deadline(), Some(1 + DEFAULT_CAPACITY_COOLDOWN));
        let retried = step(&mut pool, 1 + DEFAULT_CAPACITY_COOLDOWN, Event::Tick);
        assert_eq!(retried, [Action::Allocate { request: AllocationId(2), zone: 0 }]);
    }

    #[test]
    fn a_tick_with_nothing_due_allocates_nothing_when_machines_accept_different_zones() {
        let mut pool = two_zone_mac_pool(ScrubPolicy::Off);
        let a = Event::MachineWanted { machine: MachineId(1), zones: ZoneSet::ALL };
        assert_eq!(step(&mut pool, 0, a), [Action::Allocate { request: AllocationId(0), zone: 0 }]);
        // The first zone refuses: it cools down and the machine asks in the second.
        let refused = step(&mut pool, 1, Event::InsufficientCapacity { request: AllocationId(0) });
        assert_eq!(refused, [Action::Allocate { request: AllocationId(1), zone: 1 }]);
        // A machine only the cooling zone serves waits for it.
        let b = Event::MachineWanted { machine: MachineId(2), zones: ZoneSet::only(0) };
        assert!(step(&mut pool, 2, b).is_empty());
        // The cooldown ends: one host for the second machine, in the first zone.
        let cooled = 1 + DEFAULT_CAPACITY_COOLDOWN;
        assert_eq!(pool.next_deadline(), Some(cooled));
        let retried = step(&mut pool, cooled, Event::Tick);
        assert_eq!(retried, [Action::Allocate { request: AllocationId(2), zone: 0 }]);
        // Two machines, two allocations in flight, each in a zone its machine accepts: a tick
        // with nothing due, now or later, asks for nothing more.
        assert_eq!(pool.next_deadline(), None);
        assert!(step(&mut pool, cooled, Event::Tick).is_empty());
        assert!(step(&mut pool, 201, Event::Tick).is_empty());
        assert_eq!(pool.allocations_in_flight(), 2);
    }

    #[test]
    fn a_machine_accepting_either_zone_makes_way_for_one_only_the_full_zone_serves() {
        let zones = vec![
            ZoneLimit { name: "us-east-1a".to_owned(), max: 1 },
            ZoneLimit { name: "us-east-1b".to_owned(), max: 2 },
        ];
        let mut pool = HostPool::new(PoolConfig::new(zones, 3, true));
        let either = Event::MachineWanted { machine: MachineId(1), zones: ZoneSet::ALL };
        assert_eq!(
            step(&mut pool, 0, either),
            [Action::Allocate { request: AllocationId(0), zone: 0 }]
        );
        // The first zone is full with the allocation in flight: the second machine counts on it
        // and the first, which accepts either zone, gets a host in the second.
        let first_only = Event::MachineWanted { machine: MachineId(2), zones: ZoneSet::only(0) };
        assert_eq!(
            step(&mut pool, 1, first_only),
            [Action::Allocate { request: AllocationId(1), zone: 1 }]
        );
        assert!(step(&mut pool, 2, Event::Tick).is_empty());
        // Each host goes to the first waiting machine that accepts its zone.
        let host = HostId(10);
        let allocated = Event::HostAllocated { request: AllocationId(1), host, allocated_at: 3 };
        assert_eq!(step(&mut pool, 3, allocated), [Action::Launch { machine: MachineId(1), host }]);
        let host = HostId(11);
        let allocated = Event::HostAllocated { request: AllocationId(0), host, allocated_at: 4 };
        assert_eq!(step(&mut pool, 4, allocated), [Action::Launch { machine: MachineId(2), host }]);
    }

    #[test]
    fn a_failed_release_stays_in_the_pool_and_is_retried() {
        let mut config = PoolConfig::new(vec![ZoneLimit { name: "a".to_owned(), max: 1 }], 1, true);
        config.release_retry = 300;
        let mut pool = HostPool::new(config);
        let host = HostId(1);
        let seen = Event::HostSeen {
            host,
            zone: 0,
            state: ObservedState::Available(None),
            allocated_at: 1000,
        };
        // Seen long after its allocation: released at once.
        let now = 1000 + MAC_MINIMUM_ALLOCATION + 50;
        assert_eq!(step(&mut pool, now, seen), [Action::Release { hosts: vec![host] }]);
        assert!(step(&mut pool, now + 1, Event::ReleaseFailed { host }).is_empty());
        assert_eq!(pool.hosts().count(), 1);
        assert_eq!(
            step(&mut pool, now + 301, Event::Tick),
            [Action::Release { hosts: vec![host] }]
        );
        step(&mut pool, now + 302, Event::HostReleased { host });
        assert_eq!(pool.hosts().count(), 0);
    }

    #[test]
    fn the_allocation_time_from_describe_hosts_overrides_memory() {
        let mut pool = two_zone_mac_pool(ScrubPolicy::Off);
        let host = HostId(3);
        let seen = |allocated_at| Event::HostSeen {
            host,
            zone: 1,
            state: ObservedState::Available(None),
            allocated_at,
        };
        assert!(step(&mut pool, 100_000, seen(90_000)).is_empty());
        // AWS says it was allocated later than remembered: the release waits for that.
        assert!(step(&mut pool, 100_001, seen(95_000)).is_empty());
        assert!(step(&mut pool, 90_000 + MAC_MINIMUM_ALLOCATION, Event::Tick).is_empty());
        let at = 95_000 + MAC_MINIMUM_ALLOCATION;
        assert_eq!(step(&mut pool, at, Event::Tick), [Action::Release { hosts: vec![host] }]);
    }

    #[test]
    fn a_scrubbing_delay_scrubs_a_young_idle_host_and_a_machine_takes_it_after() {
        let mut pool = two_zone_mac_pool(ScrubPolicy::After(300));
        let host = HostId(9);
        let seen = Event::HostSeen {
            host,
            zone: 0,
            state: ObservedState::Available(None),
            allocated_at: 0,
        };
        assert!(step(&mut pool, 10, seen).is_empty());
        assert_eq!(step(&mut pool, 310, Event::Tick), [Action::Scrub { host }]);
        let wanted = Event::MachineWanted { machine: MachineId(4), zones: ZoneSet::only(0) };
        // The scrubbing host is not cover: a host is allocated in the zone the machine takes.
        assert_eq!(
            step(&mut pool, 400, wanted),
            [Action::Allocate { request: AllocationId(0), zone: 0 }]
        );
        let launched = step(&mut pool, 500, Event::ScrubFinished { host });
        assert_eq!(launched, [Action::Launch { machine: MachineId(4), host }]);
    }

    #[test]
    fn auto_scrubs_an_idle_host_when_demand_is_low_and_keeps_it_when_machines_keep_coming() {
        let idle_host = |pool: &mut HostPool, host: u64, now: Time| {
            let seen = Event::HostSeen {
                host: HostId(host),
                zone: 0,
                state: ObservedState::Available(None),
                allocated_at: 0,
            };
            step(pool, now, seen)
        };
        // No demand: after its first review, the idle host is scrubbed.
        let mut quiet = two_zone_mac_pool(ScrubPolicy::Auto);
        idle_host(&mut quiet, 1, 0);
        assert_eq!(quiet.next_deadline(), Some(AUTO_FIRST_REVIEW));
        assert_eq!(
            step(&mut quiet, AUTO_FIRST_REVIEW, Event::Tick),
            [Action::Scrub { host: HostId(1) }]
        );
        // Twenty machines an hour (each served and gone at once): about 17 expected in a 50-minute
        // scrub window, more than the other idle hosts (none): the host stays available.
        let mut busy = two_zone_mac_pool(ScrubPolicy::Auto);
        let mut now = 0;
        for index in 0..40 {
            now += 180;
            let machine = MachineId(index);
            let host = HostId(100 + index);
            let wanted = Event::MachineWanted { machine, zones: ZoneSet::ALL };
            let asked = step(&mut busy, now, wanted);
            assert_eq!(asked, [Action::Allocate { request: AllocationId(index), zone: 0 }]);
            let allocated =
                Event::HostAllocated { request: AllocationId(index), host, allocated_at: now };
            assert_eq!(step(&mut busy, now, allocated), [Action::Launch { machine, host }]);
            step(&mut busy, now, Event::MachineReleased { machine });
            step(&mut busy, now, Event::HostReleased { host });
        }
        idle_host(&mut busy, 1, now);
        let review = step(&mut busy, now + AUTO_FIRST_REVIEW, Event::Tick);
        assert!(review.is_empty(), "kept available under demand: {review:?}");
    }

    #[test]
    fn a_machine_no_zone_of_the_pool_accepts_is_reported() {
        let mut pool = two_zone_mac_pool(ScrubPolicy::Off);
        let wanted = Event::MachineWanted { machine: MachineId(2), zones: ZoneSet(0b100) };
        let reason = Unservable::NoZone;
        assert_eq!(step(&mut pool, 0, wanted), [Action::Report { machine: MachineId(2), reason }]);
    }
}

#[cfg(test)]
mod idle_hosts_tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Host `n % 40` is idle, allocated at `t`.
        Idle(u64, Time),
        Busy(u64),
        Forget(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..40u64, 0..50u64).prop_map(|(host, at)| Op::Idle(host, at)),
            4 => (0..40u64).prop_map(Op::Busy),
            1 => (0..40u64).prop_map(Op::Forget),
        ]
    }

    proptest! {
        /// The roster answers as the ordered set it replaced: the same first idle host and count
        /// after any sequence of hosts marked idle (at any allocation time, so out of order and
        /// moved), marked busy and forgotten, through holes and rebuilds.
        #[test]
        fn idle_hosts_answer_as_an_ordered_set(ops in prop::collection::vec(op(), 1..400)) {
            let mut roster = IdleHosts::default();
            let mut model: BTreeSet<(Time, HostId)> = BTreeSet::new();
            // A host's allocation time as the pool knows it (changed by a later `Idle`).
            let mut allocated: BTreeMap<HostId, Time> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Idle(host, at) => {
                        let host = HostId(host);
                        if let Some(old) = allocated.insert(host, at)
                            && old != at
                        {
                            // The pool forgets a host whose allocation time changed.
                            roster.forget(host);
                            model.remove(&(old, host));
                        }
                        roster.insert(at, host);
                        model.insert((at, host));
                    }
                    Op::Busy(host) => {
                        let host = HostId(host);
                        roster.remove(host);
                        if let Some(at) = allocated.get(&host) {
                            model.remove(&(*at, host));
                        }
                    }
                    Op::Forget(host) => {
                        let host = HostId(host);
                        roster.forget(host);
                        if let Some(at) = allocated.remove(&host) {
                            model.remove(&(at, host));
                        }
                    }
                }
                prop_assert_eq!(roster.first(), model.first().copied());
                prop_assert_eq!(roster.len(), model.len());
            }
        }
    }

    #[test]
    fn holes_are_squeezed_out_once_they_outnumber_the_hosts() {
        let mut roster = IdleHosts::default();
        for host in 0..200 {
            roster.insert(host, HostId(host));
        }
        for host in 0..150 {
            roster.forget(HostId(host));
        }
        assert!(roster.roster.len() <= 100, "{} places for 50 hosts", roster.roster.len());
        assert_eq!(roster.first(), Some((150, HostId(150))));
        assert_eq!(roster.len(), 50);
    }
}
