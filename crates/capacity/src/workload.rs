//! A seeded, deterministic generator of CI workloads in Aquarium Fish's CSV format, for
//! `flotilla simulate` and its benchmark: pipelines arriving as a non-homogeneous Poisson
//! process with an office-hours peak, plus same-second matrix bursts on weekdays.
//!
//! The shape (refs/capacity.md §5.2), in order:
//!
//! - **Pipelines** arrive at `rate(t) = peak × (weekday ? office(t) : 0.1 × office(t)) +
//!   nightly(t) + floor` per hour, sampled by thinning. `office` is a Gaussian bump centred at
//!   19:00 UTC with σ = 3 h (1 at its centre); `nightly` is `0.5 × peak` from 06:00 to 07:00
//!   UTC; `floor` is 0.5 pipelines per hour. From Dec 20 to Jan 2 the rate is 0.2 ×.
//! - **Stages.** Each pipeline runs `build` (lognormal, median 14 min, σ 0.5), then `test`
//!   (median 20 min, σ 0.7), which starts at the build's start + its execution + 7 min boot +
//!   U(5, 60) s.
//! - **Bursts.** Each weekday has a geometric number of matrix bursts (mean `bursts_per_weekday`),
//!   each U(S/2, S) shards released in the same second at a uniform time between 14:00 and
//!   24:00 UTC; shards take a lognormal time (median 25 min, σ 0.6).
//! - Every duration is multiplied by `scale` and clipped to [60 s, 6 h].
//!
//! One random stream per component ([`SeededRng::stream`]), so changing one knob does not
//! reshuffle the others. Jobs come out sorted by start time, ties by job name, as Fish requires,
//! a day at a time: memory stays bounded however long the workload.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::calendar::{DAY, civil_from_days, is_weekday};
use crate::random::SeededRng;

/// The CSV header: Fish's five columns, then the optional pool, type and zones.
pub const CSV_HEADER: &str =
    "startTime,endTime,executionTime,jobName,stageName,pool,instanceType,zones";

/// The generator's knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadShape {
    pub seed: u64,
    /// The first second (Unix, UTC; the start of a day).
    pub start: u64,
    pub days: u64,
    /// Pipelines per hour at the office-hours peak.
    pub peak_pipelines_per_hour: f64,
    /// The mean number of matrix bursts per weekday.
    pub bursts_per_weekday: f64,
    /// The most shards in a burst (S); a burst has U(S/2, S).
    pub burst_max_shards: u64,
    /// Multiplies every duration.
    pub scale: f64,
    /// What the `pool`, `instanceType` columns say.
    pub pool: String,
    pub instance_type: String,
}

impl WorkloadShape {
    /// A year from 2025-01-01 of about 700,000 jobs, which drives a 500-host Mac pool to its cap.
    /// Durations are scaled by 0.4, which gives about 100,000 job-hours, the order of the year
    /// refs/capacity.md measured Fish's script on (690k rows, 96k job-hours).
    pub fn year(seed: u64) -> WorkloadShape {
        WorkloadShape {
            seed,
            start: 1_735_689_600,
            days: 365,
            peak_pipelines_per_hour: 120.0,
            bursts_per_weekday: 4.0,
            burst_max_shards: 200,
            scale: 0.4,
            pool: "mac-arm".to_owned(),
            instance_type: "mac2.metal".to_owned(),
        }
    }
}

/// One generated job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GeneratedJob {
    pub start: u64,
    pub job_name: String,
    pub execution: u64,
    pub stage: &'static str,
}

impl GeneratedJob {
    /// The CSV row (no line ending), with the shape's pool and type and no zone constraint.
    pub fn csv_row(&self, shape: &WorkloadShape) -> String {
        format!(
            "{},{},{},{},{},{},{},",
            self.start,
            self.start + self.execution,
            self.execution,
            self.job_name,
            self.stage,
            shape.pool,
            shape.instance_type
        )
    }
}

