//! Benchmark: fleets that change size and heal (issue 11), through the real `flotilla` binary.
//!
//! - `grow:N` (local): N nodes of the example app with `on_hosts_change: {signal: SIGHUP}` are
//!   created, then `update` grows them to 2N. Reports the update's wall time and how many of
//!   the first N binaries restarted (a pid that changed, or a restart count above zero; the
//!   target is none), and checks that every one of them has the new hosts.yaml.
//! - `reclaim:N` (emulator): N `prefer-spot` machines running a sleeper (no health check, so
//!   the figures are the control plane's) at 100 ms per call, instances `pending` 3 s and
//!   `shutting-down` 2 s; `flotilla watch --interval 1s --max-replacing N` runs while 10 % of
//!   them are reclaimed at once (terminated without notice delay). Reports the time from the
//!   reclaim until watch has replaced them all and every machine is healthy, and the EC2 calls
//!   made meanwhile by Action (watch's own polling included).
//! - `notice:N` (emulator): the same fleet and timings; one spot machine gets a spot
//!   interruption notice (two minutes, as AWS gives) once watch has started (its account check
//!   done). Reports the time from the notice until `status` reports the name healthy on its
//!   new instance (target: boot time + 5 s), split into notice → journaled, → the
//!   replacement's instance exists, and launch → healthy (the boot time); then when watch
//!   says `replaced` (the old machine drained and terminated too), and the calls made.
//!
//! ```text
//! cargo build -p fleet-app -p flotilla-cli -p flotilla-emulator
//! eval "$(crates/emulator/start-for-tests.sh --parent-pid $$ --agent-seed target/debug/flotilla)"
//! cargo bench --profile dev -p flotilla-cli --bench heal -- grow:100 reclaim:100 notice:5
//! ```
//! The agent seed must be the build the benchmark runs (here the dev profile's).

#![allow(clippy::print_stdout, clippy::unwrap_used)] // A benchmark prints its figures.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_emulator::control::{Emulator, SpotAction, SpotInterruption, StateTiming};
use serde_json::Value;

const LATENCY: Duration = Duration::from_millis(100);

fn main() {
    let flotilla = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    println!("machine: {} cores, {}", cores(), cpu_model());
    for arg in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        match arg.split_once(':') {
            Some(("grow", n)) => grow(&flotilla, n.parse().expect("grow:N")),
            Some(("reclaim", n)) => reclaim(&flotilla, n.parse().expect("reclaim:N")),
            Some(("notice", n)) => notice(&flotilla, n.parse().expect("notice:N")),
            _ => panic!("unknown shape {arg}: grow:N, reclaim:N or notice:N"),
        }
    }
}

