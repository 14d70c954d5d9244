//! Every wait of the machine's cloud, written down in one place.
//!
//! - Polling EC2 for a volume (a new one leaving `creating`, an attachment becoming `attached`,
//!   a detach reaching `available`, a fixed or pool volume still held by a previous machine):
//!   the n-th poll comes `first × 2^(n-1)` after the one before, capped at `longest`, times a
//!   random factor in 0.8..=1.2 so that machines started together do not poll in step. With the
//!   [`Schedule::Standard`] timings that is 250 ms doubling to 2 s (an attachment takes a few
//!   seconds on EC2; DescribeVolumes is cheap); [`Schedule::Fast`] (tests against the emulator,
//!   whose states change in milliseconds) polls after 20 ms doubling to 100 ms.
//! - Polling Route 53 for `INSYNC` (GetChange): 1 s doubling to 5 s (Standard), 20 ms to
//!   100 ms (Fast), same jitter.
//! - Deadlines: a claim waits at most its `VolumeClaim::wait` for each thing it waits for (a
//!   held volume to come free, a created volume to be `available`, the attachment to be
//!   `attached`); a release waits at most [`DETACH_WAIT`] for the volume to be `available`;
//!   an upsert or restore that asks for `INSYNC` waits at most [`INSYNC_WAIT`]. A wait that
//!   reaches its deadline fails with what it waited for and the last state seen. Nothing
//!   sleeps past its deadline: the last sleep is cut short to end on it.
//! - Pool races: a machine that loses a pool volume to another (AttachVolume answers
//!   `VolumeInUse`, or EC2 shows the volume attached to another instance) moves on to the next
//!   free volume at once, without sleeping; after [`POOL_ROUNDS`] listings that each ended in
//!   lost races the source gives up, so a pool fought over by many machines cannot hold one
//!   forever.
//! - The SDK's own retries (its standard mode: 3 attempts with jittered exponential backoff,
//!   for throttling and 5xx) apply inside each EC2 and Route 53 call; SNS and SQS calls are
//!   sent once, as the engine retries notifications on its own schedule.

use std::time::Duration;

/// How long a release waits for the detached volume to be `available`.
pub const DETACH_WAIT: Duration = Duration::from_secs(120);
/// How long an upsert or restore that asks for it waits for Route 53's `INSYNC`.
pub const INSYNC_WAIT: Duration = Duration::from_secs(180);
/// How many listings of a pool a claim goes through when every free volume it tried was taken
/// by another machine first.
pub const POOL_ROUNDS: u32 = 5;

/// Which timings the polls use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// EC2's and Route 53's real pace.
    #[default]
    Standard,
    /// An emulator whose states change in milliseconds (tests).
    Fast,
}

/// What is being polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// A volume's state or attachment (DescribeVolumes).
    Volume,
    /// A Route 53 change (GetChange).
    Change,
}

impl Schedule {
    fn bounds(self, poll: Poll) -> (Duration, Duration) {
        match (self, poll) {
            (Schedule::Standard, Poll::Volume) => {
                (Duration::from_millis(250), Duration::from_secs(2))
            }
            (Schedule::Standard, Poll::Change) => (Duration::from_secs(1), Duration::from_secs(5)),
            (Schedule::Fast, _) => (Duration::from_millis(20), Duration::from_millis(100)),
        }
    }

    /// The wait before the `attempt`-th poll after the first (1 for the second poll) of
    /// `poll`, with `jitter` the random factor (clamped to 0.8..=1.2; NaN counts as 1).
    pub fn delay(self, poll: Poll, attempt: u32, jitter: f64) -> Duration {
        let (first, longest) = self.bounds(poll);
        let doublings = attempt.saturating_sub(1).min(16);
        let uncapped = first.saturating_mul(2u32.saturating_pow(doublings));
        let jitter = if jitter.is_nan() { 1.0 } else { jitter.clamp(0.8, 1.2) };
        Duration::try_from_secs_f64(uncapped.min(longest).as_secs_f64() * jitter).unwrap_or(longest)
    }
}

/// A random factor in 0.8..=1.2 for [`Schedule::delay`].
pub fn jitter() -> f64 {
    rand::Rng::random_range(&mut rand::rng(), 0.8..=1.2)
}

/// Polls on a [`Schedule`] until a deadline.
#[derive(Debug)]
pub(crate) struct Poller {
    schedule: Schedule,
    poll: Poll,
    deadline: tokio::time::Instant,
    attempt: u32,
}

impl Poller {
    pub(crate) fn new(schedule: Schedule, poll: Poll, within: Duration) -> Poller {
        let now = tokio::time::Instant::now();
        Poller {
            schedule,
            poll,
            deadline: now.checked_add(within).unwrap_or(now + Duration::from_secs(86_400 * 365)),
            attempt: 0,
        }
    }

    /// Sleeps until the next poll; false (without sleeping) once the deadline has passed. The
    /// last sleep ends on the deadline.
    pub(crate) async fn next(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        self.attempt += 1;
        let delay = self.schedule.delay(self.poll, self.attempt, jitter());
        tokio::time::sleep_until((now + delay).min(self.deadline)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_polls_double_to_their_cap_with_bounded_jitter() {
        let standard: Vec<u128> =
            (1..=6).map(|n| Schedule::Standard.delay(Poll::Volume, n, 1.0).as_millis()).collect();
        assert_eq!(standard, [250, 500, 1000, 2000, 2000, 2000]);
        let fast: Vec<u128> =
            (1..=4).map(|n| Schedule::Fast.delay(Poll::Volume, n, 1.0).as_millis()).collect();
        assert_eq!(fast, [20, 40, 80, 100]);
        assert_eq!(Schedule::Standard.delay(Poll::Change, 1, 1.0), Duration::from_secs(1));
        assert_eq!(Schedule::Standard.delay(Poll::Change, 9, 1.0), Duration::from_secs(5));
        // Jitter is clamped, NaN is no jitter, and a huge attempt number saturates.
        assert_eq!(Schedule::Standard.delay(Poll::Volume, 1, 5.0), Duration::from_millis(300));
        assert_eq!(Schedule::Standard.delay(Poll::Volume, 1, 0.0), Duration::from_millis(200));
        assert_eq!(Schedule::Standard.delay(Poll::Volume, 1, f64::NAN), Duration::from_millis(250));
        assert_eq!(Schedule::Standard.delay(Poll::Volume, u32::MAX, 1.0), Duration::from_secs(2));
        for _ in 0..100 {
            assert!((0.8..=1.2).contains(&jitter()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poller_stops_at_its_deadline_and_never_sleeps_past_it() {
        let start = tokio::time::Instant::now();
        let mut poller = Poller::new(Schedule::Standard, Poll::Volume, Duration::from_secs(3));
        let mut polls = 0;
        while poller.next().await {
            polls += 1;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(3), "ends on the deadline");
        // 250 + 500 + 1000 ms (±20 %) leave about 1.25 s, which one or two more polls use up.
        assert!((4..=5).contains(&polls), "{polls} polls");
        assert!(!poller.next().await, "stays ended");
    }
}
