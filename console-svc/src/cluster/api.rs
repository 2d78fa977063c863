//! The console API on cluster state: any replica answers, from its mirror
//! of etcd ([`ClusterView`](crate::coordinator::etcd::view::ClusterView)).
//!
//! ```text
//!  Enable ─▶ spec unchanged? ──no──▶ put spec (+ port) @R
//!                 │ yes                   │
//!                 ▼                       ▼
//!        wait for endpoint (newer than R when the spec changed) ─deadline─▶ DEADLINE_EXCEEDED + state
//!  Disable ─▶ delete spec ─▶ wait (bounded) for the owner's endpoint to go ─▶ DISABLED
//!  Get / List ─▶ etcd now; Watch (`consoles.rs`) ─▶ the mirror: snapshot, then a change per node touched
//! ```
//!
//! `created_at` / `updated_at` are the spec's own (written into it, see
//! [`spec_doc`]): the same on every replica. A changed spec keeps its
//! `created_at`; a node without a spec (disabled, port kept) has neither.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio::time::Instant;

use super::Cluster;
use crate::coordinator::etcd::keys::{Key, Keys, Leaf};
use crate::coordinator::etcd::spec_doc::{self, SpecTimes};
use crate::coordinator::etcd::specs::{SpecStoreError, StoredSpec};
use crate::coordinator::etcd::view::Entry;
use crate::coordinator::etcd::{EndpointDoc, FailureDoc};
use crate::coordinator::CoordError;
use crate::error::ConsoleError;
use crate::manager::{ConsoleInfo, ConsoleState, Endpoint};
use crate::spec::{ConsoleKind, ConsoleSpec, NodeId};

/// The mirror's keys are relative to the prefix.
pub(super) const RELATIVE: Keys = Keys::relative();

/// Who holds a node's claim.
#[derive(Clone, Debug)]
pub struct OwnerView {
    pub replica: String,
    pub token: i64,
}

/// Everything the cluster knows about one node.
#[derive(Debug, Default)]
pub struct NodeView {
    pub spec: Option<Result<StoredSpec, String>>,
    /// When the spec was first written and last changed, if it says.
    pub times: Option<SpecTimes>,
    pub owner: Option<OwnerView>,
    pub endpoint: Option<(EndpointDoc, i64)>,
    pub port: Option<u16>,
    /// Why the last claim could not start it, if one could not.
    pub failure: Option<FailureDoc>,
}

/// A spec key's value, opened.
#[derive(Clone)]
pub struct Opened {
    pub spec: Result<StoredSpec, String>,
    pub times: Option<SpecTimes>,
}

/// Opened specs by node: (mod revision, spec).
pub type SpecCache = std::sync::Mutex<std::collections::HashMap<NodeId, (i64, Opened)>>;

#[derive(Debug, Default)]
pub struct ClusterState {
    pub members: Vec<String>,
    pub nodes: BTreeMap<NodeId, NodeView>,
}

/// The mirrored state, decoded (specs opened with the key).
pub fn snapshot(cluster: &Cluster) -> ClusterState {
    decode(cluster, cluster.inner.store.range(""))
}

/// Keys (relative to the prefix) as cluster state.
pub fn decode(cluster: &Cluster, keys: Vec<(String, Entry)>) -> ClusterState {
    let mut state = ClusterState::default();
    for (key, entry) in &keys {
        match RELATIVE.parse(key) {
            Some(Key::Member(m)) => state.members.push(m),
            Some(Key::Port(port)) => {
                let node = std::str::from_utf8(&entry.value).ok().map(NodeId::parse);
                if let Some(Ok(node)) = node {
                    state.nodes.entry(node).or_default().port = Some(port);
                }
            }
            Some(Key::Console(node, leaf)) => {
                let nv = state.nodes.entry(node.clone()).or_default();
                match leaf {
                    Leaf::Spec => {
                        let opened = open_spec(cluster, &node, entry);
                        nv.spec = Some(opened.spec);
                        nv.times = opened.times;
                    }
                    Leaf::Owner => {
                        nv.owner = Some(OwnerView {
                            replica: String::from_utf8_lossy(&entry.value).into_owned(),
                            token: entry.create_revision,
                        })
                    }
                    Leaf::Endpoint => {
                        nv.endpoint = serde_json::from_slice(&entry.value)
                            .ok()
                            .map(|doc| (doc, entry.mod_revision))
                    }
                    Leaf::Failure => nv.failure = serde_json::from_slice(&entry.value).ok(),
                    Leaf::Other(_) => {}
                }
            }
            None => {}
        }
    }
    state
}

