//! Benchmark: how fast a machine reacts to a spot interruption notice, flotilla's `fleetd`
//! side by side with ec2fleetd itself, on the same IMDS; and what an idle agent with a
//! lifecycle config costs in memory.
//!
//! - `notice:N`: N rounds per daemon. Each round starts the daemon (`flotilla fleetd`, then
//!   ec2fleetd 0.0.0 from PyPI) with a config whose only hook is `touch FILE` on `interrupted`,
//!   waits until it polls `spot/instance-action`, waits a random part of a second (so the notice
//!   does not land in step with a poll loop), serves the notice, and measures the time from
//!   serving it to the file's modification time. Prints p50, p90, p99 and the max of each, and
//!   their ratio.
//! - `rss`: a local fleet of one machine whose `lifecycle:` has hooks on every event, idle and
//!   healthy; the agent's resident memory (VmRSS) after 5 s.
//! - `init:N` (needs the AWS emulator's environment, as the CLI's `aws_*` tests do): N rounds
//!   per daemon of a 3-domain init at 100 ms per API call. Each round launches an emulated
//!   instance (without latency), points this benchmark's IMDS at its facts, sets the scope's
//!   latency to 100 ms, and starts the daemon with one config: three domains, each creating a
//!   `c` volume (with a volume hook) and UPSERTing an A record, and hooks on `starting` and
//!   `started`. The figure is the time from the `starting` hook to the `started` hook (the
//!   domains' init, as both daemons order it), and from the daemon's start to `started`. Then
//!   latency goes back to none, the daemon is stopped and the instance and volumes removed. The
//!   devices are `/dev/null`, `/dev/zero` and `/dev/full`, which exist here, so neither daemon
//!   waits for a kernel device (ec2fleetd looks only at this machine's `/sys/block` and the
//!   configured path).
//!
//! The IMDS is this benchmark's own (IMDSv2 on 127.0.0.1, one request per connection),
//! answering the metadata both daemons ask for. ec2fleetd needs Python 3.12 for
//! `typing.override`; on an older Python the benchmark installs it with
//! `--ignore-requires-python` into `target/bench-ec2fleetd` and gives it `typing_extensions`'
//! `override`, which is all it lacks (nothing else changes). Run it with:
//!
//! ```text
//! cargo build --release -p flotilla-cli -p fleet-app && cargo bench -p flotilla-cli --bench lifecycle -- notice:100 rss
//! (eval "$(crates/emulator/start-for-tests.sh --parent-pid $$)"; cargo bench -p flotilla-cli --bench lifecycle -- init:5)
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)] // A benchmark prints its figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let modes: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let modes =
        if modes.is_empty() { vec!["notice:100".to_owned(), "rss".to_owned()] } else { modes };
    let flotilla = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    println!("machine: {} cores, {}", cores(), cpu_model());
    for mode in modes {
        match mode.split_once(':') {
            Some(("notice", rounds)) => notice(&flotilla, rounds.parse().expect("notice:N")),
            Some(("init", rounds)) => init::run(&flotilla, rounds.parse().expect("init:N")),
            None if mode == "rss" => rss(&flotilla),
            _ => panic!("unknown mode {mode}: use notice:N, init:N or rss"),
        }
    }
}

/// The machine the IMDS describes.
#[derive(Clone, Debug)]
struct Facts {
    instance_id: String,
    zone: String,
    ip: String,
}

impl Default for Facts {
    fn default() -> Facts {
        Facts {
            instance_id: "i-0bench0000000000".to_owned(),
            zone: "us-east-1a".to_owned(),
            ip: "127.0.0.1".to_owned(),
        }
    }
}

