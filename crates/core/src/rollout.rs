//! Rolling a version out to machines: batch planning (pure) and the apply-and-wait loop.
//!
//! The agent does the work on each machine (download, verify, swap, health gate, rollback);
//! this module decides the order and waits for each agent's verdict: a long poll
//! (`WaitRollout`, up to 30 s at a time) that the agent answers the moment the rollout ends.
//! Retries after an unanswered request, and agents without long polls, follow a written
//! schedule: 100 ms growing by half up to 500 ms, ±20 % jitter. Everything stops at the deadline:
//! the health deadline plus [`DOWNLOAD_ALLOWANCE`].
//!
//! A machine that already runs the version (`unchanged`) is held to the same promise: it must
//! be healthy, or become healthy within the health deadline (an agent restored after a crash
//! restarts its binary, which may then crash-loop), polled on the same schedule.

use std::time::Duration;

use flotilla_spec::Manifest;
use flotilla_spec::api::{AgentStatus, ApplyResponse, BinaryState, RolloutPhase};
use rand::Rng;
use tokio::time::Instant;

use crate::client::{AgentClient, ClientError};
use crate::error::MachineFailure;

/// Time an agent has to download and verify artifacts, on top of the health deadline.
pub const DOWNLOAD_ALLOWANCE: Duration = Duration::from_secs(120);
const FIRST_POLL: Duration = Duration::from_millis(100);
/// The longest single wait asked of an agent.
const LONG_POLL: Duration = Duration::from_secs(30);
const LONGEST_POLL: Duration = Duration::from_millis(500);

/// Splits machine names into batches of at most `batch` (at least one per batch), in order.
pub fn plan_batches(names: &[String], batch: usize) -> Vec<Vec<String>> {
    names.chunks(batch.max(1)).map(<[String]>::to_vec).collect()
}

/// `now + wait`, or a point far enough away to never come when the sum would overflow (a
/// duration from a file can be anything).
pub fn deadline_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A poll schedule: 100 ms growing by half up to 500 ms, each ±20 % jitter.
#[derive(Debug)]
pub struct PollSchedule {
    next: Duration,
}

impl Default for PollSchedule {
    fn default() -> Self {
        PollSchedule { next: FIRST_POLL }
    }
}

impl PollSchedule {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 3 / 2).min(LONGEST_POLL);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

/// How one machine's rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The machine already ran this version.
    Unchanged,
    /// The machine now runs this version, healthy.
    Updated,
}

/// Asks `name`'s agent to run `manifest` and waits for its verdict; `accepted` is called when
/// the agent has taken the new version (a rollout is under way).
pub async fn apply_and_wait(
    client: &AgentClient,
    name: &str,
    manifest: &Manifest,
    accepted: &(dyn Fn() + Sync),
) -> Result<Applied, MachineFailure> {
    let version = manifest.version();
    let deadline =
        deadline_after(Instant::now(), manifest.health_deadline.saturating_add(DOWNLOAD_ALLOWANCE));
    let failure = |reason: String| MachineFailure {
        name: name.to_owned(),
        reason,
        log_tail: Vec::new(),
        rolled_back: false,
    };
    let mut schedule = PollSchedule::default();
    // Apply, retrying while the agent is unreachable or busy with another rollout.
    loop {
        match client.apply(name, manifest).await {
            Ok(ApplyResponse::Unchanged { .. }) => {
                return hold_unchanged(client, name, manifest).await;
            }
            Ok(ApplyResponse::Accepted { .. }) => {
                accepted();
                break;
            }
            Err(error @ ClientError::Refused { status, .. }) if status != 409 => {
                return Err(failure(error.to_string()));
            }
            Err(error) => {
                if Instant::now() >= deadline {
                    return Err(failure(format!("could not hand the new version over: {error}")));
                }
                tracing::debug!(machine = name, %error, "apply not accepted yet; retrying");
            }
        }
        tokio::time::sleep(schedule.next_delay()).await;
    }
    // Wait for the verdict: long polls (the agent answers the moment the rollout ends); an
    // agent that does not know them is polled on the schedule instead.
    let mut schedule = PollSchedule::default();
    let mut long_poll = true;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(failure(format!(
                "no verdict from the agent within {}",
                humantime::format_duration(
                    manifest.health_deadline.saturating_add(DOWNLOAD_ALLOWANCE)
                )
            )));
        }
        let answer = if long_poll {
            let wait = (deadline - now).min(LONG_POLL);
            match client.wait_rollout(name, &version, wait).await {
                Err(ClientError::Refused { status: 404, .. }) => {
                    long_poll = false;
                    continue;
                }
                answer => answer,
            }
        } else {
            tokio::time::sleep(schedule.next_delay()).await;
            client.status(name).await
        };
        let last_error = match answer {
            Ok(status) => match status.rollout.filter(|r| {
                // An agent that reports the hosts a rollout installs must be on this one's.
                r.version == version
                    && r.hosts.as_deref().is_none_or(|h| *h == manifest.hosts_version())
            }) {
                Some(rollout) if rollout.phase == RolloutPhase::Healthy => {
                    return Ok(Applied::Updated);
                }
                Some(rollout) if rollout.phase.is_done() => {
                    return Err(MachineFailure {
                        name: name.to_owned(),
                        reason: rollout
                            .reason
                            .unwrap_or_else(|| "the new version failed".to_owned()),
                        rolled_back: rollout.phase == RolloutPhase::RolledBack,
                        log_tail: rollout.log_tail,
                    });
                }
                // Not finished yet: wait again.
                _ => None,
            },
            Err(error) => Some(error),
        };
        if let Some(error) = last_error {
            // The agent did not answer: try again after a pause, until the deadline.
            tracing::debug!(machine = name, %error, "no answer about the rollout yet");
            if Instant::now() + LONGEST_POLL >= deadline {
                return Err(failure(format!("no verdict from the agent: {error}")));
            }
            tokio::time::sleep(schedule.next_delay()).await;
        }
    }
}

