//! A stand-in for Loki's push API on 127.0.0.1, for the shipper's tests and benchmark: it
//! checks every push strictly against Loki's documented format (`POST /loki/api/v1/push`,
//! `Content-Type: application/json`, `{"streams":[{"stream":{labels},"values":[["<ns>",
//! "line"]]}]}`, exactly the agent's six labels, nanosecond timestamps as strings, in order
//! within each stream) and records what it got. It can be told to answer 503, or to be "down"
//! by closing each connection before reading it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The labels every stream must carry, and no others.
pub const LABELS: [&str; 6] =
    ["deployment", "instance_type", "market", "name", "region", "version"];

/// One line as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub labels: BTreeMap<String, String>,
    pub nanos: u128,
    pub line: String,
    /// When the push that carried it arrived.
    pub arrived: SystemTime,
}

/// How the receiver answers the next connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Checks and records the push, answers 204.
    Accept,
    /// Closes the connection without reading it.
    Reset,
    /// Reads the push and answers 503 without recording it.
    Unavailable,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    received: Vec<Received>,
    /// Connections in each mode.
    resets: usize,
    unavailable: usize,
    pushes: usize,
    /// The last timestamp of each stream, to check order across pushes.
    last_nanos: BTreeMap<BTreeMap<String, String>, u128>,
    /// Every way a push broke the format, with the push.
    violations: Vec<String>,
}

/// A running receiver.
#[derive(Clone, Debug)]
pub struct Receiver {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Starts a receiver on `address` (port 0 for any).
    pub async fn start(address: SocketAddr, mode: Mode) -> Receiver {
        let listener = TcpListener::bind(address).await.expect("the receiver binds");
        let address = listener.local_addr().expect("a bound address");
        let state = Arc::new(Mutex::new(State {
            mode,
            received: Vec::new(),
            resets: 0,
            unavailable: 0,
            pushes: 0,
            last_nanos: BTreeMap::new(),
            violations: Vec::new(),
        }));
        let receiver = Receiver { address, state: state.clone() };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let mode = state.lock().expect("the receiver state is not poisoned").mode;
                if mode == Mode::Reset {
                    state.lock().expect("the receiver state is not poisoned").resets += 1;
                    drop(stream);
                    continue;
                }
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    /// `http://ADDRESS`, as the shipper's settings take it.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("the receiver state is not poisoned").mode = mode;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("the receiver state is not poisoned").received.clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("the receiver state is not poisoned")
            .received
            .iter()
            .map(|r| r.line.clone())
            .collect()
    }

    /// Connections closed unread, pushes answered 503, pushes accepted.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.state.lock().expect("the receiver state is not poisoned");
        (state.resets, state.unavailable, state.pushes)
    }

    /// Panics with every format violation seen so far.
    pub fn assert_no_violations(&self) {
        let state = self.state.lock().expect("the receiver state is not poisoned");
        assert!(
            state.violations.is_empty(),
            "pushes broke Loki's format:\n{:#?}",
            state.violations
        );
    }
}

async fn answer(
    state: &Mutex<State>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let arrived = SystemTime::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let mut state = state.lock().expect("the receiver state is not poisoned");
    if state.mode == Mode::Unavailable {
        state.unavailable += 1;
        return response(503, "unavailable");
    }
    let mut problems = Vec::new();
    if method != hyper::Method::POST {
        problems.push(format!("method {method}, not POST"));
    }
    if path != "/loki/api/v1/push" {
        problems.push(format!("path {path}"));
    }
    if content_type.as_deref() != Some("application/json") {
        problems.push(format!("content type {content_type:?}"));
    }
    let lines = match body {
        Ok(body) => parse_push(&body, arrived, &mut problems),
        Err(error) => {
            problems.push(format!("body: {error}"));
            Vec::new()
        }
    };
    for line in &lines {
        let last = state.last_nanos.entry(line.labels.clone()).or_insert(0);
        if line.nanos <= *last {
            problems.push(format!("{} is not after {} in its stream", line.nanos, *last));
        }
        *last = line.nanos;
    }
    if !problems.is_empty() {
        state.violations.push(problems.join("; "));
        return response(400, "bad push");
    }
    state.pushes += 1;
    state.received.extend(lines);
    response(204, "")
}

/// The lines of a push body; every deviation from the format lands in `problems`.
fn parse_push(body: &[u8], arrived: SystemTime, problems: &mut Vec<String>) -> Vec<Received> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            problems.push(format!("not JSON: {error}"));
            return Vec::new();
        }
    };
    let Some(root) = value.as_object() else {
        problems.push("the body is not an object".into());
        return Vec::new();
    };
    if root.keys().collect::<Vec<_>>() != ["streams"] {
        problems.push(format!("top-level keys {:?}", root.keys().collect::<Vec<_>>()));
    }
    let Some(streams) = root.get("streams").and_then(|s| s.as_array()) else {
        problems.push("`streams` is not an array".into());
        return Vec::new();
    };
    if streams.is_empty() {
        problems.push("no streams".into());
    }
    let mut lines = Vec::new();
    for stream in streams {
        let Some(stream) = stream.as_object() else {
            problems.push("a stream is not an object".into());
            continue;
        };
        let mut keys: Vec<&String> = stream.keys().collect();
        keys.sort();
        if keys != ["stream", "values"] {
            problems.push(format!("stream keys {keys:?}"));
            continue;
        }
        let Some(labels) = stream["stream"].as_object() else {
            problems.push("`stream` is not an object".into());
            continue;
        };
        let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
        names.sort();
        if names != LABELS {
            problems.push(format!("labels {names:?}"));
        }
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(name, value)| match value.as_str() {
                Some(text) if !text.is_empty() => (name.clone(), text.to_owned()),
                _ => {
                    problems.push(format!("label {name} = {value}"));
                    (name.clone(), String::new())
                }
            })
            .collect();
        let Some(values) = stream["values"].as_array() else {
            problems.push("`values` is not an array".into());
            continue;
        };
        if values.is_empty() {
            problems.push("a stream without values".into());
        }
        let mut previous = 0;
        for value in values {
            let pair = value.as_array().map(Vec::as_slice);
            let Some([nanos, line]) = pair else {
                problems.push(format!("a value is not a pair: {value}"));
                continue;
            };
            let (Some(nanos), Some(line)) = (nanos.as_str(), line.as_str()) else {
                problems.push(format!("a value is not two strings: {value}"));
                continue;
            };
            let Ok(nanos) = nanos.parse::<u128>() else {
                problems.push(format!("timestamp {nanos:?} is not an integer"));
                continue;
            };
            // Nanoseconds since the epoch: 2020 .. 2100.
            if !(1_577_836_800_000_000_000..4_102_444_800_000_000_000).contains(&nanos) {
                problems.push(format!("timestamp {nanos} is not in nanoseconds of now"));
            }
            if nanos <= previous {
                problems.push(format!("timestamp {nanos} after {previous} within a push"));
            }
            previous = nanos;
            lines.push(Received { labels: labels.clone(), nanos, line: line.to_owned(), arrived });
        }
    }
    lines
}

fn response(status: u16, body: &'static str) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a static response builds")
}