/// The IMDS both daemons poll: metadata, a token, and the spot notice once armed.
struct Imds {
    address: SocketAddr,
    facts: Arc<std::sync::Mutex<Facts>>,
    /// Unix nanoseconds of the notice's serving; 0 while there is none.
    armed_at: Arc<AtomicU64>,
    spot_polls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Imds {
    fn start() -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let armed_at = Arc::new(AtomicU64::new(0));
        let spot_polls = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let facts = Arc::new(std::sync::Mutex::new(Facts::default()));
        let (armed, polls, stopping) = (armed_at.clone(), spot_polls.clone(), stop.clone());
        let shared_facts = facts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (armed, polls) = (armed.clone(), polls.clone());
                let facts = shared_facts.lock().unwrap().clone();
                std::thread::spawn(move || answer(stream, &armed, &polls, &facts));
            }
        });
        Imds { address, facts, armed_at, spot_polls, stop }
    }

    /// Describes `facts` from now on.
    fn describe(&self, facts: Facts) {
        *self.facts.lock().unwrap() = facts;
    }

    fn reset(&self) {
        self.armed_at.store(0, Ordering::SeqCst);
        self.spot_polls.store(0, Ordering::SeqCst);
    }

    /// Serves the notice from now on; returns when.
    fn arm(&self) -> SystemTime {
        let now = SystemTime::now();
        self.armed_at.store(unix_nanos(now), Ordering::SeqCst);
        now
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn answer(mut stream: TcpStream, armed: &AtomicU64, polls: &AtomicU64, facts: &Facts) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().trim_end_matches('/').to_owned();
    let (status, body) = if method == "PUT" && path == "/latest/api/token" {
        (200, "bench-token".to_owned())
    } else {
        match path.strip_prefix("/latest/meta-data/").unwrap_or("") {
            "spot/instance-action" => {
                polls.fetch_add(1, Ordering::SeqCst);
                let at = armed.load(Ordering::SeqCst);
                if at == 0 {
                    (404, String::new())
                } else {
                    let time = humantime::format_rfc3339_seconds(
                        UNIX_EPOCH + Duration::from_nanos(at) + Duration::from_secs(120),
                    );
                    (200, format!("{{\"action\": \"terminate\", \"time\": \"{time}\"}}"))
                }
            }
            "events/maintenance/scheduled" => (200, "[]".to_owned()),
            "instance-id" => (200, facts.instance_id.clone()),
            "instance-type" => (200, "m7i.large".to_owned()),
            "ami-launch-index" => (200, "0".to_owned()),
            "placement/region" => (200, "us-east-1".to_owned()),
            "placement/availability-zone" => (200, facts.zone.clone()),
            "system" => (200, "nitro".to_owned()),
            "local-ipv4" | "public-ipv4" => (200, facts.ip.clone()),
            "hostname" | "local-hostname" => (200, "ip-127-0-0-1.ec2.internal".to_owned()),
            // ec2fleetd walks the interfaces for `{public_ipv4_list}` and fails without them.
            "network/interfaces/macs" => (200, "02:00:00:00:00:01/".to_owned()),
            "network/interfaces/macs/02:00:00:00:00:01" => {
                (200, "local-ipv4s\npublic-ipv4s".to_owned())
            }
            "network/interfaces/macs/02:00:00:00:00:01/local-ipv4s"
            | "network/interfaces/macs/02:00:00:00:00:01/public-ipv4s" => (200, facts.ip.clone()),
            _ => (404, String::new()),
        }
    };
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// How to start a daemon: its config file, its work directory, the IMDS.
type DaemonCommand = Box<dyn Fn(&Path, &Path, SocketAddr) -> Command>;

/// A daemon under test.
struct Daemon {
    name: &'static str,
    command: DaemonCommand,
}

fn notice(flotilla: &Path, rounds: usize) {
    let work = tempfile::tempdir().unwrap();
    let imds = Imds::start();
    let mut daemons = vec![Daemon {
        name: "flotilla fleetd",
        command: Box::new({
            let flotilla = flotilla.to_path_buf();
            move |config, dir, imds| {
                let mut command = Command::new(&flotilla);
                command
                    .arg("fleetd")
                    .arg(format!("--imds={imds}"))
                    .arg(format!("--userdata={}", config.display()))
                    .current_dir(dir);
                command
            }
        }),
    }];
    match ec2fleetd_python() {
        Ok(python) => daemons.push(Daemon {
            name: "ec2fleetd 0.0.0",
            command: Box::new(move |config, dir, imds| {
                ec2fleetd_command(&python, config, dir, imds)
            }),
        }),
        Err(why) => println!("ec2fleetd: not run ({why})"),
    }
    let mut results = Vec::new();
    for (which, daemon) in daemons.iter().enumerate() {
        let mut latencies = Vec::new();
        for round in 0..rounds {
            let marker = work.path().join(format!("interrupted-{which}-{round}"));
            let config = work.path().join("fleetd.json5");
            fs_err::write(
                &config,
                format!(
                    "{{domains: {{bench: {{exec: [{{on: ['interrupted'], lines: [{{argv: ['touch', '{}']}}]}}]}}}}}}",
                    marker.display()
                ),
            )
            .unwrap();
            imds.reset();
            let mut child = (daemon.command)(&config, work.path(), imds.address)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{} does not start: {e}", daemon.name));
            let polling =
                wait(Duration::from_secs(30), || imds.spot_polls.load(Ordering::SeqCst) >= 2);
            if !polling {
                kill(&mut child);
                panic!("{} never polled spot/instance-action", daemon.name);
            }
            // A random phase against the daemon's poll loop.
            std::thread::sleep(Duration::from_millis(u64::from(jitter_ms(round))));
            let served = imds.arm();
            let touched = wait(Duration::from_secs(10), || marker.exists());
            assert!(touched, "{}: no interrupted hook within 10 s", daemon.name);
            let modified = fs_err::metadata(&marker).unwrap().modified().unwrap();
            // The file system's clock is coarser than `SystemTime::now`: a hook within its tick
            // may look a few milliseconds early, and counts as 0.
            let early = served.duration_since(modified).unwrap_or_default();
            assert!(
                early < Duration::from_millis(20),
                "{}: the hook ran {early:?} before the notice was served",
                daemon.name
            );
            latencies.push(modified.duration_since(served).unwrap_or_default());
            if !wait(Duration::from_secs(10), || matches!(child.try_wait(), Ok(Some(_)))) {
                kill(&mut child);
            }
        }
        latencies.sort();
        let figures = Figures::of(&latencies);
        println!(
            "notice -> first interrupted hook, {} ({rounds} notices): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            daemon.name, figures.p50, figures.p90, figures.p99, figures.max
        );
        results.push(figures);
    }
    if let [ours, theirs] = results.as_slice() {
        println!(
            "ratio flotilla/ec2fleetd: p50 {:.3}, p99 {:.3}",
            ours.p50 as f64 / theirs.p50.max(1) as f64,
            ours.p99 as f64 / theirs.p99.max(1) as f64
        );
    }
}

/// ec2fleetd 0.0.0 under `python`, with `typing.override` given on a Python before 3.12.
fn ec2fleetd_command(python: &Path, config: &Path, dir: &Path, imds: SocketAddr) -> Command {
    let mut command = Command::new(python);
    command
        .arg("-c")
        .arg(
            "import sys, typing\n\
             if not hasattr(typing, 'override'):\n\
             \x20   import typing_extensions; typing.override = typing_extensions.override\n\
             import runpy; sys.argv[0] = 'ec2fleetd'\n\
             runpy.run_module('ec2fleetd', run_name='__main__', alter_sys=True)",
        )
        .arg(format!("--imds={imds}"))
        .arg(format!("--userdata={}", config.display()))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .current_dir(dir);
    command
}

/// A jitter of 0 to 999 ms, spread evenly over the rounds (a golden-ratio sequence).
fn jitter_ms(round: usize) -> u32 {
    ((round as f64 * 0.618_033_988_749_895).fract() * 1000.0) as u32
}

struct Figures {
    p50: u128,
    p90: u128,
    p99: u128,
    max: u128,
}

impl Figures {
    fn of(sorted: &[Duration]) -> Figures {
        let at = |q: f64| {
            let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index].as_millis()
        };
        Figures {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: sorted[sorted.len() - 1].as_millis(),
        }
    }
}

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A Python with ec2fleetd 0.0.0 installed, in `target/bench-ec2fleetd` (made on first use).
fn ec2fleetd_python() -> Result<PathBuf, String> {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-ec2fleetd");
    let python = target.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let status = |command: &mut Command| {
        command.status().map_err(|e| e.to_string()).and_then(|s| {
            if s.success() { Ok(()) } else { Err(format!("{command:?} failed: {s}")) }
        })
    };
    status(Command::new("python3").args(["-m", "venv"]).arg(&target))?;
    status(Command::new(target.join("bin/pip")).args([
        "install",
        "--quiet",
        "--ignore-requires-python",
        "ec2fleetd==0.0.0",
        "typing_extensions",
    ]))?;
    Ok(python)
}