/// `grow:N` (see the module documentation).
fn grow(flotilla: &Path, size: usize) {
    let fleet_app = flotilla.parent().unwrap().join("fleet-app");
    assert!(fleet_app.exists(), "{} is missing: build fleet-app first", fleet_app.display());
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tag = format!("bench-grow-{size}");
    let spec = |count: usize| {
        format!(
            "tag: {tag}\nprovider: local\nmonitoring: {{instance_type: t4g.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: node\n  count: {count}\n  region: local\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: app.conf\n  profiling: false\n  health: {{http: {{port: 9090, path: /health}}}}\n  on_hosts_change: {{signal: SIGHUP}}\nports: []\n",
            fleet_app.display()
        )
    };
    fs_err::write(work.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(work.path().join("app.conf"), "port = 9090\ngreeting = \"hello\"\n").unwrap();
    fs_err::write(work.path().join("small.yaml"), spec(size)).unwrap();
    fs_err::write(work.path().join("large.yaml"), spec(size * 2)).unwrap();
    // FLOTILLA_BENCH_LOGS=DIR keeps each command's log (with -v: every stage, timed) in DIR.
    let logs = std::env::var_os("FLOTILLA_BENCH_LOGS").map(PathBuf::from);
    if let Some(dir) = &logs {
        fs_err::create_dir_all(dir).unwrap();
    }
    let run = |args: &[&str]| -> (Duration, Vec<u8>) {
        let started = Instant::now();
        let output = Command::new(flotilla)
            .args(args)
            .args(logs.as_ref().map(|_| "-v"))
            .current_dir(work.path())
            .env("FLOTILLA_HOME", home.path())
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        if let Some(dir) = &logs {
            let file = dir.join(format!("grow-{size}-{}.log", args[0]));
            fs_err::write(file, &output.stderr).unwrap();
        }
        assert!(
            output.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (elapsed, output.stdout)
    };
    let (create, stdout) = run(&["create", "--config", "small.yaml", "--output", "json"]);
    let before = binaries(&serde_json::from_slice::<Vec<Value>>(&stdout).unwrap());
    assert_eq!(before.len(), size);
    let (update, stdout) = run(&["update", "--config", "large.yaml", "--output", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&stdout).unwrap();
    let after = binaries(&rows);
    let healthy = rows.iter().filter(|r| r["health"] == "healthy").count();
    let hosts: BTreeSet<&str> = rows.iter().filter_map(|r| r["hosts"].as_str()).collect();
    let restarted = before
        .iter()
        .filter(|(name, (pid, _))| after.get(*name).is_none_or(|(p, r)| p != pid || *r > 0))
        .count();
    println!(
        "{size:>4} → {:<4} local  create {size}             {:>7.2} s",
        size * 2,
        secs(create)
    );
    println!(
        "{size:>4} → {:<4} local  update (grow, SIGHUP)  {:>7.2} s   {healthy} of {} healthy, hosts digests {}, existing binaries restarted: {restarted} of {size}",
        size * 2,
        secs(update),
        size * 2,
        hosts.len(),
    );
    let (destroy, _) = run(&["destroy", "--tag", &tag]);
    println!("{size:>4} → {:<4} local  destroy                {:>7.2} s", size * 2, secs(destroy));
}

/// Name → (pid, restarts) of each binary machine in status rows.
fn binaries(rows: &[Value]) -> BTreeMap<String, (u64, u64)> {
    rows.iter()
        .filter(|r| r["role"] == "binary")
        .map(|r| {
            let name = r["name"].as_str().unwrap().to_owned();
            (name, (r["pid"].as_u64().unwrap_or(0), r["restarts"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// A `prefer-spot` fleet of sleepers on the emulator at 100 ms per call, instances `pending`
/// 3 s and `shutting-down` 2 s, created and then watched, for `reclaim:N` and `notice:N`.
struct EmulatedFleet {
    flotilla: PathBuf,
    emulator: Emulator,
    runtime: tokio::runtime::Runtime,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    tag: String,
    scope_name: String,
    size: usize,
}

impl EmulatedFleet {
    /// Writes the spec, sets the emulator's timings and runs `create`; prints its time.
    fn create(flotilla: &Path, shape: &str, size: usize) -> EmulatedFleet {
        let fleet = EmulatedFleet {
            flotilla: flotilla.to_owned(),
            emulator: Emulator::require(),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            tag: format!("bench-{shape}-{size}"),
            scope_name: format!("BENCH{}{size}X{}", shape.to_uppercase(), std::process::id()),
            size,
        };
        let work = fleet.work.path();
        let binary = work.join("sleeper.sh");
        // It stays up through the SIGHUP of a hosts change, as a binary that rereads its hosts
        // would (sleep itself would die of it).
        fs_err::write(&binary, "#!/bin/sh\ntrap '' HUP\nexec sleep 100000\n").unwrap();
        Command::new("chmod").arg("755").arg(&binary).status().unwrap();
        fs_err::write(work.join("app.conf"), "setting = 1\n").unwrap();
        fs_err::write(work.join("dashboard.json"), "{}").unwrap();
        fs_err::write(
            work.join("spec.yaml"),
            format!(
                "tag: {}\nprovider: aws\nmonitoring: {{instance_type: m5.large, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: node, count: {size}, region: us-east-1, market: prefer-spot, instance_types: [m5.large, m6i.large, c5.large], storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false, on_hosts_change: {{signal: SIGHUP}}}}\nports: []\n",
                fleet.tag,
                binary.display()
            ),
        )
        .unwrap();
        let scope = fleet.emulator.scope(&fleet.scope_name);
        fleet.runtime.block_on(scope.set_latency(LATENCY)).unwrap();
        fleet
            .runtime
            .block_on(scope.set_timing(StateTiming {
                pending: Duration::from_secs(3),
                shutting_down: Duration::from_secs(2),
            }))
            .unwrap();
        let create = fleet.run(&["create", "--config", "spec.yaml", "--ip", "127.0.0.1"]);
        println!("{size:>4} on the emulator  create → all healthy    {:>7.2} s", secs(create));
        fleet
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.flotilla);
        command
            .args(args)
            .current_dir(self.work.path())
            .env("FLOTILLA_HOME", self.home.path())
            .env("AWS_ACCESS_KEY_ID", &self.scope_name)
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        command
    }

    fn run(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    }

    /// `flotilla watch --interval 1s` with room for every machine at once, and its events;
    /// returns once it has started. `FLOTILLA_BENCH_LOGS=DIR` keeps its log.
    fn watch(&self, shape: &str) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
        let max = self.size.to_string();
        let logs = std::env::var_os("FLOTILLA_BENCH_LOGS").map(PathBuf::from);
        if let Some(dir) = &logs {
            fs_err::create_dir_all(dir).unwrap();
        }
        let mut watch = self
            .command(&[
                "watch",
                "-v",
                "--config",
                "spec.yaml",
                "--interval",
                "1s",
                "--max-replacing",
                &max,
                "--max-per-hour",
                &max,
                "--output",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(match &logs {
                Some(dir) => Stdio::from(
                    fs_err::File::create(dir.join(format!("{shape}-{}-watch.log", self.size)))
                        .unwrap()
                        .into_parts()
                        .0,
                ),
                None => Stdio::null(),
            })
            .spawn()
            .unwrap();
        let (sender, events) = std::sync::mpsc::channel::<Value>();
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let started = events.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(started["what"], "started", "{started}");
        (watch, events)
    }

    /// Every live instance of the fleet: (machine name, instance id, spot).
    fn instances(&self) -> Vec<(String, String, bool)> {
        let instances = self.runtime.block_on(self.emulator.instances()).unwrap();
        instances
            .iter()
            .filter(|i| i.scope == self.scope_name)
            .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
            .filter_map(|i| {
                let name = i.tags.get("flotilla:machine")?.clone();
                Some((name, i.id.clone(), i.lifecycle == "spot"))
            })
            .collect()
    }

    /// `status`'s rows (none when it fails).
    fn status(&self) -> Vec<Value> {
        let status = self.command(&["status", "--tag", &self.tag, "--output", "json"]).output();
        serde_json::from_slice(&status.unwrap().stdout).unwrap_or_default()
    }

    /// The binary machines `status` reports healthy.
    fn healthy(&self) -> usize {
        let rows = self.status();
        rows.iter().filter(|r| r["role"] == "binary" && r["health"] == "healthy").count()
    }

    /// The EC2 calls counted since the last reset, by service and action, printed.
    fn print_calls(&self) {
        let counts = self.runtime.block_on(self.emulator.scope(&self.scope_name).counts());
        for (service, actions) in &counts.unwrap().0 {
            let total: u64 = actions.values().sum();
            let actions: Vec<String> =
                actions.iter().map(|(action, n)| format!("{action} {n}")).collect();
            println!("{:>22}    {service} {total} calls: {}", "", actions.join(", "));
        }
    }

    fn reset_calls(&self) {
        self.runtime.block_on(self.emulator.scope(&self.scope_name).reset_counts()).unwrap();
    }

    /// `destroy`, timed, and the emulator's timings back to normal.
    fn destroy(self) {
        let destroy = self.run(&["destroy", "--tag", &self.tag]);
        println!(
            "{:>4} on the emulator  destroy                 {:>7.2} s",
            self.size,
            secs(destroy)
        );
        let scope = self.emulator.scope(&self.scope_name);
        self.runtime.block_on(scope.clear_latency()).unwrap();
        self.runtime.block_on(scope.clear_timing()).unwrap();
    }
}

/// `reclaim:N` (see the module documentation).
fn reclaim(flotilla: &Path, size: usize) {
    let fleet = EmulatedFleet::create(flotilla, "reclaim", size);
    let (mut watch, events) = fleet.watch("reclaim");

    // 10 % of the spot machines, spread over the fleet, reclaimed at once.
    let spot: Vec<(String, String, bool)> = fleet
        .instances()
        .into_iter()
        .filter(|(name, _, spot)| *spot && name.starts_with("node-"))
        .collect();
    let count = (size / 10).max(1);
    let step = spot.len() / count;
    let chosen: Vec<(String, String, bool)> =
        spot.iter().step_by(step.max(1)).take(count).cloned().collect();
    assert_eq!(chosen.len(), count, "{} spot machines", spot.len());
    let ids: Vec<String> = chosen.iter().map(|(_, id, _)| id.clone()).collect();
    fleet.reset_calls();
    let reclaimed_at = Instant::now();
    fleet.runtime.block_on(fleet.emulator.reclaim_spot(&ids, Some(Duration::ZERO))).unwrap();
    let mut replaced = BTreeSet::new();
    let mut first_replacing = None;
    let mut failed = Vec::new();
    while replaced.len() < count {
        let event = events.recv_timeout(Duration::from_secs(600)).unwrap_or_else(|_| {
            panic!("not all replaced within 10 min: {replaced:?}, failures {failed:?}")
        });
        let machine = event["machine"].as_str().unwrap_or_default().to_owned();
        match event["what"].as_str().unwrap_or_default() {
            "replaced" => {
                replaced.insert(machine);
            }
            "replacement-failed" => failed.push(event.clone()),
            _ if event["outcome"] == "journaled" => {
                first_replacing.get_or_insert_with(|| reclaimed_at.elapsed());
            }
            _ => {}
        }
    }
    let replaced_after = reclaimed_at.elapsed();
    // Then until status says every binary is healthy (the replacements' own rollouts end
    // before `replaced`; this catches any other machine a hosts change disturbed).
    let mut healthy = 0;
    while healthy < size && reclaimed_at.elapsed() < Duration::from_secs(600) {
        healthy = fleet.healthy();
    }
    let healed = reclaimed_at.elapsed();
    watch.kill().unwrap();
    watch.wait().unwrap();
    println!(
        "{size:>4} on the emulator  {count} reclaimed → all healthy {:>7.2} s   (first `replacing` after {:.2} s, all `replaced` after {:.2} s; {} failed attempts; {healthy} of {size} healthy)",
        secs(healed),
        first_replacing.map(secs).unwrap_or_default(),
        secs(replaced_after),
        failed.len(),
    );
    fleet.print_calls();
    fleet.destroy();
}

/// `notice:N` (see the module documentation).
fn notice(flotilla: &Path, size: usize) {
    let fleet = EmulatedFleet::create(flotilla, "notice", size);
    let (mut watch, events) = fleet.watch("notice");
    let (name, old_id, _) = fleet
        .instances()
        .into_iter()
        .find(|(name, _, spot)| *spot && name.starts_with("node-"))
        .expect("a spot machine");
    fleet.reset_calls();
    let noticed_at = Instant::now();
    let interruption = SpotInterruption { action: SpotAction::Terminate, time: None };
    fleet
        .runtime
        .block_on(fleet.emulator.trigger_spot_interruption(&old_id, &interruption))
        .unwrap();
    // Until watch says the replacement is done; meanwhile, when its instance first exists and
    // when `status` first reports the name healthy on another instance.
    let (mut journaled, mut launched, mut healthy, mut replaced) = (None, None, None, None);
    while replaced.is_none() || healthy.is_none() {
        assert!(noticed_at.elapsed() < Duration::from_secs(600), "not replaced within 10 min");
        if launched.is_none()
            && fleet.instances().iter().any(|(n, id, _)| n == &name && id != &old_id)
        {
            launched = Some(noticed_at.elapsed());
        }
        if launched.is_some()
            && healthy.is_none()
            && fleet.status().iter().any(|r| {
                r["name"] == name.as_str() && r["id"] != old_id.as_str() && r["health"] == "healthy"
            })
        {
            healthy = Some(noticed_at.elapsed());
        }
        let Ok(event) = events.recv_timeout(Duration::from_millis(50)) else { continue };
        if event["machine"] != name.as_str() {
            continue;
        }
        match event["what"].as_str().unwrap_or_default() {
            "replaced" => replaced = Some(noticed_at.elapsed()),
            "replacement-failed" => panic!("the replacement failed: {event}"),
            _ if event["outcome"] == "journaled" => journaled = Some(noticed_at.elapsed()),
            _ => {}
        }
    }
    let (replaced, healthy) = (replaced.expect("the loop ends on it"), healthy.expect("too"));
    let launched = launched.unwrap_or(healthy);
    watch.kill().unwrap();
    watch.wait().unwrap();
    println!(
        "{size:>4} on the emulator  notice → replacement healthy {:>7.2} s   (journaled after {:.2} s, its instance launched after {:.2} s, launch → healthy {:.2} s; watch's `replaced`, the old machine drained and terminated, after {:.2} s)",
        secs(healthy),
        journaled.map(secs).unwrap_or_default(),
        secs(launched),
        secs(healthy - launched),
        secs(replaced),
    );
    fleet.print_calls();
    fleet.destroy();
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    fs_err::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
