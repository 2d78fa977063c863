//! Desired console state in etcd: `consoles/<node>/spec` plus the
//! cluster-wide port reservation `ports/<port>` → node.
//!
//! A spec is written in one transaction with its port reservation, so two
//! replicas enabling different nodes at once can never hand out the same
//! port, and a node keeps its port whichever replica serves it:
//!
//! ```text
//!  put(spec) ─▶ read ports/* ─▶ choose (requested, else held, else lowest free)
//!     ▲                              │
//!     │ someone raced us             ▼
//!     └──────────── txn: ports/<p> absent (or already = node) ─▶ put ports/<p>, put spec
//!                                    [old ports/<q> = node ─▶ delete it, when the port moved]
//! ```
//!
//! A port the service chose (the request named none, the node held none) is
//! marked `port_auto` in the spec; `move_port` moves such a spec to the
//! next free port its owner can bind (placement, when the chosen one is
//! busy on the owner's address), in one transaction that also checks the
//! spec is still the one the owner read.
//!
//! `delete` removes the spec only: like the local allocator, a disabled node
//! keeps its port reservation, so enabling it again gives it the same port.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tracing::debug;

use super::failover::EtcdClient;
use super::spec_doc::{self, SpecDocError, SpecPort, SpecTimes};
use super::Keys;
use crate::ports::{PortAllocator, PortError, PortRange};
use crate::seal::Sealer;
use crate::spec::{ConsoleSpec, NodeId};

/// How often `put` retries after losing a port race before giving up. Each
/// lost race means another writer's transaction landed, so writers make
/// progress; the bound only stops a livelock.
const PUT_ATTEMPTS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum SpecStoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Doc(#[from] SpecDocError),
    #[error("key {key}: {reason}")]
    BadKey { key: String, reason: String },
    #[error("port assignment for {0} kept racing with other writers; try again")]
    Contended(String),
}

/// A spec as stored, with the revision it was read or written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSpec {
    /// `requested_port` is the assigned port.
    pub spec: ConsoleSpec,
    pub port: u16,
    /// The service chose `port` (see [`SpecPort`]): it may move when busy.
    pub port_auto: bool,
    pub mod_revision: i64,
}

#[derive(Clone)]
pub struct SpecStore {
    client: EtcdClient,
    keys: Keys,
    sealer: Sealer,
    range: PortRange,
}

impl SpecStore {
    pub fn new(client: EtcdClient, prefix: &str, sealer: Sealer, range: PortRange) -> Self {
        Self {
            client,
            keys: Keys::new(prefix),
            sealer,
            range,
        }
    }

    /// Write `spec` with a cluster-wide port and the given times; returns
    /// what was stored.
    #[tracing::instrument(skip_all, fields(node = %spec.node))]
    pub async fn put(
        &self,
        spec: &ConsoleSpec,
        times: SpecTimes,
    ) -> Result<StoredSpec, SpecStoreError> {
        for attempt in 0..PUT_ATTEMPTS {
            let mut ports = PortAllocator::with_assignments(self.range.clone(), self.held().await?);
            let before = ports.current(&spec.node);
            // After a lost race, a random free port instead of the lowest,
            // so concurrent writers stop colliding on the same one.
            let wanted = match (spec.requested_port, before, attempt) {
                (None, None, 1..) => ports.random_free(jitter_seed()),
                _ => spec.requested_port,
            };
            let port = SpecPort {
                port: ports.assign(&spec.node, wanted)?,
                auto: spec.requested_port.is_none() && before.is_none(),
            };
            if let Some(revision) = self.put_txn(spec, before, port, times).await? {
                return Ok(StoredSpec::stored(spec, port, revision));
            }
            debug!(
                attempt,
                port = port.port,
                "lost a port race; reading ports again"
            );
            tokio::time::sleep(jitter(attempt)).await;
        }
        Err(SpecStoreError::Contended(spec.node.to_string()))
    }