/// A spec key's value, opened once per revision.
fn open_spec(cluster: &Cluster, node: &NodeId, entry: &Entry) -> Opened {
    let inner = &cluster.inner;
    let mut cache = inner.opened.lock().expect("spec cache");
    if let Some((rev, opened)) = cache.get(node) {
        if *rev == entry.mod_revision {
            return opened.clone();
        }
    }
    let opened = Opened {
        spec: inner
            .store
            .decode_spec(node, &entry.value, entry.mod_revision)
            .map_err(|e| e.to_string()),
        times: spec_doc::times(&entry.value),
    };
    cache.insert(node.clone(), (entry.mod_revision, opened.clone()));
    opened
}

impl Cluster {
    #[tracing::instrument(skip_all, fields(node = %spec.node))]
    pub async fn enable(&self, spec: ConsoleSpec) -> Result<ConsoleInfo, ConsoleError> {
        if self.inner.manager.backend_name(spec.kind()) == "none" {
            return Err(ConsoleError::Unsupported(
                "this console-svc serves no consoles of this kind".into(),
            ));
        }
        let (current, times) = self.current_spec(&spec.node).await?;
        let unchanged = current.as_ref().filter(|c| same_spec(c, &spec));
        let newer_than = match unchanged {
            Some(c) => c.mod_revision - 1,
            None => {
                let now = SystemTime::now();
                let times = match (&current, times) {
                    (Some(_), Some(t)) => t.changed_at(now),
                    _ => SpecTimes::new_at(now),
                };
                self.inner
                    .store
                    .put_spec(&spec, times)
                    .await
                    .map_err(store_err)?
                    .mod_revision
            }
        };
        let deadline = Instant::now() + self.inner.settings.enable_timeout;
        let node = spec.node.clone();
        let served = self
            .wait(deadline, &node, |endpoint| {
                endpoint.is_some_and(|e| e.mod_revision > newer_than)
            })
            .await;
        let info = self.info(&node);
        match (served, info) {
            (Some(()), Some(info)) => Ok(info),
            (_, info) => Err(ConsoleError::Deadline(format!(
                "no replica published the console of {node} within {:?}; now {}",
                self.inner.settings.enable_timeout,
                describe(info.as_ref())
            ))),
        }
    }

    /// The node's spec and its times, from etcd now.
    async fn current_spec(
        &self,
        node: &NodeId,
    ) -> Result<(Option<StoredSpec>, Option<SpecTimes>), ConsoleError> {
        let key = RELATIVE.spec(node);
        let keys = self.read_raw(&[&key]).await?;
        let Some((_, entry)) = keys.into_iter().find(|(k, _)| *k == key) else {
            return Ok((None, None));
        };
        let store = &self.inner.store;
        let spec = store.decode_spec(node, &entry.value, entry.mod_revision);
        Ok((
            Some(spec.map_err(store_err)?),
            spec_doc::times(&entry.value),
        ))
    }

    pub async fn disable(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        self.inner
            .store
            .delete_spec(node)
            .await
            .map_err(store_err)?;
        let deadline = Instant::now() + self.inner.settings.enable_timeout;
        self.wait(deadline, node, |endpoint| endpoint.is_none())
            .await;
        Ok(self
            .info(node)
            .unwrap_or_else(|| self.blank(node, ConsoleState::Disabled)))
    }

    /// From etcd now, not the mirror: a console enabled through another
    /// replica is seen at once.
    pub async fn get(&self, node: &NodeId) -> Result<ConsoleInfo, ConsoleError> {
        let state = self
            .fresh(&[&RELATIVE.node_prefix(node), &RELATIVE.ports_prefix()])
            .await?;
        state
            .nodes
            .get(node)
            .and_then(|nv| self.to_info(node, nv))
            .ok_or_else(|| ConsoleError::NotFound(node.to_string()))
    }

    pub async fn list(&self) -> Result<Vec<ConsoleInfo>, ConsoleError> {
        let state = self
            .fresh(&[&RELATIVE.consoles_prefix(), &RELATIVE.ports_prefix()])
            .await?;
        Ok(self.infos(&state))
    }

    async fn fresh(&self, starts: &[&str]) -> Result<ClusterState, ConsoleError> {
        Ok(decode(self, self.read_raw(starts).await?))
    }

