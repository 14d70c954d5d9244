//! Progress reporting for long work, without knowing how it is shown.
//!
//! The CLI draws bars (indicatif, on stderr, hidden when stderr is not a terminal); tests and
//! library users pass [`NoProgress`]. Each stage is also logged with `tracing`, so `-v` shows
//! the same story in text.

/// Starts stages of work, and hears of the checkpoints a workflow passes.
pub trait Progress: Sync {
    /// A stage of `total` steps (0 when unknown), finished when the returned value drops.
    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage + '_>;

    /// A line for the person at the terminal (not data): what is about to happen.
    fn notice(&self, text: &str) {
        tracing::info!("{text}");
    }

    /// The workflow has just done what `point` names (see [`checkpoints`]). Nothing to show;
    /// the CLI uses it to stop itself at a chosen point in its crash tests.
    fn checkpoint(&self, point: &str) {
        tracing::debug!(point, "checkpoint");
    }
}

/// The checkpoints workflows and providers pass, in the order they pass them. Each names a
/// moment after which a crash leaves work half done, which the command must converge from when
/// run again.
pub mod checkpoints {
    /// `create`: the deployment's metadata and CA are on disk; nothing launched yet.
    pub const CREATE_RECORDED: &str = "create:recorded";
    /// `create`: every machine was launched and its agent process started (not yet answering).
    pub const CREATE_LAUNCHED: &str = "create:launched";
    /// `create` (AWS): a fleet request answered with instances, before they are named in the
    /// provider's records.
    pub const CREATE_FLEET_ANSWERED: &str = "create:fleet-answered";
    /// `create`: the first machine's agent accepted its version: a rollout is under way.
    pub const CREATE_ROLLOUT_STARTED: &str = "create:rollout-started";
    /// `update`: the first batch's first machine accepted the new version.
    pub const UPDATE_ROLLOUT_STARTED: &str = "update:rollout-started";
    /// `update`: the machines the spec adds were launched (their agents wait for identities).
    pub const UPDATE_LAUNCHED: &str = "update:launched";
    /// `update`: the machines the spec removes were drained, not retired yet.
    pub const UPDATE_DRAINED: &str = "update:drained";
    /// `destroy`: the deployment is marked `destroying`; nothing removed yet.
    pub const DESTROY_MARKED: &str = "destroy:marked";
    /// `destroy` (local provider): every agent and binary is stopped; directories and address
    /// leases are still there.
    pub const DESTROY_AGENTS_STOPPED: &str = "destroy:agents-stopped";

    /// Every checkpoint.
    pub const ALL: &[&str] = &[
        CREATE_RECORDED,
        CREATE_FLEET_ANSWERED,
        CREATE_LAUNCHED,
        CREATE_ROLLOUT_STARTED,
        UPDATE_LAUNCHED,
        UPDATE_ROLLOUT_STARTED,
        UPDATE_DRAINED,
        DESTROY_MARKED,
        DESTROY_AGENTS_STOPPED,
    ];
}

/// One stage of work under way.
pub trait Stage: Send + Sync {
    /// `steps` more steps are done.
    fn advance(&self, steps: u64);
    /// A short note on what the stage is doing now.
    fn note(&self, message: &str);
}

/// Shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

struct Silent;

impl Stage for Silent {
    fn advance(&self, _steps: u64) {}
    fn note(&self, _message: &str) {}
}

impl Progress for NoProgress {
    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage + '_> {
        tracing::debug!(stage = label, total, "stage");
        Box::new(Silent)
    }
}
