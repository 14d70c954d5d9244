//! The agent's own Prometheus metrics, served as plain HTTP on `GET /metrics` (OpenMetrics text).
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `flotilla_binary_up` | gauge | 1 while the binary runs |
//! | `flotilla_binary_restarts_total` | counter | restarts after an exit, since the agent started |
//! | `flotilla_binary_health_state{state}` | gauge | 1 for the current state, 0 for the others |
//! | `flotilla_binary_version_info{version}` | gauge | 1 for the installed version |
//! | `flotilla_agent_uptime_seconds` | gauge | seconds since the agent started |
//! | `flotilla_binary_uptime_seconds` | gauge | seconds since the binary started (0 when down) |
//! | `flotilla_lifecycle_notifications_failed_total` | counter | lifecycle notifications given up on after their retries |
//! | `flotilla_imds_polls_total` | counter | polls of IMDS's notice routes |
//! | `flotilla_imds_poll_failures_total` | counter | those that failed (no answer, an error status, a bad body) |
//! | `flotilla_interruption_notices_total{kind}` | counter | new IMDS notices: `spot` (interruption), `rebalance`, `scheduled` |
//! | `flotilla_rollout_failed` | gauge | 1 while the last finished rollout failed (rolled back, or nothing to roll back to) |
//! | `flotilla_gpu_utilization_ratio{gpu,uuid}` | gauge | a GPU's utilization, 0 to 1 (`gpu`: read from `nvidia-smi` when it is on `PATH`) |
//! | `flotilla_gpu_memory_used_bytes{gpu,uuid}` | gauge | its memory in use |
//! | `flotilla_gpu_memory_total_bytes{gpu,uuid}` | gauge | its memory |
//! | `flotilla_gpu_temperature_celsius{gpu,uuid}` | gauge | its temperature |
//! | `flotilla_gpu_reads_failed_total` | counter | `nvidia-smi` runs that failed or printed what does not parse (the GPU gauges are then cleared) |
//! | `flotilla_loki_lines_shipped_total` | counter | log lines Loki accepted (`loki`) |
//! | `flotilla_loki_lines_dropped_total` | counter | log lines dropped: pushed out of the bounded queue while Loki did not take them, or refused by it |
//! | `flotilla_loki_queued_bytes` | gauge | what the queue of lines for Loki holds, against its budget |
//!
//! Everything but the counters is read from the agent's state at scrape time, and the
//! binary's gauges from one reading of the supervisor's status: `binary_up` and the health state
//! cannot disagree (a state that claims a running binary comes with its pid, see
//! `SupervisorStatus::into_reported`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use flotilla_spec::api::BinaryState;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{PendingConnections, PendingPolicy};
use crate::failpoint::{Failpoint, Failpoints};
use crate::loki::LokiCounters;
use crate::refusal_log::{REFUSAL_LOG_INTERVAL, RefusalLog};

/// Connections that have not yet sent a complete request head (see `admission`).
const PENDING_REQUESTS: PendingPolicy = PendingPolicy { capacity: 32, per_peer: 8 };
/// Time for the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives: a scrape is answered at once, after its head.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Every state, for the per-state gauge.
const STATES: [BinaryState; 6] = [
    BinaryState::Idle,
    BinaryState::Starting,
    BinaryState::Healthy,
    BinaryState::Unhealthy,
    BinaryState::CrashLooping,
    BinaryState::Stopped,
];

type Labels = Vec<(&'static str, String)>;

/// What a scrape reports, read from the agent at scrape time (see
/// `SupervisorStatus::metrics_snapshot`: the binary's part comes from one reading).
#[derive(Debug)]
pub(crate) struct MetricsSnapshot {
    pub(crate) running: bool,
    pub(crate) state: BinaryState,
    pub(crate) version: Option<String>,
    pub(crate) agent_uptime: Duration,
    pub(crate) binary_uptime: Option<Duration>,
}

/// The metrics' values between scrapes, and their rendering.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    binary_up: Gauge,
    restarts: Counter,
    notifications_failed: Counter,
    imds_polls: Counter,
    imds_poll_failures: Counter,
    health_state: Family<Labels, Gauge>,
    version_info: Family<Labels, Gauge>,
    agent_uptime: Gauge<f64, AtomicU64>,
    binary_uptime: Gauge<f64, AtomicU64>,
    loki: LokiCounters,
    notices: Family<Labels, Counter>,
    rollout_failed: Gauge,
    gpu: GpuGauges,
}