/// A local fleet of one machine with hooks on every event; the agent's VmRSS when idle.
fn rss(flotilla: &Path) {
    let fleet_app = flotilla.parent().unwrap().join("fleet-app");
    assert!(fleet_app.exists(), "run `cargo build --release -p fleet-app` first");
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let events = "[starting, started, binary-exited, failed, rebalance, scheduled-event, interrupted, stopping]";
    let spec = format!(
        "tag: bench-rss\nprovider: local\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: node\n  count: 1\n  region: local\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: app.conf\n  profiling: false\n  keepalive: 1h\n  lifecycle:\n    domains:\n      app:\n        exec:\n        - on: {events}\n          lines:\n          - argv: [touch, '{{daemon_state}}-{{name}}']\n  health:\n    http:\n      port: 9090\n      path: /health\nports: []\n",
        fleet_app.display()
    );
    fs_err::write(work.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(work.path().join("app.conf"), "port = 9090\ngreeting = \"hello\"\n").unwrap();
    fs_err::write(work.path().join("fleet.yaml"), spec).unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(flotilla)
            .args(args)
            .current_dir(work.path())
            .env("FLOTILLA_HOME", home.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    run(&["create", "--config", "fleet.yaml"]);
    std::thread::sleep(Duration::from_secs(5));
    let bootstrap = home.path().join("deployments/bench-rss/local/instances/node-0/bootstrap.json");
    let pid = agent_pid(&bootstrap).expect("node-0's agent runs");
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?");
    println!(
        "idle agent with a lifecycle config (hooks on 8 events, keepalive): {}",
        rss.trim_start_matches("VmRSS:").trim()
    );
    run(&["destroy", "--tag", "bench-rss"]);
}

fn agent_pid(bootstrap: &Path) -> Option<u32> {
    let needle = bootstrap.display().to_string();
    fs_err::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let cmdline = fs_err::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_bytes()).then_some(pid)
    })
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

