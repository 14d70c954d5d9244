//! Running the real binary as a small fleet on loopback addresses, for the integration tests.
//!
//! Each node gets its own loopback address and the same port, as on a fleet of machines, and
//! its own directory with its own hosts.yaml, as each machine has its own copy. Tests poll with
//! a deadline instead of sleeping, and dropping the [`Fleet`] kills the nodes and, if the test
//! failed, prints their logs.

#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

/// Long enough for a loaded machine with two cores; the happy path takes about a second.
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// Milliseconds between gossip rounds in the tests' config.
pub const INTERVAL_MS: u64 = 100;

/// One node: its name in hosts.yaml and its loopback address.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub name: &'static str,
    pub ip: &'static str,
}

/// The nodes of one test; dropping it kills whatever still runs and removes the directory.
#[derive(Debug)]
pub struct Fleet {
    dir: PathBuf,
    nodes: Vec<Node>,
    pub port: u16,
    children: Vec<Option<Child>>,
}

impl Fleet {
    /// Prepares `nodes` (none started yet) sharing one config with `greeting`, on a port free
    /// on the first node's address; `label` keeps the directories of concurrent tests apart.
    pub fn new(label: &str, nodes: &[Node], greeting: &str) -> Fleet {
        let dir = std::env::temp_dir().join(format!("fleet-app-{label}-{}", std::process::id()));
        fs_err::create_dir_all(&dir).expect("a temporary directory");
        let port = free_port(nodes[0].ip);
        fs_err::write(
            dir.join("config.conf"),
            format!("port = {port}\ngreeting = \"{greeting}\"\ninterval = {INTERVAL_MS}\n"),
        )
        .expect("writing the config");
        for node in nodes {
            fs_err::create_dir_all(dir.join(node.name)).expect("a node's directory");
        }
        Fleet { dir, nodes: nodes.to_vec(), port, children: nodes.iter().map(|_| None).collect() }
    }

    pub fn name(&self, index: usize) -> &'static str {
        self.nodes[index].name
    }

    pub fn ip(&self, index: usize) -> &'static str {
        self.nodes[index].ip
    }

    pub fn hosts_path(&self, index: usize) -> PathBuf {
        self.dir.join(self.name(index)).join("hosts.yaml")
    }

    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir.join(self.name(index)).join("fleet-app.log")
    }

    pub fn log(&self, index: usize) -> String {
        fs_err::read_to_string(self.log_path(index)).unwrap_or_default()
    }

    /// Replaces node `index`'s hosts.yaml with `text` the way the agent does: written aside,
    /// then renamed over, so a reader sees the old file or the new one, never a part.
    pub fn replace_hosts_file(&self, index: usize, text: &str) {
        let path = self.hosts_path(index);
        let aside = path.with_extension("yaml.new");
        fs_err::write(&aside, text).expect("writing the new hosts.yaml");
        fs_err::rename(&aside, &path).expect("renaming it over the old one");
    }

    /// Node `index`'s hosts.yaml lists the nodes `members`, in that order.
    pub fn write_hosts(&self, index: usize, members: &[usize]) {
        let mut text =
            String::from("monitoring:\n  public: 127.0.0.9\n  private: 127.0.0.9\nhosts:\n");
        for member in members {
            let node = self.nodes[*member];
            text.push_str(&format!("- name: {}\n  region: local\n  ip: {}\n", node.name, node.ip));
        }
        self.replace_hosts_file(index, &text);
    }

    /// Starts node `index` with the environment the agent sets.
    pub fn spawn(&mut self, index: usize) {
        let node = self.nodes[index];
        let log = fs_err::File::create(self.log_path(index)).expect("creating the log");
        let child = Command::new(env!("CARGO_BIN_EXE_fleet-app"))
            .arg(format!("--hosts={}", self.hosts_path(index).display()))
            .arg(format!("--config={}", self.dir.join("config.conf").display()))
            .env("FLOTILLA_NAME", node.name)
            .env("FLOTILLA_IP", node.ip)
            .env("FLOTILLA_PRIVATE_IP", node.ip)
            .env("FLOTILLA_REGION", "local")
            .env("FLOTILLA_TAG", "fleet-app-test")
            .stdin(Stdio::null())
            .stdout(log.file().try_clone().expect("a second handle on the log"))
            .stderr(log.into_file())
            .spawn()
            .expect("starting fleet-app");
        self.children[index] = Some(child);
    }

    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].as_ref().expect("the node runs").id()
    }

    /// Whether node `index` still runs (it has not exited).
    pub fn is_running(&mut self, index: usize) -> bool {
        let child = self.children[index].as_mut().expect("the node was started");
        child.try_wait().expect("checking the child").is_none()
    }

    pub fn signal(&self, index: usize, signal: Signal) {
        let child = self.children[index].as_ref().expect("the node runs");
        kill_process(Pid::from_child(child), signal).expect("sending a signal");
    }

    /// Sends SIGTERM to node `index` and waits for it to exit.
    pub fn terminate(&mut self, index: usize) -> ExitStatus {
        self.signal(index, Signal::TERM);
        let mut child = self.children[index].take().expect("the node runs");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("checking the child") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit after SIGTERM", self.name(index));
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// `GET path` on node `index`.
    pub fn get(&self, index: usize, path: &str) -> std::io::Result<(u16, String)> {
        get(self.ip(index), self.port, path)
    }

    /// Node `index`'s `/peers` document, if it answers.
    pub fn peers(&self, index: usize) -> Option<Value> {
        let (status, body) = self.get(index, "/peers").ok()?;
        assert_eq!(status, 200, "/peers of {}: {body}", self.name(index));
        let peers: Value = serde_json::from_str(&body).expect("/peers is valid JSON");
        assert_eq!(peers["name"], self.name(index));
        Some(peers)
    }

    /// Whether node `index`'s `/metrics` has exactly the line `line`.
    pub fn metrics_have(&self, index: usize, line: &str) -> bool {
        self.get(index, "/metrics").is_ok_and(|(_, body)| body.lines().any(|got| got == line))
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
            for index in 0..self.nodes.len() {
                #[allow(clippy::print_stderr, reason = "the nodes' logs explain a failure")]
                {
                    eprintln!("--- log of {} ---\n{}", self.name(index), self.log(index));
                }
            }
        }
        let _ = fs_err::remove_dir_all(&self.dir);
    }
}

/// A port that is free on `ip` right now (the other nodes are distinct addresses).
pub fn free_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("binding a loopback address");
    listener.local_addr().expect("a bound address").port()
}

/// `GET path` over a fresh connection: the status code and the body.
pub fn get(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
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

/// Polls `condition` until it holds or the deadline passes.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL_EVERY);
    }
}
