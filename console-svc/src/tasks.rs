//! [`Tasks`]: the handle every long-lived task of the service is owned by.
//!
//! A `Tasks` is one node of the service's `CancellationToken` tree (its stop
//! signal) and a tracker of the tasks spawned on it, so that its owner can
//! stop them and know they ended:
//!
//! ```text
//!  run ─┬─ shutdown (from main) ─┬─ manager: fencing follower, supervisors
//!       │                        └─ health reporter, stopper
//!       └─ coordination (stopped last) ─┬─ etcd: lease keeper (revokes), serving follower
//!                                       ├─ cluster view follower
//!                                       └─ cluster: placement (+ its claims), publish
//! ```
//!
//! Owners: `server::run`, `EtcdCoordinator`, `ClusterView`, `Cluster`,
//! `ConsoleManager`. Backends own their per-console tasks in their
//! `RunningConsole` handles.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Tasks that stop when `parent` is cancelled, or on [`Tasks::stop`]
    /// (which signals this node of the tree only, not `parent`).
    pub fn new(parent: &CancellationToken) -> Self {
        Self {
            stop: parent.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// The stop signal the tasks watch.
    pub fn token(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Signal stop, then wait up to `bound` for every task to end. False if
    /// some did not (they are left to end on their own, or with the runtime).
    pub async fn stop(&self, bound: Duration) -> bool {
        self.stop.cancel();
        self.join(bound).await
    }

    /// Wait up to `bound` for every task to end, without signalling them.
    pub async fn join(&self, bound: Duration) -> bool {
        self.tracker.close();
        let ended = tokio::time::timeout(bound, self.tracker.wait()).await;
        // Reopened: a handle stopped once may still be handed a task (a
        // claim racing the stop), which then ends at once on the signal.
        self.tracker.reopen();
        ended.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_signals_and_waits_for_every_task_within_the_bound() {
        let root = CancellationToken::new();
        let tasks = Tasks::new(&root);
        for i in 0..3u64 {
            let stop = tasks.token().clone();
            tasks.spawn(async move {
                stop.cancelled().await;
                // Winding down takes a while.
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
            });
        }
        let child = Tasks::new(tasks.token());
        let stop = child.token().clone();
        child.spawn(async move { stop.cancelled().await });
        let t0 = tokio::time::Instant::now();
        assert!(tasks.stop(Duration::from_secs(1)).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        assert!(
            child.token().is_cancelled(),
            "a child stops with its parent"
        );
        assert!(child.join(Duration::from_secs(1)).await);
        assert!(!root.is_cancelled(), "a stop signals its own node only");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_signal_costs_the_bound_not_more() {
        let tasks = Tasks::new(&CancellationToken::new());
        tasks.spawn(std::future::pending::<()>());
        let t0 = tokio::time::Instant::now();
        assert!(!tasks.stop(Duration::from_secs(2)).await);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }
}
