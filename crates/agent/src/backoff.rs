//! The agent's wait schedules, written down in one place.
//!
//! - Restarting the binary: capped exponential backoff. The n-th consecutive failure waits
//!   `initial_backoff × 2^(n-1)`, capped at `max_backoff`, then multiplied by a random factor in
//!   0.8..=1.2 (±20 % jitter) so that a fleet restarted by the same event does not restart in
//!   step. The count resets once the binary stayed up [`STABLE_RUN`] or became healthy. The
//!   arithmetic saturates: a backoff too long to compute is the longest `Duration` (the agent
//!   refuses manifests with backoffs over `flotilla_spec::fleet::MAX_RESTART_BACKOFF`, but a
//!   version installed before that rule must not make the supervisor panic).
//! - Waiting for the identity bundle: the n-th poll comes 100 ms × 2^(n-1) after the one
//!   before, capped at 500 ms (a GET of a small object: cheap, and the binary starts sooner)
//!   while the agent has waited less than [`IDENTITY_PATIENT_AFTER`] (30 s), and at 2 s after
//!   that, times a random factor in 0.8..=1.2, until the bootstrap's `identity_timeout`. A
//!   large fleet's first machines wait for the last one's launch, and every bundle of a
//!   deployment lives under one S3 prefix, which takes 5,500 GETs a second: 1,000 machines
//!   polling twice a second would use over a third of it, at 2 s they use a tenth, for at
//!   most 2 s more of a wait already over 30 s. The jitter keeps machines booted in the same
//!   second from polling in step.
//! - Waiting for apt's locks (boot packages): while another apt or dpkg holds the dpkg lock
//!   (cloud-init and unattended-upgrades do on a fresh machine, as the commonware deployer
//!   learned), `apt-get` is tried again after 1 s, doubling to at most 10 s, times a random
//!   factor in 0.8..=1.2, until the bootstrap's `boot.apt_lock_wait` (5 minutes by default)
//!   has passed since the first try; then the step fails with apt's own message. Another bound
//!   scales the waits with it (1/300 of it doubling to 1/30: a test's 300 ms waits 1 ms
//!   doubling to 10 ms).
//! - Polling IMDS (`imds.rs`): `spot/instance-action` and `events/recommendations/rebalance`
//!   every 250 ms (every 250 ms of delay is shutdown time lost), `events/maintenance/scheduled`
//!   every 5 s (announced days ahead). After `n` failures in a row a route waits 250 ms × 2^n,
//!   capped at 10 s, times a random factor in 0.8..=1.2, so a broken IMDS is not hammered and
//!   a mended one is noticed within seconds; a success returns the route to its interval. There
//!   is no deadline: the agent polls as long as it runs, and each request has its own timeout.

use std::time::Duration;

use flotilla_spec::RestartSpec;
use rand::Rng;

/// A run at least this long resets the consecutive-failure count.
pub(crate) const STABLE_RUN: Duration = Duration::from_secs(10);

/// Consecutive exits without becoming healthy after which the binary counts as crash-looping.
pub(crate) const CRASH_LOOP_EXITS: u32 = 3;

/// First wait between two polls for the identity bundle.
pub(crate) const IDENTITY_POLL_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between two polls for the identity bundle, during the first
/// [`IDENTITY_PATIENT_AFTER`] of the wait.
pub(crate) const IDENTITY_POLL_MAX: Duration = Duration::from_millis(500);
/// How long the agent polls for its identity bundle at the short cap.
pub(crate) const IDENTITY_PATIENT_AFTER: Duration = Duration::from_secs(30);
/// Longest wait between two polls for the identity bundle once the agent has waited
/// [`IDENTITY_PATIENT_AFTER`].
pub(crate) const IDENTITY_POLL_PATIENT_MAX: Duration = Duration::from_secs(2);

/// The first wait before trying apt again while its lock is held, as a fraction of the whole
/// wait: 1 s of 5 minutes.
const APT_LOCK_RETRY_INITIAL_DIVISOR: u32 = 300;
/// The longest wait between two tries, as a fraction of the whole wait: 10 s of 5 minutes.
const APT_LOCK_RETRY_MAX_DIVISOR: u32 = 30;

/// The wait before the `attempt`-th retry of apt (1 for the first) while its lock is held, with
/// `jitter` the random factor (0.8..=1.2, see [`restart_jitter`]); `None` once `waited` plus
/// that wait would pass `bound` (the bootstrap's `boot.apt_lock_wait`).
pub(crate) fn apt_lock_retry_delay(
    attempt: u32,
    waited: Duration,
    bound: Duration,
    jitter: f64,
) -> Option<Duration> {
    bounded_retry_delay(
        attempt,
        waited,
        (bound / APT_LOCK_RETRY_INITIAL_DIVISOR, bound / APT_LOCK_RETRY_MAX_DIVISOR),
        bound,
        jitter,
    )
}

