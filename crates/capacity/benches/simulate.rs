//! Benchmark: a generated year of Mac CI load (about 700,000 jobs, [`WorkloadShape::year`])
//! through the host pool simulator. Targets (issue 13): one run in at most 1 s and 100 MB peak
//! RSS; `--compare` of 4 scrubbing policies in at most 3 s.
//!
//! ```text
//! cargo bench -p flotilla-capacity --bench simulate [-- SEED [CSV_OUT]]
//! ```
//!
//! The year is written to a temporary CSV (or to CSV_OUT, kept, to feed `flotilla simulate` or
//! Fish's script), then read back by each run, as the CLI does. Peak RSS is the process's
//! VmHWM, read after each step; generation streams, so it adds little.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // A benchmark prints its figures.

use std::io::{BufWriter, Write};
use std::time::Instant;

use flotilla_capacity::host_pool::{PoolConfig, ScrubPolicy, ZoneLimit};
use flotilla_capacity::simulate::{
    MAC2_METAL_USD_PER_HOUR, Settings, SimulationReport, WorkloadReader, simulate, simulate_each,
};
use flotilla_capacity::workload::{CSV_HEADER, Workload, WorkloadShape};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let seed: u64 = args.first().map_or(1, |seed| seed.parse().expect("SEED is a number"));
    let directory = tempfile::tempdir().unwrap();
    let path = args.get(1).map_or_else(|| directory.path().join("year.csv"), Into::into);
    println!("machine: {} cores, {}", cores(), cpu_model());

    let started = Instant::now();
    let shape = WorkloadShape::year(seed);
    let mut file = BufWriter::new(fs_err::File::create(&path).unwrap());
    writeln!(file, "{CSV_HEADER}").unwrap();
    let mut rows = 0u64;
    for job in Workload::new(shape.clone()) {
        writeln!(file, "{}", job.csv_row(&shape)).unwrap();
        rows += 1;
    }
    file.flush().unwrap();
    drop(file);
    let size = fs_err::metadata(&path).unwrap().len();
    println!(
        "generate: seed {seed}, {rows} jobs, {:.1} MB in {:.2} s ({}), peak RSS {:.1} MB",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        path.display(),
        peak_rss_mb()
    );

    let open = || fs_err::File::open(&path);
    let fish = Settings::fish(MAC2_METAL_USD_PER_HOUR);
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let report = simulate(WorkloadReader::new(open().unwrap()), &fish).unwrap();
    print_run("simulate fish", started.elapsed().as_secs_f64(), cpu_seconds() - cpu, &report);

    let realistic = |scrubbing| {
        let zones = vec![
            ZoneLimit { name: "us-east-1a".to_owned(), max: 250 },
            ZoneLimit { name: "us-east-1b".to_owned(), max: 150 },
            ZoneLimit { name: "us-east-1c".to_owned(), max: 150 },
        ];
        let mut pool = PoolConfig::new(zones, 500, true);
        pool.scrubbing = scrubbing;
        let name = Some(shape.pool.clone());
        Settings::realistic(pool, name, shape.instance_type.clone(), MAC2_METAL_USD_PER_HOUR, seed)
    };
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let report =
        simulate(WorkloadReader::new(open().unwrap()), &realistic(ScrubPolicy::Auto)).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    print_run("simulate realistic auto", elapsed, cpu_seconds() - cpu, &report);

    let policies = [
        ("off", ScrubPolicy::Off),
        ("auto", ScrubPolicy::Auto),
        ("5m", ScrubPolicy::After(300)),
        ("30m", ScrubPolicy::After(1800)),
    ];
    let settings: Vec<Settings> = policies.iter().map(|(_, policy)| realistic(*policy)).collect();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let reports = simulate_each(open, &settings);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "compare scrubbing=off,auto,5m,30m (realistic, a thread each): {elapsed:.3} s wall, {:.3} s CPU (target <= 3 s wall), peak RSS {:.1} MB",
        cpu_seconds() - cpu,
        peak_rss_mb()
    );
    for ((name, _), report) in policies.iter().zip(reports) {
        let report = report.unwrap();
        let host_hours: f64 = report.months.iter().map(|month| month.host_hours).sum();
        println!(
            "  {name:>4}: ${:>10.0}  host-h {host_hours:>8.0}  p95 wait {:>6} s  max {:>6} s  peak queue {:>5}  holds {}  report {:016x}",
            report.usd,
            report.wait.p95_s,
            report.wait.max_s,
            report.peak_queue,
            report.conservation.holds,
            digest(&report)
        );
    }
}

fn print_run(what: &str, elapsed: f64, cpu: f64, report: &SimulationReport) {
    let conservation = &report.conservation;
    println!(
        "{what}: {elapsed:.3} s wall, {cpu:.3} s CPU (target <= 1 s), peak RSS {:.1} MB (target <= 100 MB)",
        peak_rss_mb()
    );
    println!(
        "  jobs {}, input {:.0} job-h = executed {:.0} + queued {:.0} + rejected {:.0}: holds {}",
        report.jobs,
        conservation.input_job_hours,
        conservation.executed_hours,
        conservation.queued_hours,
        conservation.rejected_hours,
        conservation.holds
    );
    let host_hours: f64 = report.months.iter().map(|month| month.host_hours).sum();
    println!(
        "  host-h {host_hours:.0}, ${:.0}, peak hosts {}, peak queue {}, wait p50 {} s p95 {} s max {} s, report {:016x}",
        report.usd,
        report.peak_hosts,
        report.peak_queue,
        report.wait.p50_s,
        report.wait.p95_s,
        report.wait.max_s,
        digest(report)
    );
}

/// A digest (FNV-1a) of the whole report as JSON, every month's figures included: a change to
/// the simulator that leaves the results identical leaves it identical.
fn digest(report: &SimulationReport) -> u64 {
    let json = serde_json::to_vec(report).unwrap();
    json.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The CPU time this process has used (user + system, all threads), from /proc/self/stat: the
/// figure that does not depend on what else the shared machine runs.
fn cpu_seconds() -> f64 {
    let stat = fs_err::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports in clock ticks of 1/100 s (USER_HZ) on every architecture flotilla runs on.
    (ticks(11) + ticks(12)) / 100.0
}

/// The process's peak resident set (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    let status = fs_err::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kilobytes| kilobytes / 1000.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn cpu_model() -> String {
    let info = fs_err::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
