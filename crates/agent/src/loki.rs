//! Shipping the binary's log to Loki, so that promtail is not needed on the machine.
//!
//! Every line the binary's log takes (`binary_log`: the binary's output and the agent's
//! lifecycle events) is also handed to a [`LokiShipper`], which stamps it with the wall clock
//! in nanoseconds (strictly increasing, so a stream's entries are in order even when the clock
//! steps back) and the version running at that moment, and keeps it in a queue. One task
//! pushes the queue to Loki's push API (`POST <url>/loki/api/v1/push`, JSON, one stream per
//! version with the labels `deployment`, `name`, `region`, `instance_type`, `market`,
//! `version`):
//!
//! - **Batches.** A push carries at most [`LokiSettings::batch_bytes`] of lines; it is sent once
//!   that much is queued, or once the oldest queued line waited [`LokiSettings::linger`].
//! - **Retries.** A push that fails (no connection, no answer within [`REQUEST_TIMEOUT`], 429,
//!   5xx) is put back at the front of the queue and tried again after `retry_initial`,
//!   doubling to at most `retry_max`, times a random factor in 0.8..=1.2 (250 ms to 10 s by
//!   default; `backoff::bounded_retry_delay` with no bound). There is no deadline: the memory
//!   bound below is what limits a receiver that stays down. A push Loki refuses with another
//!   4xx (a line too old, a body it cannot read) would be refused again: its lines are dropped
//!   and counted, and the shipper goes on.
//! - **Bounded memory.** The queue, the push in flight included, holds at most
//!   [`LokiSettings::budget_bytes`] (each line counts its length plus [`ENTRY_OVERHEAD`]). A
//!   line that would pass the budget pushes out the oldest queued lines, which are counted as
//!   dropped (`flotilla_loki_lines_dropped_total`); once a push succeeds again, the shipper
//!   queues one line saying how many were dropped.
//!
//! The accounting (queued lines and bytes, shipped, dropped) is the shipper's own
//! ([`LokiShipper::stats`]) and is what the metrics report; the process's RSS is not consulted.
//! On stop, what is queued gets one last push of at most [`FINAL_PUSH_TIMEOUT`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_spec::bootstrap::LokiTarget;
use flotilla_spec::identity::IdentityBundle;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::backoff;
use crate::binary_log::EVENT_PREFIX;
use crate::imds::ImdsClient;

/// The path of Loki's push API.
pub const PUSH_PATH: &str = "/loki/api/v1/push";
/// What a queued line costs beyond its text: its entry (48 bytes: stamp, version, text
/// pointer) and its allocation's bookkeeping. The queue's spare capacity is not counted; it is
/// given back once the queue empties.
pub const ENTRY_OVERHEAD: usize = 64;
/// The capacity the queue keeps when it empties (an outage may have grown it far beyond).
const IDLE_CAPACITY: usize = 1024;
/// The longest one push may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The time the last push gets when the agent stops.
pub const FINAL_PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the labels may wait for IMDS's answers.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an error answer's body kept for the log.
const MAX_ERROR_BODY: usize = 1024;
/// The `version` label before any version runs.
pub const NO_VERSION: &str = "none";
/// The value of a label nobody knows.
pub const UNKNOWN: &str = "unknown";

/// How the shipper batches, retries and bounds its memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LokiSettings {
    /// The server, `http://HOST:PORT`.
    pub url: String,
    /// The most the queue holds, the push in flight included (see [`ENTRY_OVERHEAD`]).
    pub budget_bytes: usize,
    /// The most one push carries.
    pub batch_bytes: usize,
    /// How long the oldest queued line waits for a batch to fill.
    pub linger: Duration,
    /// The wait after the first failed push.
    pub retry_initial: Duration,
    /// The longest wait between two pushes while they fail.
    pub retry_max: Duration,
}