/// The wait before retry `attempt` (1 for the first) of a try that gives up after `bound`:
/// `initial`, doubling to at most `max`, times `jitter` (clamped to 0.8..=1.2); `None` once
/// `waited` plus that wait would pass `bound`.
pub(crate) fn bounded_retry_delay(
    attempt: u32,
    waited: Duration,
    (initial, max): (Duration, Duration),
    bound: Duration,
    jitter: f64,
) -> Option<Duration> {
    let doublings = attempt.saturating_sub(1).min(16);
    let uncapped = initial.saturating_mul(2u32.saturating_pow(doublings));
    let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.8, 1.2) };
    let delay = scale(uncapped.min(max), jitter);
    (waited.saturating_add(delay) <= bound).then_some(delay)
}

/// The delay before restarting after the `consecutive_failures`-th failure in a row (1 for the
/// first), with `jitter` the random factor (0.8..=1.2, see [`restart_jitter`]).
pub(crate) fn restart_delay(
    spec: &RestartSpec,
    consecutive_failures: u32,
    jitter: f64,
) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(32);
    let uncapped = spec.initial_backoff.saturating_mul(2u32.saturating_pow(doublings));
    let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.8, 1.2) };
    scale(uncapped.min(spec.max_backoff), jitter)
}

/// `duration × factor` for a factor in 0.8..=1.2, saturating at the longest `Duration`
/// (`Duration::mul_f64` panics when the product does not fit).
fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// How often the fast IMDS routes are polled while they answer.
pub(crate) const IMDS_FAST_POLL: Duration = Duration::from_millis(250);
/// How often scheduled events are polled while IMDS answers.
pub(crate) const IMDS_SCHEDULED_POLL: Duration = Duration::from_secs(5);
/// The longest wait between polls of a failing IMDS route.
pub(crate) const IMDS_FAILING_POLL_MAX: Duration = Duration::from_secs(10);

/// The wait before polling an IMDS route again, given its interval while healthy,
/// `consecutive_failures` (0 after a success) and `jitter` (0.8..=1.2), used only while failing.
pub(crate) fn imds_poll_delay(
    interval: Duration,
    consecutive_failures: u32,
    jitter: f64,
) -> Duration {
    if consecutive_failures == 0 {
        return interval;
    }
    let doublings = consecutive_failures.min(16);
    let uncapped = IMDS_FAST_POLL.saturating_mul(2u32.saturating_pow(doublings));
    let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.8, 1.2) };
    scale(uncapped.min(IMDS_FAILING_POLL_MAX), jitter)
}

/// A random jitter factor in 0.8..=1.2.
pub(crate) fn restart_jitter() -> f64 {
    rand::rng().random_range(0.8..=1.2)
}

