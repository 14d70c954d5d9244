//! Test seams: places where the agent's own tests make a component die, to check that the agent
//! notices and goes down (see `components`).
//!
//! The places are in every build, but only the `failpoints` cargo feature can arm them, through
//! `start_with_failpoints` and `run_with_failpoints`. Only the agent's own tests and examples
//! enable it (the crate is its own dev-dependency with that feature), and nothing a user can
//! reach arms one: no flag, environment variable, file or request, and the `flotilla` command
//! never calls those functions.

/// A way to make a component die.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// The supervisor panics when it is ordered to restart the binary (a `Restart` request).
    SupervisorPanicsOnRestart,
    /// The API server's accept loop panics when it accepts a connection.
    ApiServerPanicsOnAccept,
    /// The metrics server's accept loop returns when it accepts a connection.
    MetricsServerReturnsOnAccept,
}

/// The armed failpoints of one agent: none, unless the `failpoints` feature armed some.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failpoints(Vec<Failpoint>);

impl Failpoints {
    /// Arms `points`.
    #[cfg(feature = "failpoints")]
    pub(crate) fn armed(points: &[Failpoint]) -> Failpoints {
        Failpoints(points.to_vec())
    }

    /// Whether `point` is armed; always false without the `failpoints` feature.
    pub(crate) fn is_armed(&self, point: Failpoint) -> bool {
        cfg!(feature = "failpoints") && self.0.contains(&point)
    }
}