/// The GPU gauges, one series per GPU.
#[derive(Debug, Default)]
struct GpuGauges {
    utilization: Family<Labels, Gauge<f64, AtomicU64>>,
    memory_used: Family<Labels, Gauge<f64, AtomicU64>>,
    memory_total: Family<Labels, Gauge<f64, AtomicU64>>,
    temperature: Family<Labels, Gauge<f64, AtomicU64>>,
    failures: Counter,
}

/// One GPU as `nvidia-smi` reports it (see `gpu`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GpuSample {
    pub(crate) index: u32,
    pub(crate) uuid: String,
    /// 0 to 1. `None` (here and below): the GPU does not report it.
    pub(crate) utilization: Option<f64>,
    pub(crate) memory_used_bytes: Option<f64>,
    pub(crate) memory_total_bytes: Option<f64>,
    pub(crate) temperature_celsius: Option<f64>,
}

impl AgentMetrics {
    pub(crate) fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("flotilla");
        let binary_up = Gauge::default();
        let restarts = Counter::default();
        let notifications_failed = Counter::default();
        let imds_polls = Counter::default();
        let imds_poll_failures = Counter::default();
        let health_state = Family::<Labels, Gauge>::default();
        let version_info = Family::<Labels, Gauge>::default();
        let agent_uptime = Gauge::<f64, AtomicU64>::default();
        let binary_uptime = Gauge::<f64, AtomicU64>::default();
        registry.register("binary_up", "Whether the binary runs (1) or not (0)", binary_up.clone());
        registry.register(
            "binary_restarts",
            "Restarts of the binary after it exited, since the agent started",
            restarts.clone(),
        );
        registry.register(
            "lifecycle_notifications_failed",
            "Lifecycle notifications (SNS, SQS) given up on after their retries, since the agent started",
            notifications_failed.clone(),
        );
        registry.register(
            "imds_polls",
            "Polls of IMDS's spot, rebalance and scheduled-event routes, since the agent started",
            imds_polls.clone(),
        );
        registry.register(
            "imds_poll_failures",
            "IMDS polls that failed (no answer in time, an error status, a body that does not parse)",
            imds_poll_failures.clone(),
        );
        registry.register(
            "binary_health_state",
            "The binary's state: 1 for the current one",
            health_state.clone(),
        );
        registry.register("binary_version_info", "The installed version id", version_info.clone());
        registry.register(
            "agent_uptime_seconds",
            "Seconds since the agent started",
            agent_uptime.clone(),
        );
        registry.register(
            "binary_uptime_seconds",
            "Seconds since the binary started, 0 while it is not running",
            binary_uptime.clone(),
        );
        let loki = LokiCounters::default();
        registry.register(
            "loki_lines_shipped",
            "Log lines Loki accepted, since the agent started",
            loki.shipped.clone(),
        );
        registry.register(
            "loki_lines_dropped",
            "Log lines dropped: pushed out of the bounded queue while Loki did not take them, or refused by Loki",
            loki.dropped.clone(),
        );
        registry.register(
            "loki_queued_bytes",
            "What the queue of log lines for Loki holds, counted against its budget",
            loki.queued_bytes.clone(),
        );
        let notices = Family::<Labels, Counter>::default();
        // Every kind from the start, at 0: `increase()` sees a first notice only on a series
        // that existed before it.
        for kind in ["spot", "rebalance", "scheduled"] {
            notices.get_or_create(&vec![("kind", kind.to_owned())]).inc_by(0);
        }
        registry.register(
            "interruption_notices",
            "New IMDS notices by kind: spot (an interruption), rebalance, scheduled",
            notices.clone(),
        );
        let rollout_failed = Gauge::default();
        registry.register(
            "rollout_failed",
            "1 while the last finished rollout failed (rolled back, or nothing to roll back to)",
            rollout_failed.clone(),
        );
        let gpu = GpuGauges::default();
        registry.register(
            "gpu_utilization_ratio",
            "A GPU's utilization, 0 to 1, read from nvidia-smi",
            gpu.utilization.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "A GPU's memory in use, read from nvidia-smi",
            gpu.memory_used.clone(),
        );
        registry.register(
            "gpu_memory_total_bytes",
            "A GPU's memory, read from nvidia-smi",
            gpu.memory_total.clone(),
        );
        registry.register(
            "gpu_temperature_celsius",
            "A GPU's temperature, read from nvidia-smi",
            gpu.temperature.clone(),
        );
        registry.register(
            "gpu_reads_failed",
            "nvidia-smi runs that failed or printed what does not parse",
            gpu.failures.clone(),
        );
        AgentMetrics {
            registry,
            binary_up,
            restarts,
            notifications_failed,
            imds_polls,
            imds_poll_failures,
            health_state,
            version_info,
            agent_uptime,
            binary_uptime,
            loki,
            notices,
            rollout_failed,
            gpu,
        }
    }

    /// Counts a new IMDS notice of `kind` (`spot`, `rebalance`, `scheduled`).
    pub(crate) fn count_notice(&self, kind: &'static str) {
        self.notices.get_or_create(&vec![("kind", kind.to_owned())]).inc();
    }

    /// Whether the last finished rollout failed.
    pub(crate) fn set_rollout_failed(&self, failed: bool) {
        self.rollout_failed.set(i64::from(failed));
    }

    /// The GPUs as last read: one series each, and none of a GPU no longer listed.
    pub(crate) fn set_gpus(&self, samples: &[GpuSample]) {
        let gauges = &self.gpu;
        for family in
            [&gauges.utilization, &gauges.memory_used, &gauges.memory_total, &gauges.temperature]
        {
            family.clear();
        }
        for sample in samples {
            let labels = vec![("gpu", sample.index.to_string()), ("uuid", sample.uuid.clone())];
            for (family, value) in [
                (&gauges.utilization, sample.utilization),
                (&gauges.memory_used, sample.memory_used_bytes),
                (&gauges.memory_total, sample.memory_total_bytes),
                (&gauges.temperature, sample.temperature_celsius),
            ] {
                if let Some(value) = value {
                    family.get_or_create(&labels).set(value);
                }
            }
        }
    }

    /// A read of the GPUs failed: the gauges are cleared (a stale reading would mislead).
    pub(crate) fn gpu_read_failed(&self) {
        self.set_gpus(&[]);
        self.gpu.failures.inc();
    }

    /// The Loki shipper's counters, which this page reports.
    pub(crate) fn loki_counters(&self) -> LokiCounters {
        self.loki.clone()
    }

    /// Counts one restart after an exit.
    pub(crate) fn count_restart(&self) {
        self.restarts.inc();
    }

    /// Counts one notification given up on.
    pub(crate) fn count_notification_failure(&self) {
        self.notifications_failed.inc();
    }

    /// Counts IMDS polls: `polled` of them, `failed` of those failed.
    pub(crate) fn count_imds_polls(&self, polled: u64, failed: u64) {
        self.imds_polls.inc_by(polled);
        self.imds_poll_failures.inc_by(failed);
    }

    /// The OpenMetrics text for `snapshot`.
    pub(crate) fn render(&self, snapshot: &MetricsSnapshot) -> String {
        self.binary_up.set(i64::from(snapshot.running));
        for state in STATES {
            let value = i64::from(state == snapshot.state);
            self.health_state.get_or_create(&vec![("state", state.as_str().to_owned())]).set(value);
        }
        self.version_info.clear();
        if let Some(version) = &snapshot.version {
            self.version_info.get_or_create(&vec![("version", version.clone())]).set(1);
        }
        self.agent_uptime.set(snapshot.agent_uptime.as_secs_f64());
        self.binary_uptime.set(snapshot.binary_uptime.unwrap_or_default().as_secs_f64());
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true; `page` makes the metrics
/// page at each scrape (the agent's [`AgentMetrics::render`] of a fresh [`MetricsSnapshot`]).
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    page: impl Fn() -> String + Clone + Send + Sync + 'static,
    mut shutdown: watch::Receiver<bool>,
    failpoints: Failpoints,
) {
    let pending = PendingConnections::new(PENDING_REQUESTS);
    let refusals = Arc::new(RefusalLog::new("metrics"));
    let mut refusals_due = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    loop {
        let next = crate::next_connection(
            &listener,
            &mut shutdown,
            "metrics",
            &refusals,
            &mut refusals_due,
        );
        let Some((stream, peer)) = next.await else {
            return;
        };
        if failpoints.is_armed(Failpoint::MetricsServerReturnsOnAccept) {
            return;
        }
        let (ticket, mut eviction) = pending.admit(peer.ip());
        let page = page.clone();
        let refusals = refusals.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                // The request head is complete: the connection is no longer pending.
                ticket.release();
                let text = page.clone();
                async move { Ok::<_, Infallible>(answer(text, request)) }
            });
            // One request per connection: answered at once, then closed, so a connection costs
            // something only while it is pending (see `admission`).
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let result = tokio::select! {
                result = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => result,
                () = eviction.wait() => {
                    let reason = "closed before its request head was complete: newer connections needed the room";
                    return refusals.refused(peer, reason);
                }
                _ = crate::shutdown_signalled(&mut shutdown) => return,
            };
            match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.is_timeout() => {
                    let reason = format!("no complete request head within {HEAD_TIMEOUT:?}");
                    refusals.refused(peer, reason);
                }
                Ok(Err(error)) => tracing::debug!("metrics connection from {peer}: {error}"),
                Err(_) => tracing::debug!("metrics: closed {peer} after {CONNECTION_TIMEOUT:?}"),
            }
        });
    }
}

