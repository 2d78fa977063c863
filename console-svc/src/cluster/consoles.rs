//! [`Consoles`] on cluster state: what the gRPC layer calls with etcd.
//! Enable/Disable/Get/List are [`api`](super::api)'s, GetConsoleLog
//! [`forward`](super::forward)'s; a watch follows the mirror's changes.

use async_trait::async_trait;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::api::{snapshot, RELATIVE};
use super::Cluster;
use crate::backend::LogSnapshot;
use crate::consoles::{self, ConsoleWatch, Consoles};
use crate::coordinator::etcd::view::Change;
use crate::error::ConsoleError;
use crate::manager::{ConsoleInfo, ConsoleState};
use crate::spec::{ConsoleSpec, NodeId};

#[async_trait]
impl Consoles for Cluster {
    async fn enable(&self, spec: ConsoleSpec) -> Result<ConsoleInfo, ConsoleError> {
        Cluster::enable(self, spec).await
    }

    async fn disable(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        Cluster::disable(self, node).await
    }

    async fn get(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        Cluster::get(self, node).await
    }

    async fn list(&self) -> Result<Vec<ConsoleInfo>, ConsoleError> {
        Cluster::list(self).await
    }

    fn watch(&self) -> Box<dyn ConsoleWatch> {
        Box::new(ClusterWatch {
            changes: self.inner.store.subscribe(),
            stopping: self.manager().stopping(),
            cluster: self.clone(),
        })
    }

    async fn log(
        &self,
        node: &NodeId,
        max_bytes: u32,
        forwarded_by: Option<&str>,
    ) -> Result<LogSnapshot, ConsoleError> {
        Cluster::log(self, node, max_bytes, forwarded_by).await
    }

    async fn drain(&self) -> Result<(String, usize), ConsoleError> {
        let released = Cluster::drain(self).await;
        Ok((self.replica().to_owned(), released))
    }
}

/// The mirror's changes, subscribed before the first snapshot; one
/// [`consoles::Change::Console`] per node touched.
struct ClusterWatch {
    cluster: Cluster,
    changes: broadcast::Receiver<Change>,
    stopping: CancellationToken,
}

#[async_trait]
impl ConsoleWatch for ClusterWatch {
    fn snapshot(&mut self) -> Vec<ConsoleInfo> {
        self.cluster.infos(&snapshot(&self.cluster))
    }

    async fn next(&mut self) -> consoles::Change {
        loop {
            let change = tokio::select! {
                // A stop ends the stream even with changes still queued.
                biased;
                _ = self.stopping.cancelled() => return consoles::Change::Closed,
                c = self.changes.recv() => c,
            };
            let node = match change {
                Ok(Change::Key(key)) => RELATIVE.node_of(&key),
                Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => {
                    return consoles::Change::Resync
                }
                Err(RecvError::Closed) => return consoles::Change::Closed,
            };
            let Some(node) = node else { continue };
            let info = self
                .cluster
                .info(&node)
                .unwrap_or_else(|| self.cluster.blank(&node, ConsoleState::Disabled));
            return consoles::Change::Console(info);
        }
    }
}