/// Whether a machine whose agent reports `status` serves `manifest`: its binary healthy (when
/// the manifest has one) and each of its services.
pub fn serves(status: &flotilla_spec::api::AgentStatus, manifest: &Manifest) -> bool {
    let binary = manifest.binary.is_none() || status.state == BinaryState::Healthy;
    binary
        && manifest.services.iter().all(|wanted| {
            status.services.iter().any(|s| s.name == wanted.name && s.state == BinaryState::Healthy)
        })
}

/// Waits until `name`, which already runs the version asked for, is healthy, for at most
/// `health_deadline`: `unchanged` is a success only for a machine that serves.
async fn hold_unchanged(
    client: &AgentClient,
    name: &str,
    manifest: &Manifest,
) -> Result<Applied, MachineFailure> {
    let health_deadline = manifest.health_deadline;
    let deadline = deadline_after(Instant::now(), health_deadline);
    let mut schedule = PollSchedule::default();
    loop {
        let last = match client.status(name).await {
            Ok(status) if serves(&status, manifest) => return Ok(Applied::Unchanged),
            Ok(status) => describe_unhealthy(&status),
            Err(error) => format!("its agent does not answer: {error}"),
        };
        if Instant::now() >= deadline {
            return Err(MachineFailure {
                name: name.to_owned(),
                reason: format!(
                    "it already runs this version, but did not become healthy within its health deadline of {}: {last}",
                    humantime::format_duration(health_deadline)
                ),
                log_tail: Vec::new(),
                rolled_back: false,
            });
        }
        tokio::time::sleep(schedule.next_delay()).await;
    }
}

/// Why a machine that runs its version is not healthy, in words.
fn describe_unhealthy(status: &AgentStatus) -> String {
    let mut text = format!("it is {}", status.state.as_str());
    if let Some(error) = &status.health_error {
        text.push_str(&format!(" (last health check: {error})"));
    } else if let Some(exit) = &status.last_exit {
        match (exit.code, exit.signal) {
            (Some(code), _) => text.push_str(&format!(" (its last exit: code {code})")),
            (None, Some(signal)) => text.push_str(&format!(" (its last exit: signal {signal})")),
            (None, None) => {}
        }
    }
    if status.restarts > 0 {
        text.push_str(&format!(" after {} restarts", status.restarts));
    }
    for service in status.services.iter().filter(|s| s.state != BinaryState::Healthy) {
        text.push_str(&format!("; its service {} is {}", service.name, service.state.as_str()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n-{i}")).collect()
    }

    #[test]
    fn batches_keep_order_and_cover_everything() {
        let batches = plan_batches(&names(5), 2);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0], ["n-0", "n-1"]);
        assert_eq!(batches[2], ["n-4"]);
        assert_eq!(plan_batches(&names(3), 0).len(), 3, "a zero batch means one at a time");
        assert!(plan_batches(&[], 4).is_empty());
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        // 300000000000y, as a hostile spec once wrote: no panic, a deadline that never comes.
        let far = deadline_after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(50 * 365 * 24 * 3600));
    }

    #[test]
    fn poll_schedule_grows_to_its_cap_with_bounded_jitter() {
        let mut schedule = PollSchedule::default();
        let delays: Vec<Duration> = (0..12).map(|_| schedule.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(80) && delays[0] <= Duration::from_millis(120));
        for delay in &delays {
            assert!(*delay <= LONGEST_POLL.mul_f64(1.2), "{delay:?}");
        }
        assert!(delays[11] >= LONGEST_POLL.mul_f64(0.8));
    }
}
