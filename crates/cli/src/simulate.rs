//! `flotilla simulate`: a workload CSV through a dedicated host pool's policy
//! (`flotilla_capacity::simulate`), printed as Fish's monthly table plus cost, waits and the
//! conservation check, or as JSON; `--compare` runs several policies side by side and `--plot`
//! draws them.
//!
//! The pool comes from `--pool` (see [`flotilla_spec::parse_host_pools`]) or, in fish mode, is
//! Fish's. With `--pool` in fish mode, the pool's zones, maxima, instance type and scrubbing
//! replace Fish's 500 hosts in one zone, and Fish's timings stay.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use flotilla_capacity::host_pool::{PoolConfig, ScrubPolicy, ZoneLimit};
use flotilla_capacity::simulate::{
    Settings, SimulationReport, WorkloadReader, builtin_host_price, simulate, simulate_each,
};
use flotilla_core::error::exit;
use flotilla_spec::diagnostic::escape_for_terminal;
use flotilla_spec::host_pool::{HostPoolSpec, Scrubbing, is_mac_type};
use serde::Serialize;

use crate::cli::{OutputFormat, SimulateArgs, SimulateMode};

/// The name `flotilla_spec::parse_host_pools` gives a pool written alone.
const BARE_POOL_NAME: &str = "pool";

/// The largest pool file read.
const MAX_POOL_BYTES: u64 = 1024 * 1024;

/// Runs `flotilla simulate`; the exit status.
pub fn run(args: &SimulateArgs) -> u8 {
    match simulate_command(args) {
        Ok(true) => exit::OK,
        Ok(false) => exit::FAILED,
        Err(error) => {
            let text = format!("{error:#}");
            let lines: Vec<_> = text.lines().map(escape_for_terminal).collect();
            let _ = writeln!(std::io::stderr().lock(), "error: {}", lines.join("\n"));
            exit::ERROR
        }
    }
}

/// One run of a comparison: the value the key took, and what came of it.
#[derive(Debug, Serialize)]
struct CompareRun {
    value: String,
    report: SimulationReport,
}

#[derive(Debug, Serialize)]
struct Comparison {
    key: String,
    runs: Vec<CompareRun>,
}

/// Whether every run's job-hours add up.
fn simulate_command(args: &SimulateArgs) -> anyhow::Result<bool> {
    let base = settings(args)?;
    let workload = &args.workload;
    let open = || fs_err::File::open(workload);
    // A file that cannot be opened is reported before anything runs.
    open()?;
    let runs: Vec<(String, SimulationReport)> = match &args.compare {
        None => {
            let report = simulate(WorkloadReader::new(open()?), &base)
                .with_context(|| format!("in {}", workload.display()))?;
            vec![(String::new(), report)]
        }
        Some(compare) => {
            let (key, variants) = variants(&base, compare)?;
            let settings: Vec<Settings> = variants.iter().map(|(_, s)| s.clone()).collect();
            let mut runs = Vec::new();
            for ((value, _), report) in variants.into_iter().zip(simulate_each(open, &settings)) {
                let report = report.with_context(|| format!("in {}", workload.display()))?;
                runs.push((value, report));
            }
            print_comparison(args.output, &key, &runs);
            if let Some(plot) = &args.plot {
                write_plot(plot, &runs)?;
            }
            return Ok(runs.iter().all(|(_, report)| report.conservation.holds));
        }
    };
    let report = &runs[0].1;
    match args.output {
        OutputFormat::Json => crate::output::print_json(report),
        OutputFormat::Table => print_report(report),
    }
    if let Some(plot) = &args.plot {
        write_plot(plot, &runs)?;
    }
    if !report.conservation.holds {
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: the job-hours do not add up (input {:.3} h, executed {:.3} + queued {:.3} + rejected {:.3}): this is a bug in flotilla, please report it with the workload",
            report.conservation.input_job_hours,
            report.conservation.executed_hours,
            report.conservation.queued_hours,
            report.conservation.rejected_hours,
        );
    }
    Ok(report.conservation.holds)
}

fn write_plot(path: &Path, runs: &[(String, SimulationReport)]) -> anyhow::Result<()> {
    let svg = crate::simulate_plot::svg(runs);
    fs_err::write(path, svg)?;
    let _ = writeln!(std::io::stderr().lock(), "wrote {}", path.display());
    Ok(())
}

