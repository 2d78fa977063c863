//! An in-memory cluster store for the cluster layer's unit tests: one key
//! space with etcd's revisions, create revisions and leases, shared by
//! several [`Replica`] handles. Each handle is a replica's
//! [`ClusterStore`] and its manager's [`Coordinator`], so a claim made by
//! the manager is the owner key placement and publish see, with the same
//! fencing token (the key's create revision).
//!
//! ```text
//!  MemoryEtcd ── keys (relative), revision, leases ──┬─ Replica "a" (lease 1): store + coordinator
//!                                                    └─ Replica "b" (lease 2): store + coordinator
//!  lose_lease(): serving off, the lease's keys deleted (member, owners, endpoints)
//!  rejoin():     a new lease, members/<id> again, serving on
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::store::ClusterStore;
use crate::coordinator::etcd::keys::Keys;
use crate::coordinator::etcd::spec_doc::{self, SpecPort, SpecTimes};
use crate::coordinator::etcd::specs::{SpecStoreError, StoredSpec};
use crate::coordinator::etcd::view::{Change, Entry};
use crate::coordinator::etcd::{EndpointDoc, FailureDoc, Member};
use crate::coordinator::{CoordError, Coordinator, Ownership};
use crate::ports::{PortAllocator, PortRange};
use crate::seal::Sealer;
use crate::spec::{ConsoleSpec, NodeId};

const KEYS: Keys = Keys::relative();

/// The shared key space; cheap to clone.
#[derive(Clone)]
pub struct MemoryEtcd {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    sealer: Sealer,
    range: PortRange,
}

#[derive(Default)]
struct State {
    revision: i64,
    keys: BTreeMap<String, Entry>,
    last_lease: i64,
}

/// One write transaction: every put and delete shares one revision.
struct Tx<'s> {
    state: &'s mut State,
    revision: i64,
    changed: Vec<String>,
}

impl Tx<'_> {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.state.keys.get(key)
    }

    fn put(&mut self, key: String, value: impl Into<Vec<u8>>, lease: i64) {
        let create_revision = self.get(&key).map_or(self.revision, |e| e.create_revision);
        let entry = Entry {
            value: value.into(),
            create_revision,
            mod_revision: self.revision,
            lease,
        };
        self.state.keys.insert(key.clone(), entry);
        self.changed.push(key);
    }

    /// Every `ports/<port>` reservation: (node, port).
    fn held(&self) -> Vec<(NodeId, u16)> {
        (self.state.keys.iter())
            .filter_map(|(k, e)| Some((KEYS.parse_port(k)?, e)))
            .filter_map(|(port, e)| {
                let node = NodeId::parse(std::str::from_utf8(&e.value).ok()?).ok()?;
                Some((node, port))
            })
            .collect()
    }

    fn delete(&mut self, key: &str) -> bool {
        let gone = self.state.keys.remove(key).is_some();
        if gone {
            self.changed.push(key.to_owned());
        }
        gone
    }
}

impl MemoryEtcd {
    /// An empty key space handing out ports from `range` (`start:end`).
    pub fn new(range: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changes: broadcast::channel(4096).0,
                sealer: Sealer::from_key(&[7; 32]),
                range: range.parse().expect("port range"),
            }),
        }
    }

    /// A replica that joins now (a lease, its member key, serving).
    pub fn replica(&self, id: &str) -> Arc<Replica> {
        let replica = Arc::new(Replica {
            etcd: self.clone(),
            id: id.to_owned(),
            lease: Mutex::new(None),
            serving: watch::Sender::new(false),
        });
        replica.rejoin();
        replica
    }

    /// Run `f` as one transaction and tell subscribers what it changed.
    fn txn<R>(&self, f: impl FnOnce(&mut Tx) -> R) -> R {
        let (result, changed) = {
            let mut state = self.shared.state.lock().expect("memory etcd");
            let revision = state.revision + 1;
            let mut tx = Tx {
                state: &mut state,
                revision,
                changed: Vec::new(),
            };
            let result = f(&mut tx);
            let changed = std::mem::take(&mut tx.changed);
            if !changed.is_empty() {
                state.revision = revision;
            }
            (result, changed)
        };
        for key in changed {
            let _ = self.shared.changes.send(Change::Key(key));
        }
        result
    }

    /// The key as stored now.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let state = self.shared.state.lock().expect("memory etcd");
        state.keys.get(key).cloned()
    }

    fn range(&self, start: &str) -> Vec<(String, Entry)> {
        let state = self.shared.state.lock().expect("memory etcd");
        state
            .keys
            .range(start.to_owned()..)
            .take_while(|(k, _)| k.starts_with(start))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The replica owning `node` now, and its token.
    pub fn owner(&self, node: &NodeId) -> Option<(String, i64)> {
        let entry = self.get(&KEYS.owner(node))?;
        let owner = String::from_utf8(entry.value).expect("owner id");
        Some((owner, entry.create_revision))
    }
}

