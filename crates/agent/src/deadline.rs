//! Time arithmetic that cannot panic.
//!
//! `Instant + Duration` panics when the sum does not fit, and `Duration + Duration` when it
//! overflows. The durations the agent waits come from its inputs (a manifest's health deadline
//! and backoff, the bootstrap's stop grace and identity timeout); they are bounded where they
//! are read, but a bound is a promise of someone else's code, so every deadline the agent
//! computes goes through [`after`]: a wait too long to represent becomes a wait of
//! [`FAR_FUTURE`], which no machine lives to see end (tokio's timers do the same).

use std::time::Duration;

use tokio::time::Instant;

/// What a wait saturates to: about 30 years.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The instant `wait` after `start`, or [`FAR_FUTURE`] after it when that does not fit.
pub(crate) fn after(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait.min(FAR_FUTURE))
        // 30 years after a monotonic clock's start always fits; `start` is the last resort of a
        // function that must not panic.
        .unwrap_or(start)
}

/// The instant `wait` from now (see [`after`]).
pub(crate) fn from_now(wait: Duration) -> Instant {
    after(Instant::now(), wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_waits_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(after(now, Duration::from_secs(u64::MAX / 2)), now + FAR_FUTURE);
        assert_eq!(after(now, Duration::ZERO), now);
        assert!(from_now(Duration::MAX) > now + FAR_FUTURE - Duration::from_secs(1));
    }
}
