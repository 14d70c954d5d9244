//! Runs the real binary as three nodes on 127.201.0.1-3 and checks that they find each other.
//!
//! Each node gets its own loopback address and the same port, as on a fleet of machines. The
//! test polls with a deadline instead of sleeping, and a guard kills the nodes and prints their
//! logs if anything fails.

// Helpers outside `#[test]` functions are test code too: clippy's in-test exemptions miss them.
#![allow(clippy::unwrap_used, reason = "a failed step should panic with its error")]
#![allow(clippy::print_stderr, reason = "the nodes' logs are shown when the test fails")]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

const NAMES: [&str; 3] = ["node-0", "node-1", "node-2"];
const IPS: [&str; 3] = ["127.201.0.1", "127.201.0.2", "127.201.0.3"];
const GREETING: &str = "hello from the test";
/// Long enough for a loaded machine with two cores; the happy path takes about a second.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The running nodes; dropping it kills whatever still runs and removes the directory.
struct Fleet {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Fleet {
    fn start(port: u16) -> Fleet {
        let dir = std::env::temp_dir().join(format!("fleet-app-test-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap();
        let mut hosts =
            String::from("monitoring:\n  public: 127.201.0.9\n  private: 127.201.0.9\nhosts:\n");
        for (name, ip) in NAMES.iter().zip(IPS) {
            hosts.push_str(&format!("- name: {name}\n  region: local\n  ip: {ip}\n"));
        }
        fs_err::write(dir.join("hosts.yaml"), hosts).unwrap();
        fs_err::write(
            dir.join("config.conf"),
            format!("port = {port}\ngreeting = \"{GREETING}\"\ninterval = 100\n"),
        )
        .unwrap();
        let mut fleet = Fleet { dir, children: Vec::new() };
        for (name, ip) in NAMES.iter().zip(IPS) {
            let log = fs_err::File::create(fleet.log_path(name)).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_fleet-app"))
                .arg(format!("--hosts={}", fleet.dir.join("hosts.yaml").display()))
                .arg(format!("--config={}", fleet.dir.join("config.conf").display()))
                .env("FLOTILLA_NAME", name)
                .env("FLOTILLA_IP", ip)
                .env("FLOTILLA_PRIVATE_IP", ip)
                .env("FLOTILLA_REGION", "local")
                .env("FLOTILLA_TAG", "fleet-app-test")
                .stdin(Stdio::null())
                .stdout(log.file().try_clone().unwrap())
                .stderr(log.into_file())
                .spawn()
                .unwrap();
            fleet.children.push(Some(child));
        }
        fleet
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Sends SIGTERM to node `index` and waits for it to exit.
    fn terminate(&mut self, index: usize) -> ExitStatus {
        let mut child = self.children[index].take().unwrap();
        kill_process(Pid::from_child(&child), Signal::TERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit after SIGTERM", NAMES[index]);
            std::thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in NAMES {
                let log = fs_err::read_to_string(self.log_path(name)).unwrap_or_default();
                eprintln!("--- log of {name} ---\n{log}");
            }
        }
        let _ = fs_err::remove_dir_all(&self.dir);
    }
}

/// A port that is free on the first address right now (the others are distinct addresses).
fn free_port() -> u16 {
    let listener = TcpListener::bind((IPS[0], 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET path` over a fresh connection: the status code and the body.
fn get(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let address = SocketAddr::new(ip.parse::<IpAddr>().expect("a valid IP"), port);
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Each peer's counter in node `index`'s /peers, if that node sees both others.
fn counters_seen_by(index: usize, port: u16) -> Option<Vec<(String, u64)>> {
    let (status, body) = get(IPS[index], port, "/peers").ok()?;
    assert_eq!(status, 200, "/peers of {}: {body}", NAMES[index]);
    let peers: Value = serde_json::from_str(&body).expect("/peers is valid JSON");
    assert_eq!(peers["name"], NAMES[index]);
    assert_eq!(peers["greeting"], GREETING);
    let list = peers["peers"].as_array().expect("peers is a list");
    let names: Vec<&str> = list.iter().filter_map(|peer| peer["name"].as_str()).collect();
    let expected: Vec<&str> = NAMES.iter().copied().filter(|name| *name != NAMES[index]).collect();
    assert_eq!(names, expected, "{} lists its peers", NAMES[index]);
    let mut counters = Vec::new();
    for peer in list {
        let peer_index = IPS.iter().position(|ip| peer["ip"] == *ip).expect("a known ip");
        assert_eq!(peer["name"], NAMES[peer_index], "the ip goes with the name");
        peer["last_seen_ms_ago"].as_u64()?;
        let counter = peer["counter"].as_u64().expect("counter is a number");
        counters.push((peer["name"].as_str()?.to_owned(), counter));
    }
    Some(counters)
}

fn metrics_say_two_peers_seen(index: usize, port: u16) -> bool {
    get(IPS[index], port, "/metrics")
        .is_ok_and(|(_, body)| body.lines().any(|line| line == "fleet_app_peers_seen 2"))
}

/// Polls `condition` until it holds or the deadline passes.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL_EVERY);
    }
}

fn all_nodes() -> std::ops::Range<usize> {
    0..NAMES.len()
}

#[test]
fn three_nodes_gossip_and_stop_cleanly() {
    let port = free_port();
    let mut fleet = Fleet::start(port);

    // Every node sees both others, with counters it has heard.
    let mut first_counters = vec![Vec::new(); NAMES.len()];
    wait_for("every node to see both peers in /peers", || {
        all_nodes().all(|index| match counters_seen_by(index, port) {
            Some(counters) => {
                first_counters[index] = counters;
                true
            }
            None => false,
        })
    });
    // ... and the counters keep rising.
    wait_for("every counter to rise", || {
        all_nodes().all(|index| {
            counters_seen_by(index, port).is_some_and(|counters| {
                counters
                    .iter()
                    .zip(&first_counters[index])
                    .all(|((_, now), (_, before))| now > before)
            })
        })
    });
    wait_for("fleet_app_peers_seen 2 on every node", || {
        all_nodes().all(|index| metrics_say_two_peers_seen(index, port))
    });

    for index in all_nodes() {
        let (status, body) = get(IPS[index], port, "/health").unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.trim_end(), format!("ok {} greeting={GREETING}", NAMES[index]));
    }
    let (status, _) = get(IPS[0], port, "/nope").unwrap();
    assert_eq!(status, 404);

    for index in all_nodes() {
        let status = fleet.terminate(index);
        assert_eq!(status.code(), Some(0), "{} exits 0 after SIGTERM", NAMES[index]);
    }
    let log = fs_err::read_to_string(fleet.log_path(NAMES[0])).unwrap();
    assert!(
        log.contains(&format!("node-0 listening on {}:{port}", IPS[0])),
        "the start-up line names the address:\n{log}"
    );
    assert!(log.contains("node-0 got SIGTERM"), "the exit is logged:\n{log}");
}

#[test]
fn bad_config_exits_2_naming_the_line() {
    let dir = std::env::temp_dir().join(format!("fleet-app-test-bad-{}", std::process::id()));
    fs_err::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts.yaml");
    let config = dir.join("config.conf");
    fs_err::write(&hosts, "monitoring: {public: 127.0.0.1, private: 127.0.0.1}\nhosts: []\n")
        .unwrap();
    fs_err::write(&config, "greeting = hi\ncolour = blue\n").unwrap();
    let output = run_with(&hosts, &config);
    let _ = fs_err::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:2: unknown key \"colour\"", config.display())),
        "stderr: {stderr}"
    );
}

fn run_with(hosts: &Path, config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-app"))
        .arg(format!("--hosts={}", hosts.display()))
        .arg(format!("--config={}", config.display()))
        .env("FLOTILLA_NAME", "node-0")
        .output()
        .unwrap()
}
