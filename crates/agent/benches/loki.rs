//! Benchmark: an agent shipping its binary's log to Loki at 1,000 lines a second.
//!
//! The agent runs as its own process (this executable with `--agent BOOTSTRAP`, entered through
//! `flotilla_agent::run` as `flotilla agent` is), its bootstrap naming an in-process stand-in
//! for Loki's push API (`tests/support/loki_receiver.rs`, which checks every push's format).
//! Its binary is this executable again with `--emit RATE SECONDS`: lines `seq=N sent=<unix ns>`
//! at a steady rate. Reports the agent's RSS (sampled every 100 ms, and its peak `VmHWM`), how
//! many lines arrived and were dropped, and the time from a line's write to its arrival at the
//! receiver (p50, p99, max).
//!
//! With `--outage S` the receiver answers 503 for the first S seconds of the binary's output,
//! so the agent's queue fills to its budget and drops the oldest lines; the report then shows
//! the RSS with a full queue and the drop count.
//!
//! ```text
//! cargo bench -p flotilla-agent --bench loki                          # 1,000 lines/s for 20 s
//! cargo bench -p flotilla-agent --bench loki -- 2000 30               # another rate and duration
//! cargo bench -p flotilla-agent --bench loki -- 2000 30 --outage 20   # Loki down for 20 s
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)] // A benchmark prints its figures.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/loki_receiver.rs"]
mod loki_receiver;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Deployment, Version};
use loki_receiver::{Mode, Receiver};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--agent") => {
            let result = flotilla_agent::run(
                Path::new(&args[1]),
                flotilla_agent::Fetchers::default(),
                &flotilla_agent::LogFilter::default(),
            );
            if let Err(error) = result {
                eprintln!("agent: {error}");
                std::process::exit(1);
            }
        }
        Some("--emit") => emit(args[1].parse().unwrap(), args[2].parse().unwrap()),
        _ => {
            let outage = args
                .iter()
                .position(|a| a == "--outage")
                .map(|i| Duration::from_secs(args[i + 1].parse().unwrap()));
            let numbers: Vec<u64> = args
                .iter()
                .enumerate()
                .filter(|(i, _)| outage.is_none() || args[i.saturating_sub(1)] != "--outage")
                .filter_map(|(_, a)| a.parse().ok())
                .collect();
            let rate = numbers.first().copied().unwrap_or(1000);
            let seconds = numbers.get(1).copied().unwrap_or(20);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(bench(rate, seconds, outage));
        }
    }
}

/// Writes `rate` lines a second for `seconds` seconds, then idles until killed.
fn emit(rate: u64, seconds: u64) {
    let start = Instant::now();
    let total = rate * seconds;
    let mut stdout = std::io::stdout().lock();
    for seq in 0..total {
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        writeln!(stdout, "seq={seq} sent={sent} padding={}", "x".repeat(64)).unwrap();
        stdout.flush().unwrap();
    }
    drop(stdout);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

async fn bench(rate: u64, seconds: u64, outage: Option<Duration>) {
    println!(
        "machine: {} cores; {rate} lines/s for {seconds} s; receiver down {outage:?}",
        cores()
    );
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Accept).await;
    let deployment = Deployment::new("127.200.12.1");
    let bootstrap = deployment.bootstrap_with(serde_json::json!({
        "loki": {"url": receiver.url(), "instance_type": "bench", "market": "local"},
    }));
    let bootstrap_path = deployment.temp.path().join("bootstrap.json");
    fs_err::write(&bootstrap_path, serde_json::to_vec(&bootstrap).unwrap()).unwrap();
    let me = std::env::current_exe().unwrap();
    let stderr = fs_err::File::create(deployment.temp.path().join("agent-stderr.txt")).unwrap();
    let mut agent = Command::new(&me)
        .arg("--agent")
        .arg(&bootstrap_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.into_parts().0))
        .spawn()
        .unwrap();
    common::wait_for_api(&deployment, &mut agent).await;
    let idle_rss = rss_kib(agent.id(), "VmRSS");
    let script = format!("exec {} --emit {rate} {seconds}\n", me.display());
    let manifest = deployment.publish(&Version::script(&script));
    if outage.is_some() {
        receiver.set_mode(Mode::Unavailable);
    }
    deployment.install(&manifest).await;

    let total = (rate * seconds) as usize;
    let started = Instant::now();
    let mut peak_rss = 0;
    let deadline = started + Duration::from_secs(seconds + 30);
    loop {
        peak_rss = peak_rss.max(rss_kib(agent.id(), "VmRSS"));
        if outage.is_some_and(|outage| started.elapsed() >= outage) {
            receiver.set_mode(Mode::Accept);
        }
        let arrived = receiver.lines().iter().filter(|l| l.starts_with("seq=")).count();
        let settled = outage.is_some()
            && started.elapsed() > Duration::from_secs(seconds + 5)
            && deployment.metrics().await.contains("flotilla_loki_queued_bytes 0\n");
        if arrived >= total || settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hwm = rss_kib(agent.id(), "VmHWM");
    receiver.assert_no_violations();

    let mut latencies: Vec<Duration> = receiver
        .received()
        .iter()
        .filter_map(|r| {
            let sent: u128 = r.line.split(" sent=").nth(1)?.split(' ').next()?.parse().ok()?;
            let arrived = r.arrived.duration_since(UNIX_EPOCH).ok()?.as_nanos();
            Some(Duration::from_nanos(u64::try_from(arrived.saturating_sub(sent)).ok()?))
        })
        .collect();
    latencies.sort();
    let metrics = deployment.metrics().await;
    let counter = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("?").trim().to_owned()
    };
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    println!("lines written: {total}; arrived: {}", latencies.len());
    println!(
        "agent: shipped {} lines, dropped {}, queue {} bytes at the end",
        counter("flotilla_loki_lines_shipped_total"),
        counter("flotilla_loki_lines_dropped_total"),
        counter("flotilla_loki_queued_bytes"),
    );
    println!(
        "agent RSS: {:.1} MiB idle before the binary, {:.1} MiB at most while shipping (VmHWM {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "line written -> received: p50 {:?}, p99 {:?}, max {:?}",
        percentile(0.50),
        percentile(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    common::kill(agent.id(), rustix::process::Signal::TERM);
    common::wait_for_exit(&mut agent).await;
}

/// A field of `/proc/<pid>/status` in KiB (0 when it cannot be read).
fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}