/// The settings of the mode, the pool and the price.
fn settings(args: &SimulateArgs) -> anyhow::Result<Settings> {
    let pool = match &args.pool {
        Some(path) => Some(read_pool(path, args.pool_name.as_deref())?),
        None => None,
    };
    let instance_type =
        pool.as_ref().map_or("mac2.metal", |(_, pool)| pool.instance_type.as_str()).to_owned();
    let price = match args.host_price {
        Some(price) if price.is_finite() && price >= 0.0 => price,
        Some(price) => bail!("--host-price {price} is not a price: give USD per hour, e.g. 0.65"),
        None => host_price(&instance_type).with_context(|| {
            format!("no built-in price for a {instance_type} host: give --host-price USD per hour")
        })?,
    };
    let mut settings = match (args.mode, &pool) {
        (SimulateMode::Fish, None) => Settings::fish(price),
        (SimulateMode::Fish, Some((_, spec))) => {
            let mut settings = Settings::fish(price);
            settings.pool = pool_config(spec);
            settings.instance_type = instance_type;
            settings
        }
        (SimulateMode::Realistic, Some((name, spec))) => Settings::realistic(
            pool_config(spec),
            // Rows naming another pool are not this pool's; a bare pool has no name to match.
            (name != BARE_POOL_NAME).then(|| name.clone()),
            instance_type,
            price,
            args.seed,
        ),
        (SimulateMode::Realistic, None) => {
            bail!("--mode realistic needs --pool: the pool's zones and their caps")
        }
    };
    settings.seed = args.seed;
    Ok(settings)
}

/// The price of a host of `instance_type`: the built-in on-demand table (a dedicated host of a
/// `.metal` type costs what the instance does), else the documented Mac figures.
fn host_price(instance_type: &str) -> Option<f64> {
    flotilla_capacity::prices::builtin_table()
        .get(instance_type)
        .copied()
        .or_else(|| builtin_host_price(instance_type))
}

/// Reads `--pool`: the one pool, or the one named.
fn read_pool(path: &Path, name: Option<&str>) -> anyhow::Result<(String, HostPoolSpec)> {
    let metadata = fs_err::metadata(path)?;
    if !metadata.is_file() || metadata.len() > MAX_POOL_BYTES {
        bail!("{} is not a regular file of at most 1 MiB", path.display());
    }
    let source = fs_err::read_to_string(path)?;
    let mut pools = flotilla_spec::parse_host_pools(&source, path)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let names = pools.keys().cloned().collect::<Vec<_>>().join(", ");
    match name {
        Some(name) => match pools.remove(name) {
            Some(pool) => Ok((name.to_owned(), pool)),
            None => bail!("{} has no pool `{name}` (it has: {names})", path.display()),
        },
        None if pools.len() == 1 => Ok(pools.pop_first().expect("one pool")),
        None if pools.is_empty() => bail!("{} defines no host pool", path.display()),
        None => bail!("{} has several pools ({names}): name one with --pool-name", path.display()),
    }
}

/// The policy's configuration of a pool as written.
fn pool_config(spec: &HostPoolSpec) -> PoolConfig {
    let zones = spec
        .zones_in_order()
        .map(|(name, zone)| ZoneLimit { name: name.to_owned(), max: zone.max })
        .collect();
    let mut config = PoolConfig::new(zones, spec.effective_max(), is_mac_type(&spec.instance_type));
    config.scrubbing = scrub_policy(spec.scrubbing);
    config.release_idle_after = spec.release_idle_after.map_or(0, |after| after.as_secs());
    config
}

fn scrub_policy(scrubbing: Scrubbing) -> ScrubPolicy {
    match scrubbing {
        Scrubbing::Off => ScrubPolicy::Off,
        Scrubbing::Auto => ScrubPolicy::Auto,
        Scrubbing::After(delay) => ScrubPolicy::After(delay.as_secs().max(1)),
    }
}