const MIN_DURATION: f64 = 60.0;
const MAX_DURATION: f64 = 6.0 * 3600.0;
const BOOT: u64 = 7 * 60;

/// The jobs of a shape, in start order; an iterator that works a day at a time.
#[derive(Debug)]
pub struct Workload {
    shape: WorkloadShape,
    arrivals: SeededRng,
    stages: SeededRng,
    bursts: SeededRng,
    /// Jobs generated and not yet returned, earliest first.
    ready: BinaryHeap<Reverse<GeneratedJob>>,
    /// The next day to generate (days since the shape's start).
    next_day: u64,
    /// The next pipeline arrival candidate (seconds since the shape's start, fractional).
    next_candidate: f64,
    pipelines: u64,
    burst_count: u64,
}

impl Workload {
    pub fn new(shape: WorkloadShape) -> Workload {
        let mut arrivals = SeededRng::stream(shape.seed, "arrivals");
        let first = arrivals.exponential(max_rate(&shape) / 3600.0);
        Workload {
            stages: SeededRng::stream(shape.seed, "stages"),
            bursts: SeededRng::stream(shape.seed, "bursts"),
            arrivals,
            shape,
            ready: BinaryHeap::new(),
            next_day: 0,
            next_candidate: first,
            pipelines: 0,
            burst_count: 0,
        }
    }

    pub fn shape(&self) -> &WorkloadShape {
        &self.shape
    }

    fn duration(&mut self, median_minutes: f64, sigma: f64, which: Stream) -> u64 {
        let rng = match which {
            Stream::Stages => &mut self.stages,
            Stream::Bursts => &mut self.bursts,
        };
        let seconds = rng.lognormal(median_minutes * 60.0, sigma) * self.shape.scale;
        seconds.clamp(MIN_DURATION, MAX_DURATION).round() as u64
    }

    /// Generates one day's arrivals and bursts into `ready`.
    fn generate_day(&mut self) {
        let day_start = self.next_day * DAY;
        let day_end = day_start + DAY;
        let ceiling = max_rate(&self.shape) / 3600.0;
        while self.next_candidate < day_end as f64 {
            let offset = self.next_candidate as u64;
            let absolute = self.shape.start + offset;
            let accept = rate(&self.shape, absolute) / 3600.0 / ceiling;
            if self.arrivals.unit() < accept {
                self.pipeline(absolute);
            }
            self.next_candidate += self.arrivals.exponential(ceiling);
        }
        let absolute_day = self.shape.start + day_start;
        if is_weekday(absolute_day) {
            let count = self.bursts.geometric(self.shape.bursts_per_weekday);
            for _ in 0..count {
                let at = absolute_day + self.bursts.between(14 * 3600, DAY - 1);
                let max = self.shape.burst_max_shards.max(1);
                let shards = self.bursts.between(max.div_ceil(2), max);
                let burst = self.burst_count;
                self.burst_count += 1;
                for shard in 0..shards {
                    let execution = self.duration(25.0, 0.6, Stream::Bursts);
                    self.ready.push(Reverse(GeneratedJob {
                        start: at,
                        job_name: format!("matrix-{burst}#{shard}"),
                        execution,
                        stage: "test",
                    }));
                }
            }
        }
        self.next_day += 1;
    }

    fn pipeline(&mut self, arrival: u64) {
        let id = self.pipelines;
        self.pipelines += 1;
        let build = self.duration(14.0, 0.5, Stream::Stages);
        let gap = BOOT + self.stages.between(5, 60);
        let test = self.duration(20.0, 0.7, Stream::Stages);
        let name = format!("pipeline-{id}");
        self.ready.push(Reverse(GeneratedJob {
            start: arrival,
            job_name: name.clone(),
            execution: build,
            stage: "build",
        }));
        self.ready.push(Reverse(GeneratedJob {
            start: arrival + build + gap,
            job_name: name,
            execution: test,
            stage: "test",
        }));
    }
}

enum Stream {
    Stages,
    Bursts,
}

impl Iterator for Workload {
    type Item = GeneratedJob;

