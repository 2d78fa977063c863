//! Following the coordinator's verdict on whether this replica may serve.
//!
//! ```text
//!  serving ──lease lost──▶ fenced: every console stopped (listeners closed,
//!     ▲                    SOL ended), state FAILED, spec kept
//!     └──── lease regained: Local: the fenced consoles are enabled again
//!                           Cluster: left to placement, which claims each
//!                           in rank order (rank r after r × claim_step)
//! ```
//!
//! The verdict is a watch, which shows only its latest value: a flip to
//! false and back that we did not see in between still wakes us, and is
//! handled as both (fence, then resume). The coordinator therefore only
//! notifies on real changes.
//!
//! With the local coordinator nothing ever changes here; with etcd the
//! lease keeper turns `serving` off before the lease could expire at the
//! server, so this replica is quiet before another one may claim its nodes.

use tracing::{info, warn};

use super::{ConsoleManager, ConsoleState, Placement};
use crate::spec::ConsoleSpec;

/// Why a fenced console is FAILED.
pub(super) const FENCED: &str = "this replica lost its coordination lease and stopped serving; \
it resumes when the lease is back";

pub(super) fn spawn(manager: ConsoleManager) {
    let mut serving = manager.inner.coordinator.serving();
    let cancel = manager.inner.cancel.clone();
    // Read now, not when the task first runs: a change in between is then
    // seen as a change.
    let mut was = *serving.borrow_and_update();
    let tasks = manager.inner.tasks.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = serving.changed() => if changed.is_err() { return },
            }
            let now = *serving.borrow_and_update();
            match (was, now) {
                (false, false) => continue,
                (true, false) => manager.fence_all().await,
                (false, true) => manager.resume_fenced().await,
                // Notified, yet still serving: the value went false and back
                // before we looked (a lost lease and its successor). What we
                // run was claimed under the lost lease: stop it, then resume.
                (true, true) => {
                    manager.fence_all().await;
                    manager.resume_fenced().await;
                }
            }
            was = now;
        }
    });
}

impl ConsoleManager {
    /// Stop every running console at once; keep specs to resume them.
    async fn fence_all(&self) {
        warn!("not serving: stopping every console");
        crate::metrics::get().fenced();
        let slots = self.slots();
        let stops = slots.iter().map(|slot| async move {
            let _op = slot.op.lock().await;
            if slot.state.lock().expect("slot lock").running.is_none() {
                return;
            }
            self.stop_running(slot).await;
            self.update(slot, |st| {
                st.fenced = true;
                st.info.state = ConsoleState::Failed;
                st.info.endpoint = None;
                st.info.last_error = Some(FENCED.into());
            });
        });
        futures::future::join_all(stops).await;
    }

    /// Serving again: the fenced consoles come back here (local), or by
    /// placement like any unowned console (cluster), so a rejoining replica
    /// does not grab them ahead of better-ranked replicas.
    async fn resume_fenced(&self) {
        let specs: Vec<ConsoleSpec> = self
            .slots()
            .into_iter()
            .filter_map(|slot| {
                let mut st = slot.state.lock().expect("slot lock");
                let fenced = std::mem::take(&mut st.fenced);
                st.spec.clone().filter(|_| fenced)
            })
            .collect();
        if self.inner.placement == Placement::Cluster {
            info!(
                consoles = specs.len(),
                "serving again: fenced consoles left to placement"
            );
            return;
        }
        info!(consoles = specs.len(), "serving again: resuming consoles");
        for spec in specs {
            let node = spec.node.clone();
            if let Err(e) = self.enable(spec).await {
                warn!(%node, error = %e, "console did not resume");
            }
        }
    }
}
