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

pub mod etcd;
pub mod local;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::spec::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("this replica is not serving: {0}")]
    NotServing(String),
    #[error("node {node} is owned by replica {owner}")]
    Fenced { node: String, owner: String },
    #[error("etcd: {0}")]
    Etcd(String),
}

/// Proof of ownership of one node's console. `token` grows with every new
/// claim of the same node (etcd: the owner key's create revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub node: NodeId,
    pub token: i64,
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
}

/// One console's claim plus the coordinator that can confirm it; backends
/// call [`Fence::check`] before they touch the BMC.
#[derive(Clone)]
pub struct Fence {
    coordinator: std::sync::Arc<dyn Coordinator>,
    ownership: Ownership,
}

impl Fence {
    pub fn new(coordinator: std::sync::Arc<dyn Coordinator>, ownership: Ownership) -> Self {
        Self {
            coordinator,
            ownership,
        }
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub async fn check(&self) -> Result<(), CoordError> {
        self.coordinator.check(&self.ownership).await
    }
}