    fn next(&mut self) -> Option<GeneratedJob> {
        loop {
            // Every job generated later starts on a later day than those generated so far.
            let horizon = self.shape.start + self.next_day * DAY;
            if let Some(Reverse(job)) = self.ready.peek()
                && (job.start < horizon || self.next_day >= self.shape.days)
            {
                return self.ready.pop().map(|Reverse(job)| job);
            }
            if self.next_day >= self.shape.days {
                return None;
            }
            self.generate_day();
        }
    }
}

/// The highest the arrival rate gets, per hour: the thinning ceiling.
fn max_rate(shape: &WorkloadShape) -> f64 {
    1.5 * shape.peak_pipelines_per_hour + 0.5
}

/// Pipelines per hour at Unix second `at`.
fn rate(shape: &WorkloadShape, at: u64) -> f64 {
    let hour = (at % DAY) as f64 / 3600.0;
    // The distance to 19:00 on a 24-hour circle.
    let distance = ((hour - 19.0).rem_euclid(24.0)).min((19.0 - hour).rem_euclid(24.0));
    let office = (-0.5 * (distance / 3.0).powi(2)).exp();
    let office = if is_weekday(at) { office } else { 0.1 * office };
    let nightly = if (6.0..7.0).contains(&hour) { 0.5 } else { 0.0 };
    let holiday = {
        let (_, month, day) = civil_from_days((at / DAY) as i64);
        if (month == 12 && day >= 20) || (month == 1 && day <= 2) { 0.2 } else { 1.0 }
    };
    (shape.peak_pipelines_per_hour * (office + nightly) + 0.5) * holiday
}

#[cfg(test)]
mod tests {
    use super::*;

    fn week(seed: u64) -> WorkloadShape {
        WorkloadShape { days: 7, start: 1_736_121_600, ..WorkloadShape::year(seed) } // Mon 2025-01-06
    }

    #[test]
    fn jobs_come_sorted_and_the_same_seed_gives_the_same_jobs() {
        let jobs: Vec<GeneratedJob> = Workload::new(week(1)).collect();
        assert!(
            jobs.windows(2).all(
                |pair| (pair[0].start, &pair[0].job_name) <= (pair[1].start, &pair[1].job_name)
            )
        );
        assert_eq!(jobs, Workload::new(week(1)).collect::<Vec<_>>());
        assert_ne!(jobs, Workload::new(week(2)).collect::<Vec<_>>());
        assert!(jobs.iter().all(|job| (60..=6 * 3600).contains(&job.execution)));
    }

    #[test]
    fn the_week_has_its_shape() {
        let shape = week(3);
        let jobs: Vec<GeneratedJob> = Workload::new(shape.clone()).collect();
        // Bursts: many jobs in one second.
        let mut most_in_a_second = 0;
        let mut run = 0;
        for pair in jobs.windows(2) {
            run = if pair[0].start == pair[1].start { run + 1 } else { 0 };
            most_in_a_second = most_in_a_second.max(run + 1);
        }
        assert!(most_in_a_second >= 100, "a burst has at least S/2 shards: {most_in_a_second}");
        // Office hours: more builds start between 16:00 and 22:00 than between 00:00 and 06:00.
        let builds = |from: u64, to: u64| {
            jobs.iter()
                .filter(|job| job.stage == "build" && (from..to).contains(&(job.start % DAY)))
                .count()
        };
        assert!(builds(16 * 3600, 22 * 3600) > 5 * builds(0, 6 * 3600));
        // A pipeline's test starts after its build, its boot and a gap.
        let build = jobs.iter().find(|job| job.job_name == "pipeline-0" && job.stage == "build");
        let test = jobs.iter().find(|job| job.job_name == "pipeline-0" && job.stage == "test");
        let (build, test) = (build.expect("a build"), test.expect("a test"));
        let gap = test.start - build.start - build.execution;
        assert!((BOOT + 5..=BOOT + 60).contains(&gap), "{gap}");
        assert!(jobs.iter().all(|job| job.start >= shape.start));
    }
}
