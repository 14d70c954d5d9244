//! The keepalive: bigmachine's dead-man switch. A version installed with `keepalive: 30m`
//! keeps running only while the deployment's CLI keeps talking to this agent; once nothing has
//! been heard for that long, the agent stops the binary, stops itself and powers the machine off
//! (the bootstrap's `power_off`; on AWS the instance was launched to terminate on shutdown, so
//! it is gone and billing stops). Forgotten fleets stop costing money.
//!
//! Every request the API answers is word from the deployment (only the deployment's CLI holds a
//! client certificate of its CA): `status`, `update`, `logs` and `flotilla keepalive` (for cron)
//! all reset it. The time of the last word is kept in `keepalive.json` in the instance
//! directory, so a restarted agent does not start the count again: a machine that was off for
//! longer than its keepalive powers off again as soon as its agent starts.
//!
//! Schedule ([`next_check`]): the watcher sleeps until the moment the keepalive would run out,
//! but at most [`MAX_CHECK_INTERVAL`], so a word that arrives meanwhile or a version with another
//! keepalive is seen within a minute; it checks again then, and expires only when, at that
//! moment, the last word is older than the keepalive. Without a keepalive it sleeps the longest
//! interval and checks whether one was installed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_spec::api::KeepaliveReport;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::binary_log::BinaryLog;
use crate::instance_dir::write_file_atomically;
use crate::supervisor::SupervisorStatus;
use crate::time::{format_duration, unix_now};

const STATE_FILE: &str = "keepalive.json";
/// The longest the watcher sleeps between two checks.
pub(crate) const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// A word written to disk at most this often: a client polling `status` every second does not
/// make the agent write every second.
const WRITE_INTERVAL_SECS: u64 = 5;

/// How long to sleep before the next check: until the keepalive would run out (rounded up to a
/// whole second, at least one), at most [`MAX_CHECK_INTERVAL`]; the longest without a keepalive.
pub(crate) fn next_check(limit: Option<Duration>, since_last_word: Duration) -> Duration {
    let Some(limit) = limit else {
        return MAX_CHECK_INTERVAL;
    };
    let left = limit.saturating_sub(since_last_word);
    let left = Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
    left.clamp(Duration::from_secs(1), MAX_CHECK_INTERVAL)
}

/// Whether a keepalive of `limit` has run out `since_last_word` after the last word.
pub(crate) fn expired(limit: Option<Duration>, since_last_word: Duration) -> bool {
    limit.is_some_and(|limit| since_last_word >= limit)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// Unix seconds of the last word from the deployment.
    last_contact: u64,
}

#[derive(Debug)]
struct Shared {
    last_contact: u64,
    written: u64,
    limit: Option<Duration>,
}

/// Records word from the deployment and reports the keepalive.
#[derive(Clone, Debug)]
pub(crate) struct KeepaliveHandle {
    shared: Arc<Mutex<Shared>>,
    path: PathBuf,
}

impl KeepaliveHandle {
    /// The keepalive of the instance directory `dir`: the last word as recorded there, or now
    /// (the agent's start counts as word when nothing was recorded).
    pub(crate) fn open(dir: &Path) -> KeepaliveHandle {
        let path = dir.join(STATE_FILE);
        let recorded = fs_err::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Persisted>(&bytes).ok())
            .map(|p| p.last_contact);
        let handle = KeepaliveHandle {
            shared: Arc::new(Mutex::new(Shared {
                last_contact: recorded.unwrap_or_else(unix_now),
                written: 0,
                limit: None,
            })),
            path,
        };
        if recorded.is_none() {
            handle.touch();
        }
        handle
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Word from the deployment, now.
    pub(crate) fn touch(&self) {
        let now = unix_now();
        let write = {
            let mut shared = self.shared();
            shared.last_contact = now;
            let due = now.saturating_sub(shared.written) >= WRITE_INTERVAL_SECS;
            if due {
                shared.written = now;
            }
            due
        };
        if write {
            let json = serde_json::to_vec(&Persisted { last_contact: now })
                .expect("a number serializes to JSON");
            if let Err(error) = write_file_atomically(&self.path, &json, 0o600) {
                tracing::warn!("keepalive: could not record the last word: {error}");
            }
        }
    }

    /// The report for `status` and `keepalive`; `None` when the installed version has none.
    pub(crate) fn report(&self) -> KeepaliveReport {
        let shared = self.shared();
        KeepaliveReport {
            limit_secs: shared.limit.map(|limit| limit.as_secs()),
            last_contact: shared.last_contact,
        }
    }

    fn since_last_word(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.shared().last_contact))
    }
}

/// Watches the installed version's keepalive (from the supervisor's status) and, when it runs
/// out, logs why and asks the agent to stop through `expire`; returns then, or on `stop`.
pub(crate) async fn watch_keepalive(
    handle: KeepaliveHandle,
    mut status: watch::Receiver<SupervisorStatus>,
    log: Arc<BinaryLog>,
    expire: mpsc::UnboundedSender<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let limit = status.borrow_and_update().keepalive;
        handle.shared().limit = limit;
        let since = handle.since_last_word();
        if expired(limit, since) {
            let limit = limit.expect("an expired keepalive has a limit");
            let reason = format!(
                "keepalive: nothing heard from the deployment for {} (keepalive {}): stopping the binary and powering the machine off",
                format_duration(since),
                format_duration(limit)
            );
            log.event(&reason);
            let _ = expire.send(reason);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(next_check(limit, since)) => {}
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = crate::shutdown_signalled(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watcher_sleeps_until_the_keepalive_runs_out_but_at_most_a_minute() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(next_check(None, Duration::ZERO), MAX_CHECK_INTERVAL);
        assert_eq!(next_check(Some(minutes(30)), minutes(1)), MAX_CHECK_INTERVAL);
        assert_eq!(
            next_check(Some(minutes(30)), Duration::from_secs(1790)),
            Duration::from_secs(10)
        );
        // A fraction of a second left is slept as a whole one, never as zero.
        assert_eq!(
            next_check(Some(Duration::from_secs(3)), Duration::from_millis(2500)),
            Duration::from_secs(1)
        );
        assert_eq!(next_check(Some(Duration::from_secs(3)), minutes(5)), Duration::from_secs(1));
    }

    #[test]
    fn a_keepalive_runs_out_when_the_last_word_is_as_old_as_it() {
        let limit = Some(Duration::from_secs(1800));
        assert!(!expired(limit, Duration::from_secs(1799)));
        assert!(expired(limit, Duration::from_secs(1800)));
        assert!(!expired(None, Duration::from_secs(u64::MAX / 2)));
    }

    #[test]
    fn the_last_word_survives_a_restart_and_a_first_start_counts_as_word() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeepaliveHandle::open(dir.path());
        let started = first.report().last_contact;
        assert!(started > 0);
        let json = serde_json::to_vec(&Persisted { last_contact: 1000 }).unwrap();
        write_file_atomically(&dir.path().join(STATE_FILE), &json, 0o600).unwrap();
        let restarted = KeepaliveHandle::open(dir.path());
        assert_eq!(restarted.report().last_contact, 1000);
        assert!(restarted.since_last_word() > Duration::from_secs(1_000_000));
        restarted.touch();
        assert!(restarted.since_last_word() < Duration::from_secs(5));
        let touched = restarted.report().last_contact;
        assert_eq!(KeepaliveHandle::open(dir.path()).report().last_contact, touched);
    }
}