fn answer(
    page: impl Fn() -> String,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let builder = hyper::Response::builder();
    let response = if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
        let text = page();
        builder
            .status(200)
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(text)))
    } else {
        builder
            .status(404)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(b"not found: the metrics are at GET /metrics\n")))
    };
    response.expect("a response with static headers builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let metrics = AgentMetrics::new();
        metrics.count_restart();
        metrics.count_notification_failure();
        metrics.count_notification_failure();
        metrics.count_imds_polls(3, 1);
        metrics.count_notice("spot");
        metrics.set_rollout_failed(true);
        metrics.set_gpus(&[GpuSample {
            index: 0,
            uuid: "GPU-a".to_owned(),
            utilization: None,
            memory_used_bytes: Some(1.0),
            memory_total_bytes: Some(2.0),
            temperature_celsius: Some(61.0),
        }]);
        let text = metrics.render(&MetricsSnapshot {
            running: true,
            state: BinaryState::Healthy,
            version: Some("abc".to_owned()),
            agent_uptime: Duration::from_secs(5),
            binary_uptime: Some(Duration::from_secs(3)),
        });
        for expected in [
            "flotilla_binary_up 1\n",
            "flotilla_binary_restarts_total 1\n",
            "flotilla_lifecycle_notifications_failed_total 2\n",
            "flotilla_imds_polls_total 3\n",
            "flotilla_imds_poll_failures_total 1\n",
            "flotilla_binary_health_state{state=\"healthy\"} 1\n",
            "flotilla_binary_health_state{state=\"crash-looping\"} 0\n",
            "flotilla_binary_version_info{version=\"abc\"} 1\n",
            "flotilla_agent_uptime_seconds 5.0\n",
            "flotilla_binary_uptime_seconds 3.0\n",
            "flotilla_interruption_notices_total{kind=\"spot\"} 1\n",
            "flotilla_interruption_notices_total{kind=\"rebalance\"} 0\n",
            "flotilla_rollout_failed 1\n",
            "flotilla_gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-a\"} 61.0\n",
            "flotilla_gpu_reads_failed_total 0\n",
            "flotilla_loki_lines_dropped_total 0\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        let text = metrics.render(&MetricsSnapshot {
            running: false,
            state: BinaryState::Idle,
            version: None,
            agent_uptime: Duration::from_secs(6),
            binary_uptime: None,
        });
        assert!(!text.contains("version=\"abc\""), "{text}");
        assert!(text.contains("flotilla_binary_health_state{state=\"idle\"} 1\n"), "{text}");
        metrics.gpu_read_failed();
        metrics.set_rollout_failed(false);
        let text = metrics.render(&MetricsSnapshot {
            running: false,
            state: BinaryState::Idle,
            version: None,
            agent_uptime: Duration::from_secs(7),
            binary_uptime: None,
        });
        assert!(!text.contains("flotilla_gpu_temperature_celsius{"), "{text}");
        assert!(text.contains("flotilla_gpu_reads_failed_total 1\n"), "{text}");
        assert!(text.contains("flotilla_rollout_failed 0\n"), "{text}");
    }
}