    /// One attempt; `None` when another writer changed the ports meanwhile.
    async fn put_txn(
        &self,
        spec: &ConsoleSpec,
        before: Option<u16>,
        spec_port: SpecPort,
        times: SpecTimes,
    ) -> Result<Option<i64>, SpecStoreError> {
        let node = spec.node.as_str();
        let port = spec_port.port;
        let port_key = self.keys.port(port);
        let mut when = Vec::new();
        let mut ops = Vec::new();
        if before == Some(port) {
            when.push(Compare::value(port_key, CompareOp::Equal, node));
        } else {
            when.push(Compare::create_revision(
                port_key.clone(),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(port_key, node, None));
            if let Some(old) = before {
                let old_key = self.keys.port(old);
                when.push(Compare::value(old_key.clone(), CompareOp::Equal, node));
                ops.push(TxnOp::delete(old_key, None));
            }
        }
        let json = spec_doc::to_json(&self.sealer, spec, spec_port, times);
        ops.push(TxnOp::put(self.keys.spec(&spec.node), json, None));
        self.commit(when, ops).await
    }

    /// Move `stored` (a spec whose port the service chose) off its port to
    /// the lowest free one that `usable` accepts (its owner can bind it),
    /// still marked `port_auto`. `Ok(None)`: the spec or the ports changed
    /// meanwhile (placement looks again); an error when no port is usable.
    #[tracing::instrument(skip_all, fields(node = %stored.spec.node, busy = stored.port))]
    pub async fn move_port(
        &self,
        stored: &StoredSpec,
        times: SpecTimes,
        usable: &(dyn Fn(u16) -> bool + Send + Sync),
    ) -> Result<Option<StoredSpec>, SpecStoreError> {
        let spec = &stored.spec;
        let node = spec.node.as_str();
        let mut ports = PortAllocator::with_assignments(self.range.clone(), self.held().await?);
        let busy = stored.port;
        let port = SpecPort {
            port: ports.assign_fresh(&spec.node, |p| p != busy && usable(p))?,
            auto: true,
        };
        let spec_key = self.keys.spec(&spec.node);
        let new_key = self.keys.port(port.port);
        let old_key = self.keys.port(busy);
        let when = vec![
            Compare::mod_revision(spec_key.clone(), CompareOp::Equal, stored.mod_revision),
            Compare::value(old_key.clone(), CompareOp::Equal, node),
            Compare::create_revision(new_key.clone(), CompareOp::Equal, 0),
        ];
        let json = spec_doc::to_json(&self.sealer, spec, port, times);
        let ops = vec![
            TxnOp::delete(old_key, None),
            TxnOp::put(new_key, node, None),
            TxnOp::put(spec_key, json, None),
        ];
        let revision = self.commit(when, ops).await?;
        Ok(revision.map(|r| StoredSpec::stored(spec, port, r)))
    }

    /// One transaction; the revision it committed at, `None` when a
    /// comparison failed.
    async fn commit(
        &self,
        when: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Option<i64>, SpecStoreError> {
        let txn = Txn::new().when(when).and_then(ops);
        let resp = self
            .client
            .call(|c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Every `ports/<port>` reservation.
    async fn held(&self) -> Result<Vec<(NodeId, u16)>, SpecStoreError> {
        let prefix = self.keys.ports_prefix();
        let resp = self.client.get_prefix(&prefix).await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let bad = |reason: &str| SpecStoreError::BadKey {
                    key: key.clone(),
                    reason: reason.to_owned(),
                };
                let port = self
                    .keys
                    .parse_port(&key)
                    .ok_or_else(|| bad("not a port"))?;
                let node = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| NodeId::parse(v).ok())
                    .ok_or_else(|| bad("value is not a node id"))?;
                Ok((node, port))
            })
            .collect()
    }

    pub async fn get(&self, node: &NodeId) -> Result<Option<StoredSpec>, SpecStoreError> {
        let resp = self
            .client
            .call(|c| async move { c.kv_client().get(self.keys.spec(node), None).await })
            .await?;
        resp.kvs()
            .first()
            .map(|kv| self.decode(node, kv.value(), kv.mod_revision()))
            .transpose()
    }

    /// Remove the spec (the port stays reserved); true when there was one.
    pub async fn delete(&self, node: &NodeId) -> Result<bool, SpecStoreError> {
        let resp = self
            .client
            .call(|c| async move { c.kv_client().delete(self.keys.spec(node), None).await })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Every spec, and the revision the list was read at (watch from +1).
    /// A spec that does not decode is reported with its node, not skipped.
    pub async fn list(
        &self,
    ) -> Result<(HashMap<NodeId, Result<StoredSpec, SpecStoreError>>, i64), SpecStoreError> {
        let prefix = self.keys.consoles_prefix();
        let resp = self.client.get_prefix(&prefix).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut specs = HashMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Some(node) = self.keys.parse_spec(&key) {
                let spec = self.decode(&node, kv.value(), kv.mod_revision());
                specs.insert(node, spec);
            }
        }
        Ok((specs, revision))
    }

    /// A spec key's value (from a get or a watch event).
    pub fn decode(
        &self,
        node: &NodeId,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<StoredSpec, SpecStoreError> {
        StoredSpec::open(&self.sealer, node, value, mod_revision)
    }
}

impl StoredSpec {
    /// What `put` / `move_port` stored: `spec` on `port` at `revision`.
    pub fn stored(spec: &ConsoleSpec, port: SpecPort, revision: i64) -> Self {
        let mut stored = spec.clone();
        stored.requested_port = Some(port.port);
        Self {
            spec: stored,
            port: port.port,
            port_auto: port.auto,
            mod_revision: revision,
        }
    }

    /// A spec key's value, opened with `sealer`.
    pub fn open(
        sealer: &Sealer,
        node: &NodeId,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<Self, SpecStoreError> {
        let spec = spec_doc::from_json(sealer, node, value)?;
        let port = spec.requested_port.unwrap_or_default();
        Ok(Self {
            spec,
            port,
            port_auto: spec_doc::port_auto(value),
            mod_revision,
        })
    }
}

fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// A random pause of up to `attempt` ms (at most 20), so racing writers spread out.
fn jitter(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, RandomState};
    let max = u64::from(attempt.clamp(1, 20));
    let random = RandomState::new().hash_one(std::time::Instant::now());
    std::time::Duration::from_micros(random % (max * 1000))
}
