//! An exact discrete-event simulation of a dedicated host pool over a workload: the jobs of a
//! CSV file ([`input`]) are machines wanted on the pool, and the pool is the very policy the AWS
//! provider runs ([`crate::host_pool::HostPool`]). What AWS would do (allocate, scrub, release)
//! is played here with the figures of a [`Settings`], and every hour is booked to its month
//! ([`report`]).
//!
//! One priority queue keyed by (time, sequence) holds what happens next (a job ends, a scrub
//! ends, the policy's next deadline); rows are read as time reaches them, after every event at
//! or before their start, so a host that frees at the second a job arrives serves it. Nothing
//! advances in fixed steps, no job is dropped, and a waiting job is served the moment a host
//! frees up. Each run ends with a conservation check: the input job-hours equal the hours
//! executed, plus those still queued, plus those rejected.
//!
//! Two sets of figures ([`Settings::fish`], [`Settings::realistic`]): Aquarium Fish's
//! simulator's constants, so the two tools can be compared on one file, and AWS's published
//! figures, with scrub times drawn from a seeded generator, per-zone caps and
//! `InsufficientHostCapacity` injected at a given rate.

pub mod input;
pub mod report;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::Read;
use std::sync::Arc;

use crate::host_pool::{
    Action, Event, HostId, HostPool, IdMap, MachineId, PoolConfig, ScrubPolicy, Time, ZoneLimit,
    ZoneSet,
};
use crate::random::SeededRng;
pub use input::{InputError, Job, JobRow, ParsedWorkload, WorkloadReader};
pub use report::{Conservation, Ledger, MonthRow, SimulationReport, WaitStats};

/// Aquarium Fish's simulator's constants (refs/capacity.md §1.6).
pub mod fish {
    use super::Time;
    pub const MAX_HOSTS: u32 = 500;
    pub const SCRUB: Time = 90 * 60;
    pub const BOOT: Time = 7 * 60;
    pub const SCRUBBING_DELAY: Time = 5 * 60;
}

/// The on-demand price of a mac2.metal dedicated host in us-east-1, USD per hour, used when no
/// price table names the type: AWS's published rate for mac2.metal ($0.65 an hour, billed per
/// second with a 24-hour minimum). Prices change; pass a price in for a budget.
pub const MAC2_METAL_USD_PER_HOUR: f64 = 0.65;
/// The same for mac1.metal (x86): $1.083 an hour.
pub const MAC1_METAL_USD_PER_HOUR: f64 = 1.083;

/// The built-in host price of `instance_type`, when there is one.
pub fn builtin_host_price(instance_type: &str) -> Option<f64> {
    match instance_type {
        "mac2.metal" => Some(MAC2_METAL_USD_PER_HOUR),
        "mac1.metal" => Some(MAC1_METAL_USD_PER_HOUR),
        _ => None,
    }
}

/// How long a scrub takes.
#[derive(Clone, Debug, PartialEq)]
pub enum ScrubTime {
    /// Always this long (Fish: 90 minutes).
    Fixed(Time),
    /// Drawn per scrub: uniform in `typical` most of the time; uniform in `update` (a bridgeOS
    /// update) with probability `update_share`; then `available_lag` more before the host is
    /// usable (Fish's `pending_to_available_delay`: AWS reports `available` early).
    Drawn { typical: (Time, Time), update: (Time, Time), update_share: f64, available_lag: Time },
}

impl ScrubTime {
    /// AWS's figures: "up to 50 minutes" (taken here as 25 to 50), "up to 3 hours" when bridgeOS
    /// updates (50 to 180 minutes, one scrub in 20 assumed), and a 5-minute lag.
    pub fn aws() -> ScrubTime {
        ScrubTime::Drawn {
            typical: (25 * 60, 50 * 60),
            update: (50 * 60, 180 * 60),
            update_share: 0.05,
            available_lag: 5 * 60,
        }
    }

    fn draw(&self, rng: &mut SeededRng) -> Time {
        match *self {
            ScrubTime::Fixed(time) => time,
            ScrubTime::Drawn { typical, update, update_share, available_lag } => {
                let (low, high) = if rng.unit() < update_share { update } else { typical };
                rng.between(low, high) + available_lag
            }
        }
    }
}

/// The figures a simulation runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `fish` or `realistic`, for the report.
    pub mode: &'static str,
    pub pool: PoolConfig,
    /// Rows whose `pool` column names another pool are rejected; `None` takes every row.
    pub pool_name: Option<String>,
    /// Rows whose `instanceType` names another type are rejected.
    pub instance_type: String,
    /// From launch on a host to the job running.
    pub boot: Time,
    pub scrub: ScrubTime,
    /// The share of allocations answered `InsufficientHostCapacity`.
    pub insufficient_capacity: f64,
    pub host_usd_per_hour: f64,
    pub seed: u64,
}

