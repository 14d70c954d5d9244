//! What a simulation books and reports: hours per UTC month (instances running, hosts billed,
//! jobs queued), waits, cost, and the conservation check.
//!
//! Every stretch of time is split at month boundaries, so a job that runs over midnight on the
//! last of the month counts in both months (Fish books it all to the month it starts, S4).
//! Instance hours are the jobs' execution (the 7-minute boot is not a job's hour, but the host
//! is billed through it); host hours are billed hours, which exclude scrubbing, as AWS stops
//! billing a `pending` host. A month's mean wait is over the jobs that arrived in it, waiting or
//! not. Counts are kept in whole seconds, so the conservation check is exact.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::calendar::Month;
use crate::host_pool::Time;

/// Seconds per hour.
const HOUR: f64 = 3600.0;

/// Waits shorter than this (about 18 hours) are counted in an array: 512 KiB.
const DENSE_WAITS: u64 = 1 << 16;

/// One month of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonthRow {
    /// `YYYY-MM`, UTC.
    pub month: String,
    pub instance_hours: f64,
    pub host_hours: f64,
    pub queue_hours: f64,
    pub mean_wait_s: f64,
    pub usd: f64,
}

/// Waits, in seconds, over every job that started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitStats {
    pub p50_s: u64,
    pub p95_s: u64,
    pub max_s: u64,
}

/// Input job-hours against what became of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conservation {
    pub input_job_hours: f64,
    pub executed_hours: f64,
    pub queued_hours: f64,
    pub rejected_hours: f64,
    /// Input = executed + queued + rejected, and the months' instance hours add up to the
    /// executed hours, both to the second.
    pub holds: bool,
}

/// A simulation's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimulationReport {
    pub mode: String,
    pub jobs: u64,
    pub months: Vec<MonthRow>,
    pub wait: WaitStats,
    /// Jobs not served: another pool or type, no zone of the pool, or waited past the limit.
    pub rejected: u64,
    pub usd: f64,
    pub peak_hosts: usize,
    pub peak_queue: usize,
    pub conservation: Conservation,
}

#[derive(Clone, Debug, Default)]
struct MonthSeconds {
    instance: u64,
    host: u64,
    queue: u64,
    arrivals: u64,
    wait_sum: u64,
}

/// The running totals of a simulation.
#[derive(Debug)]
pub struct Ledger {
    usd_per_host_hour: f64,
    months: BTreeMap<Month, MonthSeconds>,
    /// Waits by value (seconds → jobs): exact percentiles in memory bounded by distinct waits.
    /// Those under [`DENSE_WAITS`] seconds, nearly all, are counted in `short_waits` at their
    /// index (a counter bumped, not a tree searched, per job); the rest here.
    waits: BTreeMap<u64, u64>,
    short_waits: Vec<u64>,
    jobs: u64,
    rejected: u64,
    input_s: u64,
    executed_s: u64,
    queued_s: u64,
    rejected_s: u64,
    peak_hosts: usize,
    peak_queue: usize,
    /// The month booked last and its bounds [start, end): most bookings fall in it.
    last_month: (Month, Time, Time),
}

impl Ledger {
    pub fn new(usd_per_host_hour: f64) -> Ledger {
        Ledger {
            usd_per_host_hour,
            months: BTreeMap::new(),
            waits: BTreeMap::new(),
            short_waits: Vec::new(),
            jobs: 0,
            rejected: 0,
            input_s: 0,
            executed_s: 0,
            queued_s: 0,
            rejected_s: 0,
            peak_hosts: 0,
            peak_queue: 0,
            last_month: (Month { year: 1970, month: 1 }, 0, Month { year: 1970, month: 2 }.start()),
        }
    }

    pub fn job_arrived(&mut self, execution: Time) {
        self.jobs += 1;
        self.input_s += execution;
    }

    pub fn job_rejected(&mut self, execution: Time) {
        self.rejected += 1;
        self.rejected_s += execution;
    }

    pub fn job_executed(&mut self, execution: Time) {
        self.executed_s += execution;
    }

    pub fn job_still_queued(&mut self, execution: Time) {
        self.queued_s += execution;
    }