impl LokiSettings {
    /// The agent's settings for the server at `url` (`http://HOST:PORT`): a 4 MiB budget,
    /// 256 KiB batches, 200 ms linger, retries 250 ms doubling to 10 s.
    pub fn new(url: &str) -> LokiSettings {
        LokiSettings {
            url: url.trim_end_matches('/').to_owned(),
            budget_bytes: 4 * 1024 * 1024,
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(200),
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// The labels every stream carries, but `version`, which each line takes from the moment it
/// was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLabels {
    /// The deployment's tag.
    pub deployment: String,
    pub name: String,
    pub region: String,
    pub instance_type: String,
    pub market: String,
}

/// The shipper's own accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShipperStats {
    /// Lines waiting, the push in flight included.
    pub queued_lines: usize,
    /// What they cost against the budget.
    pub queued_bytes: usize,
    /// Lines Loki accepted.
    pub shipped: u64,
    /// Lines dropped: pushed out by newer ones, or refused by Loki.
    pub dropped: u64,
}

/// The shipper's metrics, shared with the agent's metrics page; `Default` for a shipper whose
/// counts nobody scrapes.
#[derive(Clone, Debug, Default)]
pub struct LokiCounters {
    pub(crate) shipped: Counter,
    pub(crate) dropped: Counter,
    pub(crate) queued_bytes: Gauge,
}

/// One queued line.
#[derive(Debug)]
struct Entry {
    /// Nanoseconds since the Unix epoch.
    nanos: u128,
    version: Arc<str>,
    line: Box<str>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.line.len() + ENTRY_OVERHEAD
    }
}

/// What the sending task does next, given the queue and the time.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Nothing is queued: wait for a line.
    Idle,
    /// A batch is not full yet: wait at most this long for more.
    Linger(Duration),
    /// Push now.
    Push,
}

/// The queue, as plain data: every decision about what is kept, sent and dropped, with the
/// time passed in.
#[derive(Debug)]
struct Queue {
    entries: VecDeque<Entry>,
    /// The cost of `entries`.
    bytes: usize,
    /// The cost of the push in flight (its entries are out of `entries` meanwhile).
    in_flight: usize,
    in_flight_lines: usize,
    budget: usize,
    last_nanos: u128,
    version: Arc<str>,
    shipped: u64,
    dropped: u64,
    /// Dropped since the last push that succeeded: reported once one does.
    dropped_unreported: u64,
}

impl Queue {
    fn new(budget: usize) -> Queue {
        Queue {
            entries: VecDeque::new(),
            bytes: 0,
            in_flight: 0,
            in_flight_lines: 0,
            budget,
            last_nanos: 0,
            version: Arc::from(NO_VERSION),
            shipped: 0,
            dropped: 0,
            dropped_unreported: 0,
        }
    }

    /// Queues `line` written at `now` (nanoseconds since the epoch); returns how many old
    /// lines it pushed out.
    fn push(&mut self, line: &str, now: u128) -> u64 {
        let nanos = now.max(self.last_nanos + 1);
        self.last_nanos = nanos;
        let entry = Entry { nanos, version: self.version.clone(), line: Box::from(line) };
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        self.enforce_budget()
    }

    /// Drops the oldest queued lines while the queue and the push in flight pass the budget.
    fn enforce_budget(&mut self) -> u64 {
        let mut dropped = 0;
        while self.bytes + self.in_flight > self.budget {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.bytes -= oldest.cost();
            dropped += 1;
        }
        self.dropped += dropped;
        self.dropped_unreported += dropped;
        dropped
    }

    fn next(&self, now: u128, linger: Duration, batch_bytes: usize) -> Next {
        let Some(oldest) = self.entries.front() else { return Next::Idle };
        if self.bytes >= batch_bytes {
            return Next::Push;
        }
        let waited = Duration::from_nanos(
            u64::try_from(now.saturating_sub(oldest.nanos)).unwrap_or(u64::MAX),
        );
        match linger.checked_sub(waited) {
            Some(left) if !left.is_zero() => Next::Linger(left),
            _ => Next::Push,
        }
    }

    /// Takes the oldest lines, at most `batch_bytes` of them (at least one), as the push in
    /// flight.
    fn take_batch(&mut self, batch_bytes: usize) -> Vec<Entry> {
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(oldest) = self.entries.front() {
            if !batch.is_empty() && size + oldest.cost() > batch_bytes {
                break;
            }
            size += oldest.cost();
            batch.push(self.entries.pop_front().expect("front was just seen"));
        }
        self.bytes -= size;
        self.in_flight = size;
        self.in_flight_lines = batch.len();
        batch
    }

    /// The push in flight was accepted.
    fn delivered(&mut self) -> u64 {
        let lines = self.in_flight_lines as u64;
        self.shipped += lines;
        self.in_flight = 0;
        self.in_flight_lines = 0;
        if self.entries.is_empty() {
            self.entries.shrink_to(IDLE_CAPACITY);
        }
        lines
    }

    /// The push in flight failed and will be tried again: its lines go back to the front,
    /// and the budget applies to them like to any other line. Returns how many were dropped.
    fn returned(&mut self, batch: Vec<Entry>) -> u64 {
        self.in_flight = 0;
        self.in_flight_lines = 0;
        for entry in batch.into_iter().rev() {
            self.bytes += entry.cost();
            self.entries.push_front(entry);
        }
        self.enforce_budget()
    }

