//! The tasks the agent cannot do without, and what happens when one of them dies. The
//! components themselves, in the order they start, are in `life`.
//!
//! The supervisor, the lifecycle, the API server and the metrics server run for the agent's
//! whole life; a rollout runs until it has a verdict. Each is spawned through
//! [`Components::spawn`], which catches a panic and notices a return. A component that panics,
//! or a whole-life component that returns before the agent was told to stop, is *dead*, and a
//! dead component takes the agent down: [`crate::run`] writes why into the binary's log and the
//! agent's own, stops what still runs, and returns [`crate::AgentError::ComponentDied`], so the
//! process exits non-zero. Under systemd the agent is then restarted and restores the installed
//! version; under the local provider the machine shows as stopped.
//!
//! An agent that went on would be worse than none: without its supervisor it answers for a
//! binary nobody supervises (the binary itself dies with the supervisor, whose spawner thread
//! carries its parent-death signal), and without a server it looks alive but cannot be
//! reached.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long a component is meant to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// As long as the agent: returning before the agent was told to stop is dying.
    Agent,
    /// Until its work is done: only a panic is dying.
    UntilDone,
}

/// A component that died: which one, and how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {component} {cause}")]
pub struct ComponentDeath {
    /// `supervisor`, `lifecycle`, `rehearsal IMDS`, `API server`, `metrics server`, `rollout of
    /// version …`.
    pub component: String,
    /// `panicked: <message>`, or `ended while the agent was running`.
    pub cause: String,
}

/// Spawns components and reports their deaths to whoever holds the receiver.
#[derive(Clone, Debug)]
pub(crate) struct Components {
    deaths: mpsc::UnboundedSender<ComponentDeath>,
    /// True once the agent was told to stop: whole-life components may return then.
    stopping: watch::Receiver<bool>,
}

impl Components {
    /// Components of an agent that is stopping once `stopping` turns true; deaths arrive on the
    /// returned receiver.
    pub(crate) fn new(
        stopping: watch::Receiver<bool>,
    ) -> (Components, mpsc::UnboundedReceiver<ComponentDeath>) {
        let (deaths, receiver) = mpsc::unbounded_channel();
        (Components { deaths, stopping }, receiver)
    }

    /// Runs `future` as a task named `component`; its panic, or its return when `lifetime`
    /// says it should not have returned, is reported as a death. Aborting the task is not a
    /// death.
    pub(crate) fn spawn(
        &self,
        component: impl Into<String>,
        lifetime: Lifetime,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let component = component.into();
        let deaths = self.deaths.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            // The agent's shared state is plain data behind mutexes that tolerate poisoning,
            // and a dead component ends the agent: nothing observes a broken invariant.
            let cause = match AssertUnwindSafe(future).catch_unwind().await {
                Ok(()) if lifetime == Lifetime::UntilDone || *stopping.borrow() => return,
                Ok(()) => "ended while the agent was running".to_owned(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            // Nobody listening means the agent is gone already.
            let _ = deaths.send(ComponentDeath { component, cause });
        })
    }
}

/// The message a panic carries (`panic!` makes it a `&str` or a `String`).
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_and_early_returns_are_deaths_and_the_rest_is_not() {
        let (stopping, stopping_receiver) = watch::channel(false);
        let (components, mut deaths) = Components::new(stopping_receiver);
        let finished = |task: JoinHandle<()>| async move { task.await.expect("not a panic") };

        finished(components.spawn("rollout", Lifetime::UntilDone, async {})).await;
        let code = 7;
        finished(components.spawn("supervisor", Lifetime::Agent, async move {
            panic!("boom {code}");
        }))
        .await;
        finished(components.spawn("API server", Lifetime::Agent, async {})).await;
        finished(components.spawn("rollout", Lifetime::UntilDone, async {
            panic!("static");
        }))
        .await;
        let aborted = components.spawn("metrics server", Lifetime::Agent, std::future::pending());
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
        stopping.send(true).unwrap();
        finished(components.spawn("metrics server", Lifetime::Agent, async {})).await;

        let mut reported = Vec::new();
        while let Ok(death) = deaths.try_recv() {
            reported.push(death.to_string());
        }
        assert_eq!(
            reported,
            [
                "the supervisor panicked: boom 7",
                "the API server ended while the agent was running",
                "the rollout panicked: static",
            ]
        );
    }
}
