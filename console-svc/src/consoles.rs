//! [`Consoles`]: the console API as the gRPC layer sees it, one trait for
//! both modes. [`grpc`](crate::grpc) holds one `Arc<dyn Consoles>` and
//! writes each handler (WatchConsoles included) once.
//!
//! - Without etcd the local [`ConsoleManager`](crate::manager::ConsoleManager)
//!   implements it (`manager/consoles.rs`): this replica's consoles.
//! - With etcd the [`Cluster`](crate::cluster::Cluster) does
//!   (`cluster/consoles.rs`): any replica answers from cluster state.
//!
//! A watch is a [`ConsoleWatch`]: subscribed when made, so that nothing
//! between its snapshot and its first change is lost.

use async_trait::async_trait;

use crate::backend::LogSnapshot;
use crate::error::ConsoleError;
use crate::manager::ConsoleInfo;
use crate::spec::{ConsoleSpec, NodeId};

#[async_trait]
pub trait Consoles: Send + Sync + 'static {
    /// Start (or keep) a node's console; returns once it is served.
    async fn enable(&self, spec: ConsoleSpec) -> Result<ConsoleInfo, ConsoleError>;

    /// Stop a node's console; its port stays reserved for it.
    async fn disable(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError>;

    async fn get(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError>;

    /// Every console, sorted by node id.
    async fn list(&self) -> Result<Vec<ConsoleInfo>, ConsoleError>;

    /// Changes from now on; see [`ConsoleWatch`].
    fn watch(&self) -> Box<dyn ConsoleWatch>;

    /// The newest `max_bytes` (0: all) of a console's log. `forwarded_by`
    /// names the replica that forwarded the request, if one did.
    async fn log(
        &self,
        node: &NodeId,
        max_bytes: u32,
        forwarded_by: Option<&str>,
    ) -> Result<LogSnapshot, ConsoleError>;

    /// Stop taking consoles and hand this replica's to the others: the
    /// replica's name and how many it released.
    async fn drain(&self) -> Result<(String, usize), ConsoleError>;
}

/// What a watch reports after its snapshot.
#[derive(Debug)]
pub enum Change {
    /// A console changed (a removed one is reported DISABLED).
    Console(ConsoleInfo),
    /// Changes were missed (the watcher fell behind, or the mirror
    /// resynced): take a new snapshot.
    Resync,
    /// The service is stopping (or the source is gone): end the stream.
    Closed,
}

/// One watcher's view: a snapshot, then changes.
#[async_trait]
pub trait ConsoleWatch: Send {
    /// Every console as of now, sorted by node id.
    fn snapshot(&mut self) -> Vec<ConsoleInfo>;

    async fn next(&mut self) -> Change;
}
