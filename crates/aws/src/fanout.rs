//! Running independent AWS calls at once, with a named limit: one helper instead of a copy of
//! `buffer_unordered` per call site, so every limit has a name that says what it bounds.

use std::future::Future;

use futures_util::StreamExt;

/// How many tasks of one kind run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency(pub usize);

impl Concurrency {
    /// Regions worked on at once (networks, lookups, terminations): every region of a
    /// deployment, up to the 16 that cover AWS's commercial regions in use.
    pub const REGIONS: Concurrency = Concurrency(16);
    /// Capacity groups launching at once; each runs its own planner.
    pub const GROUPS: Concurrency = Concurrency(32);
    /// Fleet requests of one planner step in flight at once (one per zone).
    pub const FLEET_REQUESTS: Concurrency = Concurrency(16);
    /// Per-instance calls (tags) in flight at once; the client-side token buckets pace them.
    pub const INSTANCES: Concurrency = Concurrency(16);
}

/// Runs `tasks`, at most `limit` at a time; their results in the order they finished, or the
/// first error (the tasks still running are dropped).
pub async fn fan_out<T, E, F>(
    limit: Concurrency,
    tasks: impl IntoIterator<Item = F>,
) -> Result<Vec<T>, E>
where
    F: Future<Output = Result<T, E>>,
{
    // Collected before the first await: the iterator (and its closure) is not held across one,
    // so the returned future is `Send` whenever the tasks are.
    let tasks: Vec<F> = tasks.into_iter().collect();
    let mut running = futures_util::stream::iter(tasks).buffer_unordered(limit.0.max(1));
    let mut done = Vec::new();
    while let Some(result) = running.next().await {
        done.push(result?);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_result_comes_back_and_the_first_error_stops_the_rest() {
        let done: Result<Vec<u32>, String> =
            fan_out(Concurrency(2), (0..5).map(|i| async move { Ok(i) })).await;
        let mut done = done.unwrap();
        done.sort();
        assert_eq!(done, [0, 1, 2, 3, 4]);
        let failed: Result<Vec<u32>, String> = fan_out(
            Concurrency(1),
            (0..5).map(|i| async move { if i == 2 { Err(format!("task {i}")) } else { Ok(i) } }),
        )
        .await;
        assert_eq!(failed.unwrap_err(), "task 2");
    }
}
