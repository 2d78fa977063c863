//! What the cluster layer needs of its store, as one small trait: the
//! mirrored keys (relative to the prefix, named by
//! [`Keys`](crate::coordinator::etcd::keys::Keys)), their changes, fresh
//! reads, the spec writes, the owner's fenced endpoint write and leaving the
//! member list. [`EtcdStore`] is the real one (delegating to the etcd
//! coordinator, spec store and view); `memory` holds the in-memory one the
//! placement and Enable unit tests run on.
//!
//! Claims are not here: the manager makes them through its
//! [`Coordinator`](crate::coordinator::Coordinator) (acquire / check /
//! release with the fencing token), which the in-memory store implements
//! too.
//!
//! ```text
//!  api / placement / publish ──▶ dyn ClusterStore ──▶ EtcdStore ──▶ ClusterView, SpecStore, EtcdCoordinator
//!                                                 └─▶ memory::Replica (tests)
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use crate::coordinator::etcd::spec_doc::SpecTimes;
use crate::coordinator::etcd::specs::{SpecStore, SpecStoreError, StoredSpec};
use crate::coordinator::etcd::view::{Change, ClusterView, Entry};
use crate::coordinator::etcd::{EndpointDoc, EtcdCoordinator, FailureDoc};
use crate::coordinator::{CoordError, Coordinator};
use crate::spec::{ConsoleSpec, NodeId};

/// One replica's view of, and writes to, the cluster state.
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// This replica's id.
    fn replica(&self) -> &str;

    /// True while this replica may serve (and claim) consoles.
    fn serving(&self) -> watch::Receiver<bool>;

    /// The mirrored key (relative to the prefix), if present.
    fn get(&self, key: &str) -> Option<Entry>;

    /// Every mirrored key starting with `start`.
    fn range(&self, start: &str) -> Vec<(String, Entry)>;

    /// A change per key put or deleted in the mirror.
    fn subscribe(&self) -> broadcast::Receiver<Change>;

    /// Every key starting with one of `starts`, as of now (not lagging
    /// behind a write made through another replica).
    async fn read(&self, starts: &[&str]) -> Result<Vec<(String, Entry)>, CoordError>;

    /// Write `spec` with a cluster-wide port; returns what was stored.
    async fn put_spec(
        &self,
        spec: &ConsoleSpec,
        times: SpecTimes,
    ) -> Result<StoredSpec, SpecStoreError>;

    /// Move a spec whose port the service chose (`port_auto`) to the
    /// lowest free port `usable` accepts; `None` when the spec changed since
    /// `stored` was read (see [`SpecStore::move_port`]).
    async fn move_port(
        &self,
        stored: &StoredSpec,
        times: SpecTimes,
        usable: &(dyn Fn(u16) -> bool + Send + Sync),
    ) -> Result<Option<StoredSpec>, SpecStoreError>;

    /// Remove the spec (its port stays reserved).
    async fn delete_spec(&self, node: &NodeId) -> Result<bool, SpecStoreError>;

    /// A spec key's value, opened.
    fn decode_spec(
        &self,
        node: &NodeId,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<StoredSpec, SpecStoreError>;

    /// Write (or, with `None`, delete) the node's endpoint only while its
    /// owner key is still the claim `token` held under our lease; false when
    /// fenced.
    async fn publish_endpoint(
        &self,
        node: &NodeId,
        token: i64,
        doc: Option<&EndpointDoc>,
    ) -> Result<bool, CoordError>;

    /// Record (or, with `None`, clear) why this replica's claim of `node`
    /// could not start its console (bound to our lease).
    async fn note_failure(&self, node: &NodeId, doc: Option<&FailureDoc>)
        -> Result<(), CoordError>;

    /// Leave the member list (placement ranks the others first).
    async fn leave(&self) -> Result<(), CoordError>;

    /// Stop the store's own tasks (the etcd mirror), waiting at most `bound`;
    /// false if they had not ended by then.
    async fn stop(&self, _bound: Duration) -> bool {
        true
    }
}

/// [`ClusterStore`] on etcd.
pub struct EtcdStore {
    pub coordinator: Arc<EtcdCoordinator>,
    pub specs: SpecStore,
    pub view: ClusterView,
}

#[async_trait]
impl ClusterStore for EtcdStore {
    fn replica(&self) -> &str {
        self.coordinator.replica_id()
    }

    fn serving(&self) -> watch::Receiver<bool> {
        self.coordinator.serving()
    }

    fn get(&self, key: &str) -> Option<Entry> {
        self.view.get(key)
    }

    fn range(&self, start: &str) -> Vec<(String, Entry)> {
        self.view.range(start)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.view.subscribe()
    }

    async fn read(&self, starts: &[&str]) -> Result<Vec<(String, Entry)>, CoordError> {
        let read = self.view.read(starts).await;
        read.map_err(|e| CoordError::Etcd(e.to_string()))
    }

    async fn put_spec(
        &self,
        spec: &ConsoleSpec,
        times: SpecTimes,
    ) -> Result<StoredSpec, SpecStoreError> {
        self.specs.put(spec, times).await
    }

    async fn move_port(
        &self,
        stored: &StoredSpec,
        times: SpecTimes,
        usable: &(dyn Fn(u16) -> bool + Send + Sync),
    ) -> Result<Option<StoredSpec>, SpecStoreError> {
        self.specs.move_port(stored, times, usable).await
    }

    async fn delete_spec(&self, node: &NodeId) -> Result<bool, SpecStoreError> {
        self.specs.delete(node).await
    }

    fn decode_spec(
        &self,
        node: &NodeId,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<StoredSpec, SpecStoreError> {
        self.specs.decode(node, value, mod_revision)
    }

    async fn publish_endpoint(
        &self,
        node: &NodeId,
        token: i64,
        doc: Option<&EndpointDoc>,
    ) -> Result<bool, CoordError> {
        self.coordinator.publish_endpoint(node, token, doc).await
    }

    async fn note_failure(
        &self,
        node: &NodeId,
        doc: Option<&FailureDoc>,
    ) -> Result<(), CoordError> {
        self.coordinator.note_failure(node, doc).await
    }

    async fn leave(&self) -> Result<(), CoordError> {
        self.coordinator.leave().await
    }

    async fn stop(&self, bound: Duration) -> bool {
        self.view.stop(bound).await
    }
}