/// `--compare KEY=V1,V2,...`: each value's settings.
fn variants(base: &Settings, compare: &str) -> anyhow::Result<(String, Vec<(String, Settings)>)> {
    let Some((key, values)) = compare.split_once('=') else {
        bail!("--compare {compare}: write KEY=V1,V2,..., e.g. scrubbing=off,auto,5m,30m");
    };
    let mut variants = Vec::new();
    for value in values.split(',').map(str::trim).filter(|value| !value.is_empty()) {
        let mut settings = base.clone();
        match key {
            "scrubbing" => {
                settings.pool.scrubbing = match value {
                    "off" => ScrubPolicy::Off,
                    "auto" => ScrubPolicy::Auto,
                    delay => {
                        let delay = humantime::parse_duration(delay).with_context(|| {
                            format!("--compare scrubbing: `{delay}` is not off, auto or a duration")
                        })?;
                        ScrubPolicy::After(delay.as_secs().max(1))
                    }
                };
            }
            "max" => {
                let max: u32 = value
                    .parse()
                    .ok()
                    .filter(|max| *max > 0)
                    .with_context(|| format!("--compare max: `{value}` is not a host count"))?;
                settings.pool.max_hosts = max;
                if let [only] = settings.pool.zones.as_mut_slice() {
                    only.max = max;
                }
            }
            other => bail!("--compare: unknown key `{other}`; compare `scrubbing` or `max`"),
        }
        variants.push((value.to_owned(), settings));
    }
    if variants.is_empty() {
        bail!("--compare {compare}: give at least one value");
    }
    Ok((key.to_owned(), variants))
}

fn print_report(report: &SimulationReport) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<8} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "MONTH", "INSTANCE H", "HOST H", "QUEUE H", "MEAN WAIT S", "USD"
    );
    for month in &report.months {
        let _ = writeln!(
            text,
            "{:<8} {:>12.1} {:>12.1} {:>10.1} {:>12.1} {:>12.2}",
            month.month,
            month.instance_hours,
            month.host_hours,
            month.queue_hours,
            month.mean_wait_s,
            month.usd
        );
    }
    let sum = |value: fn(&flotilla_capacity::simulate::MonthRow) -> f64| {
        report.months.iter().map(value).sum::<f64>()
    };
    let _ = writeln!(
        text,
        "{:<8} {:>12.1} {:>12.1} {:>10.1} {:>12} {:>12.2}",
        "total",
        sum(|m| m.instance_hours),
        sum(|m| m.host_hours),
        sum(|m| m.queue_hours),
        "",
        report.usd
    );
    let _ = writeln!(
        text,
        "\njobs {} (rejected {}), peak hosts {}, peak queue {}, wait p50 {} s, p95 {} s, max {} s",
        report.jobs,
        report.rejected,
        report.peak_hosts,
        report.peak_queue,
        report.wait.p50_s,
        report.wait.p95_s,
        report.wait.max_s
    );
    let conservation = &report.conservation;
    let _ = writeln!(
        text,
        "conservation: input {:.1} job-h = executed {:.1} + queued {:.1} + rejected {:.1}: {}",
        conservation.input_job_hours,
        conservation.executed_hours,
        conservation.queued_hours,
        conservation.rejected_hours,
        if conservation.holds { "holds" } else { "DOES NOT HOLD" }
    );
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_comparison(output: OutputFormat, key: &str, runs: &[(String, SimulationReport)]) {
    if output == OutputFormat::Json {
        let comparison = Comparison {
            key: key.to_owned(),
            runs: runs
                .iter()
                .map(|(value, report)| CompareRun { value: value.clone(), report: report.clone() })
                .collect(),
        };
        crate::output::print_json(&comparison);
        return;
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<12} {:>14} {:>12} {:>10} {:>10} {:>10} {:>9} {:>6}",
        key.to_uppercase(),
        "USD",
        "HOST H",
        "P95 WAIT S",
        "MAX WAIT S",
        "PEAK HOSTS",
        "REJECTED",
        "HOLDS"
    );
    for (value, report) in runs {
        let host_hours: f64 = report.months.iter().map(|month| month.host_hours).sum();
        let _ = writeln!(
            text,
            "{:<12} {:>14.2} {:>12.1} {:>10} {:>10} {:>10} {:>9} {:>6}",
            value,
            report.usd,
            host_hours,
            report.wait.p95_s,
            report.wait.max_s,
            report.peak_hosts,
            report.rejected,
            if report.conservation.holds { "yes" } else { "NO" }
        );
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