    /// The push in flight was refused for good: its lines are dropped.
    fn refused(&mut self) -> u64 {
        let lines = self.in_flight_lines as u64;
        self.dropped += lines;
        self.dropped_unreported += lines;
        self.in_flight = 0;
        self.in_flight_lines = 0;
        lines
    }

    fn stats(&self) -> ShipperStats {
        ShipperStats {
            queued_lines: self.entries.len() + self.in_flight_lines,
            queued_bytes: self.bytes + self.in_flight,
            shipped: self.shipped,
            dropped: self.dropped,
        }
    }
}

/// Ships lines to Loki (see the module's documentation). Shared: lines come in through
/// [`LokiShipper::push_line`] from wherever they are written, and [`LokiShipper::run`] sends.
#[derive(Debug)]
pub struct LokiShipper {
    settings: LokiSettings,
    queue: Mutex<Queue>,
    wake: Notify,
    counters: LokiCounters,
}

impl LokiShipper {
    /// A shipper with an empty queue; lines are queued from now on, and sent once
    /// [`LokiShipper::run`] runs.
    pub fn new(settings: LokiSettings, counters: LokiCounters) -> Arc<LokiShipper> {
        let queue = Mutex::new(Queue::new(settings.budget_bytes));
        Arc::new(LokiShipper { settings, queue, wake: Notify::new(), counters })
    }

    /// Queues one line, written now, of the current version.
    pub fn push_line(&self, line: &str) {
        let mut queue = self.lock();
        let was_empty = queue.entries.is_empty();
        let dropped = queue.push(line, now_nanos());
        let full = queue.bytes >= self.settings.batch_bytes;
        self.counters.dropped.inc_by(dropped);
        self.counters.queued_bytes.set(gauge_value(queue.stats().queued_bytes));
        drop(queue);
        if was_empty || full {
            self.wake.notify_one();
        }
    }

    /// The version lines written from now on belong to (`None`: no version runs).
    pub fn set_version(&self, version: Option<&str>) {
        let version = version.unwrap_or(NO_VERSION);
        let mut queue = self.lock();
        if *queue.version != *version {
            queue.version = Arc::from(version);
        }
    }

    /// The shipper's accounting now.
    pub fn stats(&self) -> ShipperStats {
        self.lock().stats()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Plain data: a panicking holder leaves nothing half-changed that matters.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends the queue to Loki with `labels` until `stop` turns true, then gives what is
    /// queued one last push.
    pub async fn run(self: Arc<Self>, labels: StreamLabels, mut stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            let next =
                self.lock().next(now_nanos(), self.settings.linger, self.settings.batch_bytes);
            match next {
                Next::Idle => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        _ = crate::shutdown_signalled(&mut stop) => break,
                    }
                }
                Next::Linger(left) => {
                    tokio::select! {
                        () = tokio::time::sleep(left) => {}
                        () = self.wake.notified() => {}
                        _ = crate::shutdown_signalled(&mut stop) => break,
                    }
                }
                Next::Push => {
                    if self.push_once(&labels, REQUEST_TIMEOUT).await {
                        failures = 0;
                        continue;
                    }
                    failures = failures.saturating_add(1);
                    let delay = backoff::bounded_retry_delay(
                        failures,
                        Duration::ZERO,
                        (self.settings.retry_initial, self.settings.retry_max),
                        Duration::MAX,
                        backoff::restart_jitter(),
                    )
                    .expect("a retry with no bound always has a delay");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = crate::shutdown_signalled(&mut stop) => break,
                    }
                }
            }
        }
        if !self.lock().entries.is_empty() {
            self.push_once(&labels, FINAL_PUSH_TIMEOUT).await;
        }
    }

    /// Pushes one batch; whether it was accepted (a refused batch counts as done too: it is
    /// not tried again).
    async fn push_once(&self, labels: &StreamLabels, timeout: Duration) -> bool {
        let batch = self.lock().take_batch(self.settings.batch_bytes);
        if batch.is_empty() {
            return true;
        }
        let body = push_body(labels, &batch);
        let outcome = post(&self.settings.url, body, timeout).await;
        let mut queue = self.lock();
        let accepted = match outcome {
            Ok(status) if status.is_success() => {
                self.counters.shipped.inc_by(queue.delivered());
                true
            }
            Ok(status) if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                tracing::debug!("loki: {} answered {status}; trying again", self.settings.url);
                self.counters.dropped.inc_by(queue.returned(batch));
                false
            }
            Ok(status) => {
                let lines = queue.refused();
                self.counters.dropped.inc_by(lines);
                tracing::warn!(
                    "loki: {} refused {lines} lines with {status}; they are dropped",
                    self.settings.url
                );
                true
            }
            Err(message) => {
                tracing::debug!("loki: push to {} failed: {message}", self.settings.url);
                self.counters.dropped.inc_by(queue.returned(batch));
                false
            }
        };
        if accepted && queue.dropped_unreported > 0 {
            let dropped = std::mem::take(&mut queue.dropped_unreported);
            let now = humantime::format_rfc3339_seconds(SystemTime::now());
            let report = format!(
                "{EVENT_PREFIX}{now} loki: {dropped} lines were dropped, oldest first, while {} did not take them; shipping resumed",
                self.settings.url
            );
            tracing::warn!("{report}");
            queue.push(&report, now_nanos());
        }
        self.counters.queued_bytes.set(gauge_value(queue.stats().queued_bytes));
        accepted
    }
}