/// One replica's handle: its [`ClusterStore`] and [`Coordinator`].
pub struct Replica {
    etcd: MemoryEtcd,
    id: String,
    lease: Mutex<Option<i64>>,
    serving: watch::Sender<bool>,
}

impl Replica {
    fn lease(&self) -> Result<i64, CoordError> {
        let lease = *self.lease.lock().expect("lease");
        lease.ok_or_else(|| CoordError::NotServing("no lease".into()))
    }

    /// The lease is gone: serving off first (as the keeper does), then
    /// every key bound to it is deleted (as etcd does on expiry).
    pub fn lose_lease(&self) {
        self.serving.send_replace(false);
        let Some(lease) = self.lease.lock().expect("lease").take() else {
            return;
        };
        self.etcd.txn(|tx| {
            let bound: Vec<String> = (tx.state.keys.iter())
                .filter(|(_, e)| e.lease == lease)
                .map(|(k, _)| k.clone())
                .collect();
            for key in bound {
                tx.delete(&key);
            }
        });
    }

    /// A new lease, `members/<id>` under it, serving.
    pub fn rejoin(&self) {
        let lease = {
            let mut state = self.etcd.shared.state.lock().expect("memory etcd");
            state.last_lease += 1;
            state.last_lease
        };
        *self.lease.lock().expect("lease") = Some(lease);
        let member = Member {
            replica: self.id.clone(),
            host: "127.0.0.1".into(),
            grpc: "127.0.0.1:1".into(),
        };
        let doc = serde_json::to_string(&member).expect("member serializes");
        self.etcd
            .txn(|tx| tx.put(KEYS.member(&self.id), doc, lease));
        self.serving.send_replace(true);
    }

    /// Serving off while the lease (and what it owns) stays.
    pub fn pause(&self) {
        self.serving.send_replace(false);
    }
}

#[async_trait]
impl Coordinator for Replica {
    fn replica_id(&self) -> &str {
        &self.id
    }

    fn serving(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    async fn acquire(&self, node: &NodeId) -> Result<Ownership, CoordError> {
        let lease = self.lease()?;
        let key = KEYS.owner(node);
        let (owner, token, owner_lease) = self.etcd.txn(|tx| {
            if tx.get(&key).is_none() {
                tx.put(key.clone(), self.id.clone(), lease);
            }
            let e = tx.get(&key).expect("owner key");
            let owner = String::from_utf8_lossy(&e.value).into_owned();
            (owner, e.create_revision, e.lease)
        });
        if owner == self.id && owner_lease == lease {
            Ok(Ownership {
                node: node.clone(),
                token,
                lease,
            })
        } else {
            Err(CoordError::Fenced {
                node: node.to_string(),
                owner,
            })
        }
    }

    async fn check(&self, ownership: &Ownership) -> Result<(), CoordError> {
        let lease = self.lease()?;
        match self.etcd.get(&KEYS.owner(&ownership.node)) {
            Some(e) if e.create_revision == ownership.token && e.lease == lease => Ok(()),
            other => Err(CoordError::Fenced {
                node: ownership.node.to_string(),
                owner: other
                    .map(|e| String::from_utf8_lossy(&e.value).into_owned())
                    .unwrap_or_else(|| "nobody".into()),
            }),
        }
    }

    async fn release(&self, ownership: &Ownership) -> Result<(), CoordError> {
        let node = &ownership.node;
        self.etcd.txn(|tx| {
            let owner = tx.get(&KEYS.owner(node));
            if owner.is_some_and(|e| e.create_revision == ownership.token) {
                tx.delete(&KEYS.owner(node));
                tx.delete(&KEYS.endpoint(node));
            }
        });
        Ok(())
    }
}

#[async_trait]
impl ClusterStore for Replica {
    fn replica(&self) -> &str {
        &self.id
    }

