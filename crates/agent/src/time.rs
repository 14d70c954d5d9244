//! Time as the agent writes it down: wall-clock seconds for the records the API reports (exits,
//! rollouts, boot steps, lifecycle events) and durations in words for the logs. Deadlines, the
//! arithmetic of waits, are in `deadline`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, or 0 on a clock set before it.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A duration for people, to the millisecond.
pub(crate) fn format_duration(duration: Duration) -> String {
    let rounded = Duration::from_millis(duration.as_millis().try_into().unwrap_or(u64::MAX));
    humantime::format_duration(rounded).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_to_the_millisecond() {
        assert_eq!(format_duration(Duration::from_micros(1_500_700)), "1s 500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