/// The wait before the `attempt`-th poll for the identity bundle after the first (1 for the
/// second poll), the agent having `waited` since it began, with `jitter` the random factor
/// (clamped to 0.8..=1.2; NaN counts as 1).
pub(crate) fn identity_poll_delay(attempt: u32, waited: Duration, jitter: f64) -> Duration {
    let max =
        if waited < IDENTITY_PATIENT_AFTER { IDENTITY_POLL_MAX } else { IDENTITY_POLL_PATIENT_MAX };
    let doublings = attempt.saturating_sub(1).min(16);
    let uncapped = IDENTITY_POLL_INITIAL.saturating_mul(2u32.saturating_pow(doublings));
    let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.8, 1.2) };
    scale(uncapped.min(max), jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::RestartPolicy;

    #[test]
    fn restart_delays_double_up_to_the_cap_with_bounded_jitter() {
        let spec = RestartSpec {
            policy: RestartPolicy::Always,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
        };
        let delays: Vec<_> = (1..=6).map(|n| restart_delay(&spec, n, 1.0)).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 2000, 2000].map(Duration::from_millis).to_vec());
        assert_eq!(restart_delay(&spec, 1, 0.8), Duration::from_millis(200));
        assert_eq!(restart_delay(&spec, 1, 1.2), Duration::from_millis(300));
        assert_eq!(restart_delay(&spec, 1, 5.0), Duration::from_millis(300));
        assert_eq!(restart_delay(&spec, 1000, 1.0), Duration::from_secs(2));
        for _ in 0..100 {
            assert!((0.8..=1.2).contains(&restart_jitter()));
        }
    }

    #[test]
    fn extreme_backoffs_saturate_instead_of_panicking() {
        // `initial_backoff: 580000000000y` made every supervisor panic at its first restart.
        let huge = Duration::from_secs(580_000_000_000 * 31_557_600);
        for (initial, max) in [(huge, huge), (Duration::MAX, Duration::MAX), (huge, Duration::MAX)]
        {
            let spec = RestartSpec {
                policy: RestartPolicy::Always,
                initial_backoff: initial,
                max_backoff: max,
            };
            for failures in [0, 1, 2, 33, u32::MAX] {
                for jitter in [0.8, 1.0, 1.2, f64::NAN, f64::INFINITY, -1.0] {
                    let delay = restart_delay(&spec, failures, jitter);
                    assert!(delay >= initial.min(max).mul_f64(0.5), "{delay:?}");
                }
            }
        }
        let spec = RestartSpec {
            policy: RestartPolicy::Always,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
        };
        assert_eq!(restart_delay(&spec, 1, f64::NAN), Duration::from_millis(250));
        assert_eq!(restart_delay(&spec, u32::MAX, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn apt_lock_waits_double_to_ten_seconds_and_stop_after_five_minutes() {
        let (zero, bound) = (Duration::ZERO, flotilla_spec::bootstrap::DEFAULT_APT_LOCK_WAIT);
        let delays: Vec<_> =
            (1..=6).map(|n| apt_lock_retry_delay(n, zero, bound, 1.0).unwrap().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(apt_lock_retry_delay(1, zero, bound, 0.8), Some(Duration::from_millis(800)));
        assert_eq!(apt_lock_retry_delay(5, zero, bound, 1.2), Some(Duration::from_secs(12)));
        assert_eq!(
            apt_lock_retry_delay(u32::MAX, zero, bound, f64::NAN),
            Some(Duration::from_secs(10))
        );
        // The whole wait is bounded: the retries stop before five minutes have passed.
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        while let Some(delay) = apt_lock_retry_delay(attempt + 1, waited, bound, 1.2) {
            attempt += 1;
            waited += delay;
        }
        assert!(waited <= bound && waited > bound - Duration::from_secs(12));
        assert!(attempt > 20, "{attempt}");
        assert_eq!(apt_lock_retry_delay(1, bound, bound, 1.0), None);
        // Another bound scales the schedule with it.
        let short = Duration::from_millis(300);
        let delays: Vec<_> = (1..=6)
            .map(|n| apt_lock_retry_delay(n, zero, short, 1.0).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn identity_polls_back_off_to_half_a_second_then_to_two_after_half_a_minute() {
        let early = Duration::from_secs(3);
        let seen: Vec<_> =
            (1..=7).map(|n| identity_poll_delay(n, early, 1.0).as_millis()).collect();
        assert_eq!(seen, [100, 200, 400, 500, 500, 500, 500]);
        let just_before = IDENTITY_PATIENT_AFTER - Duration::from_millis(1);
        assert_eq!(identity_poll_delay(9, just_before, 1.0), Duration::from_millis(500));
        let late: Vec<_> = (1..=7)
            .map(|n| identity_poll_delay(n, IDENTITY_PATIENT_AFTER, 1.0).as_millis())
            .collect();
        assert_eq!(late, [100, 200, 400, 800, 1600, 2000, 2000]);
        // The jitter, clamped; NaN counts as 1; a huge attempt saturates at the cap.
        assert_eq!(identity_poll_delay(1, early, 1.2), Duration::from_millis(120));
        assert_eq!(identity_poll_delay(9, early, 0.5), Duration::from_millis(400));
        assert_eq!(identity_poll_delay(9, early, f64::NAN), Duration::from_millis(500));
        assert_eq!(identity_poll_delay(u32::MAX, Duration::MAX, 1.2), Duration::from_millis(2400));
    }

    #[test]
    fn imds_polls_back_off_while_failing_and_return_to_their_interval() {
        assert_eq!(imds_poll_delay(IMDS_FAST_POLL, 0, 1.2), IMDS_FAST_POLL);
        assert_eq!(imds_poll_delay(IMDS_SCHEDULED_POLL, 0, 0.8), IMDS_SCHEDULED_POLL);
        assert_eq!(imds_poll_delay(IMDS_FAST_POLL, 1, 1.0), Duration::from_millis(500));
        assert_eq!(imds_poll_delay(IMDS_FAST_POLL, 2, 1.0), Duration::from_secs(1));
        assert_eq!(imds_poll_delay(IMDS_FAST_POLL, 30, 1.0), IMDS_FAILING_POLL_MAX);
        assert_eq!(imds_poll_delay(IMDS_FAST_POLL, 30, 1.2), Duration::from_secs(12));
        assert_eq!(imds_poll_delay(IMDS_FAST_POLL, 1, f64::NAN), Duration::from_millis(500));
    }
}