    /// A job that arrived at `arrival` got its host at `launched`.
    pub fn job_started(&mut self, arrival: Time, launched: Time, wait: Time) {
        let month = self.month_of(arrival).0;
        let month = self.months.entry(month).or_default();
        month.arrivals += 1;
        month.wait_sum += wait;
        match usize::try_from(wait) {
            Ok(index) if wait < DENSE_WAITS => {
                if index >= self.short_waits.len() {
                    self.short_waits.resize(index + 1, 0);
                }
                self.short_waits[index] += 1;
            }
            _ => *self.waits.entry(wait).or_default() += 1,
        }
        self.book(arrival, launched, |month, seconds| month.queue += seconds);
    }

    /// Every distinct wait with its count, shortest first.
    fn wait_counts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let short = self.short_waits.iter().enumerate().filter(|(_, count)| **count > 0);
        let short = short.map(|(wait, count)| (wait as u64, *count));
        short.chain(self.waits.iter().map(|(wait, count)| (*wait, *count)))
    }

    fn longest_wait(&self) -> u64 {
        let short = self.short_waits.iter().rposition(|count| *count > 0);
        self.waits.keys().next_back().copied().or(short.map(|wait| wait as u64)).unwrap_or(0)
    }

    pub fn instance_ran(&mut self, from: Time, to: Time) {
        self.book(from, to, |month, seconds| month.instance += seconds);
    }

    pub fn host_billed(&mut self, from: Time, to: Time) {
        self.book(from, to, |month, seconds| month.host += seconds);
    }

    pub fn note_pool(&mut self, hosts: usize, queue: usize) {
        self.peak_hosts = self.peak_hosts.max(hosts);
        self.peak_queue = self.peak_queue.max(queue);
    }

    /// The month `at` falls in and when that month ends.
    fn month_of(&mut self, at: Time) -> (Month, Time) {
        let (month, start, end) = self.last_month;
        if (start..end).contains(&at) {
            (month, end)
        } else {
            let month = Month::of(at);
            let bounds = (month, month.start(), month.next().start());
            self.last_month = bounds;
            (month, bounds.2)
        }
    }

    /// Adds [from, to) to the months it spans.
    fn book(&mut self, from: Time, to: Time, mut add: impl FnMut(&mut MonthSeconds, u64)) {
        let mut at = from;
        while at < to {
            let (month, month_end) = self.month_of(at);
            let end = month_end.min(to);
            add(self.months.entry(month).or_default(), end - at);
            at = end;
        }
    }

    /// The wait below which `share` of the jobs waited.
    fn percentile(&self, share: f64) -> u64 {
        let total: u64 = self.wait_counts().map(|(_, count)| count).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((share * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (wait, count) in self.wait_counts() {
            seen += count;
            if seen >= rank {
                return wait;
            }
        }
        self.longest_wait()
    }

    pub fn report(&self, mode: &str) -> SimulationReport {
        let months: Vec<MonthRow> = self
            .months
            .iter()
            .map(|(month, seconds)| MonthRow {
                month: month.to_string(),
                instance_hours: seconds.instance as f64 / HOUR,
                host_hours: seconds.host as f64 / HOUR,
                queue_hours: seconds.queue as f64 / HOUR,
                mean_wait_s: if seconds.arrivals == 0 {
                    0.0
                } else {
                    seconds.wait_sum as f64 / seconds.arrivals as f64
                },
                usd: seconds.host as f64 / HOUR * self.usd_per_host_hour,
            })
            .collect();
        let booked_instance: u64 = self.months.values().map(|month| month.instance).sum();
        let holds = self.input_s == self.executed_s + self.queued_s + self.rejected_s
            && booked_instance == self.executed_s;
        SimulationReport {
            mode: mode.to_owned(),
            jobs: self.jobs,
            usd: months.iter().map(|month| month.usd).sum(),
            months,
            wait: WaitStats {
                p50_s: self.percentile(0.50),
                p95_s: self.percentile(0.95),
                max_s: self.longest_wait(),
            },
            rejected: self.rejected,
            peak_hosts: self.peak_hosts,
            peak_queue: self.peak_queue,
            conservation: Conservation {
                input_job_hours: self.input_s as f64 / HOUR,
                executed_hours: self.executed_s as f64 / HOUR,
                queued_hours: self.queued_s as f64 / HOUR,
                rejected_hours: self.rejected_s as f64 / HOUR,
                holds,
            },
        }
    }
}