/// The labels for the machine of `identity`: `instance_type` and `market` from `target`, else
/// from IMDS at `imds_endpoint` (`instance-type`, `instance-life-cycle`), else
/// [`UNKNOWN`].
pub(crate) async fn labels(
    identity: &IdentityBundle,
    target: &LokiTarget,
    imds_endpoint: Option<&str>,
) -> StreamLabels {
    let mut client = imds_endpoint.map(|endpoint| ImdsClient::with_timeout(endpoint, IMDS_TIMEOUT));
    let mut from_imds = async |given: &Option<String>, path: &str| -> String {
        if let Some(value) = given {
            return value.clone();
        }
        let Some(client) = client.as_mut() else { return UNKNOWN.to_owned() };
        match client.get(&format!("/latest/meta-data/{path}")).await {
            Ok(Some(value)) if !value.trim().is_empty() => value.trim().to_owned(),
            _ => UNKNOWN.to_owned(),
        }
    };
    let instance_type = from_imds(&target.instance_type, "instance-type").await;
    let market = from_imds(&target.market, "instance-life-cycle").await;
    StreamLabels {
        deployment: identity.tag.clone(),
        name: identity.name.clone(),
        region: identity.region.clone(),
        instance_type,
        market,
    }
}

/// The push request's body for `batch`: one stream per version, in the order the versions
/// first appear, each stream's entries in the order they were written.
fn push_body(labels: &StreamLabels, batch: &[Entry]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        streams: Vec<Stream<'a>>,
    }
    #[derive(Serialize)]
    struct Stream<'a> {
        stream: BTreeMap<&'static str, &'a str>,
        values: Vec<(String, &'a str)>,
    }
    let mut streams: Vec<Stream<'_>> = Vec::new();
    for entry in batch {
        let position = streams.iter().position(|s| s.stream["version"] == &*entry.version);
        let index = position.unwrap_or_else(|| {
            let stream = BTreeMap::from([
                ("deployment", labels.deployment.as_str()),
                ("name", labels.name.as_str()),
                ("region", labels.region.as_str()),
                ("instance_type", labels.instance_type.as_str()),
                ("market", labels.market.as_str()),
                ("version", &*entry.version),
            ]);
            streams.push(Stream { stream, values: Vec::new() });
            streams.len() - 1
        });
        streams[index].values.push((entry.nanos.to_string(), &entry.line));
    }
    serde_json::to_vec(&Body { streams }).expect("strings serialize to JSON")
}