/// `init:N`: a 3-domain init at 100 ms per API call, against the emulator.
mod init {
    use super::*;

    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_ec2::types::{Filter, InstanceType, Placement};
    use flotilla_emulator::control::{BootState, Emulator, Scope, StateTiming, VolumeTiming};

    const REGION: &str = "us-east-1";
    const ZONE: &str = "us-east-1a";
    const LATENCY: Duration = Duration::from_millis(100);
    /// Devices that exist on this machine: neither daemon waits for a kernel device.
    const DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/full"];

    struct Stack {
        scope: Scope,
        emulator: Emulator,
        sdk: aws_types::SdkConfig,
        runtime: tokio::runtime::Runtime,
    }

    impl Stack {
        fn ec2(&self) -> aws_sdk_ec2::Client {
            aws_sdk_ec2::Client::new(&self.sdk)
        }

        /// An instance in the zone, booted: its facts.
        fn launch(&self) -> Facts {
            self.runtime.block_on(async {
                let answer = self
                    .ec2()
                    .run_instances()
                    .image_id("ami-0flotillatest")
                    .instance_type(InstanceType::T3Micro)
                    .min_count(1)
                    .max_count(1)
                    .placement(Placement::builder().availability_zone(ZONE).build())
                    .send()
                    .await
                    .expect("RunInstances");
                let id = answer.instances()[0].instance_id().unwrap().to_owned();
                let booted = self
                    .emulator
                    .wait_booted(&id, Duration::from_secs(30), |b| b.state != BootState::Failed)
                    .await
                    .expect("the instance boots");
                Facts { instance_id: id, zone: ZONE.to_owned(), ip: booted.public_ip.to_string() }
            })
        }

