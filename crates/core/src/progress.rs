//! Progress reporting for long work, without knowing how it is shown.
//!
//! The CLI draws bars (indicatif, on stderr, hidden when stderr is not a terminal); tests and
//! library users pass [`NoProgress`]. Each stage is also logged with `tracing`, so `-v` shows
//! the same story in text.

/// Starts stages of work.
pub trait Progress: Sync {
    /// A stage of `total` steps (0 when unknown), finished when the returned value drops.
    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage + '_>;
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
