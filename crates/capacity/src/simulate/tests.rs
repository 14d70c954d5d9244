//! Small workloads whose results are worked out by hand, and conservation on generated weeks.

use super::*;
use crate::workload::{CSV_HEADER, Workload, WorkloadShape};

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600;

fn csv(rows: &[(u64, u64)]) -> String {
    let mut text = String::from("startTime,endTime,executionTime,jobName,stageName\n");
    for (index, (start, execution)) in rows.iter().enumerate() {
        text.push_str(&format!("{start},{},{execution},job-{index},build\n", start + execution));
    }
    text
}

fn run(text: &str, settings: &Settings) -> SimulationReport {
    simulate(WorkloadReader::new(text.as_bytes()), settings).expect("the workload is valid")
}

fn fish_with_cap(max: u32) -> Settings {
    let mut settings = Settings::fish(1.0);
    settings.pool.max_hosts = max;
    settings.pool.zones[0].max = max;
    settings
}

#[test]
fn one_job_in_fish_mode_bills_its_run_then_five_minutes_per_scrub_cycle_until_24_hours() {
    // Allocated and launched at T0 (no wait); boot 7 min, then 600 s of work: billed 1020 s.
    // The instance ends, the host scrubs 90 min (unbilled), is idle 5 min (billed), scrubs
    // again: cycles of 5700 s, the idle starts at T0 + 6420 + 5700k. A scrub starts while
    // since + 300 < T0 + 24 h, so for k = 0..=13 (14 × 300 s); at k = 14 the host is idle from
    // T0 + 86220 and released at T0 + 86400: 180 s. Billed: 1020 + 4200 + 180 = 5400 s = 1.5 h.
    let report = run(&csv(&[(T0, 600)]), &Settings::fish(1.0));
    assert!(report.conservation.holds);
    assert_eq!(report.months.len(), 1);
    let january = &report.months[0];
    assert_eq!(january.month, "2025-01");
    assert!((january.instance_hours - 600.0 / 3600.0).abs() < 1e-9);
    assert!((january.host_hours - 1.5).abs() < 1e-9, "{}", january.host_hours);
    assert!((january.usd - 1.5).abs() < 1e-9);
    assert_eq!(january.queue_hours, 0.0);
    assert_eq!((report.wait.p50_s, report.wait.max_s), (0, 0));
    assert_eq!(report.peak_hosts, 1);
}

#[test]
fn a_second_job_on_a_one_host_pool_waits_for_the_scrub_and_is_served_the_second_it_ends() {
    // A runs T0..T0+1020 on the only host; the host scrubs 5400 s; B, queued since T0, gets
    // it at T0 + 6420 exactly (not at a later row or step): a wait of 6420 s.
    let report = run(&csv(&[(T0, 600), (T0, 600)]), &fish_with_cap(1));
    assert!(report.conservation.holds);
    assert_eq!((report.wait.p50_s, report.wait.p95_s, report.wait.max_s), (0, 6420, 6420));
    let january = &report.months[0];
    assert!((january.queue_hours - 6420.0 / 3600.0).abs() < 1e-9);
    assert!((january.mean_wait_s - 3210.0).abs() < 1e-9);
    assert!((january.instance_hours - 1200.0 / 3600.0).abs() < 1e-9);
    assert_eq!((report.peak_hosts, report.peak_queue), (1, 1));
}

#[test]
fn a_host_freed_at_the_second_a_job_arrives_serves_it_without_a_new_host() {
    // A's host is available again at T0 + 6420 (1020 s of work and boot, 5400 s of scrub). B
    // arrives at that very second: it takes that host; no second host is allocated.
    let report = run(&csv(&[(T0, 600), (T0 + 6420, 600)]), &Settings::fish(1.0));
    assert_eq!(report.peak_hosts, 1);
    assert_eq!(report.wait.max_s, 0);
    assert!(report.conservation.holds);
}

#[test]
fn hours_are_split_at_month_boundaries() {
    // Starts 2025-01-31 23:50; boot to 23:57; runs 1200 s: 180 s in January, 1020 s in
    // February.
    let start = T0 + 30 * 86_400 + 23 * 3600 + 50 * 60;
    let report = run(&csv(&[(start, 1200)]), &Settings::fish(1.0));
    let hours: Vec<(String, f64)> =
        report.months.iter().map(|m| (m.month.clone(), m.instance_hours * 3600.0)).collect();
    assert_eq!(hours.len(), 2);
    assert_eq!(hours[0].0, "2025-01");
    assert!((hours[0].1 - 180.0).abs() < 1e-6 && (hours[1].1 - 1020.0).abs() < 1e-6, "{hours:?}");
    assert!(report.conservation.holds);
}