        /// Terminates the instance and deletes the volumes of the round's domains.
        fn clean(&self, instance: &str, domains: &[String]) {
            self.runtime.block_on(async {
                self.ec2().terminate_instances().instance_ids(instance).send().await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let answer = self
                        .ec2()
                        .describe_volumes()
                        .filters(
                            Filter::builder()
                                .name("tag:flotilla:fleetd-domain")
                                .set_values(Some(domains.to_vec()))
                                .build(),
                        )
                        .send()
                        .await
                        .unwrap();
                    let answer2 = self
                        .ec2()
                        .describe_volumes()
                        .filters(
                            Filter::builder()
                                .name("tag:user:ec2fd.domain")
                                .set_values(Some(domains.to_vec()))
                                .build(),
                        )
                        .send()
                        .await
                        .unwrap();
                    let volumes: Vec<_> =
                        answer.volumes().iter().chain(answer2.volumes()).cloned().collect();
                    if volumes.is_empty() || Instant::now() > deadline {
                        break;
                    }
                    for volume in &volumes {
                        let _ = self
                            .ec2()
                            .delete_volume()
                            .volume_id(volume.volume_id().unwrap())
                            .send()
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    }

    fn config(zone: &str, zone_name: &str, domains: &[String], markers: &Path) -> String {
        let touch = |name: &str| format!("{{argv: ['touch', '{}']}}", markers.join(name).display());
        let mut text = String::from("{domains: {\n");
        for (index, domain) in domains.iter().enumerate() {
            let hooks = if index == 0 {
                format!(
                    "exec: [{{on: ['starting'], lines: [{}]}}, {{on: ['started'], lines: [{}]}}],",
                    touch("starting"),
                    touch("started")
                )
            } else {
                String::new()
            };
            text.push_str(&format!(
                "  {domain}: {{\n    'attach-volume': [{{device: '{device}', source: 'c', 'pool-name': 'bench', create: {{Size: 1, VolumeType: 'gp3'}}, exec: [{{lines: [{{argv: ['true']}}]}}]}}],\n    'update-route53': [{{hostedzone: '{zone}', name: '{domain}.{zone_name}.', ttl: 60}}],\n    {hooks}\n  }},\n",
                device = DEVICES[index],
            ));
        }
        text.push_str("}}\n");
        text
    }

    pub(super) fn run(flotilla: &Path, rounds: usize) {
        for name in ["AWS_ENDPOINT_URL", "FLOTILLA_EMULATOR_CONTROL"] {
            assert!(
                std::env::var_os(name).is_some(),
                "init needs the emulator: (eval \"$(crates/emulator/start-for-tests.sh --parent-pid $$)\"; cargo bench ...)"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let emulator = Emulator::require();
        let scope = emulator.fresh_scope("benchinit");
        let sdk = runtime.block_on(async {
            scope
                .set_timing(StateTiming { pending: Duration::ZERO, shutting_down: Duration::ZERO })
                .await
                .unwrap();
            scope
                .set_volume_timing(VolumeTiming {
                    attach: Duration::ZERO,
                    detach: Duration::ZERO,
                    release_after_terminate: Duration::ZERO,
                })
                .await
                .unwrap();
            aws_config::defaults(BehaviorVersion::latest())
                .endpoint_url(emulator.endpoint())
                .region(Region::new(REGION))
                .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                    scope.access_key_id(),
                    "emulated",
                    None,
                    None,
                    "bench",
                ))
                .load()
                .await
        });
        let stack = Stack { scope, emulator, sdk, runtime };
        let tag = stack.scope.access_key_id().to_ascii_lowercase();
        let zone_name = format!("{tag}.example.com");
        let route53 = aws_sdk_route53::Client::new(&stack.sdk);
        let zone = stack.runtime.block_on(async {
            let zone = route53
                .create_hosted_zone()
                .name(&zone_name)
                .caller_reference(&tag)
                .send()
                .await
                .unwrap();
            zone.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_owned()
        });
        let imds = Imds::start();
        let work = tempfile::tempdir().unwrap();
        let endpoint = stack.emulator.endpoint().to_owned();
        let key = stack.scope.access_key_id().to_owned();
        let mut daemons: Vec<Daemon> = vec![Daemon {
            name: "flotilla fleetd",
            command: Box::new({
                let flotilla = flotilla.to_path_buf();
                move |config, dir, imds| {
                    let mut command = Command::new(&flotilla);
                    command
                        .arg("fleetd")
                        .arg(format!("--imds={imds}"))
                        .arg(format!("--userdata={}", config.display()))
                        .arg(format!("--state-dir={}", dir.join("state").display()))
                        .arg("--device-root=/")
                        .current_dir(dir);
                    command
                }
            }),
        }];
        match ec2fleetd_python() {
            Ok(python) => daemons.push(Daemon {
                name: "ec2fleetd 0.0.0",
                // Polling on, as in production: without it ec2fleetd runs `started`'s hooks a
                // second time as it exits (refs part A), which would move the marker.
                command: Box::new(move |config, dir, imds| {
                    ec2fleetd_command(&python, config, dir, imds)
                }),
            }),
            Err(why) => println!("ec2fleetd: not run ({why})"),
        }
        let mut results = Vec::new();
        for (which, daemon) in daemons.iter().enumerate() {
            let mut inits = Vec::new();
            let mut totals = Vec::new();
            for round in 0..rounds {
                let facts = stack.launch();
                imds.describe(facts.clone());
                let dir = work.path().join(format!("{which}-{round}"));
                fs_err::create_dir_all(&dir).unwrap();
                let domains: Vec<String> = (0..3)
                    .map(|d| format!("b{which}r{round}d{d}{}", &tag[tag.len() - 6..]))
                    .collect();
                let config_path = dir.join("fleetd.json5");
                fs_err::write(&config_path, config(&zone, &zone_name, &domains, &dir)).unwrap();
                stack.runtime.block_on(stack.scope.set_latency(LATENCY)).unwrap();
                let spawned = SystemTime::now();
                let mut child = (daemon.command)(&config_path, &dir, imds.address)
                    .env("AWS_ENDPOINT_URL", &endpoint)
                    .env("AWS_ACCESS_KEY_ID", &key)
                    .env("AWS_SECRET_ACCESS_KEY", "emulated")
                    .env_remove("AWS_PROFILE")
                    .env_remove("AWS_REGION")
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(
                        fs_err::File::create(dir.join("stderr")).unwrap().into_parts().0,
                    ))
                    .spawn()
                    .unwrap_or_else(|e| panic!("{} does not start: {e}", daemon.name));
                let started = dir.join("started");
                let done = wait(Duration::from_secs(120), || {
                    started.exists() || matches!(child.try_wait(), Ok(Some(_)))
                });
                stack.runtime.block_on(stack.scope.clear_latency()).unwrap();
                assert!(
                    done && started.exists(),
                    "{}: no started hook; stderr:\n{}",
                    daemon.name,
                    fs_err::read_to_string(dir.join("stderr")).unwrap_or_default()
                );
                let modified =
                    |name: &str| fs_err::metadata(dir.join(name)).unwrap().modified().unwrap();
                inits.push(
                    modified("started").duration_since(modified("starting")).unwrap_or_default(),
                );
                totals.push(modified("started").duration_since(spawned).unwrap_or_default());
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
                if !wait(Duration::from_secs(60), || matches!(child.try_wait(), Ok(Some(_)))) {
                    kill(&mut child);
                }
                stack.clean(&facts.instance_id, &domains);
            }
            inits.sort();
            totals.sort();
            let (init, total) = (Figures::of(&inits), Figures::of(&totals));
            println!(
                "3-domain init at 100 ms per call, {} ({rounds} rounds): starting -> started p50 {} ms, max {} ms; process start -> started p50 {} ms, max {} ms",
                daemon.name, init.p50, init.max, total.p50, total.max
            );
            results.push((init, total));
        }
        if let [(ours, ours_total), (theirs, theirs_total)] = results.as_slice() {
            println!(
                "ratio flotilla/ec2fleetd (p50): init {:.3}, from process start {:.3}",
                ours.p50 as f64 / theirs.p50.max(1) as f64,
                ours_total.p50 as f64 / theirs_total.p50.max(1) as f64
            );
        }
    }
}