impl Settings {
    /// Aquarium Fish's constants: one zone, 500 hosts, 90-minute scrubs, 24 h minimum, 7-minute
    /// boot, idle hosts scrubbed after 5 minutes, the first available host, no capacity errors.
    pub fn fish(host_usd_per_hour: f64) -> Settings {
        let zones = vec![ZoneLimit { name: "fish".to_owned(), max: fish::MAX_HOSTS }];
        let mut pool = PoolConfig::new(zones, fish::MAX_HOSTS, true);
        pool.scrubbing = ScrubPolicy::After(fish::SCRUBBING_DELAY);
        Settings {
            mode: "fish",
            pool,
            pool_name: None,
            instance_type: "mac2.metal".to_owned(),
            boot: fish::BOOT,
            scrub: ScrubTime::Fixed(fish::SCRUB),
            insufficient_capacity: 0.0,
            host_usd_per_hour,
            seed: 0,
        }
    }

    /// AWS's figures for a pool: drawn scrub times ([`ScrubTime::aws`]), the pool's zones and
    /// caps, 2 % of allocations refused with `InsufficientHostCapacity`, a 7-minute boot.
    pub fn realistic(
        pool: PoolConfig,
        pool_name: Option<String>,
        instance_type: String,
        host_usd_per_hour: f64,
        seed: u64,
    ) -> Settings {
        Settings {
            mode: "realistic",
            pool,
            pool_name,
            instance_type,
            boot: fish::BOOT,
            scrub: ScrubTime::aws(),
            insufficient_capacity: 0.02,
            host_usd_per_hour,
            seed,
        }
    }
}

/// What the simulation schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scheduled {
    /// A job's instance ends (its machine is released).
    JobEnds(MachineId),
    /// A host's scrub ends.
    ScrubEnds(HostId),
}

/// A job the pool has not finished: when it arrived, how long it runs, and the host it runs on
/// once launched.
#[derive(Clone, Copy, Debug)]
struct Pending {
    arrival: Time,
    execution: Time,
    host: Option<HostId>,
}

/// Rows a reading thread parses ahead of the simulation, per batch.
const BATCH_ROWS: usize = 4096;
/// Batches parsed and not simulated yet, at most: what bounds the memory of a streamed run
/// (about 160 KB a batch).
const BATCHES_AHEAD: usize = 4;

/// Runs the workload through the pool and reports. Rows are read as the simulation reaches
/// them, parsed a few thousand ahead on a thread of their own (the CSV is a seventh of the
/// work, done on another core); the first bad row stops the run with that row's error.
pub fn simulate<R: Read + Send>(
    workload: WorkloadReader<R>,
    settings: &Settings,
) -> Result<SimulationReport, InputError> {
    std::thread::scope(|scope| {
        let (batches, received) = std::sync::mpsc::sync_channel(BATCHES_AHEAD);
        scope.spawn(move || {
            let mut reader = input::Batches::new(workload, BATCH_ROWS);
            while let Some(batch) = reader.next_batch() {
                // A simulation that stopped (a bad row) dropped its end: stop reading too.
                if batches.send(batch).is_err() {
                    return;
                }
            }
        });
        run_batches(received, settings)
    })
}

/// The simulation side of [`simulate`]. Not generic, and never inlined into its caller, so that
/// it is compiled here, with this crate's optimisation (the release profile builds this crate
/// for speed and the CLI that calls it for size).
#[inline(never)]
fn run_batches(
    received: std::sync::mpsc::Receiver<input::Batch>,
    settings: &Settings,
) -> Result<SimulationReport, InputError> {
    let mut run = Run::new(settings);
    let mut texts = Vec::new();
    for batch in received {
        texts.extend(batch.texts);
        for job in &batch.jobs {
            run.take(job.row(&texts));
        }
        if let Some(error) = batch.error {
            return Err(error);
        }
    }
    Ok(run.finish())
}

/// Runs the same workload under each of `settings` side by side (a thread each). The workload
/// is opened with `open` and read once, whole ([`ParsedWorkload`]); every run reads that. The
/// reports come in the order of `settings`; a workload that cannot be opened or read fails
/// every run with the same error.
pub fn simulate_each<R: Read, E: Send + Sync>(
    open: impl FnOnce() -> Result<R, E>,
    settings: &[Settings],
) -> Vec<Result<SimulationReport, CompareError<E>>> {
    let workload = match open() {
        Ok(source) => ParsedWorkload::read(WorkloadReader::new(source)),
        Err(error) => {
            let error = Arc::new(error);
            return settings.iter().map(|_| Err(CompareError::Open(Arc::clone(&error)))).collect();
        }
    };
    let workload = match workload {
        Ok(workload) => workload,
        Err(error) => return settings.iter().map(|_| Err(error.clone().into())).collect(),
    };
    std::thread::scope(|scope| {
        let runs: Vec<_> = settings
            .iter()
            .map(|settings| {
                let workload = &workload;
                scope.spawn(move || run_parsed(workload, settings))
            })
            .collect();
        runs.into_iter().map(|run| Ok(run.join().expect("a simulation does not panic"))).collect()
    })
}