#[test]
fn rows_of_another_type_or_zone_are_rejected_and_still_conserved() {
    let text = format!(
        "{CSV_HEADER}\n{T0},{},600,a,build,,mac2.metal,\n{T0},{},300,b,build,,mac1.metal,\n{T0},{},120,c,build,,,nowhere-1a\n",
        T0 + 600,
        T0 + 300,
        T0 + 120,
    );
    let report = run(&text, &Settings::fish(1.0));
    assert_eq!((report.jobs, report.rejected), (3, 2));
    let conservation = &report.conservation;
    assert!(conservation.holds);
    assert!((conservation.rejected_hours - 420.0 / 3600.0).abs() < 1e-9);
    assert!((conservation.executed_hours - 600.0 / 3600.0).abs() < 1e-9);
}

fn generated_week(seed: u64) -> String {
    let shape = WorkloadShape { days: 7, start: T0 + 5 * 86_400, ..WorkloadShape::year(seed) };
    let mut text = format!("{CSV_HEADER}\n");
    for job in Workload::new(shape.clone()) {
        text.push_str(&job.csv_row(&shape));
        text.push('\n');
    }
    text
}

#[test]
fn generated_weeks_conserve_job_hours_in_every_mode() {
    for seed in [1, 2] {
        let text = generated_week(seed);
        let input: u64 = text
            .lines()
            .skip(1)
            .map(|line| line.split(',').nth(2).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0))
            .sum();
        let zones = vec![
            ZoneLimit { name: "us-east-1a".to_owned(), max: 40 },
            ZoneLimit { name: "us-east-1b".to_owned(), max: 30 },
        ];
        let mut pool = PoolConfig::new(zones, 60, true);
        pool.scrubbing = ScrubPolicy::Auto;
        let realistic = Settings::realistic(
            pool,
            Some("mac-arm".to_owned()),
            "mac2.metal".to_owned(),
            MAC2_METAL_USD_PER_HOUR,
            seed,
        );
        for settings in [Settings::fish(MAC2_METAL_USD_PER_HOUR), fish_with_cap(50), realistic] {
            let report = run(&text, &settings);
            let conservation = &report.conservation;
            assert!(conservation.holds, "{}: {conservation:?}", settings.mode);
            assert!((conservation.input_job_hours - input as f64 / 3600.0).abs() < 1e-6);
            let booked: f64 = report.months.iter().map(|month| month.instance_hours).sum();
            assert!((booked - conservation.executed_hours).abs() < 1e-6);
            assert_eq!(conservation.queued_hours, 0.0, "{}: every job ends", settings.mode);
            assert!(report.peak_hosts <= settings.pool.max_hosts as usize);
        }
    }
}

#[test]
fn a_capped_pool_queues_bursts_and_an_uncapped_one_does_not() {
    let text = generated_week(3);
    let capped = run(&text, &fish_with_cap(50));
    let uncapped = run(&text, &Settings::fish(1.0));
    assert!(capped.wait.max_s > 0 && capped.peak_queue > 0);
    assert_eq!(capped.peak_hosts, 50);
    assert!(uncapped.wait.p95_s <= capped.wait.p95_s);
    // The same jobs run either way.
    assert_eq!(capped.conservation.executed_hours, uncapped.conservation.executed_hours);
}

#[test]
fn realistic_mode_is_the_same_for_a_seed_and_differs_across_seeds() {
    let text = generated_week(4);
    let realistic = |seed| {
        let zones = vec![ZoneLimit { name: "us-east-1a".to_owned(), max: 80 }];
        let mut pool = PoolConfig::new(zones, 80, true);
        pool.scrubbing = ScrubPolicy::After(300);
        Settings::realistic(pool, None, "mac2.metal".to_owned(), 1.0, seed)
    };
    let first = run(&text, &realistic(1));
    assert_eq!(first, run(&text, &realistic(1)));
    let other = run(&text, &realistic(2));
    assert_ne!(first.usd, other.usd, "scrub times are drawn from the seed");
    assert_eq!(first.conservation.executed_hours, other.conservation.executed_hours);
}

#[test]
fn runs_side_by_side_over_one_parsed_workload_report_what_streamed_runs_do() {
    let text = generated_week(5);
    let settings = [Settings::fish(1.0), fish_with_cap(30), fish_with_cap(60)];
    let open = || Ok::<_, std::convert::Infallible>(text.as_bytes());
    for (side_by_side, settings) in simulate_each(open, &settings).into_iter().zip(&settings) {
        assert_eq!(side_by_side.expect("the workload is valid"), run(&text, settings));
    }
}

#[test]
fn a_bad_row_fails_every_run_side_by_side_with_its_error() {
    let text = format!("{}{T0},{},5,late,build\n", csv(&[(T0 + 10, 5)]), T0 + 5);
    let open = || Ok::<_, std::convert::Infallible>(text.as_bytes());
    let expected = InputError::Unsorted { line: 3, start: T0, previous: T0 + 10, previous_line: 2 };
    for result in simulate_each(open, &[Settings::fish(1.0), fish_with_cap(2)]) {
        match result {
            Err(CompareError::Input(error)) => assert_eq!(error, expected),
            other => panic!("expected the unsorted row's error, got {other:?}"),
        }
    }
}
