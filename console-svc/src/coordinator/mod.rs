//! Ownership of consoles across replicas.
//!
//! The manager asks its `Coordinator` before it serves a node and tells it
//! when it stops. Two implementations are planned:
//!
//! - [`local::LocalCoordinator`] (default): one replica owns everything.
//! - [`etcd::EtcdCoordinator`]: one lease per replica, an owner key per console created
//!   only if absent and bound to that lease; the key's create revision is
//!   the fencing token.
//!
//! ```text
//!            acquire ok                 release / lease lost
//!  unowned ──────────────▶ owned(token) ──────────────────────▶ unowned
//!                            │  check(token) before every SOL activation
//! ```
//!
//! `serving()` turns false when this replica must stop serving every console
//! (for etcd: its lease could not be renewed); the manager stops all consoles
//! when it does.
//!
//! [`Fence::permit`] is the synchronous gate every BMC action passes first
//! (see [`gate`]): the claim's lease must be this replica's current one and
//! before its fence deadline at that instant.

pub mod etcd;
pub mod gate;
pub mod local;

use async_trait::async_trait;
use tokio::sync::watch;

use self::gate::{BmcPermit, LeaseGate};
use crate::spec::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("this replica is not serving: {0}")]
    NotServing(String),
    #[error("node {node} is owned by replica {owner}")]
    Fenced { node: String, owner: String },
    #[error("etcd: {0}")]
    Etcd(String),
    /// The BMC gate is closed: this replica may not act on a BMC now.
    #[error("this replica's lease is past its fence deadline, so it takes no BMC action: {0}")]
    PastDeadline(String),
}

/// Proof of ownership of one node's console. `token` grows with every new
/// claim of the same node (etcd: the owner key's create revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub node: NodeId,
    pub token: i64,
    /// The lease the claim is bound to (0: the local coordinator's).
    pub lease: i64,
}

#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// This replica's name, reported as the console's owner.
    fn replica_id(&self) -> &str;

    /// True while this replica may serve consoles.
    fn serving(&self) -> watch::Receiver<bool>;

    /// Claim `node` for this replica.
    async fn acquire(&self, node: &NodeId) -> Result<Ownership, CoordError>;

    /// Confirm the claim still holds (before touching the BMC).
    async fn check(&self, ownership: &Ownership) -> Result<(), CoordError>;

    /// Give the claim up.
    async fn release(&self, ownership: &Ownership) -> Result<(), CoordError>;

    /// The BMC gate (always open unless the coordinator has a lease).
    fn gate(&self) -> LeaseGate {
        LeaseGate::always()
    }
}

/// One console's claim plus the coordinator that can confirm it; backends
/// call [`Fence::check`] (etcd round trip) before an activation and
/// [`Fence::permit`] (the clock) immediately before every BMC action.
#[derive(Clone)]
pub struct Fence {
    coordinator: std::sync::Arc<dyn Coordinator>,
    ownership: Ownership,
    gate: LeaseGate,
}

impl Fence {
    pub fn new(coordinator: std::sync::Arc<dyn Coordinator>, ownership: Ownership) -> Self {
        let gate = coordinator.gate();
        Self {
            coordinator,
            ownership,
            gate,
        }
    }

    /// May this claim act on the BMC at this instant? (No I/O.)
    pub fn permit(&self) -> Result<BmcPermit, CoordError> {
        self.gate.permit(self.ownership.lease)
    }

    /// The replica this claim belongs to.
    pub fn replica_id(&self) -> &str {
        self.coordinator.replica_id()
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub async fn check(&self) -> Result<(), CoordError> {
        self.coordinator.check(&self.ownership).await
    }
}