/// One of [`simulate_each`]'s runs; not generic, for the reason [`run_batches`] gives.
#[inline(never)]
fn run_parsed(workload: &ParsedWorkload, settings: &Settings) -> SimulationReport {
    let mut run = Run::new(settings);
    for row in workload.rows() {
        run.take(row);
    }
    run.finish()
}

/// Why one of [`simulate_each`]'s runs failed.
#[derive(Debug, thiserror::Error)]
pub enum CompareError<E> {
    #[error("cannot open the workload")]
    Open(Arc<E>),
    #[error(transparent)]
    Input(#[from] InputError),
}

struct Run<'s> {
    settings: &'s Settings,
    pool: HostPool,
    queue: BinaryHeap<Reverse<(Time, u64, Scheduled)>>,
    sequence: u64,
    now: Time,
    rng: SeededRng,
    next_host: u64,
    next_machine: u64,
    /// Jobs wanted and not finished, by machine.
    pending: IdMap<MachineId, Pending>,
    /// When each host's billed stretch began (`None` while it scrubs or once released), indexed
    /// by host id: the simulator numbers hosts from 0.
    billed_since: Vec<Option<Time>>,
    events: VecDeque<Event>,
    actions: Vec<Action>,
    ledger: Ledger,
}

impl<'s> Run<'s> {
    fn new(settings: &'s Settings) -> Run<'s> {
        Run {
            settings,
            pool: HostPool::new(settings.pool.clone()),
            queue: BinaryHeap::new(),
            sequence: 0,
            now: 0,
            rng: SeededRng::stream(settings.seed, "simulate"),
            next_host: 0,
            next_machine: 0,
            pending: IdMap::default(),
            billed_since: Vec::new(),
            events: VecDeque::new(),
            actions: Vec::new(),
            ledger: Ledger::new(settings.host_usd_per_hour),
        }
    }

    fn schedule(&mut self, at: Time, what: Scheduled) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, what)));
    }

    /// Schedules `what` in place of the queue's first entry, which is done with: the same
    /// order as a pop and [`Run::schedule`], for one sift instead of two.
    fn schedule_instead_of_top(&mut self, at: Time, what: Scheduled) {
        self.sequence += 1;
        if let Some(mut top) = self.queue.peek_mut() {
            *top = Reverse((at, self.sequence, what));
        }
    }

    /// Takes the next row: first every event at or before its start (a host freed at that
    /// second serves it), then its arrival.
    fn take(&mut self, job: JobRow) {
        while self.next_event_time().is_some_and(|event| event <= job.start) {
            self.next_event();
        }
        self.arrive(job);
    }

    fn arrive(&mut self, job: JobRow) {
        self.now = self.now.max(job.start);
        self.ledger.job_arrived(job.execution);
        let foreign_pool = self
            .settings
            .pool_name
            .as_ref()
            .is_some_and(|name| !job.pool.is_empty() && job.pool != name);
        let foreign_type =
            !job.instance_type.is_empty() && job.instance_type != self.settings.instance_type;
        if foreign_pool || foreign_type {
            self.ledger.job_rejected(job.execution);
            return;
        }
        let zones = self.zones_of(job.zones);
        let machine = MachineId(self.next_machine);
        self.next_machine += 1;
        let pending = Pending { arrival: job.start, execution: job.execution, host: None };
        self.pending.insert(machine, pending);
        self.feed(Event::MachineWanted { machine, zones });
    }

    /// The zones a job's `zones` column accepts; unknown names accept nothing.
    fn zones_of(&self, column: &str) -> ZoneSet {
        if column.is_empty() {
            return ZoneSet::ALL;
        }
        let mut set = 0u64;
        for name in column.split(';').map(str::trim) {
            if let Some(index) = self.settings.pool.zones.iter().position(|zone| zone.name == name)
            {
                set |= 1 << index;
            }
        }
        ZoneSet(set)
    }

    /// The time of the next scheduled event or of the policy's next deadline.
    fn next_event_time(&self) -> Option<Time> {
        let scheduled = self.queue.peek().map(|Reverse((time, _, _))| *time);
        match (scheduled, self.pool.next_deadline()) {
            (Some(scheduled), Some(deadline)) => Some(scheduled.min(deadline)),
            (scheduled, deadline) => scheduled.or(deadline),
        }
    }

    /// Runs the next scheduled event, or ticks the policy at its deadline. A scheduled event at
    /// the deadline goes first; the policy runs its due timers on any event.
    fn next_event(&mut self) {
        let scheduled = self.queue.peek().map(|Reverse((time, _, _))| *time);
        if let Some(deadline) = self.pool.next_deadline()
            && scheduled.is_none_or(|scheduled| deadline < scheduled)
        {
            self.now = self.now.max(deadline);
            self.feed(Event::Tick);
            return;
        }
        let Some(Reverse((time, _, what))) = self.queue.peek().copied() else { return };
        self.now = self.now.max(time);
        match what {
            Scheduled::JobEnds(machine) => {
                let job = self.pending.remove(&machine);
                if let Some(job) = job {
                    self.ledger.job_executed(job.execution);
                }
                if let Some(host) = job.and_then(|job| job.host)
                    && self.settings.pool.mac
                {
                    // The instance ends: AWS scrubs the Mac host, unbilled; the scrub's end takes
                    // the job's end's place in the queue.
                    self.end_billing(host);
                    let scrub = self.settings.scrub.draw(&mut self.rng);
                    self.schedule_instead_of_top(self.now + scrub, Scheduled::ScrubEnds(host));
                } else {
                    self.queue.pop();
                }
                self.feed(Event::MachineReleased { machine });
            }
            Scheduled::ScrubEnds(host) => {
                self.queue.pop();
                self.billed_since[Self::host_index(host)] = Some(self.now);
                self.feed(Event::ScrubFinished { host });
            }
        }
    }

    fn end_billing(&mut self, host: HostId) {
        if let Some(since) = self.billed_since[Self::host_index(host)].take() {
            self.ledger.host_billed(since, self.now);
        }
    }

    /// Where `host`, numbered by [`Run::play`], is in `billed_since`.
    fn host_index(host: HostId) -> usize {
        usize::try_from(host.0).expect("host ids count the hosts allocated")
    }

    /// Hands an event to the policy and plays its actions, and what they cause, at `now`.
    fn feed(&mut self, event: Event) {
        let mut next = Some(event);
        while let Some(event) = next {
            self.pool.handle(self.now, event, &mut self.actions);
            if !self.actions.is_empty() {
                let actions = std::mem::take(&mut self.actions);
                for action in &actions {
                    self.play(action);
                }
                self.actions = actions;
                self.actions.clear();
            }
            next = self.events.pop_front();
        }
        self.ledger.note_pool(self.pool.host_count(), self.pool.waiting());
    }

    fn play(&mut self, action: &Action) {
        match action {
            Action::Allocate { request, .. } => {
                let refused = self.settings.insufficient_capacity > 0.0
                    && self.rng.unit() < self.settings.insufficient_capacity;
                if refused {
                    self.events.push_back(Event::InsufficientCapacity { request: *request });
                } else {
                    let host = HostId(self.next_host);
                    self.next_host += 1;
                    self.billed_since.push(Some(self.now));
                    self.events.push_back(Event::HostAllocated {
                        request: *request,
                        host,
                        allocated_at: self.now,
                    });
                }
            }
            Action::Launch { machine, host } => {
                if let Some(job) = self.pending.get_mut(machine) {
                    job.host = Some(*host);
                    let job = *job;
                    let wait = self.now - job.arrival;
                    self.ledger.job_started(job.arrival, self.now, wait);
                    let running_from = self.now + self.settings.boot;
                    let running_to = running_from + job.execution;
                    self.ledger.instance_ran(running_from, running_to);
                    self.schedule(running_to, Scheduled::JobEnds(*machine));
                }
            }
            Action::Scrub { host } => {
                self.end_billing(*host);
                let scrub = self.settings.scrub.draw(&mut self.rng);
                self.schedule(self.now + scrub, Scheduled::ScrubEnds(*host));
            }
            Action::Release { hosts } => {
                for host in hosts {
                    self.end_billing(*host);
                    self.events.push_back(Event::HostReleased { host: *host });
                }
            }
            Action::Report { machine, .. } => {
                if let Some(job) = self.pending.remove(machine) {
                    self.ledger.job_rejected(job.execution);
                }
            }
        }
    }

    /// Runs what is left to happen, and reports.
    fn finish(mut self) -> SimulationReport {
        while self.next_event_time().is_some() {
            self.next_event();
        }
        // What is still waiting (a pool that can never serve it) counts as queued.
        for (_, job) in self.pending.drain() {
            self.ledger.job_still_queued(job.execution);
        }
        for index in 0..self.billed_since.len() {
            self.end_billing(HostId(index as u64));
        }
        self.ledger.report(self.settings.mode)
    }
}

#[cfg(test)]
mod tests;
