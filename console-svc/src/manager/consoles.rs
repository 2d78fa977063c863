//! The local manager facade: [`Consoles`] on this replica's own consoles
//! (no etcd). The gRPC layer calls it through `Arc<dyn Consoles>`.

use async_trait::async_trait;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{ConsoleInfo, ConsoleManager};
use crate::backend::LogSnapshot;
use crate::consoles::{Change, ConsoleWatch, Consoles};
use crate::error::ConsoleError;
use crate::spec::{ConsoleSpec, NodeId};

#[async_trait]
impl Consoles for ConsoleManager {
    async fn enable(&self, spec: ConsoleSpec) -> Result<ConsoleInfo, ConsoleError> {
        ConsoleManager::enable(self, spec).await
    }

    async fn disable(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        ConsoleManager::disable(self, node).await
    }

    async fn get(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        ConsoleManager::get(self, node)
    }

    async fn list(&self) -> Result<Vec<ConsoleInfo>, ConsoleError> {
        Ok(ConsoleManager::list(self))
    }

    fn watch(&self) -> Box<dyn ConsoleWatch> {
        Box::new(LocalWatch {
            events: self.subscribe(),
            stopping: self.stopping(),
            manager: self.clone(),
        })
    }

    /// No peers to forward to: `forwarded_by` does not matter here.
    async fn log(
        &self,
        node: &NodeId,
        max_bytes: u32,
        _forwarded_by: Option<&str>,
    ) -> Result<LogSnapshot, ConsoleError> {
        ConsoleManager::log(self, node, max_bytes as usize)
    }

    async fn drain(&self) -> Result<(String, usize), ConsoleError> {
        Err(ConsoleError::Unsupported(
            "drain needs etcd coordination ([etcd] endpoints): without it there is no other replica"
                .into(),
        ))
    }
}

/// The manager's events, subscribed before the first snapshot.
struct LocalWatch {
    manager: ConsoleManager,
    events: broadcast::Receiver<ConsoleInfo>,
    stopping: CancellationToken,
}

#[async_trait]
impl ConsoleWatch for LocalWatch {
    fn snapshot(&mut self) -> Vec<ConsoleInfo> {
        self.manager.list()
    }

    async fn next(&mut self) -> Change {
        tokio::select! {
            // A stop ends the stream even with changes still queued.
            biased;
            _ = self.stopping.cancelled() => Change::Closed,
            ev = self.events.recv() => match ev {
                Ok(info) => Change::Console(info),
                Err(RecvError::Lagged(_)) => Change::Resync,
                Err(RecvError::Closed) => Change::Closed,
            },
        }
    }
}