    fn serving(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    fn get(&self, key: &str) -> Option<Entry> {
        self.etcd.get(key)
    }

    fn range(&self, start: &str) -> Vec<(String, Entry)> {
        self.etcd.range(start)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.etcd.shared.changes.subscribe()
    }

    async fn read(&self, starts: &[&str]) -> Result<Vec<(String, Entry)>, CoordError> {
        Ok(starts.iter().flat_map(|s| self.etcd.range(s)).collect())
    }

    async fn put_spec(
        &self,
        spec: &ConsoleSpec,
        times: SpecTimes,
    ) -> Result<StoredSpec, SpecStoreError> {
        let shared = &self.etcd.shared;
        let node = &spec.node;
        self.etcd.txn(|tx| {
            let mut ports = PortAllocator::with_assignments(shared.range.clone(), tx.held());
            let before = ports.current(node);
            let port = SpecPort {
                port: ports.assign(node, spec.requested_port)?,
                auto: spec.requested_port.is_none() && before.is_none(),
            };
            if before != Some(port.port) {
                tx.put(KEYS.port(port.port), node.as_str(), 0);
                if let Some(old) = before {
                    tx.delete(&KEYS.port(old));
                }
            }
            let json = spec_doc::to_json(&shared.sealer, spec, port, times);
            tx.put(KEYS.spec(node), json, 0);
            Ok(StoredSpec::stored(spec, port, tx.revision))
        })
    }

    async fn move_port(
        &self,
        stored: &StoredSpec,
        times: SpecTimes,
        usable: &(dyn Fn(u16) -> bool + Send + Sync),
    ) -> Result<Option<StoredSpec>, SpecStoreError> {
        let shared = &self.etcd.shared;
        let spec = &stored.spec;
        let node = &spec.node;
        self.etcd.txn(|tx| {
            let current = tx.get(&KEYS.spec(node)).map(|e| e.mod_revision);
            if current != Some(stored.mod_revision) {
                return Ok(None);
            }
            let mut ports = PortAllocator::with_assignments(shared.range.clone(), tx.held());
            let busy = stored.port;
            let port = SpecPort {
                port: ports.assign_fresh(node, |p| p != busy && usable(p))?,
                auto: true,
            };
            tx.delete(&KEYS.port(busy));
            tx.put(KEYS.port(port.port), node.as_str(), 0);
            let json = spec_doc::to_json(&shared.sealer, spec, port, times);
            tx.put(KEYS.spec(node), json, 0);
            Ok(Some(StoredSpec::stored(spec, port, tx.revision)))
        })
    }

    async fn delete_spec(&self, node: &NodeId) -> Result<bool, SpecStoreError> {
        Ok(self.etcd.txn(|tx| tx.delete(&KEYS.spec(node))))
    }

    fn decode_spec(
        &self,
        node: &NodeId,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<StoredSpec, SpecStoreError> {
        StoredSpec::open(&self.etcd.shared.sealer, node, value, mod_revision)
    }

    async fn publish_endpoint(
        &self,
        node: &NodeId,
        token: i64,
        doc: Option<&EndpointDoc>,
    ) -> Result<bool, CoordError> {
        let lease = self.lease()?;
        Ok(self.etcd.txn(|tx| {
            let owner = tx.get(&KEYS.owner(node));
            if !owner.is_some_and(|e| e.create_revision == token && e.lease == lease) {
                return false;
            }
            match doc {
                Some(doc) => {
                    let json = serde_json::to_string(doc).expect("endpoint serializes");
                    tx.put(KEYS.endpoint(node), json, lease);
                }
                None => {
                    tx.delete(&KEYS.endpoint(node));
                }
            }
            true
        }))
    }

    async fn note_failure(
        &self,
        node: &NodeId,
        doc: Option<&FailureDoc>,
    ) -> Result<(), CoordError> {
        let lease = self.lease()?;
        self.etcd.txn(|tx| match doc {
            Some(doc) => {
                let json = serde_json::to_string(doc).expect("failure serializes");
                tx.put(KEYS.failure(node), json, lease);
            }
            None => {
                tx.delete(&KEYS.failure(node));
            }
        });
        Ok(())
    }

    async fn leave(&self) -> Result<(), CoordError> {
        self.etcd.txn(|tx| tx.delete(&KEYS.member(&self.id)));
        Ok(())
    }
}
