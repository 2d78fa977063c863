//! Several replicas, one cluster: the API every replica serves and the
//! placement loop that decides who runs which console, both on etcd.
//!
//! Used when `[etcd] endpoints` is set; without it the gRPC layer's
//! [`Consoles`](crate::consoles::Consoles) is the local [`ConsoleManager`]. Per node, the keys are
//! `consoles/<node>/spec` (desired, written by any replica), `owner` (the
//! claim, bound to the owner's lease) and `endpoint` (published by the owner
//! in a transaction fenced by the claim's token). What a caller sees:
//!
//! ```text
//!   spec, no owner ──claim (rank r after r × step)──▶ owner, no endpoint   STARTING
//!        ▲                                                 │ console up
//!        │ owner's lease expires / released                ▼
//!        └───────────────────────────────────────── owner + endpoint       RUNNING / FAILED
//!   no spec, port still reserved ─────────────────────────────────────────  DISABLED
//! ```
//!
//! - [`api`]: Enable/Disable/Get/List on cluster state; `consoles.rs`: the
//!   [`Consoles`](crate::consoles::Consoles) trait on it (Watch included).
//! - [`forward`]: GetConsoleLog on any replica (forwarded to the owner).
//! - [`placement`]: rendezvous ranking and the claim loop; ownership is sticky.
//! - [`publish`]: the owner's endpoint keys follow its manager's events.
//! - [`store`]: the narrow store all of them run on (etcd, or in memory in
//!   unit tests).

pub mod api;
mod consoles;
pub mod forward;
pub mod placement;
pub mod publish;
pub mod store;

#[cfg(test)]
mod memory;
#[cfg(test)]
mod port_move_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::store::{ClusterStore, EtcdStore};
use crate::coordinator::etcd::specs::SpecStore;
use crate::coordinator::etcd::EtcdCoordinator;
use crate::manager::ConsoleManager;
use crate::tasks::Tasks;

/// The longest a drain waits for etcd to drop this replica from the member
/// list; without an answer the key goes with the lease.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Timing of the cluster layer.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// How long Enable waits for the owner's endpoint.
    pub enable_timeout: Duration,
    /// Claim delay per rank: rank r claims an unowned console after r × step.
    pub claim_step: Duration,
    /// How calls forwarded to another replica connect.
    pub peer_tls: forward::PeerTls,
}

/// The cluster layer of one replica; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ClusterStore>,
    manager: ConsoleManager,
    settings: ClusterSettings,
    /// Placement (and its claims) and publish; stopped by the `cancel` given
    /// to [`Cluster::with_store`].
    tasks: Tasks,
    /// Cancelled by drain: no more claims.
    taking: CancellationToken,
    /// Opened specs by node, with the revision they were read at: placement
    /// looks at every spec on every change, opening each once is enough.
    opened: api::SpecCache,
}

impl Cluster {
    /// Start mirroring, placing and publishing until `cancel`.
    pub fn start(
        coordinator: Arc<EtcdCoordinator>,
        specs: SpecStore,
        manager: ConsoleManager,
        settings: ClusterSettings,
        cancel: CancellationToken,
    ) -> Self {
        let view = coordinator.view(cancel.clone());
        let store = EtcdStore {
            coordinator,
            specs,
            view,
        };
        Self::with_store(Arc::new(store), manager, settings, cancel)
    }

    /// Start placing and publishing on `store` until `cancel`.
    pub fn with_store(
        store: Arc<dyn ClusterStore>,
        manager: ConsoleManager,
        settings: ClusterSettings,
        cancel: CancellationToken,
    ) -> Self {
        let tasks = Tasks::new(&cancel);
        let cluster = Self {
            inner: Arc::new(Inner {
                store,
                manager,
                settings,
                taking: tasks.token().child_token(),
                tasks,
                opened: api::SpecCache::default(),
            }),
        };
        placement::spawn(cluster.clone());
        publish::spawn(cluster.clone());
        cluster
    }

    /// Stop placing, claiming, publishing and mirroring; wait (at most
    /// `bound` for each) until they ended. False if some had not.
    pub async fn stop(&self, bound: Duration) -> bool {
        let tasks = self.inner.tasks.stop(bound).await;
        let store = self.inner.store.stop(bound).await;
        tasks && store
    }

    pub fn replica(&self) -> &str {
        self.inner.store.replica()
    }

    pub fn manager(&self) -> &ConsoleManager {
        &self.inner.manager
    }

    /// Stop claiming consoles and leave the member list; then release every
    /// console so another replica claims it at once. The lease stays until
    /// the caller revokes it.
    /// Returns how many consoles were released.
    pub async fn drain(&self) -> usize {
        self.inner.taking.cancel();
        match tokio::time::timeout(LEAVE_TIMEOUT, self.inner.store.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not leave the member list"),
            Err(_) => tracing::warn!(timeout = ?LEAVE_TIMEOUT, "etcd did not answer the leave"),
        }
        let manager = &self.inner.manager;
        let owned = manager
            .list()
            .iter()
            .filter(|i| manager.ownership(&i.node).is_some())
            .count();
        manager.release_all().await;
        tracing::info!(released = owned, "drained");
        owned
    }

    /// Resolves once this replica is drained (it stays drained until restarted).
    pub async fn drained(&self) {
        self.inner.taking.cancelled().await
    }
}