/// POSTs `body` to `<url>/loki/api/v1/push`; the answer's status, or why there is none.
async fn post(url: &str, body: Vec<u8>, timeout: Duration) -> Result<StatusCode, String> {
    let authority = url.trim_start_matches("http://").to_owned();
    let exchange = async {
        let stream = TcpStream::connect(&authority).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let connection = tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri(PUSH_PATH)
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string());
        let answer = match request {
            Ok(request) => sender.send_request(request).await.map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                connection.abort();
                return Err(error);
            }
        };
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ERROR_BODY).collect().await;
        connection.abort();
        if !status.is_success()
            && let Ok(body) = body
        {
            tracing::debug!("loki: {status}: {}", String::from_utf8_lossy(&body.to_bytes()));
        }
        Ok(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_nanos()).unwrap_or(0)
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(200);

    fn line(n: usize) -> String {
        format!("line {n:04} {}", "x".repeat(26))
    }

    #[test]
    fn the_budget_drops_the_oldest_lines_and_counts_them() {
        // Each line costs 36 + 64 = 100 bytes; a 1000-byte budget keeps ten.
        let mut queue = Queue::new(1000);
        for n in 0..25 {
            queue.push(&line(n), 1_000 + n as u128);
        }
        let stats = queue.stats();
        assert_eq!((stats.queued_lines, stats.queued_bytes, stats.dropped), (10, 1000, 15));
        assert_eq!(&*queue.entries[0].line, line(15));
        // A push in flight counts against the budget; when it fails, its lines are the oldest
        // again and the first to go.
        let batch = queue.take_batch(300);
        assert_eq!(batch.len(), 3);
        queue.push(&line(25), 2_000);
        assert_eq!(queue.stats().dropped, 16);
        assert_eq!(&*queue.entries[0].line, line(19), "the oldest queued line went");
        assert_eq!(queue.returned(batch), 0);
        assert_eq!(&*queue.entries[0].line, line(15));
        assert_eq!(queue.stats().queued_lines, 10);
        // A refused push is dropped; a delivered one shipped.
        queue.take_batch(200);
        assert_eq!(queue.refused(), 2);
        queue.take_batch(200);
        assert_eq!(queue.delivered(), 2);
        let stats = queue.stats();
        assert_eq!((stats.queued_lines, stats.shipped, stats.dropped), (6, 2, 18));
        assert_eq!(queue.dropped_unreported, 18);
    }

    #[test]
    fn an_emptied_queue_gives_back_what_an_outage_grew() {
        let mut queue = Queue::new(1 << 30);
        for n in 0..20_000 {
            queue.push("x", n);
        }
        assert!(queue.entries.capacity() >= 20_000);
        queue.take_batch(usize::MAX);
        assert_eq!(queue.delivered(), 20_000);
        assert!(queue.entries.capacity() < 4 * IDLE_CAPACITY, "{}", queue.entries.capacity());
    }

    #[test]
    fn stamps_increase_strictly_even_when_the_clock_steps_back() {
        let mut queue = Queue::new(1 << 20);
        queue.push("a", 500);
        queue.push("b", 500);
        queue.push("c", 100);
        queue.push("d", 900);
        let stamps: Vec<u128> = queue.entries.iter().map(|e| e.nanos).collect();
        assert_eq!(stamps, [500, 501, 502, 900]);
    }

    #[test]
    fn a_batch_goes_when_full_or_when_its_oldest_line_waited_the_linger() {
        let mut queue = Queue::new(1 << 20);
        assert_eq!(queue.next(0, LINGER, 1000), Next::Idle);
        queue.push(&line(0), 1_000_000_000);
        assert_eq!(queue.next(1_000_000_000, LINGER, 1000), Next::Linger(LINGER));
        assert_eq!(
            queue.next(1_150_000_000, LINGER, 1000),
            Next::Linger(Duration::from_millis(50))
        );
        assert_eq!(queue.next(1_200_000_000, LINGER, 1000), Next::Push);
        for n in 1..10 {
            queue.push(&line(n), 1_000_000_000 + n as u128);
        }
        assert_eq!(queue.next(1_000_000_010, LINGER, 1000), Next::Push, "1000 bytes queued");
        let batch = queue.take_batch(450);
        assert_eq!(batch.len(), 4);
        assert_eq!(queue.take_batch(50).len(), 1, "a line larger than a batch still goes");
    }

    #[test]
    fn the_body_has_one_stream_per_version_in_order() {
        let labels = StreamLabels {
            deployment: "t1".into(),
            name: "node-0".into(),
            region: "us-east-1".into(),
            instance_type: "c7g.large".into(),
            market: "spot".into(),
        };
        let mut queue = Queue::new(1 << 20);
        queue.push("one", 10);
        queue.version = Arc::from("v2");
        queue.push("two \"quoted\"", 20);
        queue.version = Arc::from(NO_VERSION);
        queue.push("three", 30);
        let batch = queue.take_batch(1 << 20);
        let body: serde_json::Value = serde_json::from_slice(&push_body(&labels, &batch)).unwrap();
        let expected = serde_json::json!({"streams": [
            {"stream": {"deployment": "t1", "name": "node-0", "region": "us-east-1",
                        "instance_type": "c7g.large", "market": "spot", "version": "none"},
             "values": [["10", "one"], ["30", "three"]]},
            {"stream": {"deployment": "t1", "name": "node-0", "region": "us-east-1",
                        "instance_type": "c7g.large", "market": "spot", "version": "v2"},
             "values": [["20", "two \"quoted\""]]},
        ]});
        assert_eq!(body, expected);
    }
}
