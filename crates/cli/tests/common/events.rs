//! `flotilla watch --output json` as a test reads it: each line a JSON event, read on a thread
//! so that a test can wait for one with a deadline, and kill the watch whenever it likes.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, ChildStdout};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `watch` and its events.
pub struct Watch {
    pub child: Child,
    pub events: Receiver<Value>,
    /// Every event received so far, in order.
    pub seen: Vec<Value>,
    /// Where its stderr goes, shown when a wait fails.
    pub log: Option<PathBuf>,
}

impl Watch {
    /// Takes `child`'s piped stdout and reads it line by line.
    pub fn new(mut child: Child, log: Option<PathBuf>) -> Watch {
        let stdout = child.stdout.take().expect("watch's stdout is piped");
        Watch { child, events: reader(stdout), seen: Vec::new(), log }
    }

    /// Waits up to `within` for the first event `matches` accepts, and returns it; a test
    /// failure naming `what` and listing the events seen otherwise.
    pub fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(event) = self.events.recv_timeout(left) else {
                let log = self.log.as_ref().map(fs_err::read_to_string);
                panic!("no {what} within {within:?}; events: {:#?}\nits log: {log:?}", self.seen);
            };
            self.seen.push(event.clone());
            if matches(&event) {
                return event;
            }
        }
    }

    /// The events about `machine` seen so far whose `field` is `value`.
    pub fn count(&self, machine: &str, field: &str, value: &str) -> usize {
        self.seen.iter().filter(|e| e["machine"] == machine && e[field] == value).count()
    }

    /// SIGKILL, as a crash or `kill -9` would end it, and reaps it; returns every event it
    /// printed, those not waited for included.
    pub fn kill(mut self) -> Vec<Value> {
        self.child.kill().expect("watch is killed");
        self.child.wait().expect("watch is reaped");
        // The reader sends what was left in the pipe, then hangs up at its end.
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(event);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader(stdout: ChildStdout) -> Receiver<Value> {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch prints JSON lines ({e}): {line}"));
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    receiver
}
