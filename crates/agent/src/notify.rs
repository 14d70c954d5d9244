//! Notifications (`notify[]`): on each event, every domain's notify entries whose `matrix` turns
//! the event on are sent through the machine's cloud (SNS Publish, SQS SendMessage), with the
//! envelope's subject and body expanded from the event's macros.
//!
//! Schedule ([`notify_retry_delay`]): a send that fails with a retryable error (throttling, a
//! 5xx) is tried again after 200 ms, doubling to at most 5 s, times a random factor in
//! 0.8..=1.2, as long as the wait ends before the event's deadline ([`NOTIFY_DEADLINE`], or
//! what is left of an interruption notice); an error that is not retryable (no such topic, no
//! permission) is not tried again. A notification that could not be sent is logged and
//! counted in the agent's metrics; it never fails the event (ec2fleetd: "not critical by
//! design", but it never retried).
//!
//! Domains send in parallel; within a domain the entries go in file order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_spec::fleetd::{Event, FleetdConfig, NotifySpec, expand_macros};
use futures_util::future::join_all;

use crate::machine_cloud::{MachineCloud, Notification};

/// How long an event's notifications may take in all, retries included.
pub(crate) const NOTIFY_DEADLINE: Duration = Duration::from_secs(30);
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The wait before retry `attempt` (1 for the first) of a notification, with `jitter` the
/// random factor (0.8..=1.2); `None` when the retry could not start before `left` runs out.
pub(crate) fn notify_retry_delay(attempt: u32, left: Duration, jitter: f64) -> Option<Duration> {
    let doublings = attempt.saturating_sub(1).min(16);
    let uncapped = RETRY_INITIAL.saturating_mul(2u32.saturating_pow(doublings));
    let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.8, 1.2) };
    let delay = uncapped.min(RETRY_MAX).mul_f64(jitter);
    (delay < left).then_some(delay)
}

/// What became of an event's notifications.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct NotifyOutcome {
    pub(crate) sent: u32,
    /// One line per notification given up on: where to, and the last error.
    pub(crate) failed: Vec<String>,
}

/// The notification of `spec` for the event whose macro values (domain included) are `values`.
pub(crate) fn notification(
    spec: &NotifySpec,
    values: &BTreeMap<String, String>,
    default_region: &str,
) -> Result<Notification, String> {
    let expand = |text: &str| expand_macros(text, values);
    Ok(Notification {
        backend: spec.backend,
        region: spec.region.clone().unwrap_or_else(|| default_region.to_owned()),
        topic: spec.topic.clone(),
        queue_url: spec.queue_url.clone(),
        subject: expand(&spec.subject)?,
        body: expand(&spec.body)?,
    })
}

/// Sends `event`'s notifications of every domain (see the module), each domain's values being
/// `values_of(domain)`, within `deadline`.
pub(crate) async fn send_notifications(
    cloud: &Arc<dyn MachineCloud>,
    config: &FleetdConfig,
    event: Event,
    values_of: impl Fn(&str) -> BTreeMap<String, String>,
    default_region: &str,
    deadline: Duration,
) -> NotifyOutcome {
    let until = tokio::time::Instant::now() + deadline;
    let domains = config.domains.iter().map(|domain| {
        let values = values_of(&domain.name);
        async move {
            let mut outcome = NotifyOutcome::default();
            for spec in domain.notify.iter().filter(|spec| spec.sends_on(event)) {
                let target = spec.topic.as_deref().or(spec.queue_url.as_deref()).unwrap_or("");
                let where_to = format!("domains.{} {} {target}", domain.name, spec.backend_name);
                match notification(spec, &values, default_region) {
                    Ok(notification) => match send_one(cloud, &notification, until).await {
                        Ok(()) => outcome.sent += 1,
                        Err(error) => outcome.failed.push(format!("{where_to}: {error}")),
                    },
                    Err(error) => outcome.failed.push(format!("{where_to}: {error}")),
                }
            }
            outcome
        }
    });
    let mut total = NotifyOutcome::default();
    for outcome in join_all(domains).await {
        total.sent += outcome.sent;
        total.failed.extend(outcome.failed);
    }
    total
}

async fn send_one(
    cloud: &Arc<dyn MachineCloud>,
    notification: &Notification,
    until: tokio::time::Instant,
) -> Result<(), String> {
    let mut attempt = 0u32;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let error = match tokio::time::timeout(left, cloud.notify(notification)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => {
                return Err(format!("no answer within the deadline (attempt {})", attempt + 1));
            }
        };
        attempt += 1;
        if !error.retryable {
            return Err(error.to_string());
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match notify_retry_delay(attempt, left, crate::backoff::restart_jitter()) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(format!("{error} (gave up after {attempt} attempts)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_to_their_cap_and_stop_before_the_deadline() {
        let long = Duration::from_secs(60);
        assert_eq!(notify_retry_delay(1, long, 1.0), Some(Duration::from_millis(200)));
        assert_eq!(notify_retry_delay(2, long, 1.0), Some(Duration::from_millis(400)));
        assert_eq!(notify_retry_delay(10, long, 1.0), Some(RETRY_MAX));
        assert_eq!(notify_retry_delay(u32::MAX, long, 1.2), Some(RETRY_MAX.mul_f64(1.2)));
        assert_eq!(notify_retry_delay(1, long, 5.0), Some(Duration::from_millis(240)));
        assert_eq!(notify_retry_delay(3, Duration::from_millis(500), 1.0), None);
    }
}