    /// Every key starting with one of `starts` (relative to the prefix), as
    /// of now: answers must not lag behind a write made through another
    /// replica (see `ClusterView::read`).
    pub(super) async fn read_raw(
        &self,
        starts: &[&str],
    ) -> Result<Vec<(String, Entry)>, ConsoleError> {
        let read = self.inner.store.read(starts).await;
        read.map_err(ConsoleError::Coordination)
    }

    pub(super) fn infos(&self, state: &ClusterState) -> Vec<ConsoleInfo> {
        state
            .nodes
            .iter()
            .filter_map(|(node, nv)| self.to_info(node, nv))
            .collect()
    }

    /// Wait on the mirror until `ready` likes the node's endpoint key (one
    /// key looked at per change, not the whole state) or the deadline passes.
    async fn wait(
        &self,
        deadline: Instant,
        node: &NodeId,
        ready: impl Fn(Option<&Entry>) -> bool,
    ) -> Option<()> {
        let view = &self.inner.store;
        let key = RELATIVE.endpoint(node);
        let mut changes = view.subscribe();
        loop {
            if ready(view.get(&key).as_ref()) {
                return Some(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = changes.recv() => {}
            }
        }
    }

    /// One node from the mirror (its keys and the port reservations only).
    pub(super) fn info(&self, node: &NodeId) -> Option<ConsoleInfo> {
        let view = &self.inner.store;
        let mut keys = view.range(&RELATIVE.node_prefix(node));
        keys.extend(view.range(&RELATIVE.ports_prefix()));
        let state = decode(self, keys);
        self.to_info(node, state.nodes.get(node)?)
    }

    fn to_info(&self, node: &NodeId, nv: &NodeView) -> Option<ConsoleInfo> {
        let mut info = self.blank(node, ConsoleState::Disabled);
        match &nv.spec {
            None if nv.port.is_none() => return None,
            None => {}
            Some(Err(e)) => {
                info.state = ConsoleState::Failed;
                info.last_error = Some(e.clone());
            }
            Some(Ok(s)) => {
                info.kind = s.spec.kind();
                info.backend = self.inner.manager.backend_name(info.kind);
                info.state = ConsoleState::Starting;
                // Not served yet: why the last claim of this spec failed.
                info.last_error = (nv.failure.as_ref())
                    .filter(|f| f.spec_revision == s.mod_revision)
                    .map(|f| format!("replica {} could not start it: {}", f.replica, f.error));
            }
        }
        info.created_at = nv.times.map(|t| t.created_at);
        info.updated_at = nv.times.map(|t| t.updated_at);
        info.owner = nv
            .owner
            .as_ref()
            .map(|o| o.replica.clone())
            .unwrap_or_default();
        if let (Some(Some(_)), Some((ep, _))) =
            (nv.spec.as_ref().map(|s| s.as_ref().ok()), &nv.endpoint)
        {
            info.state = match ep.state.as_str() {
                "failed" => ConsoleState::Failed,
                _ => ConsoleState::Running,
            };
            info.endpoint = Some(Endpoint {
                host: ep.host.clone(),
                port: ep.port,
            });
            info.last_error = ep.last_error.clone();
            info.owner = ep.replica.clone();
        }
        Some(info)
    }

    /// A node's answer before its keys are looked at: no spec, no times.
    pub(super) fn blank(&self, node: &NodeId, state: ConsoleState) -> ConsoleInfo {
        ConsoleInfo {
            node: node.clone(),
            kind: ConsoleKind::Serial,
            state,
            endpoint: None,
            owner: String::new(),
            last_error: None,
            created_at: None,
            updated_at: None,
            backend: self.inner.manager.backend_name(ConsoleKind::Serial),
        }
    }
}

/// The stored spec is what the caller asks for (a request without a port
/// accepts the one already assigned).
fn same_spec(stored: &StoredSpec, asked: &ConsoleSpec) -> bool {
    stored.spec.target == asked.target && asked.requested_port.is_none_or(|p| p == stored.port)
}

fn describe(info: Option<&ConsoleInfo>) -> String {
    match info {
        None => "no spec".into(),
        Some(i) => format!(
            "state {:?}, owner {:?}{}",
            i.state,
            i.owner,
            i.last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ),
    }
}

fn store_err(e: SpecStoreError) -> ConsoleError {
    match e {
        SpecStoreError::Port(p) => ConsoleError::Port(p),
        other => ConsoleError::Coordination(CoordError::Etcd(other.to_string())),
    }
}
