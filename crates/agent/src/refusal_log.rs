//! The log of refused connections: at most one line per [`REFUSAL_LOG_INTERVAL`] per server.
//!
//! A connection is refused when its TLS handshake fails or does not finish in time, when it
//! sends no complete request head in time, or when newer connections push it out of the pending
//! set (see `admission`). Anyone who can open connections can make refusals, so a line for each
//! would let them fill the agent's log. Instead, the first refusal after a quiet interval is
//! logged at once, with its peer and reason; later ones within the interval are counted, and
//! the next line says how many there were, naming the last peer and reason. That line comes with
//! the next refusal after the interval, or when the server's accept loop looks at its clock
//! (every interval), whichever is first.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::time::format_duration;

/// At most one line about refused connections per server in this time.
pub(crate) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Which refusals get a line, with the clock passed in.
#[derive(Debug)]
pub(crate) struct RefusalLimiter {
    interval: Duration,
    last_line_at: Option<Instant>,
    unreported: u64,
    last: Option<(SocketAddr, String)>,
}

impl RefusalLimiter {
    pub(crate) fn new(interval: Duration) -> RefusalLimiter {
        RefusalLimiter { interval, last_line_at: None, unreported: 0, last: None }
    }

    /// Counts a refusal at `now`; returns the line to log, when one is due.
    pub(crate) fn refused(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        reason: String,
    ) -> Option<String> {
        self.unreported = self.unreported.saturating_add(1);
        self.last = Some((peer, reason));
        self.line_if_due(now)
    }

    /// The line about refusals not reported yet, when one is due at `now`.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<String> {
        self.line_if_due(now)
    }

    fn line_if_due(&mut self, now: Instant) -> Option<String> {
        if self.unreported == 0 {
            return None;
        }
        let since_last_line = self.last_line_at.map(|at| now.saturating_duration_since(at));
        if since_last_line.is_some_and(|since| since < self.interval) {
            return None;
        }
        let (peer, reason) = self.last.take()?;
        let line = match (self.unreported, since_last_line) {
            (1, _) | (_, None) => format!("refused a connection from {peer}: {reason}"),
            (count, Some(since)) => format!(
                "refused {count} connections in the last {}; the last from {peer}: {reason}",
                format_duration(Duration::from_secs(since.as_secs()))
            ),
        };
        self.unreported = 0;
        self.last_line_at = Some(now);
        Some(line)
    }
}

/// A server's refusal log, shared by its connections.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    server: &'static str,
    limiter: Mutex<RefusalLimiter>,
}

impl RefusalLog {
    /// The refusal log of `server` (`API`, `metrics`), which starts each line.
    pub(crate) fn new(server: &'static str) -> RefusalLog {
        RefusalLog { server, limiter: Mutex::new(RefusalLimiter::new(REFUSAL_LOG_INTERVAL)) }
    }

    /// Counts a refused connection from `peer`, and logs it when a line is due.
    pub(crate) fn refused(&self, peer: SocketAddr, reason: impl Display) {
        let line = self.limiter().refused(Instant::now(), peer, reason.to_string());
        self.log(line);
    }

    /// Logs the refusals not reported yet, when a line is due.
    pub(crate) fn flush(&self) {
        let line = self.limiter().flush(Instant::now());
        self.log(line);
    }

    fn log(&self, line: Option<String>) {
        if let Some(line) = line {
            tracing::info!("{}: {line}", self.server);
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RefusalLimiter> {
        // Plain counters: a holder that panicked left nothing half-done that matters.
        self.limiter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counts_the_rest_and_names_the_last() {
        let mut limiter = RefusalLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let peer = |n: u8| SocketAddr::from(([10, 0, 0, n], 40000));
        let mut refuse =
            |millis, n, reason: &str| limiter.refused(at(millis), peer(n), reason.into());

        assert_eq!(
            refuse(0, 1, "no TLS handshake within 10s").as_deref(),
            Some("refused a connection from 10.0.0.1:40000: no TLS handshake within 10s")
        );
        // A flood within the interval: counted, not logged.
        for n in 0..200 {
            assert_eq!(refuse(100 + n, 2, "bad certificate"), None);
        }
        assert_eq!(refuse(9_999, 3, "unexpected EOF"), None);
        assert_eq!(
            refuse(10_000, 4, "unexpected EOF").as_deref(),
            Some(
                "refused 202 connections in the last 10s; the last from 10.0.0.4:40000: unexpected EOF"
            )
        );
        // Refusals that stop within an interval are reported when the clock is looked at.
        assert_eq!(refuse(12_000, 5, "bad certificate"), None);
        assert_eq!(limiter.flush(at(19_999)), None);
        assert_eq!(
            limiter.flush(at(25_000)).as_deref(),
            Some("refused a connection from 10.0.0.5:40000: bad certificate")
        );
        assert_eq!(limiter.flush(at(60_000)), None, "nothing left to report");
        // After a quiet interval, the next refusal is logged at once.
        assert_eq!(
            limiter.refused(at(60_001), peer(6), "x".into()).as_deref(),
            Some("refused a connection from 10.0.0.6:40000: x")
        );
    }

    #[test]
    fn a_clock_that_goes_back_does_not_panic() {
        let mut limiter = RefusalLimiter::new(Duration::from_secs(10));
        let now = Instant::now();
        let peer = SocketAddr::from(([10, 0, 0, 1], 1));
        assert!(limiter.refused(now + Duration::from_secs(5), peer, "a".into()).is_some());
        assert_eq!(limiter.refused(now, peer, "b".into()), None);
        assert_eq!(limiter.flush(now), None);
    }
}
